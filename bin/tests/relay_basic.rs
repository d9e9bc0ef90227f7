//! Issue 11, PROTOCOL.md §7c and §10 on the real binary: POS software that puts its client
//! credentials on the upgrade (`Authorization: Basic`, seed 003's clients, run as written
//! in `clients/seed003_server_pos.py`), and the device status over HTTP.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

const TSN: &str = "12345678";
const DEVICES: &str = "/cloud-connector/v1/devices";
/// §5a for `TSN`.
const DEVICES_SESSION: &str = "/cloud-connector/v1/devices/12345678/session";

fn basic(creds: &Creds) -> String {
    basic_auth(&creds.client_id, &creds.client_secret)
}

/// A device that answers every message with the same message (the terminal side of seed
/// 003's heartbeat), until its connection ends.
fn echo_device(relay: &Relay, tsn: &str, creds: &Creds) -> std::thread::JoinHandle<usize> {
    let mut device = Device::register_and_connect(relay, tsn, creds);
    set_read_timeout(&mut device.ws, Some(Duration::from_secs(60)));
    std::thread::spawn(move || {
        let mut echoed = 0;
        loop {
            match device.ws.read() {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                    if device.ws.send(m).is_err() {
                        return echoed;
                    }
                    echoed += 1;
                }
                Ok(Message::Close(_)) | Err(_) => return echoed,
                Ok(_) => {}
            }
        }
    })
}

/// A WebSocket upgrade on `path` from source address `src` with extra headers: the socket,
/// or the refusal's status and headers.
#[allow(clippy::result_large_err)]
fn upgrade_from(
    relay: &Relay,
    src: IpAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tungstenite::http::Response<Option<Vec<u8>>>> {
    let mut request = relay.ws_url(path).into_client_request().unwrap();
    for (k, v) in headers {
        let name = tungstenite::http::header::HeaderName::from_bytes(k.as_bytes()).unwrap();
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(v).unwrap());
    }
    let stream = connect_from(src, relay.relay_addr);
    match tungstenite::client(request, MaybeTlsStream::Plain(stream)) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => Err(resp),
        Err(e) => panic!("upgrade on {path} from {src}: {e}"),
    }
}

/// A §10 `GET` with `headers`: status, headers and JSON body (`Null` when not JSON).
fn status_request(relay: &Relay, path: &str, headers: &[(&str, &str)]) -> HttpResp {
    relay.http("GET", &relay.http_url(path), headers, None)
}

fn assert_bearer_challenge(challenge: Option<&str>, what: &str) {
    let challenge = challenge.unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(
        challenge.starts_with("Bearer"),
        "{what}: §7c never a Basic challenge, got {challenge:?}"
    );
}

#[test]
fn seed_003_pos_runs_its_heartbeats_over_a_session_opened_with_basic_credentials() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let device = echo_device(&relay, TSN, &creds);
    // A control channel opened with Basic credentials claims the device (§4 + §7c).
    let auth = basic(&creds);
    let mut pos =
        Pos::control_from(relay.ws(&relay.ws_url(POS_LISTENER), &[("Authorization", &auth)]));
    let (_, session_url) = pos.claim_ok(TSN);
    // Seed 003's client, as written, on the session URL (§5 + §7c).
    let client = SeedClient::start(
        "seed003_server_pos.py",
        &[
            "--url",
            &session_url,
            &format!("--client-id={}", creds.client_id),
            &format!("--client-secret={}", creds.client_secret),
            "--heartbeats",
            "4",
            "--tokenize",
            "--seconds",
            "30",
        ],
    );
    let (events, status) = client.finish(Duration::from_secs(40));
    assert!(status.success(), "{events:?}");
    assert_eq!(events[0]["event"], "open", "{events:?}");
    assert_eq!(
        events[0]["subprotocol"],
        Value::Null,
        "offered none, selected none"
    );
    let replies: Vec<&Value> = events.iter().filter(|e| e["event"] == "reply").collect();
    assert_eq!(
        replies.len(),
        5,
        "4 heartbeats and a tokenize, each echoed: {events:?}"
    );
    for r in &replies {
        assert_eq!(
            r["matches"], true,
            "the device's answer carries the traceId: {r}"
        );
    }
    assert_eq!(
        events.last().unwrap()["event"],
        "close",
        "it closed the session itself: {events:?}"
    );
    assert_eq!(events.last().unwrap()["code"], 1000);
    let log = relay.stderr_tail(400);
    assert!(
        !log.contains(&creds.client_secret) && !log.contains(auth.trim_start_matches("Basic ")),
        "an accepted Basic secret is never logged either"
    );
    drop(pos);
    drop(relay);
    assert_eq!(device.join().unwrap(), 5, "the device saw every message");
}

