//! Issue "relay node": the §4 control channel — claim, release, devices, the events it
//! pushes, tenancy scope, and the fully qualified tsn form of §2.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Two tenants:
/// - acme: stores s1 (11111111, 22222222, 44444444) and s2 (33333333); clients c1 and c1b
///   (store s1), c2 (store s2), cd (domain-wide);
/// - globex: store g1 (55555555); client g.
struct World {
    relay: Relay,
    c1: Creds,
    c1b: Creds,
    c2: Creds,
    cd: Creds,
    g: Creds,
}

fn world() -> World {
    let relay = Relay::start(&[]);
    relay.create_domain("acme");
    relay.create_store("acme", "s1", "m1");
    relay.create_store("acme", "s2", "m1");
    for tsn in ["11111111", "22222222", "44444444"] {
        relay.create_device("acme", tsn, "s1");
    }
    relay.create_device("acme", "33333333", "s2");
    let c1 = relay.create_client("acme", Some("s1"));
    let c1b = relay.create_client("acme", Some("s1"));
    let c2 = relay.create_client("acme", Some("s2"));
    let cd = relay.create_client("acme", None);
    relay.create_domain("globex");
    relay.create_store("globex", "g1", "m7");
    relay.create_device("globex", "55555555", "g1");
    let g = relay.create_client("globex", Some("g1"));
    World {
        relay,
        c1,
        c1b,
        c2,
        cd,
        g,
    }
}

impl World {
    fn pos(&self, domain: &str, creds: &Creds) -> Pos {
        Pos::control(&self.relay, &self.relay.token(domain, creds))
    }
}

/// Sends `msg` with `request_id` = `id` and returns the answer repeating it.
fn ask(pos: &mut Pos, mut msg: Value, id: &str) -> Value {
    msg["request_id"] = json!(id);
    pos.send_raw(&msg.to_string());
    pos.answer_to(id)
}

/// The `devices` answer with its list sorted by tsn (the order is not part of §4).
fn devices_sorted(pos: &mut Pos, id: &str) -> Value {
    let mut v = ask(pos, json!({"type": "devices"}), id);
    if let Some(list) = v["devices"].as_array_mut() {
        list.sort_by(|a, b| a["tsn"].as_str().cmp(&b["tsn"].as_str()));
    }
    v
}

/// Polls `devices` until `tsn` shows `online` (a connection that just opened may take a
/// moment to reach the shard that answers); panics after 5 s.
fn wait_online(pos: &mut Pos, tsn: &str, online: bool) {
    let ok = wait_for(Duration::from_secs(5), || {
        let v = pos.devices();
        v["devices"]
            .as_array()?
            .iter()
            .any(|d| d["tsn"] == tsn && d["online"] == online)
            .then_some(())
    });
    assert!(ok.is_some(), "{tsn} never showed online={online}");
}

fn device(tsn: &str, online: bool) -> Value {
    json!({"tsn": tsn, "online": online})
}

#[test]
fn answers_repeat_request_id_and_devices_lists_only_the_scope() {
    let w = world();
    let _d1 = Device::register_and_connect(&w.relay, "11111111", &w.c1);
    let _r2 = register(&w.relay, "22222222", &w.c1); // registered, never connected
    let _d3 = Device::register_and_connect(&w.relay, "33333333", &w.c2);
    let _d5 = Device::register_and_connect(&w.relay, "55555555", &w.g);

    let mut p1 = w.pos("acme", &w.c1);
    wait_online(&mut p1, "11111111", true);
    assert_eq!(
        devices_sorted(&mut p1, "list-1"),
        json!({"type": "devices", "request_id": "list-1", "devices": [
            device("11111111", true), device("22222222", false), device("44444444", false),
        ]}),
        "a store client sees its store's devices only"
    );
    let mut pd = w.pos("acme", &w.cd);
    wait_online(&mut pd, "33333333", true);
    assert_eq!(
        devices_sorted(&mut pd, "list-d"),
        json!({"type": "devices", "request_id": "list-d", "devices": [
            device("11111111", true), device("22222222", false),
            device("33333333", true), device("44444444", false),
        ]}),
        "a domain-wide client sees the whole domain, not globex"
    );
    let mut p2 = w.pos("acme", &w.c2);
    assert_eq!(
        devices_sorted(&mut p2, "list-2"),
        json!({"type": "devices", "request_id": "list-2", "devices": [device("33333333", true)]})
    );
    let mut pg = w.pos("globex", &w.g);
    wait_online(&mut pg, "55555555", true);
    assert_eq!(
        devices_sorted(&mut pg, "list-g"),
        json!({"type": "devices", "request_id": "list-g", "devices": [device("55555555", true)]})
    );

    let claimed = ask(&mut p1, json!({"type": "claim", "tsn": "11111111"}), "c-1");
    assert_eq!(claimed["type"], "claimed", "{claimed}");
    assert_eq!(claimed["request_id"], "c-1");
    assert_eq!(claimed["tsn"], "11111111");
    assert_eq!(claimed["online"], true);
    assert_eq!(
        claimed["session_url"],
        format!(
            "ws://{}/cloud-connector/v1/session/{}",
            w.relay.relay_addr,
            claimed["session_id"].as_str().unwrap()
        )
    );
    assert_eq!(
        ask(
            &mut p1,
            json!({"type": "release", "tsn": "11111111"}),
            "r-1"
        ),
        json!({"type": "released", "request_id": "r-1", "tsn": "11111111"})
    );
    // An id of any JSON string shape is repeated as is.
    let odd = "ü/ \"quoted\" \\ 🧾";
    let v = ask(&mut p1, json!({"type": "devices"}), odd);
    assert_eq!(v["request_id"], odd);
}

