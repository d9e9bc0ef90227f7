//! Issue "relay node": the HTTP side of the relay listener — every §8 status before the
//! upgrade (raw requests, read off the socket), the head timeout, §7 subprotocols and the
//! bearer subprotocol, and §7a URLs.

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};

const TSN: &str = "12345678";

fn header_of(resp: &tungstenite::handshake::client::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
}

#[test]
fn malformed_requests_answer_400() {
    let relay = Relay::start(&[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec()),
        ("header line without a colon", b"GET /cloud-connector/v1/device-listener HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n".to_vec()),
        (
            "upgrade without Sec-WebSocket-Key (RFC 6455 §4.2.1)",
            b"GET /cloud-connector/v1/device-listener HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(),
        ),
        (
            "Sec-WebSocket-Key that is not 16 bytes in base64 (RFC 6455 §4.2.1)",
            b"GET /cloud-connector/v1/device-listener HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(),
        ),
        (
            "upgrade without Host (RFC 6455 §4.2.1, RFC 9112 §3.2)",
            b"GET /cloud-connector/v1/device-listener HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(),
        ),
    ];
    for (what, req) in cases {
        let resp = raw_http(relay.relay_addr, &req);
        assert_eq!(resp.status, 400, "{what}: {}", resp.head);
    }
}

#[test]
fn missing_or_bad_tokens_answer_401_with_a_bearer_challenge() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let reg = register(&relay, TSN, &creds);
    let session_path = format!("/cloud-connector/v1/session/{}", reg.session_id);
    let device_path = format!("/cloud-connector/v1/device-connection/{}", reg.session_id);
    for path in [POS_LISTENER, session_path.as_str(), device_path.as_str()] {
        for extra in [
            vec!["Authorization: Bearer garbage"],
            vec!["Authorization: Basic Zm9vOmJhcg=="],
        ] {
            let resp = raw_http(relay.relay_addr, &upgrade_request(path, &extra));
            assert_eq!(resp.status, 401, "{path} {extra:?}: {}", resp.head);
            let challenge = resp.header("www-authenticate").unwrap_or("");
            assert!(
                challenge.starts_with("Bearer"),
                "{path} {extra:?}: WWW-Authenticate {challenge:?}"
            );
        }
        // §8: "an upgrade with no credentials at all, on an endpoint of §7b, is a login by
        // first message instead" (relay_login.rs tests what follows).
        let resp = raw_http(relay.relay_addr, &upgrade_request(path, &[]));
        assert_eq!(
            resp.status, 101,
            "{path} without credentials: {}",
            resp.head
        );
    }
}

#[test]
fn wrong_holder_answers_403_and_unknown_paths_and_sessions_404() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let other = relay.create_client("acme", Some("s1"));
    let pair = Pair::connect(&relay, "acme", TSN, &creds);
    let other_token = relay.token("acme", &other);
    let session_path = format!("/cloud-connector/v1/session/{}", pair.session_id);

    let resp = raw_http(
        relay.relay_addr,
        &upgrade_request(
            &session_path,
            &[&format!("Authorization: Bearer {other_token}")],
        ),
    );
    assert_eq!(
        resp.status, 403,
        "valid token, not the claim holder: {}",
        resp.head
    );

    let unknown_session = "/cloud-connector/v1/session/ZZZZZZZZZZZZZZZZZZZZZZZZZZZZ";
    let resp = raw_http(
        relay.relay_addr,
        &upgrade_request(
            unknown_session,
            &[&format!("Authorization: Bearer {}", pair.token)],
        ),
    );
    assert_eq!(resp.status, 404, "unknown session: {}", resp.head);

    for path in [
        "/",
        "/nope",
        "/cloud-connector/v1/",
        "/cloud-connector/v2/device-listener",
        "/cloud-connector/v1/device-listener/extra/x",
    ] {
        let resp = raw_http(relay.relay_addr, &upgrade_request(path, &[]));
        assert_eq!(
            resp.status, 404,
            "upgrade to unknown path {path}: {}",
            resp.head
        );
        let resp = raw_http(
            relay.relay_addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert_eq!(resp.status, 404, "GET unknown path {path}: {}", resp.head);
    }
    // The OAuth path with the wrong method is not a success.
    let resp = raw_http(
        relay.relay_addr,
        b"GET /oauth2/v1/acme/token HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        resp.status == 404 || resp.status == 405,
        "GET on the token endpoint: {}",
        resp.head
    );
}