#[test]
fn basic_refusals_answer_like_the_token_endpoint_with_a_bearer_challenge() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let wrong = basic_auth(&creds.client_id, "not-the-secret");
    let unknown = basic_auth("no-such-client", &creds.client_secret);
    let sid_path = "/cloud-connector/v1/session/AAAAAAAAAAAAAAAAAAAAAA";
    for path in [POS_LISTENER, sid_path] {
        for (what, header) in [
            ("a wrong secret", wrong.as_str()),
            ("an unknown client", unknown.as_str()),
            ("a malformed Basic header", "Basic !!!not-base64"),
            ("Basic without a colon", "Basic bm9jb2xvbg=="),
        ] {
            let resp = relay.ws_refused(&relay.ws_url(path), &[("Authorization", header)]);
            let what = format!("{what} on {path}");
            assert_eq!(resp.status().as_u16(), 401, "{what}");
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok());
            assert_bearer_challenge(challenge, &what);
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(
                body,
                json!({"error": "invalid_client"}),
                "§1's answer: {what}"
            );
        }
    }
    // Seed 003's client sees the same refusal.
    let client = SeedClient::start(
        "seed003_server_pos.py",
        &[
            "--url",
            &relay.ws_url(POS_LISTENER),
            &format!("--client-id={}", creds.client_id),
            "--client-secret=not-the-secret",
            "--seconds",
            "20",
        ],
    );
    let (events, _) = client.finish(Duration::from_secs(30));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "refused");
    assert_eq!(events[0]["status"], 401);
    assert_bearer_challenge(events[0]["www_authenticate"].as_str(), "seed 003");
    // The secret is never logged (the wrong one included).
    let log = relay.stderr_tail(400);
    assert!(!log.contains(&creds.client_secret) && !log.contains("not-the-secret"));
    for header in [&wrong, &unknown] {
        let encoded = header.trim_start_matches("Basic ");
        assert!(
            !log.contains(encoded),
            "nor the Basic header that carries it"
        );
    }
    assert!(
        log.contains("Basic login refused"),
        "the refusal is logged for the operator"
    );
}

