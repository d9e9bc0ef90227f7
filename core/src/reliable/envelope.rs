//! The `posrelay.reliable.v1` envelopes (PROTOCOL.md §11): every message of a reliable
//! session, both ways, is one JSON text message of one of these shapes:
//!
//! ```text
//! {"type":"data","seq":N,"text":"…"}   {"type":"data","seq":N,"binary":"<base64>"}
//! {"type":"ack","seq":N}               {"type":"resume","seq":N}
//! {"type":"resumed","seq":M}           {"type":"resume_failed","reason":"…"}
//! {"type":"undelivered","from_seq":a,"to_seq":b}
//! ```
//!
//! Parsing uses simd-json's tape (no object maps, no recursion, so nesting depth cannot
//! exhaust the stack) in place: a `text` payload stays in the buffer it arrived in and is
//! handed on as a slice of it, with no copy. Fields this version does not know are ignored,
//! so that a newer client can talk to this relay. Encoding computes the exact length first
//! and allocates once.

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use simd_json::prelude::*;
use simd_json::tape::{Object, Value};

use super::error::EnvelopeError;
use super::seq::{Seq, SeqRange};
use crate::control::json::{escaped_len, write_escaped};
use crate::relay::{MessageKind, RelayedMessage};

/// RFC 4648 §4 base64 with padding, as browsers' `btoa` writes it.
const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One §11 envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// A message to or from the device, its payload carried verbatim.
    Data {
        /// Its number in its direction (1 or more).
        seq: Seq,
        /// The device message: text (`text`) or binary (`binary`, base64 on the wire).
        message: RelayedMessage,
    },
    /// Cumulative: every message up to `seq` is processed (POS) or safe (relay).
    Ack {
        /// The last message acknowledged.
        seq: Seq,
    },
    /// The POS's first message on every reliable session: the last device message it
    /// processed (0 for none).
    Resume {
        /// The last device message processed.
        seq: Seq,
    },
    /// The relay's answer to `resume`: the last POS message it has made safe.
    Resumed {
        /// The last POS message safe.
        seq: Seq,
    },
    /// The relay cannot resume; it closes with 4409.
    ResumeFailed {
        /// Why, for people.
        reason: String,
    },
    /// POS messages that will not reach the device.
    Undelivered {
        /// Their numbers.
        range: SeqRange,
    },
}

impl Envelope {
    /// Parses one message of a reliable session. `kind` is its WebSocket opcode: a binary
    /// message is refused (envelopes are text). The payload is parsed in place when this is
    /// its only reference, copied once otherwise.
    pub fn parse(kind: MessageKind, payload: Bytes) -> Result<Envelope, EnvelopeError> {
        if kind == MessageKind::Binary {
            return Err(EnvelopeError::NotText);
        }
        let mut buf = payload
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        let base = buf.as_ptr() as usize;
        let total = buf.len();
        let parsed = {
            let tape = simd_json::to_tape(&mut buf[..]).map_err(|_| EnvelopeError::NotJson)?;
            let value = tape.as_value();
            let object = value.as_object().ok_or(EnvelopeError::NotObject {
                found: type_name(value),
            })?;
            parse_object(&object, base, total)?
        };
        Ok(match parsed {
            Parsed::Done(envelope) => envelope,
            // The text lies inside `buf` (simd-json unescapes in place): slice, no copy.
            Parsed::TextAt { seq, start, end } => Envelope::Data {
                seq,
                message: RelayedMessage {
                    kind: MessageKind::Text,
                    payload: buf.freeze().slice(start..end),
                },
            },
        })
    }