#[test]
fn device_status_is_pushed_to_each_control_channel_of_the_claim_holder() {
    let w = world();
    let reg = register(&w.relay, "22222222", &w.c1);
    let token = w.relay.token("acme", &w.c1);
    let mut lane_a = Pos::control(&w.relay, &token);
    let mut lane_b = Pos::control(&w.relay, &token);
    let mut other = w.pos("acme", &w.c1b);

    // Registered but disconnected: claimable, "online": false (§4).
    let claimed = ask(
        &mut lane_a,
        json!({"type": "claim", "tsn": "22222222"}),
        "a-1",
    );
    assert_eq!(
        claimed,
        json!({
            "type": "claimed",
            "request_id": "a-1",
            "tsn": "22222222",
            "session_id": reg.session_id,
            "session_url": format!("ws://{}/cloud-connector/v1/session/{}", w.relay.relay_addr, reg.session_id),
            "online": false,
            "pending_frames": 0,
        })
    );
    let online = json!({"type": "device_status", "tsn": "22222222", "online": true});
    let offline = json!({"type": "device_status", "tsn": "22222222", "online": false});

    // The device connects: both lanes hear it.
    let mut d = Device::connect(&w.relay, reg);
    assert_eq!(lane_a.next_event(), online);
    assert_eq!(lane_b.next_event(), online);
    // A clean close: offline.
    close_and_wait(&mut d.ws, 1000);
    assert_eq!(lane_a.next_event(), offline);
    assert_eq!(lane_b.next_event(), offline);
    // Back with a fresh registration (same session): online.
    let reg = register(&w.relay, "22222222", &w.c1);
    assert_eq!(
        reg.session_id, claimed["session_id"],
        "§0: the session_id survives a reconnect"
    );
    let mut d = Device::connect(&w.relay, reg);
    assert_eq!(lane_a.next_event(), online);
    assert_eq!(lane_b.next_event(), online);
    // The TCP connection vanishes without a close frame: offline as well.
    tcp_of(&mut d.ws)
        .shutdown(std::net::Shutdown::Both)
        .unwrap();
    drop(d);
    assert_eq!(lane_a.next_event(), offline);
    assert_eq!(lane_b.next_event(), offline);
    // A client that holds no claim on it hears nothing.
    assert_eq!(
        other.events_until_barrier(),
        Vec::<serde_json::Value>::new()
    );
    // No duplicates either.
    assert_eq!(
        lane_a.events_until_barrier(),
        Vec::<serde_json::Value>::new()
    );
}

