//! §2 device registration: one text message with the terminal's credentials, answered
//! with its session id, connection URL and a short-lived device token, then close 1000
//! (errors: an error message, then close 1008).

use super::admission::{ConnSlot, UnauthSlot};
use super::metrics::ConnRole;
use super::shard::ShardCtx;
use super::upgrade::Prelude;
use crate::auth::{
    find_client_caught_up, resolve_device, verify_client, ScopeError, TsnInput, DEVICE_TOKEN_TTL,
};
use crate::control::register::{connection_url, error_reply, registered_reply};
use crate::control::{ControlErrorCode, RegisterRequest};
use crate::ids::{ClientId, ClientKey, DeviceKey};
use crate::io::http::with_timeout;
use crate::io::transport::Transport;
use crate::io::ws::{WsIoError, WsStream};
use crate::proto::{CloseCode, Connection, Event, Limits, MessageKind, Role};
use bytes::BytesMut;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A registration message is small: refuse anything larger than this.
const MAX_REGISTRATION_BYTES: usize = 16 * 1024;

/// Why a registration was refused.
enum Refusal {
    /// §2: an error message with its code, then close 1008.
    Policy(ControlErrorCode, String),
    /// The relay failed (store, token signing, an unreachable shard): close 1011, no
    /// message (the cause is in the log, never in the peer's hands).
    Internal(&'static str),
}

/// Who tried, for the log line of a refusal (never the secret).
#[derive(Default)]
struct Attempt {
    tsn: Option<String>,
    client_id: Option<String>,
}

/// How a registration attempt ended.
enum Outcome {
    /// The `registered` reply to send before closing with 1000.
    Registered(Vec<u8>),
    /// §2: "The relay answers nothing to a connection that has not registered within the
    /// handshake timeout; it closes it with 1008."
    TimedOut,
    /// The peer went away (or broke the protocol: its close was already sent).
    Gone,
    /// §6: the relay is shutting down before the registration message arrived: close
    /// with 1001, like every other WebSocket connection.
    ShuttingDown,
}

pub(crate) async fn serve(
    ctx: Rc<ShardCtx>,
    mut transport: Transport,
    rbuf: BytesMut,
    prelude: Prelude,
    peer: IpAddr,
    _slots: (ConnSlot, UnauthSlot),
) {
    // Counted from before its 101 until it ends, so that a drain closes it with 1001 and
    // waits for it (§6).
    let _registering = ctx.registering();
    if transport
        .write_all_vectored(&[&prelude.answer])
        .await
        .is_err()
    {
        return;
    }
    ctx.metrics.opened(ConnRole::Registration);
    let limits = Limits {
        max_frame_payload: MAX_REGISTRATION_BYTES as u64,
        max_message: MAX_REGISTRATION_BYTES,
    };
    let mut ws = WsStream::new(transport, rbuf, Connection::new(Role::Server, limits));
    let mut attempt = Attempt::default();
    let outcome = registration(&ctx, &mut ws, &prelude.url_base, peer, &mut attempt).await;
    match outcome {
        Ok(Outcome::Registered(reply)) => {
            let _ = ws.send_text(reply).await;
            let _ = ws.send_close(CloseCode::NORMAL, "registered").await;
            linger(&mut ws).await;
        }
        Ok(Outcome::TimedOut) => {
            ctx.shared.metrics.http_handshake_timeout.inc();
            let _ = ws
                .send_close(CloseCode::POLICY, "no registration in time")
                .await;
            linger(&mut ws).await;
        }
        Ok(Outcome::Gone) => {}
        Ok(Outcome::ShuttingDown) => {
            let _ = ws
                .send_close(CloseCode::GOING_AWAY, "relay shutting down: reconnect")
                .await;
            linger(&mut ws).await;
        }
        Err(Refusal::Policy(code, message)) => {
            tracing::info!(
                code = code.as_str(),
                reason = %message,
                tsn = attempt.tsn.as_deref().unwrap_or("-"),
                client_id = attempt.client_id.as_deref().unwrap_or("-"),
                peer = %peer,
                "registration refused"
            );
            ctx.shared.metrics.token_invalid_client.inc();
            let _ = ws.send_text(error_reply(code, &message)).await;
            let _ = ws.send_close(CloseCode::POLICY, code.as_str()).await;
            linger(&mut ws).await;
        }
        Err(Refusal::Internal(why)) => {
            tracing::error!(
                why,
                "registration failed inside the relay: closing with 1011"
            );
            let _ = ws.send_close(CloseCode::INTERNAL, "internal error").await;
            linger(&mut ws).await;
        }
    }
    ws.transport.shutdown().await;
    ctx.metrics.closed(ConnRole::Registration);
}

/// Waits briefly for the peer's Close after ours (RFC 6455 §7.1.1), then lets go.
async fn linger(ws: &mut WsStream) {
    let _ = with_timeout(Duration::from_secs(2), async {
        loop {
            match ws.next_event().await {
                Ok(Some(Event::Close(_))) | Ok(None) | Err(_) => return,
                Ok(Some(_)) => {}
            }
        }
    })
    .await;
}

/// Reads the registration message and answers it.
async fn registration(
    ctx: &Rc<ShardCtx>,
    ws: &mut WsStream,
    url_base: &str,
    peer: IpAddr,
    attempt: &mut Attempt,
) -> Result<Outcome, Refusal> {
    let timeout = ctx.shared.config.handshake_timeout;
    let first = with_timeout(
        timeout,
        futures_lite::future::or(
            async {
                loop {
                    match ws.next_event().await {
                        Ok(Some(Event::Message(m))) => return Some(Ok(Some(m))),
                        Ok(Some(Event::Close(_))) | Ok(None) => return Some(Ok(None)),
                        Ok(Some(_)) => continue,
                        Err(e) => return Some(Err(e)),
                    }
                }
            },
            async {
                ctx.until_draining().await;
                None
            },
        ),
    )
    .await;
    let message = match first {
        None => return Ok(Outcome::TimedOut),
        Some(None) => return Ok(Outcome::ShuttingDown),
        Some(Some(Ok(Some(m)))) => m,
        Some(Some(Ok(None))) => return Ok(Outcome::Gone),
        Some(Some(Err(WsIoError::Protocol(_)))) | Some(Some(Err(WsIoError::Io(_)))) => {
            return Ok(Outcome::Gone)
        }
    };
    if message.kind != MessageKind::Text {
        return Err(Refusal::Policy(
            ControlErrorCode::BadRequest,
            "the registration message must be a text (JSON) message".into(),
        ));
    }
    let mut text = message.payload.to_bytes().to_vec();
    let request = RegisterRequest::parse(&mut text)
        .map_err(|e| Refusal::Policy(ControlErrorCode::BadRequest, e.to_string()))?;
    attempt.tsn = Some(request.tsn.chars().take(64).collect());
    attempt.client_id = Some(request.client_id.chars().take(64).collect());
    let tsn = TsnInput::parse(&request.tsn).map_err(|_| {
        Refusal::Policy(
            ControlErrorCode::BadRequest,
            "tsn must be a serial number or <make>-<model>-<serial>".into(),
        )
    })?;
    let admission = &ctx.shared.admission;
    if let Err(why) = admission.check_login(Some(&request.client_id), peer, Instant::now()) {
        return Err(Refusal::Policy(
            ControlErrorCode::InvalidClient,
            format!(
                "too many failed attempts: retry in {} s",
                why.retry_after_secs()
            ),
        ));
    }
    // A secret that verified recently skips argon2 (see auth::cache); otherwise the check
    // runs on the blocking pool. Unknown and wrong look alike, in answer and in time.
    let cached = ClientId::new(request.client_id.as_str())
        .ok()
        .and_then(|id| {
            ctx.shared
                .credentials
                .check(&id, &request.client_secret, Instant::now())
        });
    let client = match cached {
        Some(client) => {
            admission.login_succeeded(&request.client_id, peer, Instant::now());
            client
        }
        None => {
            let shared = ctx.shared.clone();
            let client_id = request.client_id.clone();
            let secret = request.client_secret.clone();
            let verified = glommio::executor()
                .spawn_blocking(move || {
                    let domain = ClientId::new(client_id.as_str())
                        .ok()
                        .and_then(|id| find_client_caught_up(&*shared.store, &id).ok().flatten())
                        .map(|c| c.domain.to_string())
                        .unwrap_or_else(|| "-".to_owned());
                    let verify = || {
                        verify_client(
                            &*shared.store,
                            &shared.hasher,
                            &domain,
                            &client_id,
                            &secret,
                            super::unix_now(),
                            &mut rand::rngs::OsRng,
                        )
                    };
                    match ClientId::new(client_id.as_str()) {
                        Ok(id) => {
                            shared
                                .credentials
                                .verify_once(&id, &secret, Instant::now(), verify)
                        }
                        Err(_) => verify(),
                    }
                })
                .await;
            match verified {
                Ok(client) => {
                    admission.login_succeeded(&request.client_id, peer, Instant::now());
                    // During a rotation's grace the cache could keep the old secret past
                    // its deadline: verify with argon2 until the grace ends.
                    let now = super::unix_now();
                    if client
                        .previous_secret
                        .as_ref()
                        .is_none_or(|p| !p.valid_at(now))
                    {
                        ctx.shared.credentials.remember(
                            &client,
                            &request.client_secret,
                            Instant::now(),
                        );
                    }
                    client
                }
                Err(e) if e.status() >= 500 => {
                    tracing::error!(error = %e, "registration: cannot check credentials");
                    return Err(Refusal::Internal(
                        "the store failed while checking credentials",
                    ));
                }
                Err(_) => {
                    admission.login_failed(Some(&request.client_id), peer, Instant::now());
                    return Err(Refusal::Policy(
                        ControlErrorCode::InvalidClient,
                        "unknown client or wrong secret: check custom_registration_data".into(),
                    ));
                }
            }
        }
    };
    let device = match resolve_device(&*ctx.shared.store, &client, &tsn) {
        Ok(d) => d,
        Err(ScopeError::NotFound { .. }) => {
            return Err(Refusal::Policy(
                ControlErrorCode::UnknownDevice,
                "no such device for these credentials: provision it (admin API) in the client's store or domain".into(),
            ))
        }
        Err(e @ ScopeError::MalformedTsn { .. }) => {
            return Err(Refusal::Policy(ControlErrorCode::BadRequest, e.to_string()))
        }
        Err(e @ ScopeError::Storage(_)) => {
            tracing::error!(error = %e, "registration: cannot look the device up");
            return Err(Refusal::Internal("the store failed while looking the device up"));
        }
    };
    if !device.enabled {
        return Err(Refusal::Policy(
            ControlErrorCode::DeviceDisabled,
            "this device is disabled: ask the operator to enable it".into(),
        ));
    }
    let key = DeviceKey {
        domain: device.domain.clone(),
        serial: device.serial.clone(),
    };
    let (sid, owner) = {
        let coord = ctx.coord.borrow();
        (
            coord.devices().session_id(&key),
            coord.placement().owner_of(&key),
        )
    };
    // §12: the device arrived at this node: the tsn is this node's now (a claim anywhere
    // in the cluster is decided here, and the claim it had holds here), and the node it
    // was on closes its connection. The owner knows the session before the device is
    // answered: a claim right after the `registered` reply must not find it `offline`.
    if let Err(why) = ctx.arrive(key).await {
        return Err(Refusal::Internal(why.message()));
    }
    let client_key = ClientKey {
        domain: client.domain.clone(),
        client_id: client.client_id.clone(),
    };
    let issued = ctx
        .shared
        .issuer
        .issue_device(
            &client_key,
            &device.serial,
            &sid,
            super::unix_now(),
            DEVICE_TOKEN_TTL,
            &mut rand::rngs::OsRng,
        )
        .map_err(|e| {
            tracing::error!(error = %e, "registration: cannot sign the device token");
            Refusal::Internal("cannot sign the device token")
        })?;
    tracing::info!(tsn = %device.serial, domain = %device.domain, shard = owner.0, "device registered");
    let url = connection_url(url_base, &sid);
    Ok(Outcome::Registered(registered_reply(
        &sid,
        &url,
        &issued.token,
        issued.expires_in,
    )))
}
