//! Issue "relay node": device and POS sessions over time — reconnects and replacement
//! (§3, §5), the offline queue and `undelivered` (§6), who may connect where (§3, §5, §8),
//! disabled devices (§9), registration errors and the handshake timeout (§2), release
//! (§8: 4001), token expiry (§5: 4401), and device frames waiting for a POS session (§5).

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tungstenite::Message;

const TSN: &str = "12345678";

fn expect_msg(got: Message, want: &Message) {
    let same = match (&got, want) {
        (Message::Text(a), Message::Text(b)) => a == b,
        (Message::Binary(a), Message::Binary(b)) => a == b,
        _ => false,
    };
    assert!(same, "expected {}, got {}", show(want), show(&got));
}

fn online(tsn: &str, up: bool) -> Value {
    json!({"type": "device_status", "tsn": tsn, "online": up})
}

#[test]
fn a_reconnecting_device_replaces_its_old_connection_with_4000() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut pair = Pair::connect(&relay, "acme", TSN, &creds);

    let reg2 = register(&relay, TSN, &creds);
    assert_eq!(
        reg2.session_id, pair.session_id,
        "§0: same session_id on re-registration"
    );
    assert_ne!(reg2.token, pair.device.reg.token, "§0: a fresh token");
    let mut d2 = Device::connect(&relay, reg2);
    assert_eq!(
        expect_close(&mut pair.device.ws),
        4000,
        "§3: the old connection is replaced"
    );

    // The POS session outlives the reconnect and talks to the new connection.
    send_text(&mut pair.session, "to the new connection");
    expect_msg(d2.recv(), &Message::Text("to the new connection".into()));
    d2.send_binary(b"from the new connection");
    expect_msg(
        recv(&mut pair.session),
        &Message::Binary(b"from the new connection".to_vec()),
    );
}

#[test]
fn frames_sent_while_the_device_is_away_are_delivered_first_in_order() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut pair = Pair::connect(&relay, "acme", TSN, &creds);

    close_and_wait(&mut pair.device.ws, 1000);
    assert_eq!(pair.pos.next_event(), online(TSN, false));
    let away = [
        Message::Text("<TRANSACTION><COMMAND>START</COMMAND></TRANSACTION>".into()),
        Message::Binary(binary_payload(5000, 1)),
        Message::Text(text_payload(300, 2)),
        Message::Binary(Vec::new()),
    ];
    for m in &away {
        pair.session.send(m.clone()).unwrap();
    }
    let mut d2 = Device::register_and_connect(&relay, TSN, &creds);
    // Sent right after the device is back: must come after the queued frames.
    send_text(&mut pair.session, "live");
    for m in &away {
        expect_msg(d2.recv(), m);
    }
    expect_msg(d2.recv(), &Message::Text("live".into()));
    assert_eq!(pair.pos.next_event(), online(TSN, true));
    // Delivered, so nothing is reported.
    assert_eq!(
        pair.pos.events_until_barrier(),
        Vec::<serde_json::Value>::new()
    );
}

