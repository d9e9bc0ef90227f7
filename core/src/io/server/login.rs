//! §7b login by first message: an upgrade on an endpoint that needs a token (§3, §4, §5,
//! §5a) with no credentials at all is answered `101`, and then the relay "sends nothing —
//! no data, no ping — until the client's first message", which must be
//! `{"type":"login","token":"…"}` (text, at most 4 KiB).
//!
//! Served on the shard that accepted the connection, counted as registering (a drain
//! closes it with 1001, §6) and as unauthenticated (`--max-unauthenticated`) until it has
//! logged in. The rules in time are `control::LoginGate`'s:
//! - accepted: the connection is routed to the shard that serves its endpoint exactly as
//!   if the token had come with the upgrade, with `logged_in` as the first bytes it writes
//!   (in place of the 101, which is already out) and the bytes the client sent after its
//!   login as the first it reads, so that they are handled after it, in order; a refusal
//!   there for another reason than the credentials is told in band
//!   ([`Refusals::InBand`]: `login_error`, then 1008);
//! - refused (not a login, a bad token): silence, then 1008 "once the handshake timeout,
//!   counted from the upgrade, has run out; never earlier", counted as a failed login (§1).
//!   The token is never logged.

use super::admission::{ConnSlot, UnauthSlot};
use super::handover::{Held, Routed};
use super::path::Path;
use super::shard::ShardCtx;
use super::upgrade::{admit_pos, Prelude, SessionMode};
use crate::auth::{AuthError, LoginAttempts};
use crate::control::login::{login_error, CLOSE_AFTER_LOGIN_FAILURE, MAX_LOGIN_MESSAGE};
use crate::control::{LoginDenied, LoginGate, LoginToken};
use crate::ids::SessionId;
use crate::io::http::with_timeout;
use crate::io::transport::Transport;
use crate::proto::{CloseCode, Connection, Event, Limits, Message, OpCode, Role};
use crate::relay::{client_shard, owner_shard};
use bytes::BytesMut;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How a connection's refusals before it opens are told: as the HTTP answer to its
/// upgrade, or, for a connection that logged in by its first message (its 101 is out), in
/// band: `{"type":"error",…}` then 1008 (§7b).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusals {
    /// Before the 101: the HTTP answer.
    Http,
    /// After a login by first message.
    InBand,
}

/// Refuses a connection before it opens: `http` (the upgrade's answer) or, in band, the
/// `denied` error and 1008, as `refusals` says.
pub(crate) async fn refuse(
    mut transport: Transport,
    refusals: Refusals,
    http: &[u8],
    denied: LoginDenied,
    message: &str,
) {
    match refusals {
        Refusals::Http => super::reply::answer_and_close(transport, http).await,
        Refusals::InBand => {
            let error = text_frame(&login_error(denied, message));
            let close = close_frame(CloseCode(CLOSE_AFTER_LOGIN_FAILURE), denied.code().as_str());
            let _ = transport.write_all_vectored(&[&error, &close]).await;
            transport.shutdown().await;
        }
    }
}

/// Whether an upgrade on `path` with these credentials is a login by first message: an
/// endpoint that needs a token (§3, §4, §5, §5a) and "no credentials at all (no
/// `Authorization`, no `bearer.*` entry)".
pub(crate) fn is_login_by_message(
    path: &Path,
    authorization: Option<&str>,
    prelude: &Prelude,
) -> bool {
    let needs_token = matches!(
        path,
        Path::DeviceConnection(_) | Path::PosListener | Path::Session(_) | Path::DeviceSession(_)
    );
    needs_token && authorization.is_none() && prelude.bearer.is_none()
}

/// How waiting for the login ended.
enum Waited {
    /// The login was accepted: where to route the connection.
    LoggedIn(Box<Routed>, Held, u64),
    /// Refused: 1008 at the deadline.
    Refused,
    /// The peer went away.
    Gone,
    /// §6: the relay is shutting down.
    Draining,
}

