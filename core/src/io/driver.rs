//! The socket side of one upgraded connection: a single task reads into the
//! connection's buffer and writes its [`Outbox`], both from one poll, so a peer that
//! waits for room in our outbox never stops us from draining our own (no deadlock
//! when both directions are full).

use super::outbox::OutboxRef;
use super::transport::{send_vectored_nonblocking, DirectSocket, Transport};
use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

/// How many slices one vectored write gathers (header and payload per frame).
const GATHER: usize = 32;

/// Smallest read: an idle connection keeps a buffer about this size.
pub const MIN_READ: usize = 1024;
/// Largest single read (a big frame is read in chunks of this).
pub const MAX_READ: usize = 64 * 1024;
/// An empty read buffer that grew beyond this (a large message) is given back.
const SHRINK_ABOVE: usize = 64 * 1024;
/// How many spare read buffers a shard keeps for connections that wake up.
const POOL_MAX: usize = 128;

/// Read buffers of connections that are waiting for bytes. A connection with nothing
/// buffered gives its buffer back when its read would block and takes one when it
/// wakes, so an idle connection holds no read buffer (its kernel socket buffers it)
/// while a busy shard reuses the same few buffers without allocating.
mod read_pool {
    use super::{BytesMut, MIN_READ, POOL_MAX, SHRINK_ABOVE};
    use std::cell::RefCell;

    thread_local! {
        static PLAIN: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// A buffer for decoded bytes (at least [`MIN_READ`] of room).
    pub fn take() -> BytesMut {
        PLAIN
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(MIN_READ))
    }

    /// Takes `buf` back if it is empty and of a reusable size (else it is freed).
    pub fn give(buf: &mut BytesMut) {
        if !buf.is_empty() || buf.capacity() == 0 {
            return;
        }
        // Frames were split off its front: get its whole allocation back in place when
        // they are gone (no copy, no allocation). While a frame still waits in some
        // outbox the connection keeps the buffer (as it would without the pool), and
        // reclaims it at its next read.
        if buf.capacity() < MIN_READ && !buf.try_reclaim(MIN_READ) {
            return;
        }
        let buf = std::mem::take(buf);
        if (MIN_READ..=SHRINK_ABOVE).contains(&buf.capacity()) {
            PLAIN.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(buf);
                }
            });
        }
    }
}

/// Why [`ConnDriver::read`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// New bytes are in `rbuf`.
    Data,
    /// The peer closed its side.
    Eof,
    /// The relay asked something of this connection (close, ping).
    Requests,
}

/// Reads into `rbuf`, writes the outbox.
pub struct ConnDriver {
    transport: Transport,
    /// What this connection will write.
    pub outbox: OutboxRef,
    /// Bytes read and not yet decoded.
    pub rbuf: BytesMut,
    /// How many bytes the next read asks for (see [`ConnDriver::prepare_read`]).
    read_size: usize,
}

