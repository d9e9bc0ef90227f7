//! posrelay-core: everything of posrelay that is not a process.
//!
//! The protocol layers (`proto`, `handshake`, `control`, `auth`, `store`, `relay`,
//! `admin`) never touch a socket, a clock or an executor: time comes in as `now`,
//! randomness is passed in, bytes come in as slices or `BytesMut`. Only `io`
//! (feature `io`, on by default) knows glommio, sockets, TLS and timers.
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod control;
pub mod coord;
pub mod handshake;
pub mod ids;
#[cfg(feature = "io")]
pub mod io;
pub mod proto;
pub mod relay;
pub mod store;
pub mod tenancy;
