//! CI smoke: every scenario at tiny scale against every target, briefly.
//! Asserts that every pair was set up, every message came back intact, every
//! storm device came back, and that the figures are there. Never timing.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The bench, quiet, reporting JSON, never building the relay.
fn bench_quiet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_posrelay-bench"));
    c.args(["--quiet", "--json", "--no-build"]);
    c
}

fn bench() -> Command {
    let mut c = bench_quiet();
    c.arg("--ci");
    c
}

/// Runs the CI mode against `targets` and returns the JSON report.
fn run(targets: &[&str], extra: &[&str]) -> Value {
    run_with(bench(), targets, extra)
}

/// Runs `cmd` against `targets` and returns the JSON report.
fn run_with(mut cmd: Command, targets: &[&str], extra: &[&str]) -> Value {
    for t in targets {
        cmd.args(["--target", t]);
    }
    cmd.args(extra);
    let out = cmd.output().expect("posrelay-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "posrelay-bench --ci failed ({}):\n{stderr}",
        out.status
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

/// `targets`: the results' targets in order; in a TLS run posrelay's ws reference
/// follows posrelay (and `tls` is set on every other result).
fn check(report: &Value, targets: &[&str]) {
    check_run(report, targets, false)
}

fn check_run(report: &Value, targets: &[&str], tls: bool) {
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    let names: Vec<&str> = scenarios
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "latency",
            "small",
            "large",
            "many",
            "idle",
            "storm",
            "handshake"
        ]
    );
    for s in scenarios {
        let name = s["name"].as_str().unwrap();
        let results = s["results"].as_array().expect("results");
        let got: Vec<&str> = results
            .iter()
            .filter_map(|r| r["target"].as_str())
            .collect();
        assert_eq!(got, targets, "{name}");
        assert_eq!(s["tls"], tls, "{name}");
        for (i, r) in results.iter().enumerate() {
            let what = format!("{name}/{} (tls {})", r["target"], r["tls"]);
            // In a TLS run only posrelay's reference (the entry after posrelay) is ws.
            let reference =
                tls && i > 0 && results[i - 1]["target"] == "posrelay" && r["target"] == "posrelay";
            assert_eq!(r["tls"], tls && !reference, "{what}");
            assert!(r["error"].is_null(), "{what}: {}", r["error"]);
            assert!(
                r["target_placement"]
                    .as_str()
                    .is_some_and(|p| p.contains("allowed cpus")),
                "{what}: placement {}",
                r["target_placement"]
            );
            match s["work"]["kind"].as_str() {
                Some("load") => {
                    let l = &r["load"];
                    assert_eq!(l["pairs_up"], l["pairs"], "{what}");
                    assert!(l["round_trips"].as_u64().unwrap() > 0, "{what}: {l}");
                    assert_eq!(l["errors"], 0, "{what}: {l}");
                    assert_eq!(l["mismatches"], 0, "{what}: {l}");
                    assert_eq!(
                        l["latency"]["count"], l["round_trips"],
                        "{what}: every measured round trip is in the histogram"
                    );
                }
                Some("idle") => {
                    let i = &r["idle"];
                    assert_eq!(i["pairs_up"], i["pairs"], "{what}: {i}");
                    assert_eq!(i["errors"], 0, "{what}: {i}");
                    assert_eq!(i["mismatches"], 0, "{what}: {i}");
                    assert!(i["after"]["rss"].as_u64().unwrap() > 0, "{what}: {i}");
                }
                Some("storm") => {
                    let st = &r["storm"];
                    assert_eq!(st["online_before"], st["devices"], "{what}: {st}");
                    assert_eq!(st["failed_devices"], 0, "{what}: {st}");
                    assert!(st["all_online_secs"].is_number(), "{what}: {st}");
                    assert_eq!(
                        st["failures_unreadable"], 0,
                        "{what}: every failure was a readable refusal: {st}"
                    );
                }
                Some("handshake") => {
                    let h = &r["handshake"];
                    assert!(
                        h["full"]["connections"].as_u64().unwrap() > 0,
                        "{what}: {h}"
                    );
                    assert_eq!(h["full"]["resumed"], 0, "{what}: {h}");
                    if r["tls"] == true {
                        let resumed = &h["resumed"];
                        assert!(
                            resumed["resumed"].as_u64().unwrap() > 0,
                            "{what}: clients with a ticket resume: {h}"
                        );
                    } else {
                        assert!(h["resumed"].is_null(), "{what}: {h}");
                    }
                }
                other => panic!("{what}: unknown work {other:?}"),
            }
        }
    }
}

#[test]
fn peers_pass_every_scenario_at_tiny_scale() {
    let report = run(&["baseline", "direct"], &[]);
    check(&report, &["baseline", "direct"]);
}

#[test]
fn posrelay_passes_every_scenario_at_tiny_scale() {
    // `cargo test --workspace` builds the relay next to this binary.
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_posrelay-bench"));
    let relay = dir.with_file_name("posrelay");
    assert!(
        relay.exists(),
        "{} is missing: build it first (cargo build -p posrelay) or run cargo test --workspace",
        relay.display()
    );
    let report = run(&["posrelay"], &["--posrelay-bin", relay.to_str().unwrap()]);
    check(&report, &["posrelay"]);
    // The ratios need the peers; they are computed, not asserted (no timing).
    let small = &report["scenarios"][1];
    assert!(small["ratios"].as_array().is_some_and(|r| !r.is_empty()));
}

#[test]
fn every_target_passes_every_scenario_over_tls_at_tiny_scale() {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_posrelay-bench"));
    let relay = dir.with_file_name("posrelay");
    assert!(relay.exists(), "{} is missing", relay.display());
    let report = run(
        &["posrelay", "baseline", "direct"],
        &["--tls", "--posrelay-bin", relay.to_str().unwrap()],
    );
    check_run(
        &report,
        &["posrelay", "posrelay", "baseline", "direct"],
        true,
    );
    // The wss/ws ratios are computed from the same run (not asserted: no timing).
    let small = &report["scenarios"][1];
    assert!(small["ratios"].as_array().is_some_and(|r| r
        .iter()
        .any(|r| r["name"].as_str().unwrap().contains("wss"))));
}

/// Several 16 KiB messages in flight over TLS: one socket read then holds more than the
/// 16 KiB of plaintext rustls' client buffers, which the generator's TLS client must
/// take out before it hands rustls the rest (it failed every pair with "received
/// plaintext buffer full" before).
#[test]
fn large_messages_in_flight_over_tls_all_come_back() {
    // Not `--ci`, which runs every scenario: this one alone, as briefly.
    let mut cmd = bench_quiet();
    cmd.args(["--duration", "1s", "--warmup", "300ms", "--scale", "tiny"]);
    let report = run_with(
        cmd,
        &["direct"],
        &["--scenario", "large", "--tls", "--in-flight", "4"],
    );
    let result = &report["scenarios"][0]["results"][0];
    assert!(result["error"].is_null(), "{}", result["error"]);
    let load = &result["load"];
    assert_eq!(load["pairs_up"], 4, "{load}");
    assert_eq!(load["errors"], 0, "{load}");
    assert_eq!(load["mismatches"], 0, "{load}");
    assert!(
        load["round_trips"].as_u64().is_some_and(|n| n > 0),
        "{load}"
    );
}
