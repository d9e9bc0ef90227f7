//! Fault suite, peers that vanish (issue "Faults, drain and hostile input"): a terminal and
//! a POS killed mid-message (socket reset), half-open connections (no FIN, no traffic) found
//! by the idle timeout, and a peer that stops reading while the other sends 100 MiB.
//!
//! Frames carry sequence numbers. "Nothing lost without a report" is checked exactly: every
//! whole frame a peer wrote before its cut reaches the other side (PROTOCOL.md §5: a
//! vanished peer leaves no partial message, and whole frames it sent were acknowledged by
//! TCP to the relay), and for every POS → device stream, frames received + frames reported
//! `undelivered` = frames sent. A "half-open" peer is a socket that neither reads nor writes
//! (the kernel still ACKs): whatever the relay wrote to it is read back out of its receive
//! buffer after the cut and counted as delivered, so the relay cannot hide a loss there.
//! Every case ends with the after-case health check (fresh pair, memory, gauges).

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::Message;

const DOMAIN: &str = "acme";
const TSN: &str = "33330001";

fn offline(tsn: &str) -> Value {
    json!({"type": "device_status", "tsn": tsn, "online": false})
}

/// Reads control-channel events until `done(frames, bytes)` of the `undelivered` reports for
/// `tsn` holds or `limit` passes; `device_status` events are kept apart. Returns (frames,
/// bytes, status events). Any other event fails.
fn reports_until(
    pos: &mut Pos,
    tsn: &str,
    limit: Duration,
    mut done: impl FnMut(u64, u64) -> bool,
) -> (u64, u64, Vec<Value>) {
    let deadline = Instant::now() + limit;
    let (mut frames, mut bytes, mut status) = (0u64, 0u64, Vec::new());
    while !done(frames, bytes) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let Some(ev) = pos.try_next_event(left.min(Duration::from_millis(200))) else {
            continue;
        };
        match ev["type"].as_str() {
            Some("undelivered") => {
                assert_eq!(ev["tsn"], tsn, "{ev}");
                frames += ev["frames"].as_u64().expect("frames");
                bytes += ev["bytes"].as_u64().expect("bytes");
            }
            Some("device_status") => status.push(ev),
            _ => panic!("unexpected control event {ev}"),
        }
    }
    (frames, bytes, status)
}

/// Reads binary messages from `ws` until the text `marker`; returns their sequence numbers.
fn read_until_marker(ws: &mut Ws, frames: &SeqFrames, marker: &str) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        match recv(ws) {
            Message::Binary(b) => seqs.push(frames.check(&b)),
            Message::Text(t) if t == marker => return seqs,
            other => panic!("expected data or {marker:?}, got {}", show(&other)),
        }
    }
}

/// Reads up to `n` binary messages (fewer if nothing comes for 2 s); their sequence numbers.
fn read_seqs(ws: &mut Ws, frames: &SeqFrames, n: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < n {
        match try_recv(ws, Duration::from_secs(2)) {
            Some(Message::Binary(b)) => seqs.push(frames.check(&b)),
            Some(other) => panic!("expected data, got {}", show(&other)),
            None => break,
        }
    }
    seqs
}

/// Writes the first `written` bytes of a masked binary frame announcing `len` bytes.
fn partial_frame(len: usize, written: usize) -> Vec<u8> {
    let whole = masked(op::BINARY, &binary_payload(len, 4242));
    let header = whole.len() - len;
    whole[..header + written].to_vec()
}

/// Asserts `seqs` strictly increase.
fn assert_in_order(seqs: &[u64], what: &str) {
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{what}: out of order or duplicated: {seqs:?}"
    );
}

