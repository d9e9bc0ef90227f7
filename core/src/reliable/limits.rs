//! The bounds of one reliable claim.

use std::time::Duration;

use crate::relay::RelayLimits;

/// What one reliable claim may hold (PROTOCOL.md §6, §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReliableLimits {
    /// `--reliable-window`: payload bytes of device messages held until the POS acks them.
    /// At or past it the relay stops reading from the device. A message is taken while the
    /// window is not yet full, so one message larger than the window still passes (alone).
    /// The same bound applies to POS messages on their way to the device and not yet safe:
    /// past it the relay stops reading from the POS. Default 1 MiB.
    pub window_bytes: usize,
    /// Payload bytes of POS messages queued, durably, while the device is offline (§6,
    /// `--offline-queue-bytes`). A message that does not fit is reported. Default 1 MiB.
    pub queue_bytes: usize,
    /// Messages in that queue, so that empty messages cannot grow it without bound.
    /// Default 8192.
    pub queue_frames: usize,
    /// How long a queued POS message waits for the device, counted from when it was queued
    /// (after a restart: from the restart). Default 30 s (`--offline-grace`).
    pub offline_grace: Duration,
    /// `undelivered` reports kept until the POS has surely read them; past it the oldest is
    /// forgotten. Default 1024 (16 bytes each).
    pub kept_reports: usize,
}

impl ReliableLimits {
    /// The default window: 1 MiB.
    pub const DEFAULT_WINDOW: usize = 1024 * 1024;

    /// The relay's queue bounds with a reliable window of `window_bytes`.
    pub fn new(relay: &RelayLimits, window_bytes: usize) -> ReliableLimits {
        ReliableLimits {
            window_bytes,
            queue_bytes: relay.offline_queue_bytes,
            queue_frames: relay.offline_queue_frames,
            offline_grace: relay.offline_grace,
            kept_reports: 1024,
        }
    }
}

impl Default for ReliableLimits {
    fn default() -> ReliableLimits {
        ReliableLimits::new(&RelayLimits::default(), ReliableLimits::DEFAULT_WINDOW)
    }
}
