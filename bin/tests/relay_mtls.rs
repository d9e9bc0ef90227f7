//! Issue 11, PROTOCOL.md §2a on the real binary: terminals that authenticate with a TLS
//! client certificate on `--device-mtls-listen`, run as seed 000 describes them
//! (`clients/seed000_sca_terminal.py`: Python `websockets`, a client certificate, `sci`
//! on `/`), with certificates made at test time, in both trust modes (pin only, and
//! `--device-client-ca`).

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;

const TSN: &str = "12345678";

/// A relay with TLS and the device mTLS listener; the listener's port.
struct MtlsRelay {
    relay: Relay,
    port: u16,
    dir: tempfile::TempDir,
    /// The relay's own (self-signed) certificate, DER: what a terminal trusts.
    relay_der: Vec<u8>,
}

impl MtlsRelay {
    fn start(client_ca: Option<&Path>, extra: &[&str]) -> MtlsRelay {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .unwrap();
        std::fs::write(dir.path().join("relay.pem"), cert.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("relay-key.pem"),
            cert.key_pair.serialize_pem(),
        )
        .unwrap();
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let (c, k) = (
            dir.path().join("relay.pem"),
            dir.path().join("relay-key.pem"),
        );
        let mut args = vec![
            "--tls-cert",
            c.to_str().unwrap(),
            "--tls-key",
            k.to_str().unwrap(),
            "--device-mtls-listen",
            &listen,
        ];
        let ca;
        if let Some(path) = client_ca {
            ca = path.to_str().unwrap().to_owned();
            args.extend(["--device-client-ca", &ca]);
        }
        args.extend_from_slice(extra);
        let mut relay = Relay::start(&args);
        assert_eq!(
            relay.mtls_addr,
            Some(listen.parse().unwrap()),
            "the mTLS listener is announced on stdout"
        );
        relay.trust(cert.cert.der().to_vec());
        MtlsRelay {
            relay,
            port,
            dir,
            relay_der: cert.cert.der().to_vec(),
        }
    }

    fn url(&self) -> String {
        format!("wss://127.0.0.1:{}/", self.port)
    }

    /// Seed 000's terminal with the certificate `name` (files written by [`Terminal`]).
    fn terminal(&self, t: &Terminal, seconds: &str) -> SeedClient {
        SeedClient::start(
            "seed000_sca_terminal.py",
            &[
                "--url",
                &self.url(),
                "--cert",
                t.cert.to_str().unwrap(),
                "--key",
                t.key.to_str().unwrap(),
                "--ca",
                self.dir.path().join("relay.pem").to_str().unwrap(),
                "--pinpad-id",
                "1",
                "--seconds",
                seconds,
            ],
        )
    }

    /// A WebSocket upgrade on `path` of the mTLS listener by a rustls client presenting
    /// `client` (none: no certificate at all), offering `sci`: the socket, the refusal's
    /// status, or the TLS/transport error that ended the handshake before any HTTP answer.
    fn upgrade(&self, path: &str, client: ClientCert) -> Result<Ws, Refused> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.relay_der.clone()))
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            ClientCert::None => builder.with_no_client_auth(),
            ClientCert::Presenting { cert, key } => {
                let key = provider.key_provider.load_private_key(key).unwrap();
                let certified = rustls::sign::CertifiedKey::new(vec![cert], key);
                builder.with_client_cert_resolver(Arc::new(Presents(Arc::new(certified))))
            }
        };
        let mut request = format!("wss://127.0.0.1:{}{path}", self.port)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("sci"));
        let stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let connector = tungstenite::Connector::Rustls(Arc::new(config));
        match tungstenite::client_tls_with_config(request, stream, None, Some(connector)) {
            Ok((ws, resp)) => {
                assert_eq!(
                    resp.headers()
                        .get("sec-websocket-protocol")
                        .and_then(|v| v.to_str().ok()),
                    Some("sci"),
                    "§7: the terminal's subprotocol is selected"
                );
                Ok(ws)
            }
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                Err(Refused::Status(resp.status().as_u16()))
            }
            Err(tungstenite::HandshakeError::Failure(e)) => Err(Refused::Handshake(e.to_string())),
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                Err(Refused::Handshake("interrupted".into()))
            }
        }
    }
}

