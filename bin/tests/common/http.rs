//! HTTP: answers as the tests read them, raw requests a real client would never send,
//! and the encodings of credentials (Basic, forms) and tokens (JWT claims).

use super::*;

/// An HTTP answer: status, headers (lower-cased names), body text.
#[derive(Debug, Clone)]
pub struct HttpResp {
    /// Status code.
    pub status: u16,
    /// Header (lower-cased name, value) pairs.
    pub headers: Vec<(String, String)>,
    /// Body as text.
    pub body: String,
}

impl HttpResp {
    pub(crate) fn from_ureq(resp: ureq::Response) -> HttpResp {
        let status = resp.status();
        let headers = resp
            .headers_names()
            .into_iter()
            .flat_map(|n| {
                resp.all(&n)
                    .into_iter()
                    .map(|v| (n.to_ascii_lowercase(), v.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let body = resp.into_string().unwrap_or_default();
        HttpResp {
            status,
            headers,
            body,
        }
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (panics with the body otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?} (status {})",
                self.body, self.status
            )
        })
    }

    /// Asserts the status.
    pub fn expect_status(&self, status: u16, what: &str) -> &Self {
        assert_eq!(
            self.status, status,
            "{what}: unexpected status; body {:?}",
            self.body
        );
        self
    }

    /// Asserts `status` and a JSON body `{"error": <string>}` with a JSON content type;
    /// returns the error string.
    pub fn expect_error(&self, status: u16, what: &str) -> String {
        self.expect_status(status, what);
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "{what}: content-type {ct:?} is not JSON"
        );
        let v = self.json();
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no \"error\" string in {v}"))
            .to_string()
    }
}

/// A raw HTTP answer read off a TcpStream.
#[derive(Debug)]
pub struct RawResp {
    /// Status code.
    pub status: u16,
    /// The whole head as text.
    pub head: String,
    /// Header (lower-cased name, value) pairs.
    pub headers: Vec<(String, String)>,
}

impl RawResp {
    /// First value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Connects to `addr` with IO timeouts set.
pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("tcp connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Writes `request` and reads the answer's head.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> RawResp {
    let mut s = raw_connect(addr);
    // The relay may answer (and close) before reading all of a huge request.
    let _ = s.write_all(request);
    read_head(&mut s)
}

/// Reads the body of `resp` (by Content-Length; empty without one) from `s`.
pub fn read_body(s: &mut TcpStream, resp: &RawResp) -> Vec<u8> {
    let len: usize = resp
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("read response body");
    body
}

/// RFC 9112 §9.3/§9.6: after a response without `Connection: close` the connection stays
/// usable for another request; after one with it, the server closes. Sends `request` twice
/// on one connection and asserts whichever the first answer announced; returns both statuses.
pub fn assert_connection_semantics(addr: SocketAddr, request: &[u8], what: &str) -> Vec<u16> {
    let mut s = raw_connect(addr);
    s.write_all(request).expect("write request");
    let first = read_head(&mut s);
    read_body(&mut s, &first);
    let closes = first
        .header("connection")
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
    if closes {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(
            rest.is_empty(),
            "{what}: bytes after a Connection: close answer"
        );
        return vec![first.status];
    }
    let write = s.write_all(request);
    let mut probe = [0u8; 1];
    let peeked = s.peek(&mut probe);
    assert!(
        write.is_ok() && matches!(peeked, Ok(1)),
        "{what}: answer {} had no `Connection: close` but the connection was closed \
         (RFC 9112 §9.6: a server that closes must say so); head {:?}",
        first.status,
        first.head
    );
    let second = read_head(&mut s);
    vec![first.status, second.status]
}

/// Reads an HTTP response head from `s`.
pub fn read_head(s: &mut impl Read) -> RawResp {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => buf.push(byte[0]),
            Err(e) => panic!(
                "reading response head: {e} (got {:?})",
                String::from_utf8_lossy(&buf)
            ),
        }
        assert!(buf.len() < 64 * 1024, "response head too long");
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    assert!(
        version.starts_with("HTTP/1."),
        "bad status line {status_line:?} (head {head:?})"
    );
    let status = parts
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    RawResp {
        status,
        head,
        headers,
    }
}

/// A WebSocket upgrade request head for `path` with extra header lines.
pub fn upgrade_request(path: &str, extra: &[&str]) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// `Basic base64(id:secret)` (RFC 6749 §2.3.1 form-encodes both first).
pub fn basic_auth(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", form_encode(id), form_encode(secret)))
    )
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The claims of a JWT (payload base64url-decoded and parsed), asserting three parts.
pub fn jwt_claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS compact token has 3 parts: {token}");
    let header = URL_SAFE_NO_PAD.decode(parts[0]).expect("header base64url");
    let header: Value = serde_json::from_slice(&header).expect("header json");
    assert!(header["alg"].is_string(), "JWT header names alg: {header}");
    assert_ne!(header["alg"], "none", "unsigned JWT");
    let payload = URL_SAFE_NO_PAD.decode(parts[1]).expect("payload base64url");
    serde_json::from_slice(&payload).expect("payload json")
}
