//! One login with client credentials: the code path shared by the token endpoint (§1) and
//! by `Authorization: Basic` on WebSocket upgrades and §10 requests (§7c).
//!
//! PROTOCOL.md §7c: "The checks, the answers and the limits are those of the token
//! endpoint (§1): every credential failure, a malformed Basic header included, answers
//! `401`". So both callers go through [`ClientLogin::log_in`], which
//! 1. asks the failed-login limits ([`LoginAttempts`]) whether this client and address may
//!    try now (§1: past a limit, `429` with `Retry-After`);
//! 2. verifies the secret: a recently verified one from the [`CredentialCache`], otherwise
//!    argon2 against the stored hash, or against the hasher's dummy hash when the client
//!    is unknown, so that unknown and wrong cost the same time ([`verify_client`]);
//! 3. records a failure with the limits, for the client id presented and the address.
//!
//! Missing or malformed credentials are failures too (step 3, for the address only).
//! Sans-IO: the limits are a trait the io layer implements over its admission state, with
//! the peer's address and the time of the attempt captured in it.

use std::net::IpAddr;
use std::time::Instant;

use super::cache::CredentialCache;
use super::credentials::verify_client;
use super::secrets::{ClientSecret, SecretHasher};
use super::AuthError;
use crate::ids::{ClientId, DomainName};
use crate::store::{Store, StoreError};
use crate::tenancy::ClientRecord;

/// A client id and secret as a client presented them (not yet verified).
///
/// Its `Debug` output never shows the secret (a Basic secret is never logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedCredentials {
    /// The client id, as sent.
    pub client_id: String,
    /// The secret, as sent.
    pub secret: ClientSecret,
}

/// An `Authorization` header read as HTTP Basic client credentials (RFC 7617, with the
/// form-encoding of RFC 6749 §2.3.1).
#[derive(Debug, PartialEq, Eq)]
pub enum BasicAuth {
    /// No `Authorization` header.
    Absent,
    /// `Basic` with a decodable `id:secret`.
    Credentials(PresentedCredentials),
    /// Another scheme, or `Basic` that does not decode: a failed client authentication
    /// (§7c: "a malformed Basic header included, answers `401`").
    Invalid,
}

impl BasicAuth {
    /// Reads the `Authorization` header value, if any.
    pub fn parse(authorization: Option<&str>) -> Self {
        match authorization {
            None => Self::Absent,
            Some(header) => match crate::handshake::parse_basic_auth(header) {
                Some((client_id, secret)) => Self::Credentials(PresentedCredentials {
                    client_id,
                    secret: ClientSecret::new(secret),
                }),
                None => Self::Invalid,
            },
        }
    }

    /// Whether the header uses the `Basic` scheme at all (then it is this module's to
    /// answer, even when it does not decode), as opposed to `Bearer` or none.
    pub fn is_basic_scheme(authorization: &str) -> bool {
        authorization
            .trim_start_matches([' ', '\t'])
            .split_once(' ')
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
    }
}

/// §1: a client or address past its failed-login limit: retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginThrottled {
    /// The `Retry-After` value.
    pub retry_after_secs: u64,
}

/// The failed-login limits of §1 (`--failed-logins-per-client`, `--failed-logins-per-address`)
/// as one login attempt sees them: the io layer implements it over its admission state,
/// with the peer's address and the time of the attempt captured in the implementing value.
pub trait LoginAttempts {
    /// Whether a login by `client_id` (when one was presented) may be tried now.
    fn check(&self, client_id: Option<&str>) -> Result<(), LoginThrottled>;
    /// Records a failed login by `client_id` (when one was presented).
    fn failed(&self, client_id: Option<&str>);
    /// Records a successful login by `client_id` (its address is known to the client from
    /// then on: the per-client ceiling spares it).
    fn succeeded(&self, client_id: &str);
}

/// Which domain the client must belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginDomain<'a> {
    /// The token endpoint's `{domain}` (undecoded path text: a malformed one is an unknown
    /// domain, answered like a wrong secret).
    Named(&'a str),
    /// Any: the client id names its domain (client ids are unique across domains). WebSocket
    /// upgrades and §10 requests carry no domain.
    OfClient,
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// §1: past a failed-login limit: `429` with `Retry-After`.
    #[error("too many failed logins: retry in {} s", .0.retry_after_secs)]
    Throttled(LoginThrottled),
    /// Missing, malformed, unknown or wrong credentials, or an unknown domain: `401`
    /// (`invalid_client` on the token endpoint). All alike, in answer and in time.
    #[error("invalid client credentials")]
    InvalidClient,
    /// The store failed while looking the client up: `500`, not the client's fault (not
    /// counted as a failed login).
    #[error("store failure while authenticating: {0}")]
    Storage(StoreError),
}

