//! A blocking WebSocket client over `std::net::TcpStream` (and rustls for `wss://`),
//! driving posrelay-core's sans-IO pieces: [`ClientHandshake`] for the opening
//! handshake (RFC 6455 §4.1) and a [`Connection`] in [`Role::Client`] for framing,
//! ping answers and the close handshake. Frames are masked with keys from the OS
//! CSPRNG (RFC 6455 §5.3).

use super::url::WsUrl;
use bytes::{Bytes, BytesMut};
use posrelay_core::handshake::{ClientHandshake, HandshakeError, WebSocketKey};
use posrelay_core::proto::{
    encode_client_frame, CloseCode, Connection, Event, Limits, MessageKind, OpCode, ProtocolError,
    Role,
};
use rand::RngCore;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to open a connection.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Sent as `Authorization: Bearer <token>` (PROTOCOL.md §3-§5).
    pub bearer: Option<String>,
    /// Client credentials sent as `Authorization: Basic` when there is no bearer token
    /// (PROTOCOL.md §7c).
    pub basic: Option<(String, String)>,
    /// Subprotocols offered, in order (a `bearer.<token>` entry included, if used).
    pub protocols: Vec<String>,
    /// TLS configuration, required for `wss://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Time allowed for the TCP connect and for the handshake answer.
    pub timeout: Duration,
    /// Largest message accepted from the relay.
    pub limits: Limits,
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions {
            bearer: None,
            basic: None,
            protocols: Vec::new(),
            tls: None,
            timeout: Duration::from_secs(10),
            limits: Limits {
                max_frame_payload: 16 << 20,
                max_message: 16 << 20,
            },
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .field("basic", &self.basic.as_ref().map(|(id, _)| id))
            .field("protocols", &self.protocols.len())
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why a connection could not be opened or went away.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// No TCP connection to any address of the host.
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        /// `host:port` as given.
        addr: String,
        /// The last connect error.
        error: io::Error,
    },
    /// A `wss://` URL without a TLS configuration.
    #[error("wss:// needs a TLS configuration")]
    NoTls,
    /// The host is not a valid TLS server name.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// RFC 6455 §4.1: the server answered something other than 101.
    #[error("the relay refused the upgrade with HTTP {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body (the relay's error JSON).
        body: String,
    },
    /// RFC 6455 §4.1: the 101 answer broke a rule; the client fails the connection.
    #[error("bad handshake answer: {0}")]
    Handshake(HandshakeError),
    /// No complete handshake answer within the timeout.
    #[error("no handshake answer within {0:?}")]
    HandshakeTimeout(Duration),
    /// The relay closed the connection with a Close frame (RFC 6455 §5.5.1).
    #[error("closed by the relay ({})", describe_close(*.code, .reason))]
    Closed {
        /// The status code, if the Close frame had one.
        code: Option<u16>,
        /// The reason text.
        reason: String,
    },
    /// The TCP (or TLS) connection ended without a Close frame.
    #[error("connection lost without a close frame")]
    Eof,
    /// TLS: the relay's certificate does not chain to a CA this client trusts.
    #[error("the relay's certificate for {host} is not signed by a CA this client trusts ({detail}): pass --ca-file with your CA's PEM (for a self-signed certificate, the certificate itself)")]
    UntrustedCertificate {
        /// The host connected to.
        host: String,
        /// rustls's words.
        detail: String,
    },
    /// A `ws://` URL answered by a TLS port (or by something that is not HTTP).
    #[error("{addr} closed the connection without an HTTP answer: if that port speaks TLS, use wss:// instead of ws://")]
    NotHttp {
        /// `host:port`.
        addr: String,
    },
    /// A read or write failed.
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    /// The relay broke RFC 6455; our Close with the matching code was sent.
    #[error("protocol error from the relay: {0}")]
    Protocol(ProtocolError),
}