#[test]
fn frames_beyond_the_offline_queue_bound_are_reported_undelivered() {
    let relay = Relay::start(&["--offline-queue-bytes", "1000"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut pair = Pair::connect(&relay, "acme", TSN, &creds);
    close_and_wait(&mut pair.device.ws, 1000);
    assert_eq!(pair.pos.next_event(), online(TSN, false));

    // Five frames of 300 payload bytes: text of 100 "€" (300 UTF-8 bytes, 100 characters)
    // and binary alternately. Three fit in 1000 bytes; two do not.
    let euro = "€".repeat(100);
    let frames: Vec<Message> = (0..5)
        .map(|i| {
            if i % 2 == 0 {
                Message::Text(euro.clone())
            } else {
                Message::Binary(binary_payload(300, i))
            }
        })
        .collect();
    for m in &frames {
        pair.session.send(m.clone()).unwrap();
    }
    let (f, b) = collect_undelivered(&mut pair.pos, TSN, 2, Duration::from_secs(5));
    assert_eq!(
        (f, b),
        (2, 600),
        "§6: 2 frames, 600 payload bytes (text counted in UTF-8 bytes)"
    );

    let mut d2 = Device::register_and_connect(&relay, TSN, &creds);
    for m in &frames[..3] {
        expect_msg(d2.recv(), m);
    }
    // Only what was queued: the next message after it is a fresh one.
    send_text(&mut pair.session, "fresh");
    expect_msg(d2.recv(), &Message::Text("fresh".into()));
    assert_eq!(pair.pos.next_event(), online(TSN, true));
    assert_eq!(
        pair.pos.events_until_barrier(),
        Vec::<serde_json::Value>::new(),
        "no double report"
    );
}

#[test]
fn frames_past_the_offline_grace_are_reported_undelivered() {
    let relay = Relay::start(&["--offline-grace", "1s"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut pair = Pair::connect(&relay, "acme", TSN, &creds);
    close_and_wait(&mut pair.device.ws, 1000);
    assert_eq!(pair.pos.next_event(), online(TSN, false));

    send_text(&mut pair.session, "0123456789");
    send_binary(&mut pair.session, &binary_payload(20, 3));
    let (f, b) = collect_undelivered(&mut pair.pos, TSN, 2, Duration::from_secs(10));
    assert_eq!(
        (f, b),
        (2, 30),
        "§6: grace expired for 2 frames of 30 bytes"
    );

    let mut d2 = Device::register_and_connect(&relay, TSN, &creds);
    assert_eq!(pair.pos.next_event(), online(TSN, true));
    // Reported frames are not delivered: the first thing the device hears is fresh.
    send_text(&mut pair.session, "fresh");
    expect_msg(d2.recv(), &Message::Text("fresh".into()));
}

#[test]
fn a_newer_pos_session_replaces_the_older_with_4000() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut pair = Pair::connect(&relay, "acme", TSN, &creds);
    let mut newer = Pos::session(&relay, &pair.session_url, &pair.token);
    assert_eq!(
        expect_close(&mut pair.session),
        4000,
        "§5: replaced by a newer POS session"
    );
    pair.device.send_text("to the newer session");
    expect_msg(
        recv(&mut newer),
        &Message::Text("to the newer session".into()),
    );
    send_text(&mut newer, "from the newer session");
    expect_msg(
        pair.device.recv(),
        &Message::Text("from the newer session".into()),
    );
}

fn assert_refused(relay: &Relay, url: &str, token: Option<&str>, status: u16, what: &str) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let resp = relay.ws_refused(url, &headers);
    assert_eq!(resp.status().as_u16(), status, "{what}");
    if status == 401 {
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok());
        assert!(
            challenge.is_some_and(|c| c.starts_with("Bearer")),
            "{what}: §8 WWW-Authenticate: Bearer"
        );
    }
}

#[test]
fn who_may_connect_where() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN, "87654321", "11223344"]);
    let other_client = relay.create_client("acme", Some("s1"));
    let domain_client = relay.create_client("acme", None);
    let pair = Pair::connect(&relay, "acme", TSN, &creds);
    let other_reg = register(&relay, "87654321", &creds);
    let unclaimed_reg = register(&relay, "11223344", &creds);
    let other_token = relay.token("acme", &other_client);
    let domain_token = relay.token("acme", &domain_client);
    let session_of = |sid: &str| relay.ws_url(&format!("/cloud-connector/v1/session/{sid}"));

    // §5/§8: an unknown session id answers 404 before the upgrade.
    assert_refused(
        &relay,
        &session_of("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        Some(&pair.token),
        404,
        "unknown session",
    );
    // A valid access token of a client that does not hold the claim: 403.
    assert_refused(
        &relay,
        &pair.session_url,
        Some(&other_token),
        403,
        "same store, not the holder",
    );
    assert_refused(
        &relay,
        &pair.session_url,
        Some(&domain_token),
        403,
        "domain-wide, not the holder",
    );
    assert_refused(
        &relay,
        &session_of(&unclaimed_reg.session_id),
        Some(&pair.token),
        403,
        "nobody claimed it",
    );
    // Device tokens and access tokens are not interchangeable (§3): 401.
    assert_refused(
        &relay,
        &other_reg.connection_url,
        Some(&pair.token),
        401,
        "access token on device-connection",
    );
    assert_refused(
        &relay,
        &relay.ws_url(POS_LISTENER),
        Some(&other_reg.token),
        401,
        "device token on pos-listener",
    );
    assert_refused(
        &relay,
        &pair.session_url,
        Some(&other_reg.token),
        401,
        "device token on a session",
    );
    // A device token of another session: 403 (§3: the token must belong to that session).
    assert_refused(
        &relay,
        &unclaimed_reg.connection_url,
        Some(&other_reg.token),
        403,
        "another session's device token",
    );
    // No token at all is a login by first message (§7b, §8): 101, then the login.
    for (url, what) in [
        (
            other_reg.connection_url.as_str(),
            "device-connection without a token",
        ),
        (&relay.ws_url(POS_LISTENER), "pos-listener without a token"),
        (pair.session_url.as_str(), "session without a token"),
    ] {
        assert_eq!(relay.ws_status(url, &[]), 101, "{what}");
    }
    // A forged one: 401.
    // Flip a character in the middle of the signature (not the last one, whose low bits
    // may be base64 padding).
    let mut forged: Vec<char> = pair.token.chars().collect();
    let i = pair.token.rfind('.').unwrap() + 5;
    forged[i] = if forged[i] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    assert_refused(
        &relay,
        &relay.ws_url(POS_LISTENER),
        Some(&forged),
        401,
        "a token with a bad signature",
    );
    assert_refused(
        &relay,
        &relay.ws_url(POS_LISTENER),
        Some("not-a-jwt"),
        401,
        "garbage token",
    );
    // The refused attempts did not disturb the live pair.
    let Pair {
        mut device,
        mut session,
        ..
    } = pair;
    send_text(&mut session, "still paired");
    expect_msg(device.recv(), &Message::Text("still paired".into()));
    // And the rightful device connection with its own token works.
    let _other = Device::connect(&relay, other_reg);
}

