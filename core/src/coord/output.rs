//! What a [`super::Coordinator`] asks its io layer to do.

use crate::ids::Serial;
use crate::relay::{ClaimOp, ClientEventKind, ConnId};

use super::claim::{ClaimOutcome, Requester};
use super::drain::ConnClass;
use super::msg::CoordMsg;
use super::participant::Participant;
use super::pending::Ticket;
use super::presence::DevicePresence;

/// The answer to a question this participant's connections asked (registration, presence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The device's session exists on its owner: the `registered` reply may go out.
    Registered,
    /// One entry per device asked about.
    Presence(Vec<DevicePresence>),
    /// A participant that had to answer did not, in time (it stopped, or is overloaded).
    Unavailable,
}

/// One output, drained with [`super::Coordinator::poll_output`]. Every variant is work the
/// io layer must do; dropping one loses a message, an answer or a close.
#[must_use = "an output is work the io layer must carry out"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<M> {
    /// Carry `msg` to participant `to`, after every earlier message to it.
    Transmit {
        /// The receiver.
        to: Participant,
        /// The message.
        msg: CoordMsg,
    },
    /// Write this data message on that connection here (a queue being flushed).
    SendToConn {
        /// The connection.
        conn: ConnId,
        /// The message, verbatim.
        message: M,
    },
    /// Send this §4 event on that control channel here.
    SendEvent {
        /// The control channel.
        conn: ConnId,
        /// The event.
        event: ClientEventKind,
    },
    /// §12: the claim of a device this participant owns started (`Some`: its holder) or
    /// ended; a cluster node records it where the device's next node finds it. Only on a
    /// cluster node.
    ClaimChanged {
        /// The device.
        device: crate::ids::DeviceKey,
        /// Who holds its claim now.
        holder: Option<crate::ids::ClientKey>,
    },
    /// §12: tell the other nodes that `client` has a control channel homed here now
    /// (`true`), or none any more (§4 claim grace counts every node's channels). Only on a
    /// cluster node.
    PresenceToOtherNodes {
        /// The client.
        client: crate::ids::ClientKey,
        /// Whether it has a channel here.
        online: bool,
    },
    /// §12: hand this event for `client` to the other nodes of the cluster (its control
    /// channels there); only on a cluster node, beside its delivery here.
    ToOtherNodes {
        /// To whom.
        client: crate::ids::ClientKey,
        /// What.
        event: ClientEventKind,
    },
    /// The decision on a claim or release a control channel here asked for.
    ClaimAnswered {
        /// Who asked.
        requester: Requester,
        /// The device (bare serial).
        serial: Serial,
        /// What was asked.
        op: ClaimOp,
        /// The decision.
        outcome: ClaimOutcome,
    },
    /// The answer to the question `ticket`.
    Answered {
        /// The question.
        ticket: Ticket,
        /// Its answer.
        answer: Answer,
    },
    /// Close that connection here with this code (§8).
    CloseConn {
        /// The connection.
        conn: ConnId,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: &'static str,
    },
    /// §5a: close that POS session here with 4002 and `undelivered frames=N bytes=B`.
    CloseUndelivered {
        /// The POS session.
        conn: ConnId,
        /// What could not be delivered.
        count: crate::relay::Count,
    },
    /// §6 shutdown: close every connection of this class here with 1001, then report
    /// [`super::Coordinator::handle_class_closed`] once none is left (or time is up).
    CloseClass {
        /// Which connections.
        class: ConnClass,
    },
}
