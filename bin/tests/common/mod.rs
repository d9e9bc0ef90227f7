//! Harness for the black-box tests of `posrelay serve`.
//!
//! Every test starts the real binary (`CARGO_BIN_EXE_posrelay`) in its own temporary data
//! directory, learns its two ports from the readiness lines on stdout (see
//! notes/binary-contract.md) and talks to it only over 127.0.0.1 with clients this
//! repository did not write: `tungstenite` for WebSocket, `ureq` for HTTP, and raw
//! `TcpStream` writes where a test needs a malformed request. Every blocking read has a
//! timeout, so a missing answer fails a test instead of hanging it.
#![allow(dead_code)]

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Response as WsResponse;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, Message, WebSocket};

/// Timeout of every blocking socket read or write a test makes.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the binary may take to print both readiness lines.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the device registration endpoint (§2).
pub const DEVICE_LISTENER: &str = "/cloud-connector/v1/device-listener";
/// Path of the POS control channel (§4).
pub const POS_LISTENER: &str = "/cloud-connector/v1/pos-listener";

/// A WebSocket client connection to the relay (plain or TLS).
pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// Client credentials as §9 hands them out.
#[derive(Debug, Clone)]
pub struct Creds {
    /// `client_id` of the §9 answer.
    pub client_id: String,
    /// `client_secret` of the §9 answer (shown once).
    pub client_secret: String,
}

// ---------------------------------------------------------------------------------------
// The relay process
// ---------------------------------------------------------------------------------------

/// One running `posrelay serve` process with its own data directory.
pub struct Relay {
    child: Option<Child>,
    /// Address of the relay listener (devices, POS, OAuth).
    pub relay_addr: SocketAddr,
    /// Address of the admin listener.
    pub admin_addr: SocketAddr,
    /// Whether the relay announced `wss://`.
    pub tls: bool,
    /// The admin token given in `POSRELAY_ADMIN_TOKEN`.
    pub admin_token: String,
    work: tempfile::TempDir,
    args: Vec<String>,
    generation: u32,
    http: ureq::Agent,
    client_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Relay {
    /// Starts `posrelay serve` on ephemeral loopback ports with `--shards 2` (unless `args`
    /// names `--shards`) and the extra `args`; waits for both readiness lines.
    pub fn start(args: &[&str]) -> Relay {
        let work = tempfile::Builder::new()
            .prefix("posrelay-itest-")
            .tempdir()
            .expect("create temp dir");
        std::fs::create_dir_all(work.path().join("data")).expect("create data dir");
        let mut relay = Relay {
            child: None,
            relay_addr: "127.0.0.1:1".parse().unwrap(),
            admin_addr: "127.0.0.1:1".parse().unwrap(),
            tls: false,
            admin_token: random_hex(16),
            work,
            args: args.iter().map(|s| s.to_string()).collect(),
            generation: 0,
            http: plain_agent(),
            client_tls: None,
        };
        relay.spawn();
        relay
    }

    /// The data directory (kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.work.path().join("data")
    }

    /// A scratch directory owned by this relay's temp dir (for certificates, configs).
    pub fn scratch(&self) -> &Path {
        self.work.path()
    }

    fn stderr_path(&self, generation: u32) -> PathBuf {
        self.work.path().join(format!("stderr-{generation}.log"))
    }

