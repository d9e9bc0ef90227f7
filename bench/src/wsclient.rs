//! A WebSocket client on glommio, built from posrelay-core's sans-IO client
//! side ([`ClientHandshake`] and [`Connection`] in `Role::Client`): the
//! generator has no second WebSocket stack.
//!
//! A connection is a [`WsReader`] (owns the read half, the receive buffer and
//! the protocol state) and a shared [`WsWriter`] (the write half behind an
//! async lock), so that one task can read while another sends: the generator
//! must never stop reading while it writes, or a relay that applies
//! backpressure would deadlock it.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::BytesMut;
use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::tls::{ClientStream, TlsClient};
use glommio::sync::RwLock;
use posrelay_core::handshake::{ClientHandshake, HandshakeError, WebSocketKey};
use posrelay_core::proto::{
    encode_client_frame, CloseCode, Connection, Event, Limits, Message, MessageKind, OpCode,
    ProtocolError, Role,
};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 32 * 1024;

/// Largest message the generator accepts (the biggest scenario sends 16 KiB).
const MAX_MESSAGE: usize = 4 << 20;

/// Why a client connection failed.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server's answer to the opening handshake was refused (e.g. a 401).
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The server refused the upgrade with this status and said when to retry.
    #[error("refused with {status} (Retry-After {retry_after:?})")]
    Refused {
        /// The HTTP status (503, 429...).
        status: u16,
        /// Its `Retry-After` (delay-seconds), if any.
        retry_after: Option<std::time::Duration>,
    },
    /// The server broke RFC 6455.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The TCP stream ended without a Close frame.
    #[error("connection ended without a close frame")]
    Eof,
    /// The connection was closed (by us or the peer) and is not usable.
    #[error("connection closed")]
    Closed,
}

impl WsError {
    /// The HTTP status of a refused handshake, if that is what this is.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            WsError::Handshake(HandshakeError::UnexpectedStatus { status }) => Some(*status),
            WsError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What the next read produced.
#[derive(Debug)]
pub enum Incoming {
    /// A complete data message.
    Message(Message),
    /// The peer's Close arrived (its code, if it sent one); our answer is sent.
    Closed(Option<CloseCode>),
}

fn fresh_rng() -> StdRng {
    StdRng::from_entropy()
}

/// The sending side of a connection; cheap to share between tasks (`Rc`).
pub struct WsWriter {
    half: RwLock<WriteHalf<ClientStream>>,
    masks: RefCell<StdRng>,
}

impl WsWriter {
    fn next_mask(&self) -> [u8; 4] {
        let mut key = [0u8; 4];
        self.masks.borrow_mut().fill_bytes(&mut key);
        key
    }

    /// Sends one unfragmented data message, masked (RFC 6455 §5.3).
    pub async fn send(&self, kind: MessageKind, payload: &[u8]) -> Result<(), WsError> {
        let mut frame = BytesMut::with_capacity(payload.len() + 14);
        encode_client_frame(
            OpCode::from(kind),
            true,
            payload,
            self.next_mask(),
            &mut frame,
        );
        self.write_raw(&frame).await
    }

    /// Sends a text message.
    pub async fn send_text(&self, text: &str) -> Result<(), WsError> {
        self.send(MessageKind::Text, text.as_bytes()).await
    }

    /// Writes already-encoded frame bytes, atomically with respect to other senders.
    pub async fn write_raw(&self, bytes: &[u8]) -> Result<(), WsError> {
        let mut half = self.half.write().await.map_err(|_| WsError::Closed)?;
        half.write_all(bytes).await?;
        Ok(())
    }
}

/// The receiving side of a connection.
pub struct WsReader {
    half: ReadHalf<ClientStream>,
    rbuf: BytesMut,
    proto: Connection,
    writer: Rc<WsWriter>,
    /// Set while a read into `rbuf`'s tail is pending: if that future is
    /// dropped (a `select` picked another branch), the zeroed tail is cut
    /// off on the next call, so [`WsReader::next`] is cancel-safe.
    unfilled_from: Option<usize>,
}

impl WsReader {
    /// The next data message or the peer's Close. Pings are answered, pongs skipped.
    ///
    /// Cancel-safe: dropping the future loses no bytes (glommio's plain socket
    /// reads are readiness-based, and an interrupted read's tail is undone).
    pub async fn next(&mut self) -> Result<Incoming, WsError> {
        if let Some(start) = self.unfilled_from.take() {
            self.rbuf.truncate(start);
        }
        loop {
            let step = self.proto.handle_read(&mut self.rbuf);
            self.flush_control().await?;
            match step {
                Ok(Some(Event::Message(m))) => return Ok(Incoming::Message(m)),
                Ok(Some(Event::Close(frame))) => {
                    return Ok(Incoming::Closed(frame.map(|f| f.code)))
                }
                Ok(Some(Event::Ping(_) | Event::Pong(_))) => continue,
                Ok(None) => {}
                Err(e) => return Err(WsError::Protocol(e)),
            }
            let start = self.rbuf.len();
            self.rbuf.resize(start + READ_CHUNK, 0);
            self.unfilled_from = Some(start);
            let n = self.half.read(&mut self.rbuf[start..]).await;
            self.unfilled_from = None;
            self.rbuf.truncate(start + *n.as_ref().unwrap_or(&0));
            if n? == 0 {
                return Err(WsError::Eof);
            }
        }
    }

