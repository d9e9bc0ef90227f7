//! Issue 11: `posrelay pos-sim --basic` (client credentials on the upgrades, PROTOCOL.md
//! §7c) and `pos-sim --one-step` (claim and session in one upgrade, §5a), against a
//! terminal run by `posrelay device-sim`.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TSN: &str = "12345678";

/// Kills the simulator when the test ends, pass or fail.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A device-sim for `TSN`, online.
fn device_sim(relay: &Relay, creds: &Creds) -> Killed {
    let mut device = Command::new(env!("CARGO_BIN_EXE_posrelay"))
        .args(["device-sim", "--relay", &relay.ws_url(""), "--tsn", TSN])
        .env("POSRELAY_CLIENT_ID", &creds.client_id)
        .env("POSRELAY_CLIENT_SECRET", &creds.client_secret)
        .stdout(Stdio::piped())
        .spawn()
        .map(Killed)
        .unwrap();
    let stdout = device.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("device-sim goes online");
        if line == format!("[device {TSN}] online") {
            return device;
        }
    }
}

/// Runs pos-sim with `flags` on two messages; its stdout (asserting success).
fn pos_sim(relay: &Relay, creds: &Creds, flags: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("requests.txt");
    std::fs::write(
        &input,
        "{\"traceId\":\"t-1\",\"action\":\"heartbeat\",\"payload\":{}}\n{\"traceId\":\"t-2\",\"action\":\"heartbeat\",\"payload\":{}}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_posrelay"))
        .args(["pos-sim", "--relay", &relay.ws_url(""), "--tsn", TSN])
        .args(flags)
        .arg("--input")
        .arg(&input)
        .env("POSRELAY_CLIENT_ID", &creds.client_id)
        .env("POSRELAY_CLIENT_SECRET", &creds.client_secret)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{flags:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"traceId\":\"t-1\"") && stdout.contains("\"traceId\":\"t-2\""),
        "{flags:?}: {stdout}"
    );
    assert!(
        stdout.contains("done: 2 sent, 2 answered, 0 without reply"),
        "{flags:?}: {stdout}"
    );
    stdout
}

#[test]
fn pos_sim_connects_with_basic_credentials_and_in_one_step() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[TSN]);
    let _device = device_sim(&relay, &creds);
    let before = metric_sum(&relay.metrics(), "posrelay_tokens_issued_total", &[]);
    // --basic: no token, no --domain; a control channel and a session with Basic.
    let out = pos_sim(&relay, &creds, &["--basic"]);
    assert!(out.contains("control channel open"), "{out}");
    assert!(out.contains(&format!("claimed {TSN} (session ")), "{out}");
    // --one-step with Basic: no control channel at all.
    let out = pos_sim(&relay, &creds, &["--basic", "--one-step"]);
    assert!(!out.contains("control channel open"), "{out}");
    assert!(
        out.contains(&format!("claimed {TSN} and opened its session in one step")),
        "{out}"
    );
    let after = metric_sum(&relay.metrics(), "posrelay_tokens_issued_total", &[]);
    assert_eq!(before, after, "--basic never asks for a token");
    // --one-step with a token.
    let out = pos_sim(&relay, &creds, &["--domain", "acme", "--one-step"]);
    assert!(out.contains("in one step"), "{out}");
    let after = metric_sum(&relay.metrics(), "posrelay_tokens_issued_total", &[]);
    assert_eq!(after, before + 1.0, "one token for the one-step session");
}
