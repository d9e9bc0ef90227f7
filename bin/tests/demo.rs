//! `posrelay demo` in a fresh data directory, as a new user would run it: every step
//! must pass, the summary must say so, and a second run on the same directory (the
//! tenant already provisioned) must pass too.

mod common;

use common::Relay;
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

fn admin_cli(relay: &Relay, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_posrelay"))
        .args(["admin", "--admin-url", &relay.admin_url("")])
        .args(args)
        .env("POSRELAY_ADMIN_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn admin_cli_provisions_lists_and_disables_with_tables_and_json() {
    let relay = Relay::start(&[]);
    let token = relay.admin_token.clone();
    let ok = |args: &[&str]| {
        let (ok, out, err) = admin_cli(&relay, &token, args);
        assert!(ok, "posrelay admin {args:?} failed: {err}");
        out
    };
    assert_eq!(ok(&["create-domain", "acme"]).trim(), "created domain acme");
    ok(&["create-store", "--domain", "acme", "--merchant", "m1", "s1"]);
    let out = ok(&[
        "create-device",
        "--domain",
        "acme",
        "--store",
        "s1",
        "--make",
        "ingenico",
        "--model",
        "axium",
        "12345678",
    ]);
    assert!(
        out.contains("created terminal 12345678 (ingenico axium)"),
        "{out}"
    );
    let creds: serde_json::Value = serde_json::from_str(&ok(&[
        "--json",
        "create-client",
        "--domain",
        "acme",
        "--store",
        "s1",
    ]))
    .unwrap();
    assert!(
        creds["client_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{creds}"
    );
    assert!(
        creds["client_secret"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{creds}"
    );
    let table = ok(&["create-client", "--domain", "acme"]);
    assert!(
        table.contains("whole domain") && table.contains("shown only this once"),
        "{table}"
    );

    let table = ok(&["list-devices", "--domain", "acme"]);
    let row = table
        .lines()
        .find(|l| l.contains("12345678"))
        .expect(&table);
    assert!(
        row.contains("s1") && row.contains("yes") && row.contains("no"),
        "{table}"
    );

    ok(&["disable-device", "--domain", "acme", "12345678"]);
    let list: serde_json::Value =
        serde_json::from_str(&ok(&["list-devices", "--domain", "acme", "--json"])).unwrap();
    assert_eq!(list["devices"][0]["tsn"], "12345678");
    assert_eq!(list["devices"][0]["enabled"], false);
    assert_eq!(list["devices"][0]["online"], false);

    // Errors: the relay's reason on stderr, a non-zero exit.
    let (ok_, _, err) = admin_cli(&relay, &token, &["create-domain", "acme"]);
    assert!(!ok_ && err.contains("409"), "{err}");
    let (ok_, _, err) = admin_cli(&relay, "wrong", &["list-devices", "--domain", "acme"]);
    assert!(!ok_ && err.contains("401"), "{err}");
}

/// `posrelay admin pin-cert` (PROTOCOL.md §2a, §9): prints the certificate's SHA-256,
/// adds it beside the pins already there; `unpin-cert` removes one by file or by
/// fingerprint (either case); a certificate identifies one terminal only.
#[test]
fn admin_cli_pins_and_unpins_client_certificates() {
    use sha2::{Digest, Sha256};
    let relay = Relay::start(&[]);
    relay.provision("acme", "s1", &["12345678", "87654321"]);
    let token = relay.admin_token.clone();
    let ok = |args: &[&str]| {
        let (ok, out, err) = admin_cli(&relay, &token, args);
        assert!(ok, "posrelay admin {args:?} failed: {err}");
        out
    };
    let dir = tempfile::tempdir().unwrap();
    let mut certs = Vec::new();
    for name in ["old", "new"] {
        let made = rcgen::generate_simple_self_signed(vec![format!("terminal-{name}")]).unwrap();
        let path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&path, made.cert.pem()).unwrap();
        // An independent SHA-256 of the DER.
        let hex: String = Sha256::digest(made.cert.der())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        certs.push((path, hex));
    }
    let (old_pem, old_fp) = (certs[0].0.to_str().unwrap(), certs[0].1.as_str());
    let (new_pem, new_fp) = (certs[1].0.to_str().unwrap(), certs[1].1.as_str());
    let pins_of = |tsn: &str| -> Vec<String> {
        relay
            .admin_devices("acme")
            .into_iter()
            .find(|d| d["tsn"] == tsn)
            .and_then(|d| serde_json::from_value(d["client_cert_sha256"].clone()).ok())
            .unwrap_or_default()
    };

    let out = ok(&["pin-cert", "--domain", "acme", "12345678", old_pem]);
    assert!(
        out.contains(&format!("sha256 fingerprint: {old_fp}")),
        "{out}"
    );
    assert_eq!(pins_of("12345678"), vec![old_fp.to_owned()]);
    // Rotation: the new one beside the old; pinning again changes nothing.
    let out = ok(&[
        "--json", "pin-cert", "--domain", "acme", "12345678", new_pem,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["client_cert_sha256"], new_fp);
    ok(&["pin-cert", "--domain", "acme", "12345678", new_pem]);
    assert_eq!(
        pins_of("12345678"),
        vec![old_fp.to_owned(), new_fp.to_owned()]
    );
    // One terminal per certificate: 409 from the relay, nothing changed.
    let (pinned, _, err) = admin_cli(
        &relay,
        &token,
        &["pin-cert", "--domain", "acme", "87654321", old_pem],
    );
    assert!(!pinned && err.contains("409"), "{err}");
    assert!(pins_of("87654321").is_empty());
    // Unpin by file, then by fingerprint in upper case.
    ok(&["unpin-cert", "--domain", "acme", "12345678", old_pem]);
    assert_eq!(pins_of("12345678"), vec![new_fp.to_owned()]);
    ok(&[
        "unpin-cert",
        "--domain",
        "acme",
        "12345678",
        &new_fp.to_ascii_uppercase(),
    ]);
    assert!(pins_of("12345678").is_empty());
    let (unpinned, _, err) = admin_cli(
        &relay,
        &token,
        &["unpin-cert", "--domain", "acme", "12345678", new_fp],
    );
    assert!(!unpinned && err.contains("is not pinned"), "{err}");
    // Now free, the old certificate can identify the other terminal.
    ok(&["pin-cert", "--domain", "acme", "87654321", old_pem]);
    assert_eq!(pins_of("87654321"), vec![old_fp.to_owned()]);
    // What cannot be pinned says why.
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let (pinned, _, err) = admin_cli(
        &relay,
        &token,
        &[
            "pin-cert",
            "--domain",
            "acme",
            "12345678",
            not_pem.to_str().unwrap(),
        ],
    );
    assert!(!pinned && err.contains("holds no PEM certificate"), "{err}");
    let (pinned, _, err) = admin_cli(
        &relay,
        &token,
        &["pin-cert", "--domain", "acme", "99999999", new_pem],
    );
    assert!(!pinned && err.contains("provision it first"), "{err}");
}

#[test]
fn log_format_json_gives_json_lines_on_stderr() {
    let mut relay = Relay::start(&["--log-format", "json"]);
    // Something to log besides startup: a graceful stop.
    let exit = relay.sigterm();
    assert!(exit.success(), "SIGTERM drains and exits 0: {exit:?}");
    let err = relay.stderr_tail(10_000);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() >= 2,
        "the relay logged too little at info: {err}"
    );
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("draining")),
        "the drain is logged: {err}"
    );
}

