//! Why a reliable session was refused or closed, mapped to the wire (PROTOCOL.md §8, §11).
//!
//! Codes chosen where §11 leaves them open, and why:
//! - **A malformed envelope** (not JSON, not an object, a missing or mistyped field, an
//!   unknown `type`, `data` with both or neither of `text` and `binary`, bad base64, `seq`
//!   0 on `data`, a binary WebSocket message) closes with **1002**, protocol error: §11
//!   says every message of a reliable session is one JSON text envelope, so anything else
//!   breaks the subprotocol the client chose. The close reason names the rule.
//! - **Breaking the sequence rules** (a first message that is not `resume`, a second
//!   `resume`, `data` that skips numbers, an `ack` beyond what the relay sent, a message
//!   type only the relay sends) is also **1002**: a client bug that resuming cannot fix,
//!   unlike 4409.
//! - **A resume from the future** (`seq` after the last device message the relay holds)
//!   answers `resume_failed` and **4409**, like every resume that cannot be honoured (§11):
//!   the POS's numbers belong to another claim (its claim ended and a new one began) or to
//!   state the relay never had; resuming again cannot help, starting over can.
//! - **A full window** (a POS that never acks) is not an error: the relay stops reading
//!   from the device (§11, §6 backpressure) and keeps what it holds for the next resume.
//!   Closing the POS would free nothing (held messages stay held for the resume) and would
//!   only add a reconnect loop; the memory bound is the window itself.

use super::seq::Seq;
use crate::relay::close;

/// How many bytes of peer text an error quotes at most, so a close reason (at most 123
/// bytes, RFC 6455 §5.5) never grows with the input.
pub const QUOTE_LIMIT: usize = 32;

/// An envelope that is not one of §11's JSON messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// A binary WebSocket message: §11 carries binary payloads base64-encoded in `data`.
    #[error("binary message: send every envelope as JSON text")]
    NotText,
    /// Not JSON (RFC 8259).
    #[error("envelope is not valid json")]
    NotJson,
    /// JSON, but not an object.
    #[error("envelope must be a json object, got {found}")]
    NotObject {
        /// The JSON type found instead.
        found: &'static str,
    },
    /// A required field is absent.
    #[error("field {field:?} is required")]
    MissingField {
        /// The field.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field {field:?} must be {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// `type` names no §11 envelope.
    #[error("unknown envelope type {found:?}")]
    UnknownType {
        /// The type given, cut to [`QUOTE_LIMIT`] bytes.
        found: String,
    },
    /// `data` must carry exactly one of `text` and `binary`.
    #[error("data needs exactly one of \"text\" and \"binary\"")]
    DataPayload,
    /// `binary` is not standard base64 with padding (RFC 4648 §4).
    #[error("field \"binary\" is not base64 (RFC 4648 section 4, with padding)")]
    Base64,
    /// `seq` 0 on `data`, or `from_seq` 0 on `undelivered`: numbering starts at 1.
    #[error("{field} must be 1 or more")]
    ZeroSeq {
        /// The field.
        field: &'static str,
    },
    /// `undelivered` with `from_seq` after `to_seq`.
    #[error("from_seq {from} is after to_seq {to}")]
    Range {
        /// `from_seq`.
        from: u64,
        /// `to_seq`.
        to: u64,
    },
}

impl EnvelopeError {
    /// §8: every malformed envelope closes with 1002.
    pub fn close_code(&self) -> u16 {
        close::PROTOCOL_ERROR
    }

    pub(crate) fn unknown_type(found: &str) -> EnvelopeError {
        EnvelopeError::UnknownType {
            found: quote(found).to_owned(),
        }
    }
}

/// Why the relay cannot resume a reliable session (§11): answered with `resume_failed` and
/// closed with 4409.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeFailure {
    /// The POS resumes from a message older than what it already acknowledged: the device
    /// messages after `resume` are no longer held.
    #[error("device messages after {resume} are no longer held (acknowledged up to {acked})")]
    NoLongerHeld {
        /// The resume's `seq`.
        resume: Seq,
        /// What the POS had acknowledged.
        acked: Seq,
    },
    /// The POS resumes from a device message the relay never numbered.
    #[error("resume from the future: the last device message is {last}, not {resume}")]
    Future {
        /// The resume's `seq`.
        resume: Seq,
        /// The last device message numbered on this claim.
        last: Seq,
    },
    /// The claim the POS resumes ended: this claim is new and numbers from 1.
    #[error("the claim ended: this is a new claim, resume with seq 0")]
    ClaimEnded,
    /// Another POS client holds the device.
    #[error("another client holds the device")]
    DeviceBusy,
}

impl ResumeFailure {
    /// §8, §11: 4409.
    pub fn close_code(&self) -> u16 {
        close::RESUME_FAILED
    }