fn describe_close(code: Option<u16>, reason: &str) -> String {
    let code_text = code.map_or("no status code".to_owned(), |c| c.to_string());
    // The relay's own reason says it best; the code's meaning when it gave none.
    if !reason.is_empty() {
        return format!("{code_text}: {reason}");
    }
    let meaning = match code {
        Some(1000) => "normal",
        Some(1001) => "relay shutting down",
        Some(1002) => "protocol error",
        Some(1007) => "invalid UTF-8",
        Some(1008) => "policy: authentication or authorisation failed",
        Some(1009) => "message too big",
        Some(1011) => "internal error",
        Some(4000) => "replaced by a newer connection",
        Some(4001) => "claim released or lost",
        Some(4401) => "token expired",
        Some(4404) => "unknown session",
        _ => return code_text,
    };
    format!("{code_text} {meaning}")
}

/// A received data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsMessage {
    /// Text or binary.
    pub kind: MessageKind,
    /// The payload (valid UTF-8 for text).
    pub data: Bytes,
}

impl WsMessage {
    /// The payload as text, for a text message.
    pub fn text(&self) -> Option<&str> {
        match self.kind {
            MessageKind::Text => std::str::from_utf8(&self.data).ok(),
            MessageKind::Binary => None,
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// An open WebSocket connection (blocking).
pub struct WsClient {
    stream: Stream,
    conn: Connection,
    buf: BytesMut,
    protocol: Option<String>,
    closed: Option<(Option<u16>, String)>,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient")
            .field("conn", &self.conn)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

fn random_mask() -> [u8; 4] {
    let mut m = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut m);
    m
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl WsClient {
    /// Connects to `url` and performs the opening handshake (RFC 6455 §4.1).
    pub fn connect(url: &WsUrl, opts: &ConnectOptions) -> Result<WsClient, WsError> {
        let addr = format!("{}:{}", url.host, url.port);
        let tcp =
            connect_tcp(&url.host, url.port, opts.timeout).map_err(|error| WsError::Connect {
                addr: addr.clone(),
                error,
            })?;
        let _ = tcp.set_nodelay(true);
        tcp.set_write_timeout(Some(opts.timeout))?;
        let mut stream = if url.secure {
            let config = opts.tls.clone().ok_or(WsError::NoTls)?;
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|_| WsError::ServerName(url.host.clone()))?;
            let tls = rustls::ClientConnection::new(config, name)
                .map_err(|e| WsError::Io(io::Error::other(e)))?;
            Stream::Tls(Box::new(rustls::StreamOwned::new(tls, tcp)))
        } else {
            Stream::Plain(tcp)
        };
        let mut key = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let authorization = match (&opts.bearer, &opts.basic) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, Some((id, secret))) => {
                Some(crate::client::http::basic_authorization(id, secret))
            }
            (None, None) => None,
        };
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &authorization {
            headers.push(("Authorization", a));
        }
        let protocols: Vec<&str> = opts.protocols.iter().map(String::as_str).collect();
        let handshake = ClientHandshake::new(
            &url.authority(),
            &url.path,
            WebSocketKey::from_random(key),
            &protocols,
            &headers,
        );
        let tls_failed = |e: io::Error| untrusted(e, &url.host);
        stream
            .write_all(&handshake.request_bytes())
            .map_err(tls_failed)?;
        stream.flush().map_err(tls_failed)?;
        let deadline = Instant::now() + opts.timeout;
        let mut buf = BytesMut::with_capacity(4096);
        let done = loop {
            match handshake.handle_response(&buf) {
                Ok(Some(done)) => break done,
                Ok(None) => {}
                Err(HandshakeError::UnexpectedStatus { status }) => {
                    // Give the body a moment to arrive, for the error message.
                    let _ = read_some(&mut stream, &mut buf, Duration::from_millis(200));
                    let text = String::from_utf8_lossy(&buf);
                    let body = text
                        .split_once("\r\n\r\n")
                        .map(|(_, b)| b.chars().take(300).collect())
                        .unwrap_or_default();
                    return Err(WsError::Refused { status, body });
                }
                Err(e) => return Err(WsError::Handshake(e)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WsError::HandshakeTimeout(opts.timeout));
            }
            match read_some(&mut stream, &mut buf, left) {
                Ok(0) if buf.is_empty() && !url.secure => {
                    return Err(WsError::NotHttp { addr: addr.clone() })
                }
                Ok(0) => return Err(WsError::Eof),
                // A TLS alert record (content type 21) where an HTTP answer belongs.
                Ok(_) if !url.secure && buf.first() == Some(&0x15) => {
                    return Err(WsError::NotHttp { addr: addr.clone() })
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(e) if !url.secure && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(WsError::NotHttp { addr: addr.clone() })
                }
                Err(e) => return Err(untrusted(e, &url.host)),
            }
        };
        let rest = buf.split_off(done.head_len);
        let conn = Connection::new(Role::Client, opts.limits).with_mask_rng(Box::new(random_mask));
        Ok(WsClient {
            stream,
            conn,
            buf: rest,
            protocol: done.protocol,
            closed: None,
        })
    }

    /// The subprotocol the relay selected, if any.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Whether a message may be ready without reading the socket: bytes already read
    /// and not yet decoded, or decrypted TLS data waiting. Check this before
    /// [`wait_readable`], which sees only the socket.
    pub fn has_buffered(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        match &mut self.stream {
            Stream::Plain(_) => false,
            Stream::Tls(s) => s
                .conn
                .process_new_packets()
                .is_ok_and(|state| state.plaintext_bytes_to_read() > 0),
        }
    }

    /// Sends one unfragmented text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.send(MessageKind::Text, text.as_bytes())
    }