/// Serves an upgrade that carries no credentials on `path` until its login is accepted
/// (then routes it) or refused (then closes it at the deadline).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    ctx: Rc<ShardCtx>,
    mut transport: Transport,
    rbuf: BytesMut,
    prelude: Prelude,
    path: Path,
    peer: IpAddr,
    (conn, unauth): (ConnSlot, UnauthSlot),
) {
    let waiting = ctx.registering();
    if transport
        .write_all_vectored(&[&prelude.answer])
        .await
        .is_err()
    {
        return;
    }
    let mut gate = LoginGate::new(Instant::now(), ctx.shared.config.handshake_timeout);
    let mut rbuf = rbuf;
    let waited = wait_for_login(
        &ctx,
        &mut transport,
        &mut rbuf,
        &mut gate,
        (&path, prelude.mode),
        peer,
        (conn, unauth),
    )
    .await;
    match waited {
        Waited::LoggedIn(routed, held, expires_in) => {
            let answer = text_frame(&gate.handle_accepted(expires_in));
            let shard = match &*routed {
                Routed::Device { sid, .. }
                | Routed::Session { sid, .. }
                | Routed::CertDevice { sid, .. } => owner_shard(sid, ctx.shards).0,
                Routed::Control { claims } => client_shard(&claims.client(), ctx.shards).0,
                Routed::DeviceSession { tsn, claims, .. } => {
                    super::one_step::owner(&ctx, claims, tsn)
                }
            };
            drop(waiting);
            super::accept::route_to(
                ctx,
                shard,
                transport,
                rbuf,
                answer,
                prelude.url_base,
                *routed,
                held,
                Refusals::InBand,
            )
            .await
        }
        Waited::Refused => {
            // §7b: "closes the connection with 1008 once the handshake timeout, counted
            // from the upgrade, has run out; never earlier". A drain comes first (§6).
            let deadline = gate.poll_close_at().unwrap_or_else(Instant::now);
            let code = match discard_until(&ctx, &mut transport, deadline).await {
                Some(code) => code,
                None => return transport.shutdown().await,
            };
            let close = close_frame(code, close_reason(code));
            let _ = transport.write_all_vectored(&[&close]).await;
            linger(&mut transport).await;
            transport.shutdown().await;
        }
        Waited::Draining => {
            let close = close_frame(CloseCode::GOING_AWAY, close_reason(CloseCode::GOING_AWAY));
            let _ = transport.write_all_vectored(&[&close]).await;
            linger(&mut transport).await;
            transport.shutdown().await;
        }
        Waited::Gone => transport.shutdown().await,
    }
}

fn close_reason(code: CloseCode) -> &'static str {
    if code == CloseCode::GOING_AWAY {
        "relay shutting down: reconnect"
    } else {
        "login failed"
    }
}

/// Reads the first message, verifies its token and admits the connection.
async fn wait_for_login(
    ctx: &Rc<ShardCtx>,
    transport: &mut Transport,
    rbuf: &mut BytesMut,
    gate: &mut LoginGate,
    (path, mode): (&Path, SessionMode),
    peer: IpAddr,
    (conn, unauth): (ConnSlot, UnauthSlot),
) -> Waited {
    let deadline = gate.poll_close_at().unwrap_or_else(Instant::now);
    let first = match first_message(ctx, transport, rbuf, deadline).await {
        First::Message(m) => m,
        First::NotAMessage => {
            // A frame the decoder refuses (too large, broken): not a login.
            let _ = gate.handle_first_message(crate::proto::MessageKind::Binary, &mut []);
            failed_login(ctx, peer, "the first message is not a login message");
            return Waited::Refused;
        }
        First::Gone => return Waited::Gone,
        First::Draining => return Waited::Draining,
        First::Deadline => {
            failed_login(ctx, peer, "no login message in time");
            return Waited::Refused;
        }
    };
    let mut payload = first.payload.to_bytes().to_vec();
    let token = match gate.handle_first_message(first.kind, &mut payload) {
        Ok(token) => token,
        Err(why) => {
            failed_login(ctx, peer, &why.to_string());
            return Waited::Refused;
        }
    };
    let attempt = ctx.shared.admission.attempt_from(peer, Instant::now());
    if let Err(throttled) = attempt.check(None) {
        gate.handle_rejected();
        tracing::info!(peer = %peer, retry_after_secs = throttled.retry_after_secs, "login by first message refused: too many failed logins from this address");
        return Waited::Refused;
    }
    match verify(ctx, (path, mode), &token) {
        Ok((routed, expires_in)) => {
            let held = match &routed {
                Routed::Device { .. } | Routed::CertDevice { .. } => {
                    unauth.authenticated();
                    Held {
                        _conn: conn,
                        _client: None,
                    }
                }
                Routed::Control { claims }
                | Routed::Session { claims, .. }
                | Routed::DeviceSession { claims, .. } => {
                    match admit_pos(ctx, Ok(claims.clone()), unauth, conn) {
                        Ok((_, held)) => held,
                        Err(_) => {
                            // The client is at its connection limit (a 429 before an
                            // upgrade): refused like a login, without counting a failure.
                            gate.handle_rejected();
                            tracing::info!(peer = %peer, client = %claims.client_id, "login by first message: the client has too many open connections");
                            return Waited::Refused;
                        }
                    }
                }
            };
            Waited::LoggedIn(Box::new(routed), held, expires_in)
        }
        Err(e) => {
            gate.handle_rejected();
            attempt.failed(None);
            ctx.shared.metrics.token_invalid_client.inc();
            // The reason, never the token.
            tracing::info!(error = %e, peer = %peer, "login by first message refused");
            Waited::Refused
        }
    }
}

/// A refused login: counted for the address (§1) and logged (never the message itself).
fn failed_login(ctx: &ShardCtx, peer: IpAddr, why: &str) {
    let attempt = ctx.shared.admission.attempt_from(peer, Instant::now());
    attempt.failed(None);
    ctx.shared.metrics.token_invalid_client.inc();
    tracing::info!(peer = %peer, why, "login by first message refused");
}