    fn spawn(&mut self) {
        self.generation += 1;
        let stderr = File::create(self.stderr_path(self.generation)).expect("create stderr log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_posrelay"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data_dir());
        if !self.args.iter().any(|a| a == "--shards") {
            cmd.arg("--shards").arg("2");
        }
        cmd.args(&self.args)
            .env("POSRELAY_ADMIN_TOKEN", &self.admin_token)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().expect("spawn posrelay");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keeps draining stdout for the life of the process so it never blocks on a pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep reading to drain the pipe.
                }
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut relay = None;
        let mut admin = None;
        let mut seen = Vec::new();
        while relay.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("relay listening on ") {
                        assert!(admin.is_none(), "relay line must come before the admin line");
                        let (tls, addr) = if let Some(a) = rest.strip_prefix("wss://") {
                            (true, a)
                        } else if let Some(a) = rest.strip_prefix("ws://") {
                            (false, a)
                        } else {
                            self.fail(&format!("bad readiness line {line:?}"))
                        };
                        self.tls = tls;
                        relay = Some(addr.trim().parse::<SocketAddr>().unwrap_or_else(|e| {
                            self.fail(&format!("bad address in {line:?}: {e}"))
                        }));
                    } else if let Some(rest) = line.strip_prefix("admin listening on http://") {
                        assert!(relay.is_some(), "admin line came before the relay line");
                        admin = Some(rest.trim().parse::<SocketAddr>().unwrap_or_else(|e| {
                            self.fail(&format!("bad address in {line:?}: {e}"))
                        }));
                    }
                    seen.push(line);
                }
                Err(_) => self.fail(&format!(
                    "posrelay did not print both readiness lines within {READY_TIMEOUT:?}; stdout so far: {seen:?}"
                )),
            }
        }
        self.relay_addr = relay.unwrap();
        self.admin_addr = admin.unwrap();
    }

    /// Panics with `msg` and the tail of the relay's stderr.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n--- posrelay stderr ---\n{}", self.stderr_tail(80));
    }

    /// The last `lines` lines of the current process's stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.stderr_path(self.generation)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Process id of the running relay.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("relay running").id()
    }

    /// `VmRSS` of the relay process in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid()).expect("read VmRSS")
    }

    /// SIGKILL, then reap.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (at most 30 s) for the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }

    /// Sends `sig` to the relay process.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) has no memory effects; the pid is our own unreaped child.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits for the relay to exit; panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut().expect("relay running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                self.fail(&format!("relay did not exit within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the relay (SIGKILL if it still runs) and starts it again on the same data dir
    /// and arguments. The ports change.
    pub fn restart_same_data_dir(&mut self) {
        self.kill_9();
        self.spawn();
    }

    // --- URLs ----------------------------------------------------------------------------

    /// `ws://addr{path}` or `wss://addr{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{path}", self.relay_addr)
    }

    /// `http://addr{path}` or `https://addr{path}` on the relay listener.
    pub fn http_url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.relay_addr)
    }

    /// `http://admin{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// Trust `cert_der` (the relay's self-signed certificate) for https:// and wss://.
    pub fn trust(&mut self, cert_der: Vec<u8>) {
        let config = client_tls_config(cert_der);
        self.http = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .redirects(0)
            .max_idle_connections(0)
            .tls_config(config.clone())
            .build();
        self.client_tls = Some(config);
    }

    // --- HTTP ----------------------------------------------------------------------------

    /// Any HTTP request through `ureq`; 4xx/5xx are answers, not errors.
    pub fn http(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpResp {
        let mut req = self.http.request(method, url);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => self.fail(&format!("{method} {url}: transport error {e}")),
        };
        HttpResp::from_ureq(resp)
    }

    /// An admin call with the admin token and an optional JSON body.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> HttpResp {
        let auth = format!("Bearer {}", self.admin_token);
        let text = body.map(|b| b.to_string());
        let mut headers = vec![("Authorization", auth.as_str())];
        if text.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        self.http(method, &self.admin_url(path), &headers, text.as_deref())
    }

    /// `POST /admin/v1/domains` → 201.
    pub fn create_domain(&self, domain: &str) {
        let r = self.admin(
            "POST",
            "/admin/v1/domains",
            Some(json!({ "domain": domain })),
        );
        r.expect_status(201, "create domain");
    }

    /// `POST /admin/v1/domains/{d}/stores` → 201.
    pub fn create_store(&self, domain: &str, store: &str, merchant: &str) {
        let r = self.admin(
            "POST",
            &format!("/admin/v1/domains/{domain}/stores"),
            Some(json!({ "store": store, "merchant": merchant })),
        );
        r.expect_status(201, "create store");
    }

    /// `POST /admin/v1/domains/{d}/clients` → 201 with credentials (`None` = domain-wide).
    pub fn create_client(&self, domain: &str, store: Option<&str>) -> Creds {
        let body = match store {
            Some(s) => json!({ "store": s }),
            None => json!({}),
        };
        let r = self.admin(
            "POST",
            &format!("/admin/v1/domains/{domain}/clients"),
            Some(body),
        );
        r.expect_status(201, "create client");
        let v = r.json();
        let id = v["client_id"]
            .as_str()
            .expect("client_id string")
            .to_string();
        let secret = v["client_secret"]
            .as_str()
            .expect("client_secret string")
            .to_string();
        assert!(
            !id.is_empty() && !secret.is_empty(),
            "empty credentials: {v}"
        );
        Creds {
            client_id: id,
            client_secret: secret,
        }
    }

    /// `DELETE /admin/v1/domains/{d}/clients/{id}` → 204.
    pub fn delete_client(&self, domain: &str, client_id: &str) {
        let r = self.admin(
            "DELETE",
            &format!("/admin/v1/domains/{domain}/clients/{client_id}"),
            None,
        );
        r.expect_status(204, "delete client");
    }

    /// `POST /admin/v1/domains/{d}/devices` (make ingenico, model axium) → 201.
    pub fn create_device(&self, domain: &str, tsn: &str, store: &str) {
        self.create_device_full(domain, tsn, "ingenico", "axium", store);
    }

    /// `POST /admin/v1/domains/{d}/devices` → 201.
    pub fn create_device_full(
        &self,
        domain: &str,
        tsn: &str,
        make: &str,
        model: &str,
        store: &str,
    ) {
        let r = self.admin(
            "POST",
            &format!("/admin/v1/domains/{domain}/devices"),
            Some(json!({ "tsn": tsn, "make": make, "model": model, "store": store })),
        );
        r.expect_status(201, "create device");
    }

    /// `PATCH /admin/v1/domains/{d}/devices/{tsn}` `{"enabled":…}` → 200.
    pub fn set_device_enabled(&self, domain: &str, tsn: &str, enabled: bool) {
        let r = self.admin(
            "PATCH",
            &format!("/admin/v1/domains/{domain}/devices/{tsn}"),
            Some(json!({ "enabled": enabled })),
        );
        r.expect_status(200, "patch device");
    }

    /// `GET /admin/v1/domains/{d}/devices` → 200, the `devices` array sorted by tsn.
    pub fn admin_devices(&self, domain: &str) -> Vec<Value> {
        let r = self.admin("GET", &format!("/admin/v1/domains/{domain}/devices"), None);
        r.expect_status(200, "list devices");
        let v = r.json();
        let mut list = v["devices"]
            .as_array()
            .unwrap_or_else(|| panic!("no devices array: {v}"))
            .clone();
        list.sort_by(|a, b| a["tsn"].as_str().cmp(&b["tsn"].as_str()));
        list
    }

    /// Domain + store + one store client + devices (ingenico/axium) in that store.
    pub fn provision(&self, domain: &str, store: &str, tsns: &[&str]) -> Creds {
        self.create_domain(domain);
        self.create_store(domain, store, "m1");
        for tsn in tsns {
            self.create_device(domain, tsn, store);
        }
        self.create_client(domain, Some(store))
    }

    /// `POST /oauth2/v1/{domain}/token` with any headers and form body.
    pub fn token_request(&self, domain: &str, headers: &[(&str, &str)], form: &str) -> HttpResp {
        let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        self.http(
            "POST",
            &self.http_url(&format!("/oauth2/v1/{domain}/token")),
            &all,
            Some(form),
        )
    }

    /// §1 with HTTP Basic: returns the access token (asserts 200).
    pub fn token(&self, domain: &str, creds: &Creds) -> String {
        let basic = basic_auth(&creds.client_id, &creds.client_secret);
        let r = self.token_request(
            domain,
            &[("Authorization", &basic)],
            "grant_type=client_credentials",
        );
        r.expect_status(200, "token");
        let v = r.json();
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token: {v}"))
            .to_string()
    }

    /// `GET /metrics` text (asserts 200).
    pub fn metrics(&self) -> String {
        let r = self.http("GET", &self.admin_url("/metrics"), &[], None);
        r.expect_status(200, "metrics");
        r.body
    }

    // --- WebSocket -----------------------------------------------------------------------

    /// Opens a WebSocket to `url` (connecting to this relay's address whatever the host in
    /// `url`), with extra request headers. Err carries a non-101 answer as
    /// `tungstenite::Error::Http`.
    #[allow(clippy::result_large_err)] // tungstenite's own error type, as tungstenite returns it
    pub fn ws_connect(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Ws, WsResponse), tungstenite::Error> {
        let mut request = url.into_client_request()?;
        for (k, v) in headers {
            let name = tungstenite::http::header::HeaderName::from_bytes(k.as_bytes())
                .expect("header name");
            request
                .headers_mut()
                .insert(name, HeaderValue::from_str(v).expect("header value"));
        }
        let stream = TcpStream::connect(self.relay_addr).expect("tcp connect to relay");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let connector = if url.starts_with("wss://") {
            Some(Connector::Rustls(
                self.client_tls
                    .clone()
                    .expect("call Relay::trust before using wss"),
            ))
        } else {
            None
        };
        match tungstenite::client_tls_with_config(request, stream, None, connector) {
            Ok(pair) => Ok(pair),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => Err(tungstenite::Error::Io(
                std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"),
            )),
        }
    }

    /// Opens a WebSocket that must succeed.
    pub fn ws(&self, url: &str, headers: &[(&str, &str)]) -> Ws {
        match self.ws_connect(url, headers) {
            Ok((ws, _)) => ws,
            Err(e) => self.fail(&format!(
                "WebSocket to {url} failed: {}",
                describe_ws_error(&e)
            )),
        }
    }

    /// Opens a WebSocket with `Authorization: Bearer <token>`.
    pub fn ws_bearer(&self, url: &str, token: &str) -> Ws {
        let auth = format!("Bearer {token}");
        self.ws(url, &[("Authorization", &auth)])
    }

    /// The HTTP status of a WebSocket attempt (101 on success).
    pub fn ws_status(&self, url: &str, headers: &[(&str, &str)]) -> u16 {
        match self.ws_connect(url, headers) {
            Ok((_, resp)) => resp.status().as_u16(),
            Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => self.fail(&format!("WebSocket to {url}: {}", describe_ws_error(&e))),
        }
    }

    /// The full non-101 answer of a WebSocket attempt that must be refused.
    pub fn ws_refused(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> tungstenite::http::Response<Option<Vec<u8>>> {
        match self.ws_connect(url, headers) {
            Ok((_, resp)) => self.fail(&format!(
                "expected {url} to be refused, got {} {:?}",
                resp.status(),
                resp.headers()
            )),
            Err(tungstenite::Error::Http(resp)) => resp,
            Err(e) => self.fail(&format!("WebSocket to {url}: {}", describe_ws_error(&e))),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- posrelay stderr (generation {}) ---\n{}",
                self.generation,
                self.stderr_tail(120)
            );
        }
        self.kill_9();
    }
}

