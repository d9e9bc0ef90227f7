//! The cluster on NATS JetStream (PROTOCOL.md §12): the io side of several nodes.
//!
//! The only place with tokio and async-nats. [`NatsBridge`] runs the NATS client on one
//! dedicated thread (a current-thread tokio runtime) and the rest of the process talks to
//! it over channels; the glommio shards never block on it. On that bridge:
//!
//! - [`JetStreamStore`]: the [`crate::store::Store`] on a replicated KV bucket, with a
//!   local replica kept current by a watch (reads never wait on the network);
//! - [`ownership`]: the streams of leases and ownership records, take-overs and fenced
//!   writes; [`LeaseKeeper`]: the node's lease, renewed every TTL/3;
//! - [`JetStreamReliableLog`]: reliable claims (§11), fenced on the ownership epoch and
//!   read by the next owner.
//!
//! The decisions (is my lease valid at `now`, is this epoch newer, what does a take-over
//! expect) are pure, in `crate::ownership`; the tenancy's key layout and replica are pure,
//! in `crate::store::{kv_layout, replica}`.
//!
//! `testing` (feature `testing`, and core's own tests) starts real nats-server clusters
//! on loopback for tests.

mod bridge;
mod error;
pub mod forward;
mod kv_store;
mod lease;
pub mod ownership;
pub mod reliable_log;
pub mod remote;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use bridge::{BridgeConfig, BridgeHandle, LinkState, LinkStatus, Nats, NatsBridge, Reply};
pub use error::ClusterError;
pub use kv_store::{JetStreamStore, KvStoreConfig};
pub use lease::{LeaseClock, LeaseKeeper};
pub use reliable_log::JetStreamReliableLog;
