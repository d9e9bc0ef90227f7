//! Accepting connections and routing their first request: the OAuth2 token endpoint
//! answers plain HTTP; WebSocket paths are checked (§8 statuses), authenticated, and
//! handed to the shard that owns their session or client.

use super::admission::{ConnSlot, Refusal, UnauthSlot};
use super::handover::{Handover, Held, Routed, Routing};
use super::metrics::ConnRole;
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
        if admin {
            glommio::spawn_local(endpoints::serve_admin_connection(ctx, stream)).detach();
            continue;
        }
        let admitted = ctx.shared.admission.admit();
        glommio::spawn_local(async move {
            match admitted {
                Ok((conn, unauth)) => serve_relay_connection(ctx, stream, conn, unauth).await,
                Err(why) => {
                    let body = br#"{"error":"the relay is at its connection limit: retry later"}"#;
                    let answer = refusal_response(why, body);
                    super::tls::refuse_connection(&ctx, stream, &answer).await
                }
            }
        })
        .detach();
    }
}

/// The answer to a connection or login refused by an admission limit: 503 for the
/// relay's own limits, 429 for a client's; both say when to retry.
pub(crate) fn refusal_response(why: Refusal, body: &[u8]) -> Vec<u8> {
    let status = match why {
        Refusal::MaxConnections | Refusal::MaxUnauthenticated => HttpStatus::SERVICE_UNAVAILABLE,
        _ => HttpStatus::TOO_MANY_REQUESTS,
    };
    let retry = why.retry_after_secs().to_string();
    http_response(
        status,
        &[("Retry-After", &retry), ("Connection", "close")],
        Some("application/json"),
        body,
    )
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

async fn serve_relay_connection(
    ctx: Rc<ShardCtx>,
    stream: TcpStream,
    conn: ConnSlot,
    unauth: UnauthSlot,
) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
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
    // Plain HTTP requests (the token endpoint, unknown paths) may share a connection
    // (HTTP/1.1 keep-alive); a WebSocket upgrade ends the loop.
    let head = loop {
        let request = match read_request(&mut transport, &mut rbuf, &request_limits(&ctx)).await {
            Ok(r) => r,
            Err(ReadRequestError::Timeout | ReadRequestError::Closed) if rbuf.is_empty() => {
                // An idle keep-alive connection: nothing to answer.
                return transport.shutdown().await;
            }
            Err(e) => return refuse_unreadable(&ctx, transport, e).await,
        };
        let mut keep_alive = wants_keep_alive(&request.head);
        let answer = match Path::parse(&request.head.path) {
            Path::Token(domain) => {
                let (answer, keep) = endpoints::token(
                    &ctx,
                    &domain,
                    &request.head,
                    &request.body,
                    keep_alive,
                    peer,
                )
                .await;
                keep_alive = keep;
                answer
            }
            Path::Unknown => {
                ctx.shared.metrics.http_not_found.inc();
                let body =
                    br#"{"error":"no such path: see PROTOCOL.md for the relay's endpoints"}"#;
                let connection = [("Connection", connection_header(keep_alive))];
                http_response(
                    HttpStatus::NOT_FOUND,
                    &connection,
                    Some("application/json"),
                    body,
                )
            }
            _ => break request.head,
        };
        if transport.write_all_vectored(&[&answer]).await.is_err() || !keep_alive {
            return transport.shutdown().await;
        }
    };
    match Path::parse(&head.path) {
        Path::Token(_) | Path::Unknown => unreachable!("answered above"),
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
                Path::DeviceListener => {
                    registration::serve(ctx, transport, rbuf, prelude, peer, (conn, unauth)).await
                }
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
                    unauth.authenticated();
                    let owner = owner_shard(&sid, ctx.shards).0;
                    let routed = Routed::Device { sid, claims };
                    let held = Held {
                        _conn: conn,
                        _client: None,
                    };
                    route_to(ctx, owner, transport, rbuf, prelude, routed, held).await
                }
                Path::PosListener => {
                    let (claims, held) = match admit_pos(&ctx, &prelude, unauth, conn) {
                        Ok(admitted) => admitted,
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
                        held,
                    )
                    .await
                }
                Path::Session(sid) => {
                    let sid = match SessionId::new(sid) {
                        Ok(s) => s,
                        Err(_) => return answer_and_close(transport, &not_found_session()).await,
                    };
                    let (claims, held) = match admit_pos(&ctx, &prelude, unauth, conn) {
                        Ok(admitted) => admitted,
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
                        held,
                    )
                    .await
                }
                Path::Token(_) | Path::Unknown => unreachable!("handled above"),
            }
        }
    }
}

