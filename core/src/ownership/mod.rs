//! Ownership across nodes (PROTOCOL.md §12), the pure half: one lease per node, one
//! ownership record per tsn whose stream sequence is its epoch, epochs as fences.
//!
//! - A node holds one lease ([`Lease`]): a record on `posrelay.lease.<node>` written with a
//!   per-message TTL (`Nats-TTL`, NATS ADR-43, nats-server 2.11+) and renewed every TTL/3,
//!   each renewal fenced on the revision of the previous one. Per-tsn renewals would not
//!   scale to a million terminals; per-node leases do.
//! - A tsn's owner is the last record on `posrelay.own.<domain>.<serial>`
//!   ([`OwnershipRecord`]), written only when a device connects or moves. Its stream
//!   sequence is the [`Epoch`]: it only grows, and a write fenced on it
//!   (`Nats-Expected-Last-Subject-Sequence`) is refused by the server for anyone who has
//!   not seen the latest owner.
//!
//! Nothing here touches a socket or a clock: `now` comes in, decisions come out; the NATS
//! calls are in `cluster::ownership` and `cluster::lease`.
#![forbid(unsafe_code)]

mod epoch;
mod lease;
mod node;
mod subjects;

pub use epoch::{take_over, Epoch, Ownership, OwnershipRecord, TakeOver};
pub use lease::{
    acquisition, classify_lapse, Lapse, Lease, LeaseError, LeaseRecord, LeaseSlot, LeaseStatus,
    LeaseTerms, LeaseWrite, LostReason,
};
pub use node::{Incarnation, NodeId};
pub use subjects::{
    lease_subject, ownership_subject, tsn_subject, LEASE_SUBJECTS, OWNERSHIP_SUBJECTS, TSN_SUBJECTS,
};
