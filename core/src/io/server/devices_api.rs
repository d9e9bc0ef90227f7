//! §10 device status over HTTP, on the relay listener:
//!
//! > `GET /cloud-connector/v1/devices` and `GET /cloud-connector/v1/devices/{tsn}` on the
//! > relay listener, with a POS access token (Bearer) or Basic credentials (§7c), answer
//! > the devices in the client's scope [...] `/devices/{tsn}` answers one object, or `404`
//! > for a device out of scope (another tenant's included).
//!
//! The client is known from `pos_login::authenticate`; its devices from the store; whether
//! each is online, since when it was last seen and who claims it, from the devices'
//! owning shards (`ShardCtx::presence_of`). The JSON is `control::device_status`'s.

use super::path::Path;
use super::pos_login::{self, PosCredentials};
use super::reply;
use super::shard::ShardCtx;
use crate::auth::{devices_in_scope, resolve_device, AccessClaims, ScopeError, TsnInput};
use crate::control::device_status::{device_status_list, device_status_one};
use crate::control::{ClaimView, DeviceStatus};
use crate::coord::{Answer, DevicePresence};
use crate::handshake::{http_response, json_error, HttpStatus, Method, RequestHead};
use crate::ids::DeviceKey;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Instant, SystemTime};

/// Answers one §10 request, and whether the connection stays open.
pub(crate) async fn serve(
    ctx: &Rc<ShardCtx>,
    head: &RequestHead,
    keep_alive: bool,
    peer: IpAddr,
) -> (Vec<u8>, bool) {
    let connection = ("Connection", reply::connection_header(keep_alive));
    if head.method != Method::Get {
        let answer = json_error(
            HttpStatus::METHOD_NOT_ALLOWED,
            &[("Allow", "GET"), connection],
            "use GET",
        );
        return (answer, keep_alive);
    }
    let authorization = head.headers.get("authorization");
    let bearer = authorization.and_then(|h| {
        let (scheme, token) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let credentials = PosCredentials::of(authorization, bearer);
    let claims = match pos_login::authenticate(ctx, credentials, peer).await {
        Ok(c) => c,
        // A refusal ends the connection (its answer says `Connection: close` or nothing).
        Err(answer) => return (answer, false),
    };
    let answer = match Path::parse(&head.path) {
        Path::Device(tsn) => one(ctx, &claims, &tsn).await,
        _ => list(ctx, &claims).await,
    };
    let answer = match answer {
        Ok(body) => http_response(
            HttpStatus::OK,
            &[("Cache-Control", "no-store"), connection],
            Some("application/json"),
            &body,
        ),
        Err(Refusal::NotFound) => json_error(
            HttpStatus::NOT_FOUND,
            &[connection],
            "no such device in your scope: check the tsn",
        ),
        Err(Refusal::Internal) => {
            return (reply::internal_error(), false);
        }
    };
    (answer, keep_alive)
}

/// Why a §10 request gets no status.
enum Refusal {
    /// `404`: no such device in the client's scope.
    NotFound,
    /// `500`: the store or the shards failed; logged.
    Internal,
}

/// `GET /cloud-connector/v1/devices/{tsn}`.
async fn one(ctx: &Rc<ShardCtx>, claims: &AccessClaims, tsn: &str) -> Result<Vec<u8>, Refusal> {
    let tsn = TsnInput::parse(tsn).map_err(|_| Refusal::NotFound)?;
    let device = match resolve_device(&*ctx.shared.store, claims, &tsn) {
        Ok(d) => d,
        Err(ScopeError::Storage(e)) => {
            tracing::error!(error = %e, "device status: cannot look the device up");
            return Err(Refusal::Internal);
        }
        Err(_) => return Err(Refusal::NotFound),
    };
    let key = DeviceKey {
        domain: device.domain,
        serial: device.serial,
    };
    let statuses = statuses(ctx, claims, vec![key]).await?;
    statuses
        .first()
        .map(device_status_one)
        .ok_or(Refusal::Internal)
}

/// `GET /cloud-connector/v1/devices`.
async fn list(ctx: &Rc<ShardCtx>, claims: &AccessClaims) -> Result<Vec<u8>, Refusal> {
    let devices = devices_in_scope(&*ctx.shared.store, claims).map_err(|e| {
        tracing::error!(error = %e, "device status: cannot list the client's devices");
        Refusal::Internal
    })?;
    let keys = devices
        .into_iter()
        .map(|d| DeviceKey {
            domain: d.domain,
            serial: d.serial,
        })
        .collect();
    let mut statuses = statuses(ctx, claims, keys).await?;
    statuses.sort_by(|a, b| a.tsn.cmp(&b.tsn));
    Ok(device_status_list(&statuses))
}

/// Each device's status, asked of its owner.
async fn statuses(
    ctx: &Rc<ShardCtx>,
    claims: &AccessClaims,
    keys: Vec<DeviceKey>,
) -> Result<Vec<DeviceStatus>, Refusal> {
    let presence = match ctx.presence_of(keys).await {
        Answer::Presence(p) => p,
        _ => {
            tracing::error!("device status: the shards did not answer the presence query");
            return Err(Refusal::Internal);
        }
    };
    let client = claims.client();
    let (now, wall_now) = (Instant::now(), SystemTime::now());
    Ok(presence
        .into_iter()
        .map(|p: DevicePresence| DeviceStatus {
            claim: ClaimView::of(p.claimed_by.as_ref(), &client),
            // §10: "now, when online; `null` if it has not connected since the relay started".
            last_seen: if p.online {
                Some(wall_now)
            } else {
                p.last_seen
                    .map(|t| wall_now - now.saturating_duration_since(t))
            },
            online: p.online,
            tsn: p.device.serial,
        })
        .collect())
}