/// The simulators against a `wss://` relay whose certificate only `--ca-file` vouches for:
/// device-sim answers, pos-sim prints each reply; without `--ca-file` pos-sim refuses the
/// unknown certificate.
#[test]
fn simulators_work_over_tls_with_a_ca_file() {
    use std::io::{BufRead, BufReader};
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("generate a self-signed certificate");
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut relay = Relay::start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    relay.trust(cert.cert.der().to_vec());
    let creds = relay.provision("acme", "s1", &["12345678"]);
    let url = relay.ws_url("");
    assert!(url.starts_with("wss://"), "{url}");

    /// Kills the simulator when the test ends, pass or fail.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut device = Command::new(env!("CARGO_BIN_EXE_posrelay"))
        .args([
            "device-sim",
            "--relay",
            &url,
            "--tsn",
            "ingenico-axium-12345678",
        ])
        .arg("--ca-file")
        .arg(&cert_path)
        .env("POSRELAY_CLIENT_ID", &creds.client_id)
        .env("POSRELAY_CLIENT_SECRET", &creds.client_secret)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map(Killed)
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = device.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("device-sim goes online over wss");
        if line == "[device ingenico-axium-12345678] online" {
            break;
        }
    }

    let input = dir.path().join("requests.txt");
    std::fs::write(
        &input,
        "<TRANSACTION>\n<FUNCTION_TYPE>SESSION</FUNCTION_TYPE>\n<COMMAND>START</COMMAND>\n</TRANSACTION>\n\n{\"traceId\":\"t-1\",\"action\":\"heartbeat\",\"payload\":{}}\n",
    )
    .unwrap();
    let pos = |ca: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_posrelay"));
        cmd.args([
            "pos-sim", "--relay", &url, "--domain", "acme", "--tsn", "12345678",
        ])
        .args(["--split", "blank", "--input"])
        .arg(&input)
        .env("POSRELAY_CLIENT_ID", &creds.client_id)
        .env("POSRELAY_CLIENT_SECRET", &creds.client_secret);
        if ca {
            cmd.arg("--ca-file").arg(&cert_path);
        }
        cmd.output().unwrap()
    };
    let out = pos(true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("claimed 12345678 (session "), "{stdout}");
    assert!(
        stdout.contains("< [1] reply in ")
            && stdout.contains("<RESPONSE_TEXT>Session Started</RESPONSE_TEXT>"),
        "{stdout}"
    );
    assert!(stdout.contains("\"traceId\":\"t-1\""), "{stdout}");
    assert!(
        stdout.contains("done: 2 sent, 2 answered, 0 without reply"),
        "{stdout}"
    );

    let out = pos(false);
    assert!(!out.status.success(), "an unknown certificate is refused");
    drop(device);
}

