//! Fault suite, protocol abuse (issue "Faults, drain and hostile input"): every broken
//! RFC 6455 rule, written as exact bytes on a raw socket after an upgrade done by hand, on
//! each of the three data-carrying endpoints (POS control channel, POS session, device
//! connection), all on ONE shard next to a bystander pair that keeps exchanging.
//!
//! Asserted per bad input:
//! - the abuser gets a close frame with the code PROTOCOL.md §8 / RFC 6455 §7.4.1 names
//!   for that rule, then the relay ends the TCP connection;
//! - the other side of the abused session sees nothing of it (§5: no partial message);
//! - the bystander pair on the same shard still exchanges both ways.
//!
//! Afterwards: a fresh pair completes an exchange, relay memory is back near its warm
//! baseline, every protocol error was counted in /metrics.

mod common;

use common::*;

use tungstenite::Message;

const DOMAIN: &str = "acme";
const BYSTANDER: &str = "11110001";
const VICTIM_DEVICE_SIDE: &str = "11110002";
const VICTIM_POS_SIDE: &str = "11110003";
/// `--max-message-bytes` of this relay.
const MAX_MESSAGE: usize = 64 * 1024;

/// One bad input: what it is, its bytes, the close codes it may answer.
struct BadInput {
    name: String,
    bytes: Vec<u8>,
    codes: &'static [u16],
    /// Whether /metrics must count it as a protocol error.
    protocol_error: bool,
}

fn bad(name: impl Into<String>, bytes: Vec<u8>, codes: &'static [u16]) -> BadInput {
    BadInput {
        name: name.into(),
        bytes,
        codes,
        protocol_error: true,
    }
}

