//! Issue 15, one node: reliable sessions (PROTOCOL.md §11, `posrelay.reliable.v1`) from
//! outside. A POS and a device exchange numbered messages while the POS connection is cut
//! (by the client, and by the relay), while the relay is stopped with SIGTERM and started
//! again, and while it is killed with `kill -9` and started again on the same data
//! directory: after the resume nothing acknowledged is missing, nothing is delivered
//! twice, the order holds. And what bad input gets: its documented answer or close code.
//!
//! The POS here is a plain WebSocket client (tungstenite) writing §11's JSON by hand, as a
//! POS developer reading PROTOCOL.md would.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tungstenite::Message;

const TSN: &str = "12345678";
const RELIABLE: &str = "posrelay.reliable.v1";

/// A reliable POS session as a POS developer would write it from §11: it checks that
/// device messages come numbered 1, 2, 3, … with neither gap nor repeat across sessions.
struct ReliablePos {
    ws: Ws,
    /// The relay's cumulative ack of POS messages.
    acked: u64,
    /// The last device message received (on any session of the claim).
    last_device: u64,
    /// Device messages received, in order.
    received: Vec<String>,
    /// `undelivered` reports received.
    reports: Vec<(u64, u64)>,
}

impl ReliablePos {
    /// Opens the session offering `posrelay.reliable.v1` and resumes from `processed`
    /// (the last device message it processed); returns it and `resumed`'s `seq`.
    fn open(relay: &Relay, url: &str, token: &str, processed: u64) -> (ReliablePos, u64) {
        ReliablePos::open_auth(relay, url, &format!("Bearer {token}"), processed)
    }

    /// [`ReliablePos::open`] with `authorization` as the upgrade's `Authorization` header.
    fn open_auth(
        relay: &Relay,
        url: &str,
        authorization: &str,
        processed: u64,
    ) -> (ReliablePos, u64) {
        let ws = open_reliable_auth(relay, url, authorization);
        let mut pos = ReliablePos {
            ws,
            acked: 0,
            last_device: processed,
            received: Vec::new(),
            reports: Vec::new(),
        };
        send_json(&mut pos.ws, &json!({"type": "resume", "seq": processed}));
        let resumed = recv_json(&mut pos.ws);
        assert_eq!(resumed["type"], "resumed", "{resumed}");
        let seq = resumed["seq"].as_u64().expect("resumed seq");
        pos.acked = seq;
        (pos, seq)
    }

    fn send(&mut self, seq: u64, text: &str) {
        send_json(
            &mut self.ws,
            &json!({"type": "data", "seq": seq, "text": text}),
        );
    }

    /// Reads one envelope, checking the numbering of device messages.
    fn read(&mut self) -> Value {
        let v = recv_json(&mut self.ws);
        match v["type"].as_str() {
            Some("data") => {
                let seq = v["seq"].as_u64().expect("data seq");
                assert_eq!(
                    seq,
                    self.last_device + 1,
                    "device messages come in order, once each: {v}"
                );
                self.last_device = seq;
                self.received
                    .push(v["text"].as_str().expect("text data").to_owned());
            }
            Some("ack") => {
                let seq = v["seq"].as_u64().expect("ack seq");
                assert!(
                    seq >= self.acked,
                    "acks are cumulative: {v} after {}",
                    self.acked
                );
                self.acked = seq;
            }
            Some("undelivered") => {
                let from = v["from_seq"].as_u64().expect("from_seq");
                let to = v["to_seq"].as_u64().expect("to_seq");
                self.reports.push((from, to));
            }
            _ => panic!("unexpected envelope {v}"),
        }
        v
    }

    fn wait_ack(&mut self, seq: u64) {
        while self.acked < seq {
            self.read();
        }
    }

    fn wait_device(&mut self, seq: u64) {
        while self.last_device < seq {
            self.read();
        }
    }

    /// Tells the relay the POS processed every device message up to `seq`.
    fn processed(&mut self, seq: u64) {
        send_json(&mut self.ws, &json!({"type": "ack", "seq": seq}));
    }
}

/// Opens a POS session offering `posrelay.reliable.v1`, which the relay must select.
fn open_reliable(relay: &Relay, url: &str, token: &str) -> Ws {
    open_reliable_auth(relay, url, &format!("Bearer {token}"))
}

