//! Issue 16, "the first day in production": what a new operator hit, as black-box tests
//! on the real binary. Each case failed before its fix.

mod common;
use common::*;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;
use std::time::Duration;

const DOMAIN: &str = "acme";

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("posrelay-first-day-")
        .tempdir()
        .expect("temp dir")
}

fn stderr_file(dir: &std::path::Path) -> (Stdio, std::path::PathBuf) {
    let path = dir.join("stderr.log");
    (Stdio::from(File::create(&path).unwrap()), path)
}

/// Asserts that a start was refused without announcing anything; returns its stderr.
fn assert_refused(start: Start, stderr: &std::path::Path, what: &str) -> String {
    let text = || std::fs::read_to_string(stderr).unwrap_or_default();
    match start {
        Start::Ready(_) => panic!("{what}: posrelay started serving\n{}", text()),
        Start::Exited { status, stdout } => {
            assert!(!status.success(), "{what}: exit status {status}");
            assert!(
                stdout.iter().all(|l| !l.contains("listening")),
                "{what}: announced {stdout:?}"
            );
            let err = text();
            assert!(!err.contains("posrelay ready"), "{what}: {err}");
            err
        }
    }
}

// 1. A port held by another process refuses the start.

#[test]
fn a_second_instance_on_the_same_ports_is_refused_and_announces_nothing() {
    let first = Relay::start(&[]);
    let creds = first.provision(DOMAIN, "s1", &[]);
    let work = tempdir();
    let other = work.path().join("other");
    let relay_port = first.relay_addr.to_string();
    let admin_port = first.admin_addr.to_string();
    for (args, taken, flag) in [
        (
            [
                "--listen",
                relay_port.as_str(),
                "--admin-listen",
                "127.0.0.1:0",
            ],
            &relay_port,
            "--listen",
        ),
        (
            [
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                admin_port.as_str(),
            ],
            &admin_port,
            "--admin-listen",
        ),
    ] {
        let (stderr, path) = stderr_file(work.path());
        let mut all = args.to_vec();
        all.extend(["--data-dir", other.to_str().unwrap(), "--shards", "1"]);
        let start = start_serve(&all, "second", stderr, None);
        let err = assert_refused(start, &path, flag);
        assert!(err.contains(taken.as_str()), "names the address: {err}");
        assert!(err.contains("already in use"), "says why: {err}");
        assert!(err.contains(flag), "says what to change: {err}");
    }
    // The first relay alone still answers, every time, from its own store.
    for _ in 0..20 {
        let _ = first.token(DOMAIN, &creds);
    }
}

#[test]
fn a_port_held_by_any_other_program_is_refused() {
    // Not a posrelay: a plain listener (std sets SO_REUSEADDR, not SO_REUSEPORT).
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().to_string();
    let work = tempdir();
    let (stderr, path) = stderr_file(work.path());
    let data = work.path().join("data");
    let start = start_serve(
        &[
            "--listen",
            &taken,
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--shards",
            "1",
        ],
        "t",
        stderr,
        None,
    );
    let err = assert_refused(start, &path, "squatted port");
    assert!(err.contains(&taken) && err.contains("--listen"), "{err}");
}

/// Sockets of the local port `port` in TIME_WAIT, from /proc/net/tcp.
fn time_wait_on(port: u16) -> usize {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    text.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f[1].rsplit(':').next().unwrap();
            u16::from_str_radix(local_port, 16).unwrap() == port && f[3] == "06"
        })
        .count()
}

