//! Issue "relay node": the whole flow over TLS (`--tls-cert`/`--tls-key`): the token over
//! https, registration, device connection, claim, session and an exchange over wss, with a
//! certificate generated for the test and trusted by the clients (and nothing else).

mod common;

use common::*;
use tungstenite::Message;

const TSN: &str = "12345678";

#[test]
fn the_seed_001_flow_runs_over_tls() {
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
    assert!(relay.tls, "with TLS the readiness line says wss://");
    relay.trust(cert.cert.der().to_vec());
    let creds = relay.provision("acme", "s1", &[TSN]);

    // §1 over https.
    let token = relay.token("acme", &creds);
    // §2 over wss; the URLs handed out say wss:// (§7a).
    let reg = register(&relay, TSN, &creds);
    assert_eq!(
        reg.connection_url,
        format!(
            "wss://{}/cloud-connector/v1/device-connection/{}",
            relay.relay_addr, reg.session_id
        )
    );
    let mut device = Device::connect(&relay, reg);
    let mut pos = Pos::control(&relay, &token);
    let (sid, session_url) = pos.claim_ok(TSN);
    assert_eq!(
        session_url,
        format!(
            "wss://{}/cloud-connector/v1/session/{sid}",
            relay.relay_addr
        )
    );
    let mut session = Pos::session(&relay, &session_url, &token);

    let request = "<TRANSACTION><FUNCTION_TYPE>PAYMENT</FUNCTION_TYPE><COMMAND>CAPTURE</COMMAND><TRANS_AMOUNT>1.00</TRANS_AMOUNT></TRANSACTION>";
    send_text(&mut session, request);
    match device.recv() {
        Message::Text(t) => assert_eq!(t, request),
        other => panic!("device got {}", show(&other)),
    }
    let blob = binary_payload(100_000, 42);
    device.send_binary(&blob);
    match recv(&mut session) {
        Message::Binary(b) => assert!(b == blob, "binary over wss byte-exact"),
        other => panic!("POS got {}", show(&other)),
    }

    // A plaintext request to the TLS listener is not served as HTTP.
    let mut plain = raw_connect(relay.relay_addr);
    use std::io::{Read, Write};
    plain
        .write_all(&upgrade_request(DEVICE_LISTENER, &[]))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(
        !buf[..n].starts_with(b"HTTP/1.1 101"),
        "plaintext upgraded on a TLS listener"
    );
}

/// Whether a TLS handshake with the relay succeeds for a client that trusts only `trusted`.
fn handshake_trusting(addr: std::net::SocketAddr, trusted: &[u8]) -> bool {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trusted.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return false;
        }
    }
    true
}

#[test]
fn sighup_reloads_the_certificate_without_a_restart() {
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let first = rcgen::generate_simple_self_signed(names.clone()).unwrap();
    let second = rcgen::generate_simple_self_signed(names).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, first.cert.pem()).unwrap();
    std::fs::write(&key_path, first.key_pair.serialize_pem()).unwrap();
    let relay = Relay::start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let pid = relay.pid();
    assert!(handshake_trusting(relay.relay_addr, first.cert.der()));
    assert!(!handshake_trusting(relay.relay_addr, second.cert.der()));

    // The operator renews the certificate in place and sends SIGHUP.
    std::fs::write(&cert_path, second.cert.pem()).unwrap();
    std::fs::write(&key_path, second.key_pair.serialize_pem()).unwrap();
    relay.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !handshake_trusting(relay.relay_addr, second.cert.der()) {
        assert!(
            std::time::Instant::now() < deadline,
            "new connections still get the old certificate 5 s after SIGHUP"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!handshake_trusting(relay.relay_addr, first.cert.der()));
    assert_eq!(relay.pid(), pid, "the same process: no restart");

    // A broken file on the next SIGHUP keeps the working certificate: wait until the relay
    // says it tried (its log), then check what new connections get.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    relay.signal(libc::SIGHUP);
    let tried = wait_for(std::time::Duration::from_secs(10), || {
        relay
            .stderr_tail(50)
            .contains("TLS reload failed: keeping the old certificate")
            .then_some(())
    });
    assert!(
        tried.is_some(),
        "no reload attempt logged after SIGHUP:\n{}",
        relay.stderr_tail(20)
    );
    assert!(handshake_trusting(relay.relay_addr, second.cert.der()));
}

