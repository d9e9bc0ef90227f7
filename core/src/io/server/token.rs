//! §1 `POST /oauth2/v1/{domain}/token`: the OAuth2 client-credentials token endpoint on
//! the relay listener. The request's rules live in `crate::admin::TokenEndpoint` (pure);
//! this file runs it on the blocking pool (argon2 takes milliseconds) and counts and
//! limits failed logins.

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
    // Who is trying: the client id from Basic or the form (only to rate-limit failures).
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
    let admission = ctx.shared.admission.clone();
    if let Err(why) = admission.check_login(client_id.as_deref(), peer, std::time::Instant::now()) {
        let body = format!(
            "{{\"error\":\"invalid_request\",\"error_description\":\"too many failed attempts: retry in {} s\"}}",
            why.retry_after_secs()
        );
        // A refusal closes the connection (and says so with Connection: close).
        return (reply::refusal_with_body(why, body.as_bytes()), false);
    }
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
            };
            let request = TokenRequest {
                domain: &domain,
                authorization: authorization.as_deref(),
                content_type: content_type.as_deref(),
                body: &body,
            };
            endpoint.handle(&request, super::unix_now(), &mut rand::rngs::OsRng)
        })
        .await;
    let m = &ctx.shared.metrics;
    match response.status {
        200 => m.tokens_issued.inc(),
        401 => {
            m.token_invalid_client.inc();
            admission.login_failed(client_id.as_deref(), peer, std::time::Instant::now());
        }
        500 => tracing::error!(
            domain = %request_domain,
            "token request failed: the store failed (see the error above)"
        ),
        _ => m.token_bad_request.inc(),
    }
    let mut headers = response.headers.clone();
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
