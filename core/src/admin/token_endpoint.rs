//! `POST /oauth2/v1/{domain}/token`: the OAuth 2.0 client credentials grant
//! (RFC 6749 §4.4) exactly as PROTOCOL.md §1 states it.

use std::time::Instant;

use rand::{CryptoRng, RngCore};
use serde::Serialize;

use super::response::to_json;
use crate::auth::{
    AuthError, BasicAuth, ClientLogin, CredentialCache, LoginAttempts, LoginDomain, LoginError,
    PresentedCredentials, SecretHasher, TokenIssuer,
};
use crate::store::Store;

/// The largest token request body accepted (a real one is under 200 bytes).
const MAX_TOKEN_BODY: usize = 8 * 1024;

/// A token request as the HTTP layer received it.
#[derive(Debug, Clone, Copy)]
pub struct TokenRequest<'a> {
    /// The `{domain}` of the path, undecoded.
    pub domain: &'a str,
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a str>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// The whole body.
    pub body: &'a [u8],
}

/// The HTTP answer: status, headers besides `Content-Type: application/json` and
/// `Content-Length`, and the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// 200, 400, 401, 429 or 500.
    pub status: u16,
    /// RFC 6749 §5.1 `Cache-Control: no-store` and `Pragma: no-cache` always;
    /// `WWW-Authenticate` on 401 (RFC 6749 §5.2, RFC 9110 §15.5.2).
    pub headers: Vec<(&'static str, &'static str)>,
    /// `Retry-After` seconds of a `429` (§1: past a failed-login limit).
    pub retry_after: Option<u64>,
    /// `{"access_token":…,"token_type":"Bearer","expires_in":…}` or `{"error":…}`.
    pub body: Vec<u8>,
}

/// What the token endpoint needs: the store, the secret hasher, the issuer, the
/// access-token lifetime (`crate::auth::DEFAULT_ACCESS_TTL` unless configured) and,
/// optionally, the cache of recently verified secrets.
pub struct TokenEndpoint<'a, S: Store + ?Sized> {
    /// Where clients are.
    pub store: &'a S,
    /// Verifies secrets (and holds the dummy hash for unknown clients).
    pub hasher: &'a SecretHasher,
    /// Signs the access token.
    pub issuer: &'a TokenIssuer,
    /// Access token lifetime, seconds.
    pub access_ttl: u64,
    /// Recently verified secrets (the relay's, shared with §2 and §7c logins).
    pub cache: Option<&'a CredentialCache>,
}

// The cache keeps no Debug of its own (it holds verified secrets' MACs): say only whether
// there is one.
impl<S: Store + ?Sized + std::fmt::Debug> std::fmt::Debug for TokenEndpoint<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("store", &self.store)
            .field("hasher", &self.hasher)
            .field("issuer", &self.issuer)
            .field("access_ttl", &self.access_ttl)
            .field("cache", &self.cache.is_some())
            .finish()
    }
}

#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
}

#[derive(Serialize)]
struct OAuthError {
    error: &'static str,
}

/// Why no token was issued: the request itself (400, or 500 signing), or the login.
enum Failure {
    Request(AuthError),
    Login(LoginError),
}

