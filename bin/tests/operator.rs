//! Issue 16's "should be better": what operators of nginx, Centrifugo and websocat reach
//! for, checked on the real binary: `--version`, help without repeated defaults, shell
//! completions, a man page, `/favicon.ico`, `posrelay_build_info`, audit lines.

mod common;
use common::*;

use std::process::Command;
use std::time::Duration;

fn posrelay(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_posrelay"))
        .args(args)
        .env_remove("POSRELAY_ADMIN_TOKEN")
        .output()
        .expect("run posrelay");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The commit this test was built from, if this is a git checkout.
fn head_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn version_names_the_commit_and_build_date_on_every_command() {
    for args in [
        &["--version"][..],
        &["serve", "--version"],
        &["admin", "--version"],
        &["pos-sim", "--version"],
    ] {
        let (ok, out, err) = posrelay(args);
        assert!(ok, "{args:?}: {err}");
        let line = out.trim();
        assert!(
            line.starts_with("posrelay") && line.contains(" 0."),
            "{args:?}: {line}"
        );
        assert!(line.contains("(commit "), "{line}");
        let date = line
            .rsplit_once("built ")
            .map(|(_, d)| d.trim_end_matches(')'))
            .unwrap_or("");
        let shaped = date.len() == 10
            && date.chars().enumerate().all(|(i, c)| {
                if i == 4 || i == 7 {
                    c == '-'
                } else {
                    c.is_ascii_digit()
                }
            });
        assert!(shaped, "a YYYY-MM-DD build date: {line}");
        if let Some(commit) = head_commit() {
            // The binary may be one commit behind the work tree only if rebuilt since.
            assert!(
                line.contains(&commit) || line.contains("-dirty"),
                "{line} vs HEAD {commit}"
            );
        }
    }
}

#[test]
fn echo_help_shows_each_default_once() {
    let (ok, out, _) = posrelay(&["echo", "--help"]);
    assert!(ok);
    for line in out.lines() {
        assert!(line.matches("[default:").count() <= 1, "{line}");
    }
    assert!(out.contains("[default: 127.0.0.1:9001]"), "{out}");
}

#[test]
fn completions_and_man_page_come_from_the_cli() {
    let (ok, bash, err) = posrelay(&["completions", "bash"]);
    assert!(ok, "{err}");
    for word in [
        "_posrelay",
        "serve",
        "check-config",
        "--admin-token-file",
        "pos-sim",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let (ok, zsh, _) = posrelay(&["completions", "zsh"]);
    assert!(ok && zsh.starts_with("#compdef posrelay"), "{zsh:.80}");
    let (ok, man, err) = posrelay(&["man"]);
    assert!(ok, "{err}");
    assert!(
        man.starts_with(".ie \\n(.g .ds Aq") || man.contains(".TH posrelay"),
        "{man:.200}"
    );
    assert!(man.contains(".TH posrelay 1"), "{man:.300}");
    assert!(man.contains("serve"), "the man page lists the commands");
}

#[test]
fn admin_listener_serves_a_favicon_and_build_info_without_a_token() {
    let relay = Relay::start(&[]);
    let r = relay.http("GET", &relay.admin_url("/favicon.ico"), &[], None);
    assert_eq!(r.status, 204, "not 401: {}", r.body);
    let text = relay.metrics();
    let line = text
        .lines()
        .find(|l| l.starts_with("posrelay_build_info{"))
        .unwrap_or_else(|| panic!("no posrelay_build_info in\n{text}"));
    assert!(line.ends_with("} 1"), "{line}");
    assert!(line.contains("version=\"0."), "{line}");
    if let Some(commit) = head_commit() {
        assert!(line.contains(&commit) || line.contains("-dirty"), "{line}");
    }
}

#[test]
fn check_config_reports_every_problem_and_its_exit_status_says_so() {
    use std::os::unix::fs::PermissionsExt as _;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let config = work.path().join("posrelay.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:7001\"\nadmin_listen = \"127.0.0.1:7002\"\ndata_dir = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let (ok, out, err) = posrelay(&["check-config", "--config", config_arg]);
    assert!(ok, "a good configuration passes: {out}{err}");
    assert!(out.contains("ok:") && !out.contains("problem:"), "{out}");
    assert!(!data.exists(), "check-config creates nothing");
    // A store other users may read, a TLS key that is not there, overlapping listeners.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("posrelay.redb"), b"").unwrap();
    std::fs::set_permissions(
        data.join("posrelay.redb"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (ok, out, err) = posrelay(&[
        "check-config",
        "--config",
        config_arg,
        "--admin-listen",
        "127.0.0.1:7001",
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
    ]);
    assert!(!ok, "problems fail the check: {out}");
    assert_eq!(out.matches("problem:").count(), 3, "{out}");
    assert!(out.contains("share a port"), "{out}");
    assert!(out.contains("chmod 600"), "{out}");
    assert!(out.contains("/nonexistent/cert.pem"), "{out}");
    assert!(err.contains("3 problems"), "{err}");
    // A configuration file that does not parse is one problem, named.
    std::fs::write(&config, "lisen = 1\n").unwrap();
    let (ok, out, _) = posrelay(&["check-config", "--config", config_arg]);
    assert!(!ok);
    assert!(
        out.contains("problem:") && out.contains("posrelay.toml"),
        "{out}"
    );
}

/// Lines of the relay's stderr so far.
fn log_lines(relay: &Relay) -> Vec<String> {
    relay
        .stderr_tail(100_000)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The provisioning calls, a refused registration, a refused token request and a
/// device that connects and closes: every kind of line the cases below look at.
fn log_worthy_traffic(relay: &Relay) -> Creds {
    let creds = relay.provision("acme", "s1", &["10000001"]);
    let r = relay.http(
        "POST",
        &relay.admin_url("/admin/v1/domains"),
        &[("Authorization", "Bearer wrong")],
        Some(r#"{"domain":"x"}"#),
    );
    assert_eq!(r.status, 401);
    let (reply, _) = register_raw(
        relay,
        &serde_json::json!({"type":"register","tsn":"10000001","client_id":creds.client_id,"client_secret":"not-the-secret-42"})
            .to_string(),
    );
    assert_eq!(reply["type"], "error");
    let basic = basic_auth(&creds.client_id, "not-the-secret-42");
    let r = relay.token_request(
        "acme",
        &[("Authorization", &basic)],
        "grant_type=client_credentials",
    );
    assert_eq!(r.status, 401);
    let mut device = Device::register_and_connect(relay, "10000001", &creds);
    device
        .ws
        .close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        }))
        .unwrap();
    let _ = device.ws.read();
    creds
}

#[test]
fn json_logs_have_one_message_each_and_name_who_failed_but_never_a_secret() {
    let relay = Relay::start(&["--log-format", "json"]);
    let creds = log_worthy_traffic(&relay);
    let lines = wait_for(Duration::from_secs(10), || {
        let lines = log_lines(&relay);
        lines
            .iter()
            .any(|l| l.contains("connection closed"))
            .then_some(lines)
    })
    .expect("a connection closed line");
    for line in &lines {
        assert_eq!(line.matches("\"message\":").count(), 1, "{line}");
        assert!(!line.contains(&creds.client_secret), "a secret in {line}");
        assert!(!line.contains("not-the-secret-42"), "a secret in {line}");
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    let find = |message: &str| -> serde_json::Value {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("\"message\":\"{message}\"")))
            .unwrap_or_else(|| panic!("no {message:?} line in {lines:#?}"));
        serde_json::from_str::<serde_json::Value>(line).unwrap()["fields"].clone()
    };
    let refused = find("registration refused");
    assert_eq!(refused["tsn"], "10000001");
    assert_eq!(refused["client_id"], creds.client_id.as_str());
    assert_eq!(refused["peer"], "127.0.0.1");
    assert_eq!(refused["code"], "invalid_client");
    assert!(refused["reason"].is_string());
    let token = find("token request refused");
    assert_eq!(token["client_id"], creds.client_id.as_str());
    assert_eq!(token["status"], 401);
    let audits: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.contains("\"message\":\"admin call\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["fields"].clone())
        .collect();
    assert!(
        audits
            .iter()
            .any(|a| a["action"] == "create_client" && a["status"] == 201 && a["target"] == "acme"),
        "{audits:#?}"
    );
    assert!(
        audits.iter().any(|a| a["action"] == "create_domain"
            && a["status"] == 401
            && a["authenticated"] == false),
        "{audits:#?}"
    );
    let closed = find("connection closed");
    assert!(
        closed["close_code"].is_number(),
        "a number, not Some(..): {closed}"
    );
}

#[test]
fn text_logs_show_values_not_options() {
    let relay = Relay::start(&[]);
    log_worthy_traffic(&relay);
    let lines = wait_for(Duration::from_secs(10), || {
        let lines = log_lines(&relay);
        lines
            .iter()
            .any(|l| l.contains("connection closed"))
            .then_some(lines)
    })
    .expect("a connection closed line");
    for line in &lines {
        assert!(!line.contains("Some("), "{line}");
        assert!(!line.contains("None"), "{line}");
    }
    let closed = lines
        .iter()
        .find(|l| l.contains("connection closed"))
        .unwrap();
    assert!(closed.contains("close_code=1000"), "{closed}");
}

/// Runs `posrelay device-sim` with `args` until a stdout line contains `until` (or it
/// exits); returns the lines and whether it exited (with what status).
fn device_sim_until(args: &[&str], until: &str) -> (Vec<String>, Option<std::process::ExitStatus>) {
    use std::io::BufRead as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_posrelay"))
        .arg("device-sim")
        .args(args)
        .env_remove("POSRELAY_CLIENT_ID")
        .env_remove("POSRELAY_CLIENT_SECRET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn device-sim");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Ok(line) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let done = line.contains(until);
        lines.push(line);
        if done {
            break;
        }
    }
    let status = wait_for(Duration::from_secs(5), || child.try_wait().unwrap());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (lines, status)
}

#[test]
fn device_sim_gives_up_on_wrong_credentials_and_says_what_to_fix() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &["10000001"]);
    let url = format!("ws://{}", relay.relay_addr);
    let (lines, status) = device_sim_until(
        &[
            "--relay",
            &url,
            "--tsn",
            "10000001",
            "--client-id",
            &creds.client_id,
            "--client-secret",
            "wrong",
        ],
        "giving up",
    );
    let status = status.unwrap_or_else(|| panic!("device-sim kept retrying: {lines:#?}"));
    assert!(!status.success());
    let last = lines.last().unwrap();
    assert!(last.contains("invalid_client"), "{last}");
    assert!(last.contains("POSRELAY_CLIENT_SECRET"), "{last}");
    assert!(
        !lines.iter().any(|l| l.contains("reconnecting")),
        "no retry: {lines:#?}"
    );
}

#[test]
fn simulators_explain_tls_mistakes() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let relay = Relay::start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let creds = ["--tsn", "1", "--client-id", "c", "--client-secret", "s"];
    // wss:// without --ca-file: a private CA the public roots do not know.
    let wss = format!("wss://localhost:{}", relay.relay_addr.port());
    let mut args = vec!["--relay", wss.as_str()];
    args.extend(creds);
    let (lines, _) = device_sim_until(&args, "offline");
    let line = lines.last().unwrap();
    assert!(line.contains("--ca-file"), "{line}");
    assert_eq!(
        line.matches("UnknownIssuer").count(),
        1,
        "said once: {line}"
    );
    // ws:// against the TLS port.
    let ws = format!("ws://{}", relay.relay_addr);
    let mut args = vec!["--relay", ws.as_str()];
    args.extend(creds);
    let (lines, _) = device_sim_until(&args, "offline");
    let line = lines.last().unwrap();
    assert!(line.contains("use wss://"), "{line}");
}