/// [`open_reliable`] with `auth` as the upgrade's `Authorization` header.
fn open_reliable_auth(relay: &Relay, url: &str, auth: &str) -> Ws {
    let (ws, resp) = relay
        .ws_connect(
            url,
            &[
                ("Authorization", auth),
                ("Sec-WebSocket-Protocol", &format!("posrelay,{RELIABLE}")),
            ],
        )
        .unwrap_or_else(|e| panic!("reliable session refused: {}", describe_ws_error(&e)));
    let selected = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    assert_eq!(
        selected,
        Some(RELIABLE),
        "§11: selected before any other entry"
    );
    ws
}

/// The device's next message, which must be text `want`.
fn device_gets(device: &mut Device, want: &str) {
    match device.recv() {
        Message::Text(t) => assert_eq!(t, want),
        other => panic!("device expected {want}, got {}", show(&other)),
    }
}

/// Closes the device connection and waits until the relay has seen it go (§4's
/// `device_status`), so that what the POS sends next is queued, not written to it.
fn device_goes_offline(mut device: Device, control: &mut Pos) {
    close_and_wait(&mut device.ws, 1000);
    let offline = json!({"type": "device_status", "tsn": TSN, "online": false});
    loop {
        let event = control.next_event();
        if event == offline {
            return;
        }
    }
}

fn pos_text(n: u64) -> String {
    format!("pos-{n}")
}

fn device_text(n: u64) -> String {
    format!("device-{n}")
}

/// A device, a POS token and a claim: (device, token, session_url, control channel).
fn claimed(relay: &Relay, creds: &Creds) -> (Device, String, String, Pos) {
    let device = Device::register_and_connect(relay, TSN, creds);
    let token = relay.token("acme", creds);
    let mut control = Pos::control(relay, &token);
    let (sid, url) = control.claim_ok(TSN);
    assert_eq!(sid, device.reg.session_id);
    (device, token, url, control)
}

#[test]
fn a_reliable_session_survives_pos_cuts_by_the_client_and_by_the_relay() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let (mut device, token, url, _control) = claimed(&relay, &creds);

    let (mut pos, resumed) = ReliablePos::open(&relay, &url, &token, 0);
    assert_eq!(resumed, 0, "nothing sent yet");
    // POS → device: 1..=5, each written to the device once, in order, then acknowledged.
    for n in 1..=5 {
        pos.send(n, &pos_text(n));
    }
    for n in 1..=5 {
        device_gets(&mut device, &pos_text(n));
    }
    pos.wait_ack(5);
    // Device → POS: 1..=4 arrive numbered; the POS processes 2 of them.
    for n in 1..=4 {
        device.send_text(&device_text(n));
    }
    pos.wait_device(4);
    pos.processed(2);

    // Cut by the client: the TCP connection is reset, no close frame. The device keeps
    // sending meanwhile.
    reset_ws(pos.ws);
    for n in 5..=7 {
        device.send_text(&device_text(n));
    }
    // Resume from 2: the relay has made 5 POS messages safe, and sends 3..=7 again, in
    // order (the POS had received 3 and 4 but not processed them).
    let (mut pos, resumed) = ReliablePos::open(&relay, &url, &token, 2);
    assert_eq!(resumed, 5);
    pos.wait_device(7);
    assert_eq!(
        pos.received,
        (3..=7).map(device_text).collect::<Vec<_>>(),
        "held device messages after the resume point, in order"
    );
    // §11: "a message whose seq the relay already holds is acknowledged again and not
    // forwarded twice".
    pos.send(5, &pos_text(5));
    let again = pos.read();
    assert_eq!(again, json!({"type": "ack", "seq": 5}));
    pos.send(6, &pos_text(6));
    device_gets(&mut device, &pos_text(6));
    pos.wait_ack(6);
    pos.processed(7);

    // Cut by the relay: a newer session of the same claim replaces this one (4000).
    let (mut newer, resumed) = ReliablePos::open(&relay, &url, &token, 7);
    assert_eq!(resumed, 6);
    assert_eq!(expect_close(&mut pos.ws), 4000, "§5: replaced");
    device.send_text(&device_text(8));
    newer.wait_device(8);
    assert_eq!(newer.received, vec![device_text(8)]);
    newer.send(7, &pos_text(7));
    device_gets(&mut device, &pos_text(7));
    newer.wait_ack(7);
    // Nothing reached the device twice: its next message is the next one sent.
    newer.send(8, &pos_text(8));
    device_gets(&mut device, &pos_text(8));
    assert!(newer.reports.is_empty(), "{:?}", newer.reports);
}