/// The token verified as the endpoint's `Authorization: Bearer` would be: where the
/// connection goes (a §5 or §5a session keeping the `mode` its upgrade selected, §11), and
/// the token's remaining lifetime.
fn verify(
    ctx: &ShardCtx,
    (path, mode): (&Path, SessionMode),
    token: &LoginToken,
) -> Result<(Routed, u64), AuthError> {
    let now = super::unix_now();
    let shared = &ctx.shared;
    let session = |sid: &str| SessionId::new(sid.to_owned()).map_err(|_| AuthError::WrongSession);
    match path {
        Path::DeviceConnection(sid) => {
            let sid = session(sid)?;
            let claims = shared
                .issuer
                .verify_device(&*shared.store, token.expose(), &sid, now)?;
            let expires_in = claims.expires_at.saturating_sub(now);
            Ok((Routed::Device { sid, claims }, expires_in))
        }
        Path::PosListener | Path::Session(_) | Path::DeviceSession(_) => {
            let claims = shared
                .issuer
                .verify_access(&*shared.store, token.expose(), now)?;
            let expires_in = claims.expires_at.saturating_sub(now);
            let routed = match path {
                Path::Session(sid) => Routed::Session {
                    sid: session(sid)?,
                    claims,
                    mode,
                },
                // A tsn that cannot be one is refused like a bad login (it names nothing).
                Path::DeviceSession(tsn) => Routed::DeviceSession {
                    tsn: crate::auth::TsnInput::parse(tsn).map_err(|_| AuthError::WrongSession)?,
                    claims,
                    mode,
                },
                _ => Routed::Control { claims },
            };
            Ok((routed, expires_in))
        }
        _ => Err(AuthError::InvalidToken {
            reason: "this endpoint takes no login message".into(),
        }),
    }
}

/// What arrived first.
enum First {
    Message(Message),
    NotAMessage,
    Gone,
    Draining,
    Deadline,
}

/// Reads until the first whole message, sending nothing (no pong either: §7b "sends
/// nothing"), until `deadline` or a drain.
async fn first_message(
    ctx: &Rc<ShardCtx>,
    transport: &mut Transport,
    rbuf: &mut BytesMut,
    deadline: Instant,
) -> First {
    // A login is at most 4 KiB; a larger first message is refused, not read.
    let limits = Limits {
        max_frame_payload: MAX_LOGIN_MESSAGE as u64,
        max_message: MAX_LOGIN_MESSAGE,
    };
    let mut proto = Connection::new(Role::Server, limits);
    let read = async {
        loop {
            match proto.handle_read(rbuf) {
                Ok(Some(Event::Message(m))) => return First::Message(m),
                Ok(Some(Event::Close(_))) => return First::Gone,
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(_) => return First::NotAMessage,
            }
            match transport.read_into(rbuf).await {
                Ok(0) | Err(_) => return First::Gone,
                Ok(_) => {}
            }
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let raced = with_timeout(
        left,
        futures_lite::future::or(async { Some(read.await) }, async {
            ctx.until_draining().await;
            None
        }),
    )
    .await;
    match raced {
        None => First::Deadline,
        Some(None) => First::Draining,
        Some(Some(first)) => first,
    }
}

/// Reads and drops whatever the peer sends until `deadline` (then `Some(1008)`) or a drain
/// (`Some(1001)`); `None` when the peer went away first.
async fn discard_until(
    ctx: &Rc<ShardCtx>,
    transport: &mut Transport,
    deadline: Instant,
) -> Option<CloseCode> {
    let mut sink = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            sink.clear();
            match transport.read_into(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let raced = with_timeout(
        left,
        futures_lite::future::or(
            async {
                read.await;
                Some(())
            },
            async {
                ctx.until_draining().await;
                None
            },
        ),
    )
    .await;
    match raced {
        None => Some(CloseCode(CLOSE_AFTER_LOGIN_FAILURE)),
        Some(None) => Some(CloseCode::GOING_AWAY),
        Some(Some(())) => None,
    }
}

/// Waits briefly for the peer's Close after ours (RFC 6455 §7.1.1), then lets go.
async fn linger(transport: &mut Transport) {
    let mut sink = BytesMut::with_capacity(256);
    let _ = with_timeout(Duration::from_secs(2), async {
        loop {
            sink.clear();
            match transport.read_into(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// One unfragmented server text frame.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let header = crate::proto::FrameHeader::server_data(OpCode::Text, true, payload.len());
    let mut frame = header.as_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// A server Close frame with `code` and `reason`.
fn close_frame(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut proto = Connection::new(Role::Server, Limits::default());
    proto.send_close(code, reason);
    proto
        .poll_transmit()
        .map(|b| b.to_vec())
        .unwrap_or_default()
}
