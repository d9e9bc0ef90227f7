//! The router: accepts connections, reads their first request, answers plain HTTP
//! (the OAuth2 token endpoint, unknown paths) and sends each WebSocket upgrade to the
//! role that serves it, on the shard that owns its session or client (handing the
//! connection over when that is another shard). Answers live in `reply.rs`, the common
//! upgrade work in `upgrade.rs`, each role in its own file.

use super::admission::{ConnSlot, Refusal, UnauthSlot};
use super::handover::{Handover, Held, Routed, Routing};
use super::login::{self, Refusals};
use super::path::Path;
use super::reply::{self, answer_and_close};
use super::shard::ShardCtx;
use super::upgrade::{admit_pos, Accepted, Prelude};
use super::waiting::WaitQueue;
use super::{
    admin, control, device, devices_api, one_step, pos_login, registration, session, token,
};
use crate::auth::{DeviceClaims, TsnInput};
use crate::handshake::{error_response, json_error, HttpStatus, UpgradeRequest};
use crate::ids::{DeviceKey, SessionId};
use crate::io::http::{read_request, ReadRequestError};
use crate::io::transport::Transport;
use crate::relay::{client_shard, owner_shard};
use bytes::BytesMut;
use glommio::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

/// Accepts until the shard drains. A connection past `--max-unauthenticated` waits for
/// an anonymous place (`waiting.rs`) before it is refused.
pub(crate) async fn accept_loop(ctx: Rc<ShardCtx>, listener: TcpListener, admin: bool) {
    let queue = (!admin).then(|| WaitQueue::start(ctx.clone()));
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
        if ctx.draining() {
            continue;
        }
        let ctx = ctx.clone();
        let Some(queue) = &queue else {
            glommio::spawn_local(admin::serve_connection(ctx, stream)).detach();
            continue;
        };
        let admission = &ctx.shared.admission;
        let conn = match admission.admit_connection() {
            Ok(conn) => conn,
            Err(why) => {
                glommio::spawn_local(async move { refuse(&ctx, stream, why).await }).detach();
                continue;
            }
        };
        // First come, first admitted: behind connections already waiting, a new one waits.
        let wait = admission.unauthenticated_wait();
        match queue
            .is_empty()
            .then(|| admission.try_unauthenticated())
            .flatten()
        {
            Some(unauth) => {
                glommio::spawn_local(serve_relay_connection(ctx, stream, conn, unauth)).detach();
            }
            None if wait.is_zero() => {
                let why = admission.refuse_unauthenticated();
                drop(conn);
                glommio::spawn_local(async move { refuse(&ctx, stream, why).await }).detach();
            }
            None => queue.push(stream, conn, wait),
        }
    }
}

/// Refuses a connection that an admission limit keeps out (503 with `Retry-After`).
pub(crate) async fn refuse(ctx: &ShardCtx, stream: TcpStream, why: Refusal) {
    let answer = reply::refusal(why, "the relay is at its connection limit: retry later");
    super::tls::refuse_connection(ctx, stream, &answer).await
}

