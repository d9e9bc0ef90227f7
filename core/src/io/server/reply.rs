//! The relay listener's HTTP answers before an upgrade (PROTOCOL.md §8): refusals by an
//! admission limit, unreadable requests, refused tokens, unknown sessions, internal
//! errors; and HTTP/1.1 connection reuse. Statuses come from the layers' own mappings
//! (`status()`), never from literals here.

use super::admission::Refusal;
use super::shard::ShardCtx;
use crate::auth::AuthError;
use crate::handshake::{error_response, json_error, HttpStatus, RequestHead};
use crate::io::http::{ReadRequestError, RequestLimits};
use crate::io::transport::Transport;
use crate::relay::SessionError;

/// The answer to a connection or login refused by an admission limit: 503 for the
/// relay's own limits, 429 for a client's; both say when to retry.
pub(crate) fn refusal(why: Refusal, message: &str) -> Vec<u8> {
    let status = match why {
        Refusal::MaxConnections | Refusal::MaxUnauthenticated => HttpStatus::SERVICE_UNAVAILABLE,
        _ => HttpStatus::TOO_MANY_REQUESTS,
    };
    let retry = why.retry_after_secs().to_string();
    json_error(
        status,
        &[("Retry-After", &retry), ("Connection", "close")],
        message,
    )
}

/// §12: the 503 for what needs the cluster (a registration, a device connection, a
/// one-step session's claim) on a node cut off from it, or `None` if it may go ahead (and
/// on a single node). The refusal is logged (once per refusal, it names no peer data).
pub(crate) fn cluster_refusal(ctx: &ShardCtx, what: &'static str) -> Option<Vec<u8>> {
    let node = ctx.shared.cluster.as_ref()?;
    let why = node.availability(std::time::Instant::now()).err()?;
    node.count_refusal();
    tracing::warn!(
        what,
        reason = why.explain(),
        "refused with 503: the cluster is not reachable from this node"
    );
    let retry = super::cluster::Unavailable::RETRY_AFTER_SECS.to_string();
    Some(json_error(
        HttpStatus::SERVICE_UNAVAILABLE,
        &[("Retry-After", &retry), ("Connection", "close")],
        why.explain(),
    ))
}

/// What [`cluster_call_failed`] says (also in a login's in-band refusal, §7b).
pub(crate) const CLUSTER_CALL_FAILED: &str = "the relay's cluster did not answer in time: retry";

/// §12: the 503 for something the cluster had to record and did not (no quorum, a
/// timeout): retry.
pub(crate) fn cluster_call_failed() -> Vec<u8> {
    let retry = super::cluster::Unavailable::RETRY_AFTER_SECS.to_string();
    json_error(
        HttpStatus::SERVICE_UNAVAILABLE,
        &[("Retry-After", &retry), ("Connection", "close")],
        CLUSTER_CALL_FAILED,
    )
}

/// Writes a whole answer and closes.
pub(crate) async fn answer_and_close(mut transport: Transport, bytes: &[u8]) {
    let _ = transport.write_all_vectored(&[bytes]).await;
    transport.shutdown().await;
}

/// What a request head and body may be on the relay listener.
pub(crate) fn request_limits(ctx: &ShardCtx) -> RequestLimits {
    let cfg = &ctx.shared.config;
    RequestLimits {
        head: cfg.head_limits,
        max_body: 64 * 1024,
        timeout: cfg.handshake_timeout,
    }
}

/// Answers a request that could not be read, counting why.
pub(crate) async fn refuse_unreadable(ctx: &ShardCtx, transport: Transport, err: ReadRequestError) {
    let m = &ctx.shared.metrics;
    match err {
        ReadRequestError::Invalid(e) => {
            if e.status() == HttpStatus::HEADERS_TOO_LARGE {
                m.http_headers_too_large.inc();
            } else {
                m.http_bad_request.inc();
            }
            answer_and_close(transport, &error_response(&e)).await
        }
        ReadRequestError::BodyTooLarge(_) => {
            m.http_bad_request.inc();
            let answer = json_error(HttpStatus::PAYLOAD_TOO_LARGE, &[], "request body too large");
            answer_and_close(transport, &answer).await
        }
        ReadRequestError::Timeout => {
            m.http_handshake_timeout.inc();
            let mut transport = transport;
            transport.shutdown().await;
        }
        ReadRequestError::Closed | ReadRequestError::Io(_) => {}
    }
}

/// The HTTP answer to a refused token (§8: 401 with `WWW-Authenticate: Bearer`, 403; a
/// store failure 500, logged as an error).
pub(crate) fn auth_refusal(ctx: &ShardCtx, err: &AuthError) -> Vec<u8> {
    let status = HttpStatus(err.status());
    if status == HttpStatus::INTERNAL {
        tracing::error!(error = %err, "cannot check a token: the store failed");
        return internal_error();
    }
    ctx.shared.metrics.token_invalid_client.inc();
    // The reason goes to the log; the peer learns only what to do about it.
    tracing::info!(error = %err, status = status.0, "token refused");
    let message = match status {
        HttpStatus::FORBIDDEN => "this token is not valid for this session",
        HttpStatus::UNAUTHORIZED => "missing, invalid or expired token: get a new one",
        _ => "bad request",
    };
    let challenge = "Bearer realm=\"posrelay\", error=\"invalid_token\"";
    let headers: &[(&str, &str)] = if status == HttpStatus::UNAUTHORIZED {
        &[("WWW-Authenticate", challenge)]
    } else {
        &[]
    };
    json_error(status, headers, message)
}

/// What a refused unknown session is told (§3, §5).
pub(crate) const UNKNOWN_SESSION: &str = "unknown session: register the device (or claim it) again";

/// §3, §5: the session id names no live session (404).
pub(crate) fn unknown_session(err: &SessionError) -> Vec<u8> {
    json_error(HttpStatus(err.status()), &[], UNKNOWN_SESSION)
}

/// §8 "404 unknown path or session": a session id that cannot be one of ours at all.
pub(crate) fn not_a_session() -> Vec<u8> {
    json_error(
        HttpStatus::NOT_FOUND,
        &[],
        "unknown session: register the device (or claim it) again",
    )
}

/// 500: the relay failed (the store, most likely); the cause is in the log.
pub(crate) fn internal_error() -> Vec<u8> {
    json_error(
        HttpStatus::INTERNAL,
        &[],
        "internal error: see the relay's log",
    )
}

/// Whether the client wants the connection kept open after the answer (RFC 9112 §9.3:
/// the default for HTTP/1.1, not for HTTP/1.0).
pub(crate) fn wants_keep_alive(head: &RequestHead) -> bool {
    let says = |token: &str| {
        head.headers
            .get_all("connection")
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if head.version_minor == 0 {
        says("keep-alive")
    } else {
        !says("close")
    }
}

/// The `Connection` header value that tells the client what we will do (RFC 9112 §9.6).
pub(crate) fn connection_header(keep_alive: bool) -> &'static str {
    if keep_alive {
        "keep-alive"
    } else {
        "close"
    }
}
