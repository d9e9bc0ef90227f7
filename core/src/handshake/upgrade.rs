//! The server side of the RFC 6455 opening handshake: checking a request head
//! against RFC 6455 §4.2.1.

use super::error::HandshakeError;
use super::key::WebSocketKey;
use super::request::{Method, RequestHead};
use super::subprotocol::OfferedProtocols;

/// A request head that passed every check of RFC 6455 §4.2.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The request path (percent-encoded, without query).
    pub path: String,
    /// The `Host` value (RFC 6455 §4.2.1 item 2), never empty.
    pub host: String,
    /// The validated `Sec-WebSocket-Key`.
    pub key: WebSocketKey,
    /// Offered `Sec-WebSocket-Protocol` entries in order, trimmed, bearer entry included.
    pub protocols: Vec<String>,
    /// The `Authorization` value, if sent (at most one).
    pub authorization: Option<String>,
    /// The `Origin` value, if sent (RFC 6455 §4.2.1 item 7; at most one).
    pub origin: Option<String>,
}

/// True when the request asks for a WebSocket: an `Upgrade` list holding the
/// token `websocket`, ASCII case-insensitively (RFC 6455 §4.2.1 item 3).
pub fn is_upgrade_attempt(head: &RequestHead) -> bool {
    head.headers.has_token("upgrade", "websocket")
}

