//! §12 claims across nodes, the io side. A tsn is owned by the node its device last
//! arrived at (its ownership record); that node's owning shard decides every claim and
//! release of it, as within one node, so claims stay exclusive across the cluster.
//!
//! - Asking: a control channel here claims a tsn another node owns
//!   ([`claim_elsewhere`]): the claim goes to that node (`posrelay.node.<owner>.claim`),
//!   and its decision comes back as the §4 answer, with a `session_url` naming the owner's
//!   `--node-url`.
//! - Deciding: shard 0 reads what other nodes put to this one ([`serve_inbox`]): a claim
//!   is asked of the coordinator for a stand-in requester (a connection id no connection
//!   has), whose answer goes back to the asking node instead of onto a control channel
//!   ([`answer`]); a move notice ends what this node had of the device (4000 on its
//!   connection, §12); another node's event for a client goes to the client's control
//!   channels here (§12: they reach the claim holder "on whichever nodes they are").

use std::rc::Rc;
use std::time::Instant;

use super::shard::ShardCtx;
use crate::cluster::remote::{ClaimReply, ClaimRequest, Inbound, RemoteOutcome, Replier};
use crate::control::{event, RequestId};
use crate::coord::{ClaimOutcome, Requester};
use crate::ids::{ClientKey, DeviceKey};
use crate::relay::{ClaimError, ClaimOp, ConnId};

/// Shard 0's task: serves what other nodes put to this one, until the bridge stops.
pub(crate) async fn serve_inbox(ctx: Rc<ShardCtx>) {
    let Some(mut inbox) = ctx.shared.cluster.as_ref().and_then(|n| n.take_inbox()) else {
        return;
    };
    while let Some(inbound) = inbox.next().await {
        match inbound {
            Inbound::Claim(request, replier) => decide(&ctx, request, replier),
            Inbound::Event(notice) => {
                let Some((client, event)) = notice.parts() else {
                    continue;
                };
                ctx.coord
                    .borrow_mut()
                    .handle_remote_client_event(client, event, Instant::now());
                ctx.drive();
            }
            Inbound::Moved(notice) => {
                let Some(device) = notice.device() else {
                    continue;
                };
                tracing::info!(tsn = %device.serial, domain = %device.domain, to = %notice.node, epoch = notice.epoch,
                    "device connected to another node: closing its connection here (4000)");
                ctx.coord
                    .borrow_mut()
                    .handle_device_moved(device, Instant::now());
                ctx.drive();
            }
        }
    }
}

/// A claim another node put to this one: asked of the coordinator for a stand-in.
fn decide(ctx: &Rc<ShardCtx>, request: ClaimRequest, replier: Replier) {
    let Some((op, client, device)) = request.parts() else {
        tracing::warn!("malformed claim from another node: refused");
        replier.send(&ClaimReply::unavailable());
        return;
    };
    let stand_in = ctx.new_conn_id();
    ctx.remote_claims.borrow_mut().insert(stand_in, replier);
    ctx.claim(
        op,
        client,
        device,
        Requester {
            conn: stand_in,
            request_id: None,
        },
    );
}

/// The coordinator's answer for `requester`, if it stands in for another node's
/// control channel: sent back there. `false` if `requester` is a connection here.
pub(crate) fn answer(ctx: &ShardCtx, requester: &Requester, outcome: &ClaimOutcome) -> bool {
    let Some(replier) = ctx.remote_claims.borrow_mut().remove(&requester.conn) else {
        return false;
    };
    let node_url = ctx
        .shared
        .cluster
        .as_ref()
        .and_then(|n| n.node_url())
        .map(str::to_owned);
    let remote = match outcome.clone() {
        ClaimOutcome::Claimed(granted) => RemoteOutcome::Claimed(granted, node_url),
        ClaimOutcome::Released => RemoteOutcome::Released,
        ClaimOutcome::Refused(e) => RemoteOutcome::Refused(e),
    };
    replier.send(&ClaimReply::of(&remote));
    true
}

/// §12: a control channel here claims or releases `device`: if another node owns it, the
/// claim is put to that node and its answer written on `conn`; `false` if this node
/// decides (it owns the tsn, or nobody does yet), as within one node.
pub(crate) async fn claim_elsewhere(
    ctx: &Rc<ShardCtx>,
    conn: ConnId,
    op: ClaimOp,
    client: &ClientKey,
    device: &DeviceKey,
    request_id: Option<&RequestId>,
) -> bool {
    let Some(node) = ctx.shared.cluster.as_ref() else {
        return false;
    };
    let unavailable = |why: String| {
        tracing::warn!(tsn = %device.serial, error = %why, "claim: the node that owns the device did not answer");
        let e = ClaimError::Unavailable {
            serial: device.serial.clone(),
        };
        event::error(request_id, e.code(), e.message(op))
    };
    let owner = match node.other_owner(device).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return false,
        Err(e) => {
            ctx.send_text(conn, unavailable(e.to_string()));
            return true;
        }
    };
    let request = ClaimRequest::new(op, client, device);
    let json = match node.ask_claim(&owner, &request).await {
        Ok(reply) => match reply.outcome(&device.serial) {
            RemoteOutcome::Claimed(granted, owner_url) => {
                // §12: "`session_url` names the owning node's `--node-url`" (else the
                // URL base this control channel was given).
                let base = owner_url.unwrap_or_else(|| ctx.url_base_of(conn));
                let url = event::session_url(&base, &granted.session_id);
                event::claimed(
                    request_id,
                    &device.serial,
                    &granted.session_id,
                    &url,
                    granted.online,
                    granted.pending_frames,
                )
            }
            RemoteOutcome::Released => event::released(request_id, &device.serial),
            RemoteOutcome::Refused(e) => event::error(request_id, e.code(), e.message(op)),
        },
        Err(e) => unavailable(format!("node {owner}: {e}")),
    };
    ctx.send_text(conn, json);
    true
}
