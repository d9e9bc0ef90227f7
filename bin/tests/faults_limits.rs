//! Fault suite, limits against abuse (issue "Faults, drain and hostile input"): one test
//! per limit. Each hits the limit, sees the refusal's status, `Retry-After` and its
//! `posrelay_refused_total{reason=…}` count, sees that other clients are unaffected (an
//! established pair keeps exchanging, another client or address gets in), and sees the
//! limit recover. Small limits via flags keep each case fast; the login windows are a
//! fixed minute, so the two login cases wait out their `Retry-After` (they run in
//! parallel).

mod common;

use common::*;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const DOMAIN: &str = "acme";
const TSN: &str = "66660001";
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

fn refused_count(relay: &Relay, reason: &str) -> f64 {
    metric_sum(
        &relay.metrics(),
        "posrelay_refused_total",
        &[("reason", reason)],
    )
}

/// Asserts a refusal: `status`, an integer `Retry-After` in `1..=max_retry`; returns it.
fn assert_refusal(resp: &RawResp, status: u16, max_retry: u64, what: &str) -> u64 {
    assert_eq!(resp.status, status, "{what}: {}", resp.head);
    let retry: u64 = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: no Retry-After: {}", resp.head))
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After is not delay-seconds: {}", resp.head));
    assert!(
        (1..=max_retry).contains(&retry),
        "{what}: Retry-After {retry} (max {max_retry})"
    );
    retry
}

/// Waits until `posrelay_open_connections` is `n` (connections close asynchronously).
fn wait_open_connections(relay: &Relay, n: f64) {
    let mut last = -1.0;
    let ok = wait_for(Duration::from_secs(10), || {
        last = metric_sum(&relay.metrics(), "posrelay_open_connections", &[]);
        (last == n).then_some(())
    });
    assert!(
        ok.is_some(),
        "posrelay_open_connections is {last}, expected {n}"
    );
}

/// Waits out `retry` seconds of Retry-After (and a margin), then the right secret must
/// get a token from `from` again.
fn login_after_retry_after(
    relay: &Relay,
    from: std::net::IpAddr,
    creds: &Creds,
    retry: u64,
    what: &str,
) {
    eprintln!("{what}: waiting Retry-After {retry} s");
    std::thread::sleep(Duration::from_secs(retry) + Duration::from_millis(500));
    let (resp, body) =
        token_request_from(relay, from, DOMAIN, &creds.client_id, &creds.client_secret);
    assert_eq!(
        resp.status, 200,
        "{what}: recovered after Retry-After: {body}"
    );
}

fn control_request(token: &str) -> Vec<u8> {
    upgrade_request(POS_LISTENER, &[&format!("Authorization: Bearer {token}")])
}

