//! Plain HTTP endpoints: the OAuth2 token endpoint (§1) on the relay listener, and the
//! admin listener's provisioning API (§9), `/metrics` and `/healthz`.

use super::accept::refuse_unreadable;
use super::shard::{ShardCtx, ShardMsg};
use crate::admin::{
    AdminEffect, DevicePresence, NoPresence, Presence, TokenEndpoint, TokenRequest,
};
use crate::handshake::{http_response, HttpStatus, RequestHead};
use crate::ids::{ClientId, DeviceKey, DomainName, Serial};
use crate::io::http::{read_request, RequestLimits};
use crate::io::transport::Transport;
use crate::store::Store;
use bytes::{Bytes, BytesMut};
use glommio::net::TcpStream;
use std::collections::HashMap;
use std::rc::Rc;

/// Answers `POST /oauth2/v1/{domain}/token`, and whether the connection stays open. The secret check (argon2, tens of
/// milliseconds) runs on glommio's blocking pool so that the shard keeps relaying.
pub(crate) async fn token(
    ctx: &Rc<ShardCtx>,
    domain: &str,
    head: &RequestHead,
    body: &Bytes,
    keep_alive: bool,
    peer: std::net::IpAddr,
) -> (Vec<u8>, bool) {
    let connection = ("Connection", super::accept::connection_header(keep_alive));
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
    // The failed-login limits (§1) are checked and counted by the shared credential check.
    let attempt = ctx
        .shared
        .admission
        .attempt_from(peer, std::time::Instant::now());
    let shared = ctx.shared.clone();
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
        _ => m.token_bad_request.inc(),
    }
    let retry_after = response.retry_after.map(|s| s.to_string());
    // A refusal by the limits closes the connection (and says so with Connection: close).
    let keep_alive = keep_alive && retry_after.is_none();
    let connection = ("Connection", super::accept::connection_header(keep_alive));
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

/// A presence snapshot gathered from every shard, for the admin device list.
struct Snapshot(HashMap<(DomainName, Serial), Presence>);

impl DevicePresence for Snapshot {
    fn presence(&self, domain: &DomainName, serial: &Serial) -> Presence {
        self.0
            .get(&(domain.clone(), serial.clone()))
            .cloned()
            .unwrap_or_default()
    }
}

/// Serves requests on an admin connection (keep-alive) until the client closes.
pub(crate) async fn serve_admin_connection(ctx: Rc<ShardCtx>, stream: TcpStream) {
    let mut transport = Transport::Plain(stream);
    let mut rbuf = BytesMut::with_capacity(1024);
    let limits = RequestLimits {
        head: ctx.shared.config.head_limits,
        max_body: 64 * 1024,
        timeout: ctx.shared.config.handshake_timeout,
    };
    loop {
        let request = match read_request(&mut transport, &mut rbuf, &limits).await {
            Ok(r) => r,
            Err(crate::io::http::ReadRequestError::Closed) => return,
            Err(crate::io::http::ReadRequestError::Timeout) if rbuf.is_empty() => {
                transport.shutdown().await;
                return;
            }
            Err(e) => return refuse_unreadable(&ctx, transport, e).await,
        };
        let close = request
            .head
            .headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || request.head.version_minor == 0;
        let answer = admin_request(&ctx, &request.head, &request.body).await;
        if transport.write_all_vectored(&[&answer]).await.is_err() {
            return;
        }
        if close {
            transport.shutdown().await;
            return;
        }
    }
}

async fn admin_request(ctx: &Rc<ShardCtx>, head: &RequestHead, body: &Bytes) -> Vec<u8> {
    let method = head.method.as_str();
    let keep = [("Connection", "keep-alive")];
    match (method, head.path.as_str()) {
        ("GET", "/healthz") => {
            return http_response(HttpStatus::OK, &keep, Some("text/plain"), b"ok\n");
        }
        ("GET", "/demo") | ("GET", "/demo/") | ("GET", "/demo/index.html") => {
            // The browser POS (PROTOCOL.md §7: bearer token as a subprotocol).
            let page = include_bytes!("demo/index.html");
            return http_response(
                HttpStatus::OK,
                &keep,
                Some("text/html; charset=utf-8"),
                page,
            );
        }
        ("GET", "/metrics") => {
            let mut text = ctx.shared.metrics.render();
            super::metrics::render(&ctx.shared.shard_metrics, &mut text);
            ctx.shared.admission.render(&mut text);
            return http_response(
                HttpStatus::OK,
                &keep,
                Some("text/plain; version=0.0.4"),
                text.as_bytes(),
            );
        }
        _ => {}
    }
    ctx.shared.metrics.admin_calls.inc();
    let Some(api) = ctx.shared.admin.as_ref() else {
        ctx.shared.metrics.admin_unauthorized.inc();
        let body = br#"{"error":"the admin API is disabled: start posrelay with POSRELAY_ADMIN_TOKEN (or admin_token in the configuration file) set"}"#;
        return http_response(
            HttpStatus::UNAUTHORIZED,
            &[("WWW-Authenticate", "Bearer realm=\"posrelay-admin\"")],
            Some("application/json"),
            body,
        );
    };
    let authorization = head.headers.get("authorization");
    // The device list shows run-time presence: gather it from the owning shards first.
    let snapshot =
        if method == "GET" && head.path.ends_with("/devices") && api.check_token(authorization) {
            let domain = head
                .path
                .trim_start_matches("/admin/v1/domains/")
                .split('/')
                .next()
                .and_then(|d| DomainName::new(d).ok());
            match domain.map(|d| api.store().list_devices(&d)) {
                Some(Ok(devices)) => {
                    let keys: Vec<DeviceKey> = devices
                        .into_iter()
                        .map(|d| DeviceKey {
                            domain: d.domain,
                            serial: d.serial,
                        })
                        .collect();
                    let presence = ctx.presence_of(keys).await;
                    Some(Snapshot(
                        presence
                            .into_iter()
                            .map(|(k, online, claim)| {
                                let claimed_by: Option<ClientId> = claim.map(|c| c.client_id);
                                ((k.domain, k.serial), Presence { online, claimed_by })
                            })
                            .collect(),
                    ))
                }
                _ => None,
            }
        } else {
            None
        };
    let presence: &dyn DevicePresence = match &snapshot {
        Some(s) => s,
        None => &NoPresence,
    };
    let response = api.handle(
        method,
        &head.path,
        authorization,
        body,
        presence,
        &mut rand::rngs::OsRng,
    );
    if response.status == 401 {
        ctx.shared.metrics.admin_unauthorized.inc();
    }
    match &response.effect {
        Some(AdminEffect::DeviceDisabled(device)) => {
            let device = device.clone();
            ctx.broadcast_admin(|| ShardMsg::DeviceDisabled(device.clone()));
        }
        Some(AdminEffect::ClientDeleted(client)) => {
            ctx.shared.credentials.forget(&client.client_id);
            let client = client.clone();
            ctx.broadcast_admin(|| ShardMsg::ClientDeleted(client.clone()));
        }
        // No connection is made with a client certificate until the mTLS listener is
        // served (issue 11, phase 2), so there is nothing to close yet.
        Some(AdminEffect::CertPinsRemoved { .. }) => {}
        None => {}
    }
    let mut headers: Vec<(&str, &str)> = response.headers.clone();
    headers.push(("Connection", "keep-alive"));
    let content_type = if response.body.is_empty() {
        None
    } else {
        Some("application/json")
    };
    http_response(
        HttpStatus(response.status),
        &headers,
        content_type,
        &response.body,
    )
}