#[test]
fn a_disabled_device_is_closed_with_1008_and_cannot_register() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut pair = Pair::connect(&relay, "acme", TSN, &creds);
    relay.set_device_enabled("acme", TSN, false);
    assert_eq!(
        expect_close(&mut pair.device.ws),
        1008,
        "§9: a disabled device's connection is closed"
    );
    assert_eq!(pair.pos.next_event(), online(TSN, false));

    let msg = json!({"type": "register", "tsn": TSN, "client_id": creds.client_id, "client_secret": creds.client_secret});
    let (reply, code) = register_raw(&relay, &msg.to_string());
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "device_disabled", "{reply}");
    assert_eq!(code, 1008);
    // A disabled device cannot be claimed afresh (§4: offline).
    assert_eq!(pair.pos.release(TSN)["type"], "released");
    assert_error(&pair.pos.claim(TSN), None, "offline");

    // Enabled again, it registers and connects.
    relay.set_device_enabled("acme", TSN, true);
    let _d = Device::register_and_connect(&relay, TSN, &creds);
}

#[test]
fn registration_errors_answer_a_code_then_close_1008() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let reg = |tsn: &str, id: &str, secret: &str| {
        json!({"type": "register", "tsn": tsn, "client_id": id, "client_secret": secret})
            .to_string()
    };
    let cases = [
        (reg(TSN, &creds.client_id, "wrong"), "invalid_client", "wrong secret"),
        (reg(TSN, "no-such-client", &creds.client_secret), "invalid_client", "unknown client"),
        (reg("99999999", &creds.client_id, &creds.client_secret), "unknown_device", "unknown tsn"),
        ("not json".to_string(), "bad_request", "not JSON"),
        (
            json!({"type": "register", "client_id": creds.client_id, "client_secret": creds.client_secret}).to_string(),
            "bad_request",
            "no tsn",
        ),
        (
            json!({"type": "hello", "tsn": TSN, "client_id": creds.client_id, "client_secret": creds.client_secret}).to_string(),
            "bad_request",
            "wrong type",
        ),
    ];
    for (message, code, what) in cases {
        let (reply, close) = register_raw(&relay, &message);
        let mut keys: Vec<&String> = reply.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(keys, ["code", "message", "type"], "{what}: {reply}");
        assert_eq!(reply["type"], "error", "{what}: {reply}");
        assert_eq!(reply["code"], code, "{what}: {reply}");
        assert_eq!(close, 1008, "{what}: close code");
    }
    // The failed attempts changed nothing: the device registers.
    register(&relay, TSN, &creds);
}

