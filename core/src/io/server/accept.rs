//! Accepting connections and routing their first request: the OAuth2 token endpoint
//! answers plain HTTP; WebSocket paths are checked (§8 statuses), authenticated, and
//! handed to the shard that owns their session or client.

use super::handover::{Handover, Routed};
use super::shard::ShardCtx;
use super::{control, device, endpoints, registration, session};
use crate::auth::{AccessClaims, AuthError};
use crate::handshake::{
    accept_key, error_response, http_response, switching_protocols, HttpStatus, OfferedProtocols,
    RequestHead, UpgradeRequest,
};
use crate::ids::SessionId;
use crate::io::http::{read_request, ReadRequestError, RequestLimits};
use crate::io::transport::Transport;
use crate::relay::{client_shard, owner_shard};
use bytes::BytesMut;
use glommio::net::{TcpListener, TcpStream};
use glommio::Task;
use std::rc::Rc;
use std::time::Duration;

/// The relay's paths (PROTOCOL.md §1-§5).
pub(crate) enum Path {
    Token(String),
    DeviceListener,
    DeviceConnection(String),
    PosListener,
    Session(String),
    Unknown,
}

impl Path {
    pub fn parse(path: &str) -> Path {
        let path = path.trim_end_matches('/');
        if let Some(rest) = path.strip_prefix("/oauth2/v1/") {
            if let Some(domain) = rest.strip_suffix("/token") {
                if !domain.is_empty() && !domain.contains('/') {
                    return Path::Token(domain.to_owned());
                }
            }
            return Path::Unknown;
        }
        match path.strip_prefix("/cloud-connector/v1/") {
            Some("device-listener") => Path::DeviceListener,
            Some("pos-listener") => Path::PosListener,
            Some(rest) => {
                if let Some(id) = rest.strip_prefix("device-connection/") {
                    if !id.is_empty() && !id.contains('/') {
                        return Path::DeviceConnection(id.to_owned());
                    }
                }
                if let Some(id) = rest.strip_prefix("session/") {
                    if !id.is_empty() && !id.contains('/') {
                        return Path::Session(id.to_owned());
                    }
                }
                Path::Unknown
            }
            None => Path::Unknown,
        }
    }
}

/// Accepts until the shard drains.
pub(crate) async fn accept_loop(ctx: Rc<ShardCtx>, listener: TcpListener, admin: bool) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors or a transient error: say so, breathe, go on.
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if ctx.draining.get() {
            continue;
        }
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            if admin {
                endpoints::serve_admin_connection(ctx, stream).await
            } else {
                serve_relay_connection(ctx, stream).await
            }
        })
        .detach();
    }
}

/// Writes a whole answer and closes.
pub(crate) async fn answer_and_close(mut transport: Transport, bytes: &[u8]) {
    let _ = transport.write_all_vectored(&[bytes]).await;
    transport.shutdown().await;
}

fn request_limits(ctx: &ShardCtx) -> RequestLimits {
    let cfg = &ctx.shared.config;
    RequestLimits {
        head: cfg.head_limits,
        max_body: 64 * 1024,
        timeout: cfg.handshake_timeout,
    }
}

/// Answers a request that could not be read, counting why.
pub(crate) async fn refuse_unreadable(ctx: &ShardCtx, transport: Transport, err: ReadRequestError) {
    let m = &ctx.shared.metrics;
    match err {
        ReadRequestError::Invalid(e) => {
            if e.status() == HttpStatus::HEADERS_TOO_LARGE {
                m.http_headers_too_large.inc();
            } else {
                m.http_bad_request.inc();
            }
            answer_and_close(transport, &error_response(&e)).await
        }
        ReadRequestError::BodyTooLarge(_) => {
            m.http_bad_request.inc();
            let body = br#"{"error":"request body too large"}"#;
            let answer = http_response(
                HttpStatus::PAYLOAD_TOO_LARGE,
                &[],
                Some("application/json"),
                body,
            );
            answer_and_close(transport, &answer).await
        }
        ReadRequestError::Timeout => {
            m.http_handshake_timeout.inc();
            let mut transport = transport;
            transport.shutdown().await;
        }
        ReadRequestError::Closed | ReadRequestError::Io(_) => {}
    }
}