/// One connection per request: connection reuse is tested on its own
/// (tenancy.rs `http_connections_are_reusable_unless_closed`), so a keep-alive bug fails that
/// test instead of whichever test happens to reuse a connection.
fn plain_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .redirects(0)
        .max_idle_connections(0)
        .build()
}

/// A rustls client configuration that trusts exactly `cert_der`.
pub fn client_tls_config(cert_der: Vec<u8>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert_der))
        .expect("add root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `n` random bytes from the kernel, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `Basic base64(id:secret)` (RFC 6749 §2.3.1 form-encodes both first).
pub fn basic_auth(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", form_encode(id), form_encode(secret)))
    )
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The claims of a JWT (payload base64url-decoded and parsed), asserting three parts.
pub fn jwt_claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS compact token has 3 parts: {token}");
    let header = URL_SAFE_NO_PAD.decode(parts[0]).expect("header base64url");
    let header: Value = serde_json::from_slice(&header).expect("header json");
    assert!(header["alg"].is_string(), "JWT header names alg: {header}");
    assert_ne!(header["alg"], "none", "unsigned JWT");
    let payload = URL_SAFE_NO_PAD.decode(parts[1]).expect("payload base64url");
    serde_json::from_slice(&payload).expect("payload json")
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A readable description of a tungstenite error (including an HTTP answer's status).
pub fn describe_ws_error(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(resp) => format!(
            "HTTP {} {:?} body {:?}",
            resp.status(),
            resp.headers(),
            resp.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        ),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP answers
// ---------------------------------------------------------------------------------------

/// An HTTP answer: status, headers (lower-cased names), body text.
#[derive(Debug, Clone)]
pub struct HttpResp {
    /// Status code.
    pub status: u16,
    /// Header (lower-cased name, value) pairs.
    pub headers: Vec<(String, String)>,
    /// Body as text.
    pub body: String,
}

impl HttpResp {
    fn from_ureq(resp: ureq::Response) -> HttpResp {
        let status = resp.status();
        let headers = resp
            .headers_names()
            .into_iter()
            .flat_map(|n| {
                resp.all(&n)
                    .into_iter()
                    .map(|v| (n.to_ascii_lowercase(), v.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let body = resp.into_string().unwrap_or_default();
        HttpResp {
            status,
            headers,
            body,
        }
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (panics with the body otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?} (status {})",
                self.body, self.status
            )
        })
    }

    /// Asserts the status.
    pub fn expect_status(&self, status: u16, what: &str) -> &Self {
        assert_eq!(
            self.status, status,
            "{what}: unexpected status; body {:?}",
            self.body
        );
        self
    }

    /// Asserts `status` and a JSON body `{"error": <string>}` with a JSON content type;
    /// returns the error string.
    pub fn expect_error(&self, status: u16, what: &str) -> String {
        self.expect_status(status, what);
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "{what}: content-type {ct:?} is not JSON"
        );
        let v = self.json();
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no \"error\" string in {v}"))
            .to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Reading and writing WebSocket messages
// ---------------------------------------------------------------------------------------

/// Next message other than ping/pong (those are hop-by-hop). Panics on error or timeout.
pub fn recv(ws: &mut Ws) -> Message {
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(m) => return m,
            Err(e) => panic!("read failed: {}", describe_ws_error(&e)),
        }
    }
}

/// Next message including control frames (for tests of hop-by-hop behaviour).
pub fn recv_any(ws: &mut Ws) -> Message {
    match ws.read() {
        Ok(m) => m,
        Err(e) => panic!("read failed: {}", describe_ws_error(&e)),
    }
}

/// Next text message parsed as JSON.
pub fn recv_json(ws: &mut Ws) -> Value {
    match recv(ws) {
        Message::Text(t) => {
            serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
        }
        other => panic!("expected a JSON text message, got {}", show(&other)),
    }
}

/// Reads until a close frame; returns its code (1005 when the frame had none). Panics if
/// a data message arrives first or the connection ends without a close frame.
pub fn expect_close(ws: &mut Ws) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(Message::Close(Some(f))) => {
                let code: u16 = f.code.into();
                // Finish the closing handshake (tungstenite answers the close by itself).
                let _ = ws.flush();
                return code;
            }
            Ok(Message::Close(None)) => return 1005,
            Ok(other) => panic!("expected a close frame, got {}", show(&other)),
            Err(e) => panic!(
                "expected a close frame, got error: {}",
                describe_ws_error(&e)
            ),
        }
    }
}

/// Like [`expect_close`] but accepts data messages first, returning them too.
pub fn drain_until_close(ws: &mut Ws) -> (Vec<Message>, u16) {
    let mut got = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(Message::Close(Some(f))) => return (got, f.code.into()),
            Ok(Message::Close(None)) => return (got, 1005),
            Ok(m) => got.push(m),
            Err(e) => panic!(
                "expected a close frame, got error: {}",
                describe_ws_error(&e)
            ),
        }
    }
}

/// Waits up to `wait` for a message other than ping/pong; `None` if nothing came.
pub fn try_recv(ws: &mut Ws, wait: Duration) -> Option<Message> {
    set_read_timeout(ws, Some(wait));
    let result = loop {
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(m) => break Some(m),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break None
            }
            Err(e) => panic!("read failed: {}", describe_ws_error(&e)),
        }
    };
    set_read_timeout(ws, Some(IO_TIMEOUT));
    result
}