#[test]
fn a_terminal_killed_mid_message_loses_nothing_it_sent_and_nothing_sent_to_it_silently() {
    let relay = fault_relay(&["--offline-queue-bytes", "64KiB"]);
    let creds = relay.provision(DOMAIN, "s1", &[TSN, PROBE_TSN]);
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    let Pair {
        mut device,
        mut pos,
        mut session,
        ..
    } = Pair::connect(&relay, DOMAIN, TSN, &creds);
    let up = SeqFrames::new(1000);
    const SENT: u64 = 50;
    for seq in 0..SENT {
        device.send_binary(&up.make(seq));
    }
    // Mid-message: 300 of 1000 payload bytes, then a reset (no close frame, no FIN).
    {
        use std::io::Write;
        let mut tcp = tcp_of(&mut device.ws);
        tcp.write_all(&partial_frame(1000, 300))
            .expect("partial frame");
        // Everything written is acknowledged by TCP to the relay before the reset.
        wait_acked(tcp, Duration::from_secs(5));
    }
    reset_ws(device.ws);

    // Every whole frame arrives, in order; nothing of the partial one (§5).
    let got = read_seqs(&mut session, &up, SENT);
    assert_eq!(
        got,
        (0..SENT).collect::<Vec<_>>(),
        "device -> POS before the cut"
    );
    assert_eq!(pos.next_event(), offline(TSN), "§4: the POS is told");

    // While the terminal is away: 40 × 4 KiB against a 64 KiB offline queue (§6).
    let down = SeqFrames::new(4096);
    const QUEUED: u64 = 40;
    for seq in 0..QUEUED {
        send_binary(&mut session, &down.make(seq));
    }
    let mut device = Device::register_and_connect(&relay, TSN, &creds);
    // §5: nothing of the partial message: the first thing the session hears after the cut
    // is what the returning terminal sends.
    device.send_text("back");
    match recv(&mut session) {
        Message::Text(t) if t == "back" => {}
        other => panic!("§5: the session got {} after the cut", show(&other)),
    }
    send_text(&mut session, "marker");
    let delivered = read_until_marker(&mut device.ws, &down, "marker");
    assert_in_order(&delivered, "queued frames");
    let missing = QUEUED - delivered.len() as u64;
    let (frames, bytes, _) =
        reports_until(&mut pos, TSN, Duration::from_secs(10), |f, _| f >= missing);
    eprintln!(
        "terminal killed: {SENT} frames before the cut all delivered; of {QUEUED} sent while \
         offline {} delivered, {frames} reported undelivered",
        delivered.len()
    );
    assert_eq!(
        frames, missing,
        "§6: every frame not delivered is reported, none twice"
    );
    assert_eq!(bytes, missing * 4096, "§6: bytes count payload bytes");
    assert!(missing > 0, "the 64 KiB queue overflowed");
    let extra = pos.events_until_barrier();
    assert!(
        extra.iter().all(|e| e["type"] == "device_status"),
        "no report beyond the loss: {extra:?}"
    );
    drop((device, pos, session));
    health.check(&relay, "terminal killed mid-message", RSS_SLACK_KIB);
}

#[test]
fn a_pos_killed_mid_message_loses_nothing_it_sent_and_finds_the_device_frames_queued() {
    let relay = fault_relay(&[]);
    let creds = relay.provision(DOMAIN, "s1", &[TSN, PROBE_TSN]);
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    let Pair {
        mut device,
        pos,
        mut session,
        token,
        session_id,
        ..
    } = Pair::connect(&relay, DOMAIN, TSN, &creds);
    let down = SeqFrames::new(1000);
    const SENT: u64 = 50;
    for seq in 0..SENT {
        send_binary(&mut session, &down.make(seq));
    }
    {
        use std::io::Write;
        let mut tcp = tcp_of(&mut session);
        tcp.write_all(&partial_frame(1000, 500))
            .expect("partial frame");
        wait_acked(tcp, Duration::from_secs(5));
    }
    // The whole POS process dies: session and control channel reset.
    reset_ws(session);
    reset_ws(pos.ws);

    let got = read_seqs(&mut device.ws, &down, SENT);
    assert_eq!(
        got,
        (0..SENT).collect::<Vec<_>>(),
        "POS -> device before the cut"
    );

    // The device keeps sending: §5 queues it for the claim holder's next session.
    let up = SeqFrames::new(2000);
    const WHILE_AWAY: u64 = 20;
    for seq in 0..WHILE_AWAY {
        device.send_binary(&up.make(seq));
    }
    // The POS restarts: same client, same token; the claim is still its own (claim grace).
    let mut pos = Pos::control(&relay, &token);
    let (again, url) = pos.claim_ok(TSN);
    assert_eq!(again, session_id, "§4: the same session");
    let mut session = Pos::session(&relay, &url, &token);
    // §5: nothing of the POS's partial message reached the device: the next thing it
    // hears is what the restarted POS sends.
    send_text(&mut session, "again");
    match device.recv() {
        Message::Text(t) if t == "again" => {}
        other => panic!("§5: the device got {} after the POS died", show(&other)),
    }
    device.send_text("marker");
    let got = read_until_marker(&mut session, &up, "marker");
    assert_eq!(
        got,
        (0..WHILE_AWAY).collect::<Vec<_>>(),
        "§5: device frames wait for the claim holder's session, in order"
    );
    eprintln!(
        "POS killed: {SENT} frames before the cut and {WHILE_AWAY} queued device frames all delivered"
    );
    drop((device, pos, session));
    health.check(&relay, "POS killed mid-message", RSS_SLACK_KIB);
}

