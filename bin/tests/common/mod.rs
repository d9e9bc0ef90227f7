//! Harness for the black-box tests of `posrelay serve`.
//!
//! Every test starts the real binary (`CARGO_BIN_EXE_posrelay`) in its own temporary data
//! directory, learns its two ports from the readiness lines on stdout (see
//! notes/binary-contract.md) and talks to it only over 127.0.0.1 with clients this
//! repository did not write: `tungstenite` for WebSocket, `ureq` for HTTP, and raw
//! `TcpStream` writes where a test needs a malformed request. Every blocking read has a
//! timeout, so a missing answer fails a test instead of hanging it.
//!
//! By concern: `relay.rs` (the process, provisioning, tokens), `http.rs` (HTTP answers,
//! raw requests, credential encodings), `ws.rs` (WebSocket reads and writes),
//! `device.rs` (§2, §3), `pos.rs` (§4, §5, a joined device and POS), `metrics.rs`,
//! `faults.rs` (raw frames and the fault suite's health check), `process.rs` (a
//! `serve` started exactly as a test says: refused starts, broken stderr, limits),
//! `util.rs`.
#![allow(dead_code, unused_imports)]

mod device;
mod faults;
mod http;
mod metrics;
mod pos;
mod process;
mod relay;
mod seeds;
mod util;
mod ws;

pub use device::*;
pub use faults::*;
pub use http::*;
pub use metrics::*;
pub use pos::*;
pub use process::*;
pub use relay::*;
pub use seeds::*;
pub use util::*;
pub use ws::*;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Response as WsResponse;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, Message, WebSocket};

/// Timeout of every blocking socket read or write a test makes.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the binary may take to print both readiness lines.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the device registration endpoint (§2).
pub const DEVICE_LISTENER: &str = "/cloud-connector/v1/device-listener";
/// Path of the POS control channel (§4).
pub const POS_LISTENER: &str = "/cloud-connector/v1/pos-listener";

/// A WebSocket client connection to the relay (plain or TLS).
pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// Client credentials as §9 hands them out.
#[derive(Debug, Clone)]
pub struct Creds {
    /// `client_id` of the §9 answer.
    pub client_id: String,
    /// `client_secret` of the §9 answer (shown once).
    pub client_secret: String,
}