/// Waits up to `wait` for any message including ping/pong; `None` if nothing came.
pub fn try_recv_any(ws: &mut Ws, wait: Duration) -> Option<Message> {
    set_read_timeout(ws, Some(wait));
    let result = match ws.read() {
        Ok(m) => Some(m),
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("read failed: {}", describe_ws_error(&e)),
    };
    set_read_timeout(ws, Some(IO_TIMEOUT));
    result
}

/// Sets the read timeout of the socket under `ws`.
pub fn set_read_timeout(ws: &mut Ws, t: Option<Duration>) {
    tcp_of(ws).set_read_timeout(t).expect("set_read_timeout");
}

/// Sets the write timeout of the socket under `ws`.
pub fn set_write_timeout(ws: &mut Ws, t: Option<Duration>) {
    tcp_of(ws).set_write_timeout(t).expect("set_write_timeout");
}

/// The TCP stream under `ws`.
pub fn tcp_of(ws: &mut Ws) -> &TcpStream {
    match ws.get_ref() {
        MaybeTlsStream::Plain(s) => s,
        MaybeTlsStream::Rustls(s) => s.get_ref(),
        _ => panic!("unknown stream kind"),
    }
}

/// Sends a text message (flushes).
pub fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_string())).expect("send text");
}

/// Sends a binary message (flushes).
pub fn send_binary(ws: &mut Ws, data: &[u8]) {
    ws.send(Message::Binary(data.to_vec()))
        .expect("send binary");
}

/// Sends a JSON text message.
pub fn send_json(ws: &mut Ws, v: &Value) {
    send_text(ws, &v.to_string());
}

/// Starts the closing handshake with `code` and waits for the peer's close frame.
pub fn close_and_wait(ws: &mut Ws, code: u16) {
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    }))
    .expect("send close");
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => continue,
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => return,
            Err(e) => panic!("closing handshake: {}", describe_ws_error(&e)),
        }
    }
}

