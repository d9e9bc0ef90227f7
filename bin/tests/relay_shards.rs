//! Issue "relay node": sharding. With `--shards 2`, the device connection and the POS
//! session of one tsn are served by the same shard, seen from outside through the
//! `posrelay_connections{role,shard}` gauges of `/metrics`; `--shards 1` runs the flow.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tungstenite::Message;

fn gauges(relay: &Relay, role: &str) -> BTreeMap<String, f64> {
    connections_by_shard(&parse_metrics(&relay.metrics()), role)
}

fn total(g: &BTreeMap<String, f64>) -> f64 {
    g.values().sum()
}

/// Waits until exactly one shard's `role` gauge is one above `before` (and the others
/// unchanged); returns that shard.
fn shard_that_rose(relay: &Relay, role: &str, before: &BTreeMap<String, f64>) -> String {
    let found = wait_for(Duration::from_secs(5), || {
        let now = gauges(relay, role);
        let risen: Vec<&String> = now
            .iter()
            .filter(|(s, v)| **v == before.get(*s).copied().unwrap_or(0.0) + 1.0)
            .map(|(s, _)| s)
            .collect();
        (total(&now) == total(before) + 1.0 && risen.len() == 1).then(|| risen[0].clone())
    });
    found.unwrap_or_else(|| {
        relay.fail(&format!(
            "no single {role} gauge rose by one: before {before:?}, now {:?}",
            gauges(relay, role)
        ))
    })
}

#[test]
fn device_connection_and_pos_session_of_each_tsn_share_a_shard() {
    let relay = Relay::start(&["--shards", "2"]);
    let tsns: Vec<String> = (0..32u64)
        .map(|i| format!("{}", 40_000_000 + i * 7919))
        .collect();
    let refs: Vec<&str> = tsns.iter().map(|s| s.as_str()).collect();
    let creds = relay.provision("acme", "s1", &refs);
    let token = relay.token("acme", &creds);
    let mut pos = Pos::control(&relay, &token);

    let initial = gauges(&relay, "device");
    assert_eq!(
        initial.keys().cloned().collect::<Vec<_>>(),
        ["0", "1"],
        "one gauge per shard"
    );
    let mut open = Vec::new();
    let mut used = BTreeSet::new();
    for tsn in &tsns {
        let before = gauges(&relay, "device");
        let mut device = Device::register_and_connect(&relay, tsn, &creds);
        let device_shard = shard_that_rose(&relay, "device", &before);

        let before = gauges(&relay, "pos_session");
        let (_sid, url) = pos.claim_ok(tsn);
        let mut session = Pos::session(&relay, &url, &token);
        let session_shard = shard_that_rose(&relay, "pos_session", &before);
        assert_eq!(
            device_shard, session_shard,
            "tsn {tsn}: device and POS session on one shard"
        );
        used.insert(device_shard);

        // And the pair works.
        send_text(&mut session, tsn);
        match device.recv() {
            Message::Text(t) => assert_eq!(&t, tsn),
            other => panic!("{}", show(&other)),
        }
        open.push((device, session));
    }
    assert_eq!(used.len(), 2, "32 tsns over 2 shards use both: {used:?}");
    assert_eq!(total(&gauges(&relay, "device")), 32.0);
    assert_eq!(total(&gauges(&relay, "pos_session")), 32.0);
    assert_eq!(total(&gauges(&relay, "pos_control")), 1.0);

    // The gauges count open connections: they fall back when the pairs close.
    for (mut device, mut session) in open {
        close_and_wait(&mut session, 1000);
        close_and_wait(&mut device.ws, 1000);
    }
    let back = wait_for(Duration::from_secs(5), || {
        (total(&gauges(&relay, "device")) == 0.0 && total(&gauges(&relay, "pos_session")) == 0.0)
            .then_some(())
    });
    assert!(
        back.is_some(),
        "gauges did not fall back: {}",
        relay.metrics()
    );
}

#[test]
fn one_shard_runs_the_basic_flow() {
    let relay = Relay::start(&["--shards", "1"]);
    let creds = relay.provision("acme", "s1", &["12345678"]);
    let mut pair = Pair::connect(&relay, "acme", "12345678", &creds);
    send_text(&mut pair.session, "<TRANSACTION/>");
    match pair.device.recv() {
        Message::Text(t) => assert_eq!(t, "<TRANSACTION/>"),
        other => panic!("{}", show(&other)),
    }
    pair.device.send_binary(&[0, 1, 2, 255]);
    match recv(&mut pair.session) {
        Message::Binary(b) => assert_eq!(b, [0, 1, 2, 255]),
        other => panic!("{}", show(&other)),
    }
    let device = wait_for(Duration::from_secs(5), || {
        let g = gauges(&relay, "device");
        (g.get("0") == Some(&1.0)).then_some(g)
    });
    let device = device.unwrap_or_else(|| gauges(&relay, "device"));
    assert_eq!(
        device,
        BTreeMap::from([("0".to_string(), 1.0)]),
        "a single shard 0"
    );
}
