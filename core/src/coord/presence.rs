//! What an owner knows about a device at run time (PROTOCOL.md §4 `devices`, §9 list).

use crate::ids::{ClientKey, DeviceKey};

/// A device's run-time state as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePresence {
    /// The device.
    pub device: DeviceKey,
    /// Whether it has a live connection.
    pub online: bool,
    /// The client that holds its claim, if any.
    pub claimed_by: Option<ClientKey>,
}
