//! Coordination: the conversation among the participants of a relay — today the shards of
//! one process, later (PROTOCOL.md §12) the nodes of a cluster — about who owns a tsn, who
//! holds a claim, and who must hear an event. Sans-IO: typed messages in, typed messages
//! out, `now` passed in; no socket, clock or executor.
//!
//! Each participant runs one [`Coordinator`]. It owns that participant's share of the relay
//! state ([`crate::relay::DeviceShard`]: the devices it owns; [`crate::relay::ClientHub`]:
//! the control channels of the clients it is home to) and turns everything that concerns
//! another participant into a [`CoordMsg`] for the io layer to carry:
//!
//! | conversation | asked by | answered by | PROTOCOL.md |
//! |---|---|---|---|
//! | [`CoordMsg::Register`] → [`CoordMsg::Registered`] | the participant that took a registration | the device's owner | §2: a claim right after `registered` must not see `offline` |
//! | [`CoordMsg::Claim`] → [`CoordMsg::ClaimAnswer`] | a control channel's home | the device's owner | §4 claims are exclusive |
//! | [`CoordMsg::PresenceQuery`] → [`CoordMsg::PresenceAnswer`] | whoever lists devices | each owner | §4 `devices`, §9 device list |
//! | [`CoordMsg::ClientEvent`] | a device's owner | the client's home | §4 `device_status`, `undelivered` |
//! | [`CoordMsg::ClientPresence`] | a client's home | every participant | §4 claim grace |
//! | [`CoordMsg::DeviceDisabled`], [`CoordMsg::ClientDeleted`] | the admin API's participant | every participant | §9 |
//! | [`CoordMsg::DeviceMoved`] | the shard that heard another node took the device over | every participant | §12 |
//! | [`CoordMsg::RemoteClientEvent`] | the shard that heard another node's event | the client's home | §12 events reach every node's channels |
//! | [`CoordMsg::DataClosed`] | every participant, draining | every participant | §6 shutdown order |
//!
//! What the io layer must guarantee: messages from one participant to another arrive in
//! the order they were sent (glommio's `channel_mesh` does, per pair); nothing else. A
//! participant that stops answering makes the questions put to it time out
//! ([`CoordConfig::answer_timeout`]), answered as unavailable, never left waiting.
//!
//! Outputs are drained with [`Coordinator::poll_output`]: messages to transmit, writes and
//! closes on this participant's connections, and the answers to the questions its own
//! connections asked (identified by a [`Ticket`], or by the [`Requester`] of a claim).
#![forbid(unsafe_code)]

mod claim;
mod coordinator;
mod drain;
mod msg;
mod output;
mod participant;
mod pending;
mod presence;
mod remote_presence;

pub use claim::{ClaimOutcome, Requester};
pub use coordinator::{CoordConfig, Coordinator, Nodes, PRESENCE_REFRESH, PRESENCE_TTL};
pub use drain::{ConnClass, DrainPhase};
pub use msg::CoordMsg;
pub use output::{Answer, Output};
pub use participant::{Participant, Placement};
pub use pending::Ticket;
pub use presence::DevicePresence;
pub use remote_presence::RemotePresence;
