//! Access and device tokens: HS256 JWTs (RFC 7519) signed with the store's signing key.
//!
//! Claims: `iss` "posrelay"; `aud` "posrelay-pos" (access) or "posrelay-device" (device);
//! `sub` the client id; `dom` the domain; `scope` `{"store":"s1"}` or `{}` (access
//! tokens); `sid` and `tsn` (device tokens); `iat`, `exp` (unix seconds); `jti` (128
//! random bits). The audiences keep the two kinds apart (PROTOCOL.md §3).
//!
//! Verification never reads a clock: the caller passes `now`, `exp` is checked here with
//! no leeway, and jsonwebtoken's own time checks are off. Verification also consults the
//! store, so that a deleted client's tokens stop working at once (PROTOCOL.md §9) and a
//! caller cannot forget to check.

use std::fmt;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::scope::Principal;
use super::AuthError;
use crate::ids::{ClientId, ClientKey, DomainName, Serial, SessionId};
use crate::store::Store;
use crate::tenancy::ClientRecord;
use crate::tenancy::{Scope, ScopeJson};

/// The `iss` of every token.
pub const ISSUER: &str = "posrelay";
/// The `aud` of access tokens (POS control channel and sessions).
pub const ACCESS_AUDIENCE: &str = "posrelay-pos";
/// The `aud` of device tokens (device connections).
pub const DEVICE_AUDIENCE: &str = "posrelay-device";
/// Default lifetime of an access token, seconds (RFC 6749 §5.1 `expires_in`).
pub const DEFAULT_ACCESS_TTL: u64 = 3600;
/// Lifetime of a device token, seconds (PROTOCOL.md §2 `"expires_in":300`).
pub const DEVICE_TOKEN_TTL: u64 = 300;

/// The 32-byte HMAC key that signs every token. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey([u8; 32]);

impl SigningKey {
    /// Wraps key bytes (from [`crate::store::Store::load_or_create_signing_key`]).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// A freshly signed token and its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The compact JWT.
    pub token: String,
    /// Seconds until it expires (the `expires_in` of the answer).
    pub expires_in: u64,
}

/// A verified access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    /// The client's domain (`dom`).
    pub domain: DomainName,
    /// The client (`sub`).
    pub client_id: ClientId,
    /// Its scope, as the store has it now.
    pub scope: Scope,
    /// `iat`, unix seconds.
    pub issued_at: u64,
    /// `exp`, unix seconds: a POS connection closes with 4401 then (PROTOCOL.md §5).
    pub expires_at: u64,
}

impl AccessClaims {
    /// `expires_at` of a connection that logged in with client credentials instead of a
    /// token (PROTOCOL.md §7c: "Such a connection has no token, so it never closes with
    /// 4401").
    pub const NEVER_EXPIRES: u64 = u64::MAX;

    /// The claims of a client that logged in with its credentials on an upgrade or a §10
    /// request (§7c) at `now`: what a token would have said, without an expiry.
    pub fn of_client_login(client: &ClientRecord, now: u64) -> Self {
        Self {
            domain: client.domain.clone(),
            client_id: client.client_id.clone(),
            scope: client.scope.clone(),
            issued_at: now,
            expires_at: Self::NEVER_EXPIRES,
        }
    }

    /// The client as a key (domain + id).
    pub fn client(&self) -> ClientKey {
        ClientKey {
            domain: self.domain.clone(),
            client_id: self.client_id.clone(),
        }
    }
}

impl Principal for AccessClaims {
    fn domain(&self) -> &DomainName {
        &self.domain
    }
    fn scope(&self) -> &Scope {
        &self.scope
    }
}

/// A verified device token, already checked against the session it was presented for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceClaims {
    /// The device's domain (`dom`).
    pub domain: DomainName,
    /// The client whose credentials registered the device (`sub`).
    pub client_id: ClientId,
    /// The bare serial (`tsn`).
    pub serial: Serial,
    /// The session (`sid`).
    pub session_id: SessionId,
    /// `iat`, unix seconds.
    pub issued_at: u64,
    /// `exp`, unix seconds.
    pub expires_at: u64,
}

/// The JWT claims set as it is on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct WireClaims {
    iss: String,
    aud: String,
    sub: String,
    dom: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<ScopeJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tsn: Option<String>,
    iat: u64,
    exp: u64,
    jti: String,
}