async fn serve_relay_connection(ctx: Rc<ShardCtx>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let transport = match &ctx.shared.tls {
        Some(tls) => match Transport::tls(stream, tls.current()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "tls setup failed");
                return;
            }
        },
        None => Transport::Plain(stream),
    };
    let mut transport = transport;
    let mut rbuf = BytesMut::with_capacity(2048);
    let request = match read_request(&mut transport, &mut rbuf, &request_limits(&ctx)).await {
        Ok(r) => r,
        Err(e) => return refuse_unreadable(&ctx, transport, e).await,
    };
    let head = request.head;
    match Path::parse(&head.path) {
        Path::Token(domain) => {
            let answer = endpoints::token(&ctx, &domain, &head, &request.body).await;
            answer_and_close(transport, &answer).await
        }
        Path::Unknown => {
            ctx.shared.metrics.http_not_found.inc();
            let body = br#"{"error":"no such path: see PROTOCOL.md for the relay's endpoints"}"#;
            let answer = http_response(HttpStatus::NOT_FOUND, &[], Some("application/json"), body);
            answer_and_close(transport, &answer).await
        }
        path => {
            let upgrade = match UpgradeRequest::from_head(&head) {
                Ok(u) => u,
                Err(e) => {
                    ctx.shared.metrics.http_bad_request.inc();
                    return answer_and_close(transport, &error_response(&e)).await;
                }
            };
            let prelude = match Prelude::new(&ctx, &head, &upgrade) {
                Ok(p) => p,
                Err(answer) => return answer_and_close(transport, &answer).await,
            };
            match path {
                Path::DeviceListener => registration::serve(ctx, transport, rbuf, prelude).await,
                Path::DeviceConnection(sid) => {
                    let sid = match SessionId::new(sid) {
                        Ok(s) => s,
                        Err(_) => return answer_and_close(transport, &not_found_session()).await,
                    };
                    let claims = match prelude.bearer.as_deref() {
                        Some(token) => ctx.shared.issuer.verify_device(
                            &*ctx.shared.store,
                            token,
                            &sid,
                            super::unix_now(),
                        ),
                        None => Err(AuthError::InvalidToken { reason: "no bearer token: send Authorization: Bearer <token> or the subprotocol bearer.<token>".into() }),
                    };
                    let claims = match claims {
                        Ok(c) => c,
                        Err(e) => {
                            return answer_and_close(transport, &auth_refusal(&ctx, &e)).await
                        }
                    };
                    let owner = owner_shard(&sid, ctx.shards).0;
                    let routed = Routed::Device { sid, claims };
                    route_to(ctx, owner, transport, rbuf, prelude, routed).await
                }
                Path::PosListener => {
                    let claims = match verify_access(&ctx, &prelude) {
                        Ok(c) => c,
                        Err(answer) => return answer_and_close(transport, &answer).await,
                    };
                    let home = client_shard(&claims.client(), ctx.shards).0;
                    route_to(
                        ctx,
                        home,
                        transport,
                        rbuf,
                        prelude,
                        Routed::Control { claims },
                    )
                    .await
                }
                Path::Session(sid) => {
                    let sid = match SessionId::new(sid) {
                        Ok(s) => s,
                        Err(_) => return answer_and_close(transport, &not_found_session()).await,
                    };
                    let claims = match verify_access(&ctx, &prelude) {
                        Ok(c) => c,
                        Err(answer) => return answer_and_close(transport, &answer).await,
                    };
                    let owner = owner_shard(&sid, ctx.shards).0;
                    route_to(
                        ctx,
                        owner,
                        transport,
                        rbuf,
                        prelude,
                        Routed::Session { sid, claims },
                    )
                    .await
                }
                Path::Token(_) | Path::Unknown => unreachable!("handled above"),
            }
        }
    }
}

/// What every WebSocket endpoint works out before answering 101.
pub(crate) struct Prelude {
    /// The `101` answer (accept key and selected subprotocol).
    pub answer: Vec<u8>,
    /// The bearer token, from `Authorization` or a `bearer.` subprotocol (§7).
    pub bearer: Option<String>,
    /// Base of the URLs handed out (§7a).
    pub url_base: String,
}

impl Prelude {
    fn new(
        ctx: &ShardCtx,
        head: &RequestHead,
        upgrade: &UpgradeRequest,
    ) -> Result<Prelude, Vec<u8>> {
        let offered = OfferedProtocols::new(upgrade.protocols.clone());
        let from_header = upgrade.authorization.as_deref().and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
        let bearer = from_header.or_else(|| offered.bearer_token().map(str::to_owned));
        let selected = offered.select(&ctx.shared.config.subprotocols);
        let has_application_offer = offered
            .entries()
            .iter()
            .any(|e| !e.starts_with(crate::handshake::BEARER_PREFIX));
        if selected.is_none()
            && has_application_offer
            && matches!(
                ctx.shared.config.subprotocols,
                crate::handshake::SubprotocolPolicy::OneOf(_)
            )
        {
            // RFC 6455 §4.2.2: the server may select none; browsers then fail the handshake.
            tracing::debug!(offered = ?offered.entries().iter().filter(|e| !e.starts_with("bearer.")).collect::<Vec<_>>(), "no offered subprotocol is allowed");
        }
        let answer = switching_protocols(&accept_key(&upgrade.key), selected.as_deref());
        let scheme = if ctx.shared.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        let url_base = match &ctx.shared.config.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("{scheme}://{}", upgrade.host),
        };
        let _ = head;
        Ok(Prelude {
            answer,
            bearer,
            url_base,
        })
    }
}

