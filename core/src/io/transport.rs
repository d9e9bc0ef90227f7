//! A connection's byte stream: plain TCP or TLS over TCP, read into a `BytesMut` and
//! written with vectored writes (a frame header and its payload in one syscall, the
//! payload never copied in user space on the plain path).
//!
//! TLS runs on rustls' unbuffered API ([`rustls::server::UnbufferedServerConnection`]):
//! rustls keeps only the connection's cipher and handshake state, never a buffer. The
//! ciphertext read from the socket goes into a buffer taken from the shard's pool and
//! is decrypted there in place; the ciphertext to send is encrypted into a pooled
//! buffer that goes back to the pool once the socket took it. An idle TLS connection
//! (nothing half-read, nothing unsent) holds neither: see [`TlsSession`].

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

/// How many bytes one read asks the socket for.
pub const READ_CHUNK: usize = 16 * 1024;

/// The byte stream under a connection.
pub enum Transport {
    /// Plain TCP (`ws://`, `http://`).
    Plain(TcpStream),
    /// TLS over TCP (`wss://`, `https://`).
    Tls(Box<TlsTransport>),
}

/// A TLS session driven over a glommio socket.
pub struct TlsTransport {
    stream: TcpStream,
    session: TlsSession,
}

impl Transport {
    /// Wraps an accepted socket in a TLS server session with `config` (the handshake
    /// runs as the first reads and writes drive it).
    pub fn tls(
        stream: TcpStream,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> io::Result<Self> {
        let session = TlsSession::new(config).map_err(io::Error::other)?;
        Ok(Transport::Tls(Box::new(TlsTransport { stream, session })))
    }

    /// Rebuilds a TLS transport from a socket and the TLS state it already negotiated
    /// (a connection handed over from another shard).
    pub fn from_tls_parts(stream: TcpStream, session: TlsSession) -> Self {
        Transport::Tls(Box::new(TlsTransport { stream, session }))
    }

    /// The socket under the transport.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.stream,
        }
    }

    /// Whether this transport is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Reads what is available (at most [`READ_CHUNK`] bytes on the plain path; a TLS
    /// record's worth on TLS) and appends it to `buf`. `Ok(0)` is the end of the stream.
    pub async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => {
                let start = buf.len();
                // Reserving reclaims the buffer in place once earlier frames were dropped,
                // so a warm connection reads without allocating.
                buf.resize(start + READ_CHUNK, 0);
                let result = stream.read(&mut buf[start..]).await;
                let n = *result.as_ref().unwrap_or(&0);
                buf.truncate(start + n);
                result
            }
            Transport::Tls(tls) => {
                let TlsTransport { stream, session } = &mut **tls;
                poll_fn(|cx| session.poll_read(cx, stream, buf)).await
            }
        }
    }

    /// Writes every part, in order, completely.
    pub async fn write_all_vectored(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => write_all_plain(stream, parts).await,
            Transport::Tls(tls) => {
                let TlsTransport { stream, session } = &mut **tls;
                let total: usize = parts.iter().map(|p| p.len()).sum();
                let mut done = 0;
                while done < total {
                    done += session.encrypt(parts, done)?;
                    poll_fn(|cx| session.poll_write_out(cx, stream)).await?;
                }
                Ok(())
            }
        }
    }

    /// Flushes and half-closes the write side (TLS: sends close_notify first).
    pub async fn shutdown(&mut self) {
        match self {
            Transport::Plain(stream) => {
                let _ = stream.close().await;
            }
            Transport::Tls(tls) => {
                let TlsTransport { stream, session } = &mut **tls;
                if session.queue_close_notify().is_ok() {
                    let _ = poll_fn(|cx| session.poll_write_out(cx, stream)).await;
                }
                let _ = stream.close().await;
            }
        }
    }
}

/// Writes `parts` with one `sendmsg` when the socket has room (the usual case), and
/// finishes a partial write through glommio's readiness-driven path.
async fn write_all_plain(stream: &mut TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total == 0 {
        return Ok(());
    }
    let mut slices = [IoSlice::new(&[]); 4];
    let count = parts.len().min(slices.len());
    for (slot, part) in slices.iter_mut().zip(parts.iter()) {
        *slot = IoSlice::new(part);
    }
    let mut written = if parts.len() <= slices.len() {
        match send_vectored_nonblocking(stream, &slices[..count]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        }
    } else {
        0
    };
    // Finish what the kernel did not take, part by part.
    for part in parts {
        if written >= part.len() {
            written -= part.len();
            continue;
        }
        stream.write_all(&part[written..]).await?;
        written = 0;
    }
    Ok(())
}

