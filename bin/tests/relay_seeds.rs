//! Issue 11, the parts that already hold end to end on the real binary: a terminal
//! configured from seed 001 (the listener URL with a trailing slash, its credentials in
//! `custom_registration_data`, PROTOCOL.md §2) and §4's `pending_frames`.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use tungstenite::Message;

const TSN: &str = "12345678";

/// Registers on `path` with `message`; the reply and the close code after it.
fn register_on(relay: &Relay, path: &str, message: &str) -> (serde_json::Value, u16) {
    let mut ws = relay.ws(&relay.ws_url(path), &[]);
    send_text(&mut ws, message);
    let reply = recv_json(&mut ws);
    (reply, expect_close(&mut ws))
}

#[test]
fn seed_001_terminal_registers_through_the_trailing_slash_with_custom_registration_data() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let top_level = register(&relay, TSN, &creds);

    // Seed 001: `ep_register_url: wss://{base-url}/cloud-connector/v1/device-listener/` and
    // `custom_registration_data: "{\"client_id\":…,\"client_secret\":…}"` (a string).
    let inner = json!({"client_id": creds.client_id, "client_secret": creds.client_secret});
    let as_string = json!({
        "type": "register",
        "tsn": TSN,
        "custom_registration_data": inner.to_string(),
    });
    let (reply, code) = register_on(
        &relay,
        "/cloud-connector/v1/device-listener/",
        &as_string.to_string(),
    );
    assert_eq!(reply["type"], "registered", "{reply}");
    assert_eq!(code, 1000, "§2: registered, then 1000");
    assert_eq!(
        reply["session_id"], top_level.session_id,
        "the same device, the same session_id"
    );
    // As an object, on the path without the slash.
    let as_object = json!({"type": "register", "tsn": TSN, "custom_registration_data": inner});
    let (reply, code) = register_on(&relay, DEVICE_LISTENER, &as_object.to_string());
    assert_eq!((reply["type"].as_str(), code), (Some("registered"), 1000));
    // The device connects with that registration and relays as any other.
    let reg = Registration {
        session_id: reply["session_id"].as_str().unwrap().to_owned(),
        connection_url: reply["connection_url"].as_str().unwrap().to_owned(),
        token: reply["token"].as_str().unwrap().to_owned(),
        expires_in: reply["expires_in"].as_i64().unwrap(),
        raw: reply.clone(),
    };
    let mut device = Device::connect(&relay, reg);
    let token = relay.token("acme", &creds);
    // The POS listener answers with the trailing slash too.
    let pos_ws = relay.ws(
        &relay.ws_url("/cloud-connector/v1/pos-listener/"),
        &[("Authorization", &format!("Bearer {token}"))],
    );
    let mut pos = Pos::control_from(pos_ws);
    let (_, session_url) = pos.claim_ok(TSN);
    let mut session = Pos::session(&relay, &session_url, &token);
    send_text(&mut session, "<TRANSACTION/>");
    match device.recv() {
        Message::Text(t) => assert_eq!(t, "<TRANSACTION/>"),
        other => panic!("expected the POS frame, got {}", show(&other)),
    }
}

#[test]
fn credentials_both_at_the_top_level_and_in_custom_registration_data_are_bad_request() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let inner = json!({"client_id": creds.client_id, "client_secret": creds.client_secret});
    for custom in [inner.clone(), json!(inner.to_string())] {
        let both = json!({
            "type": "register",
            "tsn": TSN,
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "custom_registration_data": custom,
        });
        let (reply, code) = register_on(&relay, DEVICE_LISTENER, &both.to_string());
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], "bad_request", "{reply}");
        assert_eq!(code, 1008, "§2: an error, then 1008");
    }
    // A string that is not the JSON object.
    let broken = json!({"type": "register", "tsn": TSN, "custom_registration_data": "client_id=x"});
    let (reply, code) = register_on(&relay, DEVICE_LISTENER, &broken.to_string());
    assert_eq!((reply["code"].as_str(), code), (Some("bad_request"), 1008));
}

