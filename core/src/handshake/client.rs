//! The client side of the RFC 6455 opening handshake (RFC 6455 §4.1), sans-IO:
//! used by the benchmark and by tests to talk to the relay.

use super::error::HandshakeError;
use super::headers::Headers;
use super::key::WebSocketKey;
use super::request::HeadLimits;
use super::response::push_field;
use super::subprotocol::BEARER_PREFIX;

/// A client's opening handshake: the request to send and the check of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHandshake {
    host: String,
    path: String,
    key: WebSocketKey,
    protocols: Vec<String>,
    extra_headers: Vec<(String, String)>,
    expected_accept: String,
    limits: HeadLimits,
}

/// A successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHandshakeDone {
    /// Bytes of the 101 answer's head: WebSocket frames start at `buf[head_len..]`.
    pub head_len: usize,
    /// The subprotocol the server selected, if any (one of those offered).
    pub protocol: Option<String>,
}

impl ClientHandshake {
    /// A handshake for `ws://{host}{path}`.
    ///
    /// `key` must be fresh for each connection ([`WebSocketKey::from_random`]);
    /// `protocols` are offered in order (a `bearer.<token>` entry included, when
    /// used); `extra_headers` (for example `Authorization`) are sent as given.
    /// `path` is an origin-form target (`/a/b?c`); control bytes in any value are
    /// replaced by spaces.
    pub fn new(
        host: &str,
        path: &str,
        key: WebSocketKey,
        protocols: &[&str],
        extra_headers: &[(&str, &str)],
    ) -> ClientHandshake {
        ClientHandshake {
            host: host.to_owned(),
            path: path.to_owned(),
            expected_accept: key.accept(),
            key,
            protocols: protocols.iter().map(|p| (*p).to_owned()).collect(),
            extra_headers: extra_headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            limits: HeadLimits::default(),
        }
    }

    /// The key this handshake sends.
    pub fn key(&self) -> &WebSocketKey {
        &self.key
    }

