//! The `Sec-WebSocket-Key` nonce (RFC 6455 §4.1 item 7, §4.2.1 item 5).

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::error::HandshakeError;

/// A validated `Sec-WebSocket-Key`: base64 (RFC 4648 §4, padded) of exactly 16 bytes.
///
/// Holds the text as sent, because the accept key hashes the text, not the bytes
/// (RFC 6455 §4.2.2 item 5.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WebSocketKey(String);

impl WebSocketKey {
    /// Validates a received key.
    ///
    /// RFC 6455 §4.2.1 item 5: "A |Sec-WebSocket-Key| header field with a
    /// base64-encoded value that, when decoded, is 16 bytes in length."
    pub fn parse(value: &str) -> Result<WebSocketKey, HandshakeError> {
        // 16 bytes encode to exactly 24 characters; check before decoding.
        let ok = value.len() == 24 && STANDARD.decode(value).is_ok_and(|bytes| bytes.len() == 16);
        if ok {
            Ok(WebSocketKey(value.to_owned()))
        } else {
            Err(HandshakeError::InvalidKey {
                value: value.to_owned(),
            })
        }
    }

    /// A client key from 16 random bytes, which the caller draws
    /// (RFC 6455 §4.1 item 7: "randomly selected", fresh for each connection).
    pub fn from_random(bytes: [u8; 16]) -> WebSocketKey {
        WebSocketKey(STANDARD.encode(bytes))
    }

    /// The key as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `Sec-WebSocket-Accept` value that answers this key.
    pub fn accept(&self) -> String {
        super::accept::accept_key(self)
    }
}

impl AsRef<str> for WebSocketKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WebSocketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_sample_key_is_valid() {
        let k = WebSocketKey::parse("dGhlIHNhbXBsZSBub25jZQ==").unwrap();
        assert_eq!(k.as_str(), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn invalid_keys() {
        for bad in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",       // unpadded
            "dGhlIHNhbXBsZSBub25jZQ=",      // short padding
            "dGhlIHNhbXBsZSBub25jZR==",     // non-canonical trailing bits
            "dGhlIHNhbXBsZSBub25jZQ==AAAA", // 19 bytes
            "!!!!!!!!!!!!!!!!!!!!!!==",
            "dGhlIHNhbXBsZSBub25j", // 15 bytes
        ] {
            assert_eq!(
                WebSocketKey::parse(bad),
                Err(HandshakeError::InvalidKey { value: bad.into() }),
                "{bad:?}"
            );
        }
        assert!(WebSocketKey::parse("AAAAAAAAAAAAAAAAAAAAAA==").is_ok());
    }

    #[test]
    fn from_random_round_trips() {
        let k = WebSocketKey::from_random([7; 16]);
        assert_eq!(k.as_str().len(), 24);
        assert_eq!(WebSocketKey::parse(k.as_str()), Ok(k));
    }
}