/// Short description of a message for assertion messages.
pub fn show(m: &Message) -> String {
    match m {
        Message::Text(t) if t.len() <= 200 => format!("Text({t:?})"),
        Message::Text(t) => format!("Text({} bytes)", t.len()),
        Message::Binary(b) => format!("Binary({} bytes)", b.len()),
        Message::Ping(p) => format!("Ping({p:?})"),
        Message::Pong(p) => format!("Pong({p:?})"),
        Message::Close(c) => format!("Close({c:?})"),
        Message::Frame(_) => "Frame".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Devices (§2, §3)
// ---------------------------------------------------------------------------------------

/// A successful §2 registration reply.
#[derive(Debug, Clone)]
pub struct Registration {
    /// `session_id`.
    pub session_id: String,
    /// `connection_url`.
    pub connection_url: String,
    /// `token` (device token).
    pub token: String,
    /// `expires_in`.
    pub expires_in: i64,
    /// The whole reply.
    pub raw: Value,
}

/// Sends one registration message on a fresh device-listener connection; returns the reply
/// and the close code that followed it.
pub fn register_raw(relay: &Relay, message: &str) -> (Value, u16) {
    let mut ws = relay.ws(&relay.ws_url(DEVICE_LISTENER), &[]);
    send_text(&mut ws, message);
    let reply = recv_json(&mut ws);
    let code = expect_close(&mut ws);
    (reply, code)
}

/// §2 registration that must succeed: checks the reply shape and the 1000 close.
pub fn register(relay: &Relay, tsn: &str, creds: &Creds) -> Registration {
    let msg = json!({
        "type": "register",
        "tsn": tsn,
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
    });
    let (reply, code) = register_raw(relay, &msg.to_string());
    assert_eq!(reply["type"], "registered", "registration reply: {reply}");
    assert_eq!(code, 1000, "registration is followed by close 1000 (§2)");
    let session_id = reply["session_id"]
        .as_str()
        .expect("session_id")
        .to_string();
    assert_session_id_shape(&session_id);
    Registration {
        connection_url: reply["connection_url"]
            .as_str()
            .expect("connection_url")
            .to_string(),
        token: reply["token"].as_str().expect("token").to_string(),
        expires_in: reply["expires_in"].as_i64().expect("expires_in integer"),
        session_id,
        raw: reply,
    }
}

/// §0: a session id is URL-safe and carries at least 128 bits (≥ 22 base64url characters).
pub fn assert_session_id_shape(id: &str) {
    assert!(
        id.len() >= 22
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "session_id {id:?} is not URL-safe with >= 128 bits"
    );
}

/// A connected device (§3).
pub struct Device {
    /// The device-connection WebSocket.
    pub ws: Ws,
    /// The registration it connected with.
    pub reg: Registration,
}

impl Device {
    /// §2 then §3.
    pub fn register_and_connect(relay: &Relay, tsn: &str, creds: &Creds) -> Device {
        let reg = register(relay, tsn, creds);
        Device::connect(relay, reg)
    }

    /// §3 with a registration already done.
    pub fn connect(relay: &Relay, reg: Registration) -> Device {
        let ws = relay.ws_bearer(&reg.connection_url, &reg.token);
        Device { ws, reg }
    }

    /// Sends text.
    pub fn send_text(&mut self, t: &str) {
        send_text(&mut self.ws, t)
    }

    /// Sends binary.
    pub fn send_binary(&mut self, b: &[u8]) {
        send_binary(&mut self.ws, b)
    }

    /// Next data message.
    pub fn recv(&mut self) -> Message {
        recv(&mut self.ws)
    }
}

// ---------------------------------------------------------------------------------------
// POS (§4, §5)
// ---------------------------------------------------------------------------------------

/// A POS control channel (§4). Answers are matched by `request_id`; anything else that
/// arrives meanwhile is kept, in order, for [`Pos::next_event`].
pub struct Pos {
    /// The control-channel WebSocket.
    pub ws: Ws,
    pending: VecDeque<Value>,
    next_id: u64,
}

impl Pos {
    /// Opens `pos-listener` with `Authorization: Bearer`.
    pub fn control(relay: &Relay, token: &str) -> Pos {
        let ws = relay.ws_bearer(&relay.ws_url(POS_LISTENER), token);
        Pos {
            ws,
            pending: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Wraps a control channel opened some other way (custom headers, subprotocols).
    pub fn control_from(ws: Ws) -> Pos {
        Pos {
            ws,
            pending: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Opens a POS session (§5) with `Authorization: Bearer`.
    pub fn session(relay: &Relay, session_url: &str, token: &str) -> Ws {
        relay.ws_bearer(session_url, token)
    }

    /// A fresh request id.
    pub fn new_request_id(&mut self) -> String {
        self.next_id += 1;
        format!("req-{}-{}", self.next_id, random_hex(3))
    }

    /// Sends `msg` (with `request_id` set) and returns the message that repeats it.
    pub fn request(&mut self, mut msg: Value) -> Value {
        let id = self.new_request_id();
        msg["request_id"] = Value::String(id.clone());
        send_json(&mut self.ws, &msg);
        self.answer_to(&id)
    }

    /// Waits for the message whose `request_id` is `id`, keeping others as events.
    pub fn answer_to(&mut self, id: &str) -> Value {
        if let Some(pos) = self.pending.iter().position(|v| v["request_id"] == id) {
            return self.pending.remove(pos).unwrap();
        }
        loop {
            let v = recv_json(&mut self.ws);
            if v["request_id"] == id {
                return v;
            }
            let is_answer = ["claimed", "released", "devices", "error"]
                .iter()
                .any(|t| v["type"] == *t);
            assert!(
                !is_answer,
                "an answer that does not repeat request_id {id:?}: {v}"
            );
            self.pending.push_back(v);
        }
    }

    /// `claim` → the answer (claimed or error).
    pub fn claim(&mut self, tsn: &str) -> Value {
        self.request(json!({ "type": "claim", "tsn": tsn }))
    }

    /// `claim` that must answer `claimed`; returns (session_id, session_url).
    pub fn claim_ok(&mut self, tsn: &str) -> (String, String) {
        let v = self.claim(tsn);
        assert_eq!(v["type"], "claimed", "claim {tsn}: {v}");
        (
            v["session_id"].as_str().expect("session_id").to_string(),
            v["session_url"].as_str().expect("session_url").to_string(),
        )
    }

    /// `release` → the answer.
    pub fn release(&mut self, tsn: &str) -> Value {
        self.request(json!({ "type": "release", "tsn": tsn }))
    }

    /// `devices` → the answer.
    pub fn devices(&mut self) -> Value {
        self.request(json!({ "type": "devices" }))
    }

    /// Sends raw text on the control channel.
    pub fn send_raw(&mut self, text: &str) {
        send_text(&mut self.ws, text);
    }

    /// The next message not yet consumed (events kept by [`Pos::request`] first).
    pub fn next_event(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        recv_json(&mut self.ws)
    }

    /// The next event if one arrives within `wait`.
    pub fn try_next_event(&mut self, wait: Duration) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        match try_recv(&mut self.ws, wait)? {
            Message::Text(t) => Some(serde_json::from_str(&t).expect("JSON event")),
            other => panic!("expected a JSON event, got {}", show(&other)),
        }
    }
}

/// Sums `undelivered` events for `tsn` from `pos` until `frames` frames are reported (or
/// `limit` passes); returns (frames, bytes). Any other event fails the test.
pub fn collect_undelivered(pos: &mut Pos, tsn: &str, frames: u64, limit: Duration) -> (u64, u64) {
    let deadline = Instant::now() + limit;
    let (mut f, mut b) = (0u64, 0u64);
    while f < frames {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(ev) = pos.try_next_event(left.max(Duration::from_millis(1))) else {
            break;
        };
        assert_eq!(ev["type"], "undelivered", "unexpected event {ev}");
        assert_eq!(ev["tsn"], tsn, "undelivered names the bare tsn: {ev}");
        let keys: Vec<&str> = ev.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut keys = keys;
        keys.sort();
        assert_eq!(
            keys,
            ["bytes", "frames", "tsn", "type"],
            "undelivered shape: {ev}"
        );
        f += ev["frames"].as_u64().expect("frames");
        b += ev["bytes"].as_u64().expect("bytes");
    }
    (f, b)
}

/// Asserts an §4 error answer: exact type, request_id, code, and a string message.
pub fn assert_error(v: &Value, request_id: Option<&str>, code: &str) {
    assert_eq!(v["type"], "error", "expected an error: {v}");
    assert_eq!(v["code"], code, "error code: {v}");
    assert!(v["message"].is_string(), "error message is a string: {v}");
    if let Some(id) = request_id {
        assert_eq!(v["request_id"], id, "request_id echoed: {v}");
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP (for requests a real client would never send)
// ---------------------------------------------------------------------------------------

/// A raw HTTP answer read off a TcpStream.
#[derive(Debug)]
pub struct RawResp {
    /// Status code.
    pub status: u16,
    /// The whole head as text.
    pub head: String,
    /// Header (lower-cased name, value) pairs.
    pub headers: Vec<(String, String)>,
}

impl RawResp {
    /// First value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Connects to `addr` with IO timeouts set.
pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("tcp connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Writes `request` and reads the answer's head.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> RawResp {
    let mut s = raw_connect(addr);
    // The relay may answer (and close) before reading all of a huge request.
    let _ = s.write_all(request);
    read_head(&mut s)
}

/// Reads the body of `resp` (by Content-Length; empty without one) from `s`.
pub fn read_body(s: &mut TcpStream, resp: &RawResp) -> Vec<u8> {
    let len: usize = resp
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("read response body");
    body
}

/// RFC 9112 §9.3/§9.6: after a response without `Connection: close` the connection stays
/// usable for another request; after one with it, the server closes. Sends `request` twice
/// on one connection and asserts whichever the first answer announced; returns both statuses.
pub fn assert_connection_semantics(addr: SocketAddr, request: &[u8], what: &str) -> Vec<u16> {
    let mut s = raw_connect(addr);
    s.write_all(request).expect("write request");
    let first = read_head(&mut s);
    read_body(&mut s, &first);
    let closes = first
        .header("connection")
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
    if closes {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(
            rest.is_empty(),
            "{what}: bytes after a Connection: close answer"
        );
        return vec![first.status];
    }
    let write = s.write_all(request);
    let mut probe = [0u8; 1];
    let peeked = s.peek(&mut probe);
    assert!(
        write.is_ok() && matches!(peeked, Ok(1)),
        "{what}: answer {} had no `Connection: close` but the connection was closed \
         (RFC 9112 §9.6: a server that closes must say so); head {:?}",
        first.status,
        first.head
    );
    let second = read_head(&mut s);
    vec![first.status, second.status]
}

/// Reads an HTTP response head from `s`.
pub fn read_head(s: &mut TcpStream) -> RawResp {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => buf.push(byte[0]),
            Err(e) => panic!(
                "reading response head: {e} (got {:?})",
                String::from_utf8_lossy(&buf)
            ),
        }
        assert!(buf.len() < 64 * 1024, "response head too long");
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    assert!(
        version.starts_with("HTTP/1."),
        "bad status line {status_line:?} (head {head:?})"
    );
    let status = parts
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    RawResp {
        status,
        head,
        headers,
    }
}

/// A WebSocket upgrade request head for `path` with extra header lines.
pub fn upgrade_request(path: &str, extra: &[&str]) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// One Prometheus sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses Prometheus text format, asserting every non-comment line is a valid sample.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(_) => {
                let close = line
                    .rfind('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                (&line[..close + 1], line[close + 1..].trim())
            }
            None => line
                .split_once(' ')
                .unwrap_or_else(|| panic!("no value: {line}")),
        };
        let (name, labels) = match series.find('{') {
            Some(open) => (
                &series[..open],
                parse_labels(&series[open + 1..series.len() - 1]),
            ),
            None => (series, BTreeMap::new()),
        };
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line:?}"
        );
        let value_text = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        out.push(Sample {
            name: name.trim().to_string(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (k, after) = rest
            .split_once('=')
            .unwrap_or_else(|| panic!("bad labels {s:?}"));
        let after = after
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("unquoted label in {s:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label in {s:?}"));
        map.insert(k.trim().to_string(), value);
        rest = after[end + 1..].trim_start_matches(',').trim();
    }
    map
}

/// `posrelay_connections{role=…,shard=…}` by shard for `role`.
pub fn connections_by_shard(samples: &[Sample], role: &str) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|s| {
            s.name == "posrelay_connections"
                && s.labels.get("role").map(|r| r.as_str()) == Some(role)
        })
        .map(|s| (s.labels.get("shard").cloned().unwrap_or_default(), s.value))
        .collect()
}

/// Polls `cond` every 50 ms until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------
// A connected device and POS (the seed 001 flow)
// ---------------------------------------------------------------------------------------

/// A device and a POS joined through the relay: registration, device connection, access
/// token, control channel, claim and session.
pub struct Pair {
    /// The connected device.
    pub device: Device,
    /// The POS control channel.
    pub pos: Pos,
    /// The POS session (data path).
    pub session: Ws,
    /// The POS's access token.
    pub token: String,
    /// The claimed answer.
    pub session_id: String,
    /// `session_url` of the claimed answer.
    pub session_url: String,
}

impl Pair {
    /// Runs steps 1–9 of seed 001 for `tsn` with `creds` (device and POS share them, as a
    /// terminal carries its POS client's credentials).
    pub fn connect(relay: &Relay, domain: &str, tsn: &str, creds: &Creds) -> Pair {
        let device = Device::register_and_connect(relay, tsn, creds);
        let token = relay.token(domain, creds);
        let mut pos = Pos::control(relay, &token);
        let (session_id, session_url) = pos.claim_ok(tsn);
        assert_eq!(
            session_id, device.reg.session_id,
            "the claim names the device's session"
        );
        let session = Pos::session(relay, &session_url, &token);
        Pair {
            device,
            pos,
            session,
            token,
            session_id,
            session_url,
        }
    }

    /// `what` as a text message POS → device, then device → POS; each side must get it
    /// exactly.
    pub fn exchange_text(&mut self, what: &str) {
        send_text(&mut self.session, what);
        match self.device.recv() {
            Message::Text(t) => assert_eq!(t, what),
            other => panic!("{what}: device got {}", show(&other)),
        }
        self.device.send_text(what);
        match recv(&mut self.session) {
            Message::Text(t) => assert_eq!(t, what),
            other => panic!("{what}: POS got {}", show(&other)),
        }
    }
}

/// A text payload of exactly `n` UTF-8 bytes (multi-byte characters included when it fits),
/// distinct per `seed`.
pub fn text_payload(n: usize, seed: u64) -> String {
    let mut s = String::with_capacity(n);
    if n >= 3 {
        s.push('€');
    }
    let mut i = seed;
    while s.len() < n {
        s.push((b'a' + (i % 26) as u8) as char);
        i += 1;
    }
    s
}

/// A binary payload of exactly `n` pseudo-random bytes, distinct per `seed`.
pub fn binary_payload(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

// =======================================================================================
// Fault suite (bin/tests/faults_*.rs): raw frames, peers that vanish, source addresses,
// and the after-case health check every fault case ends with.
// =======================================================================================

/// Growth of the relay's VmRSS over its warm baseline that still counts as "back near where
/// it started": the allocator keeps some freed pages, so a case that moved megabytes may
/// leave a few behind. A leak of per-connection state over hundreds of connections, or a
/// buffer that is never freed, shows above it.
pub const RSS_SLACK_KIB: u64 = 8 << 10;

/// Starts the relay for a fault case.
///
/// VmRSS tracks live memory closely enough for the after-case checks: the relay runs on
/// mimalloc, which hands freed pages back, and the 12 MiB of argon2 working memory every
/// login needs is taken once per shard before the relay says it is ready and reused
/// (core/src/auth/secrets.rs), instead of being allocated and freed per login (with
/// glibc's malloc, a burst of logins used to leave 100+ MiB of free-but-kept pages).
pub fn fault_relay(args: &[&str]) -> Relay {
    Relay::start(args)
}

/// The device every fault case provisions for its after-case check (a fresh pair).
pub const PROBE_TSN: &str = "99990000";

/// The mask key of every raw client frame (RFC 6455 §5.3: any 32-bit value).
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Opcodes (RFC 6455 §5.2).
pub mod op {
    /// Continuation.
    pub const CONT: u8 = 0x0;
    /// Text.
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// One frame as raw bytes: FIN, RSV bits (RSV1 = 0b100), opcode, optional mask key and the
/// payload, with the shortest length encoding (RFC 6455 §5.2).
pub fn client_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 0b111) << 4) | (opcode & 0x0f)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xffff {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked, final frame (what a well-behaved client sends).
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(true, 0, opcode, Some(MASK), payload)
}

/// A masked close frame with `code` and `reason` bytes.
pub fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason);
    masked(op::CLOSE, &body)
}

