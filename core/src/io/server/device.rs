//! §3 device connection: served on the device's owning shard. Its messages go to the
//! POS that holds the claim (or wait in the device → POS queue); the POS's come here.

use super::conn::{answer_upgrade, retire, serve_ws, Ended, Handler, Next, Open};
use super::login::refuse;
use super::metrics::{ConnRole, ShardMetrics};
use super::reply::{self, UNKNOWN_SESSION};
use super::shard::ShardCtx;
use super::upgrade::Accepted;
use crate::control::LoginDenied;
use crate::ids::{DeviceKey, SessionId};
use crate::io::outbox::OutboxRef;
use crate::proto::Message;
use crate::relay::{ConnId, Route, SessionError};
use crate::tenancy::CertFingerprint;
use std::rc::Rc;
use std::time::Instant;

/// What a device connection is: its session, the device, and the client certificate it
/// was made with (§2a), if any.
pub(crate) type DeviceRole = (SessionId, DeviceKey, Option<CertFingerprint>);

pub(crate) async fn serve(ctx: Rc<ShardCtx>, accepted: Box<Accepted<DeviceRole>>) {
    // Boxed: the setup's state (the upgrade answer, claims, socket) is freed before the
    // connection's long idle life, whose future holds only the `Open` state.
    let Some(mut open) = Box::pin(open(&ctx, accepted)).await else {
        return;
    };
    let ended = serve_ws(&ctx, &mut open.driver, &mut open.proto, &mut open.handler).await;
    // Fields used in place (not moved out), so the future keeps no second copy of them.
    let handler = &open.handler;
    let unsent = retire(&ctx, handler.conn, &open.outbox);
    ctx.report_unsent_to_device(&handler.device, unsent);
    ctx.coord
        .borrow_mut()
        .devices_mut()
        .handle_device_disconnected(&handler.sid, handler.conn, Instant::now());
    ctx.drive();
    super::reliable_session::device_disconnected(&ctx, &handler.device, handler.conn);
    open.driver.shutdown().await;
    log_end(
        "device",
        &open.handler.device,
        ctx.index,
        open.handler.conn,
        ended,
    );
}

/// Answers the upgrade and registers the connection; `None` when it was refused.
async fn open(
    ctx: &Rc<ShardCtx>,
    accepted: Box<Accepted<DeviceRole>>,
) -> Option<Open<DeviceHandler>> {
    let Accepted {
        transport,
        rbuf,
        answer,
        held,
        refusals,
        role: (sid, device, client_cert),
    } = *accepted;
    if ctx.coord.borrow().devices().session_device(&sid).is_none() {
        // The session is gone (relay restarted, device disabled): register again.
        let gone = SessionError::UnknownSession { session_id: sid };
        let http = reply::unknown_session(&gone);
        refuse(
            transport,
            refusals,
            &http,
            LoginDenied::NotFound,
            UNKNOWN_SESSION,
        )
        .await;
        return None;
    }
    let upgraded = answer_upgrade(ctx, transport, rbuf, &answer, ConnRole::Device, |_| {}).await?;
    let id = upgraded.id;
    if let Some(cert) = client_cert {
        ctx.cert_conns.borrow_mut().insert(id, cert);
    }
    let connected = ctx
        .coord
        .borrow_mut()
        .devices_mut()
        .handle_device_connected(&sid, id, Instant::now());
    match connected {
        Ok(()) => {
            ctx.drive();
            super::reliable_session::device_connected(ctx, &device, id);
            tracing::info!(role = "device", tsn = %device.serial, domain = %device.domain, shard = ctx.index, conn = id.0, "connection opened");
        }
        // The session went away between the check and now (a disable): 4404.
        Err(e) => upgraded
            .outbox
            .borrow_mut()
            .request_close(e.close_code(), "unknown session"),
    }
    let handler = DeviceHandler {
        sid,
        conn: id,
        device,
    };
    Some(upgraded.open(handler, held))
}

