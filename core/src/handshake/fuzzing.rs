//! The body of the `handshake_parser` fuzz target (wired from `fuzz/`), kept
//! here so that it compiles and is tested with the crate.

use super::form::{parse_basic_auth, parse_form};
use super::request::{parse_request_head, HeadLimits};
use super::subprotocol::{SubprotocolPolicy, BEARER_PREFIX};
use super::upgrade::UpgradeRequest;

/// Feeds arbitrary bytes to the server-side parsers and asserts their invariants:
/// no panic; `head_len <= input`; `Ok(Some)` only when the head ends with an
/// empty line (CRLF CRLF, or bare LF per RFC 9112 §2.2) inside the input;
/// request errors answer 400 or 431, upgrade errors 400 or 426; parsing is
/// deterministic and independent of what follows the head; a bearer entry is
/// never selected as the subprotocol.
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) {
    let limits = HeadLimits::default();
    let first = parse_request_head(data, &limits);
    assert_eq!(
        first,
        parse_request_head(data, &limits),
        "not deterministic"
    );
    match &first {
        Ok(None) => assert!(data.len() <= limits.max_head_bytes),
        Err(e) => {
            let s = e.status().0;
            assert!(s == 400 || s == 431, "status {s} for {e}");
        }
        Ok(Some(head)) => {
            assert!(head.head_len <= data.len());
            assert!(head.head_len <= limits.max_head_bytes);
            let h = &data[..head.head_len];
            assert!(
                h.ends_with(b"\n\n") || h.ends_with(b"\n\r\n"),
                "head must end with an empty line"
            );
            // The head alone, or followed by other bytes, parses the same.
            assert_eq!(parse_request_head(h, &limits), first);
            let mut more = h.to_vec();
            more.extend_from_slice(b"\x81\x80GARBAGE");
            assert_eq!(parse_request_head(&more, &limits), first);
            // Any strict prefix of the head is incomplete (spot-check two splits).
            for cut in [head.head_len / 2, head.head_len.saturating_sub(1)] {
                if cut < head.head_len {
                    assert_eq!(parse_request_head(&h[..cut], &limits), Ok(None));
                }
            }
            match UpgradeRequest::from_head(head) {
                Ok(up) => {
                    let offered = up.offered_protocols();
                    for policy in [
                        SubprotocolPolicy::FirstOffered,
                        SubprotocolPolicy::OneOf(up.protocols.clone()),
                    ] {
                        if let Some(p) = offered.select(&policy) {
                            assert!(up.protocols.contains(&p));
                            assert!(!p.to_ascii_lowercase().starts_with(BEARER_PREFIX));
                        }
                    }
                    assert_eq!(up.accept_key().len(), 28);
                }
                Err(e) => {
                    let s = e.status().0;
                    assert!(s == 400 || s == 426, "status {s} for {e}");
                }
            }
            let _ = head.headers.content_length();
            if let Some(auth) = head.headers.get("authorization") {
                let _ = parse_basic_auth(auth);
            }
            if let Err(e) = parse_form(&data[head.head_len..]) {
                assert_eq!(e.status().0, 400);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_samples() {
        fuzz_request(b"");
        fuzz_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        fuzz_request(b"GET / HTTP/1.1\r\nHost: a\r\nx-a : 1\r\n\r\nb=%zz");
        fuzz_request(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: bearer.x, sci\r\nAuthorization: Basic QTpi\r\n\r\n");
        fuzz_request(b"\x00\x01garbage\r\n\r\n");
        fuzz_request(&[b'a'; 20_000]);
    }
}
