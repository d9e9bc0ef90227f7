//! Issue 11, PROTOCOL.md §7b on the real binary: login by first message. An upgrade with
//! no credentials at all on §3, §4, §5 is answered 101, then silence until the client's
//! `{"type":"login","token":…}`; accepted, `logged_in` and the connection goes on as if the
//! token had come with the upgrade; refused, silence and 1008 at the handshake deadline;
//! counted as unauthenticated until then, closed with 1001 by a drain (§6). Seed 004's
//! browser client runs in headless Chromium in browser.rs.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tungstenite::Message;

const TSN: &str = "12345678";

/// An upgrade with no credentials at all on `path` (the 101 must come).
fn bare(relay: &Relay, path_or_url: &str) -> Ws {
    let url = if path_or_url.starts_with("ws") {
        path_or_url.to_owned()
    } else {
        relay.ws_url(path_or_url)
    };
    relay.ws(&url, &[])
}

fn login(ws: &mut Ws, token: &str) {
    send_json(ws, &json!({"type": "login", "token": token}));
}

/// Nothing at all (no data, no ping) arrives within `wait`.
fn assert_silent(ws: &mut Ws, wait: Duration, what: &str) {
    set_read_timeout(ws, Some(wait));
    match ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("{what}: §7b the relay sends nothing before the login, got {other:?}"),
    }
    set_read_timeout(ws, Some(IO_TIMEOUT));
}

/// The first frame of any kind (ping included).
fn first_frame(ws: &mut Ws) -> Message {
    recv_any(ws)
}

fn logged_in(ws: &mut Ws) -> Value {
    match first_frame(ws) {
        Message::Text(t) => {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["type"], "logged_in", "{v}");
            v
        }
        other => panic!("expected logged_in first, got {}", show(&other)),
    }
}