#[test]
fn a_restart_on_the_same_ports_is_not_refused_by_its_closing_connections() {
    let work = tempdir();
    let data = work.path().join("data");
    let relay = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let args = [
        "--listen",
        relay.as_str(),
        "--admin-listen",
        admin.as_str(),
        "--data-dir",
        data.to_str().unwrap(),
        "--shards",
        "2",
    ];
    let (stderr, _) = stderr_file(work.path());
    let Start::Ready(mut serving) = start_serve(&args, "t", stderr, None) else {
        panic!("first start refused");
    };
    // Requests the relay answers and then closes first: its side ends in TIME_WAIT.
    for _ in 0..4 {
        let mut s = raw_connect(serving.relay_addr);
        s.write_all(b"GET /nothing HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let head = read_head(&mut s);
        assert_eq!(head.status, 404);
        let _ = read_body(&mut s, &head);
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    }
    serving.signal(libc::SIGTERM);
    assert!(serving.wait_exit(Duration::from_secs(30)).success());
    assert!(
        time_wait_on(serving.relay_addr.port()) > 0,
        "the case needs connections in TIME_WAIT on the relay's port"
    );
    let (stderr, path) = stderr_file(work.path());
    match start_serve(&args, "t", stderr, None) {
        Start::Ready(_) => {}
        Start::Exited { .. } => panic!(
            "restart refused: {}",
            std::fs::read_to_string(path).unwrap()
        ),
    }
}

// 2. A log line that cannot be written never takes the relay down.

/// A device registration with a wrong secret: the relay logs the refusal.
fn failed_registration(addr: std::net::SocketAddr) {
    let url = format!("ws://{addr}{DEVICE_LISTENER}");
    let (mut ws, _) = tungstenite::connect(url.as_str()).expect("registration upgrade");
    send_json(
        &mut ws,
        &serde_json::json!({"type":"register","tsn":"1","client_id":"nobody","client_secret":"x"}),
    );
    let reply = recv_json(&mut ws);
    assert_eq!(reply["type"], "error", "{reply}");
}

fn admin_post(serving: &Serving, token: &str, path: &str, body: &str) -> u16 {
    let mut s = raw_connect(serving.admin_addr);
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_head(&mut s).status
}

#[test]
fn stderr_that_cannot_be_written_is_counted_and_the_relay_keeps_serving() {
    let work = tempdir();
    let data = work.path().join("data");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--shards",
        "2",
    ];
    let Start::Ready(mut serving) = start_serve(&args, "tok", Stdio::from(full), None) else {
        panic!("posrelay serve 2>/dev/full did not start");
    };
    failed_registration(serving.relay_addr);
    assert_eq!(
        admin_post(&serving, "tok", "/admin/v1/domains", r#"{"domain":"acme"}"#),
        201
    );
    let failures = wait_for(Duration::from_secs(5), || {
        let n = serving.metric("posrelay_log_write_failures_total");
        (n >= 2.0).then_some(n)
    });
    assert!(failures.is_some(), "failed log writes are counted");
    // Signals still work: the drain ends with status 0.
    serving.signal(libc::SIGTERM);
    assert!(serving.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn stderr_whose_reader_went_away_keeps_signals_and_serving() {
    let work = tempdir();
    let data = work.path().join("data");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--shards",
        "2",
    ];
    let Start::Ready(mut serving) = start_serve(&args, "tok", Stdio::piped(), None) else {
        panic!("did not start");
    };
    // `posrelay serve 2>&1 | head -3`: read three lines, then close the pipe.
    let stderr = serving.child.stderr.take().unwrap();
    let mut reader = BufReader::new(stderr);
    for _ in 0..1 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
    }
    drop(reader);
    // Every later line meets EPIPE: the relay keeps serving, counts them, and a signal
    // still drains it (the signal thread logs too).
    for _ in 0..3 {
        failed_registration(serving.relay_addr);
    }
    assert!(
        wait_for(Duration::from_secs(5), || (serving
            .metric("posrelay_log_write_failures_total")
            >= 1.0)
            .then_some(()))
        .is_some(),
        "EPIPE counted"
    );
    serving.signal(libc::SIGHUP);
    failed_registration(serving.relay_addr);
    assert_eq!(serving.admin_get("/healthz").0, 200);
    serving.signal(libc::SIGTERM);
    assert!(serving.wait_exit(Duration::from_secs(30)).success());
}

// 3. The store with the signing key is private.

#[test]
fn the_data_directory_and_store_are_private_and_a_readable_store_is_refused() {
    let work = tempdir();
    let data = work.path().join("data");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--shards",
        "1",
    ];
    let (stderr, _) = stderr_file(work.path());
    let Start::Ready(mut serving) = start_serve(&args, "t", stderr, None) else {
        panic!("did not start");
    };
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let store = data.join("posrelay.redb");
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&store), 0o600, "store");
    serving.signal(libc::SIGTERM);
    assert!(serving.wait_exit(Duration::from_secs(30)).success());
    // An older install's 0644 store: refused, with the command that fixes it.
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (stderr, path) = stderr_file(work.path());
    let err = assert_refused(start_serve(&args, "t", stderr, None), &path, "0644 store");
    assert!(
        err.contains(&format!("chmod 600 {}", store.display())),
        "{err}"
    );
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (stderr, _) = stderr_file(work.path());
    assert!(matches!(
        start_serve(&args, "t", stderr, None),
        Start::Ready(_)
    ));
}

