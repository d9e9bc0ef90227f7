//! Connections as the relay state sees them: opaque numbers chosen by the io layer.

use std::fmt;

/// One WebSocket connection (device, POS session or control channel), named by the io layer.
///
/// The relay state never looks inside: it only compares ids and hands them back in actions
/// and routes. The io layer must not reuse an id while the state may still know it (that is,
/// before it reported the connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}
