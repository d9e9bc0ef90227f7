//! What the relay state queues: any message type that knows its payload length.

use bytes::Bytes;

/// A relayed data message as the relay state needs to see it: opaque, with a length.
///
/// [`crate::relay::DeviceShard`] is generic over this trait so the io layer can plug in the
/// protocol layer's own message type and keep the payload `Bytes` it read, with no
/// conversion and no copy.
pub trait QueuedMessage {
    /// Payload bytes, as `undelivered` counts them (§6: for text, its UTF-8 bytes).
    fn payload_len(&self) -> usize;
}

/// A data message's opcode, which the relay keeps verbatim (§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Opcode 0x1 (RFC 6455 §5.6).
    Text,
    /// Opcode 0x2 (RFC 6455 §5.6).
    Binary,
}

/// A simple complete data message: opcode and payload. Usable as the relay's message type
/// when the io layer has nothing better.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedMessage {
    /// Text or binary.
    pub kind: MessageKind,
    /// The whole payload (fragments rejoined).
    pub payload: Bytes,
}

impl QueuedMessage for RelayedMessage {
    fn payload_len(&self) -> usize {
        self.payload.len()
    }
}

impl QueuedMessage for Bytes {
    fn payload_len(&self) -> usize {
        self.len()
    }
}

/// A message as the protocol core assembled it (fragments kept, never copied).
impl QueuedMessage for crate::proto::Message {
    fn payload_len(&self) -> usize {
        self.payload.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_len_counts_payload_bytes() {
        let m = RelayedMessage {
            kind: MessageKind::Text,
            payload: Bytes::from("héllo"),
        };
        assert_eq!(m.payload_len(), 6, "UTF-8 bytes, not chars");
        assert_eq!(Bytes::from_static(&[1, 2, 3]).payload_len(), 3);
    }
}