/// Whether the client wants the connection kept open after the answer (RFC 9112 §9.3:
/// the default for HTTP/1.1, not for HTTP/1.0).
pub(crate) fn wants_keep_alive(head: &RequestHead) -> bool {
    let says = |token: &str| {
        head.headers
            .get_all("connection")
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if head.version_minor == 0 {
        says("keep-alive")
    } else {
        !says("close")
    }
}

/// The `Connection` header value that tells the client what we will do (RFC 9112 §9.6).
pub(crate) fn connection_header(keep_alive: bool) -> &'static str {
    if keep_alive {
        "keep-alive"
    } else {
        "close"
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

/// A POS connection (control channel or session): its access token verified, it stops
/// counting as anonymous and takes a place under the per-client limit.
fn admit_pos(
    ctx: &ShardCtx,
    prelude: &Prelude,
    unauth: UnauthSlot,
    conn: ConnSlot,
) -> Result<(AccessClaims, Held), Vec<u8>> {
    let claims = verify_access(ctx, prelude)?;
    unauth.authenticated();
    match ctx.shared.admission.admit_client(&claims.client()) {
        Ok(slot) => Ok((
            claims,
            Held {
                _conn: conn,
                _client: Some(Box::new(slot)),
            },
        )),
        Err(why) => {
            let body = br#"{"error":"this client has too many open connections: close some, or retry later"}"#;
            Err(refusal_response(why, body))
        }
    }
}

/// Serves `routed` here, or hands the connection to the shard that owns it.
async fn route_to(
    ctx: Rc<ShardCtx>,
    shard: usize,
    transport: Transport,
    rbuf: BytesMut,
    prelude: Prelude,
    routed: Routed,
    held: Held,
) {
    if shard == ctx.index {
        spawn_routed(
            ctx,
            transport,
            rbuf,
            prelude.answer,
            prelude.url_base,
            routed,
            held,
        )
    } else {
        let routing = Routing {
            leftover: rbuf.to_vec(),
            answer: prelude.answer,
            url_base: prelude.url_base,
            routed,
            held,
        };
        match Handover::new(transport, routing) {
            Ok(h) => ctx.send_handover(shard, h).await,
            Err(e) => tracing::warn!(error = %e, "cannot hand a connection over"),
        }
    }
}

/// Serves a connection that arrived from another shard.
pub(crate) fn serve_handover(ctx: Rc<ShardCtx>, handover: Handover) {
    let (transport, r) = handover.into_transport();
    let rbuf = BytesMut::from(&r.leftover[..]);
    spawn_routed(ctx, transport, rbuf, r.answer, r.url_base, r.routed, r.held)
}

/// A routed connection as its role's `serve` takes it: boxed, so that the connection's
/// future keeps one pointer of arguments for its whole life instead of a second copy of
/// every argument beside the locals made from them (async fn arguments are never
/// overlapped with other state).
pub(crate) struct Accepted<R> {
    /// The upgraded socket.
    pub transport: Transport,
    /// Bytes read after the upgrade request.
    pub rbuf: BytesMut,
    /// The 101 answer, still to be written.
    pub answer: Vec<u8>,
    /// Admission slots, released when the connection ends.
    pub held: Held,
    /// What the role needs (session id, claims...).
    pub role: R,
}

impl Accepted<()> {
    fn with_role<R>(self, role: R) -> Box<Accepted<R>> {
        Box::new(Accepted {
            transport: self.transport,
            rbuf: self.rbuf,
            answer: self.answer,
            held: self.held,
            role,
        })
    }
}

/// Serves a routed connection in a task of its own, sized for its role: the task
/// that read the upgrade request (its HTTP and handshake state, several KiB) ends
/// here instead of staying under every long-lived connection.
fn spawn_routed(
    ctx: Rc<ShardCtx>,
    transport: Transport,
    rbuf: BytesMut,
    answer: Vec<u8>,
    url_base: String,
    routed: Routed,
    held: Held,
) {
    let accepted = Accepted {
        transport,
        rbuf,
        answer,
        held,
        role: (),
    };
    match routed {
        Routed::Device { sid, claims } => {
            glommio::spawn_local(device::serve(ctx, accepted.with_role((sid, claims)))).detach()
        }
        Routed::Control { claims } => {
            glommio::spawn_local(control::serve(ctx, accepted.with_role((url_base, claims))))
                .detach()
        }
        Routed::Session { sid, claims } => {
            glommio::spawn_local(session::serve(ctx, accepted.with_role((sid, claims)))).detach()
        }
    };
}

/// Drain (PROTOCOL.md §6): stop accepting; report what the offline queues hold; close
/// POS sessions (1001) first, so that a frame crossing their close still reaches its
/// device or is reported; then devices; then, once every shard has done so (its reports
/// travel ahead of its signal), the control channels, which by then hold every
/// `undelivered` report; all within the drain timeout.
pub(crate) async fn drain(ctx: &Rc<ShardCtx>, relay: Task<()>, admin: Option<Task<()>>) {
    ctx.draining.set(true);
    drop(relay);
    drop(admin);
    let started = std::time::Instant::now();
    let deadline = started + ctx.shared.config.drain_timeout;
    ctx.devices.borrow_mut().handle_shutdown(started);
    ctx.process_actions();
    for roles in [&[ConnRole::PosSession][..], &[ConnRole::Device]] {
        close_roles(ctx, roles);
        wait_until(deadline, || !has_roles(ctx, roles)).await;
        ctx.process_actions();
    }
    for shard in 0..ctx.shards {
        if shard != ctx.index {
            ctx.send(shard, super::shard::ShardMsg::DataClosed);
        }
    }
    let others = ctx.shards - 1;
    wait_until(deadline, || ctx.data_closed.get() >= others).await;
    ctx.process_actions();
    let everyone = [
        ConnRole::PosControl,
        ConnRole::Registration,
        ConnRole::Device,
        ConnRole::PosSession,
    ];
    close_roles(ctx, &everyone);
    wait_until(deadline, || ctx.conns.borrow().is_empty()).await;
    let left = ctx.conns.borrow().len();
    tracing::info!(
        shard = ctx.index,
        left,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shard drained"
    );
}

fn close_roles(ctx: &ShardCtx, roles: &[ConnRole]) {
    let conns: Vec<_> = ctx
        .conns
        .borrow()
        .iter()
        .filter(|(_, e)| roles.contains(&e.role))
        .map(|(id, _)| *id)
        .collect();
    for conn in conns {
        ctx.close_conn(conn, 1001, "relay shutting down: reconnect");
    }
}

fn has_roles(ctx: &ShardCtx, roles: &[ConnRole]) -> bool {
    ctx.conns.borrow().values().any(|e| roles.contains(&e.role))
}

async fn wait_until(deadline: std::time::Instant, done: impl Fn() -> bool) {
    while !done() && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}
