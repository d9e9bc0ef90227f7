//! Property tests of the handshake parsers: chunking invariance, garbage safety,
//! form round trips, and the bearer entry never being selected.

use posrelay_core::handshake::fuzzing::fuzz_request;
use posrelay_core::handshake::*;
use proptest::prelude::*;

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
}

/// A valid upgrade request (sometimes with the terminal's space before a colon),
/// followed by arbitrary bytes that belong to the caller.
fn valid_request() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (
        proptest::collection::vec("[a-z0-9._~-]{1,8}", 0..4),
        proptest::option::of("[a-z0-9=&]{0,10}"),
        proptest::array::uniform16(any::<u8>()),
        proptest::collection::vec(token(), 0..4),
        proptest::collection::vec(("x-[a-z0-9-]{1,10}", "[ -~]{0,20}"), 0..6),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(
            |(segments, query, key, protocols, extra, spaced, lf_only, tail)| {
                let mut path = format!("/{}", segments.join("/"));
                if let Some(q) = query {
                    path.push('?');
                    path.push_str(&q);
                }
                let protocols: Vec<&str> = protocols.iter().map(String::as_str).collect();
                let extra: Vec<(&str, &str)> = extra
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let client = ClientHandshake::new(
                    "relay:1",
                    &path,
                    WebSocketKey::from_random(key),
                    &protocols,
                    &extra,
                );
                let mut req = String::from_utf8(client.request_bytes()).unwrap();
                if spaced {
                    req.insert_str(req.len() - 2, "x-vfi-pinpad-id : 1\r\n");
                }
                if lf_only {
                    req = req.replace("\r\n", "\n");
                }
                (req.into_bytes(), tail)
            },
        )
}

proptest! {
    #[test]
    fn any_chunking_parses_identically(
        (req, tail) in valid_request(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let limits = HeadLimits::default();
        let mut wire = req.clone();
        wire.extend_from_slice(&tail);
        let whole = parse_request_head(&wire, &limits).unwrap().unwrap();
        prop_assert_eq!(whole.head_len, req.len());
        prop_assert_eq!(&wire[whole.head_len..], &tail[..]);
        prop_assert!(UpgradeRequest::from_head(&whole).is_ok());

        let mut ends: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        ends.push(wire.len());
        ends.sort_unstable();
        for end in ends {
            let got = parse_request_head(&wire[..end], &limits);
            if end < req.len() {
                prop_assert_eq!(got, Ok(None));
            } else {
                prop_assert_eq!(got, Ok(Some(whole.clone())));
            }
        }
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let limits = HeadLimits::default();
        if let Ok(Some(h)) = parse_request_head(&data, &limits) {
            prop_assert!(h.head_len <= data.len());
        }
        fuzz_request(&data);
    }

    #[test]
    fn garbage_after_a_request_line_never_panics(
        line in "(GET|POST|get|PRI) (/[ -~]{0,10}|\\*|http://h/) HTTP/1\\.[0-2]\r?\n",
        rest in proptest::collection::vec(
            prop_oneof![
                Just(b"\r\n".to_vec()),
                Just(b" : ".to_vec()),
                Just(b"Host: h\r\n".to_vec()),
                Just(b"Upgrade: websocket\r\nConnection: Upgrade\r\n".to_vec()),
                Just(b"Sec-WebSocket-Version: 13\r\n".to_vec()),
                Just(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n".to_vec()),
                Just(b"Content-Length: 3\r\n".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..8),
            ],
            0..12,
        ),
    ) {
        let mut data = line.into_bytes();
        for r in rest {
            data.extend_from_slice(&r);
        }
        fuzz_request(&data);
    }

    #[test]
    fn form_round_trip(pairs in proptest::collection::vec((".{0,12}", ".{0,12}"), 0..6)) {
        use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
        let body = pairs
            .iter()
            .map(|(n, v)| format!(
                "{}={}",
                utf8_percent_encode(n, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC),
            ))
            .collect::<Vec<_>>()
            .join("&");
        // Empty name and value encode to "=", which decodes to ("", "").
        prop_assert_eq!(parse_form(body.as_bytes()).unwrap(), pairs);
    }

    #[test]
    fn bearer_entry_never_selected(
        protocols in proptest::collection::vec(
            prop_oneof![token(), token().prop_map(|t| format!("bearer.{t}")), Just("posrelay".to_owned())],
            0..6,
        ),
        allowed in proptest::collection::vec(token(), 0..3),
    ) {
        let offered = OfferedProtocols::new(protocols.clone());
        for policy in [SubprotocolPolicy::FirstOffered, SubprotocolPolicy::OneOf(allowed.clone())] {
            if let Some(p) = offered.select(&policy) {
                prop_assert!(protocols.contains(&p));
                prop_assert!(!p.to_ascii_lowercase().starts_with("bearer."));
                if let SubprotocolPolicy::OneOf(list) = &policy {
                    prop_assert!(p == "posrelay" || list.contains(&p));
                }
            }
        }
    }
}