/// A masked frame header that announces `len` in the 64-bit form, without any payload.
pub fn header_announcing(opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![0x80 | opcode, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&MASK);
    out
}

/// A frame read off the wire by [`RawWs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Payload (unmasked).
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The status code of a close frame (1005 when its body is empty).
    pub fn close_code(&self) -> Option<u16> {
        if self.opcode != op::CLOSE {
            return None;
        }
        match self.payload.get(..2) {
            Some(b) => Some(u16::from_be_bytes([b[0], b[1]])),
            None => Some(1005),
        }
    }
}

/// The path (and query) of an absolute `ws://host/path` URL.
pub fn url_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    after_scheme
        .find('/')
        .map(|i| &after_scheme[i..])
        .unwrap_or("/")
}

/// A WebSocket client that writes exact bytes (masks, reserved bits, bad lengths) on a plain
/// TcpStream after doing the upgrade by hand, and parses what the relay sends.
pub struct RawWs {
    /// The socket.
    pub stream: TcpStream,
}

impl RawWs {
    /// Upgrades a fresh connection to `addr` on `path` with extra header lines; Err is the
    /// non-101 answer.
    pub fn upgrade(addr: SocketAddr, path: &str, extra: &[&str]) -> Result<RawWs, RawResp> {
        Self::upgrade_on(raw_connect(addr), path, extra)
    }

