//! Fault suite, handshake abuse (issue "Faults, drain and hostile input"): garbage, a
//! request head sent 1 byte a second, 100 KiB of headers, wrong versions, missing and
//! doubled keys, POST, HTTP/1.0, non-upgrade GETs on every path, and a few request-smuggling
//! shapes — each on its own connection, next to a pair that keeps exchanging.
//!
//! Asserted per bad request: the relay answers the status PROTOCOL.md §8 (or RFC 6455 §4.2.1
//! / RFC 9112) names — or, for bytes that are not HTTP at all, may just close — and the
//! connection ends by the handshake timeout at the latest; never a 101, never a hang.
//! Afterwards: the pair still exchanges, a fresh pair completes an exchange, relay memory is
//! back near its warm baseline, and the refusals were counted in /metrics.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const DOMAIN: &str = "acme";
const BYSTANDER: &str = "22220001";
/// `--handshake-timeout` of these relays, in seconds.
const HANDSHAKE_TIMEOUT_S: u64 = 1;

/// One bad request: what it is, its bytes, the statuses it may answer (`None` in the list
/// = closing without an answer is fine too).
struct BadRequest {
    name: String,
    bytes: Vec<u8>,
    statuses: Vec<Option<u16>>,
    /// `Sec-WebSocket-Version: 13` must be in the answer (RFC 6455 §4.4).
    wants_version_13: bool,
}

fn req(name: impl Into<String>, bytes: impl Into<Vec<u8>>, statuses: &[Option<u16>]) -> BadRequest {
    BadRequest {
        name: name.into(),
        bytes: bytes.into(),
        statuses: statuses.to_vec(),
        wants_version_13: false,
    }
}

/// An upgrade head for `path` built from `lines` (request line first), without the blank
/// line's terminator added twice.
fn head(lines: &[&str]) -> Vec<u8> {
    let mut s = lines.join("\r\n");
    s.push_str("\r\n\r\n");
    s.into_bytes()
}

const UPGRADE: &str = "Upgrade: websocket";
const CONNECTION: &str = "Connection: Upgrade";
const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
const VERSION: &str = "Sec-WebSocket-Version: 13";
const HOST: &str = "Host: 127.0.0.1";