/// What a test's rustls client presents in the TLS handshake.
enum ClientCert {
    /// No certificate.
    None,
    /// This certificate, signing the handshake with this key (its own or not).
    Presenting {
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    },
}

/// How an upgrade on the mTLS listener failed.
#[derive(Debug, PartialEq)]
enum Refused {
    /// An HTTP answer other than 101.
    Status(u16),
    /// No HTTP answer: the TLS handshake (or the connection) ended first.
    Handshake(String),
}

/// A client certificate resolver that always presents the same certificate and key,
/// whether or not they belong together (rustls' own builder would refuse a mismatch).
#[derive(Debug)]
struct Presents(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A terminal's certificate and key files, and the certificate's SHA-256 fingerprint.
struct Terminal {
    cert: PathBuf,
    key: PathBuf,
    fingerprint: String,
    /// The certificate (DER) and its key (PKCS#8 DER), for a rustls client.
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Terminal {
    /// Presents this certificate and signs with its own key.
    fn presenting(&self) -> ClientCert {
        self.presenting_with_key_of(self)
    }

    /// Presents this certificate but signs with `other`'s key.
    fn presenting_with_key_of(&self, other: &Terminal) -> ClientCert {
        ClientCert::Presenting {
            cert: self.der.clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(other.key_der.clone())),
        }
    }
}

fn terminal_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn write_terminal(dir: &Path, name: &str, cert: &rcgen::Certificate, key: &KeyPair) -> Terminal {
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let fingerprint = sha2::Sha256::digest(cert.der())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Terminal {
        cert: c,
        key: k,
        fingerprint,
        der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

/// A self-signed terminal certificate (a terminal's own).
fn self_signed(dir: &Path, name: &str) -> Terminal {
    let key = KeyPair::generate().unwrap();
    let cert = terminal_params(name).self_signed(&key).unwrap();
    write_terminal(dir, name, &cert, &key)
}

fn pin(relay: &Relay, tsn: &str, fingerprints: &[&str]) {
    relay
        .admin(
            "PATCH",
            &format!("/admin/v1/domains/acme/devices/{tsn}"),
            Some(json!({ "client_cert_sha256": fingerprints })),
        )
        .expect_status(200, "pin");
}

fn expect_event(client: &mut SeedClient, event: &str) -> Value {
    let e = client.next_event(Duration::from_secs(20));
    assert_eq!(e["event"], event, "{e}");
    e
}

/// The POS claims the terminal and sends an SCA request; the terminal's answer comes back.
fn pos_exchange(relay: &Relay, creds: &Creds) -> (Pos, Ws) {
    let token = relay.token("acme", creds);
    let mut pos = Pos::control(relay, &token);
    let claimed = pos.claim(TSN);
    assert_eq!(claimed["online"], true, "the terminal is online: {claimed}");
    // §2a: "the same session_id rules as §2": a registration with credentials names the
    // same session.
    assert_eq!(
        claimed["session_id"].as_str(),
        Some(register(relay, TSN, creds).session_id.as_str()),
        "{claimed}"
    );
    let url = claimed["session_url"].as_str().unwrap().to_owned();
    let mut session = Pos::session(relay, &url, &token);
    send_text(
        &mut session,
        "<TRANSACTION><FUNCTION_TYPE>SESSION</FUNCTION_TYPE><COMMAND>START</COMMAND></TRANSACTION>",
    );
    match recv(&mut session) {
        tungstenite::Message::Text(t) => assert!(t.contains("Session Started"), "{t}"),
        other => panic!("{}", show(&other)),
    }
    (pos, session)
}

#[test]
fn seed_000_terminal_connects_with_a_pinned_self_signed_certificate_and_is_closed_when_unpinned() {
    let r = MtlsRelay::start(None, &[]);
    let creds = r.relay.provision("acme", "s1", &[TSN]);
    let t = self_signed(r.dir.path(), "terminal-1");
    pin(&r.relay, TSN, &[&t.fingerprint]);
    let mut terminal = r.terminal(&t, "60");
    let open = expect_event(&mut terminal, "open");
    assert_eq!(
        open["subprotocol"], "sci",
        "§7: its subprotocol is selected"
    );
    let (mut pos, _session) = pos_exchange(&r.relay, &creds);
    let got = expect_event(&mut terminal, "message");
    assert!(
        got["data"].as_str().unwrap().contains("<COMMAND>START"),
        "{got}"
    );
    // A second connection with the same certificate replaces the first (4000), with the
    // same session: the claim stays.
    let mut second = r.terminal(&t, "60");
    expect_event(&mut second, "open");
    let closed = expect_event(&mut terminal, "close");
    assert_eq!(closed["code"], 4000, "{closed}");
    // Unpinning the certificate closes the connection made with it (1008).
    pin(&r.relay, TSN, &[]);
    let closed = expect_event(&mut second, "close");
    assert_eq!(closed["code"], 1008, "{closed}");
    let status = pos.next_event();
    assert_eq!(
        (status["type"].as_str(), status["online"].as_bool()),
        (Some("device_status"), Some(false)),
        "{status}"
    );
    // Now unpinned: 403 before the upgrade.
    let mut refused = r.terminal(&t, "20");
    let e = expect_event(&mut refused, "refused");
    assert_eq!(e["status"], 403);
    let log = r.relay.stderr_tail(400);
    assert!(
        !log.contains(&t.fingerprint),
        "a fingerprint is never logged"
    );
}

#[test]
fn with_a_client_ca_only_certificates_it_issued_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "terminal CA");
    let ca = params.self_signed(&ca_key).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let r = MtlsRelay::start(Some(&ca_path), &[]);
    let creds = r.relay.provision("acme", "s1", &[TSN]);
    let key = KeyPair::generate().unwrap();
    let issued = terminal_params("terminal-1")
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let t = write_terminal(dir.path(), "issued", &issued, &key);
    // A pinned certificate the CA did not issue: the TLS handshake fails.
    let stranger = self_signed(dir.path(), "stranger");
    pin(&r.relay, TSN, &[&t.fingerprint, &stranger.fingerprint]);
    let mut refused = r.terminal(&stranger, "20");
    let e = refused.next_event(Duration::from_secs(20));
    assert_eq!(e["event"], "failed", "§2a: the TLS handshake fails: {e}");
    // The issued and pinned one relays.
    let mut terminal = r.terminal(&t, "60");
    assert_eq!(expect_event(&mut terminal, "open")["subprotocol"], "sci");
    let _pair = pos_exchange(&r.relay, &creds);
    expect_event(&mut terminal, "message");
    // Disabling the device closes it (§9: 1008).
    r.relay.set_device_enabled("acme", TSN, false);
    assert_eq!(expect_event(&mut terminal, "close")["code"], 1008);
    let mut again = r.terminal(&t, "20");
    assert_eq!(
        expect_event(&mut again, "refused")["status"],
        403,
        "disabled: 403"
    );
}

#[test]
fn a_flood_of_unpinned_certificates_hits_the_address_limit_while_others_are_served() {
    let r = MtlsRelay::start(None, &["--failed-logins-per-address", "3"]);
    let creds = r.relay.provision("acme", "s1", &[TSN]);
    let mut pair = Pair::connect(&r.relay, "acme", "12345678", &creds);
    for i in 0..3 {
        let t = self_signed(r.dir.path(), &format!("unpinned-{i}"));
        let mut c = r.terminal(&t, "20");
        assert_eq!(
            expect_event(&mut c, "refused")["status"],
            403,
            "attempt {i}"
        );
    }
    let t = self_signed(r.dir.path(), "unpinned-more");
    let mut c = r.terminal(&t, "20");
    assert_eq!(
        expect_event(&mut c, "refused")["status"],
        429,
        "§1: counted as failed logins"
    );
    pair.exchange_text("everyone else is served");
}

#[test]
fn device_sim_connects_with_a_client_certificate() {
    use std::io::{BufRead, BufReader};
    let r = MtlsRelay::start(None, &[]);
    let creds = r.relay.provision("acme", "s1", &[TSN]);
    let t = self_signed(r.dir.path(), "terminal-sim");
    pin(&r.relay, TSN, &[&t.fingerprint]);
    /// Kills the simulator when the test ends, pass or fail.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut sim = std::process::Command::new(env!("CARGO_BIN_EXE_posrelay"))
        .args(["device-sim", "--relay", &r.url(), "--tsn", TSN])
        .arg("--client-cert")
        .arg(&t.cert)
        .arg("--client-key")
        .arg(&t.key)
        .arg("--ca-file")
        .arg(r.dir.path().join("relay.pem"))
        .env_remove("POSRELAY_CLIENT_ID")
        .env_remove("POSRELAY_CLIENT_SECRET")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map(Killed)
        .unwrap();
    let stdout = sim.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let online = format!("[device {TSN}] online");
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("device-sim goes online with its certificate");
        assert!(!line.contains("registered"), "no registration: {line}");
        if line == online {
            break;
        }
    }
    let _pair = pos_exchange(&r.relay, &creds);
}

