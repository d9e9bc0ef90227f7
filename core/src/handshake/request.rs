//! Incremental, sans-IO parsing of an HTTP/1.1 request head (RFC 9112) with httparse.
//!
//! One listener serves both plain HTTP (the OAuth token endpoint) and WebSocket
//! upgrades, so this layer knows nothing of WebSocket: it yields a
//! [`RequestHead`] and leaves the body (or the first WebSocket frames) to the caller.

use std::fmt;

use super::error::HandshakeError;
use super::headers::Headers;
use super::lenient::{self, Normalized};

/// Bounds on a request head, checked before anything is allocated from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most bytes the head (request-line, header lines and final empty line) may
    /// take; more answers 431 (PROTOCOL.md §8, default 16 KiB).
    pub max_head_bytes: usize,
    /// Most header lines; more answers 431 (default 64).
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
        }
    }
}

/// A request method (RFC 9110 §9). Methods are case-sensitive: `get` is `Other`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH (RFC 5789)
    Patch,
    /// DELETE
    Delete,
    /// HEAD
    Head,
    /// OPTIONS
    Options,
    /// Any other method token, as received.
    Other(String),
}

impl Method {
    /// The method for a request-line token.
    pub fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_owned()),
        }
    }

    /// The method token.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
            Method::Options => "OPTIONS",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed request head. Everything is owned: the read buffer can be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The path of the request-target, still percent-encoded, always starting
    /// with `/` (or exactly `*` for `OPTIONS *`).
    pub path: String,
    /// The query after `?`, still percent-encoded, without the `?`.
    pub query: Option<String>,
    /// 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version_minor: u8,
    /// The header fields, in order.
    pub headers: Headers,
    /// Bytes the head took in the input, final empty line included: the body
    /// or the first WebSocket bytes start at `buf[head_len..]`.
    pub head_len: usize,
}

/// Parses a request head from the start of `buf`.
///
/// - `Ok(None)`: the head is incomplete and no more than `max_head_bytes` have
///   arrived; call again with more bytes (from the same start).
/// - `Ok(Some(head))`: the head ends at `head.head_len`; the bytes after it are
///   untouched and belong to the caller (a `Content-Length` body or WebSocket frames).
/// - `Err(e)`: answer `e.status()` (400 or 431) and close.
///
/// Rules enforced beyond HTTP syntax:
/// - 431 once more than `max_head_bytes` arrived without the end of the head, or
///   more than `max_headers` header lines (RFC 6585 §5).
/// - `Transfer-Encoding` is refused with 400: the relay only takes bodies framed
///   by `Content-Length` (RFC 9112 §6.1 allows a server to refuse codings it does
///   not implement), which also removes the TE/CL smuggling ambiguity.
/// - `Content-Length` must be valid and unambiguous (RFC 9112 §6.3 item 5).
/// - An HTTP/1.1 request needs exactly one valid `Host` (RFC 9112 §3.2).
/// - The request-target is origin-form, `*` for OPTIONS, or absolute-form whose
///   authority equals `Host` (RFC 9112 §3.2).
///
/// Leniency: a bare LF ends a line (RFC 9112 §2.2 allows it), and whitespace
/// between a header name and its colon is tolerated on headers the relay never
/// interprets, because Verifone terminals send `x-vfi-pinpad-id : 1`; on
/// framing, handshake or credential headers it is a 400 (RFC 9112 §5.1).
pub fn parse_request_head(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<RequestHead>, HandshakeError> {
    // Never look further than one byte past the limit: that byte decides 431.
    let window = &buf[..buf.len().min(limits.max_head_bytes.saturating_add(1))];
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut storage);
    match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => finish(&req, n, limits),
        Ok(httparse::Status::Partial) => need_more(buf, limits),
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::TooManyHeaders {
            limit: limits.max_headers,
        }),
        Err(httparse::Error::HeaderName) => parse_lenient(buf, window, limits),
        Err(e) => Err(HandshakeError::Malformed(e)),
    }
}