#[test]
fn max_connections_answers_503_and_recovers() {
    let relay = fault_relay(&["--max-connections", "6"]);
    let creds = relay.provision(DOMAIN, "s1", &[TSN, PROBE_TSN]);
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    let mut pair = Pair::connect(&relay, DOMAIN, TSN, &creds);
    wait_open_connections(&relay, 3.0);
    let mut fillers: Vec<Pos> = (0..3).map(|_| Pos::control(&relay, &pair.token)).collect();
    wait_open_connections(&relay, 6.0);
    let before = refused_count(&relay, "max_connections");

    // Any seventh connection: a WebSocket upgrade, a token request.
    let resp = raw_http(relay.relay_addr, &control_request(&pair.token));
    assert_refusal(&resp, 503, 1, "7th connection");
    let resp = raw_http(
        relay.relay_addr,
        b"POST /oauth2/v1/acme/token HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_refusal(&resp, 503, 1, "token request over the limit");
    assert!(
        refused_count(&relay, "max_connections") >= before + 2.0,
        "counted in /metrics"
    );
    // Those inside are unaffected.
    pair.exchange_text("at the connection limit");
    for f in &mut fillers {
        assert_eq!(f.devices()["type"], "devices");
    }
    // One leaves: the next one gets in.
    close_and_wait(&mut fillers.pop().unwrap().ws, 1000);
    wait_open_connections(&relay, 5.0);
    let resp = raw_http(relay.relay_addr, &control_request(&pair.token));
    assert_eq!(resp.status, 101, "recovered: {}", resp.head);
    drop((pair, fillers));
    // The relay is still at its limit until it has seen those closes: wait for that
    // before the health probe opens its own connections.
    wait_open_connections(&relay, 0.0);
    health.check(&relay, "max connections", RSS_SLACK_KIB);
}

#[test]
fn max_unauthenticated_answers_503_and_recovers() {
    // Refused at once (no wait for a place): this test is about the refusal itself.
    let relay = fault_relay(&[
        "--max-unauthenticated",
        "4",
        "--handshake-timeout",
        "30s",
        "--max-unauthenticated-wait",
        "0s",
    ]);
    let creds = relay.provision(DOMAIN, "s1", &[TSN, PROBE_TSN]);
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    let mut pair = Pair::connect(&relay, DOMAIN, TSN, &creds);
    wait_open_connections(&relay, 3.0);
    let before = refused_count(&relay, "max_unauthenticated");
    // Two that never send a head, two upgraded registrations that never register.
    let mut idle: Vec<std::net::TcpStream> =
        (0..2).map(|_| raw_connect(relay.relay_addr)).collect();
    let mut unregistered: Vec<Ws> = (0..2)
        .map(|_| relay.ws(&relay.ws_url(DEVICE_LISTENER), &[]))
        .collect();
    wait_open_connections(&relay, 7.0);

    let resp = raw_http(relay.relay_addr, &upgrade_request(DEVICE_LISTENER, &[]));
    assert_refusal(&resp, 503, 1, "5th unauthenticated connection");
    assert!(
        refused_count(&relay, "max_unauthenticated") > before,
        "counted in /metrics"
    );
    // Authenticated connections are unaffected.
    pair.exchange_text("at the unauthenticated limit");
    // The anonymous ones leave: anyone gets in again.
    idle.clear();
    for ws in &mut unregistered {
        let _ = ws.close(None);
    }
    unregistered.clear();
    wait_open_connections(&relay, 3.0);
    let resp = raw_http(relay.relay_addr, &upgrade_request(DEVICE_LISTENER, &[]));
    assert_eq!(resp.status, 101, "recovered: {}", resp.head);
    drop(pair);
    health.check(&relay, "max unauthenticated", RSS_SLACK_KIB);
}

/// `--max-unauthenticated-wait`: a connection past `--max-unauthenticated` waits for a
/// place instead of a 503, and does not hold up a drain: SIGTERM closes it without an
/// answer and the relay exits 0, long before the wait would have ended.
#[test]
fn a_connection_waiting_for_an_anonymous_place_does_not_hold_up_a_drain() {
    use std::io::{Read, Write};
    let mut relay = fault_relay(&[
        "--max-unauthenticated",
        "1",
        "--max-unauthenticated-wait",
        "300s",
        "--handshake-timeout",
        "300s",
        "--drain-timeout",
        "5s",
    ]);
    let held = raw_connect(relay.relay_addr);
    wait_open_connections(&relay, 1.0);
    let mut waiter = raw_connect(relay.relay_addr);
    waiter
        .write_all(&upgrade_request(DEVICE_LISTENER, &[]))
        .unwrap();
    let waiting = wait_for(Duration::from_secs(10), || {
        let n = metric_sum(&relay.metrics(), "posrelay_unauthenticated_waiting", &[]);
        (n == 1.0).then_some(())
    });
    assert!(waiting.is_some(), "the second connection waits for a place");
    assert_eq!(
        refused_count(&relay, "max_unauthenticated"),
        0.0,
        "waiting is not a refusal"
    );
    // `sigterm` gives the relay 30 s: far less than the 300 s wait.
    let status = relay.sigterm();
    assert!(status.success(), "drained and exited 0: {status:?}");
    let mut answer = [0u8; 64];
    let n = waiter.read(&mut answer).unwrap_or(0);
    assert_eq!(
        n,
        0,
        "closed without an answer: {:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    drop(held);
}

#[test]
fn max_connections_per_client_answers_429_and_recovers() {
    let relay = fault_relay(&["--max-connections-per-client", "3"]);
    let creds = relay.provision(DOMAIN, "s1", &[TSN, PROBE_TSN]);
    let other = relay.create_client(DOMAIN, Some("s1"));
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    // The pair holds 2 of the client's 3 (control + session); one more control fills it.
    let mut pair = Pair::connect(&relay, DOMAIN, TSN, &creds);
    let mut third = Pos::control(&relay, &pair.token);
    let before = refused_count(&relay, "max_per_client");

    let resp = raw_http(relay.relay_addr, &control_request(&pair.token));
    let retry = assert_refusal(&resp, 429, 60, "4th control channel of a client");
    let session_req = upgrade_request(
        url_path(&pair.session_url),
        &[&format!("Authorization: Bearer {}", pair.token)],
    );
    let resp = raw_http(relay.relay_addr, &session_req);
    assert_refusal(&resp, 429, 60, "a session over the client's limit");
    assert!(
        refused_count(&relay, "max_per_client") >= before + 2.0,
        "counted in /metrics"
    );
    eprintln!("max per client: Retry-After {retry}");
    // The client's own connections and other clients are unaffected; devices do not count.
    pair.exchange_text("at the client limit");
    assert_eq!(third.devices()["type"], "devices");
    let other_token = relay.token(DOMAIN, &other);
    let mut other_pos = Pos::control(&relay, &other_token);
    assert_eq!(
        other_pos.devices()["type"],
        "devices",
        "another client gets in"
    );
    let device_still_registers = register(&relay, TSN, &creds);
    // One leaves: the client gets in again.
    close_and_wait(&mut third.ws, 1000);
    let ok = wait_for(Duration::from_secs(10), || {
        let r = raw_http(relay.relay_addr, &control_request(&pair.token));
        (r.status == 101).then_some(())
    });
    assert!(ok.is_some(), "recovered after one connection closed");
    drop((pair, other_pos, device_still_registers));
    // The client is at its limit until the relay has seen those closes.
    wait_open_connections(&relay, 0.0);
    health.check(&relay, "max connections per client", RSS_SLACK_KIB);
}

#[test]
fn max_header_count_answers_431() {
    let relay = fault_relay(&["--max-header-count", "10"]);
    let creds = relay.provision(DOMAIN, "s1", &[TSN, PROBE_TSN]);
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    let mut pair = Pair::connect(&relay, DOMAIN, TSN, &creds);
    let before = metric_sum(
        &relay.metrics(),
        "posrelay_handshake_failures_total",
        &[("reason", "headers_too_large")],
    );
    // upgrade_request has 5 header lines of its own.
    let extra: Vec<String> = (0..6).map(|i| format!("X-H{i}: v")).collect();
    let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
    let resp = raw_http(
        relay.relay_addr,
        &upgrade_request(DEVICE_LISTENER, &extra[..5]),
    );
    assert_eq!(resp.status, 101, "10 header lines pass: {}", resp.head);
    let resp = raw_http(relay.relay_addr, &upgrade_request(DEVICE_LISTENER, &extra));
    assert_eq!(resp.status, 431, "11 header lines: {}", resp.head);
    let resp = raw_http(
        relay.relay_addr,
        b"POST /oauth2/v1/acme/token HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\nF: 1\r\nG: 1\r\nH: 1\r\nI: 1\r\nJ: 1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(resp.status, 431, "token endpoint too: {}", resp.head);
    let after = metric_sum(
        &relay.metrics(),
        "posrelay_handshake_failures_total",
        &[("reason", "headers_too_large")],
    );
    assert!(after >= before + 2.0, "counted in /metrics");
    pair.exchange_text("after 431s");
    let resp = raw_http(
        relay.relay_addr,
        &upgrade_request(DEVICE_LISTENER, &extra[..5]),
    );
    assert_eq!(resp.status, 101, "still fine: {}", resp.head);
    drop(pair);
    health.check(&relay, "max header count", RSS_SLACK_KIB);
}

#[test]
fn failed_logins_per_client_answer_429_then_recover() {
    let relay = fault_relay(&["--failed-logins-per-client", "3"]);
    let creds = relay.provision(DOMAIN, "s1", &[TSN, PROBE_TSN]);
    let other = relay.create_client(DOMAIN, Some("s1"));
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    let mut pair = Pair::connect(&relay, DOMAIN, TSN, &creds);
    let before = refused_count(&relay, "login_rate_client");
    for i in 0..3 {
        let (resp, body) = token_request_from(&relay, LOCAL, DOMAIN, &creds.client_id, "wrong");
        assert_eq!(resp.status, 401, "failure {i}: {body}");
    }
    // The client id is locked for the rest of the minute — even with the right secret.
    let (resp, body) = token_request_from(&relay, LOCAL, DOMAIN, &creds.client_id, "wrong");
    assert_refusal(&resp, 429, 60, "4th try");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert!(
        v["error"].is_string(),
        "an RFC 6749 §5.2 shaped body: {body}"
    );
    let (resp, _) = token_request_from(
        &relay,
        LOCAL,
        DOMAIN,
        &creds.client_id,
        &creds.client_secret,
    );
    let retry = assert_refusal(&resp, 429, 60, "right secret while locked");
    // Registration with the locked client's credentials: invalid_client + 1008.
    let (reply, code) = register_raw(
        &relay,
        &json!({"type": "register", "tsn": TSN, "client_id": creds.client_id, "client_secret": creds.client_secret}).to_string(),
    );
    assert_error(&reply, None, "invalid_client");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("too many failed attempts"),
        "{reply}"
    );
    assert_eq!(code, 1008);
    assert!(
        refused_count(&relay, "login_rate_client") >= before + 3.0,
        "counted in /metrics"
    );
    // Another client from the same address, and the locked client's live pair, go on.
    let _ = relay.token(DOMAIN, &other);
    pair.exchange_text("while the client id is locked");
    // After Retry-After, the right secret works again.
    login_after_retry_after(&relay, LOCAL, &creds, retry, "failed logins per client");
    drop(pair);
    health.check(&relay, "failed logins per client", RSS_SLACK_KIB);
}

#[test]
fn failed_logins_per_address_answer_429_then_recover() {
    let relay = fault_relay(&["--failed-logins-per-address", "5"]);
    let creds = relay.provision(DOMAIN, "s1", &[TSN, PROBE_TSN]);
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    let mut pair = Pair::connect(&relay, DOMAIN, TSN, &creds);
    let attacker: IpAddr = "127.0.0.7".parse().unwrap();
    let before = refused_count(&relay, "login_rate_address");
    // Five different made-up client ids: no client id is locked, the address is.
    for i in 0..5 {
        let (resp, body) =
            token_request_from(&relay, attacker, DOMAIN, &format!("made-up-{i}"), "x");
        assert_eq!(resp.status, 401, "failure {i}: {body}");
    }
    let (resp, _) = token_request_from(
        &relay,
        attacker,
        DOMAIN,
        &creds.client_id,
        &creds.client_secret,
    );
    let retry = assert_refusal(&resp, 429, 60, "valid credentials from the locked address");
    let (reply, code) = register_from(
        &relay,
        attacker,
        TSN,
        &creds.client_id,
        &creds.client_secret,
    );
    assert_error(&reply, None, "invalid_client");
    assert_eq!(code, 1008);
    assert!(
        refused_count(&relay, "login_rate_address") >= before + 2.0,
        "counted in /metrics"
    );
    // Other addresses are unaffected, and so is the live pair.
    let (resp, body) = token_request_from(
        &relay,
        LOCAL,
        DOMAIN,
        &creds.client_id,
        &creds.client_secret,
    );
    assert_eq!(resp.status, 200, "another address: {body}");
    pair.exchange_text("while an address is locked");
    login_after_retry_after(&relay, attacker, &creds, retry, "failed logins per address");
    drop(pair);
    health.check(&relay, "failed logins per address", RSS_SLACK_KIB);
}
