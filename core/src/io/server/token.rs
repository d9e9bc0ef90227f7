//! §1 `POST /oauth2/v1/{domain}/token`: the OAuth2 client-credentials token endpoint on
//! the relay listener. The request's rules live in `crate::admin::TokenEndpoint` (pure);
//! this file runs it on the blocking pool (argon2 takes milliseconds), with the
//! failed-login limits of the requesting address for it to check and count.

use super::reply;
use super::shard::ShardCtx;
use crate::admin::{TokenEndpoint, TokenRequest};
use crate::handshake::{http_response, HttpStatus, RequestHead};
use bytes::Bytes;
use std::rc::Rc;

/// Answers `POST /oauth2/v1/{domain}/token`, and whether the connection stays open. The secret check (argon2, tens of
/// milliseconds) runs on glommio's blocking pool so that the shard keeps relaying.
pub(crate) async fn serve(
    ctx: &Rc<ShardCtx>,
    domain: &str,
    head: &RequestHead,
    body: &Bytes,
    keep_alive: bool,
    peer: std::net::IpAddr,
) -> (Vec<u8>, bool) {
    let connection = ("Connection", reply::connection_header(keep_alive));
    if head.method != crate::handshake::Method::Post {
        let body = br#"{"error":"invalid_request","error_description":"use POST"}"#;
        let answer = http_response(
            HttpStatus::METHOD_NOT_ALLOWED,
            &[("Allow", "POST"), connection],
            Some("application/json"),
            body,
        );
        return (answer, keep_alive);
    }
    // The failed-login limits (§1) are checked and counted by the shared credential check
    // (auth::ClientLogin, the one §7c's Basic upgrades use).
    let attempt = ctx
        .shared
        .admission
        .attempt_from(peer, std::time::Instant::now());
    // Who is trying, for the log line of a refusal (the id only, never the secret).
    let client_id = head
        .headers
        .get("authorization")
        .and_then(crate::handshake::parse_basic_auth)
        .map(|(id, _)| id)
        .or_else(|| {
            crate::handshake::parse_form(body)
                .ok()?
                .into_iter()
                .find(|(k, _)| k == "client_id")
                .map(|(_, v)| v)
        });
    let shared = ctx.shared.clone();
    let request_domain = domain.to_owned();
    let domain = domain.to_owned();
    let authorization = head.headers.get("authorization").map(str::to_owned);
    let content_type = head.headers.get("content-type").map(str::to_owned);
    let body = body.clone();
    let response = glommio::executor()
        .spawn_blocking(move || {
            let endpoint = TokenEndpoint {
                store: &*shared.store,
                hasher: &shared.hasher,
                issuer: &shared.issuer,
                access_ttl: shared.config.access_token_ttl.as_secs(),
                cache: Some(&shared.credentials),
            };
            let request = TokenRequest {
                domain: &domain,
                authorization: authorization.as_deref(),
                content_type: content_type.as_deref(),
                body: &body,
            };
            endpoint.handle(
                &request,
                &attempt,
                super::unix_now(),
                std::time::Instant::now(),
                &mut rand::rngs::OsRng,
            )
        })
        .await;
    let m = &ctx.shared.metrics;
    match response.status {
        200 => m.tokens_issued.inc(),
        401 => m.token_invalid_client.inc(),
        429 => {}
        500 => tracing::error!(
            domain = %request_domain,
            "token request failed: the store failed (see the error above)"
        ),
        _ => m.token_bad_request.inc(),
    }
    if response.status != 200 {
        tracing::info!(
            domain = %request_domain,
            client_id = %client_id.as_deref().map_or_else(
                || "-".to_owned(),
                |id| id.chars().take(64).collect::<String>()
            ),
            peer = %peer,
            status = response.status,
            retry_after_secs = response.retry_after,
            "token request refused"
        );
    }
    let retry_after = response.retry_after.map(|s| s.to_string());
    // A refusal by the limits closes the connection (and says so with Connection: close).
    let keep_alive = keep_alive && retry_after.is_none();
    let connection = ("Connection", reply::connection_header(keep_alive));
    let mut headers: Vec<(&str, &str)> = response.headers.clone();
    if let Some(seconds) = &retry_after {
        headers.push(("Retry-After", seconds));
    }
    headers.push(connection);
    // A browser POS (PROTOCOL.md §7) served from the admin listener is another origin:
    // it can read the answer only with CORS. `*` is safe: the answer depends only on the
    // credentials sent in the request body, never on cookies or other ambient authority.
    headers.push(("Access-Control-Allow-Origin", "*"));
    let answer = http_response(
        HttpStatus(response.status),
        &headers,
        Some("application/json"),
        &response.body,
    );
    (answer, keep_alive)
}
