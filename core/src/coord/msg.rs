//! The messages participants exchange. `Send`: they cross cores (and, later, nodes).

use crate::ids::{ClientKey, DeviceKey};
use crate::relay::{ClaimOp, ClientEventKind};

use super::claim::ClaimOutcome;
use super::pending::Ticket;
use super::presence::DevicePresence;

/// One message from one participant to another. The receiver learns the sender from the
/// transport (the io layer passes it to [`super::Coordinator::handle_msg`]), so answers need
/// no return address: a [`Ticket`] names the question on the asker's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordMsg {
    /// §2: a device registered with the sender; create its session (idempotent), then answer
    /// [`CoordMsg::Registered`], so that a claim right after the `registered` reply finds it.
    Register {
        /// The sender's question.
        ticket: Ticket,
        /// The device, owned by the receiver.
        device: DeviceKey,
        /// §12: the claim it had on the node it came from, to hold here too.
        claim: Option<ClientKey>,
    },
    /// The answer to [`CoordMsg::Register`]: the session exists now.
    Registered {
        /// The question answered.
        ticket: Ticket,
    },
    /// §4: a control channel on the sender claims or releases a device the receiver owns.
    Claim {
        /// The sender's question.
        ticket: Ticket,
        /// Claim or release.
        op: ClaimOp,
        /// Who asks (scope already checked by the sender).
        client: ClientKey,
        /// Which device.
        device: DeviceKey,
    },
    /// The owner's decision on a [`CoordMsg::Claim`].
    ClaimAnswer {
        /// The question answered.
        ticket: Ticket,
        /// The decision.
        outcome: ClaimOutcome,
    },
    /// Which of these devices (owned by the receiver) are online, and who claims them.
    PresenceQuery {
        /// The sender's question.
        ticket: Ticket,
        /// The devices to report on.
        devices: Vec<DeviceKey>,
    },
    /// The answer to a [`CoordMsg::PresenceQuery`]: one entry per device asked about.
    PresenceAnswer {
        /// The question answered.
        ticket: Ticket,
        /// The owner's view of each device.
        presence: Vec<DevicePresence>,
    },
    /// §4: an event for a client, sent by a device's owner to the client's home.
    ClientEvent {
        /// To whom.
        client: ClientKey,
        /// What.
        event: ClientEventKind,
    },
    /// §12: an event for a client from another node: for its open channels only.
    RemoteClientEvent {
        /// To whom.
        client: ClientKey,
        /// What.
        event: ClientEventKind,
    },
    /// §4 claim grace: the client's control-channel count on its home went 0 ↔ >0.
    ClientPresence {
        /// Which client.
        client: ClientKey,
        /// Whether it now has a control channel open.
        online: bool,
    },
    /// §9: the operator disabled a device.
    DeviceDisabled {
        /// Which.
        device: DeviceKey,
    },
    /// §12: the device connected to another node of the cluster, which owns it now.
    DeviceMoved {
        /// Which.
        device: DeviceKey,
    },
    /// §9: the operator deleted a client; its tokens stop working.
    ClientDeleted {
        /// Which.
        client: ClientKey,
    },
    /// §6 shutdown: the sender has closed its POS sessions and devices, and every report it
    /// made was sent before this message (per-pair order).
    DataClosed,
}

/// Messages cross cores (DESIGN.md): checked at compile time.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<CoordMsg>();
};
