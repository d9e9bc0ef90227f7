//! A small blocking client for the relay, used by the simulators, the demo and the
//! admin command: WebSocket ([`ws`]) on posrelay-core's sans-IO client side
//! (`handshake::ClientHandshake`, `proto::Connection` in `Role::Client`), HTTP
//! ([`http`]) for the token endpoint and the admin API, and the URLs ([`url`]) and
//! TLS roots ([`tls`]) they share. [`reliable`] is the POS side of reliable sessions
//! (PROTOCOL.md §11) for POS developers.

pub mod http;
pub mod reliable;
pub mod tls;
pub mod url;
pub mod ws;