    /// Upgrades `stream` (already connected) on `path`.
    pub fn upgrade_on(mut stream: TcpStream, path: &str, extra: &[&str]) -> Result<RawWs, RawResp> {
        stream.set_nodelay(true).unwrap();
        stream
            .write_all(&upgrade_request(path, extra))
            .expect("write upgrade request");
        // read_head reads byte by byte, so no frame byte after the head is consumed.
        let resp = read_head(&mut stream);
        if resp.status == 101 {
            Ok(RawWs { stream })
        } else {
            Err(resp)
        }
    }

    /// Upgrades on `path_or_url` with `Authorization: Bearer <token>` (or none); panics
    /// unless the answer is 101.
    pub fn open(relay: &Relay, path_or_url: &str, token: Option<&str>) -> RawWs {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let extra: Vec<&str> = auth.iter().map(|s| s.as_str()).collect();
        match RawWs::upgrade(relay.relay_addr, url_path(path_or_url), &extra) {
            Ok(ws) => ws,
            Err(resp) => relay.fail(&format!(
                "raw upgrade of {path_or_url} answered {}: {}",
                resp.status, resp.head
            )),
        }
    }

    /// Writes bytes; errors are returned (the relay may already have closed).
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one frame. Ok(None) at a clean end of stream between frames; an error for a
    /// reset, a timeout or a stream that ends inside a frame.
    pub fn read_frame(&mut self) -> std::io::Result<Option<RawFrame>> {
        let mut head = [0u8; 2];
        match self.stream.read(&mut head[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        self.stream.read_exact(&mut head[1..])?;
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b)?;
                u16::from_be_bytes(b) as u64
            }
            127 => {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b)?;
                u64::from_be_bytes(b)
            }
            n => n as u64,
        };
        if len > 256 << 20 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame of {len} bytes from the relay"),
            ));
        }
        let mut key = [0u8; 4];
        if masked {
            self.stream.read_exact(&mut key)?;
        }
        let mut payload = vec![0u8; len as usize];
        self.stream.read_exact(&mut payload)?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        Ok(Some(RawFrame {
            fin,
            opcode,
            payload,
        }))
    }

    /// Reads frames until a close frame (skipping pings, pongs and data) and returns its
    /// code; Err describes how the connection ended without one.
    pub fn close_code(&mut self) -> Result<u16, String> {
        loop {
            match self.read_frame() {
                Ok(Some(f)) if f.opcode == op::CLOSE => return Ok(f.close_code().unwrap_or(1005)),
                Ok(Some(_)) => continue,
                Ok(None) => return Err("end of stream without a close frame".into()),
                Err(e) => return Err(format!("{e} before a close frame")),
            }
        }
    }

    /// After the relay's close frame: the relay ends the TCP connection (EOF or reset)
    /// without sending anything else but frames. Panics if it stays open for IO_TIMEOUT.
    pub fn assert_ends(&mut self, what: &str) {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("{what}: the relay kept the connection open ({e})"),
            }
        }
    }
}

/// SO_LINGER 0: closing `stream` now sends a reset instead of a FIN (a peer that crashes or
/// whose network vanishes, as far as the relay can tell).
pub fn set_reset_on_close(stream: &TcpStream) {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
}

/// Kills a tungstenite peer the hard way: reset, no close frame.
pub fn reset_ws(mut ws: Ws) {
    set_reset_on_close(tcp_of(&mut ws));
    drop(ws);
}