/// One non-blocking `sendmsg(2)` of `parts` (`MSG_DONTWAIT | MSG_NOSIGNAL`) on a socket
/// the caller borrows for the call.
pub(crate) fn send_vectored_nonblocking(
    stream: &TcpStream,
    parts: &[IoSlice<'_>],
) -> io::Result<usize> {
    #[allow(unsafe_code)]
    // SAFETY: the descriptor belongs to `stream`, which is borrowed for this whole call,
    // so it is open and cannot be closed (or its number reused) before the borrow ends;
    // the `BorrowedFd` does not outlive this function. Differential test:
    // `tests::vectored_fast_path_writes_the_same_bytes`.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    socket2::SockRef::from(&fd)
        .send_vectored_with_flags(parts, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

impl TlsTransport {
    /// The socket and the TLS state, for a driver (or another shard) that takes the
    /// connection over.
    pub fn into_parts(self) -> (TcpStream, TlsSession) {
        (self.stream, self.session)
    }

    /// The socket and the session, borrowed apart.
    pub(crate) fn parts_mut(&mut self) -> (&mut TcpStream, &mut TlsSession) {
        (&mut self.stream, &mut self.session)
    }

    /// The TLS session.
    pub fn session(&self) -> &TlsSession {
        &self.session
    }
}

/// Size of a pooled ciphertext input buffer: the largest TLS record rustls accepts
/// (16 KiB of payload plus the 2 KiB expansion TLS allows, plus its 5-byte header), so
/// that a buffer always has room for one whole record.
const CIPHER_IN_LEN: usize = 20 * 1024;
/// Size of a pooled ciphertext output buffer: four full records and their overhead.
const CIPHER_OUT_LEN: usize = 4 * (RECORD + RECORD_OVERHEAD);
/// Largest plaintext per TLS record (RFC 8446 §5.1: 2^14).
const RECORD: usize = 16 * 1024;
/// Bytes a record adds to its plaintext, with room to spare (TLS 1.3 with AES-GCM or
/// ChaCha20-Poly1305: 5 header + 1 content type + 16 tag; TLS 1.2: up to 29).
const RECORD_OVERHEAD: usize = 64;
/// Parts at least this long are encrypted from where they are; shorter ones (frame
/// headers, small messages) are gathered first so that one record carries several.
const DIRECT: usize = 512;
/// Room for gathered short parts (on the stack, per encryption call).
const STAGE: usize = 4096;
/// A record carrying at least this much plaintext starts at an address that is a
/// multiple of [`RECORD_ALIGN`], wherever the output buffer itself starts. rustls
/// encrypts a record in a buffer of its own and copies it into ours; glibc's `memcpy`
/// copies that many bytes with `rep movsb`, which on AMD EPYC hosts runs about 25 times
/// slower (10 µs instead of 0.4 µs for 16 KiB, BENCHMARKS.md "A slow copy on AMD hosts")
/// when the destination lies 1-31 bytes after the source modulo 4 KiB. rustls' buffer, a
/// fresh 16 KiB allocation, starts on a page boundary with the relay's allocator, so a
/// destination on a 64-byte boundary stays out of that window; before this, the 4-byte
/// header of every 16 KiB WebSocket frame, a 26-byte record of its own, put the
/// payload's record right in it.
const ALIGN_FROM: usize = 4096;
/// See [`ALIGN_FROM`].
const RECORD_ALIGN: usize = 64;
/// How many spare ciphertext buffers of each kind a shard keeps.
const CIPHER_POOL_MAX: usize = 64;

/// Ciphertext buffers shared by a shard's TLS connections. A connection takes one to
/// read into and gives it back as soon as it holds no partial record; it takes one to
/// encrypt into and gives it back as soon as the socket took every byte.
mod cipher_pool {
    use super::{CIPHER_IN_LEN, CIPHER_OUT_LEN, CIPHER_POOL_MAX};
    use std::cell::RefCell;

    thread_local! {
        static INPUT: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
        static OUTPUT: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    }

    fn take(
        pool: &'static std::thread::LocalKey<RefCell<Vec<Box<[u8]>>>>,
        len: usize,
    ) -> Box<[u8]> {
        pool.with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| vec![0; len].into_boxed_slice())
    }

    fn give(
        pool: &'static std::thread::LocalKey<RefCell<Vec<Box<[u8]>>>>,
        len: usize,
        buf: &mut Box<[u8]>,
    ) {
        let buf = std::mem::take(buf);
        if buf.len() != len {
            return;
        }
        pool.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < CIPHER_POOL_MAX {
                p.push(buf);
            }
        });
    }

    pub fn take_input() -> Box<[u8]> {
        take(&INPUT, CIPHER_IN_LEN)
    }

    pub fn give_input(buf: &mut Box<[u8]>) {
        give(&INPUT, CIPHER_IN_LEN, buf)
    }

    pub fn take_output() -> Box<[u8]> {
        take(&OUTPUT, CIPHER_OUT_LEN)
    }

    pub fn give_output(buf: &mut Box<[u8]>) {
        give(&OUTPUT, CIPHER_OUT_LEN, buf)
    }
}

/// One TLS server session: rustls' unbuffered connection (cipher and handshake state
/// only) and, while they hold something, a pooled input and output buffer.
///
/// Input: ciphertext is read into `cin` and decrypted there in place by rustls; each
/// decrypted record is appended to the caller's plaintext buffer (the connection's
/// pooled read buffer), and the consumed records are discarded from `cin`. Output:
/// plaintext is encrypted into `cout`, which is written to the socket. Either buffer
/// goes back to the shard's pool as soon as it is empty, so an idle session holds
/// neither (an empty boxed slice does not allocate).
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Ciphertext read: `cin[..cin_len]` (a partial record at most, between calls). Both
    /// buffers are boxed slices of a fixed length, not `Vec`s: without a capacity word
    /// the session keeps its connection within mimalloc's 1,280-byte size class.
    cin: Box<[u8]>,
    cin_len: usize,
    /// Ciphertext to send: `cout[cout_start..cout_end]`.
    cout: Box<[u8]>,
    cout_start: usize,
    cout_end: usize,
    /// The peer sent close_notify: no more data will come.
    peer_closed: bool,
    /// Bytes a record adds to its plaintext in this session (header, content type, tag;
    /// learned from the first record sent), for placing large records ([`ALIGN_FROM`]).
    record_overhead: Option<u8>,
}