    /// Sends one unfragmented message of `kind`.
    pub fn send(&mut self, kind: MessageKind, data: &[u8]) -> Result<(), WsError> {
        self.check_open()?;
        self.flush_control()?;
        let mut out = BytesMut::with_capacity(data.len() + 14);
        // RFC 6455 §5.3: every client frame is masked with a fresh, unpredictable key.
        encode_client_frame(OpCode::from(kind), true, data, random_mask(), &mut out);
        self.stream.write_all(&out)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Waits up to `timeout` for the next data message; `Ok(None)` when none came.
    /// Pings are answered on the way. A Close from the relay is answered and
    /// returned as [`WsError::Closed`] (now and on every later call).
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<WsMessage>, WsError> {
        self.check_open()?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.conn.handle_read(&mut self.buf) {
                Ok(Some(Event::Message(m))) => {
                    self.flush_control()?;
                    return Ok(Some(WsMessage {
                        kind: m.kind,
                        data: m.payload.to_bytes(),
                    }));
                }
                Ok(Some(Event::Ping(_) | Event::Pong(_))) => {
                    self.flush_control()?;
                    continue;
                }
                Ok(Some(Event::Close(frame))) => {
                    // RFC 6455 §5.5.1: our echo is queued by the connection; send it.
                    let _ = self.flush_control();
                    let (code, reason) = match frame {
                        Some(f) => (Some(f.code.0), f.reason_str().to_owned()),
                        None => (None, String::new()),
                    };
                    self.closed = Some((code, reason));
                    let _ = self.stream.tcp().shutdown(std::net::Shutdown::Both);
                    return Err(self.closed_error());
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = self.flush_control();
                    return Err(WsError::Protocol(e));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match read_some(&mut self.stream, &mut self.buf, left) {
                Ok(0) => return Err(WsError::Eof),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(WsError::Eof),
                Err(e) => return Err(WsError::Io(e)),
            }
        }
    }

    /// Waits for the next data message up to `timeout`; a timeout is an error.
    pub fn recv_required(&mut self, timeout: Duration) -> Result<WsMessage, WsError> {
        self.recv(timeout)?.ok_or_else(|| {
            WsError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no message within {timeout:?}"),
            ))
        })
    }