impl LoginError {
    /// The HTTP status: `429`, `401` or `500`.
    pub fn status(&self) -> u16 {
        match self {
            Self::Throttled(_) => 429,
            Self::InvalidClient => 401,
            Self::Storage(_) => 500,
        }
    }

    /// The `Retry-After` seconds of a `429`.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Throttled(t) => Some(t.retry_after_secs),
            Self::InvalidClient | Self::Storage(_) => None,
        }
    }

    /// The JSON body of the answer, the same on the token endpoint and on upgrades (§7c:
    /// "the answers ... are those of the token endpoint"): RFC 6749 §5.2 `invalid_client`,
    /// and for a `429` what to do.
    pub fn body(&self) -> Vec<u8> {
        match self {
            Self::Throttled(t) => format!(
                r#"{{"error":"invalid_request","error_description":"too many failed attempts: retry in {} s"}}"#,
                t.retry_after_secs
            )
            .into_bytes(),
            Self::InvalidClient => br#"{"error":"invalid_client"}"#.to_vec(),
            Self::Storage(_) => br#"{"error":"server_error"}"#.to_vec(),
        }
    }
}

/// §7c's challenge on a `401` to Basic credentials on an upgrade or a §10 request: the relay
/// "never sends a `Basic` challenge, so browsers never cache credentials for it".
pub const UPGRADE_CHALLENGE: &str = r#"Bearer realm="posrelay""#;

/// Whether Basic credentials may be used on an upgrade arriving this way (§7c: "On a plain
/// `ws://` listener Basic credentials are accepted only from a loopback peer; elsewhere they
/// answer `401` (use `wss://`)"). An IPv4 loopback peer seen through an IPv4-mapped IPv6
/// address is a loopback peer.
pub fn basic_allowed(tls: bool, peer: IpAddr) -> bool {
    tls || peer.to_canonical().is_loopback()
}

/// The shared credential check: where clients are, how secrets are verified, and the cache
/// of recently verified secrets (optional: the token endpoint of a process without one).
pub struct ClientLogin<'a, S: Store + ?Sized> {
    /// Where clients are.
    pub store: &'a S,
    /// Verifies secrets, and holds the dummy hash for unknown clients.
    pub hasher: &'a SecretHasher,
    /// Recently verified secrets (see [`CredentialCache`]); successes only.
    pub cache: Option<&'a CredentialCache>,
    /// Unix seconds now: a rotated client's previous secret is good until its deadline.
    pub unix_now: u64,
    /// Salts for the hash a legacy (argon2) secret hash is migrated to at its next
    /// successful login.
    pub rng: &'a std::cell::RefCell<dyn rand_core::CryptoRngCore + 'a>,
}

// The cache keeps no Debug of its own (it holds verified secrets' MACs): say only whether
// there is one.
impl<S: Store + ?Sized + std::fmt::Debug> std::fmt::Debug for ClientLogin<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLogin")
            .field("store", &self.store)
            .field("hasher", &self.hasher)
            .field("cache", &self.cache.is_some())
            .finish()
    }
}

