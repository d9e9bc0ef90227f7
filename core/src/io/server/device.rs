//! §3 device connection: served on the device's owning shard. Its messages go to the
//! POS that holds the claim (or wait in the device → POS queue); the POS's come here.

use super::accept::Accepted;
use super::conn::{retire, serve_ws, ConnEntry, Ended, Handler};
use super::metrics::{ConnRole, ShardMetrics};
use super::shard::ShardCtx;
use crate::auth::DeviceClaims;
use crate::ids::{DeviceKey, SessionId};
use crate::io::driver::ConnDriver;
use crate::io::outbox::Outbox;
use crate::proto::{Connection, Message, Role};
use crate::relay::{ConnId, Route};
use std::rc::Rc;
use std::time::Instant;

pub(crate) async fn serve(ctx: Rc<ShardCtx>, accepted: Box<Accepted<(SessionId, DeviceClaims)>>) {
    let Accepted {
        mut transport,
        rbuf,
        answer,
        held: _held,
        role: (sid, claims),
    } = *accepted;
    let device = DeviceKey {
        domain: claims.domain.clone(),
        serial: claims.serial.clone(),
    };
    if ctx.devices.borrow().session_device(&sid).is_none() {
        // The session is gone (relay restarted, device disabled): register again.
        return super::accept::answer_and_close(transport, &super::accept::not_found_session())
            .await;
    }
    if transport.write_all_vectored(&[&answer]).await.is_err() {
        return;
    }
    let id = ctx.new_conn_id();
    let outbox = Outbox::new(ctx.shared.config.send_queue_bytes);
    outbox
        .borrow_mut()
        .set_latency(ctx.metrics.relay_latency.clone());
    ctx.add_conn(id, ConnEntry::new(outbox.clone(), ConnRole::Device));
    let mut driver = ConnDriver::new(transport, rbuf, outbox.clone());
    let mut proto = Connection::new(Role::Server, ctx.shared.config.ws_limits);
    let connected = ctx
        .devices
        .borrow_mut()
        .handle_device_connected(&sid, id, Instant::now());
    match connected {
        Ok(()) => {
            ctx.process_actions();
            tracing::info!(role = "device", tsn = %device.serial, domain = %device.domain, shard = ctx.index, conn = id.0, "connection opened");
        }
        // The session went away between the check and now (a disable): 4404.
        Err(e) => outbox
            .borrow_mut()
            .request_close(e.close_code(), "unknown session"),
    }
    let mut handler = DeviceHandler {
        sid: sid.clone(),
        conn: id,
    };
    let ended = serve_ws(&ctx, &mut driver, &mut proto, &mut handler).await;
    let unsent = retire(&ctx, id, &outbox);
    ctx.report_unsent_to_device(&device, unsent);
    ctx.devices
        .borrow_mut()
        .handle_device_disconnected(&sid, id, Instant::now());
    ctx.process_actions();
    driver.shutdown().await;
    log_end("device", &device, ctx.index, id, ended);
}

pub(crate) fn log_end(role: &str, device: &DeviceKey, shard: usize, id: ConnId, ended: Ended) {
    tracing::info!(role, tsn = %device.serial, domain = %device.domain, shard, conn = id.0, close_code = ?ended.code(), how = ?ended, "connection closed");
}

struct DeviceHandler {
    sid: SessionId,
    conn: ConnId,
}

impl Handler for DeviceHandler {
    async fn on_message(&mut self, ctx: &Rc<ShardCtx>, driver: &mut ConnDriver, message: Message) {
        let route = ctx.devices.borrow_mut().handle_message_from_device(
            &self.sid,
            self.conn,
            message,
            Instant::now(),
        );
        carry(ctx, driver, route, None).await;
    }
}

/// Carries out the relay state's decision for one message: forward it (`to_device`
/// names the device when it came from its POS), or count what the state did with it
/// (queued; rejected and reported; or, for device messages nobody can receive, dropped).
pub(crate) async fn carry(
    ctx: &Rc<ShardCtx>,
    driver: &mut ConnDriver,
    route: Route<Message>,
    to_device: Option<&DeviceKey>,
) {
    match route {
        Route::Forward { conn, message } => forward(ctx, driver, conn, message, to_device).await,
        Route::Queued => ShardMetrics::add(&ctx.metrics.queued, 1),
        Route::Rejected => {}
        Route::Dropped(reason) => {
            if to_device.is_none() {
                ShardMetrics::add(&ctx.metrics.dropped_device_frames, 1);
            }
            tracing::debug!(?reason, "message dropped");
        }
    }
    ctx.process_actions();
}

/// Writes `message` on `target` (zero copy) and waits while the target is full
/// (backpressure). `to_device` names the device when the message came from its POS, so
/// that a message that can no longer be written is reported `undelivered`.
pub(crate) async fn forward(
    ctx: &Rc<ShardCtx>,
    driver: &mut ConnDriver,
    target: ConnId,
    message: Message,
    to_device: Option<&DeviceKey>,
) {
    let len = message.payload.len() as u64;
    let outbox = ctx.outbox(target);
    let pushed = outbox
        .as_ref()
        .is_some_and(|ob| ShardCtx::push_message(ob, &message).is_ok());
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
        return;
    }
    let m = &ctx.metrics;
    if to_device.is_some() {
        ShardMetrics::add(&m.frames_to_device, 1);
        ShardMetrics::add(&m.bytes_to_device, len);
    } else {
        ShardMetrics::add(&m.frames_to_pos, 1);
        ShardMetrics::add(&m.bytes_to_pos, len);
    }
    if let Some(ob) = outbox {
        if !ob.borrow().has_room() {
            let _ = driver.wait_for_room(&ob).await;
        }
    }
}
