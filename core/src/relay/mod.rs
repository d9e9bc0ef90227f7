//! The relay's product logic as pure state (PROTOCOL.md §3-§6): device sessions, claims,
//! offline queues, routing decisions and client events. No sockets, no clock, no executor.
//!
//! Two state machines per shard:
//! - [`DeviceShard`] holds the devices this shard owns ([`owner_shard`]): their
//!   connections, claims, POS sessions and offline queues. Relayed frames are decided here
//!   ([`Route`]) without crossing a core.
//! - [`ClientHub`] holds the control channels of the clients this shard is home to
//!   ([`client_shard`]); the io layer carries [`Action::ClientEvent`]s to it.
//!
//! Session ids are derived, not stored ([`SessionKeyring`]), so every shard computes a
//! device's session id and owning shard without shared state.
#![forbid(unsafe_code)]

mod action;
mod clients;
pub mod close;
mod conn;
mod error;
mod keyring;
mod limits;
mod message;
mod queue;
mod sessions;
mod shard;
mod tally;
mod timers;

pub use action::{Action, ClientEventKind, DropReason, Route};
pub use clients::{ClientHub, HubAction};
pub use conn::ConnId;
pub use error::{ClaimError, ClaimOp, SessionError};
pub use keyring::SessionKeyring;
pub use limits::RelayLimits;
pub use message::{MessageKind, QueuedMessage, RelayedMessage};
pub use queue::Count;
pub use sessions::{ClaimGranted, DeviceShard, ShardStats};
pub use shard::{client_shard, owner_shard, ShardIndex};