    /// The `{"type":"resume_failed","reason":"…"}` answer sent before the close.
    pub fn reply(&self) -> bytes::Bytes {
        super::envelope::Envelope::ResumeFailed {
            reason: self.to_string(),
        }
        .encode()
    }
}

/// A message on a reliable session that breaks §11. The session is closed with
/// [`ReliableError::close_code`] (the state machine has queued the close, preceded by
/// `resume_failed` for a [`ReliableError::ResumeFailed`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReliableError {
    /// Not a §11 envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// §11: "The first message of every reliable session … is the POS's resume".
    #[error("the first message must be resume, got {found}")]
    FirstNotResume {
        /// The envelope type received.
        found: &'static str,
    },
    /// A second `resume` on one session.
    #[error("resume was already sent on this session")]
    ResumeAgain,
    /// An envelope type that only the relay sends.
    #[error("{found} is sent by the relay, not by the POS")]
    NotFromPos {
        /// The envelope type received.
        found: &'static str,
    },
    /// `ack` of a device message the relay has not sent on this session.
    #[error("ack {ack} is beyond the last device message sent, {sent}")]
    AckBeyondSent {
        /// The `ack`'s `seq`.
        ack: Seq,
        /// The last device message sent.
        sent: Seq,
    },
    /// `data` whose `seq` skips numbers: the POS must send every number in order, again
    /// from `resumed`'s `seq` + 1 after a resume.
    #[error("data seq {seq} skips ahead: the next is {expected}")]
    SeqGap {
        /// The `data`'s `seq`.
        seq: Seq,
        /// The number the relay expects.
        expected: Seq,
    },
    /// The relay cannot resume (§11).
    #[error(transparent)]
    ResumeFailed(#[from] ResumeFailure),
}

impl ReliableError {
    /// §8: 4409 when a resume cannot be honoured, 1002 for everything else.
    pub fn close_code(&self) -> u16 {
        match self {
            ReliableError::ResumeFailed(f) => f.close_code(),
            ReliableError::Envelope(e) => e.close_code(),
            ReliableError::FirstNotResume { .. }
            | ReliableError::ResumeAgain
            | ReliableError::NotFromPos { .. }
            | ReliableError::AckBeyondSent { .. }
            | ReliableError::SeqGap { .. } => close::PROTOCOL_ERROR,
        }
    }

    /// The close reason: the error's message, cut to 123 bytes on a char boundary.
    pub fn close_reason(&self) -> String {
        let mut text = self.to_string();
        let mut end = text.len().min(123);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text
    }
}

/// The longest prefix of `text` of at most [`QUOTE_LIMIT`] bytes ending on a char boundary.
fn quote(text: &str) -> &str {
    let mut end = text.len().min(QUOTE_LIMIT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_section_8() {
        let protocol = [
            ReliableError::Envelope(EnvelopeError::NotJson),
            ReliableError::FirstNotResume { found: "data" },
            ReliableError::ResumeAgain,
            ReliableError::NotFromPos { found: "resumed" },
            ReliableError::AckBeyondSent {
                ack: Seq::new(9),
                sent: Seq::new(7),
            },
            ReliableError::SeqGap {
                seq: Seq::new(5),
                expected: Seq::new(3),
            },
        ];
        for e in protocol {
            assert_eq!(e.close_code(), 1002, "{e}");
        }
        let failures = [
            ResumeFailure::NoLongerHeld {
                resume: Seq::new(1),
                acked: Seq::new(4),
            },
            ResumeFailure::Future {
                resume: Seq::new(9),
                last: Seq::new(3),
            },
            ResumeFailure::ClaimEnded,
            ResumeFailure::DeviceBusy,
        ];
        for f in failures {
            assert_eq!(ReliableError::from(f.clone()).close_code(), 4409);
            let reply = f.reply();
            let text = std::str::from_utf8(&reply).unwrap();
            assert!(
                text.starts_with(r#"{"type":"resume_failed","reason":""#),
                "{text}"
            );
        }
    }

    #[test]
    fn reasons_fit_a_close_frame() {
        let e = ReliableError::Envelope(EnvelopeError::unknown_type(&"é".repeat(200)));
        assert!(e.close_reason().len() <= 123);
        let EnvelopeError::UnknownType { found } = EnvelopeError::unknown_type(&"é".repeat(200))
        else {
            panic!("variant");
        };
        assert_eq!(found, "é".repeat(16));
        assert_eq!(
            ReliableError::AckBeyondSent {
                ack: Seq::new(9),
                sent: Seq::new(7)
            }
            .close_reason(),
            "ack 9 is beyond the last device message sent, 7"
        );
    }
}