#[test]
fn claims_outside_the_scope_answer_not_found_and_unregistered_devices_offline() {
    let w = world();
    for (tsn, creds) in [("11111111", &w.c1), ("33333333", &w.c2), ("55555555", &w.g)] {
        let _ = register(&w.relay, tsn, creds);
    }
    let mut p1 = w.pos("acme", &w.c1);
    let cases = [
        ("33333333", "not_found", "another store's device"),
        ("55555555", "not_found", "another domain's device"),
        ("99999999", "not_found", "an unknown tsn"),
        ("44444444", "offline", "a device that never registered"),
    ];
    let mut messages = Vec::new();
    for (i, (tsn, code, what)) in cases.iter().enumerate() {
        let id = format!("scope-{i}");
        let v = ask(&mut p1, json!({"type": "claim", "tsn": tsn}), &id);
        assert_error(&v, Some(&id), code);
        let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["code", "message", "request_id", "type"],
            "{what}: {v}"
        );
        messages.push(v["message"].as_str().unwrap().replace(tsn, "TSN"));
    }
    // Another tenant's device and an unknown tsn cannot be told apart (§4).
    assert_eq!(
        messages[1], messages[2],
        "not_found must not reveal another tenant's device"
    );
    assert_eq!(messages[0], messages[2], "nor another store's");

    let mut pg = w.pos("globex", &w.g);
    assert_error(
        &ask(&mut pg, json!({"type": "claim", "tsn": "11111111"}), "g-1"),
        Some("g-1"),
        "not_found",
    );
    let mut p2 = w.pos("acme", &w.c2);
    assert_error(
        &ask(&mut p2, json!({"type": "claim", "tsn": "11111111"}), "s2-1"),
        Some("s2-1"),
        "not_found",
    );
    // A release outside the scope does not reveal the device either.
    assert_error(
        &ask(
            &mut pg,
            json!({"type": "release", "tsn": "11111111"}),
            "g-2",
        ),
        Some("g-2"),
        "not_found",
    );
    // The domain-wide client may claim any store's device.
    let mut pd = w.pos("acme", &w.cd);
    let v = ask(&mut pd, json!({"type": "claim", "tsn": "33333333"}), "d-1");
    assert_eq!(v["type"], "claimed", "{v}");
    assert_eq!(v["tsn"], "33333333");
}

#[test]
fn claims_are_exclusive_and_idempotent_and_release_follows_the_holder() {
    let w = world();
    let reg = register(&w.relay, "11111111", &w.c1);
    let _ = register(&w.relay, "22222222", &w.c1);
    let mut p1 = w.pos("acme", &w.c1);
    let mut p1b = w.pos("acme", &w.c1b);
    let mut pd = w.pos("acme", &w.cd);

    let first = ask(&mut p1, json!({"type": "claim", "tsn": "11111111"}), "1");
    assert_eq!(first["type"], "claimed", "{first}");
    assert_eq!(first["session_id"], reg.session_id);
    // The same client again (also from a second control channel): same session.
    let again = ask(&mut p1, json!({"type": "claim", "tsn": "11111111"}), "2");
    assert_eq!(again["type"], "claimed");
    assert_eq!(again["session_id"], first["session_id"]);
    assert_eq!(again["session_url"], first["session_url"]);
    assert_eq!(again["request_id"], "2");
    let mut p1_lane2 = w.pos("acme", &w.c1);
    let lane2 = ask(
        &mut p1_lane2,
        json!({"type": "claim", "tsn": "11111111"}),
        "3",
    );
    assert_eq!(lane2["session_id"], first["session_id"], "{lane2}");

    // Other clients: busy, for claim and for release.
    assert_error(
        &ask(&mut p1b, json!({"type": "claim", "tsn": "11111111"}), "b1"),
        Some("b1"),
        "device_busy",
    );
    assert_error(
        &ask(&mut pd, json!({"type": "claim", "tsn": "11111111"}), "d1"),
        Some("d1"),
        "device_busy",
    );
    assert_error(
        &ask(
            &mut p1b,
            json!({"type": "release", "tsn": "11111111"}),
            "b2",
        ),
        Some("b2"),
        "device_busy",
    );
    // Releasing an unclaimed device answers released.
    assert_eq!(
        ask(
            &mut p1b,
            json!({"type": "release", "tsn": "22222222"}),
            "b3"
        ),
        json!({"type": "released", "request_id": "b3", "tsn": "22222222"})
    );
    // The holder releases; now another client may claim it, and gets the same session.
    assert_eq!(
        ask(&mut p1, json!({"type": "release", "tsn": "11111111"}), "4"),
        json!({"type": "released", "request_id": "4", "tsn": "11111111"})
    );
    let taken = ask(&mut p1b, json!({"type": "claim", "tsn": "11111111"}), "b4");
    assert_eq!(taken["type"], "claimed", "{taken}");
    assert_eq!(taken["session_id"], reg.session_id);
    assert_error(
        &ask(&mut p1, json!({"type": "claim", "tsn": "11111111"}), "5"),
        Some("5"),
        "device_busy",
    );
    // Releasing twice is fine.
    assert_eq!(
        ask(
            &mut p1b,
            json!({"type": "release", "tsn": "11111111"}),
            "b5"
        )["type"],
        "released"
    );
    assert_eq!(
        ask(
            &mut p1b,
            json!({"type": "release", "tsn": "11111111"}),
            "b6"
        )["type"],
        "released"
    );
}