    /// The next data message; a Close or the end of the stream is an error.
    pub async fn next_message(&mut self) -> Result<Message, WsError> {
        match self.next().await? {
            Incoming::Message(m) => Ok(m),
            Incoming::Closed(_) => Err(WsError::Closed),
        }
    }

    /// Writes the control frames the protocol state queued (pongs, close replies).
    async fn flush_control(&mut self) -> Result<(), WsError> {
        while let Some(frame) = self.proto.poll_transmit() {
            self.writer.write_raw(&frame).await?;
        }
        Ok(())
    }

    /// Sends our Close (1000) and reads until the peer's answer or the end of
    /// the stream, discarding data. Returns whether the handshake completed.
    pub async fn close(&mut self) -> bool {
        self.proto.send_close(CloseCode::NORMAL, "");
        if self.flush_control().await.is_err() {
            return false;
        }
        loop {
            match self.next().await {
                Ok(Incoming::Closed(_)) => return true,
                Ok(Incoming::Message(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// The writer of this connection.
    pub fn writer(&self) -> Rc<WsWriter> {
        self.writer.clone()
    }
}

/// Where and how to open a connection.
#[derive(Debug, Clone)]
pub struct Dial<'a> {
    /// The server's address.
    pub addr: SocketAddr,
    /// The request target, e.g. `/cloud-connector/v1/pos-listener`.
    pub path: &'a str,
    /// Subprotocols offered.
    pub protocols: &'a [&'a str],
    /// Extra request headers (e.g. `Authorization`).
    pub headers: &'a [(&'a str, &'a str)],
    /// TLS (`wss://`) with this client configuration.
    pub tls: Option<&'a std::sync::Arc<rustls::ClientConfig>>,
}

/// The `Retry-After` of a response head, in delay-seconds (RFC 9110 §10.2.3).
pub fn retry_after(head: &[u8]) -> Option<std::time::Duration> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(head).ok()?;
    let value = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("retry-after"))?
        .value;
    let secs: u64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    Some(std::time::Duration::from_secs(secs))
}

/// Opens a WebSocket: TCP connect, the RFC 6455 §4.1 handshake, then split.
pub async fn connect(dial: &Dial<'_>) -> Result<WsReader, WsError> {
    let stream = TcpStream::connect(dial.addr)
        .await
        .map_err(std::io::Error::from)?;
    stream.set_nodelay(true).map_err(std::io::Error::from)?;
    let stream = match dial.tls {
        Some(config) => ClientStream::Tls(Box::new(TlsClient::new(stream, config.clone())?)),
        None => ClientStream::Plain(stream),
    };
    let mut rng = fresh_rng();
    let mut key = [0u8; 16];
    rng.fill_bytes(&mut key);
    let host = dial.addr.to_string();
    let handshake = ClientHandshake::new(
        &host,
        dial.path,
        WebSocketKey::from_random(key),
        dial.protocols,
        dial.headers,
    );
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    wr.write_all(&handshake.request_bytes()).await?;
    let mut buf = BytesMut::with_capacity(4096);
    let done = loop {
        match handshake.handle_response(&buf) {
            Ok(Some(done)) => break done,
            Ok(None) => {}
            Err(HandshakeError::UnexpectedStatus { status }) => {
                return Err(WsError::Refused {
                    status,
                    retry_after: retry_after(&buf),
                })
            }
            Err(e) => return Err(e.into()),
        }
        let start = buf.len();
        buf.resize(start + 4096, 0);
        let n = rd.read(&mut buf[start..]).await;
        buf.truncate(start + *n.as_ref().unwrap_or(&0));
        if n? == 0 {
            return Err(WsError::Eof);
        }
    };
    let leftover = buf.split_off(done.head_len);
    let mut control_rng = fresh_rng();
    let proto = Connection::new(
        Role::Client,
        Limits {
            max_frame_payload: MAX_MESSAGE as u64,
            max_message: MAX_MESSAGE,
        },
    )
    .with_mask_rng(Box::new(move || {
        let mut k = [0u8; 4];
        control_rng.fill_bytes(&mut k);
        k
    }));
    Ok(WsReader {
        half: rd,
        rbuf: leftover,
        proto,
        unfilled_from: None,
        writer: Rc::new(WsWriter {
            half: RwLock::new(wr),
            masks: RefCell::new(rng),
        }),
    })
}

/// A message's payload as one contiguous byte vector (copies fragments).
pub fn message_bytes(m: &Message) -> bytes::Bytes {
    m.payload.to_bytes()
}