/// Which of the two token kinds a verification expects.
#[derive(Debug, Clone, Copy)]
enum TokenKind {
    Access,
    Device,
}

/// Signs and verifies tokens with one key.
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    access: Validation,
    device: Validation,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenIssuer(<key redacted>)")
    }
}

fn validation(audience: &str) -> Validation {
    // Only HS256: `alg: none` and every other algorithm are refused (RFC 8725 §3.1).
    let mut v = Validation::new(Algorithm::HS256);
    // Time is checked by us against the caller's `now` (RFC 7519 §4.1.4), not the clock.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    // RFC 7519 §4.1.3: a token without our audience is not for us.
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.set_audience(&[audience]);
    v.set_issuer(&[ISSUER]);
    v
}

fn jti(rng: &mut (impl RngCore + CryptoRng)) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn invalid(reason: impl fmt::Display) -> AuthError {
    AuthError::InvalidToken {
        reason: reason.to_string(),
    }
}

impl TokenIssuer {
    /// An issuer signing with `key`.
    pub fn new(key: &SigningKey) -> Self {
        Self {
            encoding: EncodingKey::from_secret(&key.0),
            decoding: DecodingKey::from_secret(&key.0),
            access: validation(ACCESS_AUDIENCE),
            device: validation(DEVICE_AUDIENCE),
        }
    }

