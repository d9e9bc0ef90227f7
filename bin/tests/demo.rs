//! `posrelay demo` in a fresh data directory, as a new user would run it: every step
//! must pass, the summary must say so, and a second run on the same directory (the
//! tenant already provisioned) must pass too.

use std::process::Command;
use std::time::{Duration, Instant};

const STEPS: [&str; 14] = [
    "relay started",
    "provisioned the demo tenant",
    "terminals registered and online",
    "POS got an access token",
    "POS control channel lists devices",
    "POS claimed both terminals",
    "POS sessions open",
    "SCA XML transaction",
    "ShieldConex JSON tokenize",
    "ShieldConex heartbeats",
    "terminal went offline",
    "POS sent while it was offline",
    "terminal back, queue delivered",
    "latency through the relay",
];

fn run_demo(data_dir: &std::path::Path) -> (String, String, bool) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_posrelay"))
        .args(["demo", "--data-dir"])
        .arg(data_dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--heartbeat",
            "200ms",
            "--round-trips",
            "200",
            "--exit-after-summary",
        ])
        .env_remove("POSRELAY_ADMIN_TOKEN")
        .output()
        .expect("posrelay demo runs");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the demo took {:?}",
        started.elapsed()
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

fn check_every_step_passed(stdout: &str, stderr: &str, ok: bool) {
    let context = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(ok, "posrelay demo failed\n{context}");
    for (i, step) in STEPS.iter().enumerate() {
        let prefix = format!("[PASS] {:>2}. {step} ", i + 1);
        assert!(
            stdout.lines().any(|l| l.starts_with(&prefix)),
            "step {} ({step}) did not pass\n{context}",
            i + 1
        );
    }
    assert!(
        !stdout.contains("[FAIL]") && !stdout.contains("[SKIP]"),
        "{context}"
    );
    assert!(
        stdout.lines().any(|l| l == "summary: all 14 steps passed"),
        "{context}"
    );
    // The latency histogram: bucket lines and the percentiles.
    assert!(
        stdout.contains("round-trip latency (microseconds):"),
        "{context}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("p50 ") && l.contains("(n = 200)")),
        "{context}"
    );
    assert!(stdout.lines().any(|l| l == "relay stopped"), "{context}");
}

#[test]
fn demo_passes_every_step_on_a_fresh_and_on_a_reused_data_dir() {
    let dir = std::env::temp_dir().join(format!("posrelay-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let (stdout, stderr, ok) = run_demo(&data);
    check_every_step_passed(&stdout, &stderr, ok);
    assert!(
        stdout.contains("(created domain, store, terminal, terminal)"),
        "{stdout}"
    );
    assert!(
        data.join("posrelay.redb").exists(),
        "the embedded store is in --data-dir"
    );

    let (stdout, stderr, ok) = run_demo(&data);
    check_every_step_passed(&stdout, &stderr, ok);
    assert!(stdout.contains("(kept from an earlier run)"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
