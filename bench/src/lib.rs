//! posrelay-bench: the load generator and latency benchmark that produces
//! posrelay's published numbers, and the peers it compares posrelay with.
//!
//! - [`wsclient`]: a glommio WebSocket client on posrelay-core's sans-IO
//!   client side (no second WebSocket stack).
//! - [`flow`]: how a pair comes to exist on each target (posrelay's real
//!   flow: token, registration, device connection, claim, session).
//! - [`load`]: closed- and open-loop load, every payload checked
//!   ([`payload`]), round trips into hdrhistogram ([`stats`]).
//! - [`idle`], [`storm`]: the memory and reconnect scenarios.
//! - [`target`], [`procfs`]: the target process, pinned, and what /proc says
//!   about its CPU time, memory and placement.
//! - [`baseline`]: the tokio + tokio-tungstenite relay peer.
//! - [`scenario`], [`runner`], [`report`], [`cli`]: presets, orchestration,
//!   tables and JSON, the command line.
#![deny(unsafe_code)]

pub mod admin;
pub mod baseline;
pub mod cli;
pub mod flow;
pub mod handshake;
pub mod idle;
pub mod load;
pub mod payload;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod stats;
pub mod storm;
pub mod target;
pub mod tls;
pub mod wsclient;