impl<S: Store + ?Sized> ClientLogin<'_, S> {
    /// One login attempt at `now` with `presented` credentials (`None`: missing or
    /// malformed), counted with `attempts`. Runs argon2 on a cache miss (tens of
    /// milliseconds in production): call it off the event loop.
    pub fn log_in(
        &self,
        domain: LoginDomain<'_>,
        presented: Option<&PresentedCredentials>,
        attempts: &dyn LoginAttempts,
        now: Instant,
    ) -> Result<ClientRecord, LoginError> {
        let client_id = presented.map(|p| p.client_id.as_str());
        attempts.check(client_id).map_err(LoginError::Throttled)?;
        let verified = match presented {
            Some(p) => self.verify(domain, p, now).map_err(LoginError::Storage)?,
            None => None,
        };
        match verified {
            Some(client) => {
                attempts.succeeded(client.client_id.as_str());
                Ok(client)
            }
            None => {
                attempts.failed(client_id);
                Err(LoginError::InvalidClient)
            }
        }
    }

    /// §7c: a login with an `Authorization` header that uses the Basic scheme, on an
    /// upgrade arriving over TLS or not (`tls`) from `peer`. A Basic header on plain
    /// `ws://` from another host is refused like a wrong secret (and counted), without
    /// looking at it.
    pub fn log_in_basic(
        &self,
        authorization: &str,
        tls: bool,
        peer: IpAddr,
        attempts: &dyn LoginAttempts,
        now: Instant,
    ) -> Result<ClientRecord, LoginError> {
        if !basic_allowed(tls, peer) {
            attempts.check(None).map_err(LoginError::Throttled)?;
            attempts.failed(None);
            return Err(LoginError::InvalidClient);
        }
        let presented = match BasicAuth::parse(Some(authorization)) {
            BasicAuth::Credentials(p) => Some(p),
            BasicAuth::Absent | BasicAuth::Invalid => None,
        };
        self.log_in(LoginDomain::OfClient, presented.as_ref(), attempts, now)
    }

    /// The client, if the secret is right for it (in `domain`); `Ok(None)` for every kind
    /// of wrong, each paying one argon2 verification unless the cache knows the secret.
    fn verify(
        &self,
        domain: LoginDomain<'_>,
        presented: &PresentedCredentials,
        now: Instant,
    ) -> Result<Option<ClientRecord>, StoreError> {
        let id = ClientId::new(presented.client_id.as_str()).ok();
        let in_domain = |record: &ClientRecord| match domain {
            LoginDomain::Named(name) => DomainName::new(name).is_ok_and(|d| d == record.domain),
            LoginDomain::OfClient => true,
        };
        if let (Some(cache), Some(id)) = (self.cache, id.as_ref()) {
            if let Some(hit) = cache.check(id, &presented.secret, now).filter(in_domain) {
                return Ok(Some(hit));
            }
        }
        let domain_name = match (domain, id.as_ref()) {
            (LoginDomain::Named(name), _) => name.to_owned(),
            (LoginDomain::OfClient, Some(id)) => {
                match super::find_client_caught_up(self.store, id)? {
                    Some(client) => client.domain.to_string(),
                    None => UNKNOWN_DOMAIN.to_owned(),
                }
            }
            (LoginDomain::OfClient, None) => UNKNOWN_DOMAIN.to_owned(),
        };
        let mut guard = self.rng.borrow_mut();
        let mut rng: &mut dyn rand_core::CryptoRngCore = &mut *guard;
        match verify_client(
            self.store,
            self.hasher,
            &domain_name,
            &presented.client_id,
            &presented.secret,
            self.unix_now,
            &mut rng,
        ) {
            Ok(client) => {
                // During a rotation's grace the cache could keep the old secret past its
                // deadline: verify in full until the grace ends.
                let rotating = client
                    .previous_secret
                    .as_ref()
                    .is_some_and(|p| p.valid_at(self.unix_now));
                if let (Some(cache), false) = (self.cache, rotating) {
                    cache.remember(&client, &presented.secret, now);
                }
                Ok(Some(client))
            }
            Err(AuthError::Storage(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }
}

/// A domain name that cannot exist: an unknown client is still verified (against the
/// dummy hash) under it, so that it costs what a wrong secret costs.
const UNKNOWN_DOMAIN: &str = "-";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{new_client_credentials, HashCost};
    use crate::store::MemStore;
    use crate::tenancy::Scope;
    use base64::Engine as _;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::cell::RefCell;
    use std::time::Duration;

    /// Limits that block after `limit` failures, and record every call.
    #[derive(Default)]
    struct Counted {
        limit: usize,
        checks: RefCell<Vec<Option<String>>>,
        failures: RefCell<Vec<Option<String>>>,
    }

    impl Counted {
        fn new(limit: usize) -> Self {
            Self {
                limit,
                ..Self::default()
            }
        }
    }

    impl LoginAttempts for Counted {
        fn check(&self, client_id: Option<&str>) -> Result<(), LoginThrottled> {
            self.checks.borrow_mut().push(client_id.map(str::to_owned));
            if self.failures.borrow().len() >= self.limit {
                return Err(LoginThrottled {
                    retry_after_secs: 42,
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

    struct World {
        store: MemStore,
        hasher: SecretHasher,
        cache: CredentialCache,
        client: ClientRecord,
        secret: ClientSecret,
        rng: std::cell::RefCell<StdRng>,
    }

    fn world() -> World {
        let store = MemStore::new();
        let hasher = SecretHasher::new(HashCost::TEST_ONLY);
        let mut rng = StdRng::seed_from_u64(3);
        for domain in ["acme", "globex"] {
            store
                .create_domain(&DomainName::new(domain).expect("name"))
                .expect("domain");
        }
        let (client_id, secret, secret_hash) = new_client_credentials(&hasher, &mut rng);
        let client = ClientRecord {
            domain: DomainName::new("acme").expect("name"),
            client_id,
            scope: Scope::Domain,
            secret_hash,
            previous_secret: None,
        };
        store.create_client(&client).expect("client");
        World {
            store,
            hasher,
            cache: CredentialCache::new([1; 32], Duration::from_secs(60)),
            rng: std::cell::RefCell::new(StdRng::seed_from_u64(4)),
            client,
            secret,
        }
    }

    impl World {
        fn login(&self, cache: bool) -> ClientLogin<'_, MemStore> {
            ClientLogin {
                store: &self.store,
                hasher: &self.hasher,
                cache: cache.then_some(&self.cache),
                unix_now: 0,
                rng: &self.rng,
            }
        }

        fn presented(&self, secret: &str) -> PresentedCredentials {
            PresentedCredentials {
                client_id: self.client.client_id.to_string(),
                secret: ClientSecret::new(secret),
            }
        }

        fn basic(&self, secret: &str) -> String {
            let pair = format!("{}:{secret}", self.client.client_id);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn basic_header_parses_id_and_secret_and_hides_the_secret() {
        let pair = base64::engine::general_purpose::STANDARD.encode("abc:s3cr%3At+x");
        let BasicAuth::Credentials(p) = BasicAuth::parse(Some(&format!("Basic {pair}"))) else {
            panic!("credentials");
        };
        assert_eq!(
            (p.client_id.as_str(), p.secret.expose()),
            ("abc", "s3cr:t x")
        );
        assert!(!format!("{p:?}").contains("s3cr"));
        // The scheme is case-insensitive; the secret may contain ':'.
        let pair = base64::engine::general_purpose::STANDARD.encode("abc:a:b");
        let BasicAuth::Credentials(p) = BasicAuth::parse(Some(&format!("bAsIc {pair}"))) else {
            panic!("credentials");
        };
        assert_eq!(p.secret.expose(), "a:b");
        assert_eq!(BasicAuth::parse(None), BasicAuth::Absent);
        let no_colon = base64::engine::general_purpose::STANDARD.encode("no-colon");
        let bad_escape = base64::engine::general_purpose::STANDARD.encode("a:%ff");
        for bad in [
            "Bearer abc".to_owned(),
            "Basic".to_owned(),
            "Basic !!!".to_owned(),
            format!("Basic {no_colon}"),
            format!("Basic {bad_escape}"),
        ] {
            assert_eq!(BasicAuth::parse(Some(&bad)), BasicAuth::Invalid, "{bad}");
        }
        assert!(BasicAuth::is_basic_scheme("Basic !!!"));
        assert!(BasicAuth::is_basic_scheme("  basic x"));
        assert!(!BasicAuth::is_basic_scheme("Bearer x"));
        assert!(!BasicAuth::is_basic_scheme("Basic"));
    }

    #[test]
    fn the_right_secret_logs_in_in_its_domain_or_by_client_id() {
        let w = world();
        let attempts = Counted::new(10);
        let now = Instant::now();
        let good = w.presented(w.secret.expose());
        for domain in [LoginDomain::Named("acme"), LoginDomain::OfClient] {
            assert_eq!(
                w.login(false).log_in(domain, Some(&good), &attempts, now),
                Ok(w.client.clone())
            );
        }
        assert!(attempts.failures.borrow().is_empty());
        assert_eq!(
            attempts.checks.borrow().len(),
            2,
            "every attempt is checked"
        );
    }

    #[test]
    fn every_failure_is_invalid_client_and_counted() {
        let w = world();
        let attempts = Counted::new(100);
        let now = Instant::now();
        let id = w.client.client_id.to_string();
        let cases: Vec<(
            LoginDomain<'_>,
            Option<PresentedCredentials>,
            Option<String>,
        )> = vec![
            (
                LoginDomain::Named("acme"),
                Some(w.presented("wrong")),
                Some(id.clone()),
            ),
            (
                LoginDomain::OfClient,
                Some(w.presented("wrong")),
                Some(id.clone()),
            ),
            (
                LoginDomain::Named("globex"),
                Some(w.presented(w.secret.expose())),
                Some(id.clone()),
            ),
            (
                LoginDomain::Named("bad/name"),
                Some(w.presented(w.secret.expose())),
                Some(id.clone()),
            ),
            (
                LoginDomain::OfClient,
                Some(PresentedCredentials {
                    client_id: "nobody".into(),
                    secret: w.secret.clone(),
                }),
                Some("nobody".into()),
            ),
            (LoginDomain::OfClient, None, None),
        ];
        for (domain, presented, counted_as) in cases {
            let before = attempts.failures.borrow().len();
            assert_eq!(
                w.login(true)
                    .log_in(domain, presented.as_ref(), &attempts, now),
                Err(LoginError::InvalidClient),
                "{domain:?} {presented:?}"
            );
            assert_eq!(attempts.failures.borrow().len(), before + 1);
            assert_eq!(attempts.failures.borrow().last(), Some(&counted_as));
        }
        assert_eq!(LoginError::InvalidClient.status(), 401);
    }

    #[test]
    fn an_unknown_client_pays_a_full_verification_like_a_wrong_secret() {
        let w = world();
        let attempts = Counted::new(10);
        assert!(!w.hasher.dummy_built());
        let nobody = PresentedCredentials {
            client_id: "nobody".into(),
            secret: ClientSecret::new("x"),
        };
        let got = w.login(true).log_in(
            LoginDomain::OfClient,
            Some(&nobody),
            &attempts,
            Instant::now(),
        );
        assert_eq!(got, Err(LoginError::InvalidClient));
        // The dummy hash is built only by verifying against it.
        assert!(w.hasher.dummy_built());
    }

    #[test]
    fn past_the_limit_nothing_is_verified_and_the_answer_is_429() {
        let w = world();
        let attempts = Counted::new(1);
        let now = Instant::now();
        let wrong = w.presented("wrong");
        assert_eq!(
            w.login(false)
                .log_in(LoginDomain::OfClient, Some(&wrong), &attempts, now),
            Err(LoginError::InvalidClient)
        );
        let good = w.presented(w.secret.expose());
        let err = w
            .login(false)
            .log_in(LoginDomain::OfClient, Some(&good), &attempts, now)
            .expect_err("throttled");
        assert_eq!(
            err,
            LoginError::Throttled(LoginThrottled {
                retry_after_secs: 42
            })
        );
        assert_eq!((err.status(), err.retry_after_secs()), (429, Some(42)));
        assert_eq!(
            attempts.failures.borrow().len(),
            1,
            "a refusal is not a failure"
        );
    }

    #[test]
    fn a_verified_secret_is_cached_but_only_for_its_domain() {
        let w = world();
        let attempts = Counted::new(10);
        let now = Instant::now();
        let good = w.presented(w.secret.expose());
        w.login(true)
            .log_in(LoginDomain::OfClient, Some(&good), &attempts, now)
            .expect("logged in");
        assert!(w.cache.check(&w.client.client_id, &w.secret, now).is_some());
        // A cache hit still honours the token endpoint's domain.
        assert_eq!(
            w.login(true)
                .log_in(LoginDomain::Named("globex"), Some(&good), &attempts, now),
            Err(LoginError::InvalidClient)
        );
    }

    #[test]
    fn basic_on_upgrades_follows_section_7c() {
        let w = world();
        let attempts = Counted::new(100);
        let now = Instant::now();
        let login = w.login(true);
        let good = w.basic(w.secret.expose());
        assert_eq!(
            login.log_in_basic(&good, false, LOCAL, &attempts, now),
            Ok(w.client.clone())
        );
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        assert!(login
            .log_in_basic(&good, false, mapped, &attempts, now)
            .is_ok());
        assert!(login
            .log_in_basic(&good, false, "::1".parse().expect("ip"), &attempts, now)
            .is_ok());
        // Plain ws:// from another host: refused like a wrong secret, and counted.
        let remote: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(
            login.log_in_basic(&good, false, remote, &attempts, now),
            Err(LoginError::InvalidClient)
        );
        assert_eq!(attempts.failures.borrow().last(), Some(&None));
        // Over TLS, from anywhere.
        assert!(login
            .log_in_basic(&good, true, remote, &attempts, now)
            .is_ok());
        // A malformed Basic header is a credential failure (401), counted for the address.
        let before = attempts.failures.borrow().len();
        assert_eq!(
            login.log_in_basic("Basic %%%", true, remote, &attempts, now),
            Err(LoginError::InvalidClient)
        );
        assert_eq!(attempts.failures.borrow().len(), before + 1);
        let wrong = w.basic("wrong");
        assert_eq!(
            login.log_in_basic(&wrong, true, remote, &attempts, now),
            Err(LoginError::InvalidClient)
        );
        assert!(UPGRADE_CHALLENGE.starts_with("Bearer"));
    }
}