#[test]
fn non_websocket_requests_and_wrong_versions_answer_426() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let token = relay.token("acme", &creds);

    let plain = [
        format!("GET {DEVICE_LISTENER} HTTP/1.1\r\nHost: x\r\n\r\n"),
        format!("GET {POS_LISTENER} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"),
    ];
    for req in plain {
        let resp = raw_http(relay.relay_addr, req.as_bytes());
        assert_eq!(
            resp.status, 426,
            "plain GET on a WebSocket path: {}",
            resp.head
        );
        // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
        let upgrade = resp.header("upgrade").unwrap_or("");
        assert!(
            upgrade.eq_ignore_ascii_case("websocket"),
            "Upgrade header {upgrade:?}"
        );
    }
    for version in ["8", "12", "14"] {
        let req = format!(
            "GET {DEVICE_LISTENER} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
        );
        let resp = raw_http(relay.relay_addr, req.as_bytes());
        assert_eq!(resp.status, 426, "version {version}: {}", resp.head);
        assert_eq!(
            resp.header("sec-websocket-version"),
            Some("13"),
            "RFC 6455 §4.4: {}",
            resp.head
        );
    }
}

#[test]
fn request_heads_over_the_limit_answer_431() {
    let relay = Relay::start(&["--max-header-bytes", "4KiB"]);
    let filler = format!("X-Filler: {}", "a".repeat(5000));
    let resp = raw_http(
        relay.relay_addr,
        &upgrade_request(DEVICE_LISTENER, &[&filler]),
    );
    assert_eq!(resp.status, 431, "{}", resp.head);
    // Many small headers count as well.
    let many: Vec<String> = (0..200)
        .map(|i| format!("X-H{i}: {}", "b".repeat(20)))
        .collect();
    let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
    let resp = raw_http(relay.relay_addr, &upgrade_request(DEVICE_LISTENER, &many));
    assert_eq!(resp.status, 431, "{}", resp.head);
    // A head under the limit is upgraded.
    let small = format!("X-Filler: {}", "a".repeat(2000));
    let resp = raw_http(
        relay.relay_addr,
        &upgrade_request(DEVICE_LISTENER, &[&small]),
    );
    assert_eq!(resp.status, 101, "{}", resp.head);
}

/// Reads until the peer closes; panics if it is still open after 5 s.
fn assert_closed_by_peer(s: &mut std::net::TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue, // an error answer (e.g. 408) may come first
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what}: connection still open ({e})"),
        }
    }
}