/// Serves one connection of the relay listener up to its upgrade (or its last plain
/// HTTP answer).
pub(crate) async fn serve_relay_connection(
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
    let mut transport = match &ctx.shared.tls {
        Some(tls) => match Transport::tls(stream, tls.current()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "tls setup failed");
                return;
            }
        },
        None => Transport::Plain(stream),
    };
    let mut rbuf = BytesMut::with_capacity(2048);
    // Plain HTTP requests (the token endpoint, unknown paths) may share a connection
    // (HTTP/1.1 keep-alive); a WebSocket upgrade ends the loop.
    let mut first = true;
    let (head, path) = loop {
        let limits = reply::request_limits(&ctx);
        let request = match read_request(&mut transport, &mut rbuf, &limits).await {
            Ok(r) => r,
            Err(ReadRequestError::Timeout | ReadRequestError::Closed) if rbuf.is_empty() => {
                // An idle keep-alive connection: nothing to answer.
                return transport.shutdown().await;
            }
            Err(e) => return reply::refuse_unreadable(&ctx, transport, e).await,
        };
        if std::mem::take(&mut first) {
            count_handshake(&ctx, &transport);
        }
        let mut keep_alive = reply::wants_keep_alive(&request.head);
        let answer = match Path::parse(&request.head.path) {
            Path::Token(domain) => {
                let (answer, keep) = token::serve(
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
            Path::Devices | Path::Device(_) => {
                let (answer, keep) =
                    devices_api::serve(&ctx, &request.head, keep_alive, peer).await;
                keep_alive = keep;
                answer
            }
            Path::Unknown => {
                ctx.shared.metrics.http_not_found.inc();
                json_error(
                    HttpStatus::NOT_FOUND,
                    &[("Connection", reply::connection_header(keep_alive))],
                    "no such path: see PROTOCOL.md for the relay's endpoints",
                )
            }
            path => break (request.head, path),
        };
        if transport.write_all_vectored(&[&answer]).await.is_err() || !keep_alive {
            return transport.shutdown().await;
        }
    };
    let upgrade = match UpgradeRequest::from_head(&head) {
        Ok(u) => u,
        Err(e) => {
            ctx.shared.metrics.http_bad_request.inc();
            return answer_and_close(transport, &error_response(&e)).await;
        }
    };
    // §11: sessions (§5 and §5a) may select posrelay.reliable.v1.
    let prelude = match path {
        Path::Session(_) | Path::DeviceSession(_) => Prelude::for_session(&ctx, &upgrade),
        _ => Prelude::new(&ctx, &upgrade),
    };
    if login::is_login_by_message(&path, upgrade.authorization.as_deref(), &prelude) {
        // §7b: no credentials at all: 101, then the first message logs in.
        return login::serve(ctx, transport, rbuf, prelude, path, peer, (conn, unauth)).await;
    }
    // §12: registrations, device connections and one-step sessions (a claim) need the
    // cluster; a node cut off from it refuses them while its open connections relay on.
    let needs_cluster = match path {
        Path::DeviceListener => Some("registration"),
        Path::DeviceConnection(_) => Some("device connection"),
        Path::DeviceSession(_) => Some("one-step session"),
        _ => None,
    };
    if let Some(answer) = needs_cluster.and_then(|what| reply::cluster_refusal(&ctx, what)) {
        return answer_and_close(transport, &answer).await;
    }
    // Each arm authenticates, then picks the shard that serves the connection.
    let (shard, routed, held) = match path {
        Path::DeviceListener => {
            return registration::serve(ctx, transport, rbuf, prelude, peer, (conn, unauth)).await
        }
        Path::DeviceConnection(sid) => {
            let Some(sid) = session_id(sid) else {
                return answer_and_close(transport, &reply::not_a_session()).await;
            };
            let claims = prelude.bearer().and_then(|token| {
                ctx.shared
                    .issuer
                    .verify_device(&*ctx.shared.store, token, &sid, super::unix_now())
            });
            let claims = match claims {
                Ok(c) => c,
                Err(e) => return answer_and_close(transport, &reply::auth_refusal(&ctx, &e)).await,
            };
            if let Some(answer) = take_over(&ctx, &claims).await {
                return answer_and_close(transport, &answer).await;
            }
            unauth.authenticated();
            let held = Held {
                _conn: conn,
                _client: None,
            };
            let owner = owner_shard(&sid, ctx.shards).0;
            (owner, Routed::Device { sid, claims }, held)
        }
        Path::PosListener => {
            let claims = pos_login::authenticate(&ctx, pos_credentials(&upgrade, &prelude), peer);
            let (claims, held) = match admit_pos(&ctx, claims.await, unauth, conn) {
                Ok(admitted) => admitted,
                Err(answer) => return answer_and_close(transport, &answer).await,
            };
            let home = client_shard(&claims.client(), ctx.shards).0;
            (home, Routed::Control { claims }, held)
        }
        Path::Session(sid) => {
            let Some(sid) = session_id(sid) else {
                return answer_and_close(transport, &reply::not_a_session()).await;
            };
            let claims = pos_login::authenticate(&ctx, pos_credentials(&upgrade, &prelude), peer);
            let (claims, held) = match admit_pos(&ctx, claims.await, unauth, conn) {
                Ok(admitted) => admitted,
                Err(answer) => return answer_and_close(transport, &answer).await,
            };
            let owner = owner_shard(&sid, ctx.shards).0;
            let mode = prelude.mode;
            (owner, Routed::Session { sid, claims, mode }, held)
        }
        Path::DeviceSession(tsn) => {
            let claims = pos_login::authenticate(&ctx, pos_credentials(&upgrade, &prelude), peer);
            let (claims, held) = match admit_pos(&ctx, claims.await, unauth, conn) {
                Ok(admitted) => admitted,
                Err(answer) => return answer_and_close(transport, &answer).await,
            };
            let Ok(tsn) = TsnInput::parse(&tsn) else {
                return answer_and_close(transport, &one_step::not_found()).await;
            };
            let owner = one_step::owner(&ctx, &claims, &tsn);
            let mode = prelude.mode;
            (owner, Routed::DeviceSession { tsn, claims, mode }, held)
        }
        Path::Token(_) | Path::Unknown | Path::Devices | Path::Device(_) => {
            unreachable!("answered in the request loop")
        }
    };
    let Prelude {
        answer, url_base, ..
    } = prelude;
    route_to(
        ctx,
        shard,
        transport,
        rbuf,
        answer,
        url_base,
        routed,
        held,
        Refusals::Http,
    )
    .await
}

/// §12: a device connects here: this node takes its tsn over (its previous node closes
/// the older connection with 4000) and makes sure the session exists here (the device
/// may have registered through another node). The 503 to answer when that fails.
async fn take_over(ctx: &Rc<ShardCtx>, claims: &DeviceClaims) -> Option<Vec<u8>> {
    ctx.shared.cluster.as_ref()?;
    let device = DeviceKey {
        domain: claims.domain.clone(),
        serial: claims.serial.clone(),
    };
    let why = ctx.arrive(device.clone()).await.err()?;
    tracing::warn!(tsn = %device.serial, error = why.message(), "device connection refused: the cluster did not record the device's new node");
    Some(reply::cluster_call_failed())
}

/// Counts a TLS connection's handshake, full or resumed, once it has finished.
fn count_handshake(ctx: &ShardCtx, transport: &Transport) {
    let Transport::Tls(tls) = transport else {
        return;
    };
    let m = &ctx.shared.metrics;
    match tls.session().handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => m.tls_handshakes_resumed.inc(),
        Some(_) => m.tls_handshakes_full.inc(),
        None => {}
    }
}

