//! Reliable sessions (PROTOCOL.md §11, `posrelay.reliable.v1`) as pure state: the envelopes,
//! the per-claim sequence/ack/resume state machine, and the durable log it writes through.
//! No sockets, no clock, no executor: `now` comes in, outputs are polled.
//!
//! - [`envelope`]: the JSON envelopes, parsed with simd-json in place and written at their
//!   exact length.
//! - [`claim`]: [`ReliableClaim`], one reliable claim's state machine (`handle_*` in,
//!   `poll_*` out), driven by the io layer.
//! - [`log`]: [`ReliableLog`], what the state machine asks to be made durable, and what is
//!   loaded back after a restart; [`MemReliableLog`] here, the redb one in
//!   [`crate::store`].
//! - [`error`]: why a session is closed, mapped to §8 close codes.
#![forbid(unsafe_code)]

pub mod claim;
pub mod envelope;
pub mod error;
pub mod limits;
pub mod log;
pub mod record_codec;
pub mod seq;

pub use claim::{ClaimRecord, Flow, ReliableClaim, ReliableEvent, Transmit};
pub use envelope::Envelope;
pub use error::{EnvelopeError, ReliableError, ResumeFailure};
pub use limits::ReliableLimits;
pub use log::{ClaimSnapshot, LogBatch, LogRecord, LogTicket, MemReliableLog, ReliableLog};
pub use seq::{Seq, SeqRange};

/// The subprotocol a POS offers to open a reliable session (§11). The relay selects it
/// before any other entry offered with it.
pub const SUBPROTOCOL: &str = "posrelay.reliable.v1";
