//! What the device-shard state asks the io layer to do.

use crate::ids::{ClientKey, DeviceKey, Serial};

use super::conn::ConnId;

/// An event for a client's control channels, produced on a device's owning shard and
/// carried by the io layer to the client's home shard ([`super::ClientHub`]).
///
/// `Send`: it crosses cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEventKind {
    /// §4 `device_status`: a claimed device went on- or offline.
    DeviceStatus {
        /// The device.
        serial: Serial,
        /// Its new state.
        online: bool,
    },
    /// §4 `undelivered`: frames the client sent that will never reach the device (§6).
    Undelivered {
        /// The device.
        serial: Serial,
        /// How many messages.
        frames: u64,
        /// Their payload bytes.
        bytes: u64,
    },
}

impl ClientEventKind {
    /// The event as a §4 control-channel text message.
    pub fn to_json(&self) -> Vec<u8> {
        match self {
            Self::DeviceStatus { serial, online } => {
                crate::control::event::device_status(serial, *online)
            }
            Self::Undelivered {
                serial,
                frames,
                bytes,
            } => crate::control::event::undelivered(serial, *frames, *bytes),
        }
    }
}

/// Cross-core messages must be `Send` (DESIGN.md); checked at compile time.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<ClientKey>();
    assert_send::<ClientEventKind>();
};

/// An output of [`super::DeviceShard`], drained with `poll_action`.
#[must_use = "an action is work the caller must carry out"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<M> {
    /// Write this data message on that connection (queued messages being flushed).
    SendToConn {
        /// Where.
        conn: ConnId,
        /// What, verbatim.
        message: M,
    },
    /// Close that connection with this code (§8).
    CloseConn {
        /// Which.
        conn: ConnId,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: &'static str,
    },
    /// §5a: close that POS session with 4002 and the reason `undelivered frames=N bytes=B`:
    /// frames its client sent are undeliverable and it has no control channel open to be
    /// told. The report is still carried as an event too (§4: kept for its next channel).
    CloseUndelivered {
        /// The POS session.
        conn: ConnId,
        /// What could not be delivered.
        count: super::queue::Count,
    },
    /// Carry this event to the client's home shard.
    ClientEvent {
        /// To whom.
        client: ClientKey,
        /// What.
        event: ClientEventKind,
    },
    /// §12 (only when announced, see `DeviceShard::announce_claims`): the device's claim
    /// started (`Some`: its holder) or ended (`None`).
    ClaimChanged {
        /// The device.
        device: DeviceKey,
        /// Who holds its claim now.
        holder: Option<ClientKey>,
    },
}

/// Where a data message goes, decided on the hot path without queueing an [`Action`].
#[must_use = "a forwarded message must be written, or it is lost"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<M> {
    /// Write it on that connection now (the message is handed back).
    Forward {
        /// The receiving connection.
        conn: ConnId,
        /// The message, untouched.
        message: M,
    },
    /// Kept in the session's offline queue; it will be flushed or reported.
    Queued,
    /// A POS message that will not be delivered; it has been reported to its client as
    /// `undelivered` (an `Action::ClientEvent` is pending).
    Rejected,
    /// A message dropped without a report, because nobody can be told (see [`DropReason`]).
    Dropped(DropReason),
}

/// Why a message was dropped without an `undelivered` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A device message while nobody holds a claim on the device: there is no POS to give
    /// it to, and the protocol has no way to tell the device.
    NoClaim,
    /// A device message that does not fit in the device → POS queue.
    QueueFull,
    /// A device message from a connection that is not the device's current one (replaced
    /// by a newer connection and closed 4000, or already reported closed).
    StaleConnection,
    /// A device message during shutdown, with no POS session open to forward it to.
    ShuttingDown,
    /// The session is unknown (never registered since start, or disabled).
    UnknownSession,
    /// The connection was never opened as a POS session (an io-layer bug); no client is
    /// known to report to.
    UnknownConnection,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_events_serialize_as_section_4_messages() {
        let serial = Serial::new("42").expect("serial");
        assert_eq!(
            ClientEventKind::DeviceStatus {
                serial: serial.clone(),
                online: true
            }
            .to_json(),
            br#"{"type":"device_status","tsn":"42","online":true}"#.to_vec()
        );
        assert_eq!(
            ClientEventKind::Undelivered {
                serial,
                frames: 2,
                bytes: 7
            }
            .to_json(),
            br#"{"type":"undelivered","tsn":"42","frames":2,"bytes":7}"#.to_vec()
        );
    }
}
