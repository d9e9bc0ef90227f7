//! How a POS request proves who it is, on the §4, §5, §5a upgrades and the §10 requests:
//! an access token (`Authorization: Bearer`, or a `bearer.` subprotocol on an upgrade,
//! PROTOCOL.md §7), or the client's own credentials (§7c):
//!
//! > POS software that runs on a server (seed 003's clients) may put its client
//! > credentials in the upgrade on §4, §5, §5a and §10 endpoints instead of an access
//! > token: `Authorization: Basic base64(client_id:client_secret)`. The checks, the
//! > answers and the limits are those of the token endpoint (§1) [...] (with
//! > `WWW-Authenticate: Bearer`; the relay never sends a `Basic` challenge [...]). On a
//! > plain `ws://` listener Basic credentials are accepted only from a loopback peer;
//! > elsewhere they answer `401` (use `wss://`). Such a connection has no token, so it
//! > never closes with 4401.
//!
//! The credential check is the token endpoint's own, `auth::ClientLogin::log_in_basic`,
//! run on the blocking pool (a secret not in the cache costs a hash), with the failed-login
//! limits of the peer's address.

use super::shard::ShardCtx;
use crate::auth::{AccessClaims, BasicAuth, ClientLogin, LoginError, UPGRADE_CHALLENGE};
use crate::handshake::{http_response, HttpStatus};
use std::net::IpAddr;
use std::rc::Rc;

/// The credentials a POS request carries.
#[derive(Debug)]
pub(crate) enum PosCredentials<'a> {
    /// §7c: an `Authorization` header with the Basic scheme (decodable or not).
    Basic(&'a str),
    /// An access token (from `Authorization: Bearer` or a `bearer.` subprotocol).
    Bearer(&'a str),
    /// None at all.
    Absent,
}

impl<'a> PosCredentials<'a> {
    /// Reads the request's `Authorization` header and the bearer token found beside it
    /// (an upgrade's `bearer.` subprotocol included). A Basic header wins: it is the
    /// request's own statement of who it is.
    pub fn of(authorization: Option<&'a str>, bearer: Option<&'a str>) -> Self {
        match (authorization, bearer) {
            (Some(h), _) if BasicAuth::is_basic_scheme(h) => Self::Basic(h),
            (_, Some(token)) => Self::Bearer(token),
            _ => Self::Absent,
        }
    }
}

/// Verifies `credentials` of a request from `peer`: the client's claims, or the whole HTTP
/// answer to write instead (401 with `WWW-Authenticate: Bearer`, 429 with `Retry-After`,
/// 500). A refusal ends the connection.
pub(crate) async fn authenticate(
    ctx: &Rc<ShardCtx>,
    credentials: PosCredentials<'_>,
    peer: IpAddr,
) -> Result<AccessClaims, Vec<u8>> {
    let now = super::unix_now();
    match credentials {
        PosCredentials::Bearer(token) => ctx
            .shared
            .issuer
            .verify_access(&*ctx.shared.store, token, now)
            .map_err(|e| super::reply::auth_refusal(ctx, &e)),
        PosCredentials::Absent => Err(super::reply::auth_refusal(
            ctx,
            &crate::auth::AuthError::InvalidToken {
                reason: "no credentials: send Authorization: Bearer <token> (or Basic client credentials, PROTOCOL.md §7c)".into(),
            },
        )),
        PosCredentials::Basic(header) => log_in_basic(ctx, header, peer, now).await,
    }
}

/// §7c on the blocking pool: the shared credential check, then the client's claims.
async fn log_in_basic(
    ctx: &Rc<ShardCtx>,
    header: &str,
    peer: IpAddr,
    now: u64,
) -> Result<AccessClaims, Vec<u8>> {
    let tls = ctx.shared.tls.is_some();
    // Who is trying, for the log line of a refusal: the id only, never the secret.
    let client_id = match BasicAuth::parse(Some(header)) {
        BasicAuth::Credentials(p) => p.client_id.chars().take(64).collect::<String>(),
        BasicAuth::Absent | BasicAuth::Invalid => "-".to_owned(),
    };
    let attempt = ctx
        .shared
        .admission
        .attempt_from(peer, std::time::Instant::now());
    let shared = ctx.shared.clone();
    let header = header.to_owned();
    let result = glommio::executor()
        .spawn_blocking(move || {
            let rng = std::cell::RefCell::new(rand::rngs::OsRng);
            let login = ClientLogin {
                store: &*shared.store,
                hasher: &shared.hasher,
                cache: Some(&shared.credentials),
                unix_now: now,
                rng: &rng,
            };
            login.log_in_basic(&header, tls, peer, &attempt, std::time::Instant::now())
        })
        .await;
    match result {
        Ok(client) => Ok(AccessClaims::of_client_login(&client, now)),
        Err(e) => {
            let m = &ctx.shared.metrics;
            match &e {
                LoginError::InvalidClient => m.token_invalid_client.inc(),
                LoginError::Storage(err) => {
                    tracing::error!(error = %err, "Basic login failed: the store failed")
                }
                LoginError::Throttled(_) => {}
            }
            let status = e.status();
            let hint = if !crate::auth::basic_allowed(tls, peer) {
                "Basic credentials over plain ws:// from another host: use wss://"
            } else {
                "wrong or unknown client credentials"
            };
            tracing::info!(client_id = %client_id, peer = %peer, status, why = hint, "Basic login refused");
            Err(refusal(&e))
        }
    }
}

/// The answer to a refused Basic login: the token endpoint's status and body (§7c), with
/// a Bearer challenge on a 401 and `Retry-After` on a 429.
fn refusal(e: &LoginError) -> Vec<u8> {
    let retry = e.retry_after_secs().map(|s| s.to_string());
    let mut headers: Vec<(&str, &str)> = vec![("Cache-Control", "no-store")];
    if e.status() == 401 {
        headers.push(("WWW-Authenticate", UPGRADE_CHALLENGE));
    }
    if let Some(retry) = &retry {
        headers.push(("Retry-After", retry));
    }
    headers.push(("Connection", "close"));
    http_response(
        HttpStatus(e.status()),
        &headers,
        Some("application/json"),
        &e.body(),
    )
}