/// A relay on a fresh self-signed certificate (for 127.0.0.1), started with `args` too;
/// the clients trust that certificate and nothing else.
fn tls_relay(
    args: &[&str],
) -> (
    Relay,
    std::sync::Arc<rustls::ClientConfig>,
    Vec<u8>,
    tempfile::TempDir,
) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("generate a self-signed certificate");
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut all = vec![
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let mut relay = Relay::start(&all);
    relay.trust(cert.cert.der().to_vec());
    let client = client_tls_config(cert.cert.der().to_vec());
    (relay, client, cert.cert.der().to_vec(), dir)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A TLS connection to the relay with `config` (its handshake completes on first use).
fn tls_connect(relay: &Relay, config: &std::sync::Arc<rustls::ClientConfig>) -> TlsStream {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    TlsStream::new(conn, raw_connect(relay.relay_addr))
}

fn open_connections(relay: &Relay) -> f64 {
    metric_sum(&relay.metrics(), "posrelay_open_connections", &[])
}

/// Issue 12's defect: past `--max-unauthenticated` on a TLS listener the 503 was written
/// in plaintext before the TLS handshake, and a wss client saw a corrupt record. Now the
/// refusal (once the connection has waited `--max-unauthenticated-wait` for a place in
/// vain) completes the handshake and answers over TLS: a readable 503 whose
/// `Retry-After` the client can honour, then a clean TLS close.
#[test]
fn a_refusal_on_a_tls_listener_is_a_readable_503_over_tls() {
    use std::io::{Read, Write};
    let (relay, client, _cert, _dir) = tls_relay(&[
        "--max-unauthenticated",
        "1",
        "--handshake-timeout",
        "30s",
        "--max-unauthenticated-wait",
        "200ms",
    ]);
    let before = metric_sum(
        &relay.metrics(),
        "posrelay_refused_total",
        &[("reason", "max_unauthenticated")],
    );
    // One connection that never says anything holds the only anonymous place.
    let held = raw_connect(relay.relay_addr);
    let settled = wait_for(std::time::Duration::from_secs(10), || {
        (open_connections(&relay) == 1.0).then_some(())
    });
    assert!(settled.is_some(), "the held connection is counted");

    let mut tls = tls_connect(&relay, &client);
    tls.write_all(&upgrade_request(DEVICE_LISTENER, &[]))
        .expect("the refused client's TLS handshake and request");
    let resp = read_head(&mut tls);
    assert_eq!(resp.status, 503, "{}", resp.head);
    let retry: u64 = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {}", resp.head))
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is not delay-seconds: {}", resp.head));
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(resp.header("connection"), Some("close"), "{}", resp.head);
    let body = read_body_from(&mut tls, &resp);
    assert!(
        String::from_utf8_lossy(&body).contains("retry later"),
        "the body says what to do: {}",
        String::from_utf8_lossy(&body)
    );
    // Then a clean TLS close: close_notify, not a reset or a corrupt record.
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest)
        .expect("the relay ends the refused TLS connection with close_notify");
    assert!(rest.is_empty());
    assert!(
        metric_sum(
            &relay.metrics(),
            "posrelay_refused_total",
            &[("reason", "max_unauthenticated")]
        ) > before,
        "counted in /metrics"
    );

    // The anonymous place is free again: the next client is served.
    drop(held);
    let free = wait_for(std::time::Duration::from_secs(10), || {
        (open_connections(&relay) == 0.0).then_some(())
    });
    assert!(free.is_some(), "the held connection is released");
    let mut tls = tls_connect(&relay, &client);
    tls.write_all(&upgrade_request(DEVICE_LISTENER, &[]))
        .unwrap();
    let resp = read_head(&mut tls);
    assert_eq!(resp.status, 101, "{}", resp.head);
}

