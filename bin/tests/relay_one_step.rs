//! Issue 11, PROTOCOL.md §5a on the real binary: `GET /cloud-connector/v1/devices/{tsn}/session`
//! claims and opens the session in one upgrade (Bearer, Basic or a login message); 404 /
//! 409 / 503 + Retry-After before the upgrade; 4002 with `undelivered frames=N bytes=B`
//! when the client's frames cannot be delivered and it has no control channel open.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use tungstenite::Message;

const TSN: &str = "12345678";

fn one_step(tsn: &str) -> String {
    format!("/cloud-connector/v1/devices/{tsn}/session")
}

/// A §5a session (Basic credentials, no control channel) for a device that then went
/// away: what the session sends now waits in the device's queue.
fn one_step_session_of_a_device_gone(relay: &Relay) -> Ws {
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut device = Device::register_and_connect(relay, TSN, &creds);
    let auth = basic_auth(&creds.client_id, &creds.client_secret);
    let session = relay.ws(&relay.ws_url(&one_step(TSN)), &[("Authorization", &auth)]);
    device.ws.close(None).unwrap();
    let _ = expect_close(&mut device.ws);
    session
}

/// A device that echoes every message, until its connection ends.
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

#[test]
fn seed_003_pos_claims_and_opens_its_session_in_one_step_with_basic_credentials() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let _device = echo_device(&relay, TSN, &creds);
    // Seed 003's client as written, on §5a's URL with the fully qualified tsn.
    let url = relay.ws_url(&one_step(&format!("ingenico-axium-{TSN}")));
    let client = SeedClient::start(
        "seed003_server_pos.py",
        &[
            "--url",
            &url,
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
    let replies: Vec<_> = events.iter().filter(|e| e["event"] == "reply").collect();
    assert_eq!(replies.len(), 5, "{events:?}");
    assert!(replies.iter().all(|r| r["matches"] == true), "{events:?}");
    assert_eq!(events.last().unwrap()["code"], 1000, "{events:?}");
    // The claim is the client's (§4's claim): the admin API and §10 say so.
    let devices = relay.admin_devices("acme");
    assert_eq!(devices[0]["claimed_by"], creds.client_id.as_str());
    let auth = basic_auth(&creds.client_id, &creds.client_secret);
    let one = relay.http(
        "GET",
        &relay.http_url(&format!("/cloud-connector/v1/devices/{TSN}")),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(one.json()["claim"], "yours", "{}", one.body);
}

#[test]
fn refusals_before_the_upgrade_are_404_409_and_503_with_retry_after() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN, "22222222", "33333333"]);
    let other = relay.create_client("acme", Some("s1"));
    relay.create_domain("globex");
    relay.create_store("globex", "g1", "m1");
    relay.create_device("globex", "44444444", "g1");
    let _device = Device::register_and_connect(&relay, TSN, &creds);
    let _disabled = register(&relay, "33333333", &creds);
    relay.set_device_enabled("acme", "33333333", false);
    let token = relay.token("acme", &creds);
    let bearer = format!("Bearer {token}");
    let status = |tsn: &str| {
        let resp = relay.ws_connect(&relay.ws_url(&one_step(tsn)), &[("Authorization", &bearer)]);
        match resp {
            Ok((_, r)) => (r.status().as_u16(), None),
            Err(tungstenite::Error::Http(r)) => (
                r.status().as_u16(),
                r.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned()),
            ),
            Err(e) => panic!("{tsn}: {e}"),
        }
    };
    for tsn in ["44444444", "99999999", "verifone-x-12345678", "not-a/tsn"] {
        assert_eq!(status(tsn).0, 404, "{tsn}: not in scope");
    }
    let (code, retry) = status("22222222");
    assert_eq!(
        (code, retry.as_deref()),
        (503, Some("5")),
        "never registered: §4 offline"
    );
    assert_eq!(status("33333333").0, 503, "disabled");
    // Another client holds the claim: 409; the holder gets in (idempotent).
    let mut holder = Pos::control(&relay, &relay.token("acme", &other));
    holder.claim_ok(TSN);
    assert_eq!(status(TSN).0, 409);
    let other_auth = basic_auth(&other.client_id, &other.client_secret);
    let (mut first, _) = relay
        .ws_connect(
            &relay.ws_url(&one_step(TSN)),
            &[("Authorization", &other_auth)],
        )
        .expect("the holder claims again");
    // A second one-step session of the holder replaces the first (§5: 4000).
    let (_second, _) = relay
        .ws_connect(
            &relay.ws_url(&one_step(TSN)),
            &[("Authorization", &other_auth)],
        )
        .expect("again");
    assert_eq!(expect_close(&mut first), 4000);
}

