//! §5a `GET /cloud-connector/v1/devices/{tsn}/session`: claim and session in one upgrade,
//! for clients without a control channel (seed 003's):
//!
//! > [...] claims the device for the client (the same exclusive claim as §4; idempotent
//! > for its holder) and opens its session in one step. [...] Before the upgrade: `404` no
//! > such device in the client's scope (or another tenant's), `409` claimed by another
//! > client, `503` with `Retry-After` when the device has no session yet (§4 `offline`).
//!
//! The connection is authenticated where it arrived (Bearer, Basic or a login message) and
//! routed to the device's owning shard, where the claim is decided by the relay state
//! there (as a control channel's claim is, on the owner) and the session opens as §5's
//! (`session::serve`). The 4002 close of §5a is the relay state's
//! (`Action::CloseUndelivered`).

use super::login::refuse;
use super::reply;
use super::session;
use super::shard::ShardCtx;
use super::upgrade::{Accepted, SessionMode};
use crate::auth::{resolve_device, AccessClaims, ScopeError, TsnInput};
use crate::cluster::remote::{ClaimRequest, RemoteOutcome};
use crate::control::LoginDenied;
use crate::handshake::{json_error, HttpStatus};
use crate::ids::{ClientKey, DeviceKey};
use crate::relay::{owner_shard, ClaimError, ClaimGranted, ClaimOp};
use std::rc::Rc;
use std::time::Instant;

/// `Retry-After` of a `503` for a device that has no session yet: it registers on its own
/// schedule (seconds).
const OFFLINE_RETRY_AFTER: &str = "5";

/// The shard that owns the device `tsn` names in the client's domain (where its claim and
/// session live).
pub(crate) fn owner(ctx: &ShardCtx, claims: &AccessClaims, tsn: &TsnInput) -> usize {
    let device = DeviceKey {
        domain: claims.domain.clone(),
        serial: tsn.serial().clone(),
    };
    let sid = ctx.coord.borrow().devices().session_id(&device);
    owner_shard(&sid, ctx.shards).0
}

/// `404` for a device outside the client's scope (or a tsn that is not one).
pub(crate) fn not_found() -> Vec<u8> {
    json_error(HttpStatus::NOT_FOUND, &[], NOT_FOUND)
}

const NOT_FOUND: &str =
    "no such device in your scope: check the tsn (and that it is provisioned in your store or domain)";
const OFFLINE: &str = "the device has no session yet (it has not registered since the relay started, or it is disabled): retry later";
const BUSY: &str = "the device is claimed by another client";

/// Serves a §5a upgrade on the device's owning shard.
pub(crate) async fn serve(
    ctx: Rc<ShardCtx>,
    accepted: Box<Accepted<(TsnInput, AccessClaims, SessionMode)>>,
) {
    let Accepted {
        transport,
        rbuf,
        answer,
        held,
        refusals,
        role: (tsn, claims, mode),
    } = *accepted;
    let client = claims.client();
    let device = match resolve_device(&*ctx.shared.store, &claims, &tsn) {
        Ok(d) => d,
        Err(ScopeError::Storage(e)) => {
            tracing::error!(error = %e, "one-step session: cannot look the device up");
            let http = reply::internal_error();
            return refuse(
                transport,
                refusals,
                &http,
                LoginDenied::Offline,
                "internal error: retry",
            )
            .await;
        }
        Err(_) => {
            return refuse(
                transport,
                refusals,
                &not_found(),
                LoginDenied::NotFound,
                NOT_FOUND,
            )
            .await
        }
    };
    let key = DeviceKey {
        domain: device.domain,
        serial: device.serial,
    };
    // §12: another node serves the device: it decides the claim, and the session is
    // forwarded to it (`session::serve` finds no session here).
    let elsewhere = if device.enabled {
        claim_elsewhere(&ctx, &client, &key).await
    } else {
        None
    };
    let claimed = if let Some(claimed) = elsewhere {
        claimed
    } else if device.enabled {
        ctx.coord
            .borrow_mut()
            .devices_mut()
            .handle_claim(&client, &key, Instant::now())
    } else {
        // §4 `offline`: a disabled device "has no session yet".
        Err(ClaimError::Offline {
            serial: key.serial.clone(),
        })
    };
    ctx.drive();
    let granted = match claimed {
        Ok(granted) => granted,
        Err(ClaimError::DeviceBusy { .. }) => {
            let http = json_error(HttpStatus::CONFLICT, &[], BUSY);
            return refuse(transport, refusals, &http, LoginDenied::DeviceBusy, BUSY).await;
        }
        Err(ClaimError::Unavailable { .. }) => {
            let http = reply::cluster_call_failed();
            let message = reply::CLUSTER_CALL_FAILED;
            return refuse(transport, refusals, &http, LoginDenied::Offline, message).await;
        }
        Err(_) => {
            let http = json_error(
                HttpStatus::SERVICE_UNAVAILABLE,
                &[("Retry-After", OFFLINE_RETRY_AFTER)],
                OFFLINE,
            );
            return refuse(transport, refusals, &http, LoginDenied::Offline, OFFLINE).await;
        }
    };
    tracing::info!(tsn = %key.serial, domain = %key.domain, client = %client.client_id, online = granted.online, "one-step claim");
    let accepted = Box::new(Accepted {
        transport,
        rbuf,
        answer,
        held,
        refusals,
        role: (granted.session_id, claims, mode),
    });
    session::serve(ctx, accepted).await
}

/// §12: the claim, decided by the node that owns the device if that is another one;
/// `None` if this node decides (it owns the tsn, or nobody does yet).
async fn claim_elsewhere(
    ctx: &Rc<ShardCtx>,
    client: &ClientKey,
    device: &DeviceKey,
) -> Option<Result<ClaimGranted, ClaimError>> {
    let node = ctx.shared.cluster.as_ref()?;
    let unavailable = || ClaimError::Unavailable {
        serial: device.serial.clone(),
    };
    let owner = match node.other_owner(device).await {
        Ok(owner) => owner?,
        Err(e) => {
            tracing::warn!(tsn = %device.serial, error = %e, "one-step session: cannot read the device's node");
            return Some(Err(unavailable()));
        }
    };
    let request = ClaimRequest::new(ClaimOp::Claim, client, device);
    Some(match node.ask_claim(&owner, &request).await {
        Ok(reply) => match reply.outcome(&device.serial) {
            RemoteOutcome::Claimed(granted, _) => Ok(granted),
            RemoteOutcome::Refused(e) => Err(e),
            RemoteOutcome::Released => Err(unavailable()),
        },
        Err(e) => {
            tracing::warn!(tsn = %device.serial, node = %owner, error = %e, "one-step session: the device's node did not answer");
            Err(unavailable())
        }
    })
}