/// The terminal side of [`pos_exchange`] on a socket of a test's own: the SCA request
/// arrives and is answered.
fn answer_sca(ws: &mut Ws) {
    match recv(ws) {
        tungstenite::Message::Text(t) => assert!(t.contains("<COMMAND>START"), "{t}"),
        other => panic!("{}", show(&other)),
    }
    send_text(
        ws,
        "<RESPONSE><RESPONSE_TEXT>Session Started</RESPONSE_TEXT></RESPONSE>",
    );
}

#[test]
fn the_listener_requires_a_certificate_and_proof_that_the_terminal_holds_its_key() {
    // Pin-only mode: the handshake signature is all that ties the client to the pin.
    let r = MtlsRelay::start(None, &[]);
    let creds = r.relay.provision("acme", "s1", &[TSN]);
    let t = self_signed(r.dir.path(), "terminal-1");
    let thief = self_signed(r.dir.path(), "thief");
    pin(&r.relay, TSN, &[&t.fingerprint]);
    // §2a: "requires a client certificate in the TLS handshake".
    match r.upgrade("/", ClientCert::None) {
        Err(Refused::Handshake(_)) => {}
        other => panic!("no client certificate: the TLS handshake must fail, got {other:?}"),
    }
    // The pinned certificate, without its key (the handshake signed with another one).
    match r.upgrade("/", t.presenting_with_key_of(&thief)) {
        Err(Refused::Handshake(_)) => {}
        other => panic!("a certificate the client holds no key for must fail, got {other:?}"),
    }
    // Neither made the device appear: the claim says it has no session yet.
    let token = r.relay.token("acme", &creds);
    let mut pos = Pos::control(&r.relay, &token);
    let offline = pos.claim(TSN);
    assert_eq!(offline["code"], "offline", "{offline}");
    // The certificate with its own key gets in and relays.
    let mut terminal = r
        .upgrade("/", t.presenting())
        .expect("the pinned certificate with its key");
    let (_pos, mut session) = {
        let claimed = pos.claim(TSN);
        assert_eq!(claimed["online"], true, "{claimed}");
        let url = claimed["session_url"].as_str().unwrap().to_owned();
        (pos, Pos::session(&r.relay, &url, &token))
    };
    send_text(
        &mut session,
        "<TRANSACTION><FUNCTION_TYPE>SESSION</FUNCTION_TYPE><COMMAND>START</COMMAND></TRANSACTION>",
    );
    answer_sca(&mut terminal);
    match recv(&mut session) {
        tungstenite::Message::Text(t) => assert!(t.contains("Session Started"), "{t}"),
        other => panic!("{}", show(&other)),
    }
    let log = r.relay.stderr_tail(400);
    for fp in [&t.fingerprint, &t.fingerprint.to_ascii_uppercase()] {
        assert!(!log.contains(fp.as_str()), "a fingerprint is never logged");
    }
}

