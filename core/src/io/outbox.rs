//! A connection's outgoing queue: frames waiting for the socket, bounded in bytes.
//!
//! Other tasks on the same shard push frames (a forwarded message is a fresh header
//! plus the sender's payload `Bytes`, never copied); the connection's own task writes
//! them with vectored writes, several frames per syscall. When the queue holds more
//! than its limit, senders wait for room before reading more from their own peer:
//! backpressure instead of unbounded buffering (PROTOCOL.md §6).

use super::transport::DirectSocket;
use crate::proto::{FrameHeader, HeaderBuf, Message, OpCode};
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// One frame to write: header bytes then payload bytes.
#[derive(Debug, Clone)]
pub struct OutFrame {
    /// The frame header (or, for pre-encoded frames, empty).
    pub header: HeaderBuf,
    /// The payload (or a whole pre-encoded frame).
    pub payload: Bytes,
    /// For a relayed data frame: whether it ends its message. `None` for control frames.
    pub message_end: Option<bool>,
    /// When the relay queued it (relayed data frames only; for the latency histogram).
    pub queued_at: Option<std::time::Instant>,
}

impl OutFrame {
    /// A relayed data frame.
    pub fn data(header: HeaderBuf, payload: Bytes, message_end: bool) -> OutFrame {
        OutFrame {
            header,
            payload,
            message_end: Some(message_end),
            queued_at: None,
        }
    }

    /// A frame encoded whole (a control frame from the protocol state).
    pub fn control(encoded: Bytes) -> OutFrame {
        OutFrame {
            header: HeaderBuf::EMPTY,
            payload: encoded,
            message_end: None,
            queued_at: None,
        }
    }

    /// Total bytes on the wire.
    pub fn wire_len(&self) -> usize {
        self.header.as_bytes().len() + self.payload.len()
    }
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection is gone (closed or closing).
    Closed,
}

/// The queue itself; shared as [`OutboxRef`].
#[derive(Debug)]
pub struct Outbox {
    frames: VecDeque<OutFrame>,
    /// Bytes of `frames` not yet written (including the partly written front frame).
    queued_bytes: usize,
    /// How much of the front frame is already written.
    front_written: usize,
    limit: usize,
    writer: Option<Waker>,
    room_waiters: Vec<Waker>,
    closed: bool,
    requests: ConnRequests,
    /// The plain-TCP socket to write to directly (the fast path), while the connection is
    /// open: lent by the connection's driver, which takes it back before it closes the
    /// socket; dropped by [`Outbox::close`] (see [`DirectSocket`]'s invariant).
    socket: Option<DirectSocket>,
    /// Where to record how long relayed messages waited here (set by the relay).
    latency: Option<std::sync::Arc<super::metrics::LatencyHistogram>>,
    /// When the peer last sent anything (idle timeout, pings).
    pub last_rx: std::time::Instant,
    /// Whether the relay has stopped reading from this connection because the receiver
    /// of its messages has no room (§6 backpressure): its peer is not idle then, the
    /// relay is not listening, so the idle timeout does not run.
    pub reading_paused: bool,
}

/// What the relay asks of a connection's task from outside (timers, other connections).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnRequests {
    /// Close with this code and reason.
    pub close: Option<(u16, std::borrow::Cow<'static, str>)>,
    /// Send a ping (the connection has been idle for the ping interval).
    pub ping: bool,
}

/// A shard-local handle on an outbox (`!Send`: never crosses a core).
pub type OutboxRef = Rc<RefCell<Outbox>>;

impl Outbox {
    /// An empty queue that asks senders to wait beyond `limit` bytes.
    pub fn new(limit: usize) -> OutboxRef {
        Rc::new(RefCell::new(Outbox {
            // Empty until a frame has to wait: most are written directly.
            frames: VecDeque::new(),
            queued_bytes: 0,
            front_written: 0,
            limit,
            writer: None,
            room_waiters: Vec::new(),
            closed: false,
            requests: ConnRequests::default(),
            socket: None,
            latency: None,
            last_rx: std::time::Instant::now(),
            reading_paused: false,
        }))
    }

    /// Queues a frame and wakes the writer.
    pub fn push(&mut self, frame: OutFrame) -> Result<(), PushError> {
        self.enqueue(frame)?;
        self.wake_writer();
        Ok(())
    }

    fn enqueue(&mut self, frame: OutFrame) -> Result<(), PushError> {
        if self.closed {
            return Err(PushError::Closed);
        }
        self.queued_bytes += frame.wire_len();
        self.frames.push_back(frame);
        Ok(())
    }

    fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Queues a relayed message as its original frames: a fresh server header plus the
    /// same payload bytes for each fragment (RFC 6455 §5.4: boundaries kept; never copied).
    ///
    /// `since`: when the message entered the relay (the read that completed it, for a
    /// forwarded one), the start of its time in `posrelay_relay_latency_seconds`; `None`
    /// for now (the clock is read only when this outbox records latency).
    pub fn push_message(
        &mut self,
        message: &Message,
        since: Option<std::time::Instant>,
    ) -> Result<(), PushError> {
        let first: OpCode = message.kind.into();
        let parts = message.payload.as_slice();
        let queued_at = self
            .latency
            .as_ref()
            .map(|_| since.unwrap_or_else(std::time::Instant::now));
        let backlog = !self.frames.is_empty();
        if parts.is_empty() {
            let mut frame =
                OutFrame::data(FrameHeader::server_data(first, true, 0), Bytes::new(), true);
            frame.queued_at = queued_at;
            self.enqueue(frame)?;
        }
        let last = parts.len().saturating_sub(1);
        for (i, part) in parts.iter().enumerate() {
            let opcode = if i == 0 { first } else { OpCode::Continuation };
            let header = FrameHeader::server_data(opcode, i == last, part.len());
            let mut frame = OutFrame::data(header, part.clone(), i == last);
            if i == last {
                frame.queued_at = queued_at;
            }
            self.enqueue(frame)?;
        }
        // The fast path: with no backlog, write from the sender's task right away; the
        // connection's own task is woken only for what the socket did not take (waking
        // it for nothing would cost it a poll and glommio a re-armed read).
        if !backlog {
            self.write_now();
        }
        if !self.frames.is_empty() {
            self.wake_writer();
        }
        Ok(())
    }

    /// Records, for each relayed message written from now on, how long it waited here.
    pub fn set_latency(&mut self, histogram: std::sync::Arc<super::metrics::LatencyHistogram>) {
        self.latency = Some(histogram);
    }

    /// Whether a sender may go on (below the limit, or closed: nothing to wait for).
    pub fn has_room(&self) -> bool {
        self.closed || self.queued_bytes < self.limit
    }