/// §11: a POS "opens its session (§5 or §5a) offering the subprotocol": a client without a
/// control channel (seed 003's: Basic credentials on the upgrade) claims, opens and resumes
/// a reliable session with one §5a upgrade each time.
#[test]
fn a_one_step_session_with_basic_credentials_is_reliable_too() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let mut device = Device::register_and_connect(&relay, TSN, &creds);
    let basic = basic_auth(&creds.client_id, &creds.client_secret);
    let url = relay.ws_url(&format!("/cloud-connector/v1/devices/{TSN}/session"));
    let (mut pos, resumed) = ReliablePos::open_auth(&relay, &url, &basic, 0);
    assert_eq!(resumed, 0, "a new claim");
    pos.send(1, &pos_text(1));
    device_gets(&mut device, &pos_text(1));
    pos.wait_ack(1);
    device.send_text(&device_text(1));
    pos.wait_device(1);
    pos.processed(1);
    // Cut by the client while the device answers: the answer is held for the resume.
    reset_ws(pos.ws);
    device.send_text(&device_text(2));
    let (mut pos, resumed) = ReliablePos::open_auth(&relay, &url, &basic, 1);
    assert_eq!(resumed, 1, "the relay made POS message 1 safe");
    pos.wait_device(2);
    assert_eq!(pos.received, vec![device_text(2)], "only what came after 1");
    pos.send(2, &pos_text(2));
    device_gets(&mut device, &pos_text(2));
    pos.wait_ack(2);
    assert!(pos.reports.is_empty(), "{:?}", pos.reports);
}

