//! The io layer: the only place that knows glommio, sockets, TLS and timers.
//!
//! Everything above it (proto, handshake, auth, relay) is sans-IO; this module reads
//! bytes from sockets into buffers, hands them to those state machines, and writes
//! what they produce.
//!
//! `README.md` beside this file walks one connection through its stages (accepted,
//! routed, upgraded, open, closing) and names the file of each.

pub mod cert_expiry;
pub mod driver;
pub mod echo;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod runtime;
pub mod server;
pub mod transport;
pub mod ws;
