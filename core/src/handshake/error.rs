//! Everything that can go wrong before a WebSocket is open, one variant per broken rule.
//!
//! Server-side variants map to the HTTP answer with [`HandshakeError::status`]
//! (400, 426 or 431); [`crate::handshake::error_response`] renders it. Client-side
//! variants (a server answered our handshake wrongly) are never sent on the wire.

use super::status::HttpStatus;

/// A handshake, HTTP head, form or client-side handshake failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    // ---- HTTP/1.1 head (RFC 9112) ----
    /// The request or status line or a header line is not valid HTTP/1.x syntax.
    #[error("malformed http head: {0}")]
    Malformed(httparse::Error),
    /// More than `limit` bytes arrived without the empty line that ends the head.
    #[error("http head exceeds {limit} bytes")]
    HeadTooLarge {
        /// The configured `max_head_bytes`.
        limit: usize,
    },
    /// More header lines than `limit`.
    #[error("more than {limit} header fields")]
    TooManyHeaders {
        /// The configured `max_headers`.
        limit: usize,
    },
    /// The request-target is neither origin-form, a matching absolute-form nor `*`
    /// for OPTIONS (RFC 9112 §3.2).
    #[error("invalid request target {target:?}")]
    BadTarget {
        /// The request-target as received.
        target: String,
    },
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    #[error("missing host header")]
    MissingHost,
    /// A `Host` value that is not `uri-host [ ":" port ]` (RFC 9112 §3.2).
    #[error("invalid host header {value:?}")]
    InvalidHost {
        /// The value received.
        value: String,
    },
    /// A header that may appear only once appeared several times.
    #[error("duplicate {name} header")]
    DuplicateHeader {
        /// Lowercase header name.
        name: String,
    },
    /// A request with `Transfer-Encoding`: the relay only accepts `Content-Length` bodies.
    #[error("transfer-encoding is not supported, send content-length")]
    TransferEncoding,
    /// A `Content-Length` that is not a decimal number that fits (RFC 9112 §6.3 item 5).
    #[error("invalid content-length {value:?}")]
    InvalidContentLength {
        /// The value received.
        value: String,
    },
    /// Several `Content-Length` values that differ (RFC 9112 §6.3 item 5).
    #[error("conflicting content-length values")]
    ConflictingContentLength,
    /// Whitespace between a header name and its colon on a header the relay interprets
    /// (RFC 9112 §5.1: a server MUST reject it with 400). Tolerated on other headers.
    #[error("whitespace before colon in {name} header")]
    SpaceBeforeColon {
        /// Lowercase header name.
        name: String,
    },

    // ---- RFC 6455 §4.2.1 opening handshake, server side ----
    /// The request has no `Upgrade: websocket`, but the path only speaks WebSocket.
    #[error("this resource requires a websocket upgrade")]
    NotWebSocketUpgrade,
    /// An upgrade request whose method is not GET (RFC 6455 §4.2.1 item 1).
    #[error("websocket upgrade requires get, got {method}")]
    MethodNotGet {
        /// The method received.
        method: String,
    },
    /// An upgrade request below HTTP/1.1 (RFC 6455 §4.2.1 item 1).
    #[error("websocket upgrade requires http/1.1, got http/1.{minor}")]
    HttpVersionTooOld {
        /// Minor version received (0 for HTTP/1.0).
        minor: u8,
    },
    /// An upgrade request whose `Connection` lacks the `Upgrade` token (RFC 6455 §4.2.1 item 4).
    #[error("connection header does not include upgrade")]
    MissingConnectionUpgrade,
    /// An upgrade request without `Sec-WebSocket-Version` (RFC 6455 §4.2.1 item 6).
    #[error("missing sec-websocket-version, this server speaks 13")]
    MissingWebSocketVersion,
    /// A `Sec-WebSocket-Version` other than 13 (RFC 6455 §4.2.1 item 6, §4.4).
    #[error("unsupported sec-websocket-version {offered:?}, this server speaks 13")]
    UnsupportedWebSocketVersion {
        /// The value received.
        offered: String,
    },
    /// An upgrade request without `Sec-WebSocket-Key` (RFC 6455 §4.2.1 item 5).
    #[error("missing sec-websocket-key")]
    MissingKey,
    /// A `Sec-WebSocket-Key` that is not base64 of exactly 16 bytes (RFC 6455 §4.2.1 item 5).
    #[error("sec-websocket-key {value:?} is not base64 of 16 bytes")]
    InvalidKey {
        /// The value received.
        value: String,
    },
    /// A `Sec-WebSocket-Protocol` entry that is not an HTTP token (RFC 6455 §4.1, §11.3.4).
    #[error("invalid sec-websocket-protocol entry {value:?}")]
    InvalidSubprotocol {
        /// The entry received.
        value: String,
    },

    // ---- application/x-www-form-urlencoded ----
    /// A `%` not followed by two hex digits in a form body.
    #[error("bad percent escape at byte {at} of form body")]
    BadPercentEscape {
        /// Byte offset of the `%`.
        at: usize,
    },
    /// A form name or value that does not decode to UTF-8.
    #[error("form field is not utf-8 after decoding")]
    FormNotUtf8,

    // ---- client side (RFC 6455 §4.1): a server answered our handshake wrongly ----
    /// The server answered with a status other than 101.
    #[error("expected 101 switching protocols, got {status}")]
    UnexpectedStatus {
        /// Status code received.
        status: u16,
    },
    /// The 101 response lacks `Upgrade: websocket` (RFC 6455 §4.1 item 2).
    #[error("response upgrade header is not websocket")]
    ResponseNotWebSocket,
    /// The 101 response lacks `Connection: Upgrade` (RFC 6455 §4.1 item 3).
    #[error("response connection header does not include upgrade")]
    ResponseMissingConnectionUpgrade,
    /// `Sec-WebSocket-Accept` is missing or wrong (RFC 6455 §4.1 item 4).
    #[error("sec-websocket-accept {got:?} does not match {expected:?}")]
    WrongAcceptKey {
        /// What the key requires.
        expected: String,
        /// What the server sent (empty when missing).
        got: String,
    },
    /// The server selected an extension we did not offer (RFC 6455 §4.1 item 5).
    #[error("server selected extension {extension:?} that was not offered")]
    UnexpectedExtension {
        /// The extension header value received.
        extension: String,
    },
    /// The server selected a subprotocol we did not offer (RFC 6455 §4.1 item 6).
    #[error("server selected subprotocol {protocol:?} that was not offered")]
    UnexpectedSubprotocol {
        /// The subprotocol received.
        protocol: String,
    },
}