#[test]
fn claimed_counts_the_device_messages_waiting_for_the_session() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut device = Device::register_and_connect(&relay, TSN, &creds);
    let token = relay.token("acme", &creds);
    let mut pos = Pos::control(&relay, &token);
    let first = pos.claim(TSN);
    assert_eq!(first["pending_frames"], 0, "{first}");
    // The terminal speaks while the POS has no session open: its messages wait (§5).
    device.send_text("one");
    device.send_binary(b"two");
    // Ask again until both have reached the relay (the device's writes are not acks).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        let v = pos.claim(TSN);
        if v["pending_frames"] == 2 || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(again["type"], "claimed", "{again}");
    assert_eq!(
        again["pending_frames"], 2,
        "§4: device messages waiting: {again}"
    );
    // They are what the session gets first, in order.
    let mut session = Pos::session(&relay, again["session_url"].as_str().unwrap(), &token);
    match recv(&mut session) {
        Message::Text(t) => assert_eq!(t, "one"),
        other => panic!("expected the first device message, got {}", show(&other)),
    }
    match recv(&mut session) {
        Message::Binary(b) => assert_eq!(b.as_slice(), b"two"),
        other => panic!("expected the second device message, got {}", show(&other)),
    }
    let after = pos.claim(TSN);
    assert_eq!(after["pending_frames"], 0, "delivered: {after}");
}

#[test]
fn seed_001_terminal_registers_through_the_trailing_slash_over_wss() {
    // Seed 001 writes `wss://{base-url}/cloud-connector/v1/device-listener/`.
    let (relay, _cert) = Relay::start_tls(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let inner = json!({"client_id": creds.client_id, "client_secret": creds.client_secret});
    let message = json!({
        "type": "register",
        "tsn": format!("ingenico-axium-{TSN}"),
        "custom_registration_data": inner.to_string(),
    });
    let (reply, code) = register_on(
        &relay,
        "/cloud-connector/v1/device-listener/",
        &message.to_string(),
    );
    assert_eq!(
        (reply["type"].as_str(), code),
        (Some("registered"), 1000),
        "{reply}"
    );
    let url = reply["connection_url"].as_str().unwrap();
    assert!(url.starts_with("wss://"), "{reply}");
    let reg = Registration {
        session_id: reply["session_id"].as_str().unwrap().to_owned(),
        connection_url: url.to_owned(),
        token: reply["token"].as_str().unwrap().to_owned(),
        expires_in: reply["expires_in"].as_i64().unwrap(),
        raw: reply.clone(),
    };
    let mut device = Device::connect(&relay, reg);
    let token = relay.token("acme", &creds);
    let mut pos = Pos::control_from(
        relay.ws_bearer(&relay.ws_url("/cloud-connector/v1/pos-listener/"), &token),
    );
    let (_, session_url) = pos.claim_ok(TSN);
    let mut session = Pos::session(&relay, &session_url, &token);
    send_text(&mut session, "<TRANSACTION/>");
    match device.recv() {
        Message::Text(t) => assert_eq!(t, "<TRANSACTION/>"),
        other => panic!("expected the POS frame, got {}", show(&other)),
    }
}

#[test]
fn custom_registration_data_without_credentials_beside_top_level_ones_is_accepted() {
    // A terminal's custom_registration_data may carry other things; only credentials in
    // both places are ambiguous (§2).
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let other = json!({"lane": 3, "merchant_ref": "m-17"});
    for custom in [other.clone(), json!(other.to_string())] {
        let message = json!({
            "type": "register",
            "tsn": TSN,
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "custom_registration_data": custom,
        });
        let (reply, code) = register_on(&relay, DEVICE_LISTENER, &message.to_string());
        assert_eq!(
            (reply["type"].as_str(), code),
            (Some("registered"), 1000),
            "{custom}: {reply}"
        );
    }
}
