//! Fault suite, the relay itself (issue "Faults, drain and hostile input"): SIGTERM during
//! a busy exchange, SIGINT, a second signal, and `kill -9` with restarts.
//!
//! Drain (PROTOCOL.md §6): the relay stops accepting, closes every connection with 1001,
//! forwards what it holds or reports it `undelivered` before the control channel's 1001,
//! and exits 0 within the drain timeout; a second signal exits at once. Counted exactly:
//! for every POS → device stream, frames the device read + frames reported = frames the
//! POS wrote before it saw the 1001.
//! Crash (§6, §9): provisioning, client secrets and the signing key survive `kill -9`;
//! devices register again, POS claim again with their old access tokens.
//! Each case ends with a fresh pair completing an exchange (after a restart where the
//! relay exited).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::Message;

const DOMAIN: &str = "acme";
const STALLED: &str = "44440001";
const BUSY: &str = "44440002";
const UPSTREAM: &str = "44440003";
const AWAY: &str = "44440004";
const DRAIN_S: u64 = 5;

/// Control events until the channel's close: `undelivered` frames per tsn, the close code.
fn reports_then_close(pos: &mut Pos) -> (BTreeMap<String, u64>, u16) {
    let mut per_tsn = BTreeMap::new();
    let (events, code) = drain_until_close(&mut pos.ws);
    for m in events {
        let Message::Text(t) = m else {
            panic!("control channel got {}", show(&m))
        };
        let ev: Value = serde_json::from_str(&t).expect("JSON event");
        match ev["type"].as_str() {
            Some("undelivered") => {
                *per_tsn
                    .entry(ev["tsn"].as_str().unwrap().to_string())
                    .or_insert(0) += ev["frames"].as_u64().unwrap()
            }
            Some("device_status") => {}
            _ => panic!("unexpected control event before 1001: {ev}"),
        }
    }
    (per_tsn, code)
}