#[test]
fn malformed_control_messages_answer_bad_request_and_the_channel_goes_on() {
    let w = world();
    let _ = register(&w.relay, "11111111", &w.c1);
    let mut p1 = w.pos("acme", &w.c1);

    for raw in [
        "not json",
        "[]",
        "{}",
        r#"{"type": 5}"#,
        "{\"type\": \"claim\"",
    ] {
        p1.send_raw(raw);
        let v = p1.next_event();
        assert_error(&v, None, "bad_request");
        assert!(
            v.get("request_id").is_none_or(|r| r.is_null()),
            "{raw:?}: no request_id to repeat: {v}"
        );
    }
    let with_id = [
        (
            r#"{"type":"claim","request_id":"x1"}"#,
            "x1",
            "claim without tsn",
        ),
        (
            r#"{"type":"claim","tsn":11111111,"request_id":"x2"}"#,
            "x2",
            "numeric tsn",
        ),
        (
            r#"{"type":"release","request_id":"x3"}"#,
            "x3",
            "release without tsn",
        ),
        (
            r#"{"type":"frobnicate","request_id":"x4"}"#,
            "x4",
            "unknown type",
        ),
    ];
    for (raw, id, what) in with_id {
        p1.send_raw(raw);
        let v = p1.answer_to(id);
        assert_error(&v, Some(id), "bad_request");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }
    // The channel still works.
    let v = ask(&mut p1, json!({"type": "claim", "tsn": "11111111"}), "ok");
    assert_eq!(v["type"], "claimed", "{v}");
}

#[test]
fn fully_qualified_tsn_registers_and_claims_and_replies_name_the_bare_serial() {
    let w = world();
    let reg = register(&w.relay, "ingenico-axium-11111111", &w.c1);
    let mut p1 = w.pos("acme", &w.c1);
    let claimed = ask(
        &mut p1,
        json!({"type": "claim", "tsn": "INGENICO-Axium-11111111"}),
        "q1",
    );
    assert_eq!(claimed["type"], "claimed", "{claimed}");
    assert_eq!(claimed["tsn"], "11111111", "replies name the bare serial");
    assert_eq!(claimed["session_id"], reg.session_id);
    // The bare form names the same device and the same session.
    let bare = register(&w.relay, "11111111", &w.c1);
    assert_eq!(
        bare.session_id, reg.session_id,
        "both forms name the same device"
    );
    let _d = Device::connect(&w.relay, bare);
    assert_eq!(
        p1.next_event(),
        json!({"type": "device_status", "tsn": "11111111", "online": true})
    );
    let v = devices_sorted(&mut p1, "q2");
    assert_eq!(v["devices"][0], device("11111111", true), "{v}");

    // Make and model must match the provisioned device.
    assert_error(
        &ask(
            &mut p1,
            json!({"type": "claim", "tsn": "ingenico-lane-11111111"}),
            "q3",
        ),
        Some("q3"),
        "not_found",
    );
    assert_error(
        &ask(
            &mut p1,
            json!({"type": "claim", "tsn": "verifone-axium-11111111"}),
            "q4",
        ),
        Some("q4"),
        "not_found",
    );
    let msg = json!({"type": "register", "tsn": "verifone-axium-22222222", "client_id": w.c1.client_id, "client_secret": w.c1.client_secret});
    let (reply, code) = register_raw(&w.relay, &msg.to_string());
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "unknown_device", "{reply}");
    assert_eq!(code, 1008);
    // Case-insensitive make and model.
    let r2 = register(&w.relay, "Ingenico-AXIUM-22222222", &w.c1);
    let c2 = ask(&mut p1, json!({"type": "claim", "tsn": "22222222"}), "q5");
    assert_eq!(c2["session_id"], r2.session_id, "{c2}");
    assert_eq!(c2["tsn"], "22222222");

    assert_eq!(
        ask(
            &mut p1,
            json!({"type": "release", "tsn": "ingenico-axium-11111111"}),
            "q6"
        ),
        json!({"type": "released", "request_id": "q6", "tsn": "11111111"})
    );
}