fn verify_access(ctx: &ShardCtx, prelude: &Prelude) -> Result<AccessClaims, Vec<u8>> {
    let result = match prelude.bearer.as_deref() {
        Some(token) => ctx
            .shared
            .issuer
            .verify_access(&*ctx.shared.store, token, super::unix_now()),
        None => Err(AuthError::InvalidToken { reason: "no bearer token: send Authorization: Bearer <token> or the subprotocol bearer.<token>".into() }),
    };
    result.map_err(|e| auth_refusal(ctx, &e))
}

/// The HTTP answer to a refused token (§8: 401 with `WWW-Authenticate: Bearer`, 403).
pub(crate) fn auth_refusal(ctx: &ShardCtx, err: &AuthError) -> Vec<u8> {
    ctx.shared.metrics.token_invalid_client.inc();
    let status = HttpStatus(err.status());
    // The reason goes to the log; the peer learns only what to do about it.
    tracing::info!(error = %err, status = status.0, "token refused");
    let message = match status.0 {
        403 => "this token is not valid for this session",
        401 => "missing, invalid or expired token: get a new one",
        _ => "bad request",
    };
    let body = format!("{{\"error\":\"{}\"}}", json_escape(message));
    let challenge = "Bearer realm=\"posrelay\", error=\"invalid_token\"";
    let headers: &[(&str, &str)] = if status == HttpStatus::UNAUTHORIZED {
        &[("WWW-Authenticate", challenge)]
    } else {
        &[]
    };
    http_response(status, headers, Some("application/json"), body.as_bytes())
}

pub(crate) fn not_found_session() -> Vec<u8> {
    http_response(
        HttpStatus::NOT_FOUND,
        &[],
        Some("application/json"),
        br#"{"error":"unknown session: register the device (or claim it) again"}"#,
    )
}

/// Minimal JSON string escaping for error messages we write ourselves.
pub(crate) fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Serves `routed` here, or hands the connection to the shard that owns it.
async fn route_to(
    ctx: Rc<ShardCtx>,
    shard: usize,
    transport: Transport,
    rbuf: BytesMut,
    prelude: Prelude,
    routed: Routed,
) {
    if shard == ctx.index {
        serve_routed(
            ctx,
            transport,
            rbuf,
            prelude.answer,
            prelude.url_base,
            routed,
        )
        .await
    } else {
        match Handover::new(
            transport,
            rbuf.to_vec(),
            prelude.answer,
            prelude.url_base,
            routed,
        ) {
            Ok(h) => ctx.send_handover(shard, h).await,
            Err(e) => tracing::warn!(error = %e, "cannot hand a connection over"),
        }
    }
}

/// Serves a connection that arrived from another shard.
pub(crate) async fn serve_handover(ctx: Rc<ShardCtx>, handover: Handover) {
    let (transport, leftover, answer, url_base, routed) = handover.into_transport();
    let rbuf = BytesMut::from(&leftover[..]);
    serve_routed(ctx, transport, rbuf, answer, url_base, routed).await
}

async fn serve_routed(
    ctx: Rc<ShardCtx>,
    transport: Transport,
    rbuf: BytesMut,
    answer: Vec<u8>,
    url_base: String,
    routed: Routed,
) {
    match routed {
        Routed::Device { sid, claims } => {
            device::serve(ctx, transport, rbuf, answer, sid, claims).await
        }
        Routed::Control { claims } => {
            control::serve(ctx, transport, rbuf, answer, url_base, claims).await
        }
        Routed::Session { sid, claims } => {
            session::serve(ctx, transport, rbuf, answer, sid, claims).await
        }
    }
}

/// Drain (PROTOCOL.md §6): stop accepting, report what is queued, close everyone with
/// 1001, wait for the connections to go (at most the drain timeout).
pub(crate) async fn drain(ctx: &Rc<ShardCtx>, relay: Task<()>, admin: Option<Task<()>>) {
    ctx.draining.set(true);
    drop(relay);
    drop(admin);
    let started = std::time::Instant::now();
    ctx.devices.borrow_mut().handle_shutdown(started);
    ctx.process_actions();
    // Reports travel to the clients' home shards: give them a moment before closing.
    glommio::timer::sleep(Duration::from_millis(300)).await;
    ctx.process_actions();
    let conns: Vec<_> = ctx.conns.borrow().keys().copied().collect();
    for conn in conns {
        ctx.close_conn(conn, 1001, "relay shutting down: reconnect");
    }
    let deadline = started + ctx.shared.config.drain_timeout;
    while !ctx.conns.borrow().is_empty() && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    let left = ctx.conns.borrow().len();
    tracing::info!(shard = ctx.index, left, "shard drained");
}