#[test]
fn a_pos_logs_in_with_its_first_message_and_goes_on_in_order() {
    // A short ping interval: a relay that pinged before the login would show it here.
    let relay = Relay::start(&["--ping-interval", "300ms", "--access-token-ttl", "600s"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let device = Device::register_and_connect(&relay, TSN, &creds);
    let token = relay.token("acme", &creds);
    let mut control = bare(&relay, POS_LISTENER);
    assert_silent(&mut control, Duration::from_millis(1200), "control channel");
    // The login and two requests in one go: handled after it, in order.
    login(&mut control, &token);
    send_json(
        &mut control,
        &json!({"type": "claim", "tsn": TSN, "request_id": "c1"}),
    );
    send_json(
        &mut control,
        &json!({"type": "devices", "request_id": "d1"}),
    );
    let answer = logged_in(&mut control);
    let expires_in = answer["expires_in"].as_u64().expect("expires_in");
    assert!(
        (590..=600).contains(&expires_in),
        "the token's remaining life: {answer}"
    );
    let claimed = recv_json(&mut control);
    assert_eq!(
        (claimed["type"].as_str(), claimed["request_id"].as_str()),
        (Some("claimed"), Some("c1")),
        "{claimed}"
    );
    let devices = recv_json(&mut control);
    assert_eq!(devices["request_id"], "d1", "{devices}");
    // The session, logged in the same way, relays both ways.
    let session_url = claimed["session_url"].as_str().unwrap();
    let mut session = bare(&relay, session_url);
    assert_silent(&mut session, Duration::from_millis(700), "session");
    login(&mut session, &token);
    send_text(&mut session, "<TRANSACTION/>");
    logged_in(&mut session);
    let mut device = device;
    match device.recv() {
        Message::Text(t) => assert_eq!(t, "<TRANSACTION/>"),
        other => panic!("device got {}", show(&other)),
    }
    device.send_text("<RESPONSE/>");
    match recv(&mut session) {
        Message::Text(t) => assert_eq!(t, "<RESPONSE/>"),
        other => panic!("session got {}", show(&other)),
    }
    assert!(
        !relay.stderr_tail(400).contains(&token),
        "an accepted login token is never logged either"
    );
}

#[test]
fn a_device_logs_in_with_its_device_token() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let reg = register(&relay, TSN, &creds);
    let mut device = bare(&relay, &reg.connection_url);
    login(&mut device, &reg.token);
    logged_in(&mut device);
    let token = relay.token("acme", &creds);
    let mut pos = Pos::control(&relay, &token);
    let claimed = pos.claim(TSN);
    assert_eq!(claimed["online"], true, "{claimed}");
    // An access token is not a device token (§3): refused, like any bad login.
    let mut wrong = bare(&relay, &reg.connection_url);
    login(&mut wrong, &token);
    set_read_timeout(&mut wrong, Some(Duration::from_secs(15)));
    assert_eq!(expect_close(&mut wrong), 1008);
    let log = relay.stderr_tail(400);
    assert!(
        !log.contains(&reg.token) && !log.contains(&token),
        "login tokens are never logged"
    );
}

#[test]
fn a_refused_login_is_silent_then_1008_at_the_handshake_deadline_never_earlier() {
    let relay = Relay::start(&["--handshake-timeout", "2s", "--ping-interval", "300ms"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let token = relay.token("acme", &creds);
    let big = json!({"type": "login", "token": token, "pad": "x".repeat(5000)}).to_string();
    let cases: Vec<(&str, Message)> = vec![
        (
            "a bad token",
            Message::Text(json!({"type": "login", "token": "a.b.c"}).to_string()),
        ),
        (
            "a binary first message",
            Message::Binary(
                json!({"type": "login", "token": token})
                    .to_string()
                    .into_bytes(),
            ),
        ),
        (
            "another message type",
            Message::Text(json!({"type": "claim", "tsn": TSN}).to_string()),
        ),
        ("over 4 KiB", Message::Text(big)),
        ("not JSON", Message::Text("login please".into())),
    ];
    let mut started = Vec::new();
    for (what, first) in cases {
        let upgraded = Instant::now();
        let mut ws = bare(&relay, POS_LISTENER);
        ws.send(first).unwrap();
        started.push((what, upgraded, ws));
    }
    // Nothing silent: a connection that sends nothing at all ends the same way.
    started.push((
        "no message at all",
        Instant::now(),
        bare(&relay, POS_LISTENER),
    ));
    for (what, upgraded, mut ws) in started {
        set_read_timeout(&mut ws, Some(Duration::from_secs(10)));
        let code = expect_close(&mut ws);
        let after = upgraded.elapsed();
        assert_eq!(code, 1008, "{what}");
        assert!(
            after >= Duration::from_secs(2),
            "{what}: closed {after:?} after the upgrade, before the handshake timeout"
        );
    }
    let log = relay.stderr_tail(400);
    assert!(!log.contains(&token), "a login token is never logged");
    assert!(log.contains("login by first message refused"));
}

#[test]
fn a_denial_after_a_good_login_is_an_error_then_1008() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let other = relay.create_client("acme", Some("s1"));
    let _device = Device::register_and_connect(&relay, TSN, &creds);
    let mut holder = Pos::control(&relay, &relay.token("acme", &creds));
    let (_, session_url) = holder.claim_ok(TSN);
    // §5 403: another client's session.
    let mut ws = bare(&relay, &session_url);
    login(&mut ws, &relay.token("acme", &other));
    let error = recv_json(&mut ws);
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{error}"
    );
    assert_eq!(expect_close(&mut ws), 1008);
    // §5 404: no such session.
    let mut ws = bare(&relay, "/cloud-connector/v1/session/AAAAAAAAAAAAAAAAAAAAAA");
    login(&mut ws, &relay.token("acme", &creds));
    let error = recv_json(&mut ws);
    assert_eq!(error["code"], "not_found", "{error}");
    assert_eq!(expect_close(&mut ws), 1008);
}

#[test]
fn waiting_logins_count_as_unauthenticated_and_refusals_as_failed_logins() {
    let relay = Relay::start(&[
        "--max-unauthenticated",
        "2",
        "--max-unauthenticated-wait",
        "0s",
        "--handshake-timeout",
        "30s",
        "--failed-logins-per-address",
        "3",
    ]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let token = relay.token("acme", &creds);
    let mut pair = Pair::connect(&relay, "acme", TSN, &creds);
    // A flood of silent first-message connections stops at the limit, with 503.
    let mut silent: Vec<Ws> = (0..2).map(|_| bare(&relay, POS_LISTENER)).collect();
    let refused = relay.ws_refused(&relay.ws_url(POS_LISTENER), &[]);
    assert_eq!(
        refused.status().as_u16(),
        503,
        "§7b: unauthenticated until logged in"
    );
    assert!(refused.headers().contains_key("retry-after"));
    pair.exchange_text("everyone else is served");
    // One logs in: it leaves the unauthenticated count, so another gets in.
    login(&mut silent[0], &token);
    logged_in(&mut silent[0]);
    let mut third = wait_for(Duration::from_secs(5), || {
        relay
            .ws_connect(&relay.ws_url(POS_LISTENER), &[])
            .ok()
            .map(|(ws, _)| ws)
    })
    .expect("a place under --max-unauthenticated after a login");
    let _ = third.close(None);
    drop(silent);
    // Refused logins from one address count toward its failed-login limit (§1).
    let failures = || {
        metric_sum(
            &relay.metrics(),
            "posrelay_auth_failures_total",
            &[("reason", "invalid_client")],
        )
    };
    let attacker: IpAddr = "127.0.0.5".parse().unwrap();
    for i in 0..3 {
        let before = failures();
        let stream = connect_from(attacker, relay.relay_addr);
        let (mut ws, _) = tungstenite::client(
            relay.ws_url(POS_LISTENER).as_str(),
            tungstenite::stream::MaybeTlsStream::Plain(stream),
        )
        .unwrap_or_else(|e| panic!("upgrade {i}: {e}"));
        login(&mut ws, "not.a.token");
        // The refusal is silent: wait until /metrics has counted it.
        let counted = wait_for(Duration::from_secs(5), || {
            (failures() > before).then_some(())
        });
        assert!(counted.is_some(), "failure {i} counted");
        drop(ws);
    }
    let (head, _) = token_request_from(
        &relay,
        attacker,
        "acme",
        &creds.client_id,
        &creds.client_secret,
    );
    assert_eq!(head.status, 429, "§1: refused logins count for the address");
}

#[test]
fn sigterm_closes_connections_waiting_for_their_login_with_1001() {
    let mut relay = Relay::start(&["--handshake-timeout", "30s"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut waiting = bare(&relay, POS_LISTENER);
    let mut refused = bare(&relay, POS_LISTENER);
    login(&mut refused, "bad.token.here");
    let mut registering = relay.ws(&relay.ws_url(DEVICE_LISTENER), &[]);
    // Every endpoint of §7b: a device connection (§3) and a one-step session (§5a) waiting
    // for their login too.
    let _device = Device::register_and_connect(&relay, TSN, &creds);
    let reg = register(&relay, TSN, &creds);
    let mut device_waiting = bare(&relay, &reg.connection_url);
    let mut one_step_waiting = bare(
        &relay,
        &format!("/cloud-connector/v1/devices/{TSN}/session"),
    );
    relay.signal(libc::SIGTERM);
    for (what, ws) in [
        ("waiting", &mut waiting),
        ("refused", &mut refused),
        ("registering", &mut registering),
        ("a device waiting", &mut device_waiting),
        ("a one-step session waiting", &mut one_step_waiting),
    ] {
        set_read_timeout(ws, Some(Duration::from_secs(10)));
        assert_eq!(expect_close(ws), 1001, "{what}: §6");
    }
    assert!(relay.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn a_connection_logged_in_by_message_closes_with_4401_when_its_token_expires() {
    // §7b: "the connection goes on exactly as if the token had come with the upgrade
    // (4401 at expiry included)".
    let relay = Relay::start(&["--access-token-ttl", "3s"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let _device = Device::register_and_connect(&relay, TSN, &creds);
    let token = relay.token("acme", &creds);
    let mut control = bare(&relay, POS_LISTENER);
    login(&mut control, &token);
    let answer = logged_in(&mut control);
    assert!(
        answer["expires_in"].as_u64().is_some_and(|s| s <= 3),
        "{answer}"
    );
    send_json(
        &mut control,
        &json!({"type": "claim", "tsn": TSN, "request_id": "c"}),
    );
    let claimed = recv_json(&mut control);
    let mut session = bare(&relay, claimed["session_url"].as_str().unwrap());
    login(&mut session, &token);
    logged_in(&mut session);
    for (what, ws) in [("control channel", &mut control), ("session", &mut session)] {
        set_read_timeout(ws, Some(Duration::from_secs(12)));
        let (_, code) = drain_until_close(ws);
        assert_eq!(code, 4401, "{what}: token expired");
    }
}

#[test]
fn a_login_message_of_exactly_4_kib_is_read_and_one_byte_more_is_refused() {
    let relay = Relay::start(&["--handshake-timeout", "2s"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let token = relay.token("acme", &creds);
    // The same login, padded with JSON whitespace to 4096 and 4097 bytes.
    let padded = |len: usize| {
        let base = json!({"type": "login", "token": token}).to_string();
        let mut text = base[..base.len() - 1].to_owned();
        text.push_str(&" ".repeat(len - base.len()));
        text.push('}');
        assert_eq!(text.len(), len);
        text
    };
    let mut fits = bare(&relay, POS_LISTENER);
    send_text(&mut fits, &padded(4096));
    logged_in(&mut fits);
    let upgraded = Instant::now();
    let mut over = bare(&relay, POS_LISTENER);
    send_text(&mut over, &padded(4097));
    set_read_timeout(&mut over, Some(Duration::from_secs(10)));
    assert_eq!(expect_close(&mut over), 1008, "§7b: at most 4 KiB");
    assert!(
        upgraded.elapsed() >= Duration::from_secs(2),
        "at the deadline"
    );
}

#[test]
fn login_by_first_message_works_over_wss() {
    let (relay, _cert) =
        Relay::start_tls(&["--ping-interval", "300ms", "--handshake-timeout", "2s"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut device = Device::register_and_connect(&relay, TSN, &creds);
    let token = relay.token("acme", &creds);
    let mut control = bare(&relay, POS_LISTENER);
    assert_silent(&mut control, Duration::from_millis(700), "over wss");
    login(&mut control, &token);
    send_json(
        &mut control,
        &json!({"type": "claim", "tsn": TSN, "request_id": "c"}),
    );
    logged_in(&mut control);
    let claimed = recv_json(&mut control);
    let session_url = claimed["session_url"].as_str().unwrap();
    assert!(session_url.starts_with("wss://"), "{claimed}");
    let mut session = bare(&relay, session_url);
    login(&mut session, &token);
    send_text(&mut session, "<TRANSACTION/>");
    logged_in(&mut session);
    match device.recv() {
        Message::Text(t) => assert_eq!(t, "<TRANSACTION/>"),
        other => panic!("device got {}", show(&other)),
    }
    // A refused login over TLS: silence, then 1008 at the deadline.
    let upgraded = Instant::now();
    let mut refused = bare(&relay, POS_LISTENER);
    login(&mut refused, "not.a.token");
    set_read_timeout(&mut refused, Some(Duration::from_secs(10)));
    assert_eq!(expect_close(&mut refused), 1008);
    assert!(upgraded.elapsed() >= Duration::from_secs(2));
}

#[test]
fn a_login_by_message_may_offer_an_application_subprotocol() {
    // §7b: "no credentials at all (no Authorization, no bearer.* entry)": an application
    // subprotocol is not a credential; it is negotiated as §7 says.
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let token = relay.token("acme", &creds);
    let (mut ws, resp) = relay
        .ws_connect(
            &relay.ws_url(POS_LISTENER),
            &[("Sec-WebSocket-Protocol", "posrelay")],
        )
        .unwrap_or_else(|e| panic!("{}", describe_ws_error(&e)));
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("posrelay")
    );
    login(&mut ws, &token);
    logged_in(&mut ws);
    send_json(&mut ws, &json!({"type": "devices", "request_id": "d"}));
    assert_eq!(recv_json(&mut ws)["type"], "devices");
}
