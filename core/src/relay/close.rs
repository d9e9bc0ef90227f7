//! The WebSocket close codes the relay state asks for (PROTOCOL.md §8).

/// §8 1001: the relay is shutting down; reconnect.
pub const GOING_AWAY: u16 = 1001;
/// §8 1008: policy: authentication or authorisation failed (disabled device, deleted client).
pub const POLICY: u16 = 1008;
/// §8 4000: replaced by a newer connection of the same device or POS (§3, §5).
pub const REPLACED: u16 = 4000;
/// §8 4001: claim released or lost (§4).
pub const CLAIM_ENDED: u16 = 4001;
/// §8 4404: unknown session.
pub const UNKNOWN_SESSION: u16 = 4404;