#[test]
fn undeliverable_frames_without_a_control_channel_close_the_session_with_4002() {
    let relay = Relay::start(&["--offline-queue-bytes", "1000"]);
    // The device goes away: what the POS sends now waits in the queue (1000 bytes).
    let mut session = one_step_session_of_a_device_gone(&relay);
    send_text(&mut session, &"a".repeat(600));
    send_text(&mut session, &"b".repeat(700));
    // The second does not fit: no control channel to tell, so 4002 with the count.
    let (code, reason) = loop {
        match session.read() {
            Ok(Message::Close(Some(f))) => break (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert_eq!(code, 4002);
    assert_eq!(reason, "undelivered frames=1 bytes=700");
}

#[test]
fn with_a_control_channel_open_the_report_goes_there_and_the_session_stays() {
    let relay = Relay::start(&["--offline-queue-bytes", "1000"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut device = Device::register_and_connect(&relay, TSN, &creds);
    let token = relay.token("acme", &creds);
    let mut pos = Pos::control(&relay, &token);
    // The control channel is known on every shard before the frames go out: a devices
    // round trip after its presence was announced.
    pos.devices();
    let mut session = relay.ws(
        &relay.ws_url(&one_step(TSN)),
        &[("Authorization", &format!("Bearer {token}"))],
    );
    device.ws.close(None).unwrap();
    let _ = expect_close(&mut device.ws);
    drop(device);
    let status = pos.next_event();
    assert_eq!(status["type"], "device_status", "{status}");
    send_text(&mut session, &"b".repeat(1200));
    let (frames, bytes) = collect_undelivered(&mut pos, TSN, 1, Duration::from_secs(5));
    assert_eq!((frames, bytes), (1, 1200));
    // The session is still open: another frame is queued and delivered later.
    send_text(&mut session, "still here");
    let mut device = Device::register_and_connect(&relay, TSN, &creds);
    match device.recv() {
        Message::Text(t) => assert_eq!(t, "still here"),
        other => panic!("{}", show(&other)),
    }
}

#[test]
fn a_one_step_login_by_message_is_told_a_denial_in_band() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN, "22222222"]);
    let _device = echo_device(&relay, TSN, &creds);
    let token = relay.token("acme", &creds);
    // Logged in by its first message, claimed and relaying.
    let mut ws = relay.ws(&relay.ws_url(&one_step(TSN)), &[]);
    send_json(&mut ws, &json!({"type": "login", "token": token}));
    send_text(&mut ws, "after the login");
    assert_eq!(recv_json(&mut ws)["type"], "logged_in");
    match recv(&mut ws) {
        Message::Text(t) => assert_eq!(t, "after the login"),
        other => panic!("{}", show(&other)),
    }
    // Each refusal the upgrade would have answered is told in band, then 1008 (§7b): a
    // device without a session (503: offline), one out of scope (404: not_found), one
    // another client holds (409: device_busy).
    let other = relay.create_client("acme", Some("s1"));
    let other_token = relay.token("acme", &other);
    for (tsn, token, code) in [
        ("22222222", &token, "offline"),
        ("99999999", &token, "not_found"),
        (TSN, &other_token, "device_busy"),
    ] {
        let mut ws = relay.ws(&relay.ws_url(&one_step(tsn)), &[]);
        send_json(&mut ws, &json!({"type": "login", "token": token}));
        let error = recv_json(&mut ws);
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("error"), Some(code)),
            "{tsn}: {error}"
        );
        assert_eq!(expect_close(&mut ws), 1008, "{tsn}");
    }
}

