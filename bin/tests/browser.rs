//! The browser POS page (`GET /demo/` on the admin listener) in a real headless
//! Chromium, driven over the Chrome DevTools protocol: it fills the form, gets a
//! token, claims a terminal run by `posrelay device-sim`, opens the session with the
//! bearer token as a subprotocol (PROTOCOL.md §7), sends messages and sees the
//! terminal's replies in the page. A screenshot is saved to `target/browser-demo.png`.
//! With *Reliable session* ticked (PROTOCOL.md §11), it breaks the connection and checks
//! the resume.
//!
//! Needs Debian's Chromium: `apt-get install -y chromium`.

mod common;

use common::{spawn_lines, wait_line, Killed, Relay};
use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

/// A CDP session on one page target.
struct Cdp {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Cdp {
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(tungstenite::Message::Text(msg.to_string()))
            .expect("CDP send");
        loop {
            let frame = self.ws.read().expect("CDP read");
            let tungstenite::Message::Text(text) = frame else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str()).expect("CDP JSON");
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("CDP {method} failed: {err}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page and returns its JSON value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page script failed: {ex}\n{expr}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is `true`; on timeout fails with `explain`'s value.
    fn wait_for(&mut self, expr: &str, explain: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.eval(expr) == Value::Bool(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: timed out; the page says: {}", self.eval(explain));
    }
}

/// Starts Chromium with a fresh profile and connects to its first page.
fn chromium(profile: &Path) -> (Killed, Cdp) {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium` \
         (CI: add it to .ci/run before the tests)"
    );
    let child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let child = Killed(child);
    // Chromium writes the port it picked to DevToolsActivePort in the profile.
    let port_file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    let port: u16 = loop {
        if let Ok(text) = std::fs::read_to_string(&port_file) {
            if let Some(p) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                break p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "chromium did not open its DevTools port"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let page_ws = loop {
        let targets: Value = ureq::get(&format!("http://127.0.0.1:{port}/json/list"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        let page = targets.as_array().and_then(|list| {
            list.iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
        });
        if let Some(url) = page {
            break url;
        }
        assert!(Instant::now() < deadline, "chromium has no page target");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (ws, _) = tungstenite::connect(page_ws.as_str()).expect("CDP connect");
    (child, Cdp { ws, next_id: 1 })
}

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

#[test]
fn browser_pos_claims_a_terminal_and_exchanges_messages() {
    let bin = env!("CARGO_BIN_EXE_posrelay");

    // The relay, a tenant, a POS client and a terminal.
    let relay_proc = Relay::start(&[]);
    let relay = relay_proc.ws_url("");
    let admin = relay_proc.admin_url("");
    let creds = relay_proc.provision("demo", "s1", &["10000001"]);
    let (client_id, client_secret) = (creds.client_id.clone(), creds.client_secret.clone());

    // The page (on the admin listener's origin) reads the token answer of the relay
    // listener (another origin) only if the token endpoint allows it (CORS).
    let probe = relay_proc.token_request(
        "demo",
        &[("Origin", &admin)],
        &format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            common::form_encode(&client_id),
            common::form_encode(&client_secret)
        ),
    );
    assert!(
        probe.header("access-control-allow-origin").is_some(),
        "the token endpoint answers without Access-Control-Allow-Origin, so the browser POS \
         (served by the admin listener, another origin) cannot read its token: the relay must \
         add `Access-Control-Allow-Origin: *` to POST /oauth2/v1/{{domain}}/token answers"
    );

    // The terminal: posrelay device-sim.
    let mut device = Command::new(bin);
    device
        .args(["device-sim", "--relay", &relay, "--tsn", "10000001"])
        .env("POSRELAY_CLIENT_ID", &client_id)
        .env("POSRELAY_CLIENT_SECRET", &client_secret);
    let (device_proc, device_lines) = spawn_lines(device);
    wait_line(&device_lines, "device-sim online", |l| {
        l.ends_with("] online")
    });

    // The page, in Chromium.
    let (_chromium, mut cdp) = chromium(&relay_proc.scratch().join("chromium-profile"));
    cdp.call("Page.enable", json!({}));
    let page =
        format!("{admin}/demo/?relay={relay}&domain=demo&client_id={client_id}&tsn=10000001");
    cdp.call("Page.navigate", json!({ "url": page }));
    cdp.wait_for(
        "document.readyState === 'complete' && !!document.getElementById('btn-connect')",
        "document.title",
        "page load",
    );
    assert_eq!(cdp.eval("document.title"), "posrelay browser POS");
    assert_eq!(
        cdp.eval("document.getElementById('client_id').value"),
        client_id.as_str()
    );

    // A person types the secret and presses the button.
    cdp.eval("document.getElementById('client_secret').focus()");
    cdp.call("Input.insertText", json!({ "text": client_secret }));
    cdp.eval("document.getElementById('btn-connect').click()");
    cdp.wait_for(
        "window.posrelayDemo.state === 'session'",
        "window.posrelayDemo.status",
        "token, claim and session",
    );
    let status = cdp.eval("document.getElementById('status').textContent");
    assert!(
        status
            .as_str()
            .unwrap_or("")
            .starts_with("Connected: terminal 10000001 claimed"),
        "{status}"
    );

    // An SCA request from the presets, then free text that the terminal echoes.
    cdp.eval(
        "(() => { const p = document.getElementById('preset'); p.value = 'sca-start'; \
         p.dispatchEvent(new Event('change')); document.getElementById('btn-send').click(); })()",
    );
    cdp.wait_for(
        "window.posrelayDemo.received.length >= 1",
        "window.posrelayDemo.status",
        "SCA reply",
    );
    let reply = cdp.eval("window.posrelayDemo.received[0]");
    assert!(
        reply
            .as_str()
            .unwrap_or("")
            .contains("<RESPONSE_TEXT>Session Started</RESPONSE_TEXT>"),
        "{reply}"
    );
    cdp.eval(
        "(() => { document.getElementById('message').value = 'hello from the browser'; \
         document.getElementById('btn-send').click(); })()",
    );
    cdp.wait_for(
        "window.posrelayDemo.received.length >= 2",
        "window.posrelayDemo.status",
        "echoed reply",
    );
    assert_eq!(
        cdp.eval("window.posrelayDemo.received[1]"),
        "hello from the browser"
    );
    // The reply is on the page, in the log, as a received line.
    let shown =
        cdp.eval("[...document.querySelectorAll('#log li.recv .d')].map(e => e.textContent)");
    assert!(
        shown
            .as_array()
            .is_some_and(|l| l.iter().any(|t| t == "hello from the browser")),
        "{shown}"
    );

    // Each reply shows its round trip, beside the time (the text stays the message).
    assert_eq!(cdp.eval("window.posrelayDemo.rtts.length"), 2);
    let times =
        cdp.eval("[...document.querySelectorAll('#log li.recv .t')].map(e => e.textContent)");
    assert!(
        times.as_array().is_some_and(
            |l| l.len() == 2 && l.iter().all(|t| t.as_str().unwrap_or("").ends_with(" ms)"))
        ),
        "{times}"
    );

    // The admin API sees the claim.
    let devices = relay_proc.admin_devices("demo");
    assert_eq!(devices[0]["claimed_by"], client_id.as_str());

    // The terminal goes away: the status box says so (not a green "connected" beside an
    // OFFLINE badge), and what is sent meanwhile is marked as queued.
    drop(device_proc);
    cdp.wait_for(
        "window.posrelayDemo.deviceOnline === false",
        "window.posrelayDemo.status",
        "device_status offline",
    );
    assert_eq!(
        cdp.eval("document.getElementById('status').className"),
        "warn"
    );
    let status = cdp.eval("document.getElementById('status').textContent");
    assert!(
        status.as_str().unwrap_or("").contains("offline"),
        "{status}"
    );
    cdp.eval(
        "(() => { document.getElementById('message').value = 'while it is away'; \
         document.getElementById('btn-send').click(); })()",
    );
    assert_eq!(cdp.eval("window.posrelayDemo.queued"), 1);
    assert_eq!(
        cdp.eval("document.querySelectorAll('#log li.sent.queued').length"),
        1
    );

    let shot = cdp.call("Page.captureScreenshot", json!({ "format": "png" }));
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("screenshot base64");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = target_dir().join("browser-demo.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot: {}", path.display());
}

/// Seed 004's client page (`clients/seed004_browser_login.html`) with `query`.
fn seed004_page(query: &str) -> String {
    let page =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/seed004_browser_login.html");
    format!("file://{}?{query}", page.display())
}

#[test]
fn seed_004_client_logs_in_with_its_first_message_in_chromium() {
    // PROTOCOL.md §7b with a browser client written like seed 004's: `new WebSocket(url)`
    // without subprotocols, the login as the first message.
    let relay_proc = Relay::start(&["--handshake-timeout", "2s"]);
    let creds = relay_proc.provision("demo", "s1", &["10000001"]);
    let token = relay_proc.token("demo", &creds);
    let url = relay_proc.ws_url("/cloud-connector/v1/pos-listener");
    let (_chromium, mut cdp) = chromium(&relay_proc.scratch().join("chromium-profile"));
    cdp.call("Page.enable", json!({}));
    // The login a second after the socket opened: the relay says nothing meanwhile.
    let page = seed004_page(&format!("url={url}&token={token}&delay_ms=1000"));
    cdp.call("Page.navigate", json!({ "url": page }));
    cdp.wait_for(
        "!!window.seed004 && window.seed004.state === 'logged_in'",
        "JSON.stringify(window.seed004)",
        "seed 004 login",
    );
    assert_eq!(
        cdp.eval("window.seed004.before_login"),
        0,
        "§7b: silence before the login"
    );
    let first: Value =
        serde_json::from_str(cdp.eval("window.seed004.received[0]").as_str().unwrap()).unwrap();
    assert_eq!(first["type"], "logged_in", "{first}");
    assert!(
        first["expires_in"].as_u64().is_some_and(|s| s > 0),
        "{first}"
    );
    // The connection goes on as a control channel.
    cdp.eval(r#"window.seed004.send(JSON.stringify({type: "devices", request_id: "d1"}))"#);
    cdp.wait_for(
        "window.seed004.received.length >= 2",
        "JSON.stringify(window.seed004)",
        "devices answer",
    );
    let devices: Value =
        serde_json::from_str(cdp.eval("window.seed004.received[1]").as_str().unwrap()).unwrap();
    assert_eq!(devices["type"], "devices", "{devices}");
    assert_eq!(devices["devices"][0]["tsn"], "10000001");

    // A bad token: silence, then 1008 once the handshake timeout has run out.
    let page = seed004_page(&format!("url={url}&token=not.a.token"));
    cdp.call("Page.navigate", json!({ "url": page }));
    cdp.wait_for(
        "!!window.seed004 && window.seed004.state === 'closed'",
        "JSON.stringify(window.seed004)",
        "refused login closes",
    );
    let seen = cdp.eval("window.seed004");
    assert_eq!(seen["close"]["code"], 1008, "{seen}");
    assert_eq!(
        seen["received"],
        json!([]),
        "nothing before the close: {seen}"
    );
    // The page's clock starts when it sees the 101, after the relay's: a close "never
    // earlier" than 2 s from the upgrade is seen at least about 2 s after the open.
    let after = seen["close"]["ms_after_open"].as_f64().unwrap();
    assert!(after >= 1800.0, "closed {after} ms after the open: {seen}");
}

#[test]
fn the_demo_page_offers_login_by_first_message() {
    let bin = env!("CARGO_BIN_EXE_posrelay");
    let relay_proc = Relay::start(&[]);
    let relay = relay_proc.ws_url("");
    let admin = relay_proc.admin_url("");
    let creds = relay_proc.provision("demo", "s1", &["10000001"]);
    let token = relay_proc.token("demo", &creds);
    let mut device = Command::new(bin);
    device
        .args(["device-sim", "--relay", &relay, "--tsn", "10000001"])
        .env("POSRELAY_CLIENT_ID", &creds.client_id)
        .env("POSRELAY_CLIENT_SECRET", &creds.client_secret);
    let (_device_proc, device_lines) = spawn_lines(device);
    wait_line(&device_lines, "device-sim online", |l| {
        l.ends_with("] online")
    });
    let (_chromium, mut cdp) = chromium(&relay_proc.scratch().join("chromium-profile"));
    cdp.call("Page.enable", json!({}));
    let page = format!("{admin}/demo/?relay={relay}&domain=demo&tsn=10000001&auth=login");
    cdp.call("Page.navigate", json!({ "url": page }));
    cdp.wait_for(
        "document.readyState === 'complete' && !!document.getElementById('auth')",
        "document.title",
        "page load",
    );
    assert_eq!(cdp.eval("document.getElementById('auth').value"), "login");
    cdp.eval(&format!(
        "document.getElementById('token').value = {}",
        Value::String(token)
    ));
    cdp.eval("document.getElementById('btn-connect').click()");
    cdp.wait_for(
        "window.posrelayDemo.state === 'session'",
        "window.posrelayDemo.status",
        "login, claim and session",
    );
    cdp.eval(
        "(() => { document.getElementById('message').value = 'logged in by message'; \
         document.getElementById('btn-send').click(); })()",
    );
    cdp.wait_for(
        "window.posrelayDemo.received.length >= 1",
        "window.posrelayDemo.status",
        "echoed reply",
    );
    assert_eq!(
        cdp.eval("window.posrelayDemo.received[0]"),
        "logged in by message"
    );
    let logged =
        cdp.eval("[...document.querySelectorAll('#log li.event .d')].map(e => e.textContent)");
    let count = logged.as_array().map_or(0, |l| {
        l.iter()
            .filter(|t| t.as_str().unwrap_or("").starts_with("logged in"))
            .count()
    });
    assert_eq!(count, 2, "control channel and session logged in: {logged}");
}

/// Issue 15: the page with "Reliable session" checked speaks `posrelay.reliable.v1`
/// through `/demo/posrelay-reliable.js`: messages are numbered, and after a break the page
/// reconnects, resumes, shows what it resumed, and neither loses nor repeats a message.
#[test]
fn browser_pos_reliable_session_resumes_after_a_break() {
    use common::{recv, send_text, Device};
    use tungstenite::Message;
    const TSN: &str = "10000002";
    let relay_proc = Relay::start(&[]);
    let relay = relay_proc.ws_url("");
    let admin = relay_proc.admin_url("");
    let creds = relay_proc.provision("demo", "s1", &[TSN]);
    // The terminal is the test itself, so that it says exactly when it speaks.
    let mut device = Device::register_and_connect(&relay_proc, TSN, &creds);
    let device_gets = |device: &mut Device, want: &str| match recv(&mut device.ws) {
        Message::Text(t) => assert_eq!(t, want),
        other => panic!("terminal expected {want}, got {other:?}"),
    };

    let (_chromium, mut cdp) = chromium(&relay_proc.scratch().join("chromium-profile"));
    cdp.call("Page.enable", json!({}));
    let page = format!(
        "{admin}/demo/?relay={relay}&domain=demo&client_id={}&tsn={TSN}&reliable=1",
        creds.client_id
    );
    cdp.call("Page.navigate", json!({ "url": page }));
    cdp.wait_for(
        "document.readyState === 'complete' && typeof PosrelayReliable === 'function'",
        "document.title",
        "page and posrelay-reliable.js load",
    );
    assert_eq!(
        cdp.eval("document.getElementById('reliable').checked"),
        true
    );
    cdp.eval("document.getElementById('client_secret').focus()");
    cdp.call("Input.insertText", json!({ "text": creds.client_secret }));
    cdp.eval("document.getElementById('btn-connect').click()");
    cdp.wait_for(
        "window.posrelayDemo.state === 'session'",
        "window.posrelayDemo.status",
        "token, claim and reliable session",
    );
    assert_eq!(
        cdp.eval("JSON.stringify(window.posrelayDemo.resumes)"),
        r#"[{"relaySafe":0,"resent":0}]"#
    );
    let send = |cdp: &mut Cdp, text: &str| {
        cdp.eval(&format!(
            "(() => {{ document.getElementById('message').value = {}; \
             document.getElementById('btn-send').click(); }})()",
            json!(text)
        ));
    };

    // A numbered exchange.
    send(&mut cdp, "first");
    device_gets(&mut device, "first");
    send_text(&mut device.ws, "reply 1");
    cdp.wait_for(
        "window.posrelayDemo.received.length >= 1",
        "window.posrelayDemo.status",
        "first reply",
    );
    assert_eq!(cdp.eval("window.posrelayDemo.receivedSeqs[0]"), 1);

    // The break: the terminal answers and the person sends while the page reconnects.
    cdp.eval("document.getElementById('btn-break').click()");
    send_text(&mut device.ws, "reply 2, while broken");
    send(&mut cdp, "second, while broken");
    device_gets(&mut device, "second, while broken");
    cdp.wait_for(
        "window.posrelayDemo.resumes.length >= 2 && window.posrelayDemo.received.length >= 2",
        "JSON.stringify(window.posrelayDemo)",
        "resume after the break",
    );
    assert_eq!(
        cdp.eval("JSON.stringify(window.posrelayDemo.received)"),
        json!(["reply 1", "reply 2, while broken"]).to_string(),
        "nothing lost, nothing twice"
    );
    assert_eq!(
        cdp.eval("JSON.stringify(window.posrelayDemo.receivedSeqs)"),
        "[1,2]"
    );
    // The page says what it resumed.
    let resumed = cdp.eval(
        "[...document.querySelectorAll('#log li.resumed .d')].map(e => e.textContent).join('|')",
    );
    assert!(
        resumed
            .as_str()
            .unwrap_or("")
            .starts_with("resumed: the relay holds your messages up to #"),
        "{resumed}"
    );
    // The terminal got each POS message once: the next one it reads is the next one sent.
    send(&mut cdp, "third");
    device_gets(&mut device, "third");
}