/// Every broken rule the issue lists, and its neighbours.
fn bad_inputs() -> Vec<BadInput> {
    let mut v = Vec::new();
    // RFC 6455 §5.1: a server MUST close the connection on an unmasked client frame.
    v.push(bad(
        "unmasked text",
        client_frame(true, 0, op::TEXT, None, b"hello"),
        &[1002],
    ));
    v.push(bad(
        "unmasked binary",
        client_frame(true, 0, op::BINARY, None, &[1, 2, 3]),
        &[1002],
    ));
    v.push(bad(
        "unmasked ping",
        client_frame(true, 0, op::PING, None, b"p"),
        &[1002],
    ));
    // RFC 6455 §5.2: RSV1-3 MUST be 0 without a negotiated extension.
    for (bit, name) in [
        (0b100, "rsv1"),
        (0b010, "rsv2"),
        (0b001, "rsv3"),
        (0b111, "rsv1+2+3"),
    ] {
        v.push(bad(
            format!("{name} on text"),
            client_frame(true, bit, op::TEXT, Some(MASK), b"x"),
            &[1002],
        ));
    }
    v.push(bad(
        "rsv1 on ping",
        client_frame(true, 0b100, op::PING, Some(MASK), b""),
        &[1002],
    ));
    // RFC 6455 §5.2: opcodes 0x3-0x7 and 0xB-0xF are reserved.
    for code in (0x3..=0x7).chain(0xB..=0xF) {
        v.push(bad(
            format!("reserved opcode {code:#x}"),
            client_frame(true, 0, code, Some(MASK), b"x"),
            &[1002],
        ));
    }
    // RFC 6455 §5.5: control frames carry at most 125 bytes and are never fragmented.
    for (opcode, name) in [(op::PING, "ping"), (op::PONG, "pong"), (op::CLOSE, "close")] {
        let mut body = vec![b'a'; 126];
        if opcode == op::CLOSE {
            body[..2].copy_from_slice(&1000u16.to_be_bytes());
        }
        v.push(bad(
            format!("{name} of 126 bytes"),
            masked(opcode, &body),
            &[1002],
        ));
    }
    v.push(bad(
        "ping announcing 64 KiB",
        {
            let mut h = vec![0x80 | op::PING, 0x80 | 126];
            h.extend_from_slice(&65535u16.to_be_bytes());
            h.extend_from_slice(&MASK);
            h
        },
        &[1002],
    ));
    v.push(bad(
        "fragmented ping",
        client_frame(false, 0, op::PING, Some(MASK), b"p"),
        &[1002],
    ));
    // RFC 6455 §8.1 / PROTOCOL.md §8: invalid UTF-8 in a text message closes 1007.
    for (name, bytes) in [
        ("0xff 0xfe", &b"\xff\xfe"[..]),
        ("overlong '/'", b"\xc0\xaf"),
        ("UTF-16 surrogate", b"ok \xed\xa0\x80"),
        ("code point over U+10FFFF", b"\xf4\x90\x80\x80"),
        ("truncated sequence at the end", b"price \xe2\x82"),
        ("lone continuation byte", b"\x80abc"),
    ] {
        v.push(bad(
            format!("invalid UTF-8 in text: {name}"),
            masked(op::TEXT, bytes),
            &[1007],
        ));
    }
    v.push(bad(
        "invalid UTF-8 split over fragments",
        [
            client_frame(false, 0, op::TEXT, Some(MASK), b"valid start "),
            client_frame(true, 0, op::CONT, Some(MASK), b"\xed\xa0\x80 end"),
        ]
        .concat(),
        &[1007],
    ));
    // PROTOCOL.md §8: a 64-bit length with the top bit set is 1002; over the limit 1009.
    v.push(bad(
        "length 2^63",
        header_announcing(op::BINARY, 1 << 63),
        &[1002],
    ));
    v.push(bad(
        "length 2^64-1",
        header_announcing(op::TEXT, u64::MAX),
        &[1002],
    ));
    v.push(bad(
        "length 2^62 (over the message limit)",
        header_announcing(op::BINARY, 1 << 62),
        &[1009],
    ));
    v.push(bad(
        "length limit+1 announced",
        header_announcing(op::BINARY, MAX_MESSAGE as u64 + 1),
        &[1009],
    ));
    // RFC 6455 §7.4: codes that may not appear on the wire; §5.5.1 body of 1 byte.
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999] {
        v.push(bad(
            format!("close with code {code}"),
            close_frame(code, b""),
            &[1002],
        ));
    }
    v.push(bad(
        "close with a 1-byte body",
        masked(op::CLOSE, &[0x03]),
        &[1002],
    ));
    v.push(bad(
        "close with an invalid UTF-8 reason",
        close_frame(1000, b"bye \xff"),
        &[1007, 1002],
    ));
    // RFC 6455 §5.4: fragments that never end (until the message limit), continuation
    // without a start, a new message inside a fragmented one.
    let mut never_ends = client_frame(false, 0, op::BINARY, Some(MASK), &[7u8; 8192]);
    for _ in 0..(MAX_MESSAGE / 8192 + 2) {
        never_ends.extend(client_frame(false, 0, op::CONT, Some(MASK), &[7u8; 8192]));
    }
    v.push(bad("fragments that never end", never_ends, &[1009]));
    let mut text_never_ends = client_frame(false, 0, op::TEXT, Some(MASK), b"{");
    for _ in 0..(MAX_MESSAGE / 4096 + 2) {
        text_never_ends.extend(client_frame(false, 0, op::CONT, Some(MASK), &[b'a'; 4096]));
    }
    v.push(bad(
        "text fragments that never end",
        text_never_ends,
        &[1009],
    ));
    v.push(bad(
        "continuation without a start",
        client_frame(true, 0, op::CONT, Some(MASK), b"orphan"),
        &[1002],
    ));
    v.push(bad(
        "new text inside a fragmented message",
        [
            client_frame(false, 0, op::BINARY, Some(MASK), b"part 1"),
            masked(op::TEXT, b"interloper"),
        ]
        .concat(),
        &[1002],
    ));
    v.push(bad(
        "new binary fragment inside a fragmented text",
        [
            client_frame(false, 0, op::TEXT, Some(MASK), b"part 1"),
            client_frame(false, 0, op::BINARY, Some(MASK), b"part 2"),
        ]
        .concat(),
        &[1002],
    ));
    // RFC 6455 §5.5.1: after its close a peer sends nothing; the relay answers the close
    // (echo, §5.5.1) or calls the trailing data a protocol error, and forwards nothing.
    v.push(BadInput {
        name: "data after close".into(),
        bytes: [
            close_frame(1000, b"done"),
            masked(op::TEXT, b"after close"),
            masked(op::BINARY, b"after close"),
        ]
        .concat(),
        codes: &[1000, 1002],
        protocol_error: false,
    });
    v
}