#[test]
fn sigterm_during_a_busy_exchange_delivers_or_reports_everything_then_exits_0() {
    let mut relay = fault_relay(&["--drain-timeout", "5s"]);
    let creds = relay.provision(DOMAIN, "s1", &[STALLED, BUSY, UPSTREAM, AWAY, PROBE_TSN]);
    probe_exchange(&relay, DOMAIN, &creds);
    let token = relay.token(DOMAIN, &creds);
    let mut pos = Pos::control(&relay, &token);

    // AWAY: the device is offline; 5 frames wait in its offline queue (§6).
    let mut away = Device::register_and_connect(&relay, AWAY, &creds);
    let (_, url) = pos.claim_ok(AWAY);
    let mut away_session = Pos::session(&relay, &url, &token);
    close_and_wait(&mut away.ws, 1000);
    assert_eq!(
        pos.next_event(),
        json!({"type": "device_status", "tsn": AWAY, "online": false})
    );
    const AWAY_SENT: u64 = 5;
    for i in 0..AWAY_SENT {
        send_text(&mut away_session, &format!("queued {i}"));
    }

    // STALLED: the device does not read; the POS has written 1 MiB to it.
    let reg = register(&relay, STALLED, &creds);
    let mut stalled = RawWs::open(&relay, &reg.connection_url, Some(&reg.token));
    let (_, url) = pos.claim_ok(STALLED);
    let mut stalled_session = Pos::session(&relay, &url, &token);
    let big = SeqFrames::new(16 * 1024);
    const STALLED_SENT: u64 = 64;
    for seq in 0..STALLED_SENT {
        send_binary(&mut stalled_session, &big.make(seq));
    }

    // UPSTREAM: the device has sent 50 frames that its POS session has not read yet.
    let mut up_device = Device::register_and_connect(&relay, UPSTREAM, &creds);
    let (_, url) = pos.claim_ok(UPSTREAM);
    let mut up_session = Pos::session(&relay, &url, &token);
    let up = SeqFrames::new(1024);
    const UP_SENT: u64 = 50;
    for seq in 0..UP_SENT {
        up_device.send_binary(&up.make(seq));
    }

    // BUSY: a POS and a device exchanging as fast as they can (device echoes).
    let mut busy_device = Device::register_and_connect(&relay, BUSY, &creds);
    let (_, url) = pos.claim_ok(BUSY);
    let mut busy_session = Pos::session(&relay, &url, &token);
    let small = SeqFrames::new(256);
    let echo = {
        let small = small.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                match busy_device.ws.read() {
                    Ok(Message::Binary(b)) => {
                        got.push(small.check(&b));
                        let _ = busy_device.ws.send(Message::Binary(b));
                    }
                    Ok(Message::Close(f)) => {
                        let code = f.map(|f| u16::from(f.code));
                        let _ = busy_device.ws.flush();
                        return (got, code);
                    }
                    Ok(_) => {}
                    Err(e) => panic!("busy device: {e}"),
                }
            }
        })
    };
    let busy_pos = {
        let small = small.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            let mut echoed = 0u64;
            loop {
                if busy_session
                    .send(Message::Binary(small.make(sent)))
                    .is_err()
                {
                    return (sent, echoed, None, false);
                }
                sent += 1;
                match busy_session.read() {
                    Ok(Message::Binary(b)) => {
                        assert_eq!(small.check(&b), echoed, "echoes in order");
                        echoed += 1;
                    }
                    Ok(Message::Close(f)) => {
                        // Before answering the close: was everything this POS wrote
                        // acknowledged by the relay's TCP (not reset)?
                        let tcp = tcp_of(&mut busy_session);
                        let acked = wait_for(Duration::from_secs(2), || {
                            (unacked_bytes(tcp) == 0).then_some(())
                        })
                        .is_some();
                        let _ = busy_session.flush();
                        return (sent, echoed, f.map(|f| u16::from(f.code)), acked);
                    }
                    Ok(other) => panic!("busy POS got {}", show(&other)),
                    Err(e) => panic!("busy POS read: {e}"),
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    let signalled = Instant::now();
    relay.signal(libc::SIGTERM);

    // §6: reports before the 1001 on the control channel.
    let (reports, control_code) = reports_then_close(&mut pos);
    assert_eq!(control_code, 1001, "§8: relay shutting down");
    // The stalled device starts reading only now: what it finds + what was reported.
    let bytes = stalled.read_to_end(Duration::from_secs(DRAIN_S + 5), || {});
    let (frames, left) = parse_frames(&bytes);
    let data: Vec<u64> = frames
        .iter()
        .filter(|f| f.opcode == op::BINARY)
        .map(|f| big.check(&f.payload))
        .collect();
    let stalled_close = frames.iter().find_map(|f| f.close_code());
    let stalled_reported = reports.get(STALLED).copied().unwrap_or(0);
    // The upstream POS session reads only now: every device frame, then 1001.
    let (msgs, up_code) = drain_until_close(&mut up_session);
    let up_got: Vec<u64> = msgs
        .iter()
        .map(|m| match m {
            Message::Binary(b) => up.check(b),
            other => panic!("upstream POS got {}", show(other)),
        })
        .collect();
    let (busy_sent, busy_echoed, busy_pos_code, busy_acked) = busy_pos.join().expect("busy POS");
    let (busy_got, busy_device_code) = echo.join().expect("busy device");
    let busy_reported = reports.get(BUSY).copied().unwrap_or(0);
    let away_reported = reports.get(AWAY).copied().unwrap_or(0);
    assert_eq!(expect_close(&mut away_session), 1001);
    let status = relay.wait_exit(Duration::from_secs(DRAIN_S + 10));
    let took = signalled.elapsed();
    eprintln!(
        "SIGTERM drain: exit {status:?} after {took:?}; stalled stream: {} of {STALLED_SENT} \
         read after the signal, {stalled_reported} reported, close {stalled_close:?}; \
         upstream: {} of {UP_SENT} delivered, close {up_code}; busy pair: POS sent \
         {busy_sent} (all TCP-acknowledged: {busy_acked}), device got {}, {busy_reported} \
         reported, {busy_echoed} echoes back; \
         offline queue: {away_reported} of {AWAY_SENT} reported",
        data.len(),
        up_got.len(),
        busy_got.len()
    );
    assert_eq!(
        away_reported, AWAY_SENT,
        "§6: the offline queue is reported before the 1001"
    );
    assert_eq!(
        left, 0,
        "no partial frame left in the stalled device's buffer"
    );
    assert_eq!(
        data,
        (0..data.len() as u64).collect::<Vec<_>>(),
        "stalled stream in order"
    );
    assert_eq!(
        data.len() as u64 + stalled_reported,
        STALLED_SENT,
        "§6: what is queued is delivered or reported"
    );
    assert_eq!(
        stalled_close,
        Some(1001),
        "§6: the stalled device is told 1001"
    );
    assert_eq!(
        up_got,
        (0..UP_SENT).collect::<Vec<_>>(),
        "§6: device frames the relay held are flushed to the POS"
    );
    assert_eq!(up_code, 1001);
    assert_eq!(
        busy_got,
        (0..busy_got.len() as u64).collect::<Vec<_>>(),
        "busy stream in order"
    );
    assert!(
        busy_acked,
        "the relay's TCP acknowledged every frame the busy POS wrote"
    );
    assert_eq!(
        busy_got.len() as u64 + busy_reported,
        busy_sent,
        "§6: every frame the busy POS wrote (and the relay's TCP acknowledged) is delivered \
         or reported, also one that crossed the relay's 1001"
    );
    assert_eq!(busy_pos_code, Some(1001), "busy POS session told 1001");
    assert_eq!(busy_device_code, Some(1001), "busy device told 1001");
    assert!(
        busy_sent > 10,
        "the pair was busy ({busy_sent} round trips)"
    );
    assert_eq!(status.code(), Some(0), "§6: exit status 0 after draining");
    assert!(
        took < Duration::from_secs(DRAIN_S + 3),
        "§6: exits within the drain timeout ({took:?})"
    );
    drop((stalled_session, up_device, stalled));

    relay.restart_same_data_dir();
    probe_exchange(&relay, DOMAIN, &creds);
}

/// Whether a fresh connection on the relay listener is refused, reset or closed without
/// ever being upgraded.
fn not_accepting(relay: &Relay) -> bool {
    let Ok(mut s) = TcpStream::connect(relay.relay_addr) else {
        return true;
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = std::io::Write::write_all(&mut s, &upgrade_request(DEVICE_LISTENER, &[]));
    let mut buf = [0u8; 64];
    match std::io::Read::read(&mut s, &mut buf) {
        Ok(0) | Err(_) => true,
        Ok(n) => !String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"),
    }
}

#[test]
fn a_second_signal_exits_at_once_and_a_draining_relay_accepts_nothing() {
    let mut relay = fault_relay(&["--drain-timeout", "60s"]);
    let creds = relay.provision(DOMAIN, "s1", &[STALLED, PROBE_TSN]);
    let token = relay.token(DOMAIN, &creds);
    let mut pos = Pos::control(&relay, &token);
    let reg = register(&relay, STALLED, &creds);
    let stalled = RawWs::open(&relay, &reg.connection_url, Some(&reg.token));
    socket2::SockRef::from(&stalled.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    let (_, url) = pos.claim_ok(STALLED);
    let mut session = Pos::session(&relay, &url, &token);
    set_write_timeout(&mut session, Some(Duration::from_secs(1)));
    // Fill every buffer towards the stalled device, so the drain cannot finish.
    let big = SeqFrames::new(64 * 1024);
    for seq in 0..200 {
        if session.send(Message::Binary(big.make(seq))).is_err() {
            break;
        }
    }
    relay.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        not_accepting(&relay),
        "§6: a draining relay stops accepting"
    );
    assert!(
        !relay.has_exited(),
        "the relay should still be draining towards the stalled device"
    );
    let second = Instant::now();
    relay.signal(libc::SIGINT);
    let status = relay.wait_exit(Duration::from_secs(5));
    eprintln!(
        "second signal: exit {status:?} {:?} after it",
        second.elapsed()
    );
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "§6: a second signal exits at once"
    );
    assert_eq!(
        status.code(),
        Some(1),
        "a cut-short drain exits with status 1"
    );
    drop((pos, session, stalled));
    relay.restart_same_data_dir();
    probe_exchange(&relay, DOMAIN, &creds);
}

#[test]
fn sigint_drains_like_sigterm() {
    let mut relay = fault_relay(&["--drain-timeout", "5s"]);
    let creds = relay.provision(DOMAIN, "s1", &[BUSY, PROBE_TSN]);
    let mut pair = Pair::connect(&relay, DOMAIN, BUSY, &creds);
    send_text(&mut pair.session, "before SIGINT");
    relay.signal(libc::SIGINT);
    let (got, code) = drain_until_close(&mut pair.device.ws);
    assert_eq!(got, vec![Message::Text("before SIGINT".into())]);
    assert_eq!(code, 1001, "§6: SIGINT closes with 1001 as SIGTERM does");
    assert_eq!(expect_close(&mut pair.session), 1001);
    // Devices close before control channels (so that every report reaches them first):
    // the control channel may hear its device go offline before its own 1001 (§4).
    let (events, code) = drain_until_close(&mut pair.pos.ws);
    assert_eq!(code, 1001);
    for event in &events {
        match event {
            Message::Text(t) => {
                assert!(t.contains("\"type\":\"device_status\""), "before 1001: {t}")
            }
            other => panic!("before 1001: {other:?}"),
        }
    }
    let status = relay.wait_exit(Duration::from_secs(DRAIN_S + 10));
    assert_eq!(status.code(), Some(0));
    drop(pair);
    relay.restart_same_data_dir();
    probe_exchange(&relay, DOMAIN, &creds);
}

/// Whether the connection under `ws` has ended (EOF, reset or any error but a timeout).
fn dead(ws: &mut Ws) -> bool {
    set_read_timeout(ws, Some(Duration::from_secs(5)));
    match ws.read() {
        Ok(Message::Close(_)) => true,
        Ok(_) => false,
        Err(tungstenite::Error::Io(e)) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        Err(_) => true,
    }
}

#[test]
fn kill_9_and_restart_keeps_provisioning_and_everyone_comes_back() {
    let mut relay = fault_relay(&[]);
    let creds = relay.provision(DOMAIN, "s1", &[BUSY, STALLED, PROBE_TSN]);
    let other = relay.create_client(DOMAIN, None);
    let deleted = relay.create_client(DOMAIN, Some("s1"));
    relay.delete_client(DOMAIN, &deleted.client_id);
    relay.set_device_enabled(DOMAIN, STALLED, false);
    let token = relay.token(DOMAIN, &creds);
    let mut pair = Pair::connect(&relay, DOMAIN, BUSY, &creds);
    let old_session = pair.session_id.clone();
    let old_device_token = pair.device.reg.token.clone();
    let devices_before = relay.admin_devices(DOMAIN);

    const CYCLES: usize = 3;
    let mut burst = Vec::new();
    for cycle in 0..CYCLES {
        // Admin writes answered just before the crash are durable (§9).
        for i in 0..10 {
            let tsn = format!("5555{cycle:02}{i:02}");
            relay.create_device(DOMAIN, &tsn, "s1");
            burst.push(tsn);
        }
        send_text(&mut pair.session, &format!("before crash {cycle}"));
        match pair.device.recv() {
            Message::Text(t) => assert_eq!(t, format!("before crash {cycle}")),
            other => panic!("device got {}", show(&other)),
        }
        relay.kill_9();
        assert!(
            dead(&mut pair.device.ws),
            "the device sees its connection die"
        );
        assert!(dead(&mut pair.session), "the POS session dies");
        assert!(dead(&mut pair.pos.ws), "the control channel dies");
        relay.restart_same_data_dir();

        // §6: provisioning survives; sessions do not.
        let devices = relay.admin_devices(DOMAIN);
        let tsns: Vec<&str> = devices.iter().map(|d| d["tsn"].as_str().unwrap()).collect();
        for tsn in &burst {
            assert!(
                tsns.contains(&tsn.as_str()),
                "{tsn} created before the crash survives"
            );
        }
        for d in &devices_before {
            let now = devices
                .iter()
                .find(|x| x["tsn"] == d["tsn"])
                .expect("device survives");
            assert_eq!(now["store"], d["store"]);
            assert_eq!(now["enabled"], d["enabled"], "{}", d["tsn"]);
            assert_eq!(now["online"], false, "nobody is online after a restart");
        }
        // The device's old session is gone (§8: 404 unknown session).
        let old_url = relay.ws_url(&format!(
            "/cloud-connector/v1/device-connection/{old_session}"
        ));
        let auth = format!("Bearer {old_device_token}");
        assert_eq!(
            relay.ws_status(&old_url, &[("Authorization", &auth)]),
            404,
            "§6: sessions are in memory"
        );
        // The old access token is still valid (the signing key survives); the deleted
        // client stays deleted; the disabled device stays disabled.
        let mut pos = Pos::control(&relay, &token);
        assert_eq!(
            pos.claim(BUSY)["code"],
            "offline",
            "claims wait for a registration"
        );
        let device = Device::register_and_connect(&relay, BUSY, &creds);
        let (session_id, url) = pos.claim_ok(BUSY);
        let session = Pos::session(&relay, &url, &token);
        let basic = basic_auth(&deleted.client_id, &deleted.client_secret);
        relay
            .token_request(
                DOMAIN,
                &[("Authorization", &basic)],
                "grant_type=client_credentials",
            )
            .expect_status(401, "a deleted client stays deleted");
        let (reply, code) = register_raw(
            &relay,
            &json!({"type": "register", "tsn": STALLED, "client_id": creds.client_id, "client_secret": creds.client_secret}).to_string(),
        );
        assert_eq!(reply["code"], "device_disabled", "{reply}");
        assert_eq!(code, 1008);
        let _ = relay.token(DOMAIN, &other);
        pair = Pair {
            device,
            pos,
            session,
            token: token.clone(),
            session_id,
            session_url: url,
        };
        send_text(&mut pair.session, &format!("after restart {cycle}"));
        match pair.device.recv() {
            Message::Text(t) => assert_eq!(t, format!("after restart {cycle}")),
            other => panic!("device got {}", show(&other)),
        }
        pair.device.send_binary(b"back");
        match recv(&mut pair.session) {
            Message::Binary(b) => assert_eq!(b, b"back"),
            other => panic!("POS got {}", show(&other)),
        }
    }
    eprintln!(
        "kill -9: {CYCLES} crash/restart cycles, {} devices created right before crashes all survived",
        burst.len()
    );
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    drop(pair);
    health.check(&relay, "after kill -9 restarts", RSS_SLACK_KIB);
}
