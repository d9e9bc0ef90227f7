//! Message assembly (RFC 6455 §5.4): data frames into messages, control frames
//! passed through as events, text validated as it arrives.

use bytes::{BufMut, Bytes, BytesMut};

use super::close::CloseFrame;
use super::error::ProtocolError;
use super::frame::Frame;
use super::opcode::OpCode;
use super::utf8::Utf8Validator;

/// Fragments kept as separate `Bytes` (zero copy) before further fragments of
/// the same message are copied into one spill buffer. This bounds the
/// fragment list, and the read buffers small fragments keep alive, no matter
/// how finely a peer fragments its messages.
pub const MAX_KEPT_FRAGMENTS: usize = 32;

/// The type of a data message (RFC 6455 §5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Text: the payload is valid UTF-8.
    Text,
    /// Binary: arbitrary bytes.
    Binary,
}

impl From<MessageKind> for OpCode {
    fn from(kind: MessageKind) -> OpCode {
        match kind {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        }
    }
}

/// A message's payload, kept as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// An unfragmented message: the frame's own payload bytes (zero copy).
    Single(Bytes),
    /// A fragmented message: its fragments in order, empty ones dropped; past
    /// [`MAX_KEPT_FRAGMENTS`] the rest are joined into one last piece.
    Fragments(Vec<Bytes>),
}

impl Payload {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.iter().map(Bytes::len).sum()
    }

    /// Whether the payload has no bytes.
    pub fn is_empty(&self) -> bool {
        self.iter().all(Bytes::is_empty)
    }

    /// The pieces in order (one for [`Payload::Single`]).
    pub fn iter(&self) -> std::slice::Iter<'_, Bytes> {
        match self {
            Payload::Single(bytes) => std::slice::from_ref(bytes).iter(),
            Payload::Fragments(pieces) => pieces.iter(),
        }
    }

    /// The payload as one `Bytes`: free for a single piece, a copy otherwise.
    pub fn to_bytes(&self) -> Bytes {
        match self.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = BytesMut::with_capacity(self.len());
                for piece in many {
                    out.put_slice(piece);
                }
                out.freeze()
            }
        }
    }

    /// The pieces as a slice.
    pub fn as_slice(&self) -> &[Bytes] {
        match self {
            Payload::Single(bytes) => std::slice::from_ref(bytes),
            Payload::Fragments(pieces) => pieces,
        }
    }
}

/// A complete data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Text or binary.
    pub kind: MessageKind,
    /// The message's bytes (validated UTF-8 for text).
    pub payload: Payload,
}

/// What a frame (or the last frame of a message) amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete data message.
    Message(Message),
    /// A Ping with its application data (RFC 6455 §5.5.2).
    Ping(Bytes),
    /// A Pong with its application data (RFC 6455 §5.5.3).
    Pong(Bytes),
    /// A Close frame: `None` when it had no body (RFC 6455 §5.5.1).
    Close(Option<CloseFrame>),
}

/// A fragmented message being received.
#[derive(Debug)]
struct Partial {
    kind: MessageKind,
    len: usize,
    kept: Vec<Bytes>,
    spill: BytesMut,
}

/// Turns frames into [`Event`]s, enforcing the fragmentation rules, the
/// message size limit and UTF-8 validity of text.
#[derive(Debug)]
pub struct MessageAssembler {
    max_message: usize,
    /// Boxed: most connections never receive a fragmented message, and every
    /// connection keeps its assembler for life.
    partial: Option<Box<Partial>>,
    utf8: Utf8Validator,
}