impl UpgradeRequest {
    /// Checks a request for a WebSocket path.
    ///
    /// Order of checks (first failure wins):
    /// 1. No `Upgrade: websocket` at all: 426, the resource only speaks WebSocket
    ///    (PROTOCOL.md §8; RFC 9110 §15.5.22).
    /// 2. RFC 6455 §4.2.1 item 1: method GET, else 400.
    /// 3. RFC 6455 §4.2.1 item 1: HTTP/1.1 or higher, else 400.
    /// 4. RFC 6455 §4.2.1 item 2: exactly one non-empty `Host`, else 400.
    /// 5. RFC 6455 §4.2.1 item 4: `Connection` lists `Upgrade`, else 400.
    /// 6. RFC 6455 §4.2.1 item 6: `Sec-WebSocket-Version: 13`, else 426 with
    ///    `Sec-WebSocket-Version: 13` (§4.4). A *missing* version also answers 426:
    ///    §4.2.1's last paragraph would allow 400, but 426 with the version header
    ///    tells the client exactly what to send, which is what integrators expect.
    ///    Checked before the key so that a client of another version learns the
    ///    version we speak rather than a key complaint.
    /// 7. RFC 6455 §4.2.1 item 5: exactly one `Sec-WebSocket-Key` (§11.3.1: it
    ///    "MUST NOT appear more than once") that base64-decodes to 16 bytes, else 400.
    /// 8. RFC 6455 §4.2.1 item 8: `Sec-WebSocket-Protocol` entries are tokens, else 400.
    /// 9. At most one `Authorization` and one `Origin`, else 400.
    ///
    /// `Sec-WebSocket-Extensions` (item 9) is ignored: the relay accepts none, so
    /// the answer names none (RFC 6455 §9.1).
    pub fn from_head(head: &RequestHead) -> Result<UpgradeRequest, HandshakeError> {
        let headers = &head.headers;
        if !is_upgrade_attempt(head) {
            return Err(HandshakeError::NotWebSocketUpgrade);
        }
        // RFC 6455 §4.2.1 item 1: "An HTTP/1.1 or higher GET request".
        if head.method != Method::Get {
            return Err(HandshakeError::MethodNotGet {
                method: head.method.to_string(),
            });
        }
        if head.version_minor < 1 {
            return Err(HandshakeError::HttpVersionTooOld {
                minor: head.version_minor,
            });
        }
        // RFC 6455 §4.2.1 item 2: "A |Host| header field containing the server's authority."
        let host = match headers.get_one("host")? {
            None => return Err(HandshakeError::MissingHost),
            Some("") => {
                return Err(HandshakeError::InvalidHost {
                    value: String::new(),
                })
            }
            Some(h) => h.to_owned(),
        };
        // RFC 6455 §4.2.1 item 4: "A |Connection| header field that includes the
        // token "Upgrade", treated as an ASCII case-insensitive value."
        if !headers.has_token("connection", "upgrade") {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        // RFC 6455 §4.2.1 item 6: "A |Sec-WebSocket-Version| header field, with a value of 13."
        let versions: Vec<&str> = headers.list("sec-websocket-version").collect();
        match versions.as_slice() {
            ["13"] => {}
            [] => return Err(HandshakeError::MissingWebSocketVersion),
            _ => {
                return Err(HandshakeError::UnsupportedWebSocketVersion {
                    offered: versions.join(", "),
                })
            }
        }
        // RFC 6455 §4.2.1 item 5 and §11.3.1 (at most once).
        let key = match headers.get_one("sec-websocket-key")? {
            None => return Err(HandshakeError::MissingKey),
            Some(k) => WebSocketKey::parse(k)?,
        };
        // RFC 6455 §4.2.1 item 8: "Optionally, a |Sec-WebSocket-Protocol| header field".
        let protocols = OfferedProtocols::from_headers(headers)?;
        let authorization = headers.get_one("authorization")?.map(str::to_owned);
        // RFC 6455 §4.2.1 item 7: "Optionally, an |Origin| header field."
        let origin = headers.get_one("origin")?.map(str::to_owned);
        Ok(UpgradeRequest {
            path: head.path.clone(),
            host,
            key,
            protocols: protocols.entries().to_vec(),
            authorization,
            origin,
        })
    }

    /// The offered subprotocols, for [`OfferedProtocols::select`] and
    /// [`OfferedProtocols::bearer_token`].
    pub fn offered_protocols(&self) -> OfferedProtocols {
        OfferedProtocols::new(self.protocols.clone())
    }

    /// The `Sec-WebSocket-Accept` value for the 101 answer.
    pub fn accept_key(&self) -> String {
        self.key.accept()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::headers::Headers;
    use crate::handshake::request::{parse_request_head, HeadLimits};

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn base() -> Vec<(&'static str, String)> {
        vec![
            ("Host", "relay.example:8080".to_owned()),
            ("Upgrade", "websocket".to_owned()),
            ("Connection", "Upgrade".to_owned()),
            ("Sec-WebSocket-Key", KEY.to_owned()),
            ("Sec-WebSocket-Version", "13".to_owned()),
        ]
    }

    fn head_with(method: Method, minor: u8, fields: &[(&str, String)]) -> RequestHead {
        let mut headers = Headers::new();
        for (n, v) in fields {
            headers.push(*n, v.as_str());
        }
        RequestHead {
            method,
            path: "/cloud-connector/v1/pos-listener".into(),
            query: None,
            version_minor: minor,
            headers,
            head_len: 0,
        }
    }

    fn check(fields: &[(&str, String)]) -> Result<UpgradeRequest, HandshakeError> {
        UpgradeRequest::from_head(&head_with(Method::Get, 1, fields))
    }

    fn without(name: &str) -> Vec<(&'static str, String)> {
        base().into_iter().filter(|(n, _)| *n != name).collect()
    }

    fn replaced(name: &str, value: &str) -> Vec<(&'static str, String)> {
        base()
            .into_iter()
            .map(|(n, v)| {
                if n == name {
                    (n, value.to_owned())
                } else {
                    (n, v)
                }
            })
            .collect()
    }

    fn with(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut f = base();
        f.extend(extra.iter().map(|(n, v)| (*n, (*v).to_owned())));
        f
    }

    #[test]
    fn valid_request() {
        let u = check(&with(&[
            ("Sec-WebSocket-Protocol", "bearer.abc, sci"),
            ("Authorization", "Bearer xyz"),
            ("Origin", "http://pos"),
        ]))
        .unwrap();
        assert_eq!(u.path, "/cloud-connector/v1/pos-listener");
        assert_eq!(u.host, "relay.example:8080");
        assert_eq!(u.key.as_str(), KEY);
        assert_eq!(u.protocols, ["bearer.abc", "sci"]);
        assert_eq!(u.authorization.as_deref(), Some("Bearer xyz"));
        assert_eq!(u.origin.as_deref(), Some("http://pos"));
        assert_eq!(u.accept_key(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(u.offered_protocols().bearer_token(), Some("abc"));
    }

    #[test]
    fn plain_get_on_websocket_path_is_426() {
        let head = head_with(Method::Get, 1, &[("Host", "a".into())]);
        assert!(!is_upgrade_attempt(&head));
        let err = UpgradeRequest::from_head(&head).unwrap_err();
        assert_eq!(err, HandshakeError::NotWebSocketUpgrade);
        assert_eq!(err.status().0, 426);
        // Also a POST without upgrade, and an Upgrade to something else.
        let post = head_with(Method::Post, 1, &[("Host", "a".into())]);
        assert_eq!(
            UpgradeRequest::from_head(&post).unwrap_err().status().0,
            426
        );
        assert_eq!(
            check(&replaced("Upgrade", "h2c")).unwrap_err().status().0,
            426
        );
        assert_eq!(check(&without("Upgrade")).unwrap_err().status().0, 426);
    }

    #[test]
    fn upgrade_token_case_insensitive_and_listed() {
        assert!(check(&replaced("Upgrade", "WebSocket")).is_ok());
        assert!(check(&replaced("Upgrade", "foo/2, websocket")).is_ok());
    }

    #[test]
    fn method_must_be_get() {
        let head = head_with(Method::Post, 1, &base());
        assert_eq!(
            UpgradeRequest::from_head(&head),
            Err(HandshakeError::MethodNotGet {
                method: "POST".into()
            })
        );
        assert_eq!(
            UpgradeRequest::from_head(&head).unwrap_err().status().0,
            400
        );
    }

    #[test]
    fn http_1_0_is_400() {
        let head = head_with(Method::Get, 0, &base());
        let err = UpgradeRequest::from_head(&head).unwrap_err();
        assert_eq!(err, HandshakeError::HttpVersionTooOld { minor: 0 });
        assert_eq!(err.status().0, 400);
    }

    #[test]
    fn host_required_once_and_non_empty() {
        assert_eq!(check(&without("Host")), Err(HandshakeError::MissingHost));
        assert_eq!(check(&replaced("Host", "")).unwrap_err().status().0, 400);
        let err = check(&with(&[("Host", "b")])).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::DuplicateHeader {
                name: "host".into()
            }
        );
        assert_eq!(err.status().0, 400);
    }

    #[test]
    fn connection_must_list_upgrade() {
        assert!(check(&replaced("Connection", "keep-alive, Upgrade")).is_ok());
        assert!(check(&replaced("Connection", "upgrade")).is_ok());
        for bad in ["keep-alive", "Upgraded", ""] {
            let err = check(&replaced("Connection", bad)).unwrap_err();
            assert_eq!(err, HandshakeError::MissingConnectionUpgrade, "{bad:?}");
            assert_eq!(err.status().0, 400);
        }
        assert_eq!(
            check(&without("Connection")),
            Err(HandshakeError::MissingConnectionUpgrade)
        );
    }

    #[test]
    fn version_must_be_13() {
        let err = check(&replaced("Sec-WebSocket-Version", "8")).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::UnsupportedWebSocketVersion {
                offered: "8".into()
            }
        );
        assert_eq!(err.status().0, 426);
        let err = check(&without("Sec-WebSocket-Version")).unwrap_err();
        assert_eq!(err, HandshakeError::MissingWebSocketVersion);
        assert_eq!(err.status().0, 426);
        assert_eq!(
            check(&replaced("Sec-WebSocket-Version", "13, 8"))
                .unwrap_err()
                .status()
                .0,
            426
        );
        assert_eq!(
            check(&with(&[("Sec-WebSocket-Version", "13")]))
                .unwrap_err()
                .status()
                .0,
            426
        );
        // Wrong version wins over a bad key: the client learns what to speak.
        let mut f = replaced("Sec-WebSocket-Version", "7");
        f.retain(|(n, _)| *n != "Sec-WebSocket-Key");
        assert_eq!(check(&f).unwrap_err().status().0, 426);
    }

    #[test]
    fn key_rules() {
        assert_eq!(
            check(&without("Sec-WebSocket-Key")),
            Err(HandshakeError::MissingKey)
        );
        assert_eq!(
            check(&without("Sec-WebSocket-Key")).unwrap_err().status().0,
            400
        );
        let err = check(&replaced("Sec-WebSocket-Key", "dG9vIHNob3J0")).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::InvalidKey {
                value: "dG9vIHNob3J0".into()
            }
        );
        assert_eq!(err.status().0, 400);
        let err = check(&with(&[("Sec-WebSocket-Key", KEY)])).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::DuplicateHeader {
                name: "sec-websocket-key".into()
            }
        );
        assert_eq!(err.status().0, 400);
        let two_in_one = format!("{KEY}, {KEY}");
        assert_eq!(
            check(&replaced("Sec-WebSocket-Key", &two_in_one))
                .unwrap_err()
                .status()
                .0,
            400
        );
    }