const _: () = {
    const fn assert_send<T: Send>() {}
    // A session moves between shards with its connection (io/server/handover.rs).
    assert_send::<TlsSession>();
};

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsSession {
    /// §2a: the SHA-256 fingerprint of the client's certificate, once the handshake is done.
    pub fn peer_fingerprint(&self) -> Option<crate::tenancy::CertFingerprint> {
        crate::io::server::mtls::peer_fingerprint(&self.conn)
    }

    /// A fresh server session with `config`.
    pub fn new(config: std::sync::Arc<rustls::ServerConfig>) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config)?,
            cin: Box::default(),
            cin_len: 0,
            cout: Box::default(),
            cout_start: 0,
            cout_end: 0,
            peer_closed: false,
            record_overhead: None,
        })
    }

    /// Whether the session holds no buffer (nothing half-read, nothing unsent).
    pub fn holds_no_buffer(&self) -> bool {
        self.cin.is_empty() && self.cout.is_empty()
    }

    /// Whether the TLS handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the finished handshake was a full one or resumed a session (a ticket, TLS
    /// 1.3 PSK); `None` while it is still going on.
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.conn.handshake_kind()
    }

    /// Whether ciphertext waits to be sent.
    pub fn has_output(&self) -> bool {
        self.cout_start < self.cout_end
    }

    /// Room for `needed` more bytes of ciphertext output (takes a pooled buffer, moves
    /// unsent bytes to its front, grows it for an oversized handshake message).
    fn output_room(cout: &mut Box<[u8]>, start: &mut usize, end: &mut usize, needed: usize) {
        if cout.is_empty() {
            *cout = cipher_pool::take_output();
        }
        if cout.len() - *end < needed && *start > 0 {
            cout.copy_within(*start..*end, 0);
            *end -= *start;
            *start = 0;
        }
        if cout.len() - *end < needed {
            let mut grown = std::mem::take(cout).into_vec();
            grown.resize(*end + needed, 0);
            *cout = grown.into_boxed_slice();
        }
    }

    /// Processes the ciphertext received so far: appends every decrypted record to
    /// `plain`, queues what the handshake must send (handshake records, tickets,
    /// alerts), and notes a close_notify. Returns how many plaintext bytes it appended.
    /// On a TLS error the alert that tells the peer why is queued for sending.
    pub fn process(&mut self, plain: &mut BytesMut) -> Result<usize, rustls::Error> {
        let mut produced = 0;
        loop {
            let Self {
                conn,
                cin,
                cin_len,
                cout,
                cout_start,
                cout_end,
                peer_closed,
                ..
            } = self;
            let UnbufferedStatus { mut discard, state } =
                conn.process_tls_records(&mut cin[..*cin_len]);
            let mut done = false;
            match state {
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        discard += record.discard;
                        if plain.capacity() - plain.len() < record.payload.len() {
                            // Room for a record more than this one: a frame that ends in
                            // the next record (a 16 KiB message and its header take two)
                            // then fits without growing the buffer again, which would
                            // copy the whole frame so far.
                            plain.reserve(record.payload.len() + RECORD);
                        }
                        plain.extend_from_slice(record.payload);
                        produced += record.payload.len();
                    }
                }
                Ok(ConnectionState::EncodeTlsData(encode)) => {
                    Self::encode_into(encode, cout, cout_start, cout_end)
                }
                // The encoded records wait in `cout` until the socket takes them; nothing
                // more is read before they are sent (see `poll_read`).
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                Ok(ConnectionState::PeerClosed) => *peer_closed = true,
                Ok(ConnectionState::Closed) => {
                    *peer_closed = true;
                    done = true;
                }
                // 0-RTT is not enabled (`max_early_data_size` is 0): never offered.
                Ok(ConnectionState::ReadEarlyData(_)) => done = true,
                Ok(_) => done = true,
                Err(e) => {
                    self.encode_alert();
                    return Err(e);
                }
            }
            if discard > 0 {
                self.cin.copy_within(discard..self.cin_len, 0);
                self.cin_len -= discard;
            }
            if done {
                return Ok(produced);
            }
        }
    }

    /// Encodes a message rustls asks to send (handshake, ticket, key update, alert) after
    /// the ciphertext already queued.
    fn encode_into(
        mut encode: rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
        cout: &mut Box<[u8]>,
        cout_start: &mut usize,
        cout_end: &mut usize,
    ) {
        let mut needed = 1024;
        loop {
            Self::output_room(cout, cout_start, cout_end, needed);
            match encode.encode(&mut cout[*cout_end..]) {
                Ok(n) => {
                    *cout_end += n;
                    return;
                }
                Err(EncodeError::InsufficientSize(s)) => needed = s.required_size,
                Err(EncodeError::AlreadyEncoded) => return,
            }
        }
    }

    /// After an error, rustls has queued the alert that says why: encode it.
    fn encode_alert(&mut self) {
        let Self {
            conn,
            cin,
            cin_len,
            cout,
            cout_start,
            cout_end,
            ..
        } = self;
        let status = conn.process_tls_records(&mut cin[..*cin_len]);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            Self::output_room(cout, cout_start, cout_end, 64);
            if let Ok(n) = encode.encode(&mut cout[*cout_end..]) {
                *cout_end += n;
            }
        }
    }

    /// Encrypts the bytes of `parts` after the first `skip`, in order, as far as the
    /// output buffer has room; returns how many it took (at least one record's worth
    /// when the output buffer was empty). Short parts are gathered so that one record
    /// carries several (a frame header and its small payload, several small frames);
    /// long ones are encrypted from where they are.
    pub fn encrypt<T: std::ops::Deref<Target = [u8]>>(
        &mut self,
        parts: &[T],
        skip: usize,
    ) -> io::Result<usize> {
        let Self {
            conn,
            cin,
            cin_len,
            cout,
            cout_start,
            cout_end,
            record_overhead,
            ..
        } = self;
        Self::output_room(cout, cout_start, cout_end, RECORD + RECORD_OVERHEAD);
        let status = conn.process_tls_records(&mut cin[..*cin_len]);
        if status.discard != 0 {
            // `process` consumed every whole record after the last read.
            return Err(io::Error::other(
                "TLS input left unprocessed before a write",
            ));
        }
        let traffic = match status.state {
            Ok(ConnectionState::WriteTraffic(traffic)) => traffic,
            // A key update of our own (RFC 8446 §4.6.3: rustls asks for one as the
            // cipher nears its record limit, §5.5) goes out before the data that the
            // new key protects; then the session can write again.
            Ok(ConnectionState::EncodeTlsData(encode)) => {
                Self::encode_into(encode, cout, cout_start, cout_end);
                return self.encrypt(parts, skip);
            }
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transmit.done();
                return self.encrypt(parts, skip);
            }
            Ok(ConnectionState::BlockedHandshake) => {
                return Err(io::Error::other("TLS handshake not complete"))
            }
            Ok(other) => {
                return Err(io::Error::other(format!(
                    "TLS session not ready to send application data ({other:?})"
                )))
            }
            Err(e) => return Err(invalid_data(e)),
        };
        let mut out = Sealer {
            traffic,
            cout,
            cout_end,
            record_overhead,
        };
        let mut stage = [0u8; STAGE];
        let mut staged = 0;
        let mut taken = 0;
        let mut skip = skip;
        for part in parts {
            let mut bytes: &[u8] = part;
            if skip >= bytes.len() {
                skip -= bytes.len();
                continue;
            }
            bytes = &bytes[skip..];
            skip = 0;
            if bytes.len() >= DIRECT {
                if staged + RECORD_ALIGN > STAGE {
                    if !out.seal(&stage[..staged])? {
                        return Ok(taken);
                    }
                    taken += staged;
                    staged = 0;
                }
                // The gathered parts' record (or one of its own) takes this part's first
                // bytes when that puts the part's first record on a boundary.
                let lead = out.aligning_lead(staged, bytes.len());
                stage[staged..staged + lead].copy_from_slice(&bytes[..lead]);
                staged += lead;
                bytes = &bytes[lead..];
                if staged > 0 {
                    if !out.seal(&stage[..staged])? {
                        return Ok(taken);
                    }
                    taken += staged;
                    staged = 0;
                }
                // Records after the first end on a boundary too, the next one then starting
                // on one (the lead, if any, has just put the first on one).
                let record = if out.starts_aligned() {
                    out.aligned_record()
                } else {
                    RECORD
                };
                while !bytes.is_empty() {
                    let chunk = bytes.len().min(record);
                    if !out.seal(&bytes[..chunk])? {
                        return Ok(taken);
                    }
                    taken += chunk;
                    bytes = &bytes[chunk..];
                }
            } else {
                if staged + bytes.len() > STAGE {
                    if !out.seal(&stage[..staged])? {
                        return Ok(taken);
                    }
                    taken += staged;
                    staged = 0;
                }
                stage[staged..staged + bytes.len()].copy_from_slice(bytes);
                staged += bytes.len();
            }
        }
        if staged > 0 && out.seal(&stage[..staged])? {
            taken += staged;
        }
        Ok(taken)
    }

    /// Queues a close_notify alert (RFC 8446 §6.1) after what is already queued.
    pub fn queue_close_notify(&mut self) -> io::Result<()> {
        let Self {
            conn,
            cin,
            cin_len,
            cout,
            cout_start,
            cout_end,
            ..
        } = self;
        Self::output_room(cout, cout_start, cout_end, RECORD_OVERHEAD);
        let status = conn.process_tls_records(&mut cin[..*cin_len]);
        match status.state {
            Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                let n = traffic
                    .queue_close_notify(&mut cout[*cout_end..])
                    .map_err(|e| io::Error::other(e.to_string()))?;
                *cout_end += n;
                Ok(())
            }
            _ => Err(io::Error::other("TLS session cannot close cleanly now")),
        }
    }

    /// Sends the queued ciphertext; ready once the socket took all of it (the output
    /// buffer then goes back to the pool).
    pub fn poll_write_out(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut TcpStream,
    ) -> Poll<io::Result<()>> {
        while self.cout_start < self.cout_end {
            let pending = &self.cout[self.cout_start..self.cout_end];
            let n = match send_vectored_nonblocking(stream, &[IoSlice::new(pending)]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Let glommio wait for writability (it retries the send first).
                    match Pin::new(&mut *stream).poll_write(cx, pending) {
                        Poll::Ready(Ok(n)) => n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.cout_start += n;
        }
        self.cout_start = 0;
        self.cout_end = 0;
        if !self.cout.is_empty() {
            cipher_pool::give_output(&mut self.cout);
        }
        Poll::Ready(Ok(()))
    }

    /// Reads and decrypts until plaintext arrives (appended to `plain`; returns its
    /// length), sending what the handshake needs meanwhile. `Ok(0)`: the peer closed
    /// (close_notify or end of stream). While it waits for the socket the session
    /// holds no input buffer unless a partial record is in it.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut TcpStream,
        plain: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        use futures_lite::AsyncRead;
        loop {
            if let Poll::Ready(Err(e)) = self.poll_write_out(cx, stream) {
                return Poll::Ready(Err(e));
            }
            let produced = match self.process(plain) {
                Ok(n) => n,
                Err(e) => {
                    // Tell the peer why (the alert), then fail the connection.
                    let _ = self.poll_write_out(cx, stream);
                    return Poll::Ready(Err(invalid_data(e)));
                }
            };
            if self.has_output() {
                if let Poll::Ready(Err(e)) = self.poll_write_out(cx, stream) {
                    return Poll::Ready(Err(e));
                }
            }
            if produced > 0 {
                self.release_input();
                return Poll::Ready(Ok(produced));
            }
            if self.peer_closed {
                return Poll::Ready(Ok(0));
            }
            if self.cin.is_empty() {
                self.cin = cipher_pool::take_input();
            }
            if self.cin_len == self.cin.len() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS record larger than allowed",
                )));
            }
            match Pin::new(&mut *stream).poll_read(cx, &mut self.cin[self.cin_len..]) {
                Poll::Ready(Ok(0)) => {
                    self.release_input();
                    return Poll::Ready(Ok(0));
                }
                Poll::Ready(Ok(n)) => self.cin_len += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.release_input();
                    return Poll::Pending;
                }
            }
        }
    }

    /// Asks for a key update of our own, as rustls does near the cipher's record limit
    /// (RFC 8446 §5.5); the next write sends it.
    #[cfg(test)]
    fn request_key_update(&mut self) {
        let status = self.conn.process_tls_records(&mut self.cin[..self.cin_len]);
        if let Ok(ConnectionState::WriteTraffic(traffic)) = status.state {
            traffic.refresh_traffic_keys().unwrap();
        } else {
            panic!("the session cannot write now");
        }
    }

    /// Gives the input buffer back if it holds no partial record.
    fn release_input(&mut self) {
        if self.cin_len == 0 && !self.cin.is_empty() {
            cipher_pool::give_input(&mut self.cin);
        }
    }
}