#[test]
fn pins_are_checked_by_the_admin_api_and_a_rotation_lets_either_certificate_in_on_any_path() {
    let r = MtlsRelay::start(None, &[]);
    let creds = r.relay.provision("acme", "s1", &[TSN, "87654321"]);
    let old = self_signed(r.dir.path(), "old");
    let new = self_signed(r.dir.path(), "new");
    let pins_of = |tsn: &str| -> Value {
        r.relay
            .admin_devices("acme")
            .into_iter()
            .find(|d| d["tsn"] == tsn)
            .unwrap_or_else(|| panic!("{tsn} listed"))["client_cert_sha256"]
            .clone()
    };
    let patch = |tsn: &str, pins: Value| {
        r.relay.admin(
            "PATCH",
            &format!("/admin/v1/domains/acme/devices/{tsn}"),
            Some(json!({ "client_cert_sha256": pins })),
        )
    };
    // §9: "A fingerprint that is not 64 hex digits answers 400".
    let colons = old.fingerprint[..62].to_owned() + ":0";
    for bad in [
        json!(["abc"]),
        json!(["g".repeat(64)]),
        json!([colons]),
        json!([7]),
    ] {
        patch(TSN, bad.clone()).expect_error(400, &format!("pins {bad}"));
    }
    let r400 = r.relay.admin(
        "POST",
        "/admin/v1/domains/acme/devices",
        Some(
            json!({"tsn": "11112222", "make": "ingenico", "model": "axium", "store": "s1",
                    "client_cert_sha256": ["abc"]}),
        ),
    );
    r400.expect_error(400, "POST with a malformed pin");
    assert_eq!(pins_of(TSN), json!([]), "nothing changed");
    // POST takes pins too, in either case; they are answered in lowercase.
    r.relay
        .admin(
            "POST",
            "/admin/v1/domains/acme/devices",
            Some(
                json!({"tsn": "11112222", "make": "ingenico", "model": "axium", "store": "s1",
                        "client_cert_sha256": [old.fingerprint.to_ascii_uppercase()]}),
            ),
        )
        .expect_status(201, "POST with a pin");
    assert_eq!(pins_of("11112222"), json!([old.fingerprint]));
    // "A fingerprint is pinned to at most one device": 409, by PATCH or by POST.
    patch(TSN, json!([old.fingerprint])).expect_error(409, "PATCH pinned elsewhere");
    r.relay
        .admin(
            "POST",
            "/admin/v1/domains/acme/devices",
            Some(
                json!({"tsn": "33334444", "make": "ingenico", "model": "axium", "store": "s1",
                        "client_cert_sha256": [old.fingerprint]}),
            ),
        )
        .expect_error(409, "POST pinned elsewhere");
    assert_eq!(pins_of(TSN), json!([]), "nothing changed");
    // Freed, both the old and the new certificate are pinned to the terminal (rotation).
    patch("11112222", json!([])).expect_status(200, "unpin");
    patch(
        TSN,
        json!([old.fingerprint.to_ascii_uppercase(), new.fingerprint]),
    )
    .expect_status(200, "rotation");
    assert_eq!(pins_of(TSN), json!([old.fingerprint, new.fingerprint]));
    // Either one gets in, on any path; each connection replaces the one before (4000),
    // wherever the shards accepted them.
    let paths = [
        "/",
        "/sci",
        "/cloud-connector/v1/device-listener",
        "/x?pinpad=1",
    ];
    let mut previous: Option<Ws> = None;
    for (i, path) in paths.iter().enumerate() {
        let cert = if i % 2 == 0 { &new } else { &old };
        let ws = r
            .upgrade(path, cert.presenting())
            .unwrap_or_else(|e| panic!("connection {i} on {path}: {e:?}"));
        if let Some(mut before) = previous.take() {
            assert_eq!(expect_close(&mut before), 4000, "connection {i} replaces");
        }
        previous = Some(ws);
    }
    let mut terminal = previous.unwrap();
    let token = r.relay.token("acme", &creds);
    let mut pos = Pos::control(&r.relay, &token);
    let claimed = pos.claim(TSN);
    assert_eq!(claimed["online"], true, "{claimed}");
    let url = claimed["session_url"].as_str().unwrap().to_owned();
    let mut session = Pos::session(&r.relay, &url, &token);
    send_text(
        &mut session,
        "<TRANSACTION><FUNCTION_TYPE>SESSION</FUNCTION_TYPE><COMMAND>START</COMMAND></TRANSACTION>",
    );
    answer_sca(&mut terminal);
    assert!(matches!(recv(&mut session), tungstenite::Message::Text(_)));
    // Refused pins, replacements, unpins: the relay's log names none of the fingerprints.
    let log = r.relay.stderr_tail(1000);
    for fp in [&old.fingerprint, &new.fingerprint] {
        assert!(
            !log.contains(fp.as_str()) && !log.contains(&fp.to_ascii_uppercase()),
            "a fingerprint is never logged"
        );
    }
}