    /// Ready once there is room; registers `cx` otherwise.
    pub fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.has_room() {
            Poll::Ready(())
        } else {
            if !self.room_waiters.iter().any(|w| w.will_wake(cx.waker())) {
                self.room_waiters.push(cx.waker().clone());
            }
            Poll::Pending
        }
    }

    /// Asks the connection's task to close with `code` (the first request wins).
    pub fn request_close(&mut self, code: u16, reason: &'static str) {
        self.request_close_with(code, std::borrow::Cow::Borrowed(reason));
    }

    /// Like [`Self::request_close`], with a reason made at run time (§5a's
    /// `undelivered frames=N bytes=B`).
    pub fn request_close_with(&mut self, code: u16, reason: std::borrow::Cow<'static, str>) {
        if self.requests.close.is_none() {
            self.requests.close = Some((code, reason));
        }
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Asks the connection's task to send a ping.
    pub fn request_ping(&mut self) {
        self.requests.ping = true;
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Whether a request is pending.
    pub fn has_requests(&self) -> bool {
        self.requests.close.is_some() || self.requests.ping
    }

    /// Takes the pending requests (the close request stays recorded as taken).
    pub fn take_requests(&mut self) -> ConnRequests {
        std::mem::take(&mut self.requests)
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Frames waiting to be written (a partly written one counts).
    pub fn queued_frames(&self) -> usize {
        self.frames.len()
    }

    /// Marks the connection gone: later pushes fail, waiting senders are released.
    /// Returns the frames that were never written, for the caller to report.
    pub fn close(&mut self) -> Vec<OutFrame> {
        self.closed = true;
        self.socket = None;
        self.queued_bytes = 0;
        self.front_written = 0;
        for w in self.room_waiters.drain(..) {
            w.wake();
        }
        self.frames.drain(..).collect()
    }

    /// Lets senders write straight to this plain-TCP socket (see [`Outbox::write_now`]);
    /// a closed outbox refuses it (the socket is dropped at once).
    pub(crate) fn attach_socket(&mut self, socket: DirectSocket) {
        if !self.closed {
            self.socket = Some(socket);
        }
    }

    /// Takes the socket back: nothing is written to it directly from now on.
    pub(crate) fn detach_socket(&mut self) {
        self.socket = None;
    }

    /// Whether senders may write to the socket directly.
    #[cfg(test)]
    pub(crate) fn has_socket(&self) -> bool {
        self.socket.is_some()
    }

    /// The fast path: writes what is queued right now, from the sender's task, with one
    /// non-blocking `sendmsg`, so the payload is released before the sender reads again
    /// (its read buffer is then reused in place). What the socket does not take stays
    /// queued for the connection's own task, which a push has already woken.
    pub fn write_now(&mut self) {
        while !self.frames.is_empty() {
            let Some(socket) = &self.socket else { return };
            let mut slices = [std::io::IoSlice::new(&[]); 16];
            let n = self.gather(&mut slices);
            let sent = socket.send_vectored_nonblocking(&slices[..n]);
            match sent {
                Ok(written) if written > 0 => self.advance(written),
                _ => return,
            }
        }
    }

    /// Takes the first frame off the queue whole, as if written (for a connection whose
    /// frames go elsewhere than a socket: a forwarded session's stand-in, §12). Senders
    /// waiting for room are released as by a write.
    pub fn pop_front(&mut self) -> Option<OutFrame> {
        let frame = self.frames.front()?.clone();
        self.advance(frame.wire_len() - self.front_written);
        Some(frame)
    }

    /// Whether [`Outbox::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Registers the writer task to be woken by the next push.
    pub fn register_writer(&mut self, cx: &Context<'_>) {
        match &self.writer {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.writer = Some(cx.waker().clone()),
        }
    }

    /// Fills `slices` with the unwritten bytes of the first frames; returns how many.
    pub fn gather<'a>(&'a self, slices: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut skip = self.front_written;
        for frame in &self.frames {
            for part in [frame.header.as_bytes(), &frame.payload[..]] {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                if n == slices.len() {
                    return n;
                }
                slices[n] = std::io::IoSlice::new(&part[skip..]);
                skip = 0;
                n += 1;
            }
        }
        n
    }

    /// Records that `written` bytes from the front went out.
    pub fn advance(&mut self, mut written: usize) {
        self.queued_bytes -= written.min(self.queued_bytes);
        while let Some(front) = self.frames.front() {
            let left = front.wire_len() - self.front_written;
            if written < left {
                self.front_written += written;
                break;
            }
            written -= left;
            self.front_written = 0;
            if let Some(frame) = self.frames.pop_front() {
                if let (Some(at), Some(h)) = (frame.queued_at, &self.latency) {
                    h.record(at.elapsed());
                }
            }
        }
        if self.has_room() {
            for w in self.room_waiters.drain(..) {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{FrameHeader, OpCode};

    fn frame(payload: &'static [u8]) -> OutFrame {
        let header = FrameHeader {
            fin: true,
            opcode: OpCode::Binary,
            mask: None,
            payload_len: payload.len() as u64,
        }
        .encode();
        OutFrame::data(header, Bytes::from_static(payload), true)
    }

    #[test]
    fn gather_and_partial_advance_cover_every_byte_once() {
        let ob = Outbox::new(1 << 20);
        let mut ob = ob.borrow_mut();
        ob.push(frame(b"hello")).unwrap();
        ob.push(frame(b"world!")).unwrap();
        let total = ob.queued_bytes();
        assert_eq!(total, 7 + 8);
        let mut written = Vec::new();
        // Write 3 bytes at a time, as a slow socket would.
        while !ob.is_empty() {
            let mut slices = [std::io::IoSlice::new(&[]); 8];
            let n = ob.gather(&mut slices);
            let all: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
            let take = all.len().min(3);
            written.extend_from_slice(&all[..take]);
            ob.advance(take);
        }
        assert_eq!(written, b"\x82\x05hello\x82\x06world!");
        assert_eq!(ob.queued_bytes(), 0);
        assert!(ob.frames.is_empty() && ob.front_written == 0);
    }

    #[test]
    fn room_is_reported_against_the_limit_and_close_returns_the_rest() {
        let ob = Outbox::new(10);
        let mut ob = ob.borrow_mut();
        ob.push(frame(b"12345678")).unwrap();
        assert!(!ob.has_room());
        let rest = ob.close();
        assert_eq!(rest.len(), 1);
        assert!(ob.has_room());
        assert_eq!(ob.push(frame(b"x")), Err(PushError::Closed));
    }

    /// A closed outbox writes nothing: not to the socket it had (dropped by `close`), and
    /// not to whatever socket later gets the same descriptor number.
    #[test]
    fn a_write_after_close_does_nothing() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        use std::os::unix::net::UnixStream;
        let (a, mut b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let ob = Outbox::new(1 << 20);
        #[allow(unsafe_code)]
        // SAFETY: `a` outlives the outbox's use of the socket (closed below, then `a`).
        let socket = unsafe { DirectSocket::new(a.as_raw_fd()) };
        ob.borrow_mut().attach_socket(socket);
        let message = |text: &'static [u8]| Message {
            kind: crate::proto::MessageKind::Binary,
            payload: crate::proto::Payload::Single(Bytes::from_static(text)),
        };
        ob.borrow_mut()
            .push_message(&message(b"before"), None)
            .unwrap();
        let mut got = [0u8; 64];
        assert_eq!(b.read(&mut got).unwrap(), 8, "written directly while open");
        assert_eq!(&got[..8], b"\x82\x06before");
        let unsent = ob.borrow_mut().close();
        assert!(unsent.is_empty());
        assert!(!ob.borrow().has_socket(), "close drops the socket");
        assert_eq!(
            ob.borrow_mut().push_message(&message(b"after"), None),
            Err(PushError::Closed)
        );
        ob.borrow_mut().write_now();
        // A socket attached after close is refused too.
        #[allow(unsafe_code)]
        // SAFETY: as above.
        let late = unsafe { DirectSocket::new(a.as_raw_fd()) };
        ob.borrow_mut().attach_socket(late);
        assert!(!ob.borrow().has_socket());
        ob.borrow_mut().write_now();
        drop(a);
        // The peer sees the end of the stream and nothing after "before".
        b.set_nonblocking(false).unwrap();
        assert_eq!(b.read(&mut got).unwrap(), 0);
    }
}