    #[test]
    fn protocol_authorization_origin_rules() {
        assert_eq!(
            check(&with(&[("Sec-WebSocket-Protocol", "a b")]))
                .unwrap_err()
                .status()
                .0,
            400
        );
        let u = check(&with(&[
            ("Sec-WebSocket-Protocol", "sci"),
            ("Sec-WebSocket-Protocol", " posrelay ,"),
        ]))
        .unwrap();
        assert_eq!(u.protocols, ["sci", "posrelay"]);
        assert_eq!(
            check(&with(&[("Authorization", "a"), ("authorization", "b")])),
            Err(HandshakeError::DuplicateHeader {
                name: "authorization".into()
            })
        );
        assert_eq!(
            check(&with(&[("Origin", "a"), ("Origin", "b")]))
                .unwrap_err()
                .status()
                .0,
            400
        );
        let u = check(&base()).unwrap();
        assert!(u.protocols.is_empty() && u.authorization.is_none() && u.origin.is_none());
    }

    #[test]
    fn seed_request_is_a_valid_upgrade() {
        let seed = b"GET / HTTP/1.1\r\nPragma: no-cache\r\nCache-Control: no-cache\r\nHost: 192.168.29.207\r\nOrigin: http://192.168.29.207\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: CujtCKpQPzowDloV4qp+hQ==\r\nSec-WebSocket-Protocol: sci\r\nSec-WebSocket-Version: 13\r\nx-vfi-pinpad-id : 1\r\n\r\n";
        let head = parse_request_head(seed, &HeadLimits::default())
            .unwrap()
            .unwrap();
        assert!(is_upgrade_attempt(&head));
        let u = UpgradeRequest::from_head(&head).unwrap();
        assert_eq!(u.host, "192.168.29.207");
        assert_eq!(u.protocols, ["sci"]);
        assert_eq!(u.origin.as_deref(), Some("http://192.168.29.207"));
        assert_eq!(u.accept_key(), "W1DnZ1gin4ZTo7thUPGE4k61LGo=");
    }
}