    /// The envelope's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Envelope::Data { .. } => "data",
            Envelope::Ack { .. } => "ack",
            Envelope::Resume { .. } => "resume",
            Envelope::Resumed { .. } => "resumed",
            Envelope::ResumeFailed { .. } => "resume_failed",
            Envelope::Undelivered { .. } => "undelivered",
        }
    }

    /// The envelope as one JSON text message, allocated once at its exact length.
    pub fn encode(&self) -> Bytes {
        let len = self.encoded_len();
        let mut out = Vec::with_capacity(len);
        self.write(&mut out);
        debug_assert_eq!(out.len(), len, "encoded_len is exact");
        Bytes::from(out)
    }

    /// The length of [`Self::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let head = |kind: &str| r#"{"type":""#.len() + kind.len() + 1;
        match self {
            Envelope::Data { seq, message } => {
                let payload = match message.kind {
                    MessageKind::Text => r#","text":"#.len() + escaped_len(&text_of(message)),
                    MessageKind::Binary => {
                        r#","binary":"#.len() + 2 + base64_len(message.payload.len())
                    }
                };
                head("data") + r#","seq":"#.len() + digits(seq.get()) + payload + 1
            }
            Envelope::Ack { seq } | Envelope::Resume { seq } | Envelope::Resumed { seq } => {
                head(self.type_name()) + r#","seq":"#.len() + digits(seq.get()) + 1
            }
            Envelope::ResumeFailed { reason } => {
                head("resume_failed") + r#","reason":"#.len() + escaped_len(reason) + 1
            }
            Envelope::Undelivered { range } => {
                head("undelivered")
                    + r#","from_seq":"#.len()
                    + digits(range.from().get())
                    + r#","to_seq":"#.len()
                    + digits(range.to().get())
                    + 1
            }
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"type":""#);
        out.extend_from_slice(self.type_name().as_bytes());
        out.push(b'"');
        match self {
            Envelope::Data { seq, message } => {
                out.extend_from_slice(br#","seq":"#);
                push_u64(out, seq.get());
                match message.kind {
                    MessageKind::Text => {
                        out.extend_from_slice(br#","text":"#);
                        write_escaped(out, &text_of(message));
                    }
                    MessageKind::Binary => {
                        out.extend_from_slice(br#","binary":""#);
                        let start = out.len();
                        out.resize(start + base64_len(message.payload.len()), 0);
                        let written = BASE64
                            .encode_slice(
                                &message.payload,
                                out.get_mut(start..).unwrap_or_default(),
                            )
                            .unwrap_or(0);
                        out.truncate(start + written);
                        out.push(b'"');
                    }
                }
            }
            Envelope::Ack { seq } | Envelope::Resume { seq } | Envelope::Resumed { seq } => {
                out.extend_from_slice(br#","seq":"#);
                push_u64(out, seq.get());
            }
            Envelope::ResumeFailed { reason } => {
                out.extend_from_slice(br#","reason":"#);
                write_escaped(out, reason);
            }
            Envelope::Undelivered { range } => {
                out.extend_from_slice(br#","from_seq":"#);
                push_u64(out, range.from().get());
                out.extend_from_slice(br#","to_seq":"#);
                push_u64(out, range.to().get());
            }
        }
        out.push(b'}');
    }
}

/// What the tape yielded: a finished envelope, or a text payload's place in the buffer
/// (taken once the tape, which borrows the buffer, is gone).
enum Parsed {
    Done(Envelope),
    TextAt { seq: Seq, start: usize, end: usize },
}

fn parse_object(
    object: &Object<'_, '_>,
    base: usize,
    total: usize,
) -> Result<Parsed, EnvelopeError> {
    let kind = required_str(object, "type")?;
    let done = |e| Ok(Parsed::Done(e));
    match kind {
        "data" => {
            let seq = required_seq(object, "seq")?;
            if seq == Seq::ZERO {
                return Err(EnvelopeError::ZeroSeq { field: "seq" });
            }
            match (
                optional_str(object, "text")?,
                optional_str(object, "binary")?,
            ) {
                (Some(text), None) => {
                    let at = text.as_ptr() as usize;
                    match at.checked_sub(base) {
                        Some(start) if start + text.len() <= total => Ok(Parsed::TextAt {
                            seq,
                            start,
                            end: start + text.len(),
                        }),
                        // Not inside the buffer (simd-json never does this today): copy.
                        _ => done(Envelope::Data {
                            seq,
                            message: RelayedMessage {
                                kind: MessageKind::Text,
                                payload: Bytes::copy_from_slice(text.as_bytes()),
                            },
                        }),
                    }
                }
                (None, Some(encoded)) => {
                    let decoded = BASE64.decode(encoded).map_err(|_| EnvelopeError::Base64)?;
                    done(Envelope::Data {
                        seq,
                        message: RelayedMessage {
                            kind: MessageKind::Binary,
                            payload: Bytes::from(decoded),
                        },
                    })
                }
                _ => Err(EnvelopeError::DataPayload),
            }
        }
        "ack" => done(Envelope::Ack {
            seq: required_seq(object, "seq")?,
        }),
        "resume" => done(Envelope::Resume {
            seq: required_seq(object, "seq")?,
        }),
        "resumed" => done(Envelope::Resumed {
            seq: required_seq(object, "seq")?,
        }),
        "resume_failed" => done(Envelope::ResumeFailed {
            reason: optional_str(object, "reason")?
                .unwrap_or_default()
                .to_owned(),
        }),
        "undelivered" => {
            let from = required_seq(object, "from_seq")?;
            let to = required_seq(object, "to_seq")?;
            if from == Seq::ZERO {
                return Err(EnvelopeError::ZeroSeq { field: "from_seq" });
            }
            let range = SeqRange::new(from, to).ok_or(EnvelopeError::Range {
                from: from.get(),
                to: to.get(),
            })?;
            done(Envelope::Undelivered { range })
        }
        other => Err(EnvelopeError::unknown_type(other)),
    }
}

/// A string field: `None` when absent or `null`.
fn optional_str<'i>(
    object: &Object<'_, 'i>,
    field: &'static str,
) -> Result<Option<&'i str>, EnvelopeError> {
    match object.get(field) {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => v.into_string().map(Some).ok_or(EnvelopeError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn required_str<'i>(
    object: &Object<'_, 'i>,
    field: &'static str,
) -> Result<&'i str, EnvelopeError> {
    optional_str(object, field)?.ok_or(EnvelopeError::MissingField { field })
}

/// A sequence number: a JSON integer from 0 to 2^64 - 1.
fn required_seq(object: &Object<'_, '_>, field: &'static str) -> Result<Seq, EnvelopeError> {
    let value = object
        .get(field)
        .filter(|v| !v.is_null())
        .ok_or(EnvelopeError::MissingField { field })?;
    value
        .as_u64()
        .map(Seq::new)
        .ok_or(EnvelopeError::WrongType {
            field,
            expected: "an integer from 0",
        })
}

fn type_name(value: Value<'_, '_>) -> &'static str {
    if value.is_null() {
        "null"
    } else if value.is_bool() {
        "boolean"
    } else if value.is_number() {
        "number"
    } else if value.is_str() {
        "string"
    } else if value.is_array() {
        "array"
    } else {
        "object"
    }
}

/// A text message's payload as text. The io layer hands over validated UTF-8 (§5,
/// RFC 6455 §8.1); anything else would be an io bug, written with replacement characters
/// rather than as invalid JSON.
fn text_of(message: &RelayedMessage) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(&message.payload)
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(i..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Envelope, EnvelopeError> {
        Envelope::parse(MessageKind::Text, Bytes::copy_from_slice(text.as_bytes()))
    }

    fn text(seq: u64, t: &str) -> Envelope {
        Envelope::Data {
            seq: Seq::new(seq),
            message: RelayedMessage {
                kind: MessageKind::Text,
                payload: Bytes::copy_from_slice(t.as_bytes()),
            },
        }
    }

    fn binary(seq: u64, b: &[u8]) -> Envelope {
        Envelope::Data {
            seq: Seq::new(seq),
            message: RelayedMessage {
                kind: MessageKind::Binary,
                payload: Bytes::copy_from_slice(b),
            },
        }
    }

    fn range(a: u64, b: u64) -> SeqRange {
        SeqRange::new(Seq::new(a), Seq::new(b)).unwrap()
    }

    #[test]
    fn parses_every_envelope_of_section_11() {
        assert_eq!(
            parse(r#"{"type":"data","seq":1,"text":"<TRANSACTION/>"}"#),
            Ok(text(1, "<TRANSACTION/>"))
        );
        assert_eq!(
            parse(r#"{"type":"data","seq":2,"binary":"AAEC/w=="}"#),
            Ok(binary(2, &[0, 1, 2, 255]))
        );
        assert_eq!(
            parse(r#"{"type":"ack","seq":0}"#),
            Ok(Envelope::Ack { seq: Seq::ZERO })
        );
        assert_eq!(
            parse(r#" {"seq":18446744073709551615,"type":"resume","extra":[{"a":1}]} "#),
            Ok(Envelope::Resume {
                seq: Seq::new(u64::MAX)
            })
        );
        assert_eq!(
            parse(r#"{"type":"resumed","seq":4}"#),
            Ok(Envelope::Resumed { seq: Seq::new(4) })
        );
        assert_eq!(
            parse(r#"{"type":"resume_failed","reason":"gone"}"#),
            Ok(Envelope::ResumeFailed {
                reason: "gone".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"undelivered","from_seq":3,"to_seq":5}"#),
            Ok(Envelope::Undelivered { range: range(3, 5) })
        );
    }

    #[test]
    fn payloads_are_verbatim_through_escapes_and_unicode() {
        let all: String = (0u8..0x80)
            .map(char::from)
            .chain("é€😀\u{fffd}".chars())
            .collect();
        let wire = text(7, &all).encode();
        assert_eq!(
            parse(std::str::from_utf8(&wire).unwrap()),
            Ok(text(7, &all))
        );
        // A \u escape of a surrogate pair decodes to the character.
        assert_eq!(
            parse(r#"{"type":"data","seq":1,"text":"\ud83d\ude00 \u00e9"}"#),
            Ok(text(1, "😀 é"))
        );
        let bytes: Vec<u8> = (0..=255).collect();
        for n in [0, 1, 2, 3, 4, 255, 256] {
            let wire = binary(3, &bytes[..n]).encode();
            assert_eq!(
                Envelope::parse(MessageKind::Text, wire),
                Ok(binary(3, &bytes[..n])),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn encodes_exactly_the_section_11_shapes() {
        let cases = [
            (text(1, "a\"b"), r#"{"type":"data","seq":1,"text":"a\"b"}"#),
            (
                binary(12, b"hi"),
                r#"{"type":"data","seq":12,"binary":"aGk="}"#,
            ),
            (binary(1, b""), r#"{"type":"data","seq":1,"binary":""}"#),
            (
                Envelope::Ack { seq: Seq::new(10) },
                r#"{"type":"ack","seq":10}"#,
            ),
            (
                Envelope::Resume { seq: Seq::ZERO },
                r#"{"type":"resume","seq":0}"#,
            ),
            (
                Envelope::Resumed {
                    seq: Seq::new(u64::MAX),
                },
                r#"{"type":"resumed","seq":18446744073709551615}"#,
            ),
            (
                Envelope::ResumeFailed {
                    reason: "no\n".into(),
                },
                r#"{"type":"resume_failed","reason":"no\n"}"#,
            ),
            (
                Envelope::Undelivered {
                    range: range(9, 99),
                },
                r#"{"type":"undelivered","from_seq":9,"to_seq":99}"#,
            ),
        ];
        for (envelope, wire) in cases {
            let out = envelope.encode();
            assert_eq!(std::str::from_utf8(&out).unwrap(), wire);
            assert_eq!(out.len(), envelope.encoded_len());
            assert_eq!(parse(wire), Ok(envelope));
        }
    }

    #[test]
    fn a_text_payload_is_a_slice_of_the_received_buffer() {
        // The only reference: parsed in place, the payload points into the same allocation.
        for wire in [
            &br#"{"type":"data","seq":1,"text":"<TRANSACTION>1</TRANSACTION>"}"#[..],
            &br#"{"type":"data","seq":1,"text":"line\none \"quoted\""}"#[..],
        ] {
            let received = BytesMut::from(wire).freeze();
            let range = received.as_ptr() as usize..received.as_ptr() as usize + received.len();
            let Ok(Envelope::Data { message, .. }) = Envelope::parse(MessageKind::Text, received)
            else {
                panic!("data");
            };
            let at = message.payload.as_ptr() as usize;
            assert!(range.contains(&at), "payload was copied");
        }
    }

    #[test]
    fn refuses_every_malformed_shape() {
        let cases: &[(&str, EnvelopeError)] = &[
            ("", EnvelopeError::NotJson),
            ("{", EnvelopeError::NotJson),
            ("{\"type\":\"ack\",\"seq\":1,}", EnvelopeError::NotJson),
            ("[1]", EnvelopeError::NotObject { found: "array" }),
            ("\"s\"", EnvelopeError::NotObject { found: "string" }),
            ("7", EnvelopeError::NotObject { found: "number" }),
            ("null", EnvelopeError::NotObject { found: "null" }),
            (
                r#"{"seq":1}"#,
                EnvelopeError::MissingField { field: "type" },
            ),
            (
                r#"{"type":5}"#,
                EnvelopeError::WrongType {
                    field: "type",
                    expected: "a string",
                },
            ),
            (
                r#"{"type":"nack","seq":1}"#,
                EnvelopeError::UnknownType {
                    found: "nack".into(),
                },
            ),
            (
                r#"{"type":"ack"}"#,
                EnvelopeError::MissingField { field: "seq" },
            ),
            (
                r#"{"type":"ack","seq":null}"#,
                EnvelopeError::MissingField { field: "seq" },
            ),
            (
                r#"{"type":"ack","seq":-1}"#,
                EnvelopeError::WrongType {
                    field: "seq",
                    expected: "an integer from 0",
                },
            ),
            (
                r#"{"type":"ack","seq":1.5}"#,
                EnvelopeError::WrongType {
                    field: "seq",
                    expected: "an integer from 0",
                },
            ),
            (
                r#"{"type":"resume","seq":"1"}"#,
                EnvelopeError::WrongType {
                    field: "seq",
                    expected: "an integer from 0",
                },
            ),
            (
                r#"{"type":"data","seq":0,"text":"x"}"#,
                EnvelopeError::ZeroSeq { field: "seq" },
            ),
            (r#"{"type":"data","seq":1}"#, EnvelopeError::DataPayload),
            (
                r#"{"type":"data","seq":1,"text":"x","binary":"eA=="}"#,
                EnvelopeError::DataPayload,
            ),
            (
                r#"{"type":"data","seq":1,"text":7}"#,
                EnvelopeError::WrongType {
                    field: "text",
                    expected: "a string",
                },
            ),
            (
                r#"{"type":"data","seq":1,"binary":"eA"}"#,
                EnvelopeError::Base64,
            ),
            (
                r#"{"type":"data","seq":1,"binary":"e A=="}"#,
                EnvelopeError::Base64,
            ),
            (
                r#"{"type":"data","seq":1,"binary":"-_8="}"#,
                EnvelopeError::Base64,
            ),
            (
                r#"{"type":"undelivered","from_seq":0,"to_seq":2}"#,
                EnvelopeError::ZeroSeq { field: "from_seq" },
            ),
            (
                r#"{"type":"undelivered","from_seq":3,"to_seq":2}"#,
                EnvelopeError::Range { from: 3, to: 2 },
            ),
        ];
        for (wire, want) in cases {
            assert_eq!(parse(wire).as_ref(), Err(want), "{wire}");
        }
        assert_eq!(
            Envelope::parse(
                MessageKind::Binary,
                Bytes::from_static(br#"{"type":"ack","seq":1}"#)
            ),
            Err(EnvelopeError::NotText)
        );
        let mut invalid = br#"{"type":"data","seq":1,"text":"x"}"#.to_vec();
        invalid[31] = 0xff;
        assert_eq!(
            Envelope::parse(MessageKind::Text, Bytes::from(invalid)),
            Err(EnvelopeError::NotJson)
        );
    }

    #[test]
    fn deep_nesting_is_refused_or_parsed_without_exhausting_the_stack() {
        for depth in [10_000usize, 1 << 20] {
            let wire = format!(
                r#"{{"type":"ack","seq":1,"x":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            assert_eq!(parse(&wire), Ok(Envelope::Ack { seq: Seq::new(1) }));
            assert_eq!(parse(&"[".repeat(depth)), Err(EnvelopeError::NotJson));
        }
    }
}
