//! §5 POS session: served on the device's owning shard, for the client holding the
//! claim. Its messages go to the device (or wait in the offline queue, or are reported
//! `undelivered`); the device's come here.

use super::conn::{answer_upgrade, retire, serve_ws, Handler, Next, Open};
use super::device::{carry, log_end};
use super::login::{refuse, Refusals};
use super::metrics::{ConnRole, ShardMetrics};
use super::reliable_session::{self, SessionMode};
use super::reply::{self, auth_refusal, UNKNOWN_SESSION};
use super::shard::ShardCtx;
use super::upgrade::Accepted;
use crate::auth::{AccessClaims, AuthError};
use crate::control::LoginDenied::{Forbidden, NotFound};
use crate::ids::{ClientKey, DeviceKey, SessionId};
use crate::io::transport::Transport;
use crate::proto::Message;
use crate::relay::{ConnId, SessionError};
use std::rc::Rc;
use std::time::Instant;

pub(crate) async fn serve(
    ctx: Rc<ShardCtx>,
    accepted: Box<Accepted<(SessionId, AccessClaims, SessionMode)>>,
) {
    // Boxed: the setup's state is freed before the session's long life (see device.rs).
    // §12: a session whose device another node serves is forwarded there.
    let sid = &accepted.role.0;
    if ctx.shared.cluster.is_some() && ctx.coord.borrow().devices().session_device(sid).is_none() {
        return Box::pin(forward_elsewhere(ctx, accepted)).await;
    }
    let Some(mut open) = Box::pin(open(&ctx, accepted)).await else {
        return;
    };
    let ended = serve_ws(&ctx, &mut open.driver, &mut open.proto, &mut open.handler).await;
    // Fields used in place (not moved out), so the future keeps no second copy of them.
    let conn = open.handler.conn;
    if let Some(movable) = open.handler.movable.take() {
        movable.closed(&ctx, conn);
        if movable.is_edge() {
            // §12: its device moved, and it went on with the device's new node: this
            // node's session of the device ended then.
            let unsent = retire(&ctx, conn, &open.outbox);
            ShardMetrics::add(&ctx.metrics.dropped_device_frames, unsent.frames);
            open.driver.shutdown().await;
            log_end("pos_session", &open.handler.device, ctx.index, conn, ended);
            return;
        }
    }
    let unsent = retire(&ctx, conn, &open.outbox);
    if open.handler.mode == SessionMode::Reliable {
        // Envelopes it never wrote: the claim holds its device messages until acked.
        reliable_session::session_closed(&ctx, &open.handler.device, conn);
    } else if unsent.frames > 0 {
        // Device messages that never reached the POS: the device cannot be told.
        ShardMetrics::add(&ctx.metrics.dropped_device_frames, unsent.frames);
    }
    ctx.coord
        .borrow_mut()
        .devices_mut()
        .handle_pos_session_closed(&open.handler.sid, conn, Instant::now());
    ctx.drive();
    open.driver.shutdown().await;
    log_end("pos_session", &open.handler.device, ctx.index, conn, ended);
}

/// §5: a session that may not open: 404 for an unknown one, 403 for a device another
/// client holds the claim of (in band after a login message, §7b).
pub(crate) async fn refuse_session(
    ctx: &ShardCtx,
    transport: Transport,
    refusals: Refusals,
    why: &SessionError,
) {
    match why {
        SessionError::UnknownSession { .. } => {
            let http = reply::unknown_session(why);
            refuse(transport, refusals, &http, NotFound, UNKNOWN_SESSION).await
        }
        SessionError::NotClaimHolder { .. } => {
            let http = auth_refusal(ctx, &AuthError::WrongSession);
            let message = "this session's device is claimed by another client";
            refuse(transport, refusals, &http, Forbidden, message).await
        }
    }
}

/// §12: the session's device is not on this node: the session (plain or reliable) is
/// forwarded to the node that serves it.
async fn forward_elsewhere(
    ctx: Rc<ShardCtx>,
    accepted: Box<Accepted<(SessionId, AccessClaims, SessionMode)>>,
) {
    super::forward::serve_edge(ctx, accepted).await
}

/// Checks the claim, answers the upgrade and registers the session; `None` when it was
/// refused.
async fn open(
    ctx: &Rc<ShardCtx>,
    accepted: Box<Accepted<(SessionId, AccessClaims, SessionMode)>>,
) -> Option<Open<SessionHandler>> {
    let Accepted {
        transport,
        rbuf,
        answer,
        held,
        refusals,
        role: (sid, claims, mode),
    } = *accepted;
    let client: ClientKey = claims.client();
    let device = ctx.coord.borrow().devices().session_device(&sid).cloned();
    let check = ctx
        .coord
        .borrow()
        .devices()
        .check_pos_session(&sid, &client);
    let device = match (device, check) {
        (Some(device), Ok(())) => device,
        (None, _) => {
            let gone = SessionError::UnknownSession { session_id: sid };
            refuse_session(ctx, transport, refusals, &gone).await;
            return None;
        }
        (_, Err(e)) => {
            refuse_session(ctx, transport, refusals, &e).await;
            return None;
        }
    };
    let upgraded = answer_upgrade(
        ctx,
        transport,
        rbuf,
        &answer,
        ConnRole::PosSession,
        |entry| entry.token_expires_at = Some(claims.expires_at),
    )
    .await?;
    let id = upgraded.id;
    if mode == SessionMode::Reliable {
        reliable_session::session_opening(ctx, &sid, &device, &client);
    }
    let opened = ctx
        .coord
        .borrow_mut()
        .devices_mut()
        .handle_pos_session_opened(&sid, &client, id, Instant::now());
    if let Err(e) = opened {
        upgraded
            .outbox
            .borrow_mut()
            .request_close(e.close_code(), "session no longer available");
    } else if mode == SessionMode::Reliable {
        reliable_session::session_opened(ctx, &device, id);
    }
    ctx.drive();
    tracing::info!(role = "pos_session", tsn = %device.serial, domain = %device.domain, client = %client.client_id, shard = ctx.index, conn = id.0, "connection opened");
    // §12: on a cluster node, a plain session goes on with its device's new node.
    let movable = (mode == SessionMode::Plain)
        .then(|| super::forward::Movable::register(ctx, id, &sid, &client, &device))
        .flatten();
    let handler = SessionHandler {
        sid,
        conn: id,
        device,
        mode,
        movable,
    };
    Some(upgraded.open(handler, held))
}

struct SessionHandler {
    sid: SessionId,
    conn: ConnId,
    device: DeviceKey,
    mode: SessionMode,
    /// §12 (a plain session on a cluster node): what it needs to go on with its device's
    /// new node if the device moves.
    movable: Option<Rc<super::forward::Movable>>,
}

impl Handler for SessionHandler {
    fn on_message(&mut self, ctx: &Rc<ShardCtx>, message: Message, received: Instant) -> Next {
        if self.mode == SessionMode::Reliable {
            return reliable_session::on_pos_message(
                ctx,
                &self.device,
                self.conn,
                message,
                received,
            );
        }
        let message = match &self.movable {
            Some(movable) => match movable.on_message(ctx, message) {
                Ok(next) => return next,
                Err(message) => message,
            },
            None => message,
        };
        let route = ctx
            .coord
            .borrow_mut()
            .devices_mut()
            .handle_message_from_pos(&self.sid, self.conn, message, received);
        carry(ctx, route, Some(&self.device), received).map_or(Next::Read, Next::RoomAt)
    }
}