    /// The request bytes (RFC 6455 §4.1 items 1 to 10, no extensions offered).
    pub fn request_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"GET ");
        out.extend(
            self.path
                .bytes()
                .map(|b| if b <= b' ' || b == 0x7f { b'_' } else { b }),
        );
        out.extend_from_slice(b" HTTP/1.1\r\n");
        push_field(&mut out, "Host", &self.host);
        out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
        push_field(&mut out, "Sec-WebSocket-Key", self.key.as_str());
        out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
        if !self.protocols.is_empty() {
            push_field(
                &mut out,
                "Sec-WebSocket-Protocol",
                &self.protocols.join(", "),
            );
        }
        for (n, v) in &self.extra_headers {
            push_field(&mut out, n, v);
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Checks the server's answer, which starts at `buf[0]`.
    ///
    /// `Ok(None)` while its head is incomplete (up to 16 KiB); then either the
    /// handshake is done, or the answer broke RFC 6455 §4.1 and the client must
    /// _Fail the WebSocket Connection_.
    pub fn handle_response(
        &self,
        buf: &[u8],
    ) -> Result<Option<ClientHandshakeDone>, HandshakeError> {
        let max = self.limits.max_head_bytes;
        let window = &buf[..buf.len().min(max.saturating_add(1))];
        let mut storage = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        let mut resp = httparse::Response::new(&mut storage);
        let head_len = match resp.parse(window) {
            Ok(httparse::Status::Complete(n)) if n <= max => n,
            Ok(httparse::Status::Partial) if buf.len() <= max => return Ok(None),
            Ok(_) => return Err(HandshakeError::HeadTooLarge { limit: max }),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HandshakeError::TooManyHeaders {
                    limit: self.limits.max_headers,
                })
            }
            Err(e) => return Err(HandshakeError::Malformed(e)),
        };
        let status = resp.code.unwrap_or(0);
        // RFC 6455 §4.1: "If the status code received from the server is not 101,
        // the client handles the response per HTTP procedures."
        if status != 101 {
            return Err(HandshakeError::UnexpectedStatus { status });
        }
        let mut headers = Headers::new();
        for h in resp.headers.iter() {
            let value = String::from_utf8_lossy(h.value);
            headers.push(h.name, value.trim_matches(|c| c == ' ' || c == '\t'));
        }
        // RFC 6455 §4.1 item 2: Upgrade must be "websocket" (case-insensitive).
        if !headers.has_token("upgrade", "websocket") {
            return Err(HandshakeError::ResponseNotWebSocket);
        }
        // RFC 6455 §4.1 item 3: Connection must include "Upgrade" (case-insensitive).
        if !headers.has_token("connection", "upgrade") {
            return Err(HandshakeError::ResponseMissingConnectionUpgrade);
        }
        // RFC 6455 §4.1 item 4: Sec-WebSocket-Accept must be base64(SHA-1(key + GUID)).
        let got = headers.get_one("sec-websocket-accept")?.unwrap_or("");
        if got != self.expected_accept {
            return Err(HandshakeError::WrongAcceptKey {
                expected: self.expected_accept.clone(),
                got: got.to_owned(),
            });
        }
        // RFC 6455 §4.1 item 5: we offered no extension, so none may be in use.
        if let Some(ext) = headers.list("sec-websocket-extensions").next() {
            return Err(HandshakeError::UnexpectedExtension {
                extension: ext.to_owned(),
            });
        }
        // RFC 6455 §4.1 item 6: a selected subprotocol must be one we offered.
        // A bearer entry is never a protocol: a server echoing it is refused too.
        let protocol = match headers.get_one("sec-websocket-protocol")? {
            None => None,
            Some(p) => {
                let offered = self.protocols.iter().any(|o| o == p);
                let bearer = p
                    .get(..BEARER_PREFIX.len())
                    .is_some_and(|x| x.eq_ignore_ascii_case(BEARER_PREFIX));
                if !offered || bearer {
                    return Err(HandshakeError::UnexpectedSubprotocol {
                        protocol: p.to_owned(),
                    });
                }
                Some(p.to_owned())
            }
        };
        Ok(Some(ClientHandshakeDone { head_len, protocol }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::response::{http_response, switching_protocols};
    use crate::handshake::status::HttpStatus;

    fn client(protocols: &[&str]) -> ClientHandshake {
        ClientHandshake::new(
            "relay:8080",
            "/cloud-connector/v1/pos-listener",
            WebSocketKey::parse("dGhlIHNhbXBsZSBub25jZQ==").unwrap(),
            protocols,
            &[("Authorization", "Bearer t")],
        )
    }

    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    #[test]
    fn request_bytes_exact() {
        assert_eq!(
            String::from_utf8(client(&["sci", "posrelay"]).request_bytes()).unwrap(),
            "GET /cloud-connector/v1/pos-listener HTTP/1.1\r\nHost: relay:8080\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: sci, posrelay\r\nAuthorization: Bearer t\r\n\r\n"
        );
        assert!(!String::from_utf8(client(&[]).request_bytes())
            .unwrap()
            .contains("Protocol"));
    }

    #[test]
    fn accepts_good_answer_incrementally() {
        let c = client(&["sci"]);
        let mut resp = switching_protocols(ACCEPT, Some("sci"));
        let head = resp.len();
        resp.extend_from_slice(b"\x81\x00");
        for i in 0..head {
            assert_eq!(c.handle_response(&resp[..i]), Ok(None), "prefix {i}");
        }
        let done = c.handle_response(&resp).unwrap().unwrap();
        assert_eq!(done.head_len, head);
        assert_eq!(done.protocol.as_deref(), Some("sci"));
        let none = client(&["sci"]).handle_response(&switching_protocols(ACCEPT, None));
        assert_eq!(none.unwrap().unwrap().protocol, None);
    }

    #[test]
    fn refuses_bad_answers() {
        let c = client(&["sci", "bearer.x"]);
        let r = http_response(HttpStatus::UNAUTHORIZED, &[], None, b"");
        assert_eq!(
            c.handle_response(&r),
            Err(HandshakeError::UnexpectedStatus { status: 401 })
        );
        assert_eq!(
            c.handle_response(&switching_protocols("AAAA", None)),
            Err(HandshakeError::WrongAcceptKey {
                expected: ACCEPT.into(),
                got: "AAAA".into()
            })
        );
        assert_eq!(
            c.handle_response(&switching_protocols(ACCEPT, Some("other"))),
            Err(HandshakeError::UnexpectedSubprotocol {
                protocol: "other".into()
            })
        );
        assert_eq!(
            c.handle_response(&switching_protocols(ACCEPT, Some("bearer.x"))),
            Err(HandshakeError::UnexpectedSubprotocol {
                protocol: "bearer.x".into()
            })
        );
        let no_upgrade = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
        );
        assert_eq!(
            c.handle_response(no_upgrade.as_bytes()),
            Err(HandshakeError::ResponseNotWebSocket)
        );
        let no_conn = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
        );
        assert_eq!(
            c.handle_response(no_conn.as_bytes()),
            Err(HandshakeError::ResponseMissingConnectionUpgrade)
        );
        let ext = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        );
        assert_eq!(
            c.handle_response(ext.as_bytes()),
            Err(HandshakeError::UnexpectedExtension {
                extension: "permessage-deflate".into()
            })
        );
        assert!(matches!(
            c.handle_response(b"HTTX/1.1 101\r\n\r\n"),
            Err(HandshakeError::Malformed(_))
        ));
        assert!(c.handle_response(&vec![b'a'; 20_000]).is_err());
    }

    #[test]
    fn seed_answer_shape_is_accepted() {
        // seeds/000: the answer of a Python `websockets` server to the terminal,
        // with extra Date and Server headers. The seed's accept value does not
        // match the seed's key (two captures pasted together), so it is refused,
        // and the same answer with the right accept value is taken.
        let c = ClientHandshake::new(
            "192.168.29.207",
            "/",
            WebSocketKey::parse("CujtCKpQPzowDloV4qp+hQ==").unwrap(),
            &["sci"],
            &[],
        );
        let seed = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: Y2nXMyfwdnd360ikQgJzX7r3Gak=\r\nDate: Tue, 12 Apr 2022 07:14:07 GMT\r\nServer: Python/3.10 websockets/10.2\r\n\r\n";
        assert!(matches!(
            c.handle_response(seed.as_bytes()),
            Err(HandshakeError::WrongAcceptKey { .. })
        ));
        let fixed = seed.replace(
            "Y2nXMyfwdnd360ikQgJzX7r3Gak=",
            "W1DnZ1gin4ZTo7thUPGE4k61LGo=",
        );
        let done = c.handle_response(fixed.as_bytes()).unwrap().unwrap();
        assert_eq!(done.head_len, fixed.len());
        assert_eq!(done.protocol, None);
    }
}
