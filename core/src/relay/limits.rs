//! The bounds of the relay state (§6: queued "up to a byte bound and a grace period").

use std::time::Duration;

/// Bounds on what one device session may hold and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Payload bytes queued per direction per session (POS → offline device, device → POS
    /// without an open session). A message that does not fit is not queued. Default 1 MiB.
    pub offline_queue_bytes: usize,
    /// Messages queued per direction per session, so that empty messages cannot grow a
    /// queue without bound. Default 8192.
    pub offline_queue_frames: usize,
    /// How long one queued message waits, counted from when it was queued. Default 30 s.
    pub offline_grace: Duration,
    /// How long a claim survives with neither an open POS session nor an open control
    /// channel of its holder (§4). Default 60 s.
    pub claim_grace: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            offline_queue_bytes: 1024 * 1024,
            offline_queue_frames: 8192,
            offline_grace: Duration::from_secs(30),
            claim_grace: Duration::from_secs(60),
        }
    }
}