/// Keeps a tungstenite connection alive under a short idle timeout: reads for a moment
/// (tungstenite answers pings while it reads) and flushes the pong. Data is returned.
fn keep_alive(ws: &mut Ws) -> Option<Message> {
    let m = try_recv_any(ws, Duration::from_millis(2));
    let _ = ws.flush();
    match m {
        Some(Message::Ping(_)) | Some(Message::Pong(_)) | None => None,
        Some(other) => Some(other),
    }
}

/// Reads control events for a moment (answering pings); keeps them.
fn tick_control(pos: &mut Pos, events: &mut Vec<Value>) {
    if let Some(ev) = pos.try_next_event(Duration::from_millis(2)) {
        events.push(ev);
    }
    let _ = pos.ws.flush();
}

/// The sequence numbers of the binary data frames in a receive buffer, checked.
fn data_seqs(bytes: &[u8], frames: &SeqFrames) -> (Vec<u64>, usize) {
    let (parsed, left) = parse_frames(bytes);
    let seqs = parsed
        .iter()
        .filter(|f| f.opcode == op::BINARY)
        .map(|f| frames.check(&f.payload))
        .collect();
    (seqs, left)
}

/// Half-open: a connection that goes silent (never reads, never writes, no FIN). The idle
/// timeout finds it; what was sent to it meanwhile is either in its receive buffer (read
/// back here and counted as delivered), delivered after the reconnect, or reported.
#[test]
fn half_open_connections_are_found_by_the_idle_timeout_and_nothing_is_lost() {
    let relay = fault_relay(&["--ping-interval", "500ms", "--idle-timeout", "2s"]);
    let creds = relay.provision(DOMAIN, "s1", &[TSN, PROBE_TSN]);
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    let token = relay.token(DOMAIN, &creds);
    let mut pos = Pos::control(&relay, &token);
    let mut events = Vec::new();

    // --- A half-open device; the POS keeps sending to it.
    let reg = register(&relay, TSN, &creds);
    let mut silent = RawWs::open(&relay, &reg.connection_url, Some(&reg.token));
    let (_, url) = pos.claim_ok(TSN);
    let mut session = Pos::session(&relay, &url, &token);
    let down = SeqFrames::new(512);
    let mut sent = 0u64;
    let buffered = silent.read_to_end(Duration::from_secs(10), || {
        send_binary(&mut session, &down.make(sent));
        sent += 1;
        assert!(keep_alive(&mut session).is_none());
        tick_control(&mut pos, &mut events);
    });
    let (in_buffer, left) = data_seqs(&buffered, &down);
    assert_in_order(&in_buffer, "frames written to the half-open device");
    assert!(
        left == 0 || in_buffer.len() as u64 <= sent,
        "a partial frame at the end is not counted"
    );
    // §4: the POS learns the device went offline.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !events.contains(&offline(TSN)) {
        assert!(Instant::now() < deadline, "no offline event: {events:?}");
        tick_control(&mut pos, &mut events);
        assert!(keep_alive(&mut session).is_none());
    }
    // While it is known offline, frames go to the offline queue (§6).
    for _ in 0..5 {
        send_binary(&mut session, &down.make(sent));
        sent += 1;
    }
    // The terminal comes back; what was queued meanwhile arrives first.
    let mut device = Device::register_and_connect(&relay, TSN, &creds);
    send_text(&mut session, "marker");
    let after = read_until_marker(&mut device.ws, &down, "marker");
    assert_in_order(&after, "frames delivered after the reconnect");
    let mut reported = 0;
    let counted = |reported: u64| in_buffer.len() as u64 + after.len() as u64 + reported;
    let deadline = Instant::now() + Duration::from_secs(5);
    while counted(reported) < sent && Instant::now() < deadline {
        if let Some(ev) = pos.try_next_event(Duration::from_millis(100)) {
            if ev["type"] == "undelivered" {
                reported += ev["frames"].as_u64().unwrap();
            }
        }
    }
    eprintln!(
        "half-open device: of {sent} frames sent, {} sat in its receive buffer, {} delivered \
         after the reconnect, {reported} reported undelivered",
        in_buffer.len(),
        after.len()
    );
    assert_eq!(
        counted(reported),
        sent,
        "§6: every frame sent is delivered or reported"
    );

    // --- A half-open POS session; the device keeps sending to it.
    close_and_wait(&mut session, 1000);
    let mut silent = RawWs::open(&relay, &url, Some(&token));
    let up = SeqFrames::new(700);
    let mut dev_sent = 0u64;
    let buffered = silent.read_to_end(Duration::from_secs(10), || {
        device.send_binary(&up.make(dev_sent));
        dev_sent += 1;
        assert!(keep_alive(&mut device.ws).is_none());
        tick_control(&mut pos, &mut events);
    });
    let (in_buffer, _) = data_seqs(&buffered, &up);
    for _ in 0..5 {
        device.send_binary(&up.make(dev_sent));
        dev_sent += 1;
    }
    let mut session = Pos::session(&relay, &url, &token);
    device.send_text("marker");
    let after = read_until_marker(&mut session, &up, "marker");
    let all: Vec<u64> = in_buffer.iter().chain(after.iter()).copied().collect();
    eprintln!(
        "half-open POS session: of {dev_sent} device frames, {} sat in its receive buffer, \
         {} delivered to the next session",
        in_buffer.len(),
        after.len()
    );
    assert_eq!(
        all,
        (0..dev_sent).collect::<Vec<_>>(),
        "§5: device frames are delivered to a session or queued for the next, in order"
    );
    drop((device, pos, session));
    health.check(&relay, "half-open connections", RSS_SLACK_KIB);
}

