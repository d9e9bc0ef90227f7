//! Fault suite, load (issue "Faults, drain and hostile input"): connections opened and
//! closed in a loop for 60 s (5,000 of them, paced evenly; `POSRELAY_CHURN_SECS` shortens
//! the run locally, the count scales with it), every fifth one misbehaving, while one pair
//! keeps exchanging.
//!
//! Asserted: every churned connection got the answer its kind calls for (no error); the
//! pair's round trips all came back, in order; afterwards a fresh pair completes an
//! exchange, every connection gauge is back to 0 and relay memory is back near its warm
//! baseline. Recorded (printed, never asserted: timing claims belong in posrelay-bench,
//! and a test that times things fails on a busy machine for no fault of the relay): the
//! churn's pace, the pair's p50/p99/max round trip when quiet and under churn, and their
//! ratio (the issue's "within 3x").

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::Message;

const DOMAIN: &str = "acme";
const PAIR_TSN: &str = "77770000";
const WORKERS: u64 = 8;
const CONNECTIONS_PER_MINUTE: u64 = 5_000;
const QUIET: Duration = Duration::from_secs(10);

fn churn_secs() -> u64 {
    std::env::var("POSRELAY_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

fn worker_tsn(w: u64) -> String {
    format!("7777{:04}", w + 1)
}

/// What every worker needs.
struct Ctx {
    relay_addr: SocketAddr,
    relay: Arc<Relay>,
    creds: Creds,
    token: String,
    /// Per worker: (device connection path, device token), session path.
    device: Vec<(String, String)>,
    session: Vec<String>,
}

/// Reads frames until a close; its code.
fn raw_close_code(ws: &mut RawWs) -> Result<u16, String> {
    ws.close_code()
}

fn expect_code(ws: &mut RawWs, want: u16) -> Result<(), String> {
    match raw_close_code(ws)? {
        c if c == want => Ok(()),
        c => Err(format!("closed {c}, expected {want}")),
    }
}

fn upgrade(ctx: &Ctx, path: &str, token: &str) -> Result<RawWs, String> {
    RawWs::upgrade(
        ctx.relay_addr,
        path,
        &[&format!("Authorization: Bearer {token}")],
    )
    .map_err(|r| format!("upgrade {path}: {}", r.status))
}

/// A clean close from our side (RFC 6455 §5.5.1): send 1000, read the echo, see the end.
fn clean_close(ws: &mut RawWs) -> Result<(), String> {
    ws.send(&close_frame(1000, b""))
        .map_err(|e| format!("send close: {e}"))?;
    expect_code(ws, 1000)
}

/// Status of a raw request's answer (None: closed without one).
fn raw_status(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut s = raw_connect(addr);
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    std::str::from_utf8(got.get(9..12)?).ok()?.parse().ok()
}

/// One churned connection of `kind`; Ok or what went wrong.
fn churn_one(ctx: &Ctx, worker: u64, ticket: u64, kind: &str) -> Result<(), String> {
    let w = worker as usize;
    match kind {
        // --- well-behaved
        "control" => {
            let mut ws = upgrade(ctx, POS_LISTENER, &ctx.token)?;
            ws.send(&masked(op::TEXT, br#"{"type":"devices","request_id":"c"}"#))
                .map_err(|e| e.to_string())?;
            // §4: device_status events of the client's claims may come first.
            loop {
                let f = ws
                    .read_frame()
                    .map_err(|e| e.to_string())?
                    .ok_or("no answer")?;
                let text = String::from_utf8_lossy(&f.payload);
                if text.contains(r#""request_id":"c""#) {
                    if !text.contains(r#""type":"devices""#) {
                        return Err(format!("devices answer: {text}"));
                    }
                    break;
                }
                if !text.contains(r#""type":"device_status""#) {
                    return Err(format!("unexpected on the control channel: {text}"));
                }
            }
            clean_close(&mut ws)
        }
        "device" => {
            let (path, token) = &ctx.device[w];
            let mut ws = upgrade(ctx, path, token)?;
            clean_close(&mut ws)
        }
        "session" => {
            let mut ws = upgrade(ctx, &ctx.session[w], &ctx.token)?;
            clean_close(&mut ws)
        }
        "not found" => match raw_status(
            ctx.relay_addr,
            b"GET /nothing-here HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ) {
            Some(404) => Ok(()),
            other => Err(format!("GET /nothing-here: {other:?}")),
        },
        "connect and close" => {
            drop(raw_connect(ctx.relay_addr));
            Ok(())
        }
        "token" => {
            let (resp, body) = token_request_from(
                &ctx.relay,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                DOMAIN,
                &ctx.creds.client_id,
                &ctx.creds.client_secret,
            );
            (resp.status == 200)
                .then_some(())
                .ok_or(format!("token: {} {body}", resp.status))
        }
        "registration" => {
            let (reply, code) = register_from(
                &ctx.relay,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                &worker_tsn(worker),
                &ctx.creds.client_id,
                &ctx.creds.client_secret,
            );
            (reply["type"] == "registered" && code == 1000)
                .then_some(())
                .ok_or(format!("registration: {reply} {code}"))
        }
        // --- misbehaving
        "unmasked frame" => {
            let mut ws = upgrade(ctx, POS_LISTENER, &ctx.token)?;
            let _ = ws.send(&client_frame(true, 0, op::TEXT, None, b"{}"));
            expect_code(&mut ws, 1002)
        }
        "invalid UTF-8" => {
            let mut ws = upgrade(ctx, POS_LISTENER, &ctx.token)?;
            let _ = ws.send(&masked(op::TEXT, b"\xff\xfe\xfd"));
            expect_code(&mut ws, 1007)
        }
        "length 2^63" => {
            let mut ws = upgrade(ctx, POS_LISTENER, &ctx.token)?;
            let _ = ws.send(&header_announcing(op::BINARY, 1 << 63));
            expect_code(&mut ws, 1002)
        }
        "reset mid-frame" => {
            let mut ws = upgrade(ctx, &ctx.session[w], &ctx.token)?;
            let _ = ws.send(&masked(op::BINARY, &[1u8; 4000])[..2000]);
            set_reset_on_close(&ws.stream);
            Ok(())
        }
        "garbage" => match raw_status(ctx.relay_addr, &binary_payload(300, ticket)) {
            Some(400) | None => Ok(()),
            other => Err(format!("garbage answered {other:?}")),
        },
        "20 KiB header" => {
            let filler = format!("X-Filler: {}", "z".repeat(20 * 1024));
            match raw_status(
                ctx.relay_addr,
                &upgrade_request(DEVICE_LISTENER, &[&filler]),
            ) {
                Some(431) => Ok(()),
                other => Err(format!("20 KiB header answered {other:?}")),
            }
        }
        "half a head, then reset" => {
            let mut s = raw_connect(ctx.relay_addr);
            let _ = s.write_all(&upgrade_request(DEVICE_LISTENER, &[])[..40]);
            set_reset_on_close(&s);
            Ok(())
        }
        "wrong secret" => {
            // From one of 200 loopback addresses, so no address reaches its failed-login
            // limit; the client id is made up, so none is locked either.
            let src = IpAddr::V4(Ipv4Addr::new(127, 0, 1, (ticket % 200) as u8 + 1));
            let (resp, body) =
                token_request_from(&ctx.relay, src, DOMAIN, &format!("nobody-{ticket}"), "x");
            (resp.status == 401)
                .then_some(())
                .ok_or(format!("wrong secret: {} {body}", resp.status))
        }
        "reset at once" => {
            let s = raw_connect(ctx.relay_addr);
            set_reset_on_close(&s);
            Ok(())
        }
        other => unreachable!("{other}"),
    }
}

const NORMAL: [&str; 10] = [
    "control",
    "device",
    "session",
    "not found",
    "connect and close",
    "control",
    "device",
    "session",
    "token",
    "registration",
];
const MISBEHAVING: [&str; 9] = [
    "unmasked frame",
    "garbage",
    "reset mid-frame",
    "20 KiB header",
    "invalid UTF-8",
    "half a head, then reset",
    "wrong secret",
    "length 2^63",
    "reset at once",
];

/// p50, p99, max of `v` (sorted in place).
fn percentiles(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), *v.last().unwrap())
}

#[test]
fn churn_with_misbehaving_connections_does_not_stall_a_live_pair() {
    let secs = churn_secs();
    let target = CONNECTIONS_PER_MINUTE * secs / 60;
    // The pair's idle control channel must outlive the run.
    let relay = Arc::new(fault_relay(&["--idle-timeout", "300s"]));
    let mut tsns: Vec<String> = (0..WORKERS).map(worker_tsn).collect();
    tsns.push(PAIR_TSN.into());
    tsns.push(PROBE_TSN.into());
    let tsn_refs: Vec<&str> = tsns.iter().map(|s| s.as_str()).collect();
    let creds = relay.provision(DOMAIN, "s1", &tsn_refs);
    let churn_creds = relay.create_client(DOMAIN, Some("s1"));
    let health = Health::warm_up(&relay, DOMAIN, &creds);

    // The churn client's devices and claims, one per worker.
    let churn_token = relay.token(DOMAIN, &churn_creds);
    let mut churn_pos = Pos::control(&relay, &churn_token);
    let mut device = Vec::new();
    let mut session = Vec::new();
    for w in 0..WORKERS {
        let reg = register(&relay, &worker_tsn(w), &churn_creds);
        device.push((url_path(&reg.connection_url).to_string(), reg.token));
        let (_, url) = churn_pos.claim_ok(&worker_tsn(w));
        session.push(url_path(&url).to_string());
    }
    close_and_wait(&mut churn_pos.ws, 1000);
    let ctx = Arc::new(Ctx {
        relay_addr: relay.relay_addr,
        relay: relay.clone(),
        creds: churn_creds.clone(),
        token: churn_token,
        device,
        session,
    });

    // The live pair: the POS sends a numbered frame every 10 ms, the device echoes it.
    let Pair {
        device: mut pair_device,
        pos: mut pair_pos,
        session: mut pair_session,
        ..
    } = Pair::connect(&relay, DOMAIN, PAIR_TSN, &creds);
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match try_recv(&mut pair_device.ws, Duration::from_millis(200)) {
                    Some(Message::Binary(b)) => {
                        pair_device.send_binary(&b);
                        n += 1;
                    }
                    Some(other) => panic!("pair device got {}", show(&other)),
                    None => {}
                }
            }
            (n, pair_device)
        })
    };
    let control = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut events = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(ev) = pair_pos.try_next_event(Duration::from_millis(200)) {
                    events.push(ev);
                }
            }
            (events, pair_pos)
        })
    };
    let churning = Arc::new(AtomicBool::new(false));
    let pinger = {
        let (stop, churning) = (stop.clone(), churning.clone());
        std::thread::spawn(move || {
            let (mut quiet, mut busy) = (Vec::new(), Vec::new());
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let during = churning.load(Ordering::Relaxed);
                let t = Instant::now();
                send_binary(&mut pair_session, &seq.to_be_bytes());
                match recv(&mut pair_session) {
                    Message::Binary(b) if b == seq.to_be_bytes() => {}
                    other => panic!("round trip {seq}: got {}", show(&other)),
                }
                let rtt = t.elapsed();
                if during {
                    busy.push(rtt);
                } else {
                    quiet.push(rtt);
                }
                seq += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (quiet, busy, pair_session)
        })
    };
    std::thread::sleep(QUIET);

    // The churn: tickets at an even pace, every fifth misbehaving.
    churning.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let interval = Duration::from_secs(60) / CONNECTIONS_PER_MINUTE as u32;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let kinds = Arc::new(Mutex::new(BTreeMap::<&'static str, u64>::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (ctx, next, errors, kinds) =
                (ctx.clone(), next.clone(), errors.clone(), kinds.clone());
            std::thread::spawn(move || loop {
                let ticket = next.fetch_add(1, Ordering::SeqCst);
                if ticket >= target {
                    return;
                }
                let due = start + interval * ticket as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let kind = if ticket % 5 == 4 {
                    MISBEHAVING[(ticket / 5) as usize % MISBEHAVING.len()]
                } else {
                    NORMAL[(ticket - ticket / 5) as usize % NORMAL.len()]
                };
                let result =
                    std::panic::catch_unwind(AssertUnwindSafe(|| churn_one(&ctx, w, ticket, kind)))
                        .unwrap_or_else(|p| {
                            Err(p
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "panic".into()))
                        });
                *kinds.lock().unwrap().entry(kind).or_insert(0) += 1;
                if let Err(e) = result {
                    errors
                        .lock()
                        .unwrap()
                        .push(format!("ticket {ticket} ({kind}): {e}"));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("churn worker");
    }
    let took = start.elapsed();
    churning.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (mut quiet, mut busy, pair_session) = pinger.join().expect("pair POS");
    let (echoed, pair_device) = echo.join().expect("pair device");
    let (events, pair_pos) = control.join().expect("pair control");

    let kinds = kinds.lock().unwrap().clone();
    let total: u64 = kinds.values().sum();
    let misbehaving: u64 = kinds
        .iter()
        .filter(|(k, _)| MISBEHAVING.contains(k))
        .map(|(_, n)| n)
        .sum();
    let (q50, q99, qmax) = percentiles(&mut quiet);
    let (b50, b99, bmax) = percentiles(&mut busy);
    eprintln!(
        "churn: {total} connections ({misbehaving} misbehaving) in {took:?} by {WORKERS} \
         workers; by kind {kinds:?}"
    );
    eprintln!(
        "churn: live pair {} round trips quiet: p50 {q50:?} p99 {q99:?} max {qmax:?}; \
         {} under churn: p50 {b50:?} p99 {b99:?} max {bmax:?}; p99 ratio {:.2} \
         (issue: within 3x); {echoed} echoed",
        quiet.len(),
        busy.len(),
        b99.as_secs_f64() / q99.as_secs_f64()
    );
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} churned connections went wrong, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert_eq!(total, target, "every connection was churned");
    assert!(
        events.is_empty(),
        "the pair's control channel got nothing: {events:?}"
    );
    assert!(!busy.is_empty(), "the pair exchanged under churn");
    drop((pair_session, pair_device, pair_pos, ctx));
    let relay = Arc::try_unwrap(relay).unwrap_or_else(|_| panic!("relay still shared"));
    health.check(&relay, "churn", RSS_SLACK_KIB);
    let refused = metric_sum(&relay.metrics(), "posrelay_refused_total", &[]);
    assert_eq!(refused, 0.0, "no admission limit was hit by the churn");
}