#[test]
fn a_request_head_that_never_completes_is_closed_after_the_handshake_timeout() {
    let relay = Relay::start(&["--handshake-timeout", "1s"]);
    let mut partial = raw_connect(relay.relay_addr);
    partial
        .write_all(
            format!("GET {DEVICE_LISTENER} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
                .as_bytes(),
        )
        .unwrap();
    let mut silent = raw_connect(relay.relay_addr);
    assert_closed_by_peer(&mut partial, "a partial head");
    assert_closed_by_peer(&mut silent, "a connection that sends nothing");
}

/// The subprotocol the relay selects for `offer` (raw request, so the exact answer is
/// seen), with the status.
fn selected(relay: &Relay, path: &str, offer: &str, extra: &[&str]) -> (u16, Option<String>) {
    let line = format!("Sec-WebSocket-Protocol: {offer}");
    let mut headers = vec![line.as_str()];
    headers.extend_from_slice(extra);
    let resp = raw_http(relay.relay_addr, &upgrade_request(path, &headers));
    (
        resp.status,
        resp.header("sec-websocket-protocol").map(str::to_string),
    )
}

#[test]
fn application_subprotocols_are_negotiated() {
    let relay = Relay::start(&[]);
    for (offer, want) in [
        ("sci", "sci"),
        ("sci, other", "sci"),
        ("chat, sci", "chat"),
        ("chat,sci", "chat"),
        ("posrelay", "posrelay"),
    ] {
        let got = selected(&relay, DEVICE_LISTENER, offer, &[]);
        assert_eq!(
            got,
            (101, Some(want.to_string())),
            "offer {offer:?}: RFC 6455 §4.2.2 / §7"
        );
    }
    // No offer, no selection (RFC 6455 §4.2.2).
    let resp = raw_http(relay.relay_addr, &upgrade_request(DEVICE_LISTENER, &[]));
    assert_eq!(
        (resp.status, resp.header("sec-websocket-protocol")),
        (101, None)
    );
    // And a real client agrees with the answer (the seed 000 terminal offers `sci`).
    let (_ws, resp) = relay
        .ws_connect(
            &relay.ws_url(DEVICE_LISTENER),
            &[("Sec-WebSocket-Protocol", "sci")],
        )
        .unwrap_or_else(|e| panic!("{}", describe_ws_error(&e)));
    assert_eq!(
        header_of(&resp, "sec-websocket-protocol").as_deref(),
        Some("sci")
    );
}

#[test]
fn the_bearer_subprotocol_authenticates_and_is_never_echoed() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut device = Device::register_and_connect(&relay, TSN, &creds);
    let token = relay.token("acme", &creds);

    // Raw answers first: every place of the bearer entry, with and without spaces.
    for offer in [
        format!("bearer.{token}, posrelay"),
        format!("posrelay, bearer.{token}"),
        format!("bearer.{token},posrelay"),
    ] {
        let line = format!("Sec-WebSocket-Protocol: {offer}");
        let resp = raw_http(relay.relay_addr, &upgrade_request(POS_LISTENER, &[&line]));
        assert_eq!(resp.status, 101, "offer {offer:?}: {}", resp.head);
        assert_eq!(
            resp.header("sec-websocket-protocol"),
            Some("posrelay"),
            "{}",
            resp.head
        );
        assert!(
            !resp.head.contains(&token) && !resp.head.to_ascii_lowercase().contains("bearer."),
            "the bearer entry is echoed: {}",
            resp.head
        );
    }
    // A bad bearer subprotocol is a bad token: 401.
    let (status, _) = selected(&relay, POS_LISTENER, "bearer.garbage, posrelay", &[]);
    assert_eq!(status, 401);

    // Then the whole path with a real client. (tungstenite 0.24 splits the offer on ","
    // without trimming, so its offers are written without spaces.)
    let offer = format!("bearer.{token},posrelay");
    let (ws, resp) = relay
        .ws_connect(
            &relay.ws_url(POS_LISTENER),
            &[("Sec-WebSocket-Protocol", &offer)],
        )
        .unwrap_or_else(|e| {
            panic!(
                "pos-listener with the bearer subprotocol: {}",
                describe_ws_error(&e)
            )
        });
    assert_eq!(
        header_of(&resp, "sec-websocket-protocol").as_deref(),
        Some("posrelay")
    );
    let mut pos = Pos::control_from(ws);
    let (_sid, session_url) = pos.claim_ok(TSN);

    // The session, with an application protocol first and the bearer entry second.
    let offer = format!("sci,bearer.{token}");
    let (mut session, resp) = relay
        .ws_connect(&session_url, &[("Sec-WebSocket-Protocol", &offer)])
        .unwrap_or_else(|e| {
            panic!(
                "session with the bearer subprotocol: {}",
                describe_ws_error(&e)
            )
        });
    assert_eq!(
        header_of(&resp, "sec-websocket-protocol").as_deref(),
        Some("sci")
    );
    send_text(&mut session, "via browser");
    match device.recv() {
        tungstenite::Message::Text(t) => assert_eq!(t, "via browser"),
        other => panic!("{}", show(&other)),
    }
    // The device connection accepts its device token the same way.
    let reg = register(&relay, TSN, &creds);
    let offer = format!("bearer.{},posrelay", reg.token);
    let (_d2, resp) = relay
        .ws_connect(&reg.connection_url, &[("Sec-WebSocket-Protocol", &offer)])
        .unwrap_or_else(|e| {
            panic!(
                "device-connection with the bearer subprotocol: {}",
                describe_ws_error(&e)
            )
        });
    assert_eq!(
        header_of(&resp, "sec-websocket-protocol").as_deref(),
        Some("posrelay")
    );
}

