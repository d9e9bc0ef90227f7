//! The protocol layer's error: one variant per broken RFC 6455 rule.

use super::close::CloseCode;
use super::opcode::OpCode;

/// A peer broke an RFC 6455 framing rule. Each variant is one rule, with the
/// offending data; [`ProtocolError::close_code`] maps it to the Close frame
/// we answer with before dropping the connection (RFC 6455 §7.1.7, §7.4.1).
///
/// [`ProtocolErrorKind`] names the variants without their data (derived, so that a new
/// rule cannot be left out of the tests that go over every kind).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, strum::EnumDiscriminants)]
#[strum_discriminants(name(ProtocolErrorKind), derive(strum::EnumIter))]
pub enum ProtocolError {
    /// RFC 6455 §5.2: RSV1-3 MUST be 0 unless an extension defines them; we negotiate none.
    #[error("reserved bits set without a negotiated extension: {bits:#05b}")]
    ReservedBits {
        /// RSV1..RSV3 as the low three bits (RSV1 = 0b100).
        bits: u8,
    },
    /// RFC 6455 §5.2: opcodes 0x3-0x7 and 0xB-0xF are reserved.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// RFC 6455 §5.5: control frames MUST have a payload length of 125 bytes or less.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlFrameTooLong(u64),
    /// RFC 6455 §5.5: control frames MUST NOT be fragmented (FIN must be set).
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// RFC 6455 §5.1: a server MUST close the connection on an unmasked client frame.
    #[error("unmasked frame from client")]
    UnmaskedClientFrame,
    /// RFC 6455 §5.1: a client MUST close the connection on a masked server frame.
    #[error("masked frame from server")]
    MaskedServerFrame,
    /// RFC 6455 §5.2: in the 64-bit length the most significant bit MUST be 0.
    #[error("64-bit payload length with the most significant bit set")]
    PayloadLengthTopBit,
    /// A frame or message larger than our configured limit (RFC 6455 §7.4.1: 1009).
    #[error("message too big: {len} bytes over the limit of {limit}")]
    MessageTooBig {
        /// The configured limit in bytes.
        limit: u64,
        /// The announced or accumulated length in bytes.
        len: u64,
    },
    /// RFC 6455 §5.4: a continuation frame arrived with no fragmented message in progress.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// RFC 6455 §5.4: a new data frame arrived while a fragmented message was in progress.
    #[error("new data frame ({opcode:?}) while a fragmented message is in progress")]
    ExpectedContinuation {
        /// The opcode of the offending data frame.
        opcode: OpCode,
    },
    /// RFC 6455 §8.1: a text message that is not valid UTF-8 (close with 1007).
    #[error("invalid utf-8 in text message")]
    InvalidUtf8,
    /// RFC 6455 §7.4: a Close frame carried a status code that may not appear on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// RFC 6455 §5.5.1: a Close body is empty or at least the 2-byte status code; 1 byte is invalid.
    #[error("close frame with a 1-byte body")]
    InvalidClosePayloadLength,
    /// RFC 6455 §5.5.1: the Close reason MUST be UTF-8 (close with 1007).
    #[error("invalid utf-8 in close reason")]
    InvalidCloseReasonUtf8,
    /// RFC 6455 §5.5.1: after its Close frame a peer MUST NOT send anything more.
    #[error("data after close frame")]
    DataAfterClose,
}

impl ProtocolError {
    /// The status code to put in our Close frame for this error.
    ///
    /// RFC 6455 §7.4.1: 1002 for protocol errors, 1007 for data inconsistent
    /// with the message type (invalid UTF-8), 1009 for a message too big to process.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCloseReasonUtf8 => {
                CloseCode::INVALID_PAYLOAD
            }
            ProtocolError::MessageTooBig { .. } => CloseCode::TOO_BIG,
            ProtocolError::ReservedBits { .. }
            | ProtocolError::ReservedOpcode(_)
            | ProtocolError::ControlFrameTooLong(_)
            | ProtocolError::FragmentedControlFrame
            | ProtocolError::UnmaskedClientFrame
            | ProtocolError::MaskedServerFrame
            | ProtocolError::PayloadLengthTopBit
            | ProtocolError::UnexpectedContinuation
            | ProtocolError::ExpectedContinuation { .. }
            | ProtocolError::InvalidCloseCode(_)
            | ProtocolError::InvalidClosePayloadLength
            | ProtocolError::DataAfterClose => CloseCode::PROTOCOL_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_map_to_the_rfc_classes() {
        assert_eq!(ProtocolError::InvalidUtf8.close_code(), CloseCode(1007));
        assert_eq!(
            ProtocolError::InvalidCloseReasonUtf8.close_code(),
            CloseCode(1007)
        );
        let big = ProtocolError::MessageTooBig { limit: 1, len: 2 };
        assert_eq!(big.close_code(), CloseCode(1009));
        assert_eq!(
            ProtocolError::ReservedOpcode(3).close_code(),
            CloseCode(1002)
        );
        assert_eq!(ProtocolError::DataAfterClose.close_code(), CloseCode(1002));
    }

    /// One error of each kind (the match is exhaustive: a new kind must be added here).
    fn example(kind: ProtocolErrorKind) -> ProtocolError {
        match kind {
            ProtocolErrorKind::ReservedBits => ProtocolError::ReservedBits { bits: 4 },
            ProtocolErrorKind::ReservedOpcode => ProtocolError::ReservedOpcode(3),
            ProtocolErrorKind::ControlFrameTooLong => ProtocolError::ControlFrameTooLong(126),
            ProtocolErrorKind::FragmentedControlFrame => ProtocolError::FragmentedControlFrame,
            ProtocolErrorKind::UnmaskedClientFrame => ProtocolError::UnmaskedClientFrame,
            ProtocolErrorKind::MaskedServerFrame => ProtocolError::MaskedServerFrame,
            ProtocolErrorKind::PayloadLengthTopBit => ProtocolError::PayloadLengthTopBit,
            ProtocolErrorKind::MessageTooBig => ProtocolError::MessageTooBig { limit: 1, len: 2 },
            ProtocolErrorKind::UnexpectedContinuation => ProtocolError::UnexpectedContinuation,
            ProtocolErrorKind::ExpectedContinuation => ProtocolError::ExpectedContinuation {
                opcode: OpCode::Text,
            },
            ProtocolErrorKind::InvalidUtf8 => ProtocolError::InvalidUtf8,
            ProtocolErrorKind::InvalidCloseCode => ProtocolError::InvalidCloseCode(5),
            ProtocolErrorKind::InvalidClosePayloadLength => {
                ProtocolError::InvalidClosePayloadLength
            }
            ProtocolErrorKind::InvalidCloseReasonUtf8 => ProtocolError::InvalidCloseReasonUtf8,
            ProtocolErrorKind::DataAfterClose => ProtocolError::DataAfterClose,
        }
    }

    #[test]
    fn every_kind_has_a_lowercase_message_and_a_close_code_of_its_class() {
        use strum::IntoEnumIterator as _;
        for kind in ProtocolErrorKind::iter() {
            let e = example(kind);
            assert_eq!(ProtocolErrorKind::from(&e), kind);
            let msg = e.to_string();
            let first = msg.chars().next().unwrap();
            assert!(!first.is_uppercase(), "{msg}");
            assert!(
                [1002, 1007, 1009].contains(&e.close_code().0),
                "{kind:?}: {:?}",
                e.close_code()
            );
        }
    }
}
