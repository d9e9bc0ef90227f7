//! The per-connection state machine: decoder + assembler + auto-pong + the
//! close handshake (RFC 6455 §5.5, §7.1).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::close::{encode_close_payload, CloseCode};
use super::decoder::FrameDecoder;
use super::error::ProtocolError;
use super::frame::{encode_frame, FrameHeader, HeaderBuf, MAX_CONTROL_PAYLOAD};
use super::message::{Event, MessageAssembler};
use super::opcode::OpCode;
use super::Role;

/// Size limits of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload accepted, checked on the header before the payload is read.
    pub max_frame_payload: u64,
    /// Largest message (sum of its fragments) accepted.
    pub max_message: usize,
}

impl Default for Limits {
    /// 1 MiB frames and 1 MiB messages.
    fn default() -> Limits {
        Limits {
            max_frame_payload: 1 << 20,
            max_message: 1 << 20,
        }
    }
}

/// Where the close handshake stands (RFC 6455 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseState {
    /// Neither side has sent a Close frame.
    Open,
    /// We queued our Close and wait for the peer's.
    CloseSent,
    /// The peer's Close arrived and our answer is not queued. [`Connection`]
    /// queues its echo at once, so it never reports this state itself.
    CloseReceived,
    /// Both Close frames exchanged: the server now closes the TCP connection (§7.1.1).
    Closed,
}

/// Supplies masking keys for frames a client sends (RFC 6455 §5.3: each key
/// MUST be fresh and unpredictable, so real clients pass a CSPRNG here).
pub type MaskSource = Box<dyn FnMut() -> [u8; 4] + Send>;