    /// Starts the close handshake with `code` (RFC 6455 §7.1.2) and waits briefly
    /// for the relay's answer, then closes the TCP connection.
    pub fn close(mut self, code: u16, reason: &str) {
        if self.closed.is_some() {
            return;
        }
        self.conn.send_close(CloseCode(code), reason);
        if self.flush_control().is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            match self.recv(Duration::from_millis(100)) {
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        let _ = self.stream.tcp().shutdown(std::net::Shutdown::Both);
    }

    /// Drops the TCP connection without a Close frame, as a terminal losing its
    /// network would.
    pub fn abort(self) {
        let _ = self.stream.tcp().shutdown(std::net::Shutdown::Both);
    }

    fn check_open(&self) -> Result<(), WsError> {
        if self.closed.is_some() {
            return Err(self.closed_error());
        }
        Ok(())
    }

    fn closed_error(&self) -> WsError {
        let (code, reason) = self.closed.clone().unwrap_or_default();
        WsError::Closed { code, reason }
    }

    fn flush_control(&mut self) -> Result<(), WsError> {
        let mut wrote = false;
        while let Some(frame) = self.conn.poll_transmit() {
            self.stream.write_all(&frame)?;
            wrote = true;
        }
        if wrote {
            self.stream.flush()?;
        }
        Ok(())
    }
}

/// A TLS failure because the relay's certificate is not trusted, told as such; any
/// other I/O error as it is.
fn untrusted(e: io::Error, host: &str) -> WsError {
    let certificate = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::InvalidCertificate(
                why @ (rustls::CertificateError::UnknownIssuer
                | rustls::CertificateError::BadSignature
                | rustls::CertificateError::NotValidForName),
            ) => Some(format!("{why:?}")),
            _ => None,
        });
    match certificate {
        Some(detail) => WsError::UntrustedCertificate {
            host: host.to_owned(),
            detail,
        },
        None => WsError::Io(e),
    }
}

/// Waits up to `timeout` until one of `clients`' sockets has something to read; returns,
/// per client, whether it has. Data a client holds already ([`WsClient::has_buffered`])
/// is not seen here.
pub fn wait_readable(clients: &[&WsClient], timeout: Duration) -> io::Result<Vec<bool>> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds: Vec<PollFd<'_>> = clients
        .iter()
        .map(|c| PollFd::new(c.stream.tcp(), PollFlags::IN))
        .collect();
    let timeout = Timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    match poll(&mut fds, Some(&timeout)) {
        Ok(_) => {}
        Err(rustix::io::Errno::INTR) => {}
        Err(e) => return Err(e.into()),
    }
    // Readable, closed or failed: a read will tell which.
    let ready = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
    Ok(fds.iter().map(|f| f.revents().intersects(ready)).collect())
}

