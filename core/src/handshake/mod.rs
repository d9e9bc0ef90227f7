//! Sans-IO HTTP/1.1 request parsing and the RFC 6455 opening handshake.
//!
//! The relay serves plain HTTP (the OAuth token endpoint) and WebSocket upgrades
//! on one listener, so this is two layers:
//!
//! 1. [`parse_request_head`] turns bytes into a [`RequestHead`] (or `Ok(None)`:
//!    need more bytes), enforcing size limits (431) and HTTP framing rules (400).
//!    The body, or the first WebSocket frames, start at `head_len` and stay the
//!    caller's.
//! 2. For a WebSocket path, [`UpgradeRequest::from_head`] applies every check of
//!    RFC 6455 §4.2.1 (400 or 426). The caller authenticates, picks a
//!    subprotocol with [`OfferedProtocols::select`] and answers with
//!    [`switching_protocols`]; any [`HandshakeError`] is answered with
//!    [`error_response`].
//!
//! [`parse_form`] and [`parse_basic_auth`] decode the token endpoint's
//! credentials; [`ClientHandshake`] is the client side, for benchmarks and tests.
//! Nothing here touches a socket, a clock or randomness (keys come in as bytes).
//!
//! ```
//! use posrelay_core::handshake::*;
//!
//! let req = b"GET /cloud-connector/v1/device-listener HTTP/1.1\r\nHost: relay\r\n\
//!     Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
//!     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: sci\r\n\r\n";
//! let head = parse_request_head(req, &HeadLimits::default()).unwrap().unwrap();
//! let upgrade = UpgradeRequest::from_head(&head).unwrap();
//! let protocol = upgrade.offered_protocols().select(&SubprotocolPolicy::FirstOffered);
//! let answer = switching_protocols(&upgrade.accept_key(), protocol.as_deref());
//! assert!(answer.starts_with(b"HTTP/1.1 101 "));
//! ```
#![forbid(unsafe_code)]

pub mod accept;
pub mod client;
pub mod error;
pub mod form;
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
pub mod key;
mod lenient;
pub mod request;
pub mod response;
pub mod status;
pub mod subprotocol;
pub mod upgrade;

pub use accept::{accept_key, WEBSOCKET_GUID};
pub use client::{ClientHandshake, ClientHandshakeDone};
pub use error::HandshakeError;
pub use form::{parse_basic_auth, parse_form};
pub use headers::Headers;
pub use key::WebSocketKey;
pub use request::{parse_request_head, HeadLimits, Method, RequestHead};
pub use response::{error_response, http_response, json_error, switching_protocols};
pub use status::HttpStatus;
pub use subprotocol::{OfferedProtocols, SubprotocolPolicy, BEARER_PREFIX, POSRELAY_PROTOCOL};
pub use upgrade::{is_upgrade_attempt, UpgradeRequest};