#[test]
fn a_connection_that_never_registers_is_closed_1008_after_the_handshake_timeout() {
    let relay = Relay::start(&["--handshake-timeout", "1s"]);
    let _creds = relay.provision("acme", "s1", &[TSN]);
    let mut ws = relay.ws(&relay.ws_url(DEVICE_LISTENER), &[]);
    // §2: nothing is answered; the connection is closed with 1008.
    assert_eq!(expect_close(&mut ws), 1008);
}

#[test]
fn release_closes_the_pos_session_with_4001() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut pair = Pair::connect(&relay, "acme", TSN, &creds);
    assert_eq!(
        pair.pos.request(json!({"type": "release", "tsn": TSN}))["type"],
        "released"
    );
    assert_eq!(expect_close(&mut pair.session), 4001, "§8: claim released");
    // The device stays connected; the session URL no longer admits this client.
    let resp = relay.ws_refused(
        &pair.session_url,
        &[("Authorization", &format!("Bearer {}", pair.token))],
    );
    assert_eq!(
        resp.status().as_u16(),
        403,
        "token valid but no longer for this session"
    );
    // Claim again: same session, works.
    let (sid, url) = pair.pos.claim_ok(TSN);
    assert_eq!(sid, pair.session_id);
    let mut s = Pos::session(&relay, &url, &pair.token);
    pair.device.send_text("again");
    expect_msg(recv(&mut s), &Message::Text("again".into()));
    // The device heard nothing of the release: the first thing it hears is the new
    // session's message.
    send_text(&mut s, "hello again");
    expect_msg(pair.device.recv(), &Message::Text("hello again".into()));
}

#[test]
fn device_frames_wait_for_the_claim_holders_session() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut device = Device::register_and_connect(&relay, TSN, &creds);
    let token = relay.token("acme", &creds);
    let mut pos = Pos::control(&relay, &token);
    let (_sid, url) = pos.claim_ok(TSN);

    let early = [
        Message::Text("<RESPONSE><RESULT>READY</RESULT></RESPONSE>".into()),
        Message::Binary(binary_payload(4096, 9)),
        Message::Text(String::new()),
    ];
    for m in &early {
        device.ws.send(m.clone()).unwrap();
    }
    let mut session = Pos::session(&relay, &url, &token);
    for m in &early {
        expect_msg(recv(&mut session), m);
    }
    // Between two sessions as well.
    close_and_wait(&mut session, 1000);
    device.send_text("between sessions 1");
    device.send_binary(b"between sessions 2");
    let mut session = Pos::session(&relay, &url, &token);
    device.send_text("live");
    expect_msg(
        recv(&mut session),
        &Message::Text("between sessions 1".into()),
    );
    expect_msg(
        recv(&mut session),
        &Message::Binary(b"between sessions 2".to_vec()),
    );
    expect_msg(recv(&mut session), &Message::Text("live".into()));
    assert_eq!(
        pos.events_until_barrier(),
        Vec::<serde_json::Value>::new(),
        "nothing undelivered"
    );
}

