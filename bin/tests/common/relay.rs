//! The relay process under test: start, signals, restart, and its HTTP and admin
//! helpers (provisioning, tokens, metrics).

use super::*;

/// One running `posrelay serve` process with its own data directory.
pub struct Relay {
    child: Option<Child>,
    /// Address of the relay listener (devices, POS, OAuth).
    pub relay_addr: SocketAddr,
    /// Address of the admin listener.
    pub admin_addr: SocketAddr,
    /// Whether the relay announced `wss://`.
    pub tls: bool,
    /// The device mTLS listener the relay announced (§2a), if any.
    pub mtls_addr: Option<SocketAddr>,
    /// The admin token given in `POSRELAY_ADMIN_TOKEN`.
    pub admin_token: String,
    work: tempfile::TempDir,
    args: Vec<String>,
    generation: u32,
    http: ureq::Agent,
    client_tls: Option<Arc<rustls::ClientConfig>>,
    /// Files the relay's arguments name (its certificate), for as long as it may restart.
    files: Option<tempfile::TempDir>,
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
            mtls_addr: None,
            tls: false,
            admin_token: random_hex(16),
            work,
            args: args.iter().map(|s| s.to_string()).collect(),
            generation: 0,
            http: plain_agent(),
            client_tls: None,
            files: None,
        };
        relay.spawn();
        relay
    }

    /// Starts the relay as [`Relay::start`] does, serving `wss://` and `https://` with a
    /// self-signed certificate for 127.0.0.1 made now, trusted by this harness; the
    /// certificate's PEM file (kept as long as the relay) for clients of other processes.
    pub fn start_tls(args: &[&str]) -> (Relay, PathBuf) {
        let made = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .expect("self-signed certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (
            dir.path().join("relay.pem"),
            dir.path().join("relay-key.pem"),
        );
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
        let mut all = vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let mut relay = Relay::start(&all);
        assert!(relay.tls, "the relay announced wss://");
        relay.trust(made.cert.der().to_vec());
        relay.files = Some(dir);
        (relay, cert)
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
        cmd.arg("serve");
        if !self.args.iter().any(|a| a == "--listen") {
            cmd.arg("--listen").arg("127.0.0.1:0");
        }
        cmd.arg("--admin-listen")
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
                    } else if let Some(rest) = line.strip_prefix("device mTLS listening on wss://") {
                        self.mtls_addr = Some(rest.trim().parse::<SocketAddr>().unwrap_or_else(|e| {
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
