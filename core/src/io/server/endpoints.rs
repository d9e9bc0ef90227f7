//! Plain HTTP endpoints: the OAuth2 token endpoint (§1) on the relay listener, and the
//! admin listener's provisioning API (§9), `/metrics` and `/healthz`.

use super::accept::refuse_unreadable;
use super::shard::{ShardCtx, ShardMsg};
use crate::admin::{
    AdminAudit, AdminEffect, DevicePresence, NoPresence, Presence, TokenEndpoint, TokenRequest,
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
        tracing::info!(
            domain,
            client_id = client_id.as_deref().unwrap_or("-"),
            peer = %peer,
            limit = why.reason(),
            retry_after_secs = why.retry_after_secs(),
            "token request refused: too many failed logins"
        );
        let body = format!(
            "{{\"error\":\"invalid_request\",\"error_description\":\"too many failed attempts: retry in {} s\"}}",
            why.retry_after_secs()
        );
        // A refusal closes the connection (and says so with Connection: close).
        return (super::accept::refusal_response(why, body.as_bytes()), false);
    }
    let shared = ctx.shared.clone();
    let domain = domain.to_owned();
    let domain_path = domain.clone();
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
        200 => {
            m.tokens_issued.inc();
            if let Some(id) = client_id.as_deref() {
                admission.login_succeeded(id, peer, std::time::Instant::now());
            }
        }
        401 => {
            m.token_invalid_client.inc();
            admission.login_failed(client_id.as_deref(), peer, std::time::Instant::now());
        }
        _ => m.token_bad_request.inc(),
    }
    if response.status != 200 {
        // Who and from where, never the secret (nor the body, which may carry it).
        tracing::info!(
            domain = %domain_path,
            client_id = client_id.as_deref().unwrap_or("-"),
            peer = %peer,
            status = response.status,
            "token request refused"
        );
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
    let peer = stream.peer_addr().ok();
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
        let answer = admin_request(&ctx, &request.head, &request.body, peer).await;
        if transport.write_all_vectored(&[&answer]).await.is_err() {
            return;
        }
        if close {
            transport.shutdown().await;
            return;
        }
    }
}

/// The audit line of an admin call (who, what, result; never a body or a secret).
fn audit(peer: Option<std::net::SocketAddr>, method: &str, path: &str, status: u16) {
    let a = AdminAudit::of(method, path, status);
    tracing::info!(
        peer = %peer.map_or("-".to_owned(), |p| p.ip().to_string()),
        authenticated = a.authenticated,
        action = a.action,
        target = %a.target,
        status = a.status,
        "admin call"
    );
}

async fn admin_request(
    ctx: &Rc<ShardCtx>,
    head: &RequestHead,
    body: &Bytes,
    peer: Option<std::net::SocketAddr>,
) -> Vec<u8> {
    let method = head.method.as_str();
    let keep = [("Connection", "keep-alive")];
    match (method, head.path.as_str()) {
        ("GET", "/healthz") => {
            return http_response(HttpStatus::OK, &keep, Some("text/plain"), b"ok\n");
        }
        // Browsers ask for it beside /demo/: nothing to show, and no admin token needed.
        ("GET", "/favicon.ico") => {
            let headers = [
                ("Connection", "keep-alive"),
                ("Cache-Control", "max-age=86400"),
            ];
            return http_response(HttpStatus::NO_CONTENT, &headers, None, b"");
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
        audit(peer, method, &head.path, 401);
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
        super::unix_now(),
    );
    if response.status == 401 {
        ctx.shared.metrics.admin_unauthorized.inc();
    }
    audit(peer, method, &head.path, response.status);
    match &response.effect {
        Some(AdminEffect::DeviceDisabled(device)) => {
            let device = device.clone();
            ctx.broadcast_admin(|| ShardMsg::DeviceDisabled(device.clone()));
        }
        Some(AdminEffect::ClientSecretRotated(client)) => {
            ctx.shared.credentials.forget(&client.client_id);
        }
        Some(AdminEffect::ClientDeleted(client)) => {
            ctx.shared.credentials.forget(&client.client_id);
            let client = client.clone();
            ctx.broadcast_admin(|| ShardMsg::ClientDeleted(client.clone()));
        }
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
