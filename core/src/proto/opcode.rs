//! The frame opcode (RFC 6455 §5.2).

use super::error::ProtocolError;

/// A frame's opcode. Reserved values are rejected at parse time, so every
/// `OpCode` is one the RFC defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continues a fragmented message (RFC 6455 §5.4).
    Continuation,
    /// 0x1: first (or only) frame of a text message.
    Text,
    /// 0x2: first (or only) frame of a binary message.
    Binary,
    /// 0x8: connection close (RFC 6455 §5.5.1).
    Close,
    /// 0x9: ping (RFC 6455 §5.5.2).
    Ping,
    /// 0xA: pong (RFC 6455 §5.5.3).
    Pong,
}

impl OpCode {
    /// Decodes the low 4 bits of the first header byte.
    ///
    /// RFC 6455 §5.2: 0x3-0x7 are reserved for further non-control frames and
    /// 0xB-0xF for further control frames; receiving one is a protocol error.
    pub fn from_u8(byte: u8) -> Result<OpCode, ProtocolError> {
        match byte {
            0x0 => Ok(OpCode::Continuation),
            0x1 => Ok(OpCode::Text),
            0x2 => Ok(OpCode::Binary),
            0x8 => Ok(OpCode::Close),
            0x9 => Ok(OpCode::Ping),
            0xA => Ok(OpCode::Pong),
            other => Err(ProtocolError::ReservedOpcode(other)),
        }
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// RFC 6455 §5.5: control frames are those whose opcode has the high bit set.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nibble_is_either_defined_or_reserved() {
        for b in 0u8..16 {
            match OpCode::from_u8(b) {
                Ok(op) => {
                    assert_eq!(op.as_u8(), b);
                    assert_eq!(op.is_control(), b >= 8);
                }
                Err(e) => {
                    assert!(matches!(b, 3..=7 | 0xB..=0xF), "{b}");
                    assert_eq!(e, ProtocolError::ReservedOpcode(b));
                }
            }
        }
    }
}