#[test]
fn pos_connections_close_4401_when_the_access_token_expires_but_devices_stay() {
    // Long enough for the pair to be set up on a loaded machine (JWT times are whole
    // seconds, so a token may live up to a second less than its TTL).
    let relay = Relay::start(&["--access-token-ttl", "5s"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut pair = Pair::connect(&relay, "acme", TSN, &creds);
    // Both POS connections close with 4401 (within the read timeout, about 5 s in).
    let mut codes = Vec::new();
    for ws in [&mut pair.pos.ws, &mut pair.session] {
        set_read_timeout(ws, Some(Duration::from_secs(12)));
        codes.push(expect_close(ws));
    }
    assert_eq!(codes, [4401, 4401], "§5: token expired");
    // The expired token is refused for new connections.
    let resp = relay.ws_refused(
        &relay.ws_url(POS_LISTENER),
        &[("Authorization", &format!("Bearer {}", pair.token))],
    );
    assert_eq!(resp.status().as_u16(), 401);
    // The device connection stays open: it can still send (the frame waits for a session).
    pair.device.send_text("still connected");
    let fresh = relay.token("acme", &creds);
    let mut pos = Pos::control(&relay, &fresh);
    let (_, url) = pos.claim_ok(TSN);
    let mut s = Pos::session(&relay, &url, &fresh);
    expect_msg(recv(&mut s), &Message::Text("still connected".into()));
}

#[test]
fn sigterm_reports_what_is_queued_then_closes_1001_and_exits_0() {
    let mut relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN, "87654321"]);
    let mut pair = Pair::connect(&relay, "acme", TSN, &creds);
    let mut other = Device::register_and_connect(&relay, "87654321", &creds);
    close_and_wait(&mut pair.device.ws, 1000);
    assert_eq!(pair.pos.next_event(), online(TSN, false));
    send_text(&mut pair.session, "queued €");
    send_binary(&mut pair.session, &[1, 2, 3]);
    // A terminal that connected to register and has not sent its message yet.
    let mut registering = relay.ws(&relay.ws_url(DEVICE_LISTENER), &[]);

    relay.signal(libc::SIGTERM);
    // §6: the undelivered report reaches the control channel before its 1001.
    let (events, code) = drain_until_close(&mut pair.pos.ws);
    let reports: Vec<Value> = events
        .iter()
        .map(|m| match m {
            Message::Text(t) => serde_json::from_str(t).expect("JSON event"),
            other => panic!("control channel got {}", show(other)),
        })
        .collect();
    let frames: u64 = reports
        .iter()
        .map(|r| r["frames"].as_u64().unwrap_or(0))
        .sum();
    let bytes: u64 = reports
        .iter()
        .map(|r| r["bytes"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        reports
            .iter()
            .all(|r| r["type"] == "undelivered" && r["tsn"] == TSN),
        "{reports:?}"
    );
    assert_eq!(
        (frames, bytes),
        (2, 13),
        "§6: 2 frames, 10 + 3 payload bytes"
    );
    assert_eq!(code, 1001, "§8: relay shutting down");
    assert_eq!(expect_close(&mut pair.session), 1001);
    assert_eq!(expect_close(&mut other.ws), 1001);
    assert_eq!(
        expect_close(&mut registering),
        1001,
        "§6: a connection still registering is closed with 1001 too"
    );
    let status = relay.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "§6: exit status 0 after draining");
}

#[test]
fn idle_connections_are_pinged_and_silent_ones_closed() {
    let relay = Relay::start(&["--ping-interval", "1s", "--idle-timeout", "3s"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut device = Device::register_and_connect(&relay, TSN, &creds);
    // §6: an idle connection is pinged (tungstenite answers with a pong when it reads).
    match recv_any(&mut device.ws) {
        Message::Ping(_) => {}
        other => panic!("expected the relay's ping, got {}", show(&other)),
    }
    device.ws.flush().unwrap();
    // A connection that answers pings stays up past the idle timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match try_recv_any(&mut device.ws, Duration::from_millis(500)) {
            None | Some(Message::Ping(_)) => device.ws.flush().unwrap(),
            Some(other) => panic!("unexpected {}", show(&other)),
        }
    }
    device.send_text("alive");
    // A connection that sends nothing at all (not even pongs) is closed.
    let mut silent = relay.ws(
        &relay.ws_url(POS_LISTENER),
        &[(
            "Authorization",
            &format!("Bearer {}", relay.token("acme", &creds)),
        )],
    );
    let mut raw = tcp_of(&mut silent).try_clone().unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1024];
    let mut closed = false;
    // Read raw bytes so that tungstenite never answers a ping.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match std::io::Read::read(&mut raw, &mut buf) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => continue,
        }
    }
    assert!(
        closed,
        "§6: a silent connection is closed after the idle timeout"
    );
}
