//! Client and server sides of the opening handshake talking to each other in memory.

use posrelay_core::handshake::*;

/// The 101 answer, the head length and the checked request.
type Served = (Vec<u8>, usize, UpgradeRequest);

/// What the relay does with the bytes of one connection up to the 101 (or the error).
fn serve(buf: &[u8], policy: &SubprotocolPolicy) -> Result<Option<Served>, Vec<u8>> {
    let head = match parse_request_head(buf, &HeadLimits::default()) {
        Ok(None) => return Ok(None),
        Ok(Some(h)) => h,
        Err(e) => return Err(error_response(&e)),
    };
    let up = UpgradeRequest::from_head(&head).map_err(|e| error_response(&e))?;
    let protocol = up.offered_protocols().select(policy);
    Ok(Some((
        switching_protocols(&up.accept_key(), protocol.as_deref()),
        head.head_len,
        up,
    )))
}

#[test]
fn client_server_round_trip_byte_by_byte() {
    let jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJwb3MifQ.c2ln";
    let bearer = format!("bearer.{jwt}");
    let client = ClientHandshake::new(
        "relay.example:8443",
        "/cloud-connector/v1/session/abc?x=1",
        WebSocketKey::from_random(*b"0123456789abcdef"),
        &[&bearer, "sci"],
        &[("Origin", "https://pos.example")],
    );
    let mut wire = client.request_bytes();
    let request_len = wire.len();
    wire.extend_from_slice(b"\x81\x85\x01\x02\x03\x04first-frame");

    // The relay reads the request one byte at a time.
    let mut answer = None;
    for end in 1..=wire.len() {
        match serve(&wire[..end], &SubprotocolPolicy::FirstOffered).expect("valid request") {
            None => assert!(end < request_len, "incomplete at {end}"),
            Some(done) => {
                assert_eq!(end, request_len, "complete exactly at the end of the head");
                answer = Some(done);
                break;
            }
        }
    }
    let (response, head_len, up) = answer.expect("handshake completes");
    assert_eq!(head_len, request_len);
    assert_eq!(up.path, "/cloud-connector/v1/session/abc");
    assert_eq!(up.host, "relay.example:8443");
    assert_eq!(up.origin.as_deref(), Some("https://pos.example"));
    assert_eq!(up.offered_protocols().bearer_token(), Some(jwt));
    // The bearer entry is never echoed; the application protocol is.
    let text = String::from_utf8(response.clone()).unwrap();
    assert!(!text.contains("bearer"), "{text}");
    assert!(text.contains("\r\nSec-WebSocket-Protocol: sci\r\n"));

    // The client reads the answer plus the server's first frame.
    let mut from_server = response.clone();
    from_server.extend_from_slice(b"\x81\x02hi");
    for end in 0..response.len() {
        assert_eq!(client.handle_response(&from_server[..end]), Ok(None));
    }
    let done = client.handle_response(&from_server).unwrap().unwrap();
    assert_eq!(done.head_len, response.len());
    assert_eq!(done.protocol.as_deref(), Some("sci"));
    assert_eq!(&from_server[done.head_len..], b"\x81\x02hi");
}

#[test]
fn round_trip_with_restricted_policy_and_posrelay() {
    let client = ClientHandshake::new(
        "h",
        "/cloud-connector/v1/pos-listener",
        WebSocketKey::from_random([0xA5; 16]),
        &["bearer.t", "other", "posrelay"],
        &[],
    );
    let policy = SubprotocolPolicy::OneOf(vec!["sci".into()]);
    let (response, _, _) = serve(&client.request_bytes(), &policy).unwrap().unwrap();
    let done = client.handle_response(&response).unwrap().unwrap();
    assert_eq!(done.protocol.as_deref(), Some("posrelay"));
}

#[test]
fn round_trip_without_protocols() {
    let client = ClientHandshake::new(
        "h",
        "/cloud-connector/v1/device-listener",
        WebSocketKey::from_random([9; 16]),
        &[],
        &[],
    );
    let (response, _, up) = serve(&client.request_bytes(), &SubprotocolPolicy::FirstOffered)
        .unwrap()
        .unwrap();
    assert!(up.protocols.is_empty());
    assert_eq!(
        client.handle_response(&response).unwrap().unwrap().protocol,
        None
    );
}

#[test]
fn client_sees_426_for_plain_get_and_wrong_version() {
    let plain = b"GET /cloud-connector/v1/pos-listener HTTP/1.1\r\nHost: h\r\n\r\n";
    let answer = serve(plain, &SubprotocolPolicy::FirstOffered).unwrap_err();
    let text = String::from_utf8(answer.clone()).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
    let client = ClientHandshake::new("h", "/", WebSocketKey::from_random([1; 16]), &[], &[]);
    assert_eq!(
        client.handle_response(&answer),
        Err(HandshakeError::UnexpectedStatus { status: 426 })
    );

    let v8 = String::from_utf8(client.request_bytes())
        .unwrap()
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let answer = serve(v8.as_bytes(), &SubprotocolPolicy::FirstOffered).unwrap_err();
    let text = String::from_utf8(answer).unwrap();
    assert!(text.starts_with("HTTP/1.1 426 "), "{text}");
    assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
}

#[test]
fn seed_terminal_request_is_served() {
    // seeds/000, as a Verifone terminal sends it (note `x-vfi-pinpad-id : 1`).
    let seed = b"GET / HTTP/1.1\r\nPragma: no-cache\r\nCache-Control: no-cache\r\nHost: 192.168.29.207\r\nOrigin: http://192.168.29.207\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: CujtCKpQPzowDloV4qp+hQ==\r\nSec-WebSocket-Protocol: sci\r\nSec-WebSocket-Version: 13\r\nx-vfi-pinpad-id : 1\r\n\r\n";
    let (response, head_len, _) = serve(seed, &SubprotocolPolicy::FirstOffered)
        .unwrap()
        .unwrap();
    assert_eq!(head_len, seed.len());
    assert_eq!(
        String::from_utf8(response).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: W1DnZ1gin4ZTo7thUPGE4k61LGo=\r\nSec-WebSocket-Protocol: sci\r\n\r\n"
    );
}

#[test]
fn token_endpoint_request_head_then_form_body() {
    let body = b"grant_type=client_credentials&client_id=pos-1&client_secret=s%26cret";
    let mut req = format!(
        "POST /oauth2/v1/acme/token HTTP/1.1\r\nHost: relay\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Authorization: Basic cG9zLTE6czNjcmV0\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let head = parse_request_head(&req, &HeadLimits::default())
        .unwrap()
        .unwrap();
    assert!(!is_upgrade_attempt(&head));
    assert_eq!(head.method, Method::Post);
    let len = head.headers.content_length().unwrap().unwrap();
    let form = parse_form(&req[head.head_len..head.head_len + len]).unwrap();
    assert_eq!(form[2], ("client_secret".to_owned(), "s&cret".to_owned()));
    let basic = parse_basic_auth(head.headers.get("authorization").unwrap());
    assert_eq!(basic, Some(("pos-1".to_owned(), "s3cret".to_owned())));
}