/// Encrypts records into a session's output buffer, one at a time, during one
/// [`TlsSession::encrypt`] call.
struct Sealer<'a, 'b> {
    traffic: rustls::unbuffered::WriteTraffic<'b, rustls::server::ServerConnectionData>,
    cout: &'a mut [u8],
    cout_end: &'a mut usize,
    record_overhead: &'a mut Option<u8>,
}

impl Sealer<'_, '_> {
    /// Encrypts `plain` as one record after those queued; `false` if the buffer has no
    /// room for it.
    fn seal(&mut self, plain: &[u8]) -> io::Result<bool> {
        if self.cout.len() - *self.cout_end < plain.len() + RECORD_OVERHEAD {
            return Ok(false);
        }
        match self
            .traffic
            .encrypt(plain, &mut self.cout[*self.cout_end..])
        {
            Ok(n) => {
                *self.cout_end += n;
                *self.record_overhead = u8::try_from(n - plain.len()).ok();
                Ok(true)
            }
            Err(EncryptError::InsufficientSize(_)) => Ok(false),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }

    /// Where the next record starts: its address, which is what [`ALIGN_FROM`]'s copy
    /// cares about (the buffer itself need not start on a boundary).
    fn next_address(&self) -> usize {
        self.cout.as_ptr() as usize + *self.cout_end
    }

    /// Whether the next record starts on a [`RECORD_ALIGN`] boundary (and the overhead
    /// is known).
    fn starts_aligned(&self) -> bool {
        self.record_overhead.is_some() && self.next_address().is_multiple_of(RECORD_ALIGN)
    }

    /// The largest plaintext of a record that ends on a boundary if it starts on one.
    fn aligned_record(&self) -> usize {
        let overhead = usize::from(self.record_overhead.unwrap_or(0));
        RECORD - (RECORD + overhead) % RECORD_ALIGN
    }

    /// How many of a `len`-byte part's first bytes go into the record before it (the
    /// `staged` bytes gathered so far, or a record of their own) so that the part's own
    /// records start on a [`RECORD_ALIGN`] boundary; 0 for parts shorter than
    /// [`ALIGN_FROM`] and before the first record tells the overhead.
    fn aligning_lead(&self, staged: usize, len: usize) -> usize {
        match *self.record_overhead {
            Some(overhead) if len >= ALIGN_FROM => {
                aligning_lead(self.next_address(), staged, usize::from(overhead))
            }
            _ => 0,
        }
    }
}

/// How many plaintext bytes to add to the `staged` ones so that, encrypted as one record
/// (`overhead` bytes more) from address `end`, they end on a
/// [`RECORD_ALIGN`] boundary: 0 if the next record starts on one already, at most
/// `RECORD_ALIGN`, and at least 1 when nothing is staged (a record of its own then, and
/// a record carries one byte at least).
fn aligning_lead(end: usize, staged: usize, overhead: usize) -> usize {
    let next = if staged > 0 {
        end + staged + overhead
    } else {
        end
    };
    if next.is_multiple_of(RECORD_ALIGN) {
        return 0;
    }
    let to_boundary = |at: usize| (RECORD_ALIGN - at % RECORD_ALIGN) % RECORD_ALIGN;
    if staged > 0 {
        to_boundary(next)
    } else {
        match to_boundary(end + overhead) {
            0 => RECORD_ALIGN,
            lead => lead,
        }
    }
}

/// A plain TCP connection's descriptor, lent to its outbox so that other tasks of the
/// shard can write to the socket directly (the fast path: `Outbox::write_now`).
///
/// The invariant: the descriptor is open for as long as this value lives. It is made
/// only by [`DirectSocket::new`] (`unsafe`: its caller promises the invariant), it is
/// neither `Clone` nor `Copy`, and the one place that makes it (`ConnDriver::new`)
/// keeps the promise by owning the socket and taking this value back out of the
/// outbox in its `Drop`, before the socket is closed; `Outbox::close` drops it too.
#[derive(Debug)]
pub(crate) struct DirectSocket {
    fd: RawFd,
}

impl DirectSocket {
    /// Lends `fd`.
    ///
    /// # Safety
    /// `fd` must be an open socket, and stay open (not closed, its number not reused)
    /// until the returned value is dropped.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn new(fd: RawFd) -> DirectSocket {
        DirectSocket { fd }
    }