fn connect_tcp(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One read of up to 16 KiB, waiting at most `timeout`.
fn read_some(stream: &mut Stream, buf: &mut BytesMut, timeout: Duration) -> io::Result<usize> {
    stream
        .tcp()
        .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A tungstenite server (an independent RFC 6455 implementation) on loopback.
    // The handshake callback's error type is tungstenite's, large or not.
    #[allow(clippy::result_large_err)]
    fn echo_server() -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let callback =
                |req: &tungstenite::handshake::server::Request,
                 mut resp: tungstenite::handshake::server::Response| {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    resp.headers_mut()
                        .insert("sec-websocket-protocol", "sci".parse().unwrap());
                    resp.headers_mut()
                        .insert("x-auth-seen", auth.parse().unwrap());
                    Ok(resp)
                };
            let mut ws = tungstenite::accept_hdr(tcp, callback).unwrap();
            let mut seen = Vec::new();
            ws.send(tungstenite::Message::Ping(b"hi".to_vec())).unwrap();
            loop {
                match ws.read() {
                    Ok(tungstenite::Message::Text(t)) => {
                        seen.push(t.to_string());
                        ws.send(tungstenite::Message::Text(t)).unwrap();
                    }
                    Ok(tungstenite::Message::Binary(b)) => {
                        seen.push(format!("{} bytes", b.len()));
                        ws.send(tungstenite::Message::Binary(b)).unwrap();
                        ws.close(Some(tungstenite::protocol::CloseFrame {
                            code: 4001u16.into(),
                            reason: "claim released".into(),
                        }))
                        .unwrap();
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            seen
        });
        (addr, handle)
    }

    #[test]
    fn talks_to_an_independent_server() {
        let (addr, server) = echo_server();
        let url = WsUrl::parse(&format!("ws://{addr}/x")).unwrap();
        let opts = ConnectOptions {
            bearer: Some("tok".into()),
            protocols: vec!["sci".into()],
            ..ConnectOptions::default()
        };
        let mut c = WsClient::connect(&url, &opts).unwrap();
        assert_eq!(c.protocol(), Some("sci"));
        c.send_text("<TRANSACTION/>").unwrap();
        let m = c.recv_required(Duration::from_secs(5)).unwrap();
        assert_eq!(m.text(), Some("<TRANSACTION/>"));
        let big = vec![7u8; 70_000];
        c.send(MessageKind::Binary, &big).unwrap();
        let m = c.recv_required(Duration::from_secs(5)).unwrap();
        assert_eq!((m.kind, m.data.len()), (MessageKind::Binary, 70_000));
        match c.recv(Duration::from_secs(5)) {
            Err(WsError::Closed { code, reason }) => {
                assert_eq!((code, reason.as_str()), (Some(4001), "claim released"))
            }
            other => panic!("expected a close, got {other:?}"),
        }
        assert!(matches!(c.send_text("late"), Err(WsError::Closed { .. })));
        let seen = server.join().unwrap();
        assert_eq!(
            seen,
            vec!["<TRANSACTION/>".to_owned(), "70000 bytes".to_owned()]
        );
    }

    #[test]
    fn recv_times_out_with_none() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let mut ws = tungstenite::accept(tcp).unwrap();
            let _ = ws.read();
        });
        let url = WsUrl::parse(&format!("ws://{addr}")).unwrap();
        let mut c = WsClient::connect(&url, &ConnectOptions::default()).unwrap();
        assert_eq!(c.recv(Duration::from_millis(50)).unwrap(), None);
        c.close(1000, "bye");
        server.join().unwrap();
    }

    #[test]
    fn refused_upgrade_reports_status_and_body() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            let mut b = [0u8; 1024];
            let _ = tcp.read(&mut b);
            let body = r#"{"error":"invalid_token"}"#;
            let _ = write!(
                tcp,
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        });
        let url = WsUrl::parse(&format!("ws://{addr}")).unwrap();
        match WsClient::connect(&url, &ConnectOptions::default()) {
            Err(WsError::Refused { status, body }) => {
                assert_eq!(status, 401);
                assert!(body.contains("invalid_token"), "{body}");
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }

    #[test]
    fn waiting_on_two_connections_wakes_for_the_one_that_has_data() {
        // Two independent servers; only the second sends, once the client waits.
        let quiet = TcpListener::bind("127.0.0.1:0").unwrap();
        let talker = TcpListener::bind("127.0.0.1:0").unwrap();
        let (quiet_addr, talker_addr) = (quiet.local_addr().unwrap(), talker.local_addr().unwrap());
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let q = std::thread::spawn(move || {
            let (tcp, _) = quiet.accept().unwrap();
            let mut ws = tungstenite::accept(tcp).unwrap();
            let _ = ws.read();
        });
        let t = std::thread::spawn(move || {
            let (tcp, _) = talker.accept().unwrap();
            let mut ws = tungstenite::accept(tcp).unwrap();
            go_rx.recv().unwrap();
            ws.send(tungstenite::Message::Text("reply".into())).unwrap();
            let _ = ws.read();
        });
        let url = |a| WsUrl::parse(&format!("ws://{a}")).unwrap();
        let mut a = WsClient::connect(&url(quiet_addr), &ConnectOptions::default()).unwrap();
        let mut b = WsClient::connect(&url(talker_addr), &ConnectOptions::default()).unwrap();
        assert!(!a.has_buffered() && !b.has_buffered());
        assert_eq!(
            wait_readable(&[&a, &b], Duration::from_millis(20)).unwrap(),
            vec![false, false],
            "nothing to read: the wait times out"
        );
        go_tx.send(()).unwrap();
        // No timeout that could expire first: the wait ends because b has data.
        let ready = wait_readable(&[&a, &b], Duration::from_secs(30)).unwrap();
        assert_eq!(ready, vec![false, true]);
        let m = b.recv(Duration::from_millis(1)).unwrap().unwrap();
        assert_eq!(m.text(), Some("reply"));
        a.close(1000, "");
        b.close(1000, "");
        q.join().unwrap();
        t.join().unwrap();
    }

    #[test]
    fn close_reasons_are_readable() {
        assert_eq!(describe_close(Some(4401), ""), "4401 token expired");
        assert_eq!(describe_close(None, ""), "no status code");
        assert_eq!(describe_close(Some(3000), ""), "3000");
        assert_eq!(
            describe_close(Some(1001), "relay shutting down: reconnect"),
            "1001: relay shutting down: reconnect"
        );
    }
}