/// A pair whose sides both keep working: used as the bystander on the abused shard.
fn bystander_exchange(pair: &mut Pair, round: usize, what: &str) {
    let text = format!("bystander {round} after {what}");
    send_text(&mut pair.session, &text);
    match pair.device.recv() {
        Message::Text(t) => assert_eq!(t, text, "bystander POS -> device after {what}"),
        other => panic!("bystander device got {} after {what}", show(&other)),
    }
    pair.device.send_binary(text.as_bytes());
    match recv(&mut pair.session) {
        Message::Binary(b) => assert_eq!(b, text.as_bytes(), "bystander device -> POS"),
        other => panic!("bystander POS got {} after {what}", show(&other)),
    }
}

/// Sends `input` on `ws` and checks the answer.
fn abuse(relay: &Relay, mut ws: RawWs, input: &BadInput, endpoint: &str) {
    // The relay may close before reading all of it (e.g. a header announcing 2^63 bytes).
    let _ = ws.send(&input.bytes);
    let what = format!("{endpoint}: {}", input.name);
    match ws.close_code() {
        Ok(code) => {
            if !input.codes.contains(&code) {
                relay.fail(&format!(
                    "{what}: closed with {code}, expected one of {:?}",
                    input.codes
                ));
            }
        }
        Err(e) => relay.fail(&format!("{what}: no close frame ({e})")),
    }
    ws.assert_ends(&what);
}