/// Second pass for a head with whitespace before a colon (see [`lenient`]).
fn parse_lenient(
    buf: &[u8],
    window: &[u8],
    limits: &HeadLimits,
) -> Result<Option<RequestHead>, HandshakeError> {
    let (bytes, removed, names) = match lenient::normalize(window) {
        Normalized::NeedMore => return need_more(buf, limits),
        Normalized::Head {
            bytes,
            removed,
            names,
        } => (bytes, removed, names),
    };
    if names.is_empty() {
        // Not the tolerated case: the original error stands.
        return Err(HandshakeError::Malformed(httparse::Error::HeaderName));
    }
    // RFC 9112 §5.1: whitespace before the colon MUST be rejected with 400;
    // we only look away on headers the relay never reads.
    if let Some(name) = names.into_iter().find(|n| lenient::is_interpreted(n)) {
        return Err(HandshakeError::SpaceBeforeColon { name });
    }
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut storage);
    match req.parse(&bytes) {
        Ok(httparse::Status::Complete(n)) => finish(&req, n + removed, limits),
        Ok(httparse::Status::Partial) => need_more(buf, limits),
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::TooManyHeaders {
            limit: limits.max_headers,
        }),
        Err(e) => Err(HandshakeError::Malformed(e)),
    }
}

fn need_more(buf: &[u8], limits: &HeadLimits) -> Result<Option<RequestHead>, HandshakeError> {
    // RFC 6585 §5 / PROTOCOL.md §8: 431 as soon as the limit is passed.
    if buf.len() > limits.max_head_bytes {
        Err(HandshakeError::HeadTooLarge {
            limit: limits.max_head_bytes,
        })
    } else {
        Ok(None)
    }
}

fn finish(
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    limits: &HeadLimits,
) -> Result<Option<RequestHead>, HandshakeError> {
    if head_len > limits.max_head_bytes {
        return Err(HandshakeError::HeadTooLarge {
            limit: limits.max_head_bytes,
        });
    }
    let (Some(method), Some(target), Some(version_minor)) = (req.method, req.path, req.version)
    else {
        // httparse sets all three on Complete; stay total anyway.
        return Err(HandshakeError::Malformed(httparse::Error::Token));
    };
    let mut headers = Headers::new();
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        headers.push(h.name, value.trim_matches(|c| c == ' ' || c == '\t'));
    }

    // RFC 9112 §6.1: we implement no transfer coding; refuse rather than misframe.
    if headers.contains("transfer-encoding") {
        return Err(HandshakeError::TransferEncoding);
    }
    // RFC 9112 §6.3 item 5: invalid or conflicting Content-Length is unrecoverable.
    headers.content_length()?;

    // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code
    // to any HTTP/1.1 request message that lacks a Host header field and to any
    // request message that contains more than one Host header field line or a
    // Host header field with an invalid field value."
    let host = headers.get_one("host")?;
    match host {
        None if version_minor >= 1 => return Err(HandshakeError::MissingHost),
        Some(h) if !is_valid_host(h) => {
            return Err(HandshakeError::InvalidHost {
                value: h.to_owned(),
            })
        }
        _ => {}
    }

    let method = Method::from_token(method);
    let (path, query) = split_target(&method, target, host)?;
    Ok(Some(RequestHead {
        method,
        path,
        query,
        version_minor,
        headers,
        head_len,
    }))
}

/// `uri-host [ ":" port ]` (RFC 3986 §3.2.2): unreserved, pct-encoded,
/// sub-delims, `:` and the brackets of an IP-literal. Empty is allowed by
/// RFC 9112 §3.2 (a target without authority); the upgrade layer refuses it.
fn is_valid_host(h: &str) -> bool {
    h.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b))
}

/// Splits the request-target into path and query (RFC 9112 §3.2).
fn split_target(
    method: &Method,
    target: &str,
    host: Option<&str>,
) -> Result<(String, Option<String>), HandshakeError> {
    let bad = || HandshakeError::BadTarget {
        target: target.to_owned(),
    };
    // RFC 9112 §3.2: a request-target never carries a fragment.
    if target.contains('#') {
        return Err(bad());
    }
    // RFC 9112 §3.2.1 origin-form.
    if target.starts_with('/') {
        return Ok(split_query(target));
    }
    // RFC 9112 §3.2.4 asterisk-form, only for OPTIONS.
    if target == "*" && *method == Method::Options {
        return Ok(("*".to_owned(), None));
    }
    // RFC 9112 §3.2.2 absolute-form: a server MUST accept it. Its authority
    // overrides Host; to keep one source of truth we require them to agree.
    let rest = ["http://", "https://", "ws://", "wss://"]
        .iter()
        .find_map(|scheme| {
            let prefix = target.get(..scheme.len())?;
            prefix
                .eq_ignore_ascii_case(scheme)
                .then(|| &target[scheme.len()..])
        })
        .ok_or_else(bad)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    if authority.is_empty() || host.is_some_and(|h| !h.eq_ignore_ascii_case(authority)) {
        return Err(bad());
    }
    if path_and_query.starts_with('/') {
        Ok(split_query(path_and_query))
    } else {
        let (_, query) = split_query(path_and_query);
        Ok(("/".to_owned(), query))
    }
}