impl<S: Store + ?Sized> TokenEndpoint<'_, S> {
    /// Answers one token request at `now` (unix seconds, for the token) and `clock` (for
    /// the cache of verified secrets); `attempts` are the failed-login limits of the
    /// requesting address (§1), `rng` makes the token's `jti`. The credential check is
    /// [`ClientLogin::log_in`], the one §7c's Basic upgrades use.
    pub fn handle(
        &self,
        request: &TokenRequest<'_>,
        attempts: &dyn LoginAttempts,
        now: u64,
        clock: Instant,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> TokenResponse {
        let rng = std::cell::RefCell::new(rng);
        let login = ClientLogin {
            store: self.store,
            hasher: self.hasher,
            cache: self.cache,
            unix_now: now,
            rng: &rng,
        };
        let result = parse_request(request)
            .map_err(Failure::Request)
            .and_then(|presented| {
                login
                    .log_in(
                        LoginDomain::Named(request.domain),
                        presented.as_ref(),
                        attempts,
                        clock,
                    )
                    .map_err(Failure::Login)
            })
            .and_then(|client| {
                self.issuer
                    .issue_access(&client, now, self.access_ttl, &mut *rng.borrow_mut())
                    .map_err(Failure::Request)
            });
        let mut headers = vec![("Cache-Control", "no-store"), ("Pragma", "no-cache")];
        match result {
            Ok(issued) => TokenResponse {
                status: 200,
                headers,
                retry_after: None,
                body: to_json(&TokenBody {
                    access_token: &issued.token,
                    token_type: "Bearer",
                    expires_in: issued.expires_in,
                }),
            },
            Err(Failure::Login(err)) => {
                if err.status() == 401 {
                    // RFC 6749 §5.2: a client that tried Basic is challenged with Basic.
                    headers.push(("WWW-Authenticate", r#"Basic realm="posrelay""#));
                }
                if let LoginError::Storage(e) = &err {
                    tracing::error!(error = %e, "token endpoint failed");
                }
                TokenResponse {
                    status: err.status(),
                    headers,
                    retry_after: err.retry_after_secs(),
                    body: err.body(),
                }
            }
            Err(Failure::Request(err)) => {
                if err.status() >= 500 {
                    tracing::error!(error = %err, "token endpoint failed");
                }
                TokenResponse {
                    status: err.status(),
                    headers,
                    retry_after: None,
                    body: to_json(&OAuthError {
                        error: err.oauth_error_code(),
                    }),
                }
            }
        }
    }
}

/// Checks the request in PROTOCOL.md §1's order — grant type first, then where the
/// credentials are — and returns them: `None` when they are missing or the Basic header
/// does not decode (both a failed login: `401 invalid_client`).
fn parse_request(request: &TokenRequest<'_>) -> Result<Option<PresentedCredentials>, AuthError> {
    if request.body.len() > MAX_TOKEN_BODY {
        return Err(AuthError::InvalidRequest {
            reason: "body too large",
        });
    }
    let form = Form::parse(request.body)?;
    // PROTOCOL.md §1: "The grant type is checked first."
    match form.single("grant_type")? {
        None => {
            return Err(AuthError::InvalidRequest {
                reason: "missing grant_type",
            })
        }
        Some("client_credentials") => {}
        Some(other) => {
            return Err(AuthError::UnsupportedGrantType {
                grant_type: other.chars().take(64).collect(),
            })
        }
    }
    // RFC 6749 §4.4.2: the body is application/x-www-form-urlencoded.
    if let Some(content_type) = request.content_type {
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(AuthError::InvalidRequest {
                reason: "content type must be application/x-www-form-urlencoded",
            });
        }
    }
    let body_id = form.single("client_id")?;
    let body_secret = form.single("client_secret")?;
    match BasicAuth::parse(request.authorization) {
        // RFC 6749 §2.3: "The client MUST NOT use more than one authentication method
        // in each request."
        BasicAuth::Credentials(_) | BasicAuth::Invalid
            if body_id.is_some() || body_secret.is_some() =>
        {
            Err(AuthError::InvalidRequest {
                reason: "credentials both in Authorization and in the body",
            })
        }
        BasicAuth::Credentials(presented) => Ok(Some(presented)),
        BasicAuth::Invalid => Ok(None),
        BasicAuth::Absent => match (body_id, body_secret) {
            (Some(id), Some(secret)) => Ok(Some(PresentedCredentials {
                client_id: id.to_owned(),
                secret: crate::auth::ClientSecret::new(secret),
            })),
            // PROTOCOL.md §1: missing credentials answer 401 invalid_client.
            _ => Ok(None),
        },
    }
}

/// A decoded form body.
struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    fn parse(body: &[u8]) -> Result<Self, AuthError> {
        let pairs = crate::handshake::parse_form(body).map_err(|_| AuthError::InvalidRequest {
            reason: "malformed application/x-www-form-urlencoded body",
        })?;
        Ok(Self { pairs })
    }

    /// The value of `name`: RFC 6749 §3.2 "Parameters sent without a value MUST be
    /// treated as if they were omitted from the request" and "Request and response
    /// parameters MUST NOT be included more than once".
    fn single(&self, name: &str) -> Result<Option<&str>, AuthError> {
        let mut values = self
            .pairs
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(AuthError::InvalidRequest {
                reason: "a parameter is repeated",
            });
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{new_client_credentials, HashCost, SigningKey, DEFAULT_ACCESS_TTL};
    use crate::ids::{DomainName, StoreName};
    use crate::store::conformance::store_rec;
    use crate::store::{ClientRecord, MemStore};
    use crate::tenancy::Scope;
    use base64::Engine as _;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::cell::RefCell;

    const NOW: u64 = 1_700_000_000;

    /// The failed-login limits of one address: blocks after `limit` failures, and keeps
    /// the client id of each failure.
    struct Attempts {
        limit: usize,
        failures: RefCell<Vec<Option<String>>>,
    }

    impl LoginAttempts for Attempts {
        fn check(&self, _client_id: Option<&str>) -> Result<(), crate::auth::LoginThrottled> {
            if self.failures.borrow().len() >= self.limit {
                return Err(crate::auth::LoginThrottled {
                    retry_after_secs: 17,
                });
            }
            Ok(())
        }
        fn succeeded(&self, _client_id: &str) {}
        fn failed(&self, client_id: Option<&str>) {
            self.failures
                .borrow_mut()
                .push(client_id.map(str::to_owned));
        }
    }
    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    struct World {
        store: MemStore,
        hasher: SecretHasher,
        issuer: TokenIssuer,
        id: String,
        secret: String,
        rng: StdRng,
        attempts: Attempts,
    }

    fn world() -> World {
        let store = MemStore::new();
        let hasher = SecretHasher::new(HashCost::TEST_ONLY);
        let mut rng = StdRng::seed_from_u64(11);
        for domain in ["acme", "globex"] {
            store
                .create_domain(&DomainName::new(domain).unwrap())
                .unwrap();
            store.create_store(&store_rec(domain, "s1")).unwrap();
        }
        let (client_id, secret, secret_hash) = new_client_credentials(&hasher, &mut rng);
        store
            .create_client(&ClientRecord {
                domain: DomainName::new("acme").unwrap(),
                client_id: client_id.clone(),
                scope: Scope::Store(StoreName::new("s1").unwrap()),
                secret_hash,
                previous_secret: None,
            })
            .unwrap();
        World {
            store,
            hasher,
            issuer: TokenIssuer::new(&SigningKey::from_bytes([1; 32])),
            id: client_id.to_string(),
            secret: secret.expose().to_owned(),
            rng,
            attempts: Attempts {
                limit: usize::MAX,
                failures: RefCell::new(Vec::new()),
            },
        }
    }

    impl World {
        fn post(
            &mut self,
            domain: &str,
            authorization: Option<&str>,
            content_type: Option<&str>,
            body: &str,
        ) -> TokenResponse {
            let endpoint = TokenEndpoint {
                store: &self.store,
                hasher: &self.hasher,
                issuer: &self.issuer,
                access_ttl: DEFAULT_ACCESS_TTL,
                cache: None,
            };
            endpoint.handle(
                &TokenRequest {
                    domain,
                    authorization,
                    content_type,
                    body: body.as_bytes(),
                },
                &self.attempts,
                NOW,
                std::time::Instant::now(),
                &mut self.rng,
            )
        }

        fn body_creds(&self) -> String {
            format!(
                "grant_type=client_credentials&client_id={}&client_secret={}",
                self.id, self.secret
            )
        }

        fn basic(&self) -> String {
            let pair = format!("{}:{}", self.id, self.secret);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        }
    }

    fn text(r: &TokenResponse) -> &str {
        std::str::from_utf8(&r.body).unwrap()
    }

    fn assert_error(r: &TokenResponse, status: u16, code: &str) {
        assert_eq!(r.status, status, "{}", text(r));
        assert_eq!(text(r), format!(r#"{{"error":"{code}"}}"#));
        assert!(r.headers.contains(&("Cache-Control", "no-store")));
        let has_challenge = r.headers.iter().any(|(h, _)| *h == "WWW-Authenticate");
        assert_eq!(has_challenge, status == 401);
    }

    fn token_of(r: &TokenResponse) -> String {
        #[derive(serde::Deserialize)]
        struct Ok {
            access_token: String,
            token_type: String,
            expires_in: u64,
        }
        let mut body = r.body.clone();
        let ok: Ok = simd_json::serde::from_slice(&mut body).unwrap();
        assert_eq!((ok.token_type.as_str(), ok.expires_in), ("Bearer", 3600));
        ok.access_token
    }

    #[test]
    fn credentials_in_body_give_a_token() {
        let mut w = world();
        let body = w.body_creds();
        let r = w.post("acme", None, FORM, &body);
        assert_eq!(r.status, 200, "{}", text(&r));
        // RFC 6749 §5.1: no caching of tokens.
        assert!(r.headers.contains(&("Cache-Control", "no-store")));
        assert!(r.headers.contains(&("Pragma", "no-cache")));
        let token = token_of(&r);
        let claims = w.issuer.verify_access(&w.store, &token, NOW).unwrap();
        assert_eq!(claims.client_id.as_str(), w.id);
        assert_eq!(claims.expires_at, NOW + 3600);
    }

    #[test]
    fn credentials_in_basic_give_a_token() {
        let mut w = world();
        let basic = w.basic();
        let r = w.post(
            "acme",
            Some(&basic),
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            "grant_type=client_credentials",
        );
        assert_eq!(r.status, 200, "{}", text(&r));
        token_of(&r);
    }

    #[test]
    fn grant_type_is_checked_first() {
        let mut w = world();
        // Missing grant type: 400 invalid_request, whatever the credentials.
        let r = w.post("acme", None, FORM, "client_id=x&client_secret=y");
        assert_error(&r, 400, "invalid_request");
        let r = w.post("ghost", None, FORM, "");
        assert_error(&r, 400, "invalid_request");
        // Another grant: unsupported, even with no, bad or doubled credentials.
        let r = w.post("acme", None, FORM, "grant_type=password");
        assert_error(&r, 400, "unsupported_grant_type");
        let basic = w.basic();
        let r = w.post(
            "ghost",
            Some(&basic),
            FORM,
            "grant_type=authorization_code&client_id=a&client_secret=b",
        );
        assert_error(&r, 400, "unsupported_grant_type");
        // Empty value = omitted (RFC 6749 §3.2).
        let r = w.post("acme", None, FORM, "grant_type=&client_id=a");
        assert_error(&r, 400, "invalid_request");
    }

    #[test]
    fn credentials_in_both_places_are_invalid_request() {
        let mut w = world();
        let basic = w.basic();
        let body = w.body_creds();
        let r = w.post("acme", Some(&basic), FORM, &body);
        assert_error(&r, 400, "invalid_request");
        let body = format!("grant_type=client_credentials&client_id={}", w.id);
        let r = w.post("acme", Some(&basic), FORM, &body);
        assert_error(&r, 400, "invalid_request");
    }

    #[test]
    fn every_credential_failure_is_401_invalid_client() {
        let mut w = world();
        let good_id = w.id.clone();
        let good_secret = w.secret.clone();
        let form = |id: &str, secret: &str| {
            format!("grant_type=client_credentials&client_id={id}&client_secret={secret}")
        };
        let cases = [
            ("acme", None, "grant_type=client_credentials".to_owned()),
            (
                "acme",
                None,
                format!("grant_type=client_credentials&client_id={good_id}"),
            ),
            (
                "acme",
                None,
                format!("grant_type=client_credentials&client_secret={good_secret}"),
            ),
            ("acme", None, form(&good_id, "")),
            ("acme", None, form(&good_id, "wrong")),
            ("acme", None, form("unknown", &good_secret)),
            ("globex", None, form(&good_id, &good_secret)),
            ("ghost", None, form(&good_id, &good_secret)),
            ("bad%2Fname", None, form(&good_id, &good_secret)),
            (
                "acme",
                Some("Bearer abc"),
                "grant_type=client_credentials".to_owned(),
            ),
            (
                "acme",
                Some("Basic ###"),
                "grant_type=client_credentials".to_owned(),
            ),
        ];
        let mut bodies = Vec::new();
        for (domain, auth, body) in cases {
            let r = w.post(domain, auth, FORM, &body);
            assert_error(&r, 401, "invalid_client");
            bodies.push(r);
        }
        // Indistinguishable answers: same status, headers and body bytes.
        assert!(bodies.windows(2).all(|p| p[0] == p[1]));
        // Each one counted as a failed login; the client id when one was presented.
        let failures = w.attempts.failures.borrow();
        assert_eq!(failures.len(), 11);
        assert_eq!(failures[0], None, "no credentials: the address only");
        assert_eq!(failures[4].as_deref(), Some(good_id.as_str()));
        assert_eq!(failures[5].as_deref(), Some("unknown"));
        assert_eq!(
            failures[10], None,
            "a malformed Basic header: the address only"
        );
    }

    #[test]
    fn past_the_failed_login_limit_the_answer_is_429_with_retry_after() {
        let mut w = world();
        w.attempts.limit = 1;
        let wrong = format!(
            "grant_type=client_credentials&client_id={}&client_secret=wrong",
            w.id
        );
        assert_eq!(w.post("acme", None, FORM, &wrong).status, 401);
        let body = w.body_creds();
        let r = w.post("acme", None, FORM, &body);
        assert_eq!(r.status, 429, "{}", text(&r));
        assert_eq!(r.retry_after, Some(17));
        assert_eq!(
            text(&r),
            r#"{"error":"invalid_request","error_description":"too many failed attempts: retry in 17 s"}"#
        );
        assert!(!r.headers.iter().any(|(h, _)| *h == "WWW-Authenticate"));
        // The grant type is still checked first (PROTOCOL.md §1).
        let r = w.post("acme", None, FORM, "grant_type=password");
        assert_eq!(r.status, 400);
        assert_eq!(
            w.attempts.failures.borrow().len(),
            1,
            "a refusal is no failure"
        );
    }

    #[test]
    fn the_answer_to_bad_credentials_is_the_one_basic_upgrades_give() {
        // §7c: "The checks, the answers and the limits are those of the token endpoint".
        let mut w = world();
        let r = w.post(
            "acme",
            Some("Basic ###"),
            FORM,
            "grant_type=client_credentials",
        );
        assert_eq!(r.status, LoginError::InvalidClient.status());
        assert_eq!(r.body, LoginError::InvalidClient.body());
    }

    #[test]
    fn repeated_parameters_and_wrong_content_type_are_invalid_request() {
        let mut w = world();
        let body = format!("{}&client_id=other", w.body_creds());
        let r = w.post("acme", None, FORM, &body);
        assert_error(&r, 400, "invalid_request");
        let r = w.post(
            "acme",
            None,
            FORM,
            "grant_type=client_credentials&grant_type=client_credentials",
        );
        assert_error(&r, 400, "invalid_request");
        let body = w.body_creds();
        let r = w.post("acme", None, Some("application/json"), &body);
        assert_error(&r, 400, "invalid_request");
        // No content type at all: the form is still read.
        let r = w.post("acme", None, None, &body);
        assert_eq!(r.status, 200);
    }

    #[test]
    fn deleted_client_gets_no_token() {
        let mut w = world();
        let id = crate::ids::ClientId::new(w.id.as_str()).unwrap();
        w.store
            .delete_client(&DomainName::new("acme").unwrap(), &id)
            .unwrap();
        let body = w.body_creds();
        let r = w.post("acme", None, FORM, &body);
        assert_error(&r, 401, "invalid_client");
    }
}