#[test]
fn every_broken_framing_rule_closes_only_its_connection_with_its_code() {
    let relay = fault_relay(&[
        "--shards",
        "1",
        "--max-message-bytes",
        "64KiB",
        "--handshake-timeout",
        "3s",
    ]);
    let creds = relay.provision(
        DOMAIN,
        "s1",
        &[BYSTANDER, VICTIM_DEVICE_SIDE, VICTIM_POS_SIDE, PROBE_TSN],
    );
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    let errors_before = metric_sum(&relay.metrics(), "posrelay_protocol_errors_total", &[]);

    let mut bystander = Pair::connect(&relay, DOMAIN, BYSTANDER, &creds);
    let token = relay.token(DOMAIN, &creds);
    let mut pos = Pos::control(&relay, &token);
    // Abused device connections: the POS side is a real client that must see nothing.
    let dev_reg = register(&relay, VICTIM_DEVICE_SIDE, &creds);
    let (_, dev_victim_url) = pos.claim_ok(VICTIM_DEVICE_SIDE);
    let mut dev_victim_session = Pos::session(&relay, &dev_victim_url, &token);
    // Abused POS sessions: the device side is a real client that must see nothing.
    let mut pos_victim_device = Device::register_and_connect(&relay, VICTIM_POS_SIDE, &creds);
    let (_, pos_victim_url) = pos.claim_ok(VICTIM_POS_SIDE);

    let inputs = bad_inputs();
    let mut tried = 0usize;
    let mut expected_errors = 0u64;
    for (round, input) in inputs.iter().enumerate() {
        // POS control channel (§4).
        abuse(
            &relay,
            RawWs::open(&relay, POS_LISTENER, Some(&token)),
            input,
            "control",
        );
        // POS session (§5); the device must receive nothing.
        abuse(
            &relay,
            RawWs::open(&relay, &pos_victim_url, Some(&token)),
            input,
            "session",
        );
        // Device connection (§3), with a fresh registration; the POS session sees nothing.
        let reg = register(&relay, VICTIM_DEVICE_SIDE, &creds);
        assert_eq!(reg.session_id, dev_reg.session_id, "§2: same session");
        abuse(
            &relay,
            RawWs::open(&relay, &reg.connection_url, Some(&reg.token)),
            input,
            "device",
        );
        tried += 3;
        if input.protocol_error {
            expected_errors += 3;
        }
        // Whether anything of the abuse reached the victims' peers is checked once all
        // rounds are done: the first message each then hears must be a well-behaved one.
        bystander_exchange(&mut bystander, round, &input.name);
    }

    // A well-behaved close is answered in kind (RFC 6455 §5.5.1) on every endpoint.
    for (endpoint, path, tok) in [
        ("control", POS_LISTENER.to_string(), token.clone()),
        ("session", pos_victim_url.clone(), token.clone()),
    ] {
        let mut ws = RawWs::open(&relay, &path, Some(&tok));
        ws.send(&close_frame(4321, b"bye")).unwrap();
        let code = ws
            .close_code()
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        assert_eq!(code, 4321, "{endpoint}: the close code is echoed");
        ws.assert_ends(endpoint);
    }

    // The abused sessions still work with well-behaved clients, and nothing of any round's
    // abuse reached the victims' peers: the first message each hears is this one.
    let mut session = Pos::session(&relay, &pos_victim_url, &token);
    send_text(&mut session, "after the abuse");
    match pos_victim_device.recv() {
        Message::Text(t) => assert_eq!(t, "after the abuse"),
        other => panic!("victim device got {}", show(&other)),
    }
    let mut device = Device::register_and_connect(&relay, VICTIM_DEVICE_SIDE, &creds);
    device.send_text("device after the abuse");
    match recv(&mut dev_victim_session) {
        Message::Text(t) => assert_eq!(t, "device after the abuse"),
        other => panic!("victim session got {}", show(&other)),
    }
    bystander_exchange(&mut bystander, inputs.len(), "all abuse");

    let errors_after = metric_sum(&relay.metrics(), "posrelay_protocol_errors_total", &[]);
    eprintln!(
        "protocol abuse: {} bad inputs x 3 endpoints = {tried} abusive connections; \
         protocol errors counted {}",
        inputs.len(),
        errors_after - errors_before
    );
    assert!(
        errors_after - errors_before >= expected_errors as f64,
        "every protocol error is counted: {} < {expected_errors}",
        errors_after - errors_before
    );
    drop((
        session,
        device,
        dev_victim_session,
        pos_victim_device,
        pos,
        bystander,
    ));
    health.check(&relay, "protocol abuse", RSS_SLACK_KIB);
}

/// A peer that sends a fragmented message in 100,000 empty fragments (never over the size
/// limit) costs the relay no memory per fragment, and the message arrives whole.
#[test]
fn a_message_in_100000_empty_fragments_arrives_whole() {
    let relay = fault_relay(&["--shards", "1", "--max-message-bytes", "64KiB"]);
    let creds = relay.provision(DOMAIN, "s1", &[BYSTANDER, PROBE_TSN]);
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    let mut pair = Pair::connect(&relay, DOMAIN, BYSTANDER, &creds);
    let mut raw = RawWs::open(&relay, &pair.session_url, Some(&pair.token));
    assert_eq!(
        expect_close(&mut pair.session),
        4000,
        "§5: the raw session replaces the older"
    );
    let mut bytes = client_frame(false, 0, op::TEXT, Some(MASK), "start €".as_bytes());
    let empty = client_frame(false, 0, op::CONT, Some(MASK), b"");
    for _ in 0..100_000 {
        bytes.extend_from_slice(&empty);
    }
    bytes.extend(client_frame(true, 0, op::CONT, Some(MASK), b" end"));
    raw.send(&bytes).expect("send fragments");
    match pair.device.recv() {
        Message::Text(t) => assert_eq!(t, "start € end", "§5: rejoined verbatim"),
        other => panic!("device got {}", show(&other)),
    }
    raw.send(&close_frame(1000, b"")).unwrap();
    assert_eq!(raw.close_code(), Ok(1000));
    drop(pair);
    health.check(&relay, "100,000 empty fragments", RSS_SLACK_KIB);
}
