//! posrelay-core: everything of posrelay that is not a process.
//!
//! The protocol layers (`proto`, `handshake`, `control`, `auth`, `store`, `relay`,
//! `admin`, `ownership`) never touch a socket, a clock or an executor: time comes in as
//! `now`, randomness is passed in, bytes come in as slices or `BytesMut`. Only `io`
//! (feature `io`, on by default) knows glommio, sockets, TLS and timers, and only
//! `cluster` (feature `cluster`, on by default) knows tokio and NATS.
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod control;
pub mod coord;
pub mod handshake;
pub mod ids;
#[cfg(feature = "io")]
pub mod io;
pub mod ownership;
pub mod proto;
pub mod relay;
pub mod reliable;
pub mod store;
pub mod subject;
pub mod tenancy;