    fn sign(&self, claims: &WireClaims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding).map_err(|e| {
            AuthError::Signing {
                reason: e.to_string(),
            }
        })
    }

    /// An access token for `client`, valid for `ttl` seconds from `now`
    /// ([`DEFAULT_ACCESS_TTL`] unless configured).
    pub fn issue_access(
        &self,
        client: &ClientRecord,
        now: u64,
        ttl: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<IssuedToken, AuthError> {
        let claims = WireClaims {
            iss: ISSUER.to_owned(),
            aud: ACCESS_AUDIENCE.to_owned(),
            sub: client.client_id.as_str().to_owned(),
            dom: client.domain.as_str().to_owned(),
            scope: Some(client.scope.to_json()),
            sid: None,
            tsn: None,
            iat: now,
            exp: now.saturating_add(ttl),
            jti: jti(rng),
        };
        Ok(IssuedToken {
            token: self.sign(&claims)?,
            expires_in: ttl,
        })
    }

    /// A device token binding `serial` to `session`, for the device connection
    /// (PROTOCOL.md §2, §3), valid for `ttl` seconds ([`DEVICE_TOKEN_TTL`]).
    pub fn issue_device(
        &self,
        client: &ClientKey,
        serial: &Serial,
        session: &SessionId,
        now: u64,
        ttl: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<IssuedToken, AuthError> {
        let claims = WireClaims {
            iss: ISSUER.to_owned(),
            aud: DEVICE_AUDIENCE.to_owned(),
            sub: client.client_id.as_str().to_owned(),
            dom: client.domain.as_str().to_owned(),
            scope: None,
            sid: Some(session.as_str().to_owned()),
            tsn: Some(serial.as_str().to_owned()),
            iat: now,
            exp: now.saturating_add(ttl),
            jti: jti(rng),
        };
        Ok(IssuedToken {
            token: self.sign(&claims)?,
            expires_in: ttl,
        })
    }

    /// Checks signature, algorithm, issuer, audience and expiry (strictly before `exp`).
    fn decode(&self, token: &str, kind: TokenKind, now: u64) -> Result<WireClaims, AuthError> {
        let (validation, expected) = match kind {
            TokenKind::Access => (&self.access, ACCESS_AUDIENCE),
            TokenKind::Device => (&self.device, DEVICE_AUDIENCE),
        };
        let data =
            jsonwebtoken::decode::<WireClaims>(token, &self.decoding, validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidAudience => AuthError::WrongAudience { expected },
                    _ => invalid(e),
                }
            })?;
        let claims = data.claims;
        // RFC 7519 §4.1.4: "the current date/time MUST be before the expiration date/time".
        if now >= claims.exp {
            return Err(AuthError::Expired {
                exp: claims.exp,
                now,
            });
        }
        Ok(claims)
    }

    /// Verifies an access token at `now` and that its client still exists with the same
    /// scope (a deleted client's tokens stop working, PROTOCOL.md §9).
    pub fn verify_access<S: Store + ?Sized>(
        &self,
        store: &S,
        token: &str,
        now: u64,
    ) -> Result<AccessClaims, AuthError> {
        let claims = self.decode(token, TokenKind::Access, now)?;
        let domain = DomainName::new(claims.dom).map_err(invalid)?;
        let client_id = ClientId::new(claims.sub).map_err(invalid)?;
        let scope = claims
            .scope
            .ok_or_else(|| invalid("access token without scope"))?
            .into_scope()
            .map_err(invalid)?;
        let revoked = || AuthError::Revoked {
            domain: domain.to_string(),
            client_id: client_id.to_string(),
        };
        let record = store.get_client(&domain, &client_id)?.ok_or_else(revoked)?;
        if record.scope != scope {
            return Err(revoked());
        }
        Ok(AccessClaims {
            domain,
            client_id,
            scope,
            issued_at: claims.iat,
            expires_at: claims.exp,
        })
    }

    /// Verifies a device token at `now` for the connection to `session`
    /// (PROTOCOL.md §3: "The token must belong to that session"), that the client that
    /// registered it still exists, and that the device is still provisioned and enabled.
    pub fn verify_device<S: Store + ?Sized>(
        &self,
        store: &S,
        token: &str,
        session: &SessionId,
        now: u64,
    ) -> Result<DeviceClaims, AuthError> {
        let claims = self.decode(token, TokenKind::Device, now)?;
        let domain = DomainName::new(claims.dom).map_err(invalid)?;
        let client_id = ClientId::new(claims.sub).map_err(invalid)?;
        let sid = claims
            .sid
            .ok_or_else(|| invalid("device token without sid"))?;
        let serial = claims
            .tsn
            .ok_or_else(|| invalid("device token without tsn"))?;
        let serial = Serial::new(serial).map_err(invalid)?;
        let session_id = SessionId::new(sid).map_err(invalid)?;
        if session_id != *session {
            return Err(AuthError::WrongSession);
        }
        if store.get_client(&domain, &client_id)?.is_none() {
            return Err(AuthError::Revoked {
                domain: domain.to_string(),
                client_id: client_id.to_string(),
            });
        }
        match store.get_device(&domain, &serial)? {
            Some(device) if device.enabled => {}
            _ => {
                return Err(AuthError::DeviceDisabled {
                    serial: serial.to_string(),
                })
            }
        }
        Ok(DeviceClaims {
            domain,
            client_id,
            serial,
            session_id,
            issued_at: claims.iat,
            expires_at: claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{HashCost, SecretHasher};
    use crate::ids::StoreName;
    use crate::store::conformance::{device_rec, store_rec};
    use crate::store::MemStore;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const NOW: u64 = 1_700_000_000;

    struct World {
        store: MemStore,
        issuer: TokenIssuer,
        pos: ClientRecord,
        rng: StdRng,
    }

    fn world() -> World {
        let store = MemStore::new();
        for domain in ["acme", "globex"] {
            store
                .create_domain(&DomainName::new(domain).unwrap())
                .unwrap();
            store.create_store(&store_rec(domain, "s1")).unwrap();
            store
                .create_device(&device_rec(domain, "100", "s1"))
                .unwrap();
        }
        let pos = ClientRecord {
            domain: DomainName::new("acme").unwrap(),
            client_id: ClientId::new("pos1").unwrap(),
            scope: Scope::Store(StoreName::new("s1").unwrap()),
            secret_hash: SecretHasher::new(HashCost::TEST_ONLY).dummy_hash().clone(),
            previous_secret: None,
        };
        store.create_client(&pos).unwrap();
        World {
            store,
            issuer: TokenIssuer::new(&SigningKey::from_bytes([42; 32])),
            pos,
            rng: StdRng::seed_from_u64(9),
        }
    }

    fn session() -> SessionId {
        SessionId::from_random([3; 16])
    }

    #[test]
    fn access_token_round_trip() {
        let mut w = world();
        let issued = w
            .issuer
            .issue_access(&w.pos, NOW, DEFAULT_ACCESS_TTL, &mut w.rng)
            .unwrap();
        assert_eq!(issued.expires_in, 3600);
        let claims = w
            .issuer
            .verify_access(&w.store, &issued.token, NOW)
            .unwrap();
        assert_eq!(claims.domain.as_str(), "acme");
        assert_eq!(claims.client_id.as_str(), "pos1");
        assert_eq!(claims.scope, w.pos.scope);
        assert_eq!((claims.issued_at, claims.expires_at), (NOW, NOW + 3600));
        assert_eq!(claims.client(), w.pos.key());
    }

    #[test]
    fn claims_are_named_as_documented() {
        let mut w = world();
        let issued = w.issuer.issue_access(&w.pos, NOW, 60, &mut w.rng).unwrap();
        let payload = issued.token.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let text = String::from_utf8(json).unwrap();
        for needle in [
            r#""iss":"posrelay""#,
            r#""aud":"posrelay-pos""#,
            r#""sub":"pos1""#,
            r#""dom":"acme""#,
            r#""scope":{"store":"s1"}"#,
            r#""jti":""#,
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }

    #[test]
    fn expired_at_exp_exactly() {
        let mut w = world();
        let issued = w.issuer.issue_access(&w.pos, NOW, 60, &mut w.rng).unwrap();
        assert!(w
            .issuer
            .verify_access(&w.store, &issued.token, NOW + 59)
            .is_ok());
        let err = w
            .issuer
            .verify_access(&w.store, &issued.token, NOW + 60)
            .unwrap_err();
        assert_eq!(
            err,
            AuthError::Expired {
                exp: NOW + 60,
                now: NOW + 60
            }
        );
        assert_eq!(err.close_code(), 4401);
    }

    #[test]
    fn tampered_payload_or_signature_is_refused() {
        let mut w = world();
        let issued = w.issuer.issue_access(&w.pos, NOW, 60, &mut w.rng).unwrap();
        let parts: Vec<&str> = issued.token.split('.').collect();
        // A payload naming another domain, with the original signature.
        let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            format!(
                r#"{{"iss":"posrelay","aud":"posrelay-pos","sub":"pos1","dom":"globex","scope":{{}},"iat":{NOW},"exp":{},"jti":"x"}}"#,
                NOW + 60
            ),
        );
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        let err = w.issuer.verify_access(&w.store, &forged, NOW).unwrap_err();
        assert!(matches!(err, AuthError::InvalidToken { .. }), "{err:?}");
        // A flipped signature character.
        let mut sig = parts[2].to_owned();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        sig.replace_range(0..1, flipped);
        let bad_sig = format!("{}.{}.{}", parts[0], parts[1], sig);
        assert!(matches!(
            w.issuer.verify_access(&w.store, &bad_sig, NOW),
            Err(AuthError::InvalidToken { .. })
        ));
        // Another key.
        let other = TokenIssuer::new(&SigningKey::from_bytes([43; 32]));
        assert!(matches!(
            other.verify_access(&w.store, &issued.token, NOW),
            Err(AuthError::InvalidToken { .. })
        ));
        assert!(matches!(
            w.issuer.verify_access(&w.store, "not a jwt", NOW),
            Err(AuthError::InvalidToken { .. })
        ));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let w = world();
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = b64(&format!(
            r#"{{"iss":"posrelay","aud":"posrelay-pos","sub":"pos1","dom":"acme","scope":{{}},"iat":{NOW},"exp":{},"jti":"x"}}"#,
            NOW + 60
        ));
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"None"}"#] {
            for sig in ["", "x"] {
                let token = format!("{}.{}.{}", b64(header), payload, sig);
                assert!(
                    matches!(
                        w.issuer.verify_access(&w.store, &token, NOW),
                        Err(AuthError::InvalidToken { .. })
                    ),
                    "{header} {sig:?}"
                );
            }
        }
        // HS512 with the right key is still refused: only HS256 is accepted.
        let claims: WireClaims = simd_json::serde::from_slice(
            &mut base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&payload)
                .unwrap(),
        )
        .unwrap();
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(&[42; 32]),
        )
        .unwrap();
        assert!(matches!(
            w.issuer.verify_access(&w.store, &hs512, NOW),
            Err(AuthError::InvalidToken { .. })
        ));
    }

    #[test]
    fn device_and_access_tokens_are_not_interchangeable() {
        let mut w = world();
        let access = w.issuer.issue_access(&w.pos, NOW, 60, &mut w.rng).unwrap();
        let device = w
            .issuer
            .issue_device(
                &w.pos.key(),
                &Serial::new("100").unwrap(),
                &session(),
                NOW,
                DEVICE_TOKEN_TTL,
                &mut w.rng,
            )
            .unwrap();
        assert_eq!(device.expires_in, 300);
        assert_eq!(
            w.issuer.verify_access(&w.store, &device.token, NOW),
            Err(AuthError::WrongAudience {
                expected: ACCESS_AUDIENCE
            })
        );
        let err = w
            .issuer
            .verify_device(&w.store, &access.token, &session(), NOW)
            .unwrap_err();
        assert_eq!(
            err,
            AuthError::WrongAudience {
                expected: DEVICE_AUDIENCE
            }
        );
        assert_eq!(err.status(), 401);
        let claims = w
            .issuer
            .verify_device(&w.store, &device.token, &session(), NOW)
            .unwrap();
        assert_eq!(claims.serial.as_str(), "100");
        assert_eq!(claims.domain.as_str(), "acme");
        assert_eq!(claims.session_id, session());
    }

    #[test]
    fn device_token_belongs_to_its_session() {
        let mut w = world();
        let device = w
            .issuer
            .issue_device(
                &w.pos.key(),
                &Serial::new("100").unwrap(),
                &session(),
                NOW,
                300,
                &mut w.rng,
            )
            .unwrap();
        let other = SessionId::from_random([4; 16]);
        let err = w
            .issuer
            .verify_device(&w.store, &device.token, &other, NOW)
            .unwrap_err();
        assert_eq!(err, AuthError::WrongSession);
        assert_eq!(err.status(), 403);
        assert!(matches!(
            w.issuer
                .verify_device(&w.store, &device.token, &session(), NOW + 300),
            Err(AuthError::Expired { .. })
        ));
    }

    #[test]
    fn disabled_device_token_stops_working() {
        let mut w = world();
        let serial = Serial::new("100").unwrap();
        let device = w
            .issuer
            .issue_device(&w.pos.key(), &serial, &session(), NOW, 300, &mut w.rng)
            .unwrap();
        w.store
            .set_device_enabled(&w.pos.domain, &serial, false)
            .unwrap();
        assert!(matches!(
            w.issuer
                .verify_device(&w.store, &device.token, &session(), NOW),
            Err(AuthError::DeviceDisabled { .. })
        ));
    }

    #[test]
    fn deleted_client_tokens_stop_working() {
        let mut w = world();
        let access = w.issuer.issue_access(&w.pos, NOW, 60, &mut w.rng).unwrap();
        let device = w
            .issuer
            .issue_device(
                &w.pos.key(),
                &Serial::new("100").unwrap(),
                &session(),
                NOW,
                300,
                &mut w.rng,
            )
            .unwrap();
        w.store
            .delete_client(&w.pos.domain, &w.pos.client_id)
            .unwrap();
        assert!(matches!(
            w.issuer.verify_access(&w.store, &access.token, NOW),
            Err(AuthError::Revoked { .. })
        ));
        assert!(matches!(
            w.issuer
                .verify_device(&w.store, &device.token, &session(), NOW),
            Err(AuthError::Revoked { .. })
        ));
    }

    #[test]
    fn a_client_id_names_one_tenant_only() {
        // Client ids are unique across domains (device registration names no domain), so
        // the same id cannot be created in globex; acme's token keeps naming acme.
        let mut w = world();
        let mut twin = w.pos.clone();
        twin.domain = DomainName::new("globex").unwrap();
        assert!(matches!(
            w.store.create_client(&twin),
            Err(crate::store::StoreError::DuplicateClient { .. })
        ));
        let access = w.issuer.issue_access(&w.pos, NOW, 60, &mut w.rng).unwrap();
        let claims = w
            .issuer
            .verify_access(&w.store, &access.token, NOW)
            .unwrap();
        assert_eq!(claims.domain.as_str(), "acme");
        w.store
            .delete_client(&w.pos.domain, &w.pos.client_id)
            .unwrap();
        assert!(w
            .issuer
            .verify_access(&w.store, &access.token, NOW)
            .is_err());
    }
}
