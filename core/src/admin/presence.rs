//! What the relay knows at run time about a device, for the admin device list.

use crate::ids::{ClientId, DomainName, Serial};

/// A device's run-time state (PROTOCOL.md §9 `online`, `claimed_by`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    /// Whether the device has an open device connection.
    pub online: bool,
    /// The POS client holding its claim, if any.
    pub claimed_by: Option<ClientId>,
}

/// The relay's view of devices, asked by the admin API when it lists them.
pub trait DevicePresence {
    /// The state of one device.
    fn presence(&self, domain: &DomainName, serial: &Serial) -> Presence;
}

/// No relay: every device offline and unclaimed (tests, or an admin-only process).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPresence;

impl DevicePresence for NoPresence {
    fn presence(&self, _domain: &DomainName, _serial: &Serial) -> Presence {
        Presence::default()
    }
}
