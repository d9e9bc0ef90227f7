//! §4 POS control channel: served on the client's home shard. Claims and releases go
//! to the device's owning shard and their answers come back here; `devices` asks the
//! owners which devices are online; events for the client arrive from every shard.

use super::conn::{answer_upgrade, retire, serve_ws, Handler, Next, Upgraded};
use super::metrics::ConnRole;
use super::shard::ShardCtx;
use super::upgrade::Accepted;
use crate::auth::{devices_in_scope, resolve_device, AccessClaims, ScopeError, TsnInput};
use crate::control::event::{self, DeviceEntry};
use crate::control::{ControlErrorCode, ControlRequest, RequestId};
use crate::coord::{Answer, Requester};
use crate::ids::{ClientKey, DeviceKey};
use crate::proto::{Message, MessageKind};
use crate::relay::{ClaimError, ClaimOp, ConnId};
use std::rc::Rc;
use std::time::Instant;

pub(crate) async fn serve(ctx: Rc<ShardCtx>, accepted: Box<Accepted<(String, AccessClaims)>>) {
    let Accepted {
        transport,
        rbuf,
        answer,
        held: _held,
        role: (url_base, claims),
        ..
    } = *accepted;
    let Some(Upgraded {
        id,
        outbox,
        mut driver,
        mut proto,
    }) = answer_upgrade(
        &ctx,
        transport,
        rbuf,
        &answer,
        ConnRole::PosControl,
        |entry| {
            entry.token_expires_at = Some(claims.expires_at);
            entry.url_base = Some(url_base);
        },
    )
    .await
    else {
        return;
    };
    let client = claims.client();
    ctx.coord
        .borrow_mut()
        .handle_control_opened(&client, id, Instant::now());
    ctx.drive();
    tracing::info!(role = "pos_control", client = %client.client_id, domain = %client.domain, shard = ctx.index, conn = id.0, "connection opened");
    let mut handler = ControlHandler {
        claims,
        client: client.clone(),
        conn: id,
    };
    let ended = serve_ws(&ctx, &mut driver, &mut proto, &mut handler).await;
    retire(&ctx, id, &outbox);
    ctx.coord
        .borrow_mut()
        .handle_control_closed(&client, id, Instant::now());
    ctx.drive();
    driver.shutdown().await;
    tracing::info!(role = "pos_control", client = %client.client_id, domain = %client.domain, shard = ctx.index, conn = id.0, close_code = ended.code(), how = %ended, "connection closed");
}

struct ControlHandler {
    claims: AccessClaims,
    client: ClientKey,
    conn: ConnId,
}

impl Handler for ControlHandler {
    fn on_message(&mut self, ctx: &Rc<ShardCtx>, message: Message, _: Instant) -> Next {
        if message.kind != MessageKind::Text {
            let json = event::error(
                None,
                ControlErrorCode::BadRequest,
                "control messages are JSON text messages",
            );
            ctx.send_text(self.conn, json);
            return Next::Read;
        }
        let mut bytes = message.payload.to_bytes().to_vec();
        match ControlRequest::parse(&mut bytes) {
            Err(rejected) => ctx.send_text(self.conn, rejected.reply()),
            Ok(ControlRequest::Claim { request_id, tsn }) => {
                self.claim(ctx, ClaimOp::Claim, request_id, &tsn)
            }
            Ok(ControlRequest::Release { request_id, tsn }) => {
                self.claim(ctx, ClaimOp::Release, request_id, &tsn)
            }
            Ok(ControlRequest::Devices { request_id }) => {
                // Presence lives on every shard: the channel reads on once it is answered.
                return Next::Finish(Box::pin(devices(
                    ctx.clone(),
                    self.claims.clone(),
                    self.conn,
                    request_id,
                )));
            }
        }
        Next::Read
    }
}