impl HandshakeError {
    /// The HTTP status this error answers with.
    ///
    /// 431 for size limits, 426 when the client must (re)try a WebSocket version 13
    /// upgrade (the answer then carries `Sec-WebSocket-Version: 13`), 400 for every
    /// other request error. Client-side errors are never sent; they map to 502.
    pub fn status(&self) -> HttpStatus {
        use HandshakeError::*;
        match self {
            HeadTooLarge { .. } | TooManyHeaders { .. } => HttpStatus::HEADERS_TOO_LARGE,
            NotWebSocketUpgrade | MissingWebSocketVersion | UnsupportedWebSocketVersion { .. } => {
                HttpStatus::UPGRADE_REQUIRED
            }
            Malformed(_)
            | BadTarget { .. }
            | MissingHost
            | InvalidHost { .. }
            | DuplicateHeader { .. }
            | TransferEncoding
            | InvalidContentLength { .. }
            | ConflictingContentLength
            | SpaceBeforeColon { .. }
            | MethodNotGet { .. }
            | HttpVersionTooOld { .. }
            | MissingConnectionUpgrade
            | MissingKey
            | InvalidKey { .. }
            | InvalidSubprotocol { .. }
            | BadPercentEscape { .. }
            | FormNotUtf8 => HttpStatus::BAD_REQUEST,
            UnexpectedStatus { .. }
            | ResponseNotWebSocket
            | ResponseMissingConnectionUpgrade
            | WrongAcceptKey { .. }
            | UnexpectedExtension { .. }
            | UnexpectedSubprotocol { .. } => HttpStatus::BAD_GATEWAY,
        }
    }

    /// True when the answer must advertise `Sec-WebSocket-Version: 13` (RFC 6455 §4.4)
    /// and `Upgrade: websocket` (RFC 9110 §15.5.22).
    pub fn requires_upgrade(&self) -> bool {
        self.status() == HttpStatus::UPGRADE_REQUIRED
    }

    /// True for errors found in a server's answer to our client handshake.
    pub fn is_client_side(&self) -> bool {
        self.status() == HttpStatus::BAD_GATEWAY
    }
}

impl From<httparse::Error> for HandshakeError {
    fn from(e: httparse::Error) -> Self {
        HandshakeError::Malformed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(
            HandshakeError::HeadTooLarge { limit: 1 }.status(),
            HttpStatus(431)
        );
        assert_eq!(
            HandshakeError::TooManyHeaders { limit: 1 }.status(),
            HttpStatus(431)
        );
        assert_eq!(
            HandshakeError::NotWebSocketUpgrade.status(),
            HttpStatus(426)
        );
        assert_eq!(
            HandshakeError::MissingWebSocketVersion.status(),
            HttpStatus(426)
        );
        assert_eq!(
            HandshakeError::UnsupportedWebSocketVersion {
                offered: "8".into()
            }
            .status(),
            HttpStatus(426)
        );
        assert_eq!(HandshakeError::MissingKey.status(), HttpStatus(400));
        assert_eq!(
            HandshakeError::Malformed(httparse::Error::Token).status(),
            HttpStatus(400)
        );
        assert!(HandshakeError::ResponseNotWebSocket.is_client_side());
        assert!(!HandshakeError::MissingHost.is_client_side());
        assert!(HandshakeError::NotWebSocketUpgrade.requires_upgrade());
        assert!(!HandshakeError::MissingKey.requires_upgrade());
    }

    #[test]
    fn messages_are_lowercase() {
        let all = [
            HandshakeError::Malformed(httparse::Error::HeaderName),
            HandshakeError::HeadTooLarge { limit: 16384 },
            HandshakeError::TransferEncoding,
            HandshakeError::MissingHost,
            HandshakeError::NotWebSocketUpgrade,
            HandshakeError::MissingWebSocketVersion,
            HandshakeError::FormNotUtf8,
            HandshakeError::UnexpectedStatus { status: 404 },
        ];
        for e in all {
            let m = e.to_string();
            assert_eq!(m, m.to_lowercase(), "{m}");
        }
    }
}