    /// One non-blocking `sendmsg(2)` of `parts` (`MSG_DONTWAIT | MSG_NOSIGNAL`).
    pub(crate) fn send_vectored_nonblocking(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        #[allow(unsafe_code)]
        // SAFETY: the type's invariant (see `DirectSocket::new`): the descriptor is open
        // while `self` lives, and the borrow does not outlive this call. Differential
        // test: `tests::direct_socket_writes_what_a_stream_write_writes`.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        socket2::SockRef::from(&fd)
            .send_vectored_with_flags(parts, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::net::TcpListener;
    use glommio::LocalExecutorBuilder;

    /// The vectored fast path and a plain write of the concatenation put the same
    /// bytes on the wire (the differential test for `send_vectored_nonblocking`).
    #[test]
    fn vectored_fast_path_writes_the_same_bytes() {
        LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(|| async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let header = [0x82u8, 0x7e, 0x01, 0x00];
                let payload: Vec<u8> = (0..=255u8).collect();
                let sent = payload.clone();
                let client = glommio::spawn_local(async move {
                    let payload = sent;
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    write_all_plain(&mut s, &[&header, &payload]).await.unwrap();
                    s.write_all(&header).await.unwrap();
                    s.write_all(&payload).await.unwrap();
                    s.close().await.unwrap();
                });
                let mut server = listener.accept().await.unwrap();
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.unwrap();
                client.await;
                let mut once = header.to_vec();
                once.extend_from_slice(&payload);
                assert_eq!(got.len(), 2 * once.len());
                assert_eq!(&got[..once.len()], &once[..]);
                assert_eq!(&got[once.len()..], &once[..]);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// A `DirectSocket` send and an ordinary write of the same parts put the same bytes
    /// on the wire (the differential test for `DirectSocket`'s borrowed descriptor).
    #[test]
    fn direct_socket_writes_what_a_stream_write_writes() {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let parts: [&[u8]; 3] = [b"\x81\x05", b"hello", b"\x82\x00"];
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        {
            #[allow(unsafe_code)]
            // SAFETY: `a` outlives this block, where `direct` lives.
            let direct = unsafe { DirectSocket::new(a.as_raw_fd()) };
            assert_eq!(direct.send_vectored_nonblocking(&slices).unwrap(), 9);
        }
        for p in parts {
            a.write_all(p).unwrap();
        }
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(&got[..9], &got[9..]);
        assert_eq!(&got[..9], b"\x81\x05hello\x82\x00");
    }

    fn self_signed() -> (std::sync::Arc<rustls::ServerConfig>, Vec<u8>) {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let der = cert.cert.der().to_vec();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone().into()], key)
            .unwrap();
        (std::sync::Arc::new(config), der)
    }

    /// The unbuffered TLS session against rustls' own buffered client: what the client
    /// writes (in pieces of every size, records up to 16 KiB) comes out of `read_into`
    /// byte for byte; what `write_all_vectored` sends (small parts gathered, large ones
    /// encrypted where they are) the client reads byte for byte; the close is a clean
    /// close_notify; and between reads and writes the session holds no buffer.
    #[test]
    fn tls_session_round_trips_with_rustls_own_client() {
        use std::io::{Read, Write};
        let (config, der) = self_signed();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 253) as u8).collect();
        let expected = data.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let client = std::thread::spawn(move || {
            let mut tls = client_of(der, addr_rx.recv().unwrap());
            let mut sent = 0;
            let mut size = 1;
            while sent < data.len() {
                let end = (sent + size).min(data.len());
                tls.write_all(&data[sent..end]).unwrap();
                sent = end;
                size = (size * 3 + 1) % 40_000 + 1;
            }
            tls.flush().unwrap();
            let mut back = vec![0u8; data.len()];
            tls.read_exact(&mut back).unwrap();
            let mut rest = Vec::new();
            // close_notify: a clean end of stream (rustls reports a truncation as an error).
            tls.read_to_end(&mut rest).unwrap();
            (back, rest)
        });
        serve_one_tls(config, addr_tx, move |mut transport| async move {
            let mut got = BytesMut::new();
            while got.len() < expected.len() {
                let n = transport.read_into(&mut got).await.unwrap();
                assert!(n > 0, "early end of stream after {} bytes", got.len());
            }
            assert_eq!(&got[..], &expected[..], "decrypted what the client sent");
            if let Transport::Tls(t) = &transport {
                assert!(t.session().holds_no_buffer(), "idle: no buffer held");
                assert!(!t.session().is_handshaking());
            }
            // Write it back as a mix of small and large parts.
            let mut at = 0;
            let mut size = 2;
            while at < got.len() {
                let a = (at + size).min(got.len());
                let b = (a + 3 * size).min(got.len());
                let c = (b + 1).min(got.len());
                transport
                    .write_all_vectored(&[&got[at..a], &got[a..b], &got[b..c]])
                    .await
                    .unwrap();
                at = c;
                size = (size * 5 + 3) % 30_000 + 1;
            }
            if let Transport::Tls(t) = &transport {
                assert!(t.session().holds_no_buffer(), "all sent: no buffer held");
            }
            transport.shutdown().await;
        });
        let (back, rest) = client.join().unwrap();
        assert!(
            back == data_for_check(),
            "the client read what the session wrote"
        );
        assert!(rest.is_empty());
    }