/// One WebSocket connection after the upgrade, without I/O: feed it the bytes
/// read ([`Connection::handle_read`]), write what it hands out
/// ([`Connection::poll_transmit`]).
pub struct Connection {
    role: Role,
    limits: Limits,
    decoder: FrameDecoder,
    assembler: MessageAssembler,
    close_sent: bool,
    close_received: bool,
    error: Option<ProtocolError>,
    transmit: VecDeque<Bytes>,
    mask_source: Option<MaskSource>,
    /// Fallback key generator state for `Role::Client` without a mask source.
    xorshift: u32,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("limits", &self.limits)
            .field("close_state", &self.close_state())
            .field("error", &self.error)
            .field("queued", &self.transmit.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection in `role` with `limits`. Frame payloads are refused over
    /// the smaller of the two limits (a frame cannot be bigger than its message).
    ///
    /// In `Role::Client` the masking keys come from a fixed-seed generator
    /// until [`Connection::with_mask_rng`] supplies a real one: fine for tests
    /// and benchmarks, not for a client facing untrusted intermediaries.
    pub fn new(role: Role, limits: Limits) -> Connection {
        let frame_limit = limits.max_frame_payload.min(limits.max_message as u64);
        Connection {
            role,
            limits,
            decoder: FrameDecoder::new(role, frame_limit),
            assembler: MessageAssembler::new(limits.max_message),
            close_sent: false,
            close_received: false,
            error: None,
            transmit: VecDeque::new(),
            mask_source: None,
            xorshift: 0x9E37_79B9,
        }
    }

    /// Uses `rng` for the masking keys of the frames we send as a client.
    pub fn with_mask_rng(mut self, rng: MaskSource) -> Connection {
        self.mask_source = Some(rng);
        self
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The limits this connection enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The error that failed the connection, if any.
    pub fn error(&self) -> Option<&ProtocolError> {
        self.error.as_ref()
    }

    /// How many more bytes `buf` needs before the next frame is complete (0:
    /// call [`Connection::handle_read`] now). Lets the io layer size its reads.
    pub fn needed(&self, buf: &[u8]) -> usize {
        self.decoder.needed(buf)
    }

    /// Decodes and assembles from `buf`; returns the next event, or `Ok(None)`
    /// when more bytes are needed. Call again until `Ok(None)`.
    ///
    /// A Ping queues its Pong; a Close queues our echo (if we had not sent a
    /// Close yet). On error our Close with [`ProtocolError::close_code`] is
    /// queued and every later call returns the same error: flush
    /// [`Connection::poll_transmit`], then drop the TCP connection (§7.1.7).
    pub fn handle_read(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, ProtocolError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        loop {
            if self.close_received {
                // RFC 6455 §5.5.1: the peer MUST NOT send anything after its Close.
                if buf.is_empty() {
                    return Ok(None);
                }
                return Err(self.fail(ProtocolError::DataAfterClose));
            }
            let frame = match self.decoder.decode(buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(e)),
            };
            match self.assembler.handle_frame(frame) {
                Ok(None) => continue,
                Ok(Some(event)) => {
                    self.on_event(&event);
                    return Ok(Some(event));
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    fn on_event(&mut self, event: &Event) {
        match event {
            // RFC 6455 §5.5.2: a Ping is answered with a Pong carrying the same data.
            // Nothing is sent after our Close (§5.5.1), so no Pong then.
            Event::Ping(data) if !self.close_sent => self.queue(OpCode::Pong, data),
            Event::Close(frame) => {
                self.close_received = true;
                if !self.close_sent {
                    // RFC 6455 §5.5.1: reply with a Close, typically echoing the code.
                    match frame {
                        Some(frame) => self.queue_close(frame.code, ""),
                        None => self.queue(OpCode::Close, &[]),
                    }
                    self.close_sent = true;
                }
            }
            _ => {}
        }
    }

    /// Records `error`, queues our Close for it (unless one was sent) and returns it.
    fn fail(&mut self, error: ProtocolError) -> ProtocolError {
        if !self.close_sent {
            self.queue_close(error.close_code(), &error.to_string());
            self.close_sent = true;
        }
        self.error = Some(error.clone());
        error
    }

    fn queue_close(&mut self, code: CloseCode, reason: &str) {
        let body = encode_close_payload(code, reason);
        self.queue(OpCode::Close, body.as_bytes());
    }

    fn queue(&mut self, opcode: OpCode, payload: &[u8]) {
        let mask = match self.role {
            Role::Server => None,
            Role::Client => Some(self.next_mask()),
        };
        self.transmit.push_back(encode_frame(opcode, payload, mask));
    }

    fn next_mask(&mut self) -> [u8; 4] {
        if let Some(rng) = self.mask_source.as_mut() {
            return rng();
        }
        // xorshift32: deterministic placeholder, see `Connection::new`.
        let mut x = self.xorshift;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.xorshift = x;
        x.to_le_bytes()
    }

    /// The next control frame to write (header and payload, masked for a
    /// client), in order. `None` when nothing is queued.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// Queues our Close with `code` and `reason` (cut to fit 125 bytes), once:
    /// later calls, or calls after we already answered the peer's Close, do
    /// nothing. `code` must be valid on the wire (not 1005/1006/1015).
    pub fn send_close(&mut self, code: CloseCode, reason: &str) {
        if !self.close_sent {
            self.queue_close(code, reason);
            self.close_sent = true;
        }
    }

    /// Queues a Ping with `payload` (cut to 125 bytes, RFC 6455 §5.5), unless
    /// our Close was sent already.
    pub fn send_ping(&mut self, payload: &[u8]) {
        if !self.close_sent {
            let cut = payload.len().min(MAX_CONTROL_PAYLOAD as usize);
            self.queue(OpCode::Ping, &payload[..cut]);
        }
    }

    /// Where the close handshake stands.
    pub fn close_state(&self) -> CloseState {
        match (self.close_sent, self.close_received) {
            (false, false) => CloseState::Open,
            (true, false) => CloseState::CloseSent,
            (false, true) => CloseState::CloseReceived,
            (true, true) => CloseState::Closed,
        }
    }

    /// The header for forwarding a data payload of `len` bytes unchanged:
    /// write it, then the payload `Bytes` (e.g. with `writev`), no copy.
    ///
    /// Always unmasked, i.e. what a server sends; a client must mask and
    /// therefore copy: see [`super::frame::encode_client_frame`].
    pub fn encode_data_header(&self, opcode: OpCode, fin: bool, len: usize) -> HeaderBuf {
        FrameHeader {
            fin,
            opcode,
            mask: None,
            payload_len: len as u64,
        }
        .encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::close::CloseFrame;
    use crate::proto::frame::encode_client_frame;
    use crate::proto::message::{Message, MessageKind, Payload};
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn client_frame(op: OpCode, fin: bool, payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        encode_client_frame(op, fin, payload, KEY, &mut out);
        out
    }

    fn server() -> Connection {
        Connection::new(Role::Server, Limits::default())
    }

    /// Decodes a frame we queued, as the peer (a client) would.
    fn sent_by_server(bytes: Bytes) -> (OpCode, Bytes) {
        let mut buf = BytesMut::from(&bytes[..]);
        let f = FrameDecoder::new(Role::Client, 1 << 20)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert!(buf.is_empty());
        (f.header.opcode, f.payload)
    }

    fn close_code_sent(conn: &mut Connection) -> Option<CloseCode> {
        let (op, body) = sent_by_server(conn.poll_transmit()?);
        assert_eq!(op, OpCode::Close);
        CloseFrame::parse(&body).unwrap().map(|c| c.code)
    }

    /// A connection can be handed to another shard before it starts.
    const _: () = {
        const fn assert_send<T: Send>() {}
        assert_send::<Connection>();
    };

    #[test]
    fn ping_is_answered_with_pong() {
        let mut c = server();
        let mut buf = client_frame(OpCode::Ping, true, b"Hello");
        let ev = c.handle_read(&mut buf).unwrap();
        assert_eq!(ev, Some(Event::Ping(Bytes::from_static(b"Hello"))));
        let pong = c.poll_transmit().unwrap();
        assert_eq!(&pong[..], &[0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(c.poll_transmit(), None);
        assert_eq!(c.handle_read(&mut buf), Ok(None));
    }

    #[test]
    fn close_is_echoed_and_closes() {
        let mut c = server();
        let mut buf = client_frame(OpCode::Close, true, b"\x0f\xa0bye");
        let Some(Event::Close(Some(cf))) = c.handle_read(&mut buf).unwrap() else {
            panic!("no close")
        };
        assert_eq!(cf.code, CloseCode::REPLACED);
        assert_eq!(c.close_state(), CloseState::Closed);
        assert_eq!(close_code_sent(&mut c), Some(CloseCode::REPLACED));
        assert_eq!(c.poll_transmit(), None);
    }

    #[test]
    fn empty_close_is_echoed_empty() {
        let mut c = server();
        let mut buf = client_frame(OpCode::Close, true, b"");
        assert_eq!(c.handle_read(&mut buf), Ok(Some(Event::Close(None))));
        assert_eq!(close_code_sent(&mut c), None);
    }

    #[test]
    fn our_close_first_then_theirs() {
        let mut c = server();
        c.send_close(CloseCode::GOING_AWAY, "shutdown");
        c.send_close(CloseCode::NORMAL, "twice is ignored");
        assert_eq!(c.close_state(), CloseState::CloseSent);
        assert_eq!(close_code_sent(&mut c), Some(CloseCode::GOING_AWAY));
        assert_eq!(c.poll_transmit(), None);
        // Data may still arrive before their Close; no Pong after our Close.
        let mut buf = client_frame(OpCode::Ping, true, b"late");
        buf.extend_from_slice(&client_frame(OpCode::Close, true, b"\x03\xe9"));
        assert!(matches!(c.handle_read(&mut buf), Ok(Some(Event::Ping(_)))));
        assert!(matches!(
            c.handle_read(&mut buf),
            Ok(Some(Event::Close(Some(_))))
        ));
        assert_eq!(c.close_state(), CloseState::Closed);
        assert_eq!(c.poll_transmit(), None, "no second close, no pong");
    }

    #[test]
    fn data_after_close_is_an_error() {
        let mut c = server();
        let mut buf = client_frame(OpCode::Close, true, b"");
        buf.extend_from_slice(&client_frame(OpCode::Text, true, b"x"));
        assert!(matches!(
            c.handle_read(&mut buf),
            Ok(Some(Event::Close(None)))
        ));
        let e = c.handle_read(&mut buf).unwrap_err();
        assert_eq!(e, ProtocolError::DataAfterClose);
        // Only the echo of their Close goes out, no second Close.
        assert_eq!(close_code_sent(&mut c), None);
        assert_eq!(c.poll_transmit(), None);
    }

    #[test]
    fn errors_queue_close_and_stick() {
        let mut c = server();
        let mut buf = BytesMut::from(&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o'][..]);
        let e = c.handle_read(&mut buf).unwrap_err();
        assert_eq!(e, ProtocolError::UnmaskedClientFrame);
        assert_eq!(c.close_state(), CloseState::CloseSent);
        assert_eq!(c.error(), Some(&e));
        assert_eq!(close_code_sent(&mut c), Some(CloseCode::PROTOCOL_ERROR));
        assert_eq!(c.handle_read(&mut buf), Err(e));
        assert_eq!(c.poll_transmit(), None);
    }

    /// Every rule the connection enforces, with the close code it answers.
    #[test]
    fn each_rule_fails_with_its_close_code() {
        let mut too_big = BytesMut::from(&[0x82, 0xFF, 0, 0, 0, 0, 0, 0x20, 0, 0][..]);
        too_big.extend_from_slice(&KEY);
        let mut long_ping = BytesMut::from(&[0x89, 0xFE, 0, 126][..]);
        long_ping.extend_from_slice(&KEY);
        let cases: Vec<(BytesMut, ProtocolError, u16)> = vec![
            (
                BytesMut::from(&[0xC1, 0x80, 0, 0, 0, 0][..]),
                ProtocolError::ReservedBits { bits: 4 },
                1002,
            ),
            (
                BytesMut::from(&[0x83, 0x80, 0, 0, 0, 0][..]),
                ProtocolError::ReservedOpcode(3),
                1002,
            ),
            (
                BytesMut::from(&[0x8B, 0x80, 0, 0, 0, 0][..]),
                ProtocolError::ReservedOpcode(0xB),
                1002,
            ),
            (long_ping, ProtocolError::ControlFrameTooLong(126), 1002),
            (
                client_frame(OpCode::Ping, false, b""),
                ProtocolError::FragmentedControlFrame,
                1002,
            ),
            (
                BytesMut::from(&[0x82, 0x00][..]),
                ProtocolError::UnmaskedClientFrame,
                1002,
            ),
            (
                BytesMut::from(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1][..]),
                ProtocolError::PayloadLengthTopBit,
                1002,
            ),
            (
                too_big,
                ProtocolError::MessageTooBig {
                    limit: 1 << 20,
                    len: 0x20_0000,
                },
                1009,
            ),
            (
                client_frame(OpCode::Continuation, true, b"x"),
                ProtocolError::UnexpectedContinuation,
                1002,
            ),
            (
                {
                    let mut b = client_frame(OpCode::Text, false, b"a");
                    b.extend_from_slice(&client_frame(OpCode::Binary, true, b"b"));
                    b
                },
                ProtocolError::ExpectedContinuation {
                    opcode: OpCode::Binary,
                },
                1002,
            ),
            (
                client_frame(OpCode::Text, true, b"\xFF"),
                ProtocolError::InvalidUtf8,
                1007,
            ),
            (
                client_frame(OpCode::Close, true, b"\x03\xEE"),
                ProtocolError::InvalidCloseCode(1006),
                1002,
            ),
            (
                client_frame(OpCode::Close, true, b"\x03"),
                ProtocolError::InvalidClosePayloadLength,
                1002,
            ),
            (
                client_frame(OpCode::Close, true, b"\x03\xE8\xFF"),
                ProtocolError::InvalidCloseReasonUtf8,
                1007,
            ),
        ];
        for (mut buf, want, code) in cases {
            let mut c = server();
            let got = loop {
                match c.handle_read(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("no error for {want:?}"),
                    Err(e) => break e,
                }
            };
            assert_eq!(got, want);
            assert_eq!(close_code_sent(&mut c), Some(CloseCode(code)), "{want:?}");
        }
    }

    #[test]
    fn message_limit_caps_frame_limit() {
        let limits = Limits {
            max_frame_payload: 1 << 20,
            max_message: 10,
        };
        let mut c = Connection::new(Role::Server, limits);
        // Header only: refused before any payload arrives.
        let mut buf = BytesMut::from(&[0x82, 0x8B, 1, 2, 3, 4][..]);
        let e = c.handle_read(&mut buf).unwrap_err();
        assert_eq!(e, ProtocolError::MessageTooBig { limit: 10, len: 11 });
    }

    #[test]
    fn fragmented_message_with_ping_between() {
        let mut c = server();
        let mut buf = client_frame(OpCode::Text, false, b"Hel");
        buf.extend_from_slice(&client_frame(OpCode::Ping, true, b"p"));
        buf.extend_from_slice(&client_frame(OpCode::Continuation, true, b"lo"));
        assert!(matches!(c.handle_read(&mut buf), Ok(Some(Event::Ping(_)))));
        let Ok(Some(Event::Message(m))) = c.handle_read(&mut buf) else {
            panic!()
        };
        assert_eq!(m.kind, MessageKind::Text);
        assert_eq!(&m.payload.to_bytes()[..], b"Hello");
        assert_eq!(c.handle_read(&mut buf), Ok(None));
        assert!(c.poll_transmit().is_some(), "pong queued");
    }

    #[test]
    fn client_role_masks_what_it_sends() {
        let mut keys = [[1, 2, 3, 4], [5, 6, 7, 8]].into_iter().cycle();
        let mut c = Connection::new(Role::Client, Limits::default())
            .with_mask_rng(Box::new(move || keys.next().unwrap_or_default()));
        c.send_ping(b"hi");
        c.send_close(CloseCode::NORMAL, "");
        let mut dec = FrameDecoder::new(Role::Server, 125);
        let mut buf = BytesMut::from(&c.poll_transmit().unwrap()[..]);
        let ping = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            (ping.header.mask, &ping.payload[..]),
            (Some([1, 2, 3, 4]), &b"hi"[..])
        );
        let mut buf = BytesMut::from(&c.poll_transmit().unwrap()[..]);
        let close = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(close.header.mask, Some([5, 6, 7, 8]));
        assert_eq!(&close.payload[..], b"\x03\xe8");
        // As a client, masked frames from the server are refused.
        let mut buf = client_frame(OpCode::Text, true, b"x");
        assert_eq!(
            c.handle_read(&mut buf),
            Err(ProtocolError::MaskedServerFrame)
        );
    }

    #[test]
    fn data_header_for_forwarding() {
        let c = server();
        let h = c.encode_data_header(OpCode::Binary, true, 256);
        assert_eq!(h.as_bytes(), &[0x82, 0x7E, 0x01, 0x00]);
        let h = c.encode_data_header(MessageKind::Text.into(), true, 5);
        assert_eq!(h.as_bytes(), &[0x81, 0x05]);
    }

    #[test]
    fn send_ping_truncates_to_125() {
        let mut c = server();
        c.send_ping(&[0u8; 200]);
        let (op, body) = sent_by_server(c.poll_transmit().unwrap());
        assert_eq!((op, body.len()), (OpCode::Ping, 125));
    }

    /// A simplified, copy-everything view of an event, for comparing runs.
    type Flat = (u8, Vec<u8>);

    /// Events, the error that ended the run, and the frames queued for sending.
    type Run = (Vec<Flat>, Option<ProtocolError>, Vec<Bytes>);

    fn flat(ev: &Event) -> Flat {
        match ev {
            Event::Message(Message { kind, payload }) => (*kind as u8, payload.to_bytes().to_vec()),
            Event::Ping(b) => (10, b.to_vec()),
            Event::Pong(b) => (11, b.to_vec()),
            Event::Close(c) => (
                12,
                c.as_ref()
                    .map(|c| c.code.0.to_be_bytes().to_vec())
                    .unwrap_or_default(),
            ),
        }
    }

    fn run(stream: &[u8], cuts: &[usize], limits: Limits) -> Run {
        let mut c = Connection::new(Role::Server, limits);
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        let mut start = 0;
        let mut points = cuts.to_vec();
        points.push(stream.len());
        let mut err = None;
        'outer: for p in points {
            buf.extend_from_slice(&stream[start..p]);
            start = p;
            loop {
                match c.handle_read(&mut buf) {
                    Ok(Some(ev)) => events.push(flat(&ev)),
                    Ok(None) => break,
                    Err(e) => {
                        err = Some(e);
                        break 'outer;
                    }
                }
            }
        }
        let sent = std::iter::from_fn(|| c.poll_transmit()).collect();
        (events, err, sent)
    }

    fn arb_frame() -> impl Strategy<Value = (OpCode, bool, Vec<u8>)> {
        prop_oneof![
            (
                prop_oneof![
                    Just(OpCode::Continuation),
                    Just(OpCode::Text),
                    Just(OpCode::Binary)
                ],
                any::<bool>(),
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..50),
                    ".{0,20}".prop_map(String::into_bytes)
                ],
            ),
            (
                prop_oneof![Just(OpCode::Ping), Just(OpCode::Pong), Just(OpCode::Close)],
                Just(true),
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..10),
                    Just(b"\x03\xe8ok".to_vec())
                ],
            ),
        ]
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(frames in proptest::collection::vec(arb_frame(), 1..10),
                                              cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..10),
                                              max_message in prop_oneof![Just(1usize << 20), 0usize..120]) {
            let mut stream = BytesMut::new();
            for (op, fin, payload) in &frames {
                encode_client_frame(*op, *fin, payload, KEY, &mut stream);
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.sort_unstable();
            let limits = Limits { max_frame_payload: 1 << 20, max_message };
            let whole = run(&stream, &[], limits);
            let chunked = run(&stream, &points, limits);
            prop_assert_eq!(&chunked, &whole);
            // Messages respect the limit, text is UTF-8.
            for (kind, bytes) in &whole.0 {
                if *kind <= 1 {
                    prop_assert!(bytes.len() <= max_message);
                }
                if *kind == MessageKind::Text as u8 {
                    prop_assert!(std::str::from_utf8(bytes).is_ok());
                }
            }
        }
    }

    #[test]
    fn single_payload_kept_whole() {
        let mut c = server();
        let mut buf = client_frame(OpCode::Binary, true, b"abc");
        let Ok(Some(Event::Message(m))) = c.handle_read(&mut buf) else {
            panic!()
        };
        assert!(matches!(m.payload, Payload::Single(_)));
    }
}