fn split_query(s: &str) -> (String, Option<String>) {
    match s.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (s.to_owned(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::status::HttpStatus;

    fn parse(b: &[u8]) -> Result<Option<RequestHead>, HandshakeError> {
        parse_request_head(b, &HeadLimits::default())
    }

    fn ok(b: &[u8]) -> RequestHead {
        parse(b).expect("valid").expect("complete")
    }

    fn status(b: &[u8]) -> u16 {
        parse(b).expect_err("must fail").status().0
    }

    const SEED: &[u8] = b"GET / HTTP/1.1\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
Host: 192.168.29.207\r\n\
Origin: http://192.168.29.207\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: CujtCKpQPzowDloV4qp+hQ==\r\n\
Sec-WebSocket-Protocol: sci\r\n\
Sec-WebSocket-Version: 13\r\n\
x-vfi-pinpad-id : 1\r\n\r\n";

    #[test]
    fn simple_post_with_body_untouched() {
        let req = b"POST /oauth2/v1/acme/token?x=1 HTTP/1.1\r\nHost: relay\r\nContent-Length: 4\r\n\r\nabcdMORE";
        let h = ok(req);
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.path, "/oauth2/v1/acme/token");
        assert_eq!(h.query.as_deref(), Some("x=1"));
        assert_eq!(h.version_minor, 1);
        assert_eq!(h.headers.content_length(), Ok(Some(4)));
        assert_eq!(&req[h.head_len..], b"abcdMORE");
    }

    #[test]
    fn seed_request_with_space_before_colon_is_tolerated() {
        let mut buf = SEED.to_vec();
        buf.extend_from_slice(b"\x81\x85");
        let h = ok(&buf);
        assert_eq!(h.head_len, SEED.len());
        assert_eq!(&buf[h.head_len..], b"\x81\x85");
        assert_eq!(h.headers.get("x-vfi-pinpad-id"), Some("1"));
        assert_eq!(h.headers.get("sec-websocket-protocol"), Some("sci"));
        assert_eq!(h.headers.len(), 10);
    }

    #[test]
    fn seed_request_every_split_needs_more_then_same() {
        let whole = ok(SEED);
        for i in 0..SEED.len() {
            assert_eq!(parse(&SEED[..i]), Ok(None), "prefix {i}");
        }
        assert_eq!(ok(SEED), whole);
    }

    #[test]
    fn space_before_colon_on_interpreted_header_is_400() {
        for name in [
            "Content-Length",
            "Host",
            "Sec-WebSocket-Key",
            "Transfer-Encoding",
        ] {
            let req = format!("GET / HTTP/1.1\r\nHost: a\r\n{name} : 1\r\n\r\n");
            assert_eq!(
                parse(req.as_bytes()),
                Err(HandshakeError::SpaceBeforeColon {
                    name: name.to_ascii_lowercase()
                })
            );
        }
    }

    #[test]
    fn other_bad_header_names_stay_400() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nBad@Name: 1\r\n\r\n"),
            Err(HandshakeError::Malformed(httparse::Error::HeaderName))
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nx-a : 1\r\nBad@Name: 1\r\n\r\n"),
            Err(HandshakeError::Malformed(httparse::Error::HeaderName))
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n"),
            400
        );
    }

    #[test]
    fn malformed_request_lines() {
        assert_eq!(status(b"GET/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 400);
        assert_eq!(status(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 400);
        assert_eq!(status(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), 400);
    }

    #[test]
    fn head_limit_431_at_limit_plus_one() {
        let limits = HeadLimits::default();
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
        buf.resize(limits.max_head_bytes, b'a');
        assert_eq!(parse(&buf), Ok(None));
        buf.push(b'a');
        assert_eq!(
            parse(&buf),
            Err(HandshakeError::HeadTooLarge {
                limit: limits.max_head_bytes
            })
        );
        assert_eq!(status(&buf), 431);
    }

    #[test]
    fn head_of_exactly_the_limit_is_accepted() {
        let limits = HeadLimits::default();
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
        buf.resize(limits.max_head_bytes - 4, b'a');
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(ok(&buf).head_len, limits.max_head_bytes);
        // One more byte of head: 431 even though it arrived whole.
        buf.insert(40, b'a');
        assert_eq!(status(&buf), 431);
    }

    #[test]
    fn too_many_headers_431() {
        let limits = HeadLimits {
            max_head_bytes: 16 * 1024,
            max_headers: 3,
        };
        let req = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        let err = parse_request_head(req, &limits).unwrap_err();
        assert_eq!(err, HandshakeError::TooManyHeaders { limit: 3 });
        assert_eq!(err.status(), HttpStatus::HEADERS_TOO_LARGE);
        assert!(parse_request_head(&req[..], &HeadLimits::default()).is_ok());
    }

    #[test]
    fn transfer_encoding_refused() {
        let req = b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(req), Err(HandshakeError::TransferEncoding));
        assert_eq!(status(req), 400);
    }

    #[test]
    fn content_length_checked() {
        assert_eq!(
            status(b"POST /t HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n"),
            400
        );
        assert_eq!(
            parse(b"POST /t HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HandshakeError::ConflictingContentLength)
        );
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Err(HandshakeError::MissingHost)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(HandshakeError::DuplicateHeader {
                name: "host".into()
            })
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
            Err(HandshakeError::InvalidHost {
                value: "a/b".into()
            })
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: u@h\r\n\r\n"), 400);
        // HTTP/1.0 may omit Host.
        let h = ok(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(h.version_minor, 0);
        assert_eq!(
            ok(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
                .headers
                .get("host"),
            Some("[::1]:8080")
        );
    }

    #[test]
    fn targets() {
        let h = ok(b"GET http://relay:80/a/b?c HTTP/1.1\r\nHost: relay:80\r\n\r\n");
        assert_eq!((h.path.as_str(), h.query.as_deref()), ("/a/b", Some("c")));
        let h = ok(b"GET HTTP://relay?q HTTP/1.1\r\nHost: relay\r\n\r\n");
        assert_eq!((h.path.as_str(), h.query.as_deref()), ("/", Some("q")));
        let h = ok(b"OPTIONS * HTTP/1.1\r\nHost: relay\r\n\r\n");
        assert_eq!(h.path, "*");
        assert_eq!(
            status(b"GET http://other/a HTTP/1.1\r\nHost: relay\r\n\r\n"),
            400
        );
        assert_eq!(status(b"GET * HTTP/1.1\r\nHost: relay\r\n\r\n"), 400);
        assert_eq!(status(b"GET relay:80 HTTP/1.1\r\nHost: relay\r\n\r\n"), 400);
        assert_eq!(status(b"GET /a#f HTTP/1.1\r\nHost: relay\r\n\r\n"), 400);
    }

    #[test]
    fn methods_are_case_sensitive() {
        assert_eq!(
            ok(b"get / HTTP/1.1\r\nHost: a\r\n\r\n").method,
            Method::Other("get".into())
        );
        assert_eq!(
            ok(b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n").method.as_str(),
            "DELETE"
        );
    }

    #[test]
    fn bare_lf_and_leading_empty_lines() {
        let req = b"\r\nGET /x HTTP/1.1\nHost: a\n\nrest";
        let h = ok(req);
        assert_eq!(h.path, "/x");
        assert_eq!(&req[h.head_len..], b"rest");
    }

    #[test]
    fn values_trimmed_and_non_utf8_replaced() {
        let h = ok(b"GET / HTTP/1.1\r\nHost: a\r\nX-A:   v  \r\nX-B: caf\xe9\r\n\r\n");
        assert_eq!(h.headers.get("x-a"), Some("v"));
        assert_eq!(h.headers.get("x-b"), Some("caf\u{fffd}"));
    }
}