/// Issue 16: the next steps the demo prints run as printed, each on its own, from the
/// directory the demo was started in, with `posrelay` not on PATH (as after `cargo run`).
#[test]
fn the_demos_next_steps_work_where_the_user_stands() {
    use std::io::BufRead as _;
    use std::os::unix::process::CommandExt as _;
    let cwd = tempfile::tempdir().unwrap();
    let path = "/usr/bin:/bin";
    let mut demo = Command::new(env!("CARGO_BIN_EXE_posrelay"))
        .args(["demo", "--data-dir", "data"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args([
            "--shards",
            "2",
            "--heartbeat",
            "200ms",
            "--round-trips",
            "50",
        ])
        .current_dir(cwd.path())
        .env("PATH", path)
        .env_remove("POSRELAY_ADMIN_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut commands = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the demo prints its next steps");
        let line = line.trim_start().to_owned();
        if line.contains(" pos-sim ")
            || line.contains(" admin --admin-url")
            || line.contains(" device-sim ")
        {
            let done = line.contains("list-devices");
            commands.push(line);
            if done {
                break;
            }
        }
    }
    assert_eq!(commands.len(), 4, "{commands:#?}");
    for c in &commands {
        assert!(!c.contains("$"), "self-contained, no variables: {c}");
    }
    let sh = |line: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(line)
            .current_dir(cwd.path())
            .env_clear()
            .env("PATH", path)
            .output()
            .unwrap()
    };
    let out = sh(&commands[0]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {text}{}",
        commands[0],
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("< [1] reply in "), "{text}");
    let out = sh(&commands[1]);
    assert!(
        out.status.success(),
        "{}: {}",
        commands[1],
        String::from_utf8_lossy(&out.stderr)
    );
    // The terminal runs until stopped: in its own process group, stopped by its id.
    let mut device = Command::new("sh")
        .arg("-c")
        .arg(&commands[2])
        .current_dir(cwd.path())
        .env_clear()
        .env("PATH", path)
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(device.stdout.take().unwrap());
    let mut online = false;
    for line in lines.lines().map_while(Result::ok) {
        if line.ends_with("] online") {
            online = true;
            break;
        }
    }
    assert!(online, "{} goes online", commands[2]);
    let out = sh(&commands[3]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", commands[3]);
    let row = text
        .lines()
        .find(|l| l.contains("10000003"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("yes"), "online: {row}");
    let group = device.id() as libc::pid_t;
    // SAFETY: kill(2) has no memory effects; the group is the one this test created.
    unsafe { libc::kill(-group, libc::SIGTERM) };
    let _ = device.wait();
    // SAFETY: as above, our own child.
    unsafe { libc::kill(demo.id() as libc::pid_t, libc::SIGTERM) };
    let _ = demo.wait();
}