/// Issue 12's storm: 8,000 wss devices reconnecting after a restart took twice the 10 s
/// goal, and most of their failures were unreadable. Every connection past
/// `--max-unauthenticated` was refused at once: each refusal cost a TLS handshake (or,
/// past 256 refusals in progress, was closed without a word: a reset no device can read)
/// and doubled the device's backoff. Now such a connection first waits for a place
/// (`--max-unauthenticated-wait`), costing nothing while it waits: a TLS client is
/// served as soon as the place frees, and nothing is refused.
#[test]
fn a_tls_client_past_max_unauthenticated_waits_for_a_place_and_is_served() {
    use std::io::Write;
    let (relay, client, _cert, _dir) = tls_relay(&[
        "--max-unauthenticated",
        "1",
        "--handshake-timeout",
        "30s",
        "--max-unauthenticated-wait",
        "30s",
    ]);
    let refused = |relay: &Relay| {
        metric_sum(
            &relay.metrics(),
            "posrelay_refused_total",
            &[("reason", "max_unauthenticated")],
        )
    };
    let waiting =
        |relay: &Relay| metric_sum(&relay.metrics(), "posrelay_unauthenticated_waiting", &[]);
    let before = refused(&relay);
    // One connection that never says anything holds the only anonymous place.
    let held = raw_connect(relay.relay_addr);
    let settled = wait_for(std::time::Duration::from_secs(10), || {
        (open_connections(&relay) == 1.0).then_some(())
    });
    assert!(settled.is_some(), "the held connection is counted");

    // A TLS device comes: its handshake and upgrade wait with it.
    let addr = relay.relay_addr;
    let config = client.clone();
    let device = std::thread::spawn(move || {
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut tls = TlsStream::new(conn, raw_connect(addr));
        tls.write_all(&upgrade_request(DEVICE_LISTENER, &[]))
            .expect("the waiting client's TLS handshake and request");
        read_head(&mut tls)
    });
    let queued = wait_for(std::time::Duration::from_secs(10), || {
        (waiting(&relay) == 1.0).then_some(())
    });
    assert!(
        queued.is_some(),
        "the connection past --max-unauthenticated waits for a place instead of a 503"
    );
    assert_eq!(
        open_connections(&relay),
        2.0,
        "it counts as open while it waits"
    );
    assert_eq!(refused(&relay), before, "nothing refused while it waits");

    // The place frees: the waiting device gets it, and is upgraded.
    drop(held);
    let resp = device.join().expect("the device's thread");
    assert_eq!(resp.status, 101, "{}", resp.head);
    assert_eq!(refused(&relay), before, "served, never refused");
    assert_eq!(waiting(&relay), 0.0, "no one waits any more");
}

fn read_body_from(s: &mut impl std::io::Read, resp: &RawResp) -> Vec<u8> {
    let len: usize = resp
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("read response body");
    body
}

/// Stateless session tickets (TLS 1.3 PSK): a client that reconnects with the ticket of
/// its last connection resumes (no certificate, no signature), and is served as usual.
#[test]
fn a_reconnecting_client_resumes_its_tls_session() {
    use std::io::Write;
    let (relay, client, cert, _dir) = tls_relay(&[]);
    let request = b"GET /no-such-path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let mut tls = tls_connect(&relay, &client);
        tls.write_all(request).unwrap();
        let resp = read_head(&mut tls);
        assert_eq!(resp.status, 404, "{}", resp.head);
        // Reading the answer also read the ticket sent after the handshake.
        let _ = read_body_from(&mut tls, &resp);
        kinds.push(tls.conn.handshake_kind());
        assert_eq!(
            tls.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
    }
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(kinds, [Some(Full), Some(Resumed), Some(Resumed)]);
    // A client without the ticket (another session store) gets a full handshake.
    let stranger = client_tls_config(cert);
    let mut tls = tls_connect(&relay, &stranger);
    tls.write_all(request).unwrap();
    assert_eq!(read_head(&mut tls).status, 404);
    assert_eq!(tls.conn.handshake_kind(), Some(Full));
    // The relay counts them as the clients saw them: two full, two resumed.
    let metrics = parse_metrics(&relay.metrics());
    let handshakes = |kind: &str| {
        metrics
            .iter()
            .find(|s| {
                s.name == "posrelay_tls_handshakes_total"
                    && s.labels.get("kind").map(String::as_str) == Some(kind)
            })
            .map(|s| s.value)
    };
    assert_eq!(handshakes("full"), Some(2.0));
    assert_eq!(handshakes("resumed"), Some(2.0));
}
