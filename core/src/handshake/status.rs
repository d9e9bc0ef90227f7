//! HTTP status codes the relay answers with (RFC 9110 §15).

use std::fmt;

/// An HTTP status code, as sent on the status line.
///
/// Only the codes the relay uses have named constants; any `u16` can be wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HttpStatus(pub u16);

impl HttpStatus {
    /// 101 Switching Protocols (RFC 9110 §15.2.2): the WebSocket upgrade succeeded.
    pub const SWITCHING_PROTOCOLS: HttpStatus = HttpStatus(101);
    /// 200 OK.
    pub const OK: HttpStatus = HttpStatus(200);
    /// 201 Created.
    pub const CREATED: HttpStatus = HttpStatus(201);
    /// 204 No Content (no body, no `Content-Length`).
    pub const NO_CONTENT: HttpStatus = HttpStatus(204);
    /// 400 Bad Request: malformed request or handshake.
    pub const BAD_REQUEST: HttpStatus = HttpStatus(400);
    /// 401 Unauthorized: missing or bad credentials or token.
    pub const UNAUTHORIZED: HttpStatus = HttpStatus(401);
    /// 403 Forbidden: valid token, not for this resource.
    pub const FORBIDDEN: HttpStatus = HttpStatus(403);
    /// 404 Not Found.
    pub const NOT_FOUND: HttpStatus = HttpStatus(404);
    /// 405 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: HttpStatus = HttpStatus(405);
    /// 409 Conflict.
    pub const CONFLICT: HttpStatus = HttpStatus(409);
    /// 413 Content Too Large (RFC 9110 §15.5.14, formerly "Payload Too Large").
    pub const PAYLOAD_TOO_LARGE: HttpStatus = HttpStatus(413);
    /// 426 Upgrade Required: a non-WebSocket request on a WebSocket path, or an
    /// unsupported `Sec-WebSocket-Version`.
    pub const UPGRADE_REQUIRED: HttpStatus = HttpStatus(426);
    /// 429 Too Many Requests (RFC 6585 §4).
    pub const TOO_MANY_REQUESTS: HttpStatus = HttpStatus(429);
    /// 431 Request Header Fields Too Large (RFC 6585 §5).
    pub const HEADERS_TOO_LARGE: HttpStatus = HttpStatus(431);
    /// 500 Internal Server Error.
    pub const INTERNAL: HttpStatus = HttpStatus(500);
    /// 502 Bad Gateway: the peer we connected to answered a handshake wrongly
    /// (used only for client-side handshake errors, never sent by the relay to a peer).
    pub const BAD_GATEWAY: HttpStatus = HttpStatus(502);
    /// 503 Service Unavailable (for example while shutting down).
    pub const SERVICE_UNAVAILABLE: HttpStatus = HttpStatus(503);

    /// The numeric code.
    pub fn code(self) -> u16 {
        self.0
    }

    /// The reason phrase for the status line (RFC 9110 §15), or `"Unknown"`.
    pub fn reason(&self) -> &'static str {
        match self.0 {
            100 => "Continue",
            101 => "Switching Protocols",
            200 => "OK",
            201 => "Created",
            202 => "Accepted",
            204 => "No Content",
            301 => "Moved Permanently",
            302 => "Found",
            304 => "Not Modified",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            411 => "Length Required",
            413 => "Payload Too Large",
            415 => "Unsupported Media Type",
            426 => "Upgrade Required",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            _ => "Unknown",
        }
    }

    /// True for 4xx and 5xx.
    pub fn is_error(self) -> bool {
        self.0 >= 400
    }

    /// True when the response must not carry a body nor `Content-Length`
    /// (RFC 9110 §8.6 and §6.4.1: 1xx, 204 and 304).
    pub fn forbids_body(self) -> bool {
        (100..200).contains(&self.0) || self.0 == 204 || self.0 == 304
    }
}

impl fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_of_named_constants() {
        assert_eq!(
            HttpStatus::SWITCHING_PROTOCOLS.reason(),
            "Switching Protocols"
        );
        assert_eq!(HttpStatus::UPGRADE_REQUIRED.reason(), "Upgrade Required");
        assert_eq!(
            HttpStatus::HEADERS_TOO_LARGE.reason(),
            "Request Header Fields Too Large"
        );
        assert_eq!(HttpStatus::INTERNAL.reason(), "Internal Server Error");
        assert_eq!(HttpStatus(599).reason(), "Unknown");
    }

    #[test]
    fn display_is_status_line_tail() {
        assert_eq!(HttpStatus::NOT_FOUND.to_string(), "404 Not Found");
    }

    #[test]
    fn body_rules() {
        assert!(HttpStatus::SWITCHING_PROTOCOLS.forbids_body());
        assert!(HttpStatus::NO_CONTENT.forbids_body());
        assert!(!HttpStatus::OK.forbids_body());
        assert!(HttpStatus::BAD_REQUEST.is_error());
        assert!(!HttpStatus::CREATED.is_error());
    }
}
