//! What an owner knows about a device at run time (PROTOCOL.md §4 `devices`, §9 list,
//! §10 status).

use crate::ids::{ClientKey, DeviceKey};
use std::time::Instant;

/// A device's run-time state as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePresence {
    /// The device.
    pub device: DeviceKey,
    /// Whether it has a live connection.
    pub online: bool,
    /// The client that holds its claim, if any.
    pub claimed_by: Option<ClientKey>,
    /// When its connection last opened or closed; `None` if it has not connected since the
    /// relay started. §10's `last_seen` is "now" while `online`, this otherwise.
    pub last_seen: Option<Instant>,
}