/// A device that stops reading while its POS sends 100 MiB: the POS is paced, the relay's
/// memory stays bounded, the idle timeout cuts the stalled device, and every frame is
/// accounted for: in the dead connection's receive buffer, delivered after the reconnect
/// from the offline queue, or reported `undelivered`.
#[test]
fn a_peer_that_stops_reading_while_the_other_sends_100_mib() {
    const MESSAGE: usize = 64 * 1024;
    const MESSAGES: u64 = 1600; // 100 MiB
    /// Growth of VmRSS allowed while the stream is stalled (per-connection buffers).
    const PEAK_BOUND_KIB: u64 = 48 << 10;
    let relay = fault_relay(&["--ping-interval", "1s", "--idle-timeout", "3s"]);
    let creds = relay.provision(DOMAIN, "s1", &[TSN, PROBE_TSN]);
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    let token = relay.token(DOMAIN, &creds);
    let mut pos = Pos::control(&relay, &token);
    let reg = register(&relay, TSN, &creds);
    let mut stalled = RawWs::open(&relay, &reg.connection_url, Some(&reg.token));
    let (_, url) = pos.claim_ok(TSN);
    let mut session = Pos::session(&relay, &url, &token);
    set_write_timeout(&mut session, Some(Duration::from_secs(60)));

    let frames = SeqFrames::new(MESSAGE);
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (frames, sent, done) = (frames.clone(), sent.clone(), done.clone());
        std::thread::spawn(move || {
            for seq in 0..MESSAGES {
                if let Err(e) = session.send(Message::Binary(frames.make(seq))) {
                    done.store(true, Ordering::SeqCst);
                    panic!("POS send {seq}: {e}");
                }
                sent.store(seq + 1, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
            session
        })
    };

    // The stalled device never reads until the relay has cut it; meanwhile the control
    // channel is read (pongs) and the relay's memory sampled.
    let start = Instant::now();
    let mut events = Vec::new();
    let mut peak = 0u64;
    // What the POS had sent 1 s and 2 s into the stall (the device, silent since it
    // connected, is cut at the earliest 3 s in).
    let mut sent_at = [None::<u64>; 2];
    let buffered;
    {
        let events = &mut events;
        let peak = &mut peak;
        let pos = &mut pos;
        let relay = &relay;
        let sent = &sent;
        let sent_at = &mut sent_at;
        // Wait for the cut (the offline event), then drain the dead connection's buffer.
        while !events.contains(&offline(TSN)) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the stalled device was never cut: {events:?}"
            );
            for (i, slot) in sent_at.iter_mut().enumerate() {
                if slot.is_none() && start.elapsed() >= Duration::from_secs(i as u64 + 1) {
                    *slot = Some(sent.load(Ordering::SeqCst));
                }
            }
            tick_control(pos, events);
            *peak = (*peak).max(relay.rss_kib());
            std::thread::sleep(Duration::from_millis(50));
        }

        buffered = stalled.read_to_end(Duration::from_secs(10), || {
            tick_control(pos, events);
            *peak = (*peak).max(relay.rss_kib());
        });
    }
    let cut_after = start.elapsed();
    let (in_buffer, left) = data_seqs(&buffered, &frames);
    assert_eq!(
        in_buffer,
        (0..in_buffer.len() as u64).collect::<Vec<_>>(),
        "the stalled device's buffer holds the first frames in order"
    );
    // The POS finishes (frames now go to the offline queue or are reported).
    while !done.load(Ordering::SeqCst) {
        tick_control(&mut pos, &mut events);
        peak = peak.max(relay.rss_kib());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut session = sender.join().expect("POS sender");
    let mut device = Device::register_and_connect(&relay, TSN, &creds);
    send_text(&mut session, "marker");
    let after = read_until_marker(&mut device.ws, &frames, "marker");
    assert_in_order(&after, "frames delivered after the reconnect");
    let mut reported: u64 = events
        .iter()
        .filter(|e| e["type"] == "undelivered")
        .map(|e| e["frames"].as_u64().unwrap())
        .sum();
    let want = MESSAGES - in_buffer.len() as u64 - after.len() as u64;
    let (more, _, _) = reports_until(&mut pos, TSN, Duration::from_secs(10), |f, _| {
        reported + f >= want
    });
    reported += more;
    eprintln!(
        "stopped reader: cut by the idle timeout after {cut_after:?}; the POS had sent {:?} of \
         {MESSAGES} frames 1 s and 2 s into the stall; {} whole frames (+{left} bytes of a partial one) sat in its receive \
         buffer, {} delivered after the reconnect, {reported} reported undelivered; VmRSS \
         baseline {} KiB, peak {peak} KiB",
        sent_at,
        in_buffer.len(),
        after.len(),
        health.baseline_kib
    );
    let [Some(at_1s), Some(at_2s)] = sent_at else {
        panic!("the device was cut within 2 s ({cut_after:?})")
    };
    assert!(
        at_2s < MESSAGES / 4 && at_2s - at_1s <= 32,
        "§6: the POS is paced while the device does not read ({at_1s} then {at_2s} frames of \
         64 KiB sent 1 s and 2 s in)"
    );
    let mut all: Vec<u64> = in_buffer.iter().chain(after.iter()).copied().collect();
    all.dedup();
    assert_eq!(
        all.len(),
        in_buffer.len() + after.len(),
        "no frame delivered twice"
    );
    assert_eq!(
        in_buffer.len() as u64 + after.len() as u64 + reported,
        MESSAGES,
        "§6: every frame is delivered or reported, none in silence"
    );
    assert!(
        peak <= health.baseline_kib + PEAK_BOUND_KIB,
        "§6: bounded memory per connection: VmRSS peaked at {peak} KiB"
    );
    drop((device, pos, session, stalled));
    health.check(&relay, "stopped reader", RSS_SLACK_KIB);
}
