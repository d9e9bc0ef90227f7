//! Close status codes and Close frame bodies (RFC 6455 §5.5.1, §7.4).

use std::fmt;

use bytes::Bytes;

use super::error::ProtocolError;

/// A Close frame status code (RFC 6455 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: endpoint going away (posrelay: relay shutting down, reconnect).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: data type that cannot be accepted.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1007: data inconsistent with the message type (invalid UTF-8 text).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: policy violation (posrelay: authentication or authorisation failed).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: message too big to process.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: unexpected internal error.
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// 4000 (posrelay): replaced by a newer connection of the same device or POS.
    pub const REPLACED: CloseCode = CloseCode(4000);
    /// 4001 (posrelay): claim released or lost.
    pub const CLAIM_RELEASED: CloseCode = CloseCode(4001);
    /// 4401 (posrelay): access token expired.
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4401);
    /// 4404 (posrelay): unknown session.
    pub const UNKNOWN_SESSION: CloseCode = CloseCode(4404);

    /// Whether this code may appear in a Close frame on the wire.
    ///
    /// RFC 6455 §7.4.1 defines 1000-1003 and 1007-1011; the IANA registry
    /// (§11.7) adds 1012-1014, which we accept. 1004 is reserved, 1005, 1006
    /// and 1015 MUST NOT be sent (§7.4.1), 1016-2999 are reserved for the
    /// standard, < 1000 is unused. §7.4.2: 3000-3999 are registered for
    /// libraries and 4000-4999 are private use; ≥ 5000 is undefined.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.0
    }
}

/// A parsed Close frame body with a status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code (always valid on the wire).
    pub code: CloseCode,
    /// The reason: valid UTF-8, shares the frame's memory.
    pub reason: Bytes,
}

impl CloseFrame {
    /// Parses a Close frame's (unmasked) payload.
    ///
    /// RFC 6455 §5.5.1: the body is empty (`Ok(None)`: no status code) or
    /// starts with a 2-byte big-endian status code followed by a UTF-8 reason.
    pub fn parse(payload: &Bytes) -> Result<Option<CloseFrame>, ProtocolError> {
        let (hi, lo) = match payload.as_ref() {
            [] => return Ok(None),
            // RFC 6455 §5.5.1: a body, if present, MUST start with the 2-byte code.
            [_] => return Err(ProtocolError::InvalidClosePayloadLength),
            [hi, lo, ..] => (*hi, *lo),
        };
        let code = CloseCode(u16::from_be_bytes([hi, lo]));
        // RFC 6455 §7.4: only codes defined for the wire may be received.
        if !code.is_valid_on_wire() {
            return Err(ProtocolError::InvalidCloseCode(code.0));
        }
        let reason = payload.slice(2..);
        // RFC 6455 §5.5.1: the reason is UTF-8; §8.1: invalid UTF-8 fails the connection.
        if std::str::from_utf8(&reason).is_err() {
            return Err(ProtocolError::InvalidCloseReasonUtf8);
        }
        Ok(Some(CloseFrame { code, reason }))
    }

    /// The reason as text (parse has checked that it is UTF-8).
    pub fn reason_str(&self) -> &str {
        std::str::from_utf8(&self.reason).unwrap_or("")
    }
}

/// A Close frame body on the stack: 2-byte code plus at most 123 bytes of reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosePayload {
    buf: [u8; 125],
    len: u8,
}

impl ClosePayload {
    /// The encoded body.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl AsRef<[u8]> for ClosePayload {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Encodes a Close body: `code` big-endian then `reason`, cut at a character
/// boundary so the whole body fits a control frame (RFC 6455 §5.5: ≤ 125 bytes).
pub fn encode_close_payload(code: CloseCode, reason: &str) -> ClosePayload {
    let mut buf = [0u8; 125];
    buf[..2].copy_from_slice(&code.0.to_be_bytes());
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    buf[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    ClosePayload {
        buf,
        len: (2 + cut) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_per_rfc_and_iana() {
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ];
        for c in valid {
            assert!(CloseCode(c).is_valid_on_wire(), "{c}");
        }
        for c in [3000, 3999, 4000, 4001, 4401, 4404, 4999] {
            assert!(CloseCode(c).is_valid_on_wire(), "{c}");
        }
        let invalid = [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for c in invalid {
            assert!(!CloseCode(c).is_valid_on_wire(), "{c}");
        }
    }

    #[test]
    fn empty_body_has_no_code() {
        assert_eq!(CloseFrame::parse(&Bytes::new()), Ok(None));
    }

    #[test]
    fn one_byte_body_is_a_protocol_error() {
        let e = CloseFrame::parse(&Bytes::from_static(&[0x03])).unwrap_err();
        assert_eq!(e, ProtocolError::InvalidClosePayloadLength);
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn invalid_code_is_a_protocol_error() {
        let e = CloseFrame::parse(&Bytes::from_static(&[0x03, 0xED])).unwrap_err(); // 1005
        assert_eq!(e, ProtocolError::InvalidCloseCode(1005));
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn invalid_reason_is_1007() {
        let e = CloseFrame::parse(&Bytes::from_static(&[0x03, 0xE8, 0xC0, 0x80])).unwrap_err();
        assert_eq!(e, ProtocolError::InvalidCloseReasonUtf8);
        assert_eq!(e.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn parse_code_and_reason() {
        let body = Bytes::from_static(b"\x0f\xa0bye");
        let cf = CloseFrame::parse(&body).unwrap().unwrap();
        assert_eq!(cf.code, CloseCode::REPLACED);
        assert_eq!(cf.reason_str(), "bye");
    }

    #[test]
    fn encode_round_trips_and_truncates_on_char_boundary() {
        let p = encode_close_payload(CloseCode::NORMAL, "done");
        assert_eq!(p.as_bytes(), b"\x03\xe8done");
        let long = "é".repeat(100); // 200 bytes, 2 per char
        let p = encode_close_payload(CloseCode::GOING_AWAY, &long);
        assert_eq!(p.as_bytes().len(), 2 + 122);
        let cf = CloseFrame::parse(&Bytes::copy_from_slice(p.as_bytes()))
            .unwrap()
            .unwrap();
        assert_eq!(cf.code, CloseCode::GOING_AWAY);
        assert_eq!(cf.reason_str(), &long[..122]);
    }
}
