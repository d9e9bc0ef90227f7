//! The `Sec-WebSocket-Accept` value (RFC 6455 §1.3, §4.2.2 item 5.4).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3: the GUID appended to the key before hashing.
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `base64(SHA-1(key + GUID))` (RFC 6455 §4.2.2 item 5.4), for the key exactly
/// as it appeared in `Sec-WebSocket-Key` (trimmed, not decoded).
///
/// Takes a [`WebSocketKey`](super::WebSocketKey) or a `&str`.
pub fn accept_key(key: impl AsRef<str>) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_ref().as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    STANDARD.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::WebSocketKey;

    #[test]
    fn rfc6455_section_1_3_vector() {
        // RFC 6455 §1.3: "dGhlIHNhbXBsZSBub25jZQ==" -> "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let key = WebSocketKey::parse("dGhlIHNhbXBsZSBub25jZQ==").unwrap();
        assert_eq!(accept_key(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(key.accept(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn seed_vector() {
        // seeds/000's terminal key. (The seed's sample answer carries
        // "Y2nXMyfwdnd360ikQgJzX7r3Gak=", which belongs to another capture: it is
        // not the accept of this key; checked independently with Python hashlib.)
        assert_eq!(
            accept_key("CujtCKpQPzowDloV4qp+hQ=="),
            "W1DnZ1gin4ZTo7thUPGE4k61LGo="
        );
    }
}
