//! Issue "relay node": the whole flow of seed 001 with real payment payloads (seed 000's SCA
//! XML, seed 003's ShieldConex JSON with heartbeats), verbatim relaying of every message size
//! and opcode in both directions (§5), fragmentation, and the message limit (§8: 1009).

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

const TSN: &str = "12345678";

const SCA_REQUEST: &str = "<TRANSACTION> <FUNCTION_TYPE>SESSION</FUNCTION_TYPE> <COMMAND>START</COMMAND> <BUSINESSDATE>20210709</BUSINESSDATE> <SWIPE_AHEAD>1</SWIPE_AHEAD> <TRAINING_MODE>0</TRAINING_MODE> <INVOICE>123456</INVOICE>\n\n</TRANSACTION>";
const SCA_RESPONSE: &str = "<RESPONSE> <RESPONSE_TEXT>Session Started</RESPONSE_TEXT> <RESULT>OK</RESULT> <RESULT_CODE>-1</RESULT_CODE> <TERMINATION_STATUS>SUCCESS</TERMINATION_STATUS> <TRAINING_MODE>OFF</TRAINING_MODE> </RESPONSE>";

fn expect_text(m: Message, want: &str) {
    match m {
        Message::Text(t) => assert_eq!(t, want, "text payload relayed verbatim"),
        other => panic!("expected Text({want:?}), got {}", show(&other)),
    }
}

fn expect_binary(m: Message, want: &[u8]) {
    match m {
        Message::Binary(b) => {
            assert_eq!(b.len(), want.len(), "binary length");
            assert!(
                b == want,
                "binary payload relayed byte-exact ({} bytes)",
                want.len()
            );
        }
        other => panic!(
            "expected Binary({} bytes), got {}",
            want.len(),
            show(&other)
        ),
    }
}

#[test]
fn seed_001_flow_relays_an_sca_transaction() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);

    // Steps 1-3: registration on the device-listener.
    let reg = register(&relay, TSN, &creds);
    let base = format!("ws://{}", relay.relay_addr);
    assert_eq!(
        reg.connection_url,
        format!(
            "{base}/cloud-connector/v1/device-connection/{}",
            reg.session_id
        ),
        "§2 connection_url (no --public-url: ws:// and the Host header, §7a)"
    );
    assert_eq!(reg.expires_in, 300, "§2 expires_in");
    let keys: Vec<String> = {
        let mut k: Vec<String> = reg.raw.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys,
        [
            "connection_url",
            "expires_in",
            "session_id",
            "token",
            "type"
        ],
        "§2 reply {}",
        reg.raw
    );
    let device_claims = jwt_claims(&reg.token);

    // Step 4: the device connects with its JWT.
    let mut device = Device::connect(&relay, reg.clone());

    // Steps 5-6: the POS gets an access token and opens the control channel.
    let token = relay.token("acme", &creds);
    assert_ne!(
        jwt_claims(&token)["aud"],
        device_claims["aud"],
        "§3: device tokens and access tokens differ in aud"
    );
    let mut pos = Pos::control(&relay, &token);

    // Steps 7-8: claim by tsn.
    pos.send_raw(&json!({"type": "claim", "tsn": TSN, "request_id": "r-7"}).to_string());
    let claimed = pos.answer_to("r-7");
    assert_eq!(
        claimed,
        json!({
            "type": "claimed",
            "request_id": "r-7",
            "tsn": TSN,
            "session_id": reg.session_id,
            "session_url": format!("{base}/cloud-connector/v1/session/{}", reg.session_id),
            "online": true,
            "pending_frames": 0,
        }),
        "§4 claimed answer"
    );

    // Step 9: the POS session.
    let mut session = Pos::session(&relay, claimed["session_url"].as_str().unwrap(), &token);

    // Steps 10-11: an SCA transaction and its response, verbatim.
    send_text(&mut session, SCA_REQUEST);
    expect_text(device.recv(), SCA_REQUEST);
    device.send_text(SCA_RESPONSE);
    expect_text(recv(&mut session), SCA_RESPONSE);

    // The control channel saw nothing it should not (no payload, no stray events).
    assert_eq!(
        pos.events_until_barrier(),
        Vec::<serde_json::Value>::new(),
        "no event on the control channel"
    );
}