#[test]
fn sigterm_closes_certificate_terminals_with_1001() {
    let mut r = MtlsRelay::start(None, &[]);
    r.relay.provision("acme", "s1", &[TSN]);
    let t = self_signed(r.dir.path(), "terminal-1");
    pin(&r.relay, TSN, &[&t.fingerprint]);
    let mut terminal = r.terminal(&t, "60");
    expect_event(&mut terminal, "open");
    r.relay.signal(libc::SIGTERM);
    let closed = expect_event(&mut terminal, "close");
    assert_eq!(closed["code"], 1001, "§6: {closed}");
    assert!(r.relay.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn a_rotation_closes_only_the_connection_whose_certificate_lost_its_pin() {
    let r = MtlsRelay::start(None, &[]);
    let creds = r.relay.provision("acme", "s1", &[TSN]);
    let old = self_signed(r.dir.path(), "old");
    let new = self_signed(r.dir.path(), "new");
    pin(&r.relay, TSN, &[&old.fingerprint]);
    let mut terminal = r.upgrade("/", old.presenting()).expect("old pinned");
    // The new certificate pinned beside the old: the live connection is not touched.
    pin(&r.relay, TSN, &[&old.fingerprint, &new.fingerprint]);
    let token = r.relay.token("acme", &creds);
    let mut pos = Pos::control(&r.relay, &token);
    let claimed = pos.claim(TSN);
    assert_eq!(claimed["online"], true, "{claimed}");
    let url = claimed["session_url"].as_str().unwrap().to_owned();
    let mut session = Pos::session(&r.relay, &url, &token);
    send_text(
        &mut session,
        "<TRANSACTION><FUNCTION_TYPE>SESSION</FUNCTION_TYPE><COMMAND>START</COMMAND></TRANSACTION>",
    );
    answer_sca(&mut terminal);
    assert!(matches!(recv(&mut session), tungstenite::Message::Text(_)));
    // The old one unpinned: its connection is closed (1008), the new one gets in.
    pin(&r.relay, TSN, &[&new.fingerprint]);
    assert_eq!(expect_close(&mut terminal), 1008, "§2a: unpinned");
    assert_eq!(
        r.upgrade("/", old.presenting()).err(),
        Some(Refused::Status(403))
    );
    let mut terminal = r.upgrade("/", new.presenting()).expect("new pinned");
    send_text(
        &mut session,
        "<TRANSACTION><FUNCTION_TYPE>SESSION</FUNCTION_TYPE><COMMAND>START</COMMAND></TRANSACTION>",
    );
    answer_sca(&mut terminal);
}

#[test]
fn the_mtls_options_without_what_they_need_refuse_the_start_and_say_what_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let ca = self_signed(dir.path(), "not-a-ca");
    let ca_path = ca.cert.to_str().unwrap().to_owned();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ];
    for (extra, says) in [
        // §2a: "TLS only (it needs --tls-cert and --tls-key)".
        (
            vec!["--device-mtls-listen", "127.0.0.1:0"],
            "give --tls-cert and --tls-key (tls_cert, tls_key) too",
        ),
        (
            vec!["--device-client-ca", ca_path.as_str()],
            "give --device-mtls-listen (device_mtls_listen) too",
        ),
    ] {
        let path = dir.path().join("stderr.log");
        let stderr = std::process::Stdio::from(std::fs::File::create(&path).unwrap());
        let mut args = base.to_vec();
        args.extend(extra.iter().copied());
        match start_serve(&args, "admin-token", stderr, None) {
            Start::Ready(_) => panic!("{extra:?}: the relay started"),
            Start::Exited { status, stdout } => {
                assert!(!status.success(), "{extra:?}: {status}");
                assert!(
                    stdout.iter().all(|l| !l.contains("listening")),
                    "{extra:?}: announced {stdout:?}"
                );
                let err = std::fs::read_to_string(&path).unwrap();
                assert!(err.contains(says), "{extra:?}: {err}");
            }
        }
    }
}