#[test]
fn failed_basic_logins_share_the_address_limit_and_spare_other_addresses() {
    let relay = Relay::start(&["--failed-logins-per-address", "5"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let attacker: IpAddr = "127.0.0.9".parse().unwrap();
    for i in 0..5 {
        let header = basic_auth(&format!("made-up-{i}"), "x");
        let resp = upgrade_from(
            &relay,
            attacker,
            POS_LISTENER,
            &[("Authorization", &header)],
        )
        .expect_err("refused");
        assert_eq!(resp.status().as_u16(), 401, "failure {i}");
    }
    // Past the limit, the right secret from that address is refused with 429 too...
    let resp = upgrade_from(
        &relay,
        attacker,
        POS_LISTENER,
        &[("Authorization", &basic(&creds))],
    )
    .expect_err("throttled");
    assert_eq!(resp.status().as_u16(), 429, "§1 limits on §7c logins");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // ...and so is the token endpoint: one limit for every kind of login.
    let (head, _) = token_request_from(
        &relay,
        attacker,
        "acme",
        &creds.client_id,
        &creds.client_secret,
    );
    assert_eq!(head.status, 429);
    // Another address is served.
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let mut ws = upgrade_from(
        &relay,
        local,
        POS_LISTENER,
        &[("Authorization", &basic(&creds))],
    )
    .unwrap_or_else(|r| panic!("another address: {}", r.status()));
    send_json(&mut ws, &json!({"type": "devices", "request_id": "d"}));
    let answer = recv_json(&mut ws);
    assert_eq!(answer["type"], "devices", "{answer}");
}

#[test]
fn a_connection_opened_with_basic_credentials_never_closes_with_4401() {
    let relay = Relay::start(&["--access-token-ttl", "3s"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let token = relay.token("acme", &creds);
    let mut bearer = Pos::control(&relay, &token);
    let auth = basic(&creds);
    let mut with_basic =
        Pos::control_from(relay.ws(&relay.ws_url(POS_LISTENER), &[("Authorization", &auth)]));
    set_read_timeout(&mut bearer.ws, Some(Duration::from_secs(12)));
    assert_eq!(
        expect_close(&mut bearer.ws),
        4401,
        "the token's connection expires"
    );
    // Past the token's expiry, the Basic connection still answers.
    let devices = with_basic.devices();
    assert_eq!(devices["type"], "devices", "{devices}");
    assert_eq!(devices["devices"][0]["tsn"], TSN);
}

#[test]
fn basic_credentials_work_over_wss() {
    let (relay, cert_path) = Relay::start_tls(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let _device = echo_device(&relay, TSN, &creds);
    let auth = basic(&creds);
    let mut pos =
        Pos::control_from(relay.ws(&relay.ws_url(POS_LISTENER), &[("Authorization", &auth)]));
    let (_, session_url) = pos.claim_ok(TSN);
    assert!(session_url.starts_with("wss://"), "{session_url}");
    // Seed 003's client over wss://, two heartbeats: its events.
    let seed003 = |url: &str| {
        let client = SeedClient::start(
            "seed003_server_pos.py",
            &[
                "--url",
                url,
                "--ca",
                cert_path.to_str().unwrap(),
                &format!("--client-id={}", creds.client_id),
                &format!("--client-secret={}", creds.client_secret),
                "--heartbeats",
                "2",
                "--seconds",
                "30",
            ],
        );
        client.finish(Duration::from_secs(40)).0
    };
    let events = seed003(&session_url);
    let replies = events.iter().filter(|e| e["event"] == "reply").count();
    assert_eq!(replies, 2, "{events:?}");
    assert_eq!(events.last().unwrap()["code"], 1000, "{events:?}");
    // §5a over wss://, as seed 003's client is run in production.
    let events = seed003(&relay.ws_url(&format!("/cloud-connector/v1/devices/{TSN}/session")));
    let replies = events.iter().filter(|e| e["event"] == "reply").count();
    assert_eq!(replies, 2, "one step over wss: {events:?}");
    // §10 over https://.
    let resp = status_request(
        &relay,
        &format!("{DEVICES}/{TSN}"),
        &[("Authorization", &auth)],
    );
    resp.expect_status(200, "§10 over https");
    assert_eq!(resp.json()["claim"], "yours", "{}", resp.body);
}

/// A device's §10 entry from a list answer.
fn entry<'a>(list: &'a Value, tsn: &str) -> &'a Value {
    list["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("no devices array: {list}"))
        .iter()
        .find(|d| d["tsn"] == tsn)
        .unwrap_or_else(|| panic!("{tsn} missing: {list}"))
}

fn seen_at(entry: &Value) -> SystemTime {
    let text = entry["last_seen"]
        .as_str()
        .unwrap_or_else(|| panic!("last_seen is not a string: {entry}"));
    assert!(
        text.ends_with('Z') && text.len() == 20,
        "RFC 3339 UTC to the second: {text}"
    );
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn device_status_over_http_answers_online_last_seen_and_claim_with_bearer_or_basic() {
    let relay = Relay::start(&[]);
    let (online, never, gone) = ("11111111", "22222222", "33333333");
    let creds = relay.provision("acme", "s1", &[online, never, gone]);
    let other = relay.create_client("acme", Some("s1"));
    relay.create_domain("globex");
    relay.create_store("globex", "g1", "m1");
    relay.create_device("globex", "44444444", "g1");

    let _on = Device::register_and_connect(&relay, online, &creds);
    let before = SystemTime::now() - Duration::from_secs(1);
    let mut leaving = Device::register_and_connect(&relay, gone, &creds);
    // `other` claims `gone`; this client claims `online`.
    let mut pos = Pos::control(&relay, &relay.token("acme", &creds));
    pos.claim_ok(online);
    let mut pos2 = Pos::control(&relay, &relay.token("acme", &other));
    pos2.claim_ok(gone);
    leaving.ws.close(None).unwrap();
    let _ = expect_close(&mut leaving.ws);
    // The claim holder hears that the device went offline: its last_seen is set by then.
    let status = pos2.next_event();
    assert_eq!(
        (status["type"].as_str(), status["online"].as_bool()),
        (Some("device_status"), Some(false)),
        "{status}"
    );
    let after = SystemTime::now() + Duration::from_secs(1);

    let token = relay.token("acme", &creds);
    let bearer = format!("Bearer {token}");
    let auth = basic(&creds);
    for (how, header) in [("Bearer", bearer.as_str()), ("Basic", auth.as_str())] {
        let resp = status_request(&relay, DEVICES, &[("Authorization", header)]);
        resp.expect_status(200, how);
        let list = resp.json();
        let tsns: Vec<&str> = list["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["tsn"].as_str().unwrap())
            .collect();
        assert_eq!(
            tsns,
            [online, never, gone],
            "{how}: the client's scope, by tsn"
        );
        let e = entry(&list, online);
        assert_eq!(
            (e["online"].as_bool(), e["claim"].as_str()),
            (Some(true), Some("yours")),
            "{how}: {e}"
        );
        let t = seen_at(e);
        assert!(
            t >= before && t <= SystemTime::now() + Duration::from_secs(1),
            "{how}: online → now: {e}"
        );
        let e = entry(&list, never);
        assert_eq!(
            *e,
            json!({"tsn": never, "online": false, "last_seen": null, "claim": "none"}),
            "{how}"
        );
        let e = entry(&list, gone);
        assert_eq!(
            (e["online"].as_bool(), e["claim"].as_str()),
            (Some(false), Some("other")),
            "{how}: {e}"
        );
        let t = seen_at(e);
        assert!(t >= before && t <= after, "{how}: when it left: {e}");
        // One device, bare or fully qualified.
        for form in [online.to_owned(), format!("ingenico-axium-{online}")] {
            let resp = status_request(
                &relay,
                &format!("{DEVICES}/{form}"),
                &[("Authorization", header)],
            );
            resp.expect_status(200, how);
            let one = resp.json();
            assert_eq!(
                (one["tsn"].as_str(), one["claim"].as_str()),
                (Some(online), Some("yours")),
                "{how}: {one}"
            );
        }
        // Another tenant's device, an unknown one, a wrong make: 404 alike.
        for form in ["44444444", "99999999", "verifone-x-11111111"] {
            let resp = status_request(
                &relay,
                &format!("{DEVICES}/{form}"),
                &[("Authorization", header)],
            );
            resp.expect_status(404, &format!("{how} {form}"));
        }
    }
    // Without credentials, with wrong ones: 401 with a Bearer challenge.
    for headers in [
        vec![],
        vec![("Authorization", "Basic Zm9vOmJhcg==")],
        vec![("Authorization", "Bearer nope")],
    ] {
        let resp = status_request(&relay, DEVICES, &headers);
        resp.expect_status(401, &format!("{headers:?}"));
        assert_bearer_challenge(resp.header("www-authenticate"), &format!("{headers:?}"));
    }
    let resp = relay.http(
        "POST",
        &relay.http_url(DEVICES),
        &[("Authorization", &bearer)],
        Some(""),
    );
    resp.expect_status(405, "POST");
}

#[test]
fn basic_credentials_over_plain_ws_are_refused_from_another_host() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let outside = IpAddr::V4(local_non_loopback_ipv4().expect(
        "this test needs a non-loopback IPv4 interface address (the connection stays on the machine)",
    ));
    let auth = basic(&creds);
    // §7c: "On a plain ws:// listener Basic credentials are accepted only from a loopback
    // peer; elsewhere they answer 401 (use wss://)", the right secret included.
    let resp = upgrade_from(&relay, outside, POS_LISTENER, &[("Authorization", &auth)])
        .expect_err("Basic over ws:// from another host");
    assert_eq!(resp.status().as_u16(), 401, "from {outside}");
    assert_bearer_challenge(
        resp.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        "from another host",
    );
    // §10 alike.
    let request = format!(
        "GET {DEVICES} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    let mut s = connect_from(outside, relay.relay_addr);
    s.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert_eq!(head.status, 401, "§10 from another host: {}", head.head);
    assert_bearer_challenge(head.header("www-authenticate"), "§10 from another host");
    // The same host is served with a token, and the same credentials from loopback.
    let bearer = format!("Bearer {}", relay.token("acme", &creds));
    let mut ws = upgrade_from(&relay, outside, POS_LISTENER, &[("Authorization", &bearer)])
        .unwrap_or_else(|r| panic!("a token from {outside}: {}", r.status()));
    send_json(&mut ws, &json!({"type": "devices", "request_id": "d"}));
    assert_eq!(recv_json(&mut ws)["type"], "devices");
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    upgrade_from(&relay, loopback, POS_LISTENER, &[("Authorization", &auth)])
        .unwrap_or_else(|r| panic!("Basic from loopback: {}", r.status()));
    assert!(
        relay.stderr_tail(400).contains("use wss://"),
        "the operator is told why"
    );
}

#[test]
fn failed_basic_logins_share_the_per_client_limit_with_the_token_endpoint() {
    let relay = Relay::start(&["--failed-logins-per-client", "3"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let other = relay.create_client("acme", Some("s1"));
    let from: IpAddr = "127.0.0.9".parse().unwrap();
    // Two wrong secrets on upgrades, one at the token endpoint: one count (§7c: "the
    // limits are those of the token endpoint").
    for path in [POS_LISTENER, DEVICES_SESSION] {
        let wrong = basic_auth(&creds.client_id, "wrong");
        let resp = upgrade_from(&relay, from, path, &[("Authorization", &wrong)])
            .expect_err("a wrong secret");
        assert_eq!(resp.status().as_u16(), 401, "{path}");
    }
    let (head, _) = token_request_from(&relay, from, "acme", &creds.client_id, "wrong");
    assert_eq!(head.status, 401);
    // Past the per-client limit: the right secret too, on an upgrade and on §10.
    let resp = upgrade_from(
        &relay,
        from,
        POS_LISTENER,
        &[("Authorization", &basic(&creds))],
    )
    .expect_err("locked");
    assert_eq!(resp.status().as_u16(), 429, "--failed-logins-per-client");
    assert!(resp.headers().contains_key("retry-after"));
    let request = format!(
        "GET {DEVICES} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic(&creds)
    );
    let mut s = connect_from(from, relay.relay_addr);
    s.write_all(request.as_bytes()).unwrap();
    assert_eq!(read_head(&mut s).status, 429, "§10 shares it");
    // Another client from that address, and this client from another, are served.
    upgrade_from(
        &relay,
        from,
        POS_LISTENER,
        &[("Authorization", &basic(&other))],
    )
    .unwrap_or_else(|r| panic!("another client: {}", r.status()));
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    upgrade_from(
        &relay,
        local,
        POS_LISTENER,
        &[("Authorization", &basic(&creds))],
    )
    .unwrap_or_else(|r| panic!("another address: {}", r.status()));
}

#[test]
fn basic_credentials_follow_secret_rotation_and_client_deletion() {
    // §7c: "The checks ... are those of the token endpoint": a rotated-out secret works for
    // its grace only, a deleted client not at all, whatever the relay remembered of them.
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let upgrade = |secret: &str| {
        relay.ws_status(
            &relay.ws_url(POS_LISTENER),
            &[("Authorization", &basic_auth(&creds.client_id, secret))],
        )
    };
    assert_eq!(upgrade(&creds.client_secret), 101, "the secret verifies");
    let rotate = |grace: u64| -> String {
        let r = relay.admin(
            "POST",
            &format!("/admin/v1/domains/acme/clients/{}/secret", creds.client_id),
            Some(json!({ "grace_seconds": grace })),
        );
        r.expect_status(200, "rotate");
        r.json()["client_secret"].as_str().unwrap().to_owned()
    };
    let second = rotate(3600);
    assert_eq!(upgrade(&second), 101, "the new secret");
    assert_eq!(
        upgrade(&creds.client_secret),
        101,
        "the old one, within its grace"
    );
    let third = rotate(0);
    assert_eq!(upgrade(&third), 101, "the newest secret");
    assert_eq!(upgrade(&second), 401, "rotated out without grace");
    // A deleted client: refused, and its open Basic connection is closed.
    let mut open = Pos::control_from(relay.ws(
        &relay.ws_url(POS_LISTENER),
        &[("Authorization", &basic_auth(&creds.client_id, &third))],
    ));
    relay.delete_client("acme", &creds.client_id);
    assert_eq!(upgrade(&third), 401, "deleted");
    set_read_timeout(&mut open.ws, Some(Duration::from_secs(10)));
    let (_, code) = drain_until_close(&mut open.ws);
    assert_eq!(code, 1008, "a deleted client's connection is closed");
}
