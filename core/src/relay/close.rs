//! The WebSocket close codes the relay state asks for (PROTOCOL.md §8).

/// RFC 6455 §7.4.1 1000: a normal end (a forwarded session's POS connection closed, §12).
pub const NORMAL: u16 = 1000;
/// §8 1001: the relay is shutting down; reconnect.
pub const GOING_AWAY: u16 = 1001;
/// §8 1008: policy: authentication or authorisation failed (disabled device, deleted client).
pub const POLICY: u16 = 1008;
/// §8 4000: replaced by a newer connection of the same device or POS (§3, §5).
pub const REPLACED: u16 = 4000;
/// §8 4001: claim released or lost (§4).
pub const CLAIM_ENDED: u16 = 4001;
/// §8 4002: undelivered frames and no control channel to report them to (§5a).
pub const UNDELIVERED: u16 = 4002;
/// §8 1012 (RFC 6455 §7.4.1's registry: service restart): §12, a node that lost its
/// lease, or a session whose device moved to another node; reconnect (claim again).
pub const SERVICE_RESTART: u16 = 1012;
/// §8 4404: unknown session.
pub const UNKNOWN_SESSION: u16 = 4404;
/// §8 1002: protocol error (also: a `posrelay.reliable.v1` envelope that breaks §11).
pub const PROTOCOL_ERROR: u16 = 1002;
/// §8 1011: internal error (a reliable session whose durable log cannot be written).
pub const INTERNAL_ERROR: u16 = 1011;
/// §8 4409: a reliable session cannot be resumed (§11).
pub const RESUME_FAILED: u16 = 4409;

/// §12: the reason a POS session of a device that moved to another node is closed with
/// ([`SERVICE_RESTART`]): a forwarded session's node opens it again on the device's new
/// node instead ("a POS session stays open while its device moves between nodes").
pub const MOVED_REASON: &str = "the device moved to another relay node: claim it again";