#[test]
fn device_messages_wait_for_a_resume_and_pos_messages_for_the_device() {
    let relay = Relay::start(&["--shards", "1"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let (device, token, url, mut control) = claimed(&relay, &creds);
    let (mut pos, _) = ReliablePos::open(&relay, &url, &token, 0);
    // The device goes away; POS messages are queued durably, hence acknowledged.
    device_goes_offline(device, &mut control);
    for n in 1..=3 {
        pos.send(n, &pos_text(n));
    }
    pos.wait_ack(3);
    let reg = register(&relay, TSN, &creds);
    let mut device = Device::connect(&relay, reg);
    for n in 1..=3 {
        device_gets(&mut device, &pos_text(n));
    }
    assert!(pos.reports.is_empty());
}

/// The exchange the restart tests share, up to the stop: POS messages 1..=4 delivered, 5..=7
/// queued for the offline device (acknowledged: safe), device messages 1..=5 held, 2 of
/// them processed.
struct BeforeStop {
    token: String,
    url: String,
    session_id: String,
}

fn exchange_before_stop(relay: &Relay, creds: &Creds) -> BeforeStop {
    let (mut device, token, url, mut control) = claimed(relay, creds);
    let session_id = device.reg.session_id.clone();
    let (mut pos, _) = ReliablePos::open(relay, &url, &token, 0);
    for n in 1..=4 {
        pos.send(n, &pos_text(n));
        device_gets(&mut device, &pos_text(n));
    }
    pos.wait_ack(4);
    for n in 1..=5 {
        device.send_text(&device_text(n));
    }
    pos.wait_device(5);
    pos.processed(2);
    device_goes_offline(device, &mut control);
    for n in 5..=7 {
        pos.send(n, &pos_text(n));
    }
    pos.wait_ack(7);
    // The processed ack is written before the POS's later messages are answered: the
    // relay handles a session's messages in order, and acks 5..=7 came after it.
    BeforeStop {
        token,
        url,
        session_id,
    }
}

/// After the restart: the POS resumes before the device is back (the claim came back on
/// its own), gets what it had not processed, then the device gets what was queued.
fn resume_after_restart(relay: &Relay, creds: &Creds, before: &BeforeStop) {
    let (mut pos, resumed) = ReliablePos::open(relay, &before.url, &before.token, 2);
    assert_eq!(resumed, 7, "every acknowledged POS message survived");
    pos.wait_device(5);
    assert_eq!(pos.received, (3..=5).map(device_text).collect::<Vec<_>>());
    pos.processed(5);
    // The device registers again: same session id (the session key is stored), and what
    // was queued for it comes first, in order, once.
    let reg = register(relay, TSN, creds);
    assert_eq!(reg.session_id, before.session_id);
    let mut device = Device::connect(relay, reg);
    for n in 5..=7 {
        device_gets(&mut device, &pos_text(n));
    }
    // The numbering goes on across the restart, both ways.
    device.send_text(&device_text(6));
    pos.wait_device(6);
    pos.send(8, &pos_text(8));
    device_gets(&mut device, &pos_text(8));
    pos.wait_ack(8);
    assert!(pos.reports.is_empty(), "{:?}", pos.reports);
}

#[test]
fn a_reliable_claim_survives_sigterm_and_a_restart() {
    let mut relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let before = exchange_before_stop(&relay, &creds);
    let status = relay.sigterm();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    relay.restart_same_data_dir();
    resume_after_restart(&relay, &creds, &before);
}

#[test]
fn a_reliable_claim_survives_kill_9_and_a_restart() {
    let mut relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let before = exchange_before_stop(&relay, &creds);
    relay.kill_9();
    relay.restart_same_data_dir();
    resume_after_restart(&relay, &creds, &before);
}

/// Sends `text` as the session's next message and expects the relay to close with `code`;
/// returns the envelopes that came before the close.
fn closes_with(ws: &mut Ws, text: &str, code: u16) -> Vec<Value> {
    send_text(ws, text);
    let (before, got) = drain_until_close(ws);
    assert_eq!(got, code, "{text} closes with {code}");
    before
        .into_iter()
        .map(|m| match m {
            Message::Text(t) => serde_json::from_str(&t).expect("an envelope"),
            other => panic!("not an envelope: {}", show(&other)),
        })
        .collect()
}

#[test]
fn bad_input_on_a_reliable_session_gets_its_documented_answer_and_the_claim_goes_on() {
    let relay = Relay::start(&["--shards", "1"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let (mut device, token, url, _control) = claimed(&relay, &creds);

    // §11: the first message of every reliable session is resume.
    let mut ws = open_reliable(&relay, &url, &token);
    closes_with(&mut ws, r#"{"type":"ack","seq":0}"#, 1002);
    // A resume above 0 on a claim that was never resumed names another claim's numbers.
    let mut ws = open_reliable(&relay, &url, &token);
    let answer = closes_with(&mut ws, r#"{"type":"resume","seq":3}"#, 4409);
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(answer[0]["type"], "resume_failed", "{answer:?}");

    let (mut pos, _) = ReliablePos::open(&relay, &url, &token, 0);
    for n in 1..=3 {
        device.send_text(&device_text(n));
    }
    pos.wait_device(3);
    pos.processed(2);

    // A malformed envelope: not JSON, then JSON of no §11 type, then a binary message.
    closes_with(&mut pos.ws, "{not json", 1002);
    let (mut pos, _) = ReliablePos::open(&relay, &url, &token, 2);
    pos.wait_device(3);
    closes_with(&mut pos.ws, r#"{"type":"hello","seq":1}"#, 1002);
    let (mut pos, _) = ReliablePos::open(&relay, &url, &token, 2);
    pos.wait_device(3);
    send_binary(&mut pos.ws, br#"{"type":"ack","seq":3}"#);
    let (_, code) = drain_until_close(&mut pos.ws);
    assert_eq!(code, 1002, "§11 envelopes are text");

    // An ack beyond what was sent on this session.
    let (mut pos, _) = ReliablePos::open(&relay, &url, &token, 2);
    pos.wait_device(3);
    closes_with(&mut pos.ws, r#"{"type":"ack","seq":4}"#, 1002);

    // A POS message that skips a number.
    let (mut pos, _) = ReliablePos::open(&relay, &url, &token, 2);
    pos.wait_device(3);
    closes_with(
        &mut pos.ws,
        r#"{"type":"data","seq":2,"text":"skips 1"}"#,
        1002,
    );

    // Resume from the future: device message 4 was never numbered.
    let mut ws = open_reliable(&relay, &url, &token);
    let answer = closes_with(&mut ws, r#"{"type":"resume","seq":4}"#, 4409);
    assert_eq!(answer[0]["type"], "resume_failed", "{answer:?}");
    // Resume from before what the POS already acknowledged: no longer held.
    let mut ws = open_reliable(&relay, &url, &token);
    let answer = closes_with(&mut ws, r#"{"type":"resume","seq":1}"#, 4409);
    assert_eq!(answer[0]["type"], "resume_failed", "{answer:?}");

    // None of it broke the claim: the POS resumes where it was, both ways go on.
    let (mut pos, resumed) = ReliablePos::open(&relay, &url, &token, 2);
    assert_eq!(resumed, 0, "no POS message was ever accepted");
    pos.wait_device(3);
    assert_eq!(pos.received, (3..=3).map(device_text).collect::<Vec<_>>());
    pos.send(1, &pos_text(1));
    device_gets(&mut device, &pos_text(1));
    pos.wait_ack(1);
    device.send_text(&device_text(4));
    pos.wait_device(4);
}

#[test]
fn a_pos_that_never_acks_stops_the_device_at_the_window_and_memory_stays_bounded() {
    const MESSAGE: usize = 64 * 1024;
    const MESSAGES: u64 = 256; // 16 MiB, far beyond the window and the socket buffers
    let relay = Relay::start(&["--shards", "1", "--reliable-window", "256KiB"]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let (device, token, url, _control) = claimed(&relay, &creds);
    let (mut pos, _) = ReliablePos::open(&relay, &url, &token, 0);
    let baseline = relay.rss_kib();

    let frames = SeqFrames::new(MESSAGE);
    let mut dev_ws = device.ws;
    set_write_timeout(&mut dev_ws, Some(Duration::from_secs(120)));
    let dev_tcp = tcp_of(&mut dev_ws).try_clone().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let frames = frames.clone();
        let sent = sent.clone();
        std::thread::spawn(move || {
            for n in 1..=MESSAGES {
                send_binary(&mut dev_ws, &frames.make(n));
                sent.store(n, Ordering::SeqCst);
            }
            dev_ws
        })
    };

    // The device is stopped: its socket has bytes the relay's kernel has not taken, and
    // its writer stays where it is while the POS acks nothing.
    let mut last = u64::MAX;
    let stuck = wait_for(Duration::from_secs(60), || {
        let now = sent.load(Ordering::SeqCst);
        let blocked = now == last && now < MESSAGES && unacked_bytes(&dev_tcp) > 0;
        last = now;
        blocked.then_some(now)
    });
    let stuck_at = stuck.expect("the device's writes never blocked: the relay read on");
    let grown = relay.rss_kib().saturating_sub(baseline);
    eprintln!("device stopped after {stuck_at} messages; relay VmRSS grew {grown} KiB");
    assert!(
        stuck_at < MESSAGES,
        "the relay read everything without an ack"
    );
    assert!(
        grown < 12 * 1024,
        "the relay holds far more than its window: VmRSS grew {grown} KiB"
    );

    // The POS now processes what it gets, acking as it goes: every message arrives, in
    // order, once, and the device finishes.
    let mut next = 1;
    while next <= MESSAGES {
        let v = recv_json(&mut pos.ws);
        match v["type"].as_str() {
            Some("data") => {
                assert_eq!(v["seq"], json!(next), "in order, once each");
                let payload = STANDARD
                    .decode(v["binary"].as_str().expect("binary data"))
                    .expect("base64");
                assert_eq!(frames.check(&payload), next, "byte-exact");
                pos.processed(next);
                next += 1;
            }
            Some("ack") => {}
            _ => panic!("unexpected envelope {v}"),
        }
    }
    let _dev_ws = writer.join().expect("device writer");
    assert_eq!(sent.load(Ordering::SeqCst), MESSAGES);
}

#[test]
fn releasing_a_reliable_claim_reports_what_waits_and_the_log_forgets_it() {
    let mut relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let (device, token, url, mut control) = claimed(&relay, &creds);
    let (mut pos, _) = ReliablePos::open(&relay, &url, &token, 0);
    device_goes_offline(device, &mut control);
    // Two POS messages wait, durably, for the device: acknowledged.
    pos.send(1, "a");
    pos.send(2, "bc");
    pos.wait_ack(2);
    // §6: "claim released" is a reason to report them; the session closes with 4001.
    let released = control.release(TSN);
    assert_eq!(released["type"], "released", "{released}");
    assert_eq!(expect_close(&mut pos.ws), 4001);
    let report = loop {
        let event = control.next_event();
        if event["type"] == "undelivered" {
            break event;
        }
    };
    assert_eq!(
        report,
        json!({"type": "undelivered", "tsn": TSN, "frames": 2, "bytes": 3})
    );
    // The log forgot the claim: after a restart nothing of it comes back (the device has
    // not registered again, so its session is unknown).
    relay.kill_9();
    relay.restart_same_data_dir();
    let token = relay.token("acme", &creds);
    let auth = format!("Bearer {token}");
    let status = relay.ws_status(
        &url,
        &[
            ("Authorization", &auth),
            ("Sec-WebSocket-Protocol", RELIABLE),
        ],
    );
    assert_eq!(status, 404, "no claim, no session after the restart");
}

/// A child process killed (and reaped) when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `posrelay device-sim` for `TSN`, once it says it is online.
fn device_sim(relay: &Relay, creds: &Creds) -> Killed {
    use std::io::BufRead as _;
    let mut device = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_posrelay"))
            .args(["device-sim", "--relay", &relay.ws_url(""), "--tsn", TSN])
            .env("POSRELAY_CLIENT_ID", &creds.client_id)
            .env("POSRELAY_CLIENT_SECRET", &creds.client_secret)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("device-sim starts"),
    );
    let stdout = device.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let online = format!("[device {TSN}] online");
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("device-sim goes online");
        if line == online {
            return device;
        }
    }
}

/// `posrelay pos-sim --reliable` with `input`; (success, stdout).
fn pos_sim_reliable(relay: &Relay, creds: &Creds, input: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_posrelay"))
        .args(["pos-sim", "--reliable", "--relay", &relay.ws_url("")])
        .args([
            "--domain", "acme", "--tsn", TSN, "--split", "blank", "--input",
        ])
        .arg(input)
        .env("POSRELAY_CLIENT_ID", &creds.client_id)
        .env("POSRELAY_CLIENT_SECRET", &creds.client_secret)
        .output()
        .expect("pos-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.success(),
        format!("{stdout}\n--- stderr ---\n{stderr}"),
    )
}

#[test]
fn pos_sim_reliable_exchanges_numbered_messages_with_device_sim() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let _device = device_sim(&relay, &creds);
    let input = relay.scratch().join("requests.txt");
    std::fs::write(
        &input,
        "<TRANSACTION>\n<FUNCTION_TYPE>SESSION</FUNCTION_TYPE>\n<COMMAND>START</COMMAND>\n</TRANSACTION>\n\n{\"traceId\":\"t-1\",\"action\":\"heartbeat\",\"payload\":{}}\n",
    )
    .unwrap();
    for run in 1..=2 {
        let (ok, out) = pos_sim_reliable(&relay, &creds, &input);
        assert!(ok, "run {run}: {out}");
        assert!(
            out.contains("reliable session open (posrelay.reliable.v1)"),
            "{out}"
        );
        assert!(
            out.contains("< [1] reply #1 in ")
                && out.contains("<RESPONSE_TEXT>Session Started</RESPONSE_TEXT>"),
            "run {run}: each run is a claim of its own, numbered from 1: {out}"
        );
        assert!(out.contains("< [2] reply #2 in "), "{out}");
        assert!(out.contains("\"traceId\":\"t-1\""), "{out}");
        assert!(
            out.contains("done: 2 sent, 2 answered, 0 without reply"),
            "{out}"
        );
    }
}

#[test]
fn the_javascript_client_is_served_on_the_admin_listener() {
    let relay = Relay::start(&["--shards", "1"]);
    let url = relay.admin_url("/demo/posrelay-reliable.js");
    let resp = relay.http("GET", &url, &[], None);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(
        resp.header("Content-Type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        resp.body,
        include_str!("../../core/src/io/server/demo/posrelay-reliable.js"),
        "the file, as tested by core/tests/js"
    );
    // No admin token needed, like the page that uses it.
    assert!(resp.body.contains("posrelay.reliable.v1"));
}
