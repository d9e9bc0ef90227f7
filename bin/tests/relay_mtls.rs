//! Issue 11, PROTOCOL.md §2a on the real binary: terminals that authenticate with a TLS
//! client certificate on `--device-mtls-listen`, run as seed 000 describes them
//! (`clients/seed000_sca_terminal.py`: Python `websockets`, a client certificate, `sci`
//! on `/`), with certificates made at test time, in both trust modes (pin only, and
//! `--device-client-ca`).

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::{json, Value};
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TSN: &str = "12345678";

/// A relay with TLS and the device mTLS listener; the listener's port.
struct MtlsRelay {
    relay: Relay,
    port: u16,
    dir: tempfile::TempDir,
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
        relay.trust(cert.cert.der().to_vec());
        MtlsRelay { relay, port, dir }
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
}

/// A terminal's certificate and key files, and the certificate's SHA-256 fingerprint.
struct Terminal {
    cert: PathBuf,
    key: PathBuf,
    fingerprint: String,
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
    assert!(e["event"] == "failed" || e["event"] == "refused", "{e}");
    assert_ne!(e["event"], "open");
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