    /// Serves one TLS connection with `config` on a fresh loopback port (sent on
    /// `addr_tx` for the client) on a glommio executor, and runs `serve` on it.
    fn serve_one_tls<F, Fut>(
        config: std::sync::Arc<rustls::ServerConfig>,
        addr_tx: std::sync::mpsc::Sender<std::net::SocketAddr>,
        serve: F,
    ) where
        F: FnOnce(Transport) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(move || async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let stream = listener.accept().await.unwrap();
                serve(Transport::tls(stream, config).unwrap()).await;
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// A rustls client (buffered, as a terminal's would be) that trusts `der`, connected
    /// to `addr`.
    fn client_of(
        der: Vec<u8>,
        addr: std::net::SocketAddr,
    ) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
        rustls::StreamOwned::new(
            client_trusting(der),
            std::net::TcpStream::connect(addr).unwrap(),
        )
    }

    /// A rustls client connection to `127.0.0.1` that trusts `der`.
    fn client_trusting(der: Vec<u8>) -> rustls::ClientConnection {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der.into()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap()
    }

    /// Key updates (RFC 8446 §4.6.3) both ways: the client's, which asks the server to
    /// update too, and one of the server's own (as rustls asks for near the cipher's
    /// record limit), sent before the data it protects. The data survives each.
    #[test]
    fn key_updates_from_either_side_keep_the_data_flowing() {
        use std::io::{Read, Write};
        let (config, der) = self_signed();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let client = std::thread::spawn(move || {
            let mut tls = client_of(der, addr_rx.recv().unwrap());
            tls.write_all(b"one").unwrap();
            tls.flush().unwrap();
            tls.conn.refresh_traffic_keys().unwrap();
            tls.write_all(b"two").unwrap();
            tls.flush().unwrap();
            let mut got = [0u8; 6];
            tls.read_exact(&mut got).unwrap();
            let mut rest = Vec::new();
            tls.read_to_end(&mut rest).unwrap();
            (got, rest)
        });
        serve_one_tls(config, addr_tx, move |mut transport| async move {
            let mut got = BytesMut::new();
            while got.len() < 6 {
                assert!(transport.read_into(&mut got).await.unwrap() > 0);
            }
            assert_eq!(&got[..], b"onetwo", "read across the client's key update");
            transport.write_all_vectored(&[b"uno"]).await.unwrap();
            if let Transport::Tls(t) = &mut transport {
                t.session.request_key_update();
            }
            transport.write_all_vectored(&[b"dos"]).await.unwrap();
            transport.shutdown().await;
        });
        let (got, rest) = client.join().unwrap();
        assert_eq!(&got, b"unodos", "written across both key updates");
        assert!(rest.is_empty());
    }

