//! §2a the device mTLS listener (`--device-mtls-listen`): terminals without a client
//! secret (a Verifone SCA terminal, seed 000) present a TLS client certificate, and
//!
//! > a WebSocket upgrade on any path [...] registers and connects the device in one step
//! > [...] with the same `session_id` rules as §2 and the 4000 replacement. A certificate
//! > pinned to no device, or pinned to a disabled device, answers `403` before the upgrade
//! > and counts as a failed login for its address (§1).
//!
//! The TLS handshake is rustls' (`mtls::MtlsConfig`: a `WebPkiClientVerifier` with
//! `--device-client-ca`, the pin-only verifier without). Right after it the fingerprint
//! of the client's leaf certificate is known; `auth::identify_device` names the device it
//! is pinned to, the owner registers its session, and the connection is routed to the
//! owner as a §3 device connection that remembers its certificate (an unpin closes it,
//! 1008). The fingerprint is never logged.

use super::admission::{ConnSlot, UnauthSlot};
use super::handover::{Held, Routed};
use super::login::Refusals;
use super::reply::{self, answer_and_close};
use super::shard::ArrivalError;
use super::shard::ShardCtx;
use super::upgrade::Prelude;
use crate::auth::{identify_device, AuthError, LoginAttempts};
use crate::handshake::{error_response, json_error, HttpStatus, UpgradeRequest};
use crate::ids::DeviceKey;
use crate::io::http::{read_request, ReadRequestError};
use crate::io::transport::Transport;
use crate::relay::owner_shard;
use bytes::BytesMut;
use glommio::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Accepts device connections until the shard drains.
pub(crate) async fn accept_loop(ctx: Rc<ShardCtx>, listener: TcpListener) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            ctx.until_draining().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "device mTLS accept failed");
                glommio::timer::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let admitted = ctx.shared.admission.admit();
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            match admitted {
                Ok((conn, unauth)) => serve(ctx, stream, conn, unauth).await,
                // Before the TLS handshake nothing can be answered that the peer could read.
                Err(_) => drop(stream),
            }
        })
        .detach();
    }
}

/// Serves one connection of the mTLS listener up to its routing.
async fn serve(ctx: Rc<ShardCtx>, stream: TcpStream, conn: ConnSlot, unauth: UnauthSlot) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let (Some(tls), Some(mtls)) = (&ctx.shared.tls, &ctx.shared.mtls) else {
        return;
    };
    let config = match mtls.config.for_main(&tls.current()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "device mTLS: cannot build the TLS configuration");
            return;
        }
    };
    let mut transport = match Transport::tls(stream, config) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "device mTLS: tls setup failed");
            return;
        }
    };
    let mut rbuf = BytesMut::with_capacity(2048);
    let limits = reply::request_limits(&ctx);
    // The TLS handshake (and its client certificate check) runs as the head is read.
    let request = match read_request(&mut transport, &mut rbuf, &limits).await {
        Ok(r) => r,
        Err(ReadRequestError::Io(e)) => {
            // A refused certificate ends here: rustls has told the client why.
            tracing::info!(peer = %peer, error = %e, "device mTLS handshake failed");
            return;
        }
        Err(e) => return reply::refuse_unreadable(&ctx, transport, e).await,
    };
    let upgrade = match UpgradeRequest::from_head(&request.head) {
        Ok(u) => u,
        Err(e) => {
            ctx.shared.metrics.http_bad_request.inc();
            return answer_and_close(transport, &error_response(&e)).await;
        }
    };
    if let Some(answer) = reply::cluster_refusal(&ctx, "mTLS registration") {
        return answer_and_close(transport, &answer).await;
    }
    let fingerprint = match &transport {
        Transport::Tls(t) => t.session().peer_fingerprint(),
        Transport::Plain(_) => None,
    };
    let Some(fingerprint) = fingerprint else {
        return answer_and_close(transport, &forbidden()).await;
    };
    let attempt = ctx.shared.admission.attempt_from(peer, Instant::now());
    if let Err(throttled) = attempt.check(None) {
        let retry = throttled.retry_after_secs.to_string();
        let answer = json_error(
            HttpStatus::TOO_MANY_REQUESTS,
            &[("Retry-After", &retry), ("Connection", "close")],
            "too many failed logins from this address: retry later",
        );
        return answer_and_close(transport, &answer).await;
    }
    let device = match identify_device(&*ctx.shared.store, &fingerprint) {
        Ok(d) => d,
        Err(AuthError::Storage(e)) => {
            tracing::error!(error = %e, "device mTLS: cannot look the certificate up");
            return answer_and_close(transport, &reply::internal_error()).await;
        }
        Err(e) => {
            attempt.failed(None);
            ctx.shared.metrics.token_invalid_client.inc();
            // The reason, never the fingerprint.
            tracing::info!(peer = %peer, error = %e, "device certificate refused");
            return answer_and_close(transport, &forbidden()).await;
        }
    };
    let key = DeviceKey {
        domain: device.domain,
        serial: device.serial,
    };
    // §12: the device arrived at this node: the tsn is this node's now (with its claim).
    // §2a: registers and connects in one step: the owner makes sure the session exists.
    match ctx.arrive(key.clone()).await {
        Ok(()) => {}
        Err(ArrivalError::Cluster) => {
            return answer_and_close(transport, &reply::cluster_call_failed()).await;
        }
        Err(_) => {
            tracing::warn!(tsn = %key.serial, "device mTLS: the owning shard did not answer the registration");
            let answer = json_error(
                HttpStatus::SERVICE_UNAVAILABLE,
                &[("Retry-After", "1"), ("Connection", "close")],
                "the relay is busy: retry",
            );
            return answer_and_close(transport, &answer).await;
        }
    }
    unauth.authenticated();
    tracing::info!(tsn = %key.serial, domain = %key.domain, peer = %peer, "device identified by its client certificate");
    let sid = ctx.coord.borrow().devices().session_id(&key);
    let shard = owner_shard(&sid, ctx.shards).0;
    let prelude = Prelude::new(&ctx, &upgrade);
    let held = Held {
        _conn: conn,
        _client: None,
    };
    let routed = Routed::CertDevice {
        sid,
        device: key,
        cert: fingerprint,
    };
    super::accept::route_to(
        ctx,
        shard,
        transport,
        rbuf,
        prelude.answer,
        prelude.url_base,
        routed,
        held,
        Refusals::Http,
    )
    .await
}

/// `403`: the certificate is pinned to no device, or to a disabled one (§2a).
fn forbidden() -> Vec<u8> {
    json_error(
        HttpStatus::FORBIDDEN,
        &[("Connection", "close")],
        "this client certificate is not pinned to an enabled device: pin its SHA-256 fingerprint (posrelay admin pin-cert)",
    )
}