#[test]
fn a_one_step_claim_ends_with_a_release_or_after_the_claim_grace() {
    let relay = Relay::start(&["--claim-grace", "1s"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let other = relay.create_client("acme", Some("s1"));
    let _device = echo_device(&relay, TSN, &creds);
    let auth = basic_auth(&creds.client_id, &creds.client_secret);
    let other_auth = basic_auth(&other.client_id, &other.client_secret);
    let url = relay.ws_url(&one_step(TSN));
    // §5a: "it ends with a release on a control channel": the session is closed (4001)
    // and the device is free for another client.
    let mut session = relay.ws(&url, &[("Authorization", &auth)]);
    let mut control =
        Pos::control_from(relay.ws(&relay.ws_url(POS_LISTENER), &[("Authorization", &auth)]));
    assert_eq!(control.release(TSN)["type"], "released");
    let (_, code) = drain_until_close(&mut session);
    assert_eq!(code, 4001, "claim released");
    drop(control);
    let mut taken = relay.ws(&url, &[("Authorization", &other_auth)]);
    assert_eq!(
        relay.ws_status(&url, &[("Authorization", &auth)]),
        409,
        "now the other client's"
    );
    // "...or when the client's control channels and session stay closed for the claim
    // grace period": the other client goes away, and after the grace the device is free.
    taken.close(None).unwrap();
    let _ = drain_until_close(&mut taken);
    let freed = wait_for(Duration::from_secs(10), || {
        match relay.ws_connect(&url, &[("Authorization", &auth)]) {
            Ok((ws, _)) => Some(ws),
            Err(tungstenite::Error::Http(r)) if r.status() == 409 => None,
            Err(e) => panic!("{}", describe_ws_error(&e)),
        }
    });
    assert!(freed.is_some(), "the claim ended after --claim-grace");
}

#[test]
fn frames_that_outlive_the_offline_grace_without_a_control_channel_close_the_session_with_4002() {
    // §6: "Frames that cannot be delivered — queue full, grace expired, …"; §5a: with no
    // control channel open, the session is closed with 4002 and the count.
    let relay = Relay::start(&["--offline-grace", "1s"]);
    let mut session = one_step_session_of_a_device_gone(&relay);
    send_text(&mut session, "héllo");
    send_binary(&mut session, &[0u8; 10]);
    set_read_timeout(&mut session, Some(Duration::from_secs(15)));
    let (code, reason) = loop {
        match session.read() {
            Ok(Message::Close(Some(f))) => break (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert_eq!(code, 4002);
    assert_eq!(
        reason, "undelivered frames=2 bytes=16",
        "UTF-8 bytes of the text"
    );
}

#[test]
fn at_shutdown_queued_frames_without_a_control_channel_close_the_session_with_4002() {
    // §6: shutdown "forwards or reports what is queued"; "A frame is either delivered or
    // reported: never dropped in silence". A §5a client has no control channel to hear
    // `undelivered` on, so its session's close carries the count (4002), not a bare 1001.
    let mut relay = Relay::start(&[]);
    let mut session = one_step_session_of_a_device_gone(&relay);
    send_text(&mut session, "queued");
    // The relay has read the frame once it answers a ping sent after it (in order).
    session.send(Message::Ping(b"after".to_vec())).unwrap();
    loop {
        match session.read() {
            Ok(Message::Pong(p)) if p.as_slice() == b"after" => break,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected the pong, got {other:?}"),
        }
    }
    relay.signal(libc::SIGTERM);
    let (code, reason) = loop {
        match session.read() {
            Ok(Message::Close(Some(f))) => break (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert_eq!(
        (code, reason.as_str()),
        (4002, "undelivered frames=1 bytes=6"),
        "the queued frame is reported in the close"
    );
    assert!(relay.wait_exit(Duration::from_secs(15)).success());
}