fn bad_requests() -> Vec<BadRequest> {
    let ws_paths = [
        DEVICE_LISTENER.to_string(),
        POS_LISTENER.to_string(),
        "/cloud-connector/v1/device-connection/AAAAAAAAAAAAAAAAAAAAAA".to_string(),
        "/cloud-connector/v1/session/AAAAAAAAAAAAAAAAAAAAAA".to_string(),
    ];
    let mut v = Vec::new();

    // Bytes that are not HTTP at all: a 400 or just a close.
    let garbage = binary_payload(1024, 99);
    v.push(req("1 KiB of random bytes", garbage, &[Some(400), None]));
    v.push(req(
        "blank lines only",
        b"\r\n\r\n\r\n".to_vec(),
        &[Some(400), None],
    ));
    v.push(req("NUL bytes", vec![0u8; 512], &[Some(400), None]));
    v.push(req(
        "a TLS ClientHello on the plain listener",
        [
            &[
                0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
            ][..],
            &binary_payload(200, 5),
        ]
        .concat(),
        &[Some(400), None],
    ));
    v.push(req(
        "SSH banner",
        b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
        &[Some(400), None],
    ));
    v.push(req(
        "request line without a version",
        b"GET /cloud-connector/v1/device-listener\r\n\r\n".to_vec(),
        &[Some(400), None],
    ));
    v.push(req(
        "header line without a colon",
        head(&[
            &format!("GET {DEVICE_LISTENER} HTTP/1.1"),
            HOST,
            "No colon here",
        ]),
        &[Some(400)],
    ));
    v.push(req(
        "obsolete line folding (RFC 9112 §5.2)",
        head(&[
            &format!("GET {DEVICE_LISTENER} HTTP/1.1"),
            HOST,
            UPGRADE,
            " websocket-folded",
            CONNECTION,
            KEY,
            VERSION,
        ]),
        &[Some(400)],
    ));
    v.push(req(
        "NUL inside a header value",
        head(&[
            &format!("GET {DEVICE_LISTENER} HTTP/1.1"),
            HOST,
            UPGRADE,
            CONNECTION,
            "Sec-WebSocket-Key: dGhlIHNhbXBsZ\0SBub25jZQ==",
            VERSION,
        ]),
        &[Some(400)],
    ));

    // 100 KiB of headers (§8: 431 over --max-header-bytes): one huge, or 2000 small ones,
    // or a 100 KiB request target.
    let huge = format!("X-Filler: {}", "a".repeat(100 * 1024));
    v.push(req(
        "one 100 KiB header",
        head(&[
            &format!("GET {DEVICE_LISTENER} HTTP/1.1"),
            HOST,
            UPGRADE,
            CONNECTION,
            KEY,
            VERSION,
            &huge,
        ]),
        &[Some(431)],
    ));
    let many: Vec<String> = (0..2000)
        .map(|i| format!("X-H{i:04}: {}", "b".repeat(40)))
        .collect();
    let mut lines = vec![
        format!("GET {DEVICE_LISTENER} HTTP/1.1"),
        HOST.into(),
        UPGRADE.into(),
        CONNECTION.into(),
        KEY.into(),
        VERSION.into(),
    ];
    lines.extend(many);
    let lines: Vec<&str> = lines.iter().map(|s| s.as_str()).collect();
    v.push(req("2000 headers, 100 KiB", head(&lines), &[Some(431)]));
    v.push(req(
        "a 100 KiB request target",
        head(&[
            &format!("GET {DEVICE_LISTENER}?{} HTTP/1.1", "q".repeat(100 * 1024)),
            HOST,
            UPGRADE,
            CONNECTION,
            KEY,
            VERSION,
        ]),
        &[Some(431), Some(414)],
    ));

    // RFC 6455 §4.2.1 / §4.4 on every WebSocket path.
    for path in &ws_paths {
        let get = format!("GET {path} HTTP/1.1");
        for version in ["0", "8", "12", "14", "99", "13, 8", "abc", ""] {
            let line = format!("Sec-WebSocket-Version: {version}");
            let mut r = req(
                format!("{path}: version {version:?}"),
                head(&[&get, HOST, UPGRADE, CONNECTION, KEY, &line]),
                &[Some(426)],
            );
            r.wants_version_13 = true;
            v.push(r);
        }
        v.push(req(
            format!("{path}: no Sec-WebSocket-Key"),
            head(&[&get, HOST, UPGRADE, CONNECTION, VERSION]),
            &[Some(400)],
        ));
        v.push(req(
            format!("{path}: two Sec-WebSocket-Key headers"),
            head(&[
                &get,
                HOST,
                UPGRADE,
                CONNECTION,
                KEY,
                "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==",
                VERSION,
            ]),
            &[Some(400)],
        ));
        v.push(req(
            format!("{path}: a key that is not 16 bytes"),
            head(&[
                &get,
                HOST,
                UPGRADE,
                CONNECTION,
                "Sec-WebSocket-Key: c2hvcnQ=",
                VERSION,
            ]),
            &[Some(400)],
        ));
        v.push(req(
            format!("{path}: a key that is not base64"),
            head(&[
                &get,
                HOST,
                UPGRADE,
                CONNECTION,
                "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!",
                VERSION,
            ]),
            &[Some(400)],
        ));
        v.push(req(
            format!("{path}: POST with upgrade headers"),
            head(&[
                &format!("POST {path} HTTP/1.1"),
                HOST,
                UPGRADE,
                CONNECTION,
                KEY,
                VERSION,
                "Content-Length: 0",
            ]),
            &[Some(400), Some(405), Some(426)],
        ));
        v.push(req(
            format!("{path}: HTTP/1.0 upgrade"),
            head(&[
                &format!("GET {path} HTTP/1.0"),
                HOST,
                UPGRADE,
                CONNECTION,
                KEY,
                VERSION,
            ]),
            &[Some(400), Some(426), Some(505)],
        ));
        v.push(req(
            format!("{path}: Upgrade: h2c"),
            head(&[
                &get,
                HOST,
                "Upgrade: h2c",
                "Connection: Upgrade, HTTP2-Settings",
                "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            ]),
            &[Some(426), Some(400)],
        ));
        v.push(req(
            format!("{path}: upgrade without Connection: Upgrade"),
            head(&[&get, HOST, UPGRADE, KEY, VERSION]),
            &[Some(426), Some(400)],
        ));
        // §8: a non-WebSocket request to a WebSocket path answers 426.
        let mut plain = req(
            format!("{path}: plain GET"),
            head(&[&get, HOST]),
            &[Some(426)],
        );
        plain.wants_version_13 = true;
        v.push(plain);
    }
    // Non-upgrade GETs on the other paths.
    v.push(req(
        "GET on the token endpoint",
        head(&["GET /oauth2/v1/acme/token HTTP/1.1", HOST]),
        &[Some(405)],
    ));
    for path in [
        "/",
        "/index.html",
        "/cloud-connector/v1/",
        "/cloud-connector/v1/device-listener/extra",
        "/../../etc/passwd",
        "/oauth2/v1//token",
    ] {
        v.push(req(
            format!("GET {path}"),
            head(&[&format!("GET {path} HTTP/1.1"), HOST]),
            &[Some(404), Some(400)],
        ));
    }
    // Bodies that must not be believed.
    v.push(req(
        "token request announcing a 100 GB body",
        head(&[
            "POST /oauth2/v1/acme/token HTTP/1.1",
            HOST,
            "Content-Type: application/x-www-form-urlencoded",
            "Content-Length: 100000000000",
        ]),
        &[Some(413), Some(400)],
    ));
    v.push(req(
        "two different Content-Lengths (RFC 9112 §6.3)",
        head(&[
            "POST /oauth2/v1/acme/token HTTP/1.1",
            HOST,
            "Content-Length: 5",
            "Content-Length: 6",
        ]),
        &[Some(400)],
    ));
    v.push(req(
        "negative Content-Length",
        head(&[
            "POST /oauth2/v1/acme/token HTTP/1.1",
            HOST,
            "Content-Length: -1",
        ]),
        &[Some(400)],
    ));
    v.push(req(
        "Transfer-Encoding and Content-Length together (RFC 9112 §6.1)",
        [
            head(&[
                "POST /oauth2/v1/acme/token HTTP/1.1",
                HOST,
                "Transfer-Encoding: chunked",
                "Content-Length: 4",
            ]),
            b"zzzz\r\n\r\n".to_vec(),
        ]
        .concat(),
        &[Some(400), Some(501)],
    ));
    v
}

/// Sends `bytes` on a fresh connection and reads everything until the relay ends it.
/// Returns the status of the answer (None: closed without one) and the whole answer text.
/// Panics if the connection is still open `limit` after the request.
fn answer_then_end(relay: &Relay, bytes: &[u8], limit: Duration) -> (Option<u16>, String) {
    let mut s = raw_connect(relay.relay_addr);
    // The relay may answer and close before reading everything (431, garbage).
    let _ = s.write_all(bytes);
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "connection still open after {limit:?}: got {:?}",
            String::from_utf8_lossy(&got)
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "connection still open after {limit:?} ({e}): got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    if !got.is_empty() {
        assert!(status.is_some(), "an answer that is not HTTP/1.1: {text:?}");
    }
    (status, text)
}

fn handshake_failures(relay: &Relay) -> f64 {
    metric_sum(&relay.metrics(), "posrelay_handshake_failures_total", &[])
}

#[test]
fn bad_requests_are_answered_or_closed_and_never_upgraded() {
    let relay = fault_relay(&["--shards", "1", "--handshake-timeout", "1s"]);
    let creds = relay.provision(DOMAIN, "s1", &[BYSTANDER, PROBE_TSN]);
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    let mut pair = Pair::connect(&relay, DOMAIN, BYSTANDER, &creds);
    let failures_before = handshake_failures(&relay);
    // Generous: an answer plus keep-alive lasts at most the handshake timeout.
    let limit = Duration::from_secs(HANDSHAKE_TIMEOUT_S + 4);

    let requests = bad_requests();
    let mut answered = 0u64;
    for r in &requests {
        let (status, text) = answer_then_end(&relay, &r.bytes, limit);
        if !r.statuses.contains(&status) {
            relay.fail(&format!(
                "{}: answered {status:?}, expected one of {:?}\n{text}",
                r.name, r.statuses
            ));
        }
        if status.is_some() {
            answered += 1;
        }
        if r.statuses.len() > 1 {
            eprintln!("  {}: {status:?}", r.name);
        }
        if r.wants_version_13 && status == Some(426) {
            let has = text
                .lines()
                .any(|l| l.to_ascii_lowercase().replace(' ', "") == "sec-websocket-version:13");
            assert!(
                has,
                "{}: RFC 6455 §4.4: a 426 names version 13\n{text}",
                r.name
            );
        }
        pair.exchange_text(&format!("after {}", r.name));
    }
    let failures = handshake_failures(&relay) - failures_before;
    eprintln!(
        "handshake abuse: {} bad requests, {answered} answered with an error status, \
         {failures} counted in posrelay_handshake_failures_total",
        requests.len()
    );
    assert!(failures >= 1.0, "refusals are counted in /metrics");
    drop(pair);
    health.check(&relay, "handshake abuse", RSS_SLACK_KIB);
}

/// Writes one byte of an upgrade head every `every` until the relay closes; returns the
/// bytes it took and how long.
fn slow_loris(relay: &Relay, every: Duration) -> (usize, Duration) {
    let request = upgrade_request(DEVICE_LISTENER, &[]);
    let mut s = raw_connect(relay.relay_addr);
    let start = Instant::now();
    for (i, b) in request.iter().enumerate() {
        if s.write_all(&[*b]).is_err() || closed_within(&mut s, every) {
            return (i + 1, start.elapsed());
        }
    }
    panic!("the whole head went through one byte at a time without being closed");
}

/// Whether the peer ends `s` within `wait` (EOF, reset or an answer).
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 512];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => true, // an answer (e.g. 408) before the close
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn slow_loris_connections_are_cut_at_the_handshake_timeout_and_cost_nothing() {
    let relay = fault_relay(&["--shards", "1", "--handshake-timeout", "1s"]);
    let creds = relay.provision(DOMAIN, "s1", &[BYSTANDER, PROBE_TSN]);
    let health = Health::warm_up(&relay, DOMAIN, &creds);
    let mut pair = Pair::connect(&relay, DOMAIN, BYSTANDER, &creds);
    let timeouts_before = metric_sum(
        &relay.metrics(),
        "posrelay_handshake_failures_total",
        &[("reason", "timeout")],
    );

    // One byte a second: the handshake timeout bounds the whole head, not each read.
    let (bytes, took) = slow_loris(&relay, Duration::from_secs(1));
    eprintln!("slow loris at 1 B/s: closed after {bytes} bytes, {took:?}");
    assert!(
        bytes as u64 <= HANDSHAKE_TIMEOUT_S + 3,
        "§8: a head not whole within the handshake timeout is closed; {bytes} bytes went through"
    );

    // 200 at once, one byte every 200 ms, while the pair exchanges and a fresh pair connects.
    const LORIS: usize = 200;
    let results: Vec<(usize, Duration)> = std::thread::scope(|s| {
        let relay = &relay;
        let handles: Vec<_> = (0..LORIS)
            .map(|_| s.spawn(move || slow_loris(relay, Duration::from_millis(200))))
            .collect();
        for i in 0..10 {
            pair.exchange_text(&format!("during the slow loris {i}"));
            std::thread::sleep(Duration::from_millis(100));
        }
        probe_exchange(relay, DOMAIN, &creds);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let worst = results.iter().map(|r| r.0).max().unwrap();
    eprintln!("{LORIS} slow loris connections at 5 B/s: the longest got {worst} bytes in");
    assert!(
        worst as u64 <= (HANDSHAKE_TIMEOUT_S + 3) * 5,
        "every slow head is cut at the handshake timeout (worst: {worst} bytes at 5 B/s)"
    );
    let timeouts = metric_sum(
        &relay.metrics(),
        "posrelay_handshake_failures_total",
        &[("reason", "timeout")],
    ) - timeouts_before;
    assert!(
        timeouts >= (LORIS + 1) as f64,
        "each head timeout is counted ({timeouts})"
    );
    pair.exchange_text("after the slow loris");
    drop(pair);
    health.check(&relay, "slow loris", RSS_SLACK_KIB);
}