    /// A TLS connection's state is one allocation of `TlsTransport` (rustls' connection,
    /// the socket, the buffer handles), held for the connection's whole life: it must fit
    /// mimalloc's 1,280-byte size class, or every connection holds a 1,536-byte block
    /// (the classes step by a quarter of a power of two). It was 1,288 bytes with `Vec`
    /// buffer handles; a rustls update that grows its connection fails here rather than
    /// costing every idle wss connection 256 bytes unnoticed.
    #[test]
    fn a_tls_transport_fits_the_1280_byte_size_class() {
        let size = std::mem::size_of::<TlsTransport>();
        assert!(size <= 1280, "TlsTransport is {size} bytes");
    }

    /// Ciphertext handed to the session as if read from its socket.
    fn feed(session: &mut TlsSession, bytes: &[u8]) {
        if session.cin.is_empty() {
            session.cin = cipher_pool::take_input();
        }
        session.cin[session.cin_len..session.cin_len + bytes.len()].copy_from_slice(bytes);
        session.cin_len += bytes.len();
    }

    /// A server session and rustls' own client after their handshake, in memory.
    fn handshaken_in_memory() -> (TlsSession, rustls::ClientConnection) {
        let (config, der) = self_signed();
        let mut session = TlsSession::new(config).unwrap();
        let mut client = client_trusting(der);
        let mut nothing = BytesMut::new();
        while client.is_handshaking() || session.is_handshaking() {
            let mut flight = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut flight).unwrap();
            }
            feed(&mut session, &flight);
            session.process(&mut nothing).unwrap();
            let mut answer = &session.cout[session.cout_start..session.cout_end];
            while !answer.is_empty() {
                client.read_tls(&mut answer).unwrap();
            }
            client.process_new_packets().unwrap();
            (session.cout_start, session.cout_end) = (0, 0);
        }
        assert!(nothing.is_empty());
        (session, client)
    }

    /// A 16 KiB message and its frame header take two records (RFC 8446 §5.1: at most
    /// 2^14 bytes of plaintext per record). Appending the first leaves room for a second,
    /// so when the rest of the frame arrives the frame so far is not copied to a larger
    /// buffer (it was, once per large message each way, before).
    #[test]
    fn a_frame_that_spans_two_records_stays_where_its_first_record_put_it() {
        use std::io::Write;
        let (mut session, mut client) = handshaken_in_memory();

        let message: Vec<u8> = (0..RECORD + 4).map(|i| (i % 251) as u8).collect();
        client.writer().write_all(&message).unwrap();
        let mut records = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut records).unwrap();
        }
        // Split at the first record's end: header (5 bytes) and its length field.
        let first = 5 + u16::from_be_bytes([records[3], records[4]]) as usize;
        let (one, two) = records.split_at(first);
        let mut plain = BytesMut::with_capacity(1024);
        feed(&mut session, one);
        assert_eq!(session.process(&mut plain).unwrap(), RECORD);
        assert!(
            plain.capacity() - plain.len() >= RECORD,
            "room for the next record after the first ({} of {})",
            plain.len(),
            plain.capacity()
        );
        let at = plain.as_ptr();
        feed(&mut session, two);
        assert_eq!(session.process(&mut plain).unwrap(), 4);
        assert_eq!(plain.as_ptr(), at, "the frame so far was not moved");
        assert_eq!(&plain[..], &message[..]);
    }

    /// `aligning_lead` puts the next record on a boundary, with at most one boundary's
    /// worth of bytes, and never asks for an empty record.
    #[test]
    fn aligning_lead_ends_the_record_before_a_large_part_on_a_boundary() {
        for overhead in [21, 22, 29] {
            for end in 0..3 * RECORD_ALIGN {
                for staged in 0..2 * RECORD_ALIGN {
                    let lead = aligning_lead(end, staged, overhead);
                    assert!(lead <= RECORD_ALIGN, "{end} {staged} {overhead}: {lead}");
                    let next = match (staged, lead) {
                        (0, 0) => end,
                        _ => end + staged + lead + overhead,
                    };
                    assert_eq!(next % RECORD_ALIGN, 0, "{end} {staged} {overhead}: {lead}");
                    if staged > 0 && (end + staged + overhead) % RECORD_ALIGN == 0 {
                        assert_eq!(lead, 0);
                    }
                }
            }
        }
    }

    /// Every record carrying a large part starts at an address on a `RECORD_ALIGN`
    /// boundary (the 16 KiB WebSocket frame behind its 4-byte header, and each record of
    /// a 64 KiB one), and rustls' client reads back exactly what was written: once in the
    /// output buffer the pool gives, once in one that does not start on a boundary.
    #[test]
    fn records_of_large_parts_start_on_a_boundary_and_read_back_exactly() {
        write_large_parts_and_read_back(None);
        // Keep allocating buffers of this size until one starts off a 64-byte boundary
        // (the tests' allocator, glibc's, carves them one after another, 16 bytes apart
        // modulo 64, so a few suffice).
        let mut held = Vec::new();
        let off = loop {
            let buf = vec![0u8; CIPHER_OUT_LEN].into_boxed_slice();
            if !(buf.as_ptr() as usize).is_multiple_of(RECORD_ALIGN) {
                break buf;
            }
            held.push(buf);
            assert!(
                held.len() < 64,
                "no buffer off a {RECORD_ALIGN}-byte boundary"
            );
        };
        write_large_parts_and_read_back(Some(off));
    }

    fn write_large_parts_and_read_back(output: Option<Box<[u8]>>) {
        use std::io::Read;
        let (mut session, mut client) = handshaken_in_memory();
        if let Some(output) = output {
            session.cout = output;
        }
        let small: &[u8] = b"\x81\x05hello";
        let large: Vec<u8> = (0..RECORD).map(|i| (i % 251) as u8).collect();
        let huge: Vec<u8> = (0..4 * RECORD + 100).map(|i| (i % 253) as u8).collect();
        let writes: [&[&[u8]]; 4] = [
            &[small],
            &[&[0x82, 126, 0x40, 0x00], &large],
            &[small, &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 100], &huge],
            &[&large, small, &large],
        ];
        let (mut sent, mut got) = (Vec::new(), Vec::new());
        for parts in writes {
            let total: usize = parts.iter().map(|p| p.len()).sum();
            let mut done = 0;
            while done < total {
                done += session.encrypt(parts, done).unwrap();
                let records = &session.cout[session.cout_start..session.cout_end];
                let mut at = 0;
                while at < records.len() {
                    let len = u16::from_be_bytes([records[at + 3], records[at + 4]]) as usize;
                    if len >= ALIGN_FROM {
                        let address = session.cout.as_ptr() as usize + session.cout_start + at;
                        assert_eq!(
                            address % RECORD_ALIGN,
                            0,
                            "a {len}-byte record at offset {at}"
                        );
                    }
                    at += 5 + len;
                }
                assert_eq!(at, records.len(), "whole records");
                let mut ciphertext = records;
                while !ciphertext.is_empty() {
                    client.read_tls(&mut ciphertext).unwrap();
                    client.process_new_packets().unwrap();
                    let mut chunk = [0; 4096];
                    while let Ok(n @ 1..) = client.reader().read(&mut chunk) {
                        got.extend_from_slice(&chunk[..n]);
                    }
                }
                (session.cout_start, session.cout_end) = (0, 0);
            }
            for part in parts {
                sent.extend_from_slice(part);
            }
        }
        assert!(got == sent, "the client read back what was written");
    }

    fn data_for_check() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 7 + i / 253) as u8).collect()
    }
}