#[test]
fn the_subprotocols_flag_restricts_the_selection() {
    let relay = Relay::start(&["--subprotocols", "sci"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let token = relay.token("acme", &creds);
    for (offer, want) in [
        ("chat, sci", Some("sci")),
        ("sci", Some("sci")),
        ("posrelay", Some("posrelay")),
        ("chat, posrelay", Some("posrelay")),
        // Nothing acceptable: upgraded without selecting one (RFC 6455 §4.2.2).
        ("chat", None),
    ] {
        let got = selected(&relay, DEVICE_LISTENER, offer, &[]);
        assert_eq!(got, (101, want.map(str::to_string)), "offer {offer:?}");
    }
    // The bearer entry still works next to posrelay.
    let got = selected(
        &relay,
        POS_LISTENER,
        &format!("bearer.{token}, posrelay"),
        &[],
    );
    assert_eq!(got, (101, Some("posrelay".to_string())));
}

#[test]
fn urls_are_built_from_the_host_header_without_public_url() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut ws = relay.ws(
        &relay.ws_url(DEVICE_LISTENER),
        &[("Host", "pos.example.test:8443")],
    );
    send_json(
        &mut ws,
        &json!({"type": "register", "tsn": TSN, "client_id": creds.client_id, "client_secret": creds.client_secret}),
    );
    let reply = recv_json(&mut ws);
    let sid = reply["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"))
        .to_string();
    assert_eq!(
        reply["connection_url"],
        format!("ws://pos.example.test:8443/cloud-connector/v1/device-connection/{sid}"),
        "§7a: ws:// and the request's Host"
    );
    let token = relay.token("acme", &creds);
    let auth = format!("Bearer {token}");
    let control = relay.ws(
        &relay.ws_url(POS_LISTENER),
        &[("Authorization", &auth), ("Host", "lane-3.example.test")],
    );
    let mut pos = Pos::control_from(control);
    let claimed = pos.claim(TSN);
    assert_eq!(
        claimed["session_url"],
        format!("ws://lane-3.example.test/cloud-connector/v1/session/{sid}")
    );
}

#[test]
fn urls_use_public_url_when_configured() {
    let relay = Relay::start(&["--public-url", "wss://relay.example.com"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let reg = register(&relay, TSN, &creds);
    assert_eq!(
        reg.connection_url,
        format!(
            "wss://relay.example.com/cloud-connector/v1/device-connection/{}",
            reg.session_id
        )
    );
    let token = relay.token("acme", &creds);
    let mut pos = Pos::control(&relay, &token);
    let claimed = pos.claim(TSN);
    assert_eq!(
        claimed["session_url"],
        format!(
            "wss://relay.example.com/cloud-connector/v1/session/{}",
            reg.session_id
        )
    );
    // The URL's path works on the real listener.
    let path = format!("/cloud-connector/v1/device-connection/{}", reg.session_id);
    let _d = relay.ws_bearer(&relay.ws_url(&path), &reg.token);
}

#[test]
fn serve_refuses_an_admin_listener_on_the_relay_port() {
    // Both listeners bind with SO_REUSEPORT, so the kernel would accept the second bind
    // and split connections between the relay and the admin API: refused at start.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = tempfile::tempdir().unwrap();
    for (relay, admin) in [
        (format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")),
        (format!("0.0.0.0:{port}"), format!("127.0.0.1:{port}")),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_posrelay"))
            .args([
                "serve",
                "--shards",
                "1",
                "--listen",
                &relay,
                "--admin-listen",
                &admin,
            ])
            .arg("--data-dir")
            .arg(data.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run posrelay");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{relay} + {admin}: serve must refuse to start"
        );
        assert!(
            stderr.contains("share a port") && stderr.contains("--admin-listen"),
            "{relay} + {admin}: the error must say what to change; stderr: {stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening on"),
            "{relay} + {admin}: nothing may be announced as listening"
        );
    }
}
