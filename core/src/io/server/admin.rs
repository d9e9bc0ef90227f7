//! The admin listener (PROTOCOL.md §9): the provisioning API, `/metrics`, `/healthz`, and
//! the browser POS page. The API's rules live in `crate::admin::AdminApi` (pure); this file
//! runs each call on the shard's blocking pool (secret hashing and durable store writes
//! take milliseconds, and the shard keeps relaying meanwhile), gathers the run-time
//! presence a device list shows, and hands the call's effects to the coordinator.

use super::reply::refuse_unreadable;
use super::shard::ShardCtx;
use crate::admin::{AdminAudit, AdminEffect, DevicePresence, NoPresence, Presence};
use crate::coord::Answer;
use crate::handshake::{http_response, json_error, HttpStatus, RequestHead};
use crate::ids::{ClientId, DeviceKey, DomainName, Serial};
use crate::io::http::{read_request, RequestLimits};
use crate::io::transport::Transport;
use crate::store::Store;
use bytes::{Bytes, BytesMut};
use glommio::net::TcpStream;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

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
pub(crate) async fn serve_connection(ctx: Rc<ShardCtx>, stream: TcpStream) {
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
            // §12: a cluster node is healthy when it can do what needs the cluster.
            let Some(node) = ctx.shared.cluster.as_ref() else {
                return http_response(HttpStatus::OK, &keep, Some("text/plain"), b"ok\n");
            };
            let health = node.health(std::time::Instant::now());
            let (status, first) = if health.ok {
                (HttpStatus::OK, "ok")
            } else {
                (
                    HttpStatus::SERVICE_UNAVAILABLE,
                    "unavailable: relaying open connections, refusing registrations and claims",
                )
            };
            let body = format!("{first}\n{}", health.lines);
            return http_response(status, &keep, Some("text/plain"), body.as_bytes());
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
        ("GET", "/demo/posrelay-reliable.js") => {
            // PROTOCOL.md §11's client for browser POS developers, dependency-free.
            let script = include_bytes!("demo/posrelay-reliable.js");
            let headers = [("Connection", "keep-alive"), ("Cache-Control", "no-cache")];
            return http_response(
                HttpStatus::OK,
                &headers,
                Some("text/javascript; charset=utf-8"),
                script,
            );
        }
        ("GET", "/metrics") => {
            let mut text = ctx.shared.metrics.render();
            super::metrics::render(&ctx.shared.shard_metrics, &mut text);
            ctx.shared.admission.render(&mut text);
            if let Some(node) = ctx.shared.cluster.as_ref() {
                node.render_metrics(std::time::Instant::now(), &mut text);
            }
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
        return json_error(
            HttpStatus::UNAUTHORIZED,
            &[("WWW-Authenticate", "Bearer realm=\"posrelay-admin\"")],
            "the admin API is disabled: start posrelay with POSRELAY_ADMIN_TOKEN (or admin_token in the configuration file) set",
        );
    };
    let authorization = head.headers.get("authorization").map(str::to_owned);
    // The device list shows run-time presence: gather it from the owning shards first.
    let snapshot = if method == "GET"
        && head.path.ends_with("/devices")
        && api.check_token(authorization.as_deref())
    {
        device_presence(ctx, &head.path).await
    } else {
        None
    };
    // Secret hashing (argon2) and durable store writes take milliseconds: on the blocking
    // pool, so that this shard keeps relaying meanwhile.
    let shared = ctx.shared.clone();
    let method_owned = method.to_owned();
    let path = head.path.clone();
    let body = body.clone();
    let response = glommio::executor()
        .spawn_blocking(move || {
            let presence: &dyn DevicePresence = match &snapshot {
                Some(s) => s,
                None => &NoPresence,
            };
            shared.admin.as_ref().map(|api| {
                api.handle(
                    &method_owned,
                    &path,
                    authorization.as_deref(),
                    &body,
                    presence,
                    &mut rand::rngs::OsRng,
                    super::unix_now(),
                )
            })
        })
        .await;
    let Some(response) = response else {
        // Checked above: the admin API exists.
        return super::reply::internal_error();
    };
    if response.status == 401 {
        ctx.shared.metrics.admin_unauthorized.inc();
    }
    audit(peer, method, &head.path, response.status);
    if response.status >= 500 {
        tracing::error!(status = response.status, method, path = %head.path, "admin call failed");
    }
    match &response.effect {
        Some(AdminEffect::DeviceDisabled(device)) => {
            ctx.coord
                .borrow_mut()
                .handle_device_disabled(device.clone(), Instant::now());
            ctx.drive();
        }
        Some(AdminEffect::ClientSecretRotated(client)) => {
            ctx.shared.credentials.forget(&client.client_id);
        }
        Some(AdminEffect::ClientDeleted(client)) => {
            ctx.shared.credentials.forget(&client.client_id);
            ctx.coord
                .borrow_mut()
                .handle_client_deleted(client.clone(), Instant::now());
            ctx.drive();
        }
        // §2a: a device connected with an unpinned certificate is closed (1008), wherever
        // it is served.
        Some(AdminEffect::CertPinsRemoved { removed, .. }) => {
            ctx.close_unpinned(removed);
            ctx.mesh.broadcast_unpinned(removed);
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

/// The presence of a domain's devices (`/admin/v1/domains/{domain}/devices`), asked of
/// their owners; `None` when the domain is unknown (the API answers that itself).
async fn device_presence(ctx: &Rc<ShardCtx>, path: &str) -> Option<Snapshot> {
    let domain = path
        .trim_start_matches("/admin/v1/domains/")
        .split('/')
        .next()
        .and_then(|d| DomainName::new(d).ok())?;
    let shared = ctx.shared.clone();
    let listed = glommio::executor()
        .spawn_blocking(move || shared.store.list_devices(&domain))
        .await
        .ok()?;
    let keys: Vec<DeviceKey> = listed.iter().map(|d| d.key()).collect();
    match ctx.presence_of(keys).await {
        Answer::Presence(presence) => Some(Snapshot(
            presence
                .into_iter()
                .map(|p| {
                    let claimed_by: Option<ClientId> = p.claimed_by.map(|c| c.client_id);
                    (
                        (p.device.domain, p.device.serial),
                        Presence {
                            online: p.online,
                            claimed_by,
                        },
                    )
                })
                .collect(),
        )),
        // A shard did not answer: the list shows every device offline and unclaimed
        // rather than failing the call; the log says why.
        _ => {
            tracing::warn!("admin device list: a shard did not answer in time; presence unknown");
            None
        }
    }
}