impl ControlHandler {
    fn claim(&self, ctx: &Rc<ShardCtx>, op: ClaimOp, request_id: Option<RequestId>, tsn: &str) {
        let not_found = |rid: Option<&RequestId>| {
            event::error(
                rid,
                ControlErrorCode::NotFound,
                "no such device in your scope: check the tsn (and that it is provisioned in your store or domain)",
            )
        };
        let Ok(tsn) = TsnInput::parse(tsn) else {
            return ctx.send_text(self.conn, not_found(request_id.as_ref()));
        };
        let device = match resolve_device(&*ctx.shared.store, &self.claims, &tsn) {
            Ok(d) => d,
            Err(ScopeError::Storage(e)) => {
                tracing::error!(error = %e, "claim: cannot look the device up");
                let json = event::error(
                    request_id.as_ref(),
                    ControlErrorCode::BadRequest,
                    "internal error: the relay could not look the device up, retry",
                );
                return ctx.send_text(self.conn, json);
            }
            Err(_) => return ctx.send_text(self.conn, not_found(request_id.as_ref())),
        };
        if op == ClaimOp::Claim && !device.enabled {
            // §4 `offline`: a disabled device "has no session yet".
            let refusal = ClaimError::Offline {
                serial: device.serial,
            };
            let json = event::error(
                request_id.as_ref(),
                refusal.code(),
                "the device is disabled, so it has no session: ask the operator to enable it",
            );
            return ctx.send_text(self.conn, json);
        }
        // §12: a claim is the cluster's; a node cut off from it refuses, and says why.
        if let Some(Err(why)) = ctx.shared.cluster_availability() {
            if let Some(node) = ctx.shared.cluster.as_ref() {
                node.count_refusal();
            }
            let refusal = ClaimError::Unavailable {
                serial: device.serial,
            };
            let json = event::error(request_id.as_ref(), refusal.code(), why.explain());
            return ctx.send_text(self.conn, json);
        }
        let key = DeviceKey {
            domain: device.domain,
            serial: device.serial,
        };
        let requester = Requester {
            conn: self.conn,
            request_id,
        };
        if ctx.shared.cluster.is_none() {
            return ctx.claim(op, self.client.clone(), key, requester);
        }
        // §12: the node that owns the tsn decides (a round trip to read its ownership
        // record, and one to that node when it is another).
        let (ctx, client) = (ctx.clone(), self.client.clone());
        glommio::spawn_local(async move {
            let rid = requester.request_id.as_ref();
            if !super::remote_claims::claim_elsewhere(&ctx, requester.conn, op, &client, &key, rid)
                .await
            {
                ctx.claim(op, client, key, requester);
            }
        })
        .detach();
    }
}

/// Answers a `devices` request (§4): the client's devices and whether each is online.
async fn devices(
    ctx: Rc<ShardCtx>,
    claims: AccessClaims,
    conn: ConnId,
    request_id: Option<RequestId>,
) {
    let devices = match devices_in_scope(&*ctx.shared.store, &claims) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "devices: cannot list the client's devices");
            let json = event::error(
                request_id.as_ref(),
                ControlErrorCode::BadRequest,
                "internal error: the relay could not list your devices, retry",
            );
            return ctx.send_text(conn, json);
        }
    };
    let keys: Vec<DeviceKey> = devices
        .iter()
        .map(|d| DeviceKey {
            domain: d.domain.clone(),
            serial: d.serial.clone(),
        })
        .collect();
    let presence = match ctx.presence_of(keys).await {
        Answer::Presence(p) => p,
        _ => {
            let json = event::error(
                request_id.as_ref(),
                ControlErrorCode::BadRequest,
                "internal error: the relay could not gather the devices' state in time, retry",
            );
            return ctx.send_text(conn, json);
        }
    };
    let mut entries: Vec<DeviceEntry> = presence
        .into_iter()
        .map(|p| DeviceEntry {
            tsn: p.device.serial,
            online: p.online,
        })
        .collect();
    entries.sort_by(|a, b| a.tsn.cmp(&b.tsn));
    ctx.send_text(conn, event::devices(request_id.as_ref(), &entries));
}