/// What a POS upgrade carries to prove who it is (§7, §7c).
fn pos_credentials<'a>(
    upgrade: &'a UpgradeRequest,
    prelude: &'a Prelude,
) -> pos_login::PosCredentials<'a> {
    pos_login::PosCredentials::of(upgrade.authorization.as_deref(), prelude.bearer.as_deref())
}

/// A session id from a URL, if it is one at all.
fn session_id(text: String) -> Option<SessionId> {
    SessionId::new(text).ok()
}

/// Serves `routed` here, or hands the connection to the shard that owns it. `answer` is
/// written first (the 101, or §7b's `logged_in`); `refusals` says how a refusal before the
/// connection opens is told.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn route_to(
    ctx: Rc<ShardCtx>,
    shard: usize,
    transport: Transport,
    rbuf: BytesMut,
    answer: Vec<u8>,
    url_base: String,
    routed: Routed,
    held: Held,
    refusals: Refusals,
) {
    if shard == ctx.index {
        spawn_routed(
            ctx, transport, rbuf, answer, url_base, routed, held, refusals,
        )
    } else {
        let routing = Routing {
            leftover: rbuf.to_vec(),
            answer,
            url_base,
            routed,
            held,
            refusals,
        };
        match Handover::new(transport, routing) {
            Ok(h) => ctx.mesh.send_handover(shard, h).await,
            Err(e) => tracing::warn!(error = %e, "cannot hand a connection over"),
        }
    }
}

/// Serves a connection that arrived from another shard.
pub(crate) fn serve_handover(ctx: Rc<ShardCtx>, handover: Handover) {
    let (transport, r) = handover.into_transport();
    let rbuf = BytesMut::from(&r.leftover[..]);
    spawn_routed(
        ctx, transport, rbuf, r.answer, r.url_base, r.routed, r.held, r.refusals,
    )
}

/// Serves a routed connection in a task of its own, sized for its role: the task
/// that read the upgrade request (its HTTP and handshake state, several KiB) ends
/// here instead of staying under every long-lived connection.
#[allow(clippy::too_many_arguments)]
fn spawn_routed(
    ctx: Rc<ShardCtx>,
    transport: Transport,
    rbuf: BytesMut,
    answer: Vec<u8>,
    url_base: String,
    routed: Routed,
    held: Held,
    refusals: Refusals,
) {
    let accepted = Accepted {
        transport,
        rbuf,
        answer,
        held,
        refusals,
        role: (),
    };
    match routed {
        Routed::Device { sid, claims } => {
            let device = crate::ids::DeviceKey {
                domain: claims.domain,
                serial: claims.serial,
            };
            glommio::spawn_local(device::serve(ctx, accepted.with_role((sid, device, None))))
                .detach()
        }
        Routed::CertDevice { sid, device, cert } => glommio::spawn_local(device::serve(
            ctx,
            accepted.with_role((sid, device, Some(cert))),
        ))
        .detach(),
        Routed::Control { claims } => {
            glommio::spawn_local(control::serve(ctx, accepted.with_role((url_base, claims))))
                .detach()
        }
        Routed::Session { sid, claims, mode } => {
            glommio::spawn_local(session::serve(ctx, accepted.with_role((sid, claims, mode))))
                .detach()
        }
        Routed::DeviceSession { tsn, claims, mode } => glommio::spawn_local(one_step::serve(
            ctx,
            accepted.with_role((tsn, claims, mode)),
        ))
        .detach(),
    };
}