pub(crate) fn log_end(role: &str, device: &DeviceKey, shard: usize, id: ConnId, ended: Ended) {
    tracing::info!(role, tsn = %device.serial, domain = %device.domain, shard, conn = id.0, close_code = ended.code(), how = %ended, "connection closed");
}

struct DeviceHandler {
    sid: SessionId,
    conn: ConnId,
    /// The device (its undelivered reports when the connection ends).
    device: DeviceKey,
}

impl Handler for DeviceHandler {
    fn on_message(&mut self, ctx: &Rc<ShardCtx>, message: Message, received: Instant) -> Next {
        if let Some(next) = super::reliable_session::on_device_message(
            ctx,
            &self.device,
            self.conn,
            &message,
            received,
        ) {
            return next;
        }
        let route = ctx
            .coord
            .borrow_mut()
            .devices_mut()
            .handle_message_from_device(&self.sid, self.conn, message, received);
        carry(ctx, route, None, received).map_or(Next::Read, Next::RoomAt)
    }
}

/// Carries out the relay state's decision for one message: forward it (`to_device`
/// names the device when it came from its POS), or count what the state did with it
/// (queued; rejected and reported; or, for device messages nobody can receive, dropped).
/// Returns the receiver's outbox when it is now full: the sender waits for room
/// (backpressure) before reading on. Synchronous, so that a connection's future holds
/// no message while it waits for bytes.
pub(crate) fn carry(
    ctx: &Rc<ShardCtx>,
    route: Route<Message>,
    to_device: Option<&DeviceKey>,
    received: Instant,
) -> Option<OutboxRef> {
    let full = match route {
        Route::Forward { conn, message } => forward(ctx, conn, message, to_device, received),
        Route::Queued => {
            ShardMetrics::add(&ctx.metrics.queued, 1);
            None
        }
        Route::Rejected => None,
        Route::Dropped(reason) => {
            if to_device.is_none() {
                ShardMetrics::add(&ctx.metrics.dropped_device_frames, 1);
            }
            tracing::debug!(?reason, "message dropped");
            None
        }
    };
    ctx.drive();
    full
}

/// Writes `message` on `target` (zero copy); returns the target's outbox when it has no
/// room left. `to_device` names the device when the message came from its POS, so that
/// a message that can no longer be written is reported `undelivered`.
pub(crate) fn forward(
    ctx: &Rc<ShardCtx>,
    target: ConnId,
    message: Message,
    to_device: Option<&DeviceKey>,
    received: Instant,
) -> Option<OutboxRef> {
    let len = message.payload.len() as u64;
    // §12: a node whose lease lapsed forwards nothing more, even what it reads in the
    // instant it wakes from a pause: the message is reported as not written (a POS's, to
    // its claim holder), and this shard ends what it had of its devices (4000 or 1012).
    let fenced = ctx
        .shared
        .cluster
        .as_ref()
        .is_some_and(|node| ctx.fencing.get() || !node.may_forward(received));
    if fenced {
        ctx.check_lease(received);
    }
    let outbox = ctx.outbox(target).filter(|_| !fenced);
    let pushed = outbox
        .as_ref()
        .is_some_and(|ob| ShardCtx::push_message(ob, &message, Some(received)).is_ok());
    if !pushed {
        match to_device {
            Some(device) => ctx.report_unsent_to_device(
                device,
                crate::relay::Count {
                    frames: 1,
                    bytes: len,
                },
            ),
            None => ShardMetrics::add(&ctx.metrics.dropped_device_frames, 1),
        }
        return None;
    }
    let m = &ctx.metrics;
    if to_device.is_some() {
        ShardMetrics::add(&m.frames_to_device, 1);
        ShardMetrics::add(&m.bytes_to_device, len);
    } else {
        ShardMetrics::add(&m.frames_to_pos, 1);
        ShardMetrics::add(&m.bytes_to_pos, len);
    }
    outbox.filter(|ob| !ob.borrow().has_room())
}