#[test]
fn the_admin_cli_lists_and_deletes_domains_stores_and_clients() {
    let relay = Relay::start(&[]);
    let creds = relay.provision("acme", "s1", &[]);
    let admin = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_posrelay"))
            .args(["admin", "--admin-url", &relay.admin_url("")])
            .args(args)
            .env("POSRELAY_ADMIN_TOKEN", &relay.admin_token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, _) = admin(&["list-domains"]);
    assert!(ok && out.trim() == "acme", "{out}");
    let (ok, out, _) = admin(&["list-stores", "--domain", "acme"]);
    assert!(ok && out.contains("s1") && out.contains("m1"), "{out}");
    let (ok, out, _) = admin(&["--json", "list-clients", "--domain", "acme"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["clients"][0]["client_id"], creds.client_id.as_str());
    assert_eq!(v["clients"][0]["store"], "s1");
    assert!(!out.contains(&creds.client_secret));
    // Not empty: refused with what to do, in CLI words.
    let (ok, _, err) = admin(&["delete-store", "--domain", "acme", "s1"]);
    assert!(!ok);
    assert!(
        err.contains("still has 1 client") && err.contains("delete those first"),
        "{err}"
    );
    let (ok, _, _) = admin(&["delete-client", "--domain", "acme", &creds.client_id]);
    assert!(ok);
    let (ok, out, err) = admin(&["delete-store", "--domain", "acme", "s1"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "deleted store s1 of domain acme");
    let (ok, out, err) = admin(&["delete-domain", "acme"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "deleted domain acme");
    let (ok, out, _) = admin(&["list-domains"]);
    assert!(ok && out.trim() == "no domains", "{out}");
    let (ok, _, err) = admin(&["list-stores", "--domain", "acme"]);
    assert!(!ok && err.contains("posrelay admin create-domain"), "{err}");
}

#[test]
fn a_rotated_secret_keeps_the_old_one_working_for_its_grace_only() {
    let relay = Relay::start(&[]);
    let old = relay.provision("acme", "s1", &["10000001"]);
    let rotate = |grace: &str, seconds: u64| -> Creds {
        let before = unix_now();
        let out = Command::new(env!("CARGO_BIN_EXE_posrelay"))
            .args(["admin", "--admin-url", &relay.admin_url(""), "--json"])
            .args([
                "rotate-secret",
                "--domain",
                "acme",
                "--grace",
                grace,
                &old.client_id,
            ])
            .env("POSRELAY_ADMIN_TOKEN", &relay.admin_token)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let until = v["previous_secret_valid_until"].as_u64().unwrap();
        assert!(
            (before + seconds..=unix_now() + seconds).contains(&until),
            "{v}"
        );
        Creds {
            client_id: v["client_id"].as_str().unwrap().to_owned(),
            client_secret: v["client_secret"].as_str().unwrap().to_owned(),
        }
    };
    // Warm the credential cache with the old secret: rotation must not leave it there.
    let _ = register(&relay, "10000001", &old);
    let new = rotate("1h", 3600);
    assert_eq!(new.client_id, old.client_id);
    let _ = relay.token("acme", &new);
    let _ = relay.token("acme", &old);
    let reg = register(&relay, "10000001", &old);
    assert!(
        !reg.session_id.is_empty(),
        "a terminal not moved yet still registers"
    );
    // Rotated again without grace: the secret before is refused at once, everywhere.
    let newest = rotate("0s", 0);
    let _ = relay.token("acme", &newest);
    let basic = basic_auth(&new.client_id, &new.client_secret);
    let r = relay.token_request(
        "acme",
        &[("Authorization", &basic)],
        "grant_type=client_credentials",
    );
    assert_eq!(r.status, 401, "the rotated-out secret after its grace");
    let (reply, _) = register_raw(
        &relay,
        &serde_json::json!({"type":"register","tsn":"10000001","client_id":new.client_id,"client_secret":new.client_secret}).to_string(),
    );
    assert_eq!(reply["code"], "invalid_client", "{reply}");
}

#[test]
fn the_served_certificates_expiry_is_a_gauge_updated_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    let write = |not_after: Option<(i32, u8, u8)>| {
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        if let Some((y, m, d)) = not_after {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
    };
    write(None);
    let relay = Relay::start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let gauge = || {
        metric_sum(
            &relay.metrics(),
            "posrelay_tls_certificate_expiry_timestamp_seconds",
            &[],
        )
    };
    // rcgen's default notAfter: 4096-01-01T00:00:00Z.
    assert_eq!(gauge(), 67_090_118_400.0);
    write(Some((2030, 1, 2)));
    relay.signal(libc::SIGHUP);
    let reloaded = wait_for(Duration::from_secs(10), || {
        (gauge() == 1_893_542_400.0).then_some(())
    });
    assert!(
        reloaded.is_some(),
        "the gauge follows the reloaded certificate: {}",
        gauge()
    );
    // check-config says when it expires.
    let (ok, out, _) = posrelay(&[
        "check-config",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("expires at 2030-01-02T00:00:00Z"), "{out}");
}