/// Connects from source address `src` (any 127.0.0.0/8 address is local on Linux) to `dst`.
pub fn connect_from(src: std::net::IpAddr, dst: SocketAddr) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::new(src, 0).into())
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    sock.connect_timeout(&dst.into(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}"));
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A `POST /oauth2/v1/{domain}/token` (Basic credentials) from source address `src` on
/// its own connection; returns the head and the body text.
pub fn token_request_from(
    relay: &Relay,
    src: std::net::IpAddr,
    domain: &str,
    client_id: &str,
    secret: &str,
) -> (RawResp, String) {
    let body = "grant_type=client_credentials";
    let req = format!(
        "POST /oauth2/v1/{domain}/token HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        basic_auth(client_id, secret),
        body.len()
    );
    let mut s = connect_from(src, relay.relay_addr);
    s.write_all(req.as_bytes()).expect("write token request");
    let head = read_head(&mut s);
    let text = String::from_utf8_lossy(&read_body(&mut s, &head)).into_owned();
    (head, text)
}

/// A §2 registration from source address `src`: the reply and the close code after it.
pub fn register_from(
    relay: &Relay,
    src: std::net::IpAddr,
    tsn: &str,
    client_id: &str,
    secret: &str,
) -> (Value, u16) {
    let stream = connect_from(src, relay.relay_addr);
    let url = relay.ws_url(DEVICE_LISTENER);
    let (ws, _) = tungstenite::client(url.as_str(), MaybeTlsStream::Plain(stream))
        .unwrap_or_else(|e| panic!("registration upgrade from {src}: {e}"));
    let mut ws: Ws = ws;
    let msg =
        json!({"type": "register", "tsn": tsn, "client_id": client_id, "client_secret": secret});
    send_json(&mut ws, &msg);
    let reply = recv_json(&mut ws);
    let code = expect_close(&mut ws);
    (reply, code)
}

/// Sum of the samples of `name` whose labels include all of `labels` (0 when none).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_metrics(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(|x| x.as_str()) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Binary messages that carry a sequence number in their first 8 bytes and a fixed body
/// after it, so that loss, reordering and corruption are all visible.
#[derive(Clone)]
pub struct SeqFrames {
    body: Arc<Vec<u8>>,
}

impl SeqFrames {
    /// Messages of `len` (>= 8) bytes.
    pub fn new(len: usize) -> SeqFrames {
        assert!(len >= 8);
        SeqFrames {
            body: Arc::new(binary_payload(len, 0x5eed)),
        }
    }

    /// Message number `seq`.
    pub fn make(&self, seq: u64) -> Vec<u8> {
        let mut m = self.body.as_ref().clone();
        m[..8].copy_from_slice(&seq.to_be_bytes());
        m
    }

    /// The sequence number of `payload`, panicking unless the rest is byte-exact.
    pub fn check(&self, payload: &[u8]) -> u64 {
        assert_eq!(payload.len(), self.body.len(), "message length");
        assert!(payload[8..] == self.body[8..], "message body corrupted");
        u64::from_be_bytes(payload[..8].try_into().unwrap())
    }

    /// Length of each message.
    pub fn len(&self) -> usize {
        self.body.len()
    }
}

/// The after-case check of the fault suite: a fresh terminal/POS pair (on [`PROBE_TSN`])
/// completes an exchange, and the relay's VmRSS comes back near its warm baseline.
pub struct Health {
    domain: String,
    creds: Creds,
    /// VmRSS after warm-up, KiB.
    pub baseline_kib: u64,
}

impl Health {
    /// Runs three probe exchanges (so per-shard tables, caches and buffers exist) and then
    /// samples VmRSS. `creds` must be a client whose store holds [`PROBE_TSN`].
    pub fn warm_up(relay: &Relay, domain: &str, creds: &Creds) -> Health {
        for _ in 0..3 {
            probe_exchange(relay, domain, creds);
        }
        Health {
            domain: domain.to_string(),
            creds: creds.clone(),
            baseline_kib: relay.rss_kib(),
        }
    }

    /// A fresh pair completes an exchange; then every `posrelay_connections` gauge and
    /// `posrelay_open_connections` (admission slots) must come back to 0 (the case has dropped all its connections) and VmRSS within
    /// `baseline + slack_kib` (both polled for up to 10 s: closing is asynchronous).
    pub fn check(&self, relay: &Relay, what: &str, slack_kib: u64) {
        probe_exchange(relay, &self.domain, &self.creds);
        let mut open = Vec::new();
        let closed = wait_for(Duration::from_secs(10), || {
            open = parse_metrics(&relay.metrics())
                .into_iter()
                .filter(|s| {
                    (s.name == "posrelay_connections" || s.name == "posrelay_open_connections")
                        && s.value != 0.0
                })
                .map(|s| format!("{:?}={}", s.labels, s.value))
                .collect();
            open.is_empty().then_some(())
        });
        if closed.is_none() {
            relay.fail(&format!(
                "{what}: connections still counted open after the case: {open:?}"
            ));
        }
        let limit = self.baseline_kib + slack_kib;
        let mut last = 0;
        let ok = wait_for(Duration::from_secs(10), || {
            last = relay.rss_kib();
            (last <= limit).then_some(())
        });
        eprintln!(
            "{what}: relay VmRSS baseline {} KiB, after {last} KiB (slack {slack_kib} KiB)",
            self.baseline_kib
        );
        if ok.is_none() {
            relay.fail(&format!(
                "{what}: relay VmRSS {last} KiB did not come back within {slack_kib} KiB of \
                 its baseline {} KiB",
                self.baseline_kib
            ));
        }
    }
}

/// A fresh pair on [`PROBE_TSN`]: POS → device text, device → POS binary, then release and
/// clean closes.
pub fn probe_exchange(relay: &Relay, domain: &str, creds: &Creds) {
    let mut p = Pair::connect(relay, domain, PROBE_TSN, creds);
    let text = format!("probe {}", random_hex(4));
    send_text(&mut p.session, &text);
    match p.device.recv() {
        Message::Text(t) => assert_eq!(t, text, "probe: POS -> device"),
        other => panic!("probe: device got {}", show(&other)),
    }
    let bin = binary_payload(3000, 7);
    p.device.send_binary(&bin);
    match recv(&mut p.session) {
        Message::Binary(b) => assert!(b == bin, "probe: device -> POS"),
        other => panic!("probe: POS got {}", show(&other)),
    }
    let released = p.pos.release(PROBE_TSN);
    assert_eq!(released["type"], "released", "probe release: {released}");
    assert_eq!(
        expect_close(&mut p.session),
        4001,
        "probe: release closes the session"
    );
    close_and_wait(&mut p.pos.ws, 1000);
    close_and_wait(&mut p.device.ws, 1000);
}

/// Parses the whole frames at the start of `bytes` (what a peer's receive buffer held);
/// returns them and the number of bytes left over (a frame cut short).
pub fn parse_frames(bytes: &[u8]) -> (Vec<RawFrame>, usize) {
    let mut frames = Vec::new();
    let mut at = 0usize;
    loop {
        let rest = &bytes[at..];
        let (Some(&b0), Some(&b1)) = (rest.first(), rest.get(1)) else {
            break;
        };
        let masked = b1 & 0x80 != 0;
        let (len, mut off) = match b1 & 0x7f {
            126 => match rest.get(2..4) {
                Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4usize),
                None => break,
            },
            127 => match rest.get(2..10) {
                Some(b) => (u64::from_be_bytes(b.try_into().unwrap()), 10usize),
                None => break,
            },
            n => (n as u64, 2usize),
        };
        let mut key = [0u8; 4];
        if masked {
            match rest.get(off..off + 4) {
                Some(k) => key.copy_from_slice(k),
                None => break,
            }
            off += 4;
        }
        let Some(end) = usize::try_from(len).ok().and_then(|l| off.checked_add(l)) else {
            break;
        };
        let Some(body) = rest.get(off..end) else {
            break;
        };
        let payload = body
            .iter()
            .enumerate()
            .map(|(i, b)| if masked { b ^ key[i % 4] } else { *b })
            .collect();
        frames.push(RawFrame {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0f,
            payload,
        });
        at += end;
    }
    (frames, bytes.len() - at)
}

impl RawWs {
    /// Everything the relay sent until it ended the connection (EOF or reset), read without
    /// ever writing; panics if it is still open after `limit`. Calls `tick` every ~50 ms
    /// meanwhile (to keep other connections alive).
    pub fn read_to_end(&mut self, limit: Duration, mut tick: impl FnMut()) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        self.stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(
                        Instant::now() < deadline,
                        "the relay kept the connection open for {limit:?}"
                    );
                    tick();
                }
                Err(e) => panic!("reading to the end: {e}"),
            }
        }
        self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        got
    }
}

/// Bytes in `stream`'s send queue that the peer's TCP has not acknowledged yet (SIOCOUTQ).
pub fn unacked_bytes(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int to the pointer, which points to a live local.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0, "ioctl(TIOCOUTQ)");
    n.max(0) as usize
}

/// Waits until everything written to `stream` has been acknowledged by the peer's TCP
/// (the relay's kernel holds it, whether or not the relay has read it yet).
pub fn wait_acked(stream: &TcpStream, limit: Duration) {
    let acked = wait_for(limit, || (unacked_bytes(stream) == 0).then_some(()));
    assert!(
        acked.is_some(),
        "{} bytes still unacknowledged after {limit:?}",
        unacked_bytes(stream)
    );
}

impl Relay {
    /// Whether the relay process has exited (reaps it if so).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(child) => match child.try_wait().expect("try_wait") {
                Some(_) => {
                    self.child = None;
                    true
                }
                None => false,
            },
        }
    }
}
