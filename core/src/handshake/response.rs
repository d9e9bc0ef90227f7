//! The bytes of the relay's HTTP answers: the 101 of a WebSocket upgrade,
//! plain responses of the token endpoint, and error answers.

use std::io::Write as _;

use super::error::HandshakeError;
use super::status::HttpStatus;

/// The exact `101 Switching Protocols` answer (RFC 6455 §4.2.2 item 5).
///
/// `accept` is [`accept_key`](super::accept_key) of the client's key; `protocol`
/// is the selected subprotocol (RFC 6455 §4.2.2 item 5.5), never a `bearer.*`
/// entry. No extension is ever accepted, so none is named (RFC 6455 §9.1).
pub fn switching_protocols(accept: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    // RFC 6455 §4.2.2 item 5.2 and 5.3.
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
    // RFC 6455 §4.2.2 item 5.4.
    push_field(&mut out, "Sec-WebSocket-Accept", accept);
    if let Some(p) = protocol {
        // RFC 6455 §4.2.2 item 5.5.
        push_field(&mut out, "Sec-WebSocket-Protocol", p);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A complete HTTP/1.1 response.
///
/// - `Content-Length` is always added from `body`, except for 1xx, 204 and 304,
///   which carry neither body nor `Content-Length` (RFC 9110 §8.6, §6.4.1); the
///   body is then dropped.
/// - `Content-Type` is added when `content_type` is given.
/// - Error answers (4xx, 5xx) add `Connection: close`: after an error the relay
///   closes, because the rest of the request (a body it did not read) can no
///   longer be framed. A caller that passes its own `Connection` header (in
///   `headers`) takes over that decision; a success answer that should close
///   passes `("Connection", "close")`.
/// - Bytes that would break framing (CR, LF, other controls) never reach the
///   output: they are replaced by spaces in values, dropped from names.
pub fn http_response(
    status: HttpStatus,
    headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    // `write!` into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status.0, status.reason());
    for (name, value) in headers {
        push_field(&mut out, name, value);
    }
    let caller_connection = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("connection"));
    if status.is_error() && !caller_connection {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    let body = if status.forbids_body() {
        &[][..]
    } else {
        if let Some(ct) = content_type {
            push_field(&mut out, "Content-Type", ct);
        }
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
        body
    };
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A JSON answer `{"error":"<message>"}` with `status` and extra `headers`: how the relay
/// answers every HTTP failure of its own endpoints (PROTOCOL.md §8, §9). `message` says
/// what to do about it; it is escaped per RFC 8259 §7.
pub fn json_error(status: HttpStatus, headers: &[(&str, &str)], message: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: &'a str,
    }
    let body = simd_json::to_vec(&Body { error: message })
        .unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec());
    http_response(status, headers, Some("application/json"), &body)
}

/// The answer to a request that failed before the upgrade: `err.status()`, a
/// short `text/plain` body saying what went wrong and what to do, and
/// `Connection: close`.
///
/// For 426 it adds `Sec-WebSocket-Version: 13` (RFC 6455 §4.4: the versions
/// the server understands) and `Upgrade: websocket` (RFC 9110 §15.5.22: a 426
/// MUST name the required protocol, which, like any `Upgrade`, is listed in
/// `Connection`, RFC 9110 §7.8).
pub fn error_response(err: &HandshakeError) -> Vec<u8> {
    let status = err.status();
    let hint = match status {
        HttpStatus::UPGRADE_REQUIRED => {
            "retry as a websocket upgrade: GET with Upgrade: websocket, Connection: Upgrade, \
             Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key"
        }
        HttpStatus::HEADERS_TOO_LARGE => "send fewer or smaller request headers",
        HttpStatus::BAD_GATEWAY => "the upstream websocket handshake failed",
        _ => "fix the request and retry",
    };
    let body = format!("{err}\n{hint}\n");
    let mut headers: Vec<(&str, &str)> = vec![("X-Content-Type-Options", "nosniff")];
    if err.requires_upgrade() {
        headers.extend([
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade, close"),
            ("Sec-WebSocket-Version", "13"),
        ]);
    }
    http_response(
        status,
        &headers,
        Some("text/plain; charset=utf-8"),
        body.as_bytes(),
    )
}

/// Writes `name: value\r\n`, keeping only token bytes in the name and
/// replacing control bytes other than HTAB in the value (RFC 9110 §5.5).
pub(crate) fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend(name.bytes().filter(|&b| super::headers::is_tchar(b)));
    out.extend_from_slice(b": ");
    out.extend(value.bytes().map(|b| {
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            b' '
        } else {
            b
        }
    }));
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn switching_protocols_exact_bytes() {
        assert_eq!(
            text(&switching_protocols("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", None)),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        assert_eq!(
            text(&switching_protocols("abc=", Some("sci"))),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: abc=\r\nSec-WebSocket-Protocol: sci\r\n\r\n"
        );
    }

    #[test]
    fn ok_response_with_json() {
        let r = http_response(
            HttpStatus::OK,
            &[("Cache-Control", "no-store")],
            Some("application/json"),
            b"{}",
        );
        assert_eq!(
            text(&r),
            "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn errors_close_unless_caller_decides() {
        let r = http_response(
            HttpStatus::UNAUTHORIZED,
            &[("WWW-Authenticate", "Bearer")],
            None,
            b"",
        );
        assert_eq!(
            text(&r),
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nConnection: close\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let r = http_response(
            HttpStatus::NOT_FOUND,
            &[("connection", "keep-alive")],
            None,
            b"",
        );
        assert!(!text(&r).contains("close"));
    }

    #[test]
    fn no_body_statuses() {
        let r = http_response(HttpStatus::NO_CONTENT, &[], Some("text/plain"), b"ignored");
        assert_eq!(text(&r), "HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[test]
    fn header_injection_is_neutralised() {
        let r = http_response(
            HttpStatus::OK,
            &[("X-A\r\nEvil", "v\r\nSet-Cookie: x")],
            None,
            b"",
        );
        assert_eq!(
            text(&r),
            "HTTP/1.1 200 OK\r\nX-AEvil: v  Set-Cookie: x\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn error_response_426_advertises_version_13() {
        let r = error_response(&HandshakeError::UnsupportedWebSocketVersion {
            offered: "8".into(),
        });
        let t = text(&r);
        assert!(t.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{t}");
        assert!(t.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(t.contains("\r\nUpgrade: websocket\r\n"));
        assert!(t.contains("\r\nConnection: Upgrade, close\r\n"));
        assert!(t.contains("Content-Type: text/plain; charset=utf-8\r\n"));
        let (_, body) = t.split_once("\r\n\r\n").unwrap();
        assert!(body.contains("sec-websocket-version"), "{body}");
        assert!(t.contains(&format!("Content-Length: {}\r\n", body.len())));
    }

    #[test]
    fn error_response_400_and_431() {
        let t = String::from_utf8(error_response(&HandshakeError::MissingKey)).unwrap();
        assert!(t.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(t.contains("Connection: close\r\n"));
        assert!(!t.contains("Sec-WebSocket-Version"));
        assert!(t.ends_with("missing sec-websocket-key\nfix the request and retry\n"));
        let t = String::from_utf8(error_response(&HandshakeError::HeadTooLarge {
            limit: 16384,
        }))
        .unwrap();
        assert!(t.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        // The answer parses as a valid HTTP response.
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut hs);
        assert!(resp.parse(t.as_bytes()).unwrap().is_complete());
        assert_eq!(resp.code, Some(431));
    }
}

#[cfg(test)]
mod json_error_tests {
    use super::*;

    #[test]
    fn json_errors_are_escaped_json_with_their_status() {
        let out = json_error(HttpStatus::NOT_FOUND, &[], "no \"such\" path\n");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(
            text.contains("Content-Type: application/json\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with(r#"{"error":"no \"such\" path\n"}"#),
            "{text}"
        );
    }
}