impl ConnDriver {
    /// Sizes the next read from what the protocol still needs for its next frame:
    /// small for small messages (an idle connection keeps a small buffer), large for a
    /// large frame; an empty buffer left large by a big message is given back.
    pub fn prepare_read(&mut self, needed: usize) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > SHRINK_ABOVE {
            self.rbuf = BytesMut::with_capacity(MIN_READ);
        }
        self.read_size = needed.clamp(MIN_READ, MAX_READ);
    }

    /// Takes over a socket after its handshake; `leftover` are bytes already read.
    pub fn new(transport: Transport, leftover: BytesMut, outbox: OutboxRef) -> ConnDriver {
        if let Transport::Plain(stream) = &transport {
            #[allow(unsafe_code)]
            // SAFETY: the driver owns `stream` (moved into it below) and keeps it open
            // until it is dropped; its `Drop` takes this socket back out of the outbox
            // before the stream field is dropped and the descriptor closed.
            let socket = unsafe { DirectSocket::new(std::os::fd::AsRawFd::as_raw_fd(stream)) };
            outbox.borrow_mut().attach_socket(socket);
        }
        // The handshake read in large chunks; an idle connection should not keep that
        // (an empty buffer is taken from the shard's pool at the first read).
        let rbuf = if leftover.is_empty() {
            BytesMut::new()
        } else {
            leftover
        };
        ConnDriver {
            transport,
            outbox,
            rbuf,
            read_size: MIN_READ,
        }
    }

    /// The TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        self.transport.tcp()
    }

    /// Whether this connection holds no read buffer and no TLS buffer (what an idle
    /// connection should hold).
    pub fn holds_no_buffer(&self) -> bool {
        self.rbuf.capacity() == 0
            && match &self.transport {
                Transport::Plain(_) => true,
                Transport::Tls(t) => t.session().holds_no_buffer(),
            }
    }

    /// Writes queued frames until the outbox is empty or the socket is full.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut outbox = self.outbox.borrow_mut();
        outbox.register_writer(cx);
        match &mut self.transport {
            Transport::Plain(stream) => loop {
                if outbox.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let mut slices = [IoSlice::new(&[]); GATHER];
                let n = outbox.gather(&mut slices);
                match send_vectored_nonblocking(stream, &slices[..n]) {
                    Ok(written) => {
                        outbox.advance(written);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Let glommio wait for writability (it retries the send first).
                        let first = slices[0].to_vec();
                        match Pin::new(&mut *stream).poll_write(cx, &first) {
                            Poll::Ready(Ok(written)) => outbox.advance(written),
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            Transport::Tls(tls) => loop {
                let (stream, session) = tls.parts_mut();
                // Ciphertext first: it was produced from frames already taken.
                match session.poll_write_out(cx, stream) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                if outbox.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let mut slices = [IoSlice::new(&[]); GATHER];
                let n = outbox.gather(&mut slices);
                let taken = session.encrypt(&slices[..n], 0)?;
                if taken == 0 {
                    return Poll::Ready(Err(io::Error::other("TLS encryption took nothing")));
                }
                outbox.advance(taken);
            },
        }
    }

    /// Appends what the socket has (after flushing what it can); `Ok(0)` is end of stream.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() == 0 {
            self.rbuf = read_pool::take();
        }
        match &mut self.transport {
            Transport::Plain(stream) => {
                let start = self.rbuf.len();
                self.rbuf.resize(start + self.read_size, 0);
                let r = Pin::new(&mut *stream).poll_read(cx, &mut self.rbuf[start..]);
                let n = match &r {
                    Poll::Ready(Ok(n)) => *n,
                    _ => 0,
                };
                self.rbuf.truncate(start + n);
                if r.is_pending() {
                    read_pool::give(&mut self.rbuf);
                }
                r
            }
            Transport::Tls(tls) => {
                let (stream, session) = tls.parts_mut();
                let had_output = session.has_output();
                let r = session.poll_read(cx, stream, &mut self.rbuf);
                if r.is_pending() {
                    read_pool::give(&mut self.rbuf);
                }
                if !had_output && session.has_output() {
                    // Handshake or key-update records: have the flush path send them.
                    cx.waker().wake_by_ref();
                }
                r
            }
        }
    }

    /// Reads more bytes into `rbuf`, writing the outbox meanwhile; returns early when the
    /// relay asked something of this connection (see [`super::outbox::ConnRequests`]).
    pub async fn read(&mut self) -> io::Result<ReadOutcome> {
        poll_fn(|cx| {
            if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            if self.outbox.borrow().has_requests() {
                return Poll::Ready(Ok(ReadOutcome::Requests));
            }
            self.poll_read(cx).map(|r| {
                r.map(|n| {
                    if n == 0 {
                        ReadOutcome::Eof
                    } else {
                        ReadOutcome::Data
                    }
                })
            })
        })
        .await
    }

    /// Waits until `peer` has room (backpressure), writing our own outbox meanwhile.
    pub async fn wait_for_room(&mut self, peer: &OutboxRef) -> io::Result<()> {
        poll_fn(|cx| {
            if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            peer.borrow_mut().poll_room(cx).map(Ok)
        })
        .await
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Flushes, then half-closes (TLS: close_notify first).
    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        self.transport.shutdown().await;
    }
}

impl Drop for ConnDriver {
    fn drop(&mut self) {
        // `DirectSocket`'s invariant: the outbox must not keep the descriptor past this
        // point, where `transport` (the socket) is dropped and closed.
        self.outbox.borrow_mut().detach_socket();
    }
}