impl MessageAssembler {
    /// An assembler refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> MessageAssembler {
        MessageAssembler {
            max_message,
            partial: None,
            utf8: Utf8Validator::new(),
        }
    }

    /// Whether a fragmented message is in progress.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// The message length after adding `more` bytes to `len`, if within `max`.
    fn grown(max: usize, len: usize, more: usize) -> Result<usize, ProtocolError> {
        match len.checked_add(more) {
            Some(total) if total <= max => Ok(total),
            total => Err(ProtocolError::MessageTooBig {
                limit: max as u64,
                len: total.map_or(u64::MAX, |t| t as u64),
            }),
        }
    }

    /// Takes the next frame. Data frames give `Ok(None)` until the final
    /// fragment, then the whole message; control frames give their event at
    /// once, also between the fragments of a message (RFC 6455 §5.4).
    pub fn handle_frame(&mut self, frame: Frame) -> Result<Option<Event>, ProtocolError> {
        let Frame { header, payload } = frame;
        let kind = match header.opcode {
            OpCode::Ping => return Ok(Some(Event::Ping(payload))),
            OpCode::Pong => return Ok(Some(Event::Pong(payload))),
            OpCode::Close => return Ok(Some(Event::Close(CloseFrame::parse(&payload)?))),
            OpCode::Continuation => return self.handle_continuation(header.fin, payload),
            OpCode::Text => MessageKind::Text,
            OpCode::Binary => MessageKind::Binary,
        };
        // RFC 6455 §5.4: fragments of one message are not interleaved with another's.
        if self.partial.is_some() {
            return Err(ProtocolError::ExpectedContinuation {
                opcode: header.opcode,
            });
        }
        let len = Self::grown(self.max_message, 0, payload.len())?;
        if header.fin {
            // RFC 6455 §8.1: a text message that is not UTF-8 fails the connection.
            if kind == MessageKind::Text && std::str::from_utf8(&payload).is_err() {
                return Err(ProtocolError::InvalidUtf8);
            }
            return Ok(Some(Event::Message(Message {
                kind,
                payload: Payload::Single(payload),
            })));
        }
        if kind == MessageKind::Text {
            self.utf8.reset();
            self.utf8.feed(&payload)?;
        }
        let mut partial = Box::new(Partial {
            kind,
            len,
            kept: Vec::new(),
            spill: BytesMut::new(),
        });
        if !payload.is_empty() {
            partial.kept.push(payload);
        }
        self.partial = Some(partial);
        Ok(None)
    }

    fn handle_continuation(
        &mut self,
        fin: bool,
        payload: Bytes,
    ) -> Result<Option<Event>, ProtocolError> {
        // RFC 6455 §5.4: a continuation frame only continues a started message.
        let Some(partial) = self.partial.as_mut() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        // Checked before the fragment is kept.
        let len = Self::grown(self.max_message, partial.len, payload.len())?;
        if partial.kind == MessageKind::Text {
            // RFC 6455 §8.1, fail fast: each fragment is checked as it arrives.
            self.utf8.feed(&payload)?;
            if fin {
                self.utf8.finish()?;
            }
        }
        partial.len = len;
        if !payload.is_empty() {
            if partial.kept.len() < MAX_KEPT_FRAGMENTS {
                partial.kept.push(payload);
            } else {
                partial.spill.put_slice(&payload);
            }
        }
        if !fin {
            return Ok(None);
        }
        let Some(mut done) = self.partial.take() else {
            return Ok(None);
        };
        if !done.spill.is_empty() {
            done.kept.push(done.spill.freeze());
        }
        Ok(Some(Event::Message(Message {
            kind: done.kind,
            payload: Payload::Fragments(done.kept),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::close::CloseCode;
    use crate::proto::frame::FrameHeader;

    fn frame(fin: bool, opcode: OpCode, payload: &'static [u8]) -> Frame {
        Frame {
            header: FrameHeader {
                fin,
                opcode,
                mask: None,
                payload_len: payload.len() as u64,
            },
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn unfragmented_is_single_and_zero_copy() {
        let mut a = MessageAssembler::new(100);
        let f = frame(true, OpCode::Text, b"Hello");
        let ptr = f.payload.as_ptr();
        let Some(Event::Message(m)) = a.handle_frame(f).unwrap() else {
            panic!("no message")
        };
        assert_eq!(m.kind, MessageKind::Text);
        let Payload::Single(b) = &m.payload else {
            panic!("not single")
        };
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(&b[..], b"Hello");
    }

    #[test]
    fn rfc_5_7_fragmented_hello_with_ping_between() {
        let mut a = MessageAssembler::new(100);
        assert_eq!(a.handle_frame(frame(false, OpCode::Text, b"Hel")), Ok(None));
        assert!(a.in_message());
        let ping = a.handle_frame(frame(true, OpCode::Ping, b"p")).unwrap();
        assert_eq!(ping, Some(Event::Ping(Bytes::from_static(b"p"))));
        let Some(Event::Message(m)) = a
            .handle_frame(frame(true, OpCode::Continuation, b"lo"))
            .unwrap()
        else {
            panic!("no message")
        };
        assert_eq!(m.payload.len(), 5);
        assert_eq!(m.payload.iter().count(), 2);
        assert_eq!(&m.payload.to_bytes()[..], b"Hello");
        assert!(!a.in_message());
    }

    #[test]
    fn rule_continuation_without_start() {
        let mut a = MessageAssembler::new(100);
        let e = a
            .handle_frame(frame(true, OpCode::Continuation, b"x"))
            .unwrap_err();
        assert_eq!(e, ProtocolError::UnexpectedContinuation);
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn rule_new_message_inside_fragmented_one() {
        let mut a = MessageAssembler::new(100);
        a.handle_frame(frame(false, OpCode::Binary, b"x")).unwrap();
        let e = a.handle_frame(frame(true, OpCode::Text, b"y")).unwrap_err();
        assert_eq!(
            e,
            ProtocolError::ExpectedContinuation {
                opcode: OpCode::Text
            }
        );
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn rule_message_too_big_single_and_accumulated() {
        let mut a = MessageAssembler::new(4);
        let e = a
            .handle_frame(frame(true, OpCode::Binary, b"12345"))
            .unwrap_err();
        assert_eq!(e, ProtocolError::MessageTooBig { limit: 4, len: 5 });
        assert_eq!(e.close_code(), CloseCode::TOO_BIG);

        let mut a = MessageAssembler::new(4);
        a.handle_frame(frame(false, OpCode::Binary, b"12")).unwrap();
        a.handle_frame(frame(false, OpCode::Continuation, b"34"))
            .unwrap();
        let e = a
            .handle_frame(frame(false, OpCode::Continuation, b"5"))
            .unwrap_err();
        assert_eq!(e, ProtocolError::MessageTooBig { limit: 4, len: 5 });
    }

    #[test]
    fn rule_text_must_be_utf8_fail_fast() {
        let mut a = MessageAssembler::new(100);
        let e = a
            .handle_frame(frame(true, OpCode::Text, b"\xC0\x80"))
            .unwrap_err();
        assert_eq!(e, ProtocolError::InvalidUtf8);
        assert_eq!(e.close_code(), CloseCode::INVALID_PAYLOAD);

        // Fragmented: fails on the fragment with the bad byte, not at the end.
        let mut a = MessageAssembler::new(100);
        a.handle_frame(frame(false, OpCode::Text, b"ok\xF4"))
            .unwrap();
        let e = a
            .handle_frame(frame(false, OpCode::Continuation, b"\x90"))
            .unwrap_err();
        assert_eq!(e, ProtocolError::InvalidUtf8);

        // Unfinished code point at the final fragment.
        let mut a = MessageAssembler::new(100);
        a.handle_frame(frame(false, OpCode::Text, b"ok")).unwrap();
        let e = a
            .handle_frame(frame(true, OpCode::Continuation, b"\xE2\x82"))
            .unwrap_err();
        assert_eq!(e, ProtocolError::InvalidUtf8);
    }

    #[test]
    fn code_point_split_across_fragments_is_fine() {
        let mut a = MessageAssembler::new(100);
        a.handle_frame(frame(false, OpCode::Text, b"\xE2")).unwrap();
        a.handle_frame(frame(false, OpCode::Continuation, b"\x82"))
            .unwrap();
        let ev = a
            .handle_frame(frame(true, OpCode::Continuation, b"\xAC"))
            .unwrap();
        let Some(Event::Message(m)) = ev else {
            panic!("no message")
        };
        assert_eq!(&m.payload.to_bytes()[..], "€".as_bytes());
    }

    #[test]
    fn binary_is_not_utf8_checked() {
        let mut a = MessageAssembler::new(100);
        let ev = a
            .handle_frame(frame(true, OpCode::Binary, b"\xFF"))
            .unwrap();
        assert!(matches!(
            ev,
            Some(Event::Message(Message {
                kind: MessageKind::Binary,
                ..
            }))
        ));
    }

    #[test]
    fn close_frames_are_parsed() {
        let mut a = MessageAssembler::new(100);
        let ev = a
            .handle_frame(frame(true, OpCode::Close, b"\x03\xe8bye"))
            .unwrap();
        let Some(Event::Close(Some(cf))) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!((cf.code, cf.reason_str()), (CloseCode::NORMAL, "bye"));
        assert_eq!(
            a.handle_frame(frame(true, OpCode::Close, b"")),
            Ok(Some(Event::Close(None)))
        );
        let e = a
            .handle_frame(frame(true, OpCode::Close, b"\x03"))
            .unwrap_err();
        assert_eq!(e, ProtocolError::InvalidClosePayloadLength);
    }

    #[test]
    fn many_tiny_fragments_are_bounded() {
        let mut a = MessageAssembler::new(10_000);
        a.handle_frame(frame(false, OpCode::Binary, b"a")).unwrap();
        for _ in 0..999 {
            a.handle_frame(frame(false, OpCode::Continuation, b"b"))
                .unwrap();
            a.handle_frame(frame(false, OpCode::Continuation, b""))
                .unwrap();
        }
        let ev = a
            .handle_frame(frame(true, OpCode::Continuation, b"c"))
            .unwrap();
        let Some(Event::Message(m)) = ev else {
            panic!("no message")
        };
        assert_eq!(m.payload.len(), 1001);
        assert_eq!(m.payload.iter().count(), MAX_KEPT_FRAGMENTS + 1);
        let all = m.payload.to_bytes();
        assert_eq!(all[0], b'a');
        assert_eq!(all[1000], b'c');
        assert!(all[1..1000].iter().all(|&b| b == b'b'));
    }

    #[test]
    fn empty_fragmented_message() {
        let mut a = MessageAssembler::new(100);
        a.handle_frame(frame(false, OpCode::Text, b"")).unwrap();
        let ev = a
            .handle_frame(frame(true, OpCode::Continuation, b""))
            .unwrap();
        let Some(Event::Message(m)) = ev else {
            panic!("no message")
        };
        assert!(m.payload.is_empty());
        assert_eq!(m.payload, Payload::Fragments(vec![]));
    }
}