// 6. It never claims to be ready and then dies.

#[test]
fn a_low_memlock_limit_is_refused_before_anything_is_announced() {
    let work = tempdir();
    let data = work.path().join("data");
    for (limit, shards) in [(64 * 1024, "2"), (600 * 1024, "8")] {
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--shards",
            shards,
        ];
        let (stderr, path) = stderr_file(work.path());
        let start = start_serve(&args, "t", stderr, Some(limit));
        let err = assert_refused(start, &path, "low memlock");
        for part in ["RLIMIT_MEMLOCK", "ulimit -l", "LimitMEMLOCK="] {
            assert!(err.contains(part), "{part:?}: {err}");
        }
        assert!(err.contains(&format!("{} KiB", limit / 1024)), "{err}");
    }
    // Enough for two shards: serves.
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--shards",
        "2",
    ];
    let (stderr, path) = stderr_file(work.path());
    match start_serve(&args, "t", stderr, Some(1 << 20)) {
        Start::Ready(serving) => assert_eq!(serving.admin_get("/healthz").0, 200),
        Start::Exited { .. } => panic!("refused: {}", std::fs::read_to_string(path).unwrap()),
    }
}

// 5. One misconfigured terminal does not lock a whole store out.

#[test]
fn failures_from_one_address_never_lock_out_the_right_secret_from_another() {
    let relay = Relay::start(&[]);
    let creds = relay.provision(DOMAIN, "s1", &["10000001", "10000002"]);
    let broken: IpAddr = "127.0.0.2".parse().unwrap();
    let healthy: IpAddr = "127.0.0.3".parse().unwrap();
    // One misconfigured terminal: five wrong registrations, five bad token requests.
    for _ in 0..5 {
        let (reply, _) = register_from(&relay, broken, "10000001", &creds.client_id, "wrong");
        assert_error(&reply, None, "invalid_client");
        let (resp, _) = token_request_from(&relay, broken, DOMAIN, &creds.client_id, "wrong");
        assert_eq!(resp.status, 401);
    }
    // That terminal's own address is limited now...
    let (resp, _) = token_request_from(&relay, broken, DOMAIN, &creds.client_id, "wrong");
    assert_eq!(resp.status, 429, "the failing address is limited");
    // ...but the store's other terminals and its POS, elsewhere, are not.
    let (resp, body) = token_request_from(
        &relay,
        healthy,
        DOMAIN,
        &creds.client_id,
        &creds.client_secret,
    );
    assert_eq!(
        resp.status, 200,
        "the right secret from another address: {body}"
    );
    let (reply, code) = register_from(
        &relay,
        healthy,
        "10000002",
        &creds.client_id,
        &creds.client_secret,
    );
    assert_eq!(reply["type"], "registered", "{reply}");
    assert_eq!(code, 1000);
}

#[test]
fn the_ceiling_per_client_never_refuses_an_address_that_logged_in_before() {
    let relay = Relay::start(&["--failed-logins-per-client-total", "6"]);
    let creds = relay.provision(DOMAIN, "s1", &["10000001"]);
    let known: IpAddr = "127.0.0.9".parse().unwrap();
    let (resp, _) = token_request_from(
        &relay,
        known,
        DOMAIN,
        &creds.client_id,
        &creds.client_secret,
    );
    assert_eq!(resp.status, 200);
    // Many addresses guess: the client id reaches its ceiling.
    for i in 0..6 {
        let from: IpAddr = format!("127.0.1.{}", i + 1).parse().unwrap();
        let (resp, _) = token_request_from(&relay, from, DOMAIN, &creds.client_id, "guess");
        assert_eq!(resp.status, 401);
    }
    let fresh: IpAddr = "127.0.2.1".parse().unwrap();
    let (resp, _) = token_request_from(&relay, fresh, DOMAIN, &creds.client_id, "guess");
    assert_eq!(resp.status, 429, "beyond the ceiling, new addresses wait");
    let (resp, body) = token_request_from(
        &relay,
        known,
        DOMAIN,
        &creds.client_id,
        &creds.client_secret,
    );
    assert_eq!(resp.status, 200, "an address that logged in before: {body}");
    let text = relay.metrics();
    assert!(
        metric_sum(
            &text,
            "posrelay_refused_total",
            &[("reason", "login_rate_client_total")]
        ) >= 1.0,
        "counted"
    );
}