#[test]
fn shieldconex_json_with_application_heartbeats() {
    // Seed 003 recommends a heartbeat every 5 s; the interval is shortened to keep the suite
    // fast: what matters is that heartbeats are data frames and are relayed like any other.
    const HEARTBEAT_EVERY: Duration = Duration::from_millis(700);
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut pair = Pair::connect(&relay, "acme", TSN, &creds);

    let tokenize = r#"{"traceId":"b12be111-51a3-4b2e-b0bd-f79cb30f6e49","action":"tokenization-tokenize","payload":{"templateRef":"8e1580b8-12ea-4804-acaa-f9c922d124e6","omit":false,"reference":"09420c55af7b","values":[{"name":"scx_token_card_number","value":"4444333322221111"}]}}"#;
    let tokenized = r#"{"traceId":"b12be111-51a3-4b2e-b0bd-f79cb30f6e49","action":"tokenization-tokenize","messageId":"1201911201201321031626749","success":true,"payload":{"bfid":"djE6MTIwMTkxMTIwMTIwMTMyMTAzMTYyNjc0OXwxYjIxNGU1MjQ4NDgxYjFlOTRmNjRhZTg5YWU0Njg3ZXx8","values":[{"name":"scx_token_card_number","value":"4444336487341111"}]}}"#;
    for beat in 0..3u64 {
        let heartbeat = format!(r#"{{"traceId":"hb-{beat}","action":"heartbeat"}}"#);
        let answer = format!(
            r#"{{"traceId":"hb-{beat}","action":"heartbeat","messageId":"120220318102409221139045{beat}","success":true,"payload":{{"timestamp":{}}}}}"#,
            1647599049551u64 + beat
        );
        send_text(&mut pair.session, &heartbeat);
        expect_text(pair.device.recv(), &heartbeat);
        pair.device.send_text(&answer);
        expect_text(recv(&mut pair.session), &answer);
        if beat == 1 {
            send_text(&mut pair.session, tokenize);
            expect_text(pair.device.recv(), tokenize);
            pair.device.send_text(tokenized);
            expect_text(recv(&mut pair.session), tokenized);
        }
        std::thread::sleep(HEARTBEAT_EVERY);
    }
}

/// The messages one side sends in `every_size_and_opcode...`: for each size a text and a
/// binary message, distinct per side.
fn script(side: u64) -> Vec<Message> {
    const SIZES: [usize; 6] = [0, 125, 126, 65535, 65536, 1 << 20];
    let mut out = Vec::new();
    for (i, n) in SIZES.iter().enumerate() {
        let seed = side * 1000 + i as u64;
        out.push(Message::Text(text_payload(*n, seed)));
        out.push(Message::Binary(binary_payload(*n, seed)));
    }
    out
}

fn same_message(got: &Message, want: &Message) -> bool {
    match (got, want) {
        (Message::Text(a), Message::Text(b)) => a == b,
        (Message::Binary(a), Message::Binary(b)) => a == b,
        _ => false,
    }
}

#[test]
fn every_size_and_opcode_is_relayed_verbatim_both_ways_interleaved() {
    // The limit is raised so that this test is about verbatim relaying only; the limit
    // itself (and its boundary) is tested in `messages_over_the_limit_close_1009...`.
    let relay = Relay::start(&["--max-message-bytes", "2MiB"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let pair = Pair::connect(&relay, "acme", TSN, &creds);
    let Pair {
        mut device,
        mut session,
        pos: _pos,
        ..
    } = pair;

    let pos_script = script(1);
    let device_script = script(2);
    let (pos_expect, device_expect) = (device_script.clone(), pos_script.clone());
    // Each side writes its next message, then reads the other's: both directions are in
    // flight at once, interleaved message by message.
    let device_thread = std::thread::spawn(move || {
        for (mine, theirs) in device_script.into_iter().zip(device_expect) {
            device.ws.send(mine).expect("device send");
            let got = device.recv();
            assert!(
                same_message(&got, &theirs),
                "device got {} expected {}",
                show(&got),
                show(&theirs)
            );
        }
        device
    });
    for (i, (mine, theirs)) in pos_script.into_iter().zip(pos_expect).enumerate() {
        session.send(mine).expect("pos send");
        let got = recv(&mut session);
        assert!(
            same_message(&got, &theirs),
            "message {i}: POS got {} expected {}",
            show(&got),
            show(&theirs)
        );
    }
    let mut device = device_thread.join().expect("device side");
    // Nothing extra in either direction: a marker each way is the next message heard.
    send_text(&mut session, "end of script");
    assert!(
        same_message(&device.recv(), &Message::Text("end of script".into())),
        "the device heard something after the script"
    );
    device.send_text("end of script");
    assert!(
        same_message(&recv(&mut session), &Message::Text("end of script".into())),
        "the POS heard something after the script"
    );
    // Every relayed message's time in the relay is in the histogram, once.
    let metrics = relay.metrics();
    // The script both ways, and the two markers after it.
    let relayed = (2 * script(1).len() + 2) as f64;
    let name = "posrelay_relay_latency_seconds";
    let count = metric_sum(&metrics, &format!("{name}_count"), &[]);
    assert_eq!(count, relayed, "one latency sample per relayed message");
    let all = metric_sum(&metrics, &format!("{name}_bucket"), &[("le", "+Inf")]);
    assert_eq!(all, count, "the +Inf bucket holds every sample");
    let sum = metric_sum(&metrics, &format!("{name}_sum"), &[]);
    assert!(
        sum > 0.0 && sum < count,
        "{sum} s in the relay for {count} messages on loopback"
    );
}

#[test]
fn fragmented_messages_arrive_whole_and_pings_stay_hop_by_hop() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut pair = Pair::connect(&relay, "acme", TSN, &creds);

    // POS → device: a text message in 3 fragments, a ping between the 1st and 2nd, and a
    // multi-byte character ("€" = E2 82 AC) split across the 2nd/3rd fragment boundary.
    let whole = "<TRANSACTION><COMMAND>START</COMMAND><AMOUNT>12.34 €</AMOUNT></TRANSACTION>";
    let bytes = whole.as_bytes();
    let euro = whole.find('€').unwrap();
    let (a, rest) = bytes.split_at(20);
    let (b, c) = rest.split_at(euro - 20 + 1);
    let frames = [
        Message::Frame(Frame::message(a.to_vec(), OpCode::Data(Data::Text), false)),
        Message::Ping(b"mid-message".to_vec()),
        Message::Frame(Frame::message(
            b.to_vec(),
            OpCode::Data(Data::Continue),
            false,
        )),
        Message::Frame(Frame::message(
            c.to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )),
    ];
    for f in frames {
        pair.session.send(f).expect("send fragment");
    }
    // RFC 6455 §5.5.3: the relay answers the ping itself with the same payload.
    match recv_any(&mut pair.session) {
        Message::Pong(p) => assert_eq!(p, b"mid-message"),
        other => panic!("expected the relay's pong, got {}", show(&other)),
    }
    // §5: the device sees one text message, the same one, and no ping.
    expect_text(recv_any(&mut pair.device.ws), whole);

    // Device → POS: a binary message in 2 fragments, then a 3-fragment text message with an
    // empty middle fragment.
    let blob = binary_payload(70_000, 7);
    let (x, y) = blob.split_at(1000);
    pair.device
        .ws
        .send(Message::Frame(Frame::message(
            x.to_vec(),
            OpCode::Data(Data::Binary),
            false,
        )))
        .unwrap();
    pair.device
        .ws
        .send(Message::Frame(Frame::message(
            y.to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .unwrap();
    for (part, kind, fin) in [
        ("<RESPONSE>", OpCode::Data(Data::Text), false),
        ("", OpCode::Data(Data::Continue), false),
        (
            "<RESULT>OK</RESULT></RESPONSE>",
            OpCode::Data(Data::Continue),
            true,
        ),
    ] {
        pair.device
            .ws
            .send(Message::Frame(Frame::message(
                part.as_bytes().to_vec(),
                kind,
                fin,
            )))
            .unwrap();
    }
    expect_binary(recv_any(&mut pair.session), &blob);
    expect_text(
        recv_any(&mut pair.session),
        "<RESPONSE><RESULT>OK</RESULT></RESPONSE>",
    );
}

#[test]
fn messages_over_the_limit_close_1009_and_leave_nothing_behind() {
    let relay = Relay::start(&["--max-message-bytes", "64KiB"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut pair = Pair::connect(&relay, "acme", TSN, &creds);

    // Exactly at the limit passes, both ways.
    let at_limit = binary_payload(65536, 1);
    send_binary(&mut pair.session, &at_limit);
    expect_binary(pair.device.recv(), &at_limit);
    let text_at_limit = text_payload(65536, 2);
    pair.device.send_text(&text_at_limit);
    expect_text(recv(&mut pair.session), &text_at_limit);

    // One byte over, from the POS: the POS session is closed with 1009; the device sees
    // nothing of it.
    let _ = pair.session.send(Message::Binary(binary_payload(65537, 3)));
    assert_eq!(expect_close(&mut pair.session), 1009, "§8: message too big");

    // Over the limit in fragments (3 × 30000 bytes, each under the limit): 1009 as well.
    let mut session = Pos::session(&relay, &pair.session_url, &pair.token);
    let part = binary_payload(30_000, 4);
    let _ = session.send(Message::Frame(Frame::message(
        part.clone(),
        OpCode::Data(Data::Binary),
        false,
    )));
    let _ = session.send(Message::Frame(Frame::message(
        part.clone(),
        OpCode::Data(Data::Continue),
        false,
    )));
    let _ = session.send(Message::Frame(Frame::message(
        part,
        OpCode::Data(Data::Continue),
        true,
    )));
    assert_eq!(
        expect_close(&mut session),
        1009,
        "§8: a fragmented message over the limit"
    );

    // The device still works with a new session, and heard nothing of either refused
    // message: the first thing it gets is the new session's. Then the device goes over
    // the limit.
    let mut session = Pos::session(&relay, &pair.session_url, &pair.token);
    send_text(&mut session, "still here");
    expect_text(pair.device.recv(), "still here");
    let _ = pair.device.ws.send(Message::Text(text_payload(65537, 5)));
    assert_eq!(
        expect_close(&mut pair.device.ws),
        1009,
        "§8: device message too big"
    );
    let ev = pair.pos.next_event();
    assert_eq!(
        ev,
        json!({"type": "device_status", "tsn": TSN, "online": false})
    );
    // Nothing of the refused message reached the POS: the next thing the session hears is
    // what the device sends once it is back.
    let mut device = Device::register_and_connect(&relay, TSN, &creds);
    device.send_text("back");
    expect_text(recv(&mut session), "back");
}
