//! `posrelay demo`: the first five minutes. Starts the relay in-process on its
//! embedded store, provisions a `demo` domain, runs two simulated terminals and a
//! simulated POS through the whole flow (token, registration, claim, session, an
//! SCA XML transaction, a ShieldConex JSON request with heartbeats, a terminal going
//! offline and back with its queued frames delivered), prints each step with its
//! timing and a latency histogram, then keeps serving and prints how to connect.

use crate::client::http::{agent, fetch_token, AdminClient, HttpError};
use crate::client::url::WsUrl;
use crate::client::ws::WsClient;
use crate::config::ServeArgs;
use crate::logging::{self, LogFormat};
use crate::sim::device::{run_device, DeviceConfig, DeviceControl, DeviceEvent};
use crate::sim::pos::{Claim, ControlEvent, PosClient};
use crate::sim::responder::Responder;
use anyhow::{bail, ensure, Context};
use posrelay_core::io::server::{run_server, ServerAddrs, StopHandle};
use rand::RngCore;
use serde_json::{json, Value};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Flags of `posrelay demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Address of the relay listener [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the admin listener (provisioning, /metrics, /demo/) [default: 127.0.0.1:9080]
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Directory of the embedded store [default: ./posrelay-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of shards [default: all cores]
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Interval of the ShieldConex heartbeats
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Number of heartbeats sent
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub heartbeats: u32,
    /// Round trips measured for the latency histogram
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub round_trips: u32,
    /// Print the summary, stop the relay and exit (status 0 only if every step passed)
    #[arg(long)]
    pub exit_after_summary: bool,
    /// Admin API token [default: a random one, printed]
    #[arg(
        long,
        env = "POSRELAY_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,
    /// Log format of the relay's logs on stderr (level: RUST_LOG, default warn) [default: text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::units::parse_duration(s)
}

/// The demo tenant.
const DOMAIN: &str = "demo";
/// Its store and merchant.
const STORE: &str = "store-1";
const MERCHANT: &str = "merchant-1";
/// The two terminals: tsn, make, model, what they speak.
const TERMINALS: [(&str, &str, &str, &str); 2] = [
    ("10000001", "verifone", "p400", "SCA XML"),
    ("10000002", "ingenico", "axium", "ShieldConex JSON"),
];
/// Time allowed for any single expected event.
const WAIT: Duration = Duration::from_secs(15);

/// SCA requests (seeds/000: Verifone Secure Commerce Application over WebSocket).
const SCA_SESSION_START: &str = "<TRANSACTION><FUNCTION_TYPE>SESSION</FUNCTION_TYPE><COMMAND>START</COMMAND><BUSINESSDATE>20210709</BUSINESSDATE><SWIPE_AHEAD>1</SWIPE_AHEAD><TRAINING_MODE>0</TRAINING_MODE><INVOICE>123456</INVOICE><COUNTER>1</COUNTER></TRANSACTION>";
const SCA_PAYMENT: &str = "<TRANSACTION><FUNCTION_TYPE>PAYMENT</FUNCTION_TYPE><COMMAND>CAPTURE</COMMAND><TRANS_AMOUNT>12.50</TRANS_AMOUNT><COUNTER>2</COUNTER></TRANSACTION>";
const SCA_SESSION_FINISH: &str = "<TRANSACTION><FUNCTION_TYPE>SESSION</FUNCTION_TYPE><COMMAND>FINISH</COMMAND><COUNTER>3</COUNTER></TRANSACTION>";

/// One step's outcome.
struct Step {
    name: &'static str,
    outcome: Result<String, String>,
    elapsed: Duration,
}

/// Prints steps as they finish and keeps them for the summary.
struct Report {
    steps: Vec<Step>,
}

impl Report {
    /// Runs `f` as the next step, unless an earlier step failed (then it is skipped).
    fn step<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> anyhow::Result<(T, String)>,
    ) -> Option<T> {
        if self.steps.iter().any(|s| s.outcome.is_err()) {
            say(&format!("[SKIP] {:>2}. {name}", self.steps.len() + 1));
            self.steps.push(Step {
                name,
                outcome: Err("skipped: an earlier step failed".into()),
                elapsed: Duration::ZERO,
            });
            return None;
        }
        let started = Instant::now();
        let result = f();
        let elapsed = started.elapsed();
        let (value, outcome) = match result {
            Ok((v, detail)) => (Some(v), Ok(detail)),
            Err(e) => (None, Err(format!("{e:#}"))),
        };
        let step = Step {
            name,
            outcome,
            elapsed,
        };
        say(&format_step(self.steps.len() + 1, &step));
        self.steps.push(step);
        value
    }

    fn passed(&self) -> usize {
        self.steps.iter().filter(|s| s.outcome.is_ok()).count()
    }
}

fn format_step(n: usize, step: &Step) -> String {
    let (mark, detail) = match &step.outcome {
        Ok(d) => ("PASS", d.as_str()),
        Err(e) => ("FAIL", e.as_str()),
    };
    format!(
        "[{mark}] {n:>2}. {:<34} {:>9}  {detail}",
        step.name,
        format_duration(step.elapsed)
    )
}

fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us < 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else if us < 10_000_000 {
        format!("{} ms", us / 1000)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A simulated terminal running on its own thread.
struct Terminal {
    tsn: &'static str,
    control: DeviceControl,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A device event tagged with its terminal.
type TaggedEvent = (&'static str, DeviceEvent);

/// The terminals' events, waited for one terminal at a time: events of the other
/// terminals are kept for later, events of the same terminal that come before the
/// awaited one are passed over.
struct DeviceEvents {
    rx: mpsc::Receiver<TaggedEvent>,
    kept: std::collections::VecDeque<TaggedEvent>,
}

impl DeviceEvents {
    /// Waits for the event of `tsn` that `want` accepts.
    fn wait(
        &mut self,
        tsn: &str,
        mut want: impl FnMut(&DeviceEvent) -> bool,
    ) -> anyhow::Result<DeviceEvent> {
        let mut i = 0;
        while i < self.kept.len() {
            if self.kept[i].0 == tsn {
                let (_, e) = self.kept.remove(i).unwrap_or_else(|| unreachable!());
                if want(&e) {
                    return Ok(e);
                }
            } else {
                i += 1;
            }
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((t, e)) if t == tsn => {
                    if want(&e) {
                        return Ok(e);
                    }
                    if let DeviceEvent::Offline { reason } = &e {
                        tracing::debug!(tsn, reason, "terminal offline while waiting");
                    }
                }
                Ok(other) => self.kept.push_back(other),
                Err(_) => bail!("terminal {tsn}: nothing within {WAIT:?}"),
            }
        }
    }
}

/// Sends `request` and waits for its reply.
fn round_trip(session: &mut WsClient, request: &str) -> anyhow::Result<String> {
    session.send_text(request)?;
    let reply = session.recv_required(WAIT)?;
    Ok(reply.text().context("the reply is not text")?.to_owned())
}

/// The text of `<TAG>…</TAG>`.
fn xml_tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..start + len])
}

/// Creates, treating 409 (already there from an earlier run) as done.
fn idempotent(result: Result<(), HttpError>) -> anyhow::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.status == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Everything the steps produce that later steps (and the final hints) need.
struct Demo {
    addrs: ServerAddrs,
    relay: WsUrl,
    admin_token: String,
    client_id: String,
    client_secret: String,
}

/// Runs `posrelay demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_none() {
        // The steps are the output; the relay's own logs only when something is wrong.
        std::env::set_var("RUST_LOG", "warn");
    }
    let _log = logging::init(args.log_format.unwrap_or(LogFormat::Text));
    let serve = ServeArgs {
        listen: args.listen,
        admin_listen: args.admin_listen,
        data_dir: args.data_dir.clone(),
        shards: args.shards,
        ..ServeArgs::default()
    };
    let mut settings = serve.resolve()?;
    let admin_token = args.admin_token.clone().unwrap_or_else(|| {
        let mut b = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut b);
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    });
    settings.admin_token = Some(admin_token.clone());
    let data_dir = settings.data_dir.clone();
    let config = crate::serve::server_config(&settings);

    say("posrelay demo: a relay, two simulated terminals and a simulated POS, step by step");
    say(&format!("data directory: {}", data_dir.display()));
    say("");
    let mut report = Report { steps: Vec::new() };
    let stop = StopHandle::default();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server_stop = stop.clone();
    let server = std::thread::Builder::new()
        .name("posrelay-demo-relay".into())
        .spawn(move || {
            run_server(config, server_stop, move |addrs| {
                let _ = ready_tx.send(*addrs);
            })
        })?;

    let addrs = report.step("relay started", || {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addrs) => {
                let scheme = if addrs.tls { "wss" } else { "ws" };
                Ok((
                    addrs,
                    format!(
                        "relay {scheme}://{}, admin http://{}",
                        addrs.relay, addrs.admin
                    ),
                ))
            }
            Err(_) => bail!("the relay did not start (is the port in use? try --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0)"),
        }
    });
    let Some(addrs) = addrs else {
        // The server thread has the reason.
        return match server.join() {
            Ok(Err(e)) => Err(anyhow::anyhow!(e).context("the relay could not start")),
            _ => bail!("the relay could not start"),
        };
    };
    let relay = WsUrl::parse(&format!(
        "{}://{}",
        if addrs.tls { "wss" } else { "ws" },
        addrs.relay
    ))?;
    let admin = AdminClient::new(
        agent(None),
        &format!("http://{}", addrs.admin),
        &admin_token,
    );

    let creds = report.step("provisioned the demo tenant", || {
        let mut created = Vec::new();
        if idempotent(admin.create_domain(DOMAIN))? {
            created.push("domain");
        }
        if idempotent(admin.create_store(DOMAIN, STORE, MERCHANT))? {
            created.push("store");
        }
        for (tsn, make, model, _) in TERMINALS {
            if idempotent(admin.create_device(DOMAIN, tsn, make, model, STORE))? {
                created.push("terminal");
            }
        }
        let creds = admin.create_client(DOMAIN, Some(STORE))?;
        let state = if created.is_empty() {
            "kept from an earlier run".to_owned()
        } else {
            format!("created {}", created.join(", "))
        };
        Ok((
            creds,
            format!(
                "domain {DOMAIN}, store {STORE}, terminals {} and {} ({state}); new POS client",
                TERMINALS[0].0, TERMINALS[1].0
            ),
        ))
    });
    let demo = creds.map(|c| Demo {
        addrs,
        relay: relay.clone(),
        admin_token: admin_token.clone(),
        client_id: c.client_id,
        client_secret: c.client_secret,
    });

    let (event_tx, rx) = mpsc::channel::<TaggedEvent>();
    let mut events = DeviceEvents {
        rx,
        kept: Default::default(),
    };
    let mut terminals: Vec<Terminal> = Vec::new();
    if let Some(demo) = &demo {
        run_flow(
            &mut report,
            demo,
            &mut events,
            event_tx,
            &mut terminals,
            &args,
        );
    }

    let total = report.steps.len();
    let passed = report.passed();
    say("");
    if passed == total {
        say(&format!("summary: all {total} steps passed"));
    } else {
        say(&format!(
            "summary: {passed} of {total} steps passed; failed: {}",
            report
                .steps
                .iter()
                .filter(|s| s.outcome.is_err())
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    if !args.exit_after_summary {
        if let Some(demo) = &demo {
            print_hints(demo);
        }
        wait_for_signal(&stop)?;
    }
    for t in &terminals {
        t.control.stop();
    }
    stop.stop();
    for t in &mut terminals {
        if let Some(h) = t.thread.take() {
            let _ = h.join();
        }
    }
    match server.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(anyhow::anyhow!(e).context("the relay stopped with an error")),
        Err(_) => bail!("the relay thread panicked"),
    }
    say("relay stopped");
    if passed != total {
        bail!("{} of {total} demo steps failed", total - passed);
    }
    Ok(())
}

/// The steps after provisioning: terminals, POS, transactions, offline, latency.
fn run_flow(
    report: &mut Report,
    demo: &Demo,
    events: &mut DeviceEvents,
    event_tx: mpsc::Sender<TaggedEvent>,
    terminals: &mut Vec<Terminal>,
    args: &DemoArgs,
) {
    let sessions = report.step("terminals registered and online", || {
        for (tsn, _, _, _) in TERMINALS {
            let config = DeviceConfig {
                relays: vec![demo.relay.clone()],
                tsn: tsn.to_owned(),
                client_id: demo.client_id.clone(),
                client_secret: demo.client_secret.clone(),
                responder: Responder::Auto,
                client_cert: false,
                tls: None,
                backoff_initial: Duration::from_millis(200),
                backoff_max: Duration::from_secs(5),
            };
            let control = DeviceControl::default();
            let c = control.clone();
            let tx = event_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("terminal-{tsn}"))
                .spawn(move || {
                    run_device(&config, &c, |e| {
                        let _ = tx.send((tsn, e.clone()));
                    })
                })?;
            terminals.push(Terminal {
                tsn,
                control,
                thread: Some(thread),
            });
        }
        let mut sessions = Vec::new();
        for (tsn, _, _, _) in TERMINALS {
            let DeviceEvent::Registered { session_id } =
                events.wait(tsn, |e| matches!(e, DeviceEvent::Registered { .. }))?
            else {
                unreachable!("filtered above")
            };
            events.wait(tsn, |e| *e == DeviceEvent::Online)?;
            sessions.push(session_id);
        }
        let detail = format!(
            "{} ({}) and {} ({}) connected",
            TERMINALS[0].0, TERMINALS[0].3, TERMINALS[1].0, TERMINALS[1].3
        );
        Ok((sessions, detail))
    });
    let Some(device_sessions) = sessions else {
        return;
    };

    let token = report.step("POS got an access token", || {
        let t = fetch_token(
            &agent(None),
            &demo.relay.http_base(),
            DOMAIN,
            &demo.client_id,
            &demo.client_secret,
        )?;
        let detail = format!(
            "OAuth2 client credentials, JWT of {} bytes, expires in {} s",
            t.access_token.len(),
            t.expires_in
        );
        Ok((t.access_token, detail))
    });
    let Some(token) = token else { return };

    let pos = report.step("POS control channel lists devices", || {
        let mut pos = PosClient::with_token(&demo.relay, &token, None)?;
        let devices = pos.devices()?;
        for (tsn, _, _, _) in TERMINALS {
            ensure!(
                devices.iter().any(|(t, online)| t == tsn && *online),
                "{tsn} is not listed online: {devices:?}"
            );
        }
        let detail = devices
            .iter()
            .map(|(t, o)| format!("{t} {}", if *o { "online" } else { "offline" }))
            .collect::<Vec<_>>()
            .join(", ");
        Ok((pos, detail))
    });
    let Some(mut pos) = pos else { return };

    let claims = report.step("POS claimed both terminals", || {
        let mut claims: Vec<Claim> = Vec::new();
        for ((tsn, _, _, _), session_id) in TERMINALS.iter().zip(&device_sessions) {
            let claim = pos.claim(tsn)?;
            ensure!(claim.online, "{tsn} claimed but reported offline");
            ensure!(
                &claim.session_id == session_id,
                "{tsn}: claim names session {} but the terminal registered {session_id}",
                claim.session_id
            );
            claims.push(claim);
        }
        Ok((claims, "each claim names the terminal's session".to_owned()))
    });
    let Some(claims) = claims else { return };

    let sessions = report.step("POS sessions open", || {
        let a = pos.open_session(&claims[0])?;
        let b = pos.open_session(&claims[1])?;
        Ok((
            (a, b),
            format!("{}, {}", claims[0].session_url, claims[1].session_url),
        ))
    });
    let Some((mut sca, mut scx)) = sessions else {
        return;
    };

    report.step("SCA XML transaction", || {
        let started = round_trip(&mut sca, SCA_SESSION_START)?;
        ensure!(
            xml_tag(&started, "RESPONSE_TEXT") == Some("Session Started"),
            "unexpected answer: {started}"
        );
        let paid = round_trip(&mut sca, SCA_PAYMENT)?;
        ensure!(
            xml_tag(&paid, "RESULT") == Some("APPROVED")
                && xml_tag(&paid, "APPROVED_AMOUNT") == Some("12.50"),
            "unexpected answer: {paid}"
        );
        let finished = round_trip(&mut sca, SCA_SESSION_FINISH)?;
        ensure!(
            xml_tag(&finished, "RESPONSE_TEXT") == Some("Session Finished"),
            "unexpected answer: {finished}"
        );
        Ok((
            (),
            format!(
                "session start, payment 12.50 APPROVED (auth {}), session finish",
                xml_tag(&paid, "AUTH_CODE").unwrap_or("?")
            ),
        ))
    });

    report.step("ShieldConex JSON tokenize", || {
        let req = json!({
            "traceId": "b12be111-51a3-4b2e-b0bd-f79cb30f6e49",
            "action": "tokenization-tokenize",
            "payload": {
                "templateRef": "8e1580b8-12ea-4804-acaa-f9c922d124e6",
                "omit": false,
                "reference": "09420c55af7b",
                "values": [{ "name": "scx_token_card_number", "value": "4444333322221111" }]
            }
        });
        let reply: Value = serde_json::from_str(&round_trip(&mut scx, &req.to_string())?)?;
        ensure!(
            reply["traceId"] == req["traceId"] && reply["success"] == true,
            "unexpected answer: {reply}"
        );
        let token = reply["payload"]["values"][0]["value"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        Ok((
            (),
            format!("4444333322221111 tokenized as {token}, traceId kept"),
        ))
    });

    let beats = args.heartbeats;
    let interval = args.heartbeat;
    report.step("ShieldConex heartbeats", || {
        let mut slowest = Duration::ZERO;
        for i in 0..beats {
            if i > 0 {
                std::thread::sleep(interval);
            }
            let trace = format!("heartbeat-{}", i + 1);
            let started = Instant::now();
            let reply: Value = serde_json::from_str(&round_trip(
                &mut scx,
                &json!({ "traceId": trace, "action": "heartbeat", "payload": {} }).to_string(),
            )?)?;
            slowest = slowest.max(started.elapsed());
            ensure!(
                reply["traceId"] == trace.as_str() && reply["action"] == "heartbeat",
                "unexpected answer: {reply}"
            );
        }
        Ok((
            (),
            format!(
                "{beats} heartbeats every {}, all answered (slowest {})",
                humantime::format_duration(interval),
                format_duration(slowest)
            ),
        ))
    });

    let (tsn, _, _, _) = TERMINALS[0];
    let terminal = terminals
        .iter()
        .find(|t| t.tsn == tsn)
        .map(|t| t.control.clone());
    report.step("terminal went offline", || {
        let control = terminal.clone().context("no terminal")?;
        control.set_offline();
        events.wait(tsn, |e| matches!(e, DeviceEvent::Offline { .. }))?;
        let seen = pos.wait_event(WAIT, |e| {
            *e == ControlEvent::DeviceStatus {
                tsn: tsn.to_owned(),
                online: false,
            }
        })?;
        ensure!(
            seen.is_some(),
            "the POS was not told that {tsn} went offline"
        );
        Ok((
            (),
            format!("{tsn} dropped its connection; POS got device_status offline"),
        ))
    });

    let queued: Vec<String> = (1..=3)
        .map(|i| {
            format!(
                "<TRANSACTION><FUNCTION_TYPE>SESSION</FUNCTION_TYPE><COMMAND>START</COMMAND><INVOICE>90{i}</INVOICE><COUNTER>{}</COUNTER></TRANSACTION>",
                3 + i
            )
        })
        .collect();
    report.step("POS sent while it was offline", || {
        for q in &queued {
            sca.send_text(q)?;
        }
        // The terminal is away: nothing can answer yet.
        ensure!(
            sca.recv(Duration::from_millis(200))?.is_none(),
            "a reply arrived while the terminal was offline"
        );
        Ok((
            (),
            format!(
                "{} SCA requests held in the relay's offline queue",
                queued.len()
            ),
        ))
    });

    report.step("terminal back, queue delivered", || {
        let control = terminal.clone().context("no terminal")?;
        let started = Instant::now();
        control.set_online();
        let DeviceEvent::Registered { session_id } =
            events.wait(tsn, |e| matches!(e, DeviceEvent::Registered { .. }))?
        else {
            unreachable!("filtered above")
        };
        ensure!(
            session_id == device_sessions[0],
            "the terminal got a new session {session_id} (was {})",
            device_sessions[0]
        );
        let mut invoices = Vec::new();
        for _ in &queued {
            let reply = sca.recv_required(WAIT)?;
            let text = reply.text().unwrap_or_default();
            invoices.push(xml_tag(text, "INVOICE").unwrap_or("?").to_owned());
        }
        ensure!(
            invoices == ["901", "902", "903"],
            "replies out of order or wrong: {invoices:?}"
        );
        let seen = pos.wait_event(WAIT, |e| {
            *e == ControlEvent::DeviceStatus {
                tsn: tsn.to_owned(),
                online: true,
            }
        })?;
        ensure!(seen.is_some(), "the POS was not told that {tsn} is back");
        Ok((
            (),
            format!(
                "same session; replies to invoices 901, 902, 903 in order after {}",
                format_duration(started.elapsed())
            ),
        ))
    });

    let n = args.round_trips.max(1);
    let histogram = report.step("latency through the relay", || {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .context("histogram")?;
        for i in 0..n {
            let msg = format!("ping {i}");
            let started = Instant::now();
            let reply = round_trip(&mut scx, &msg)?;
            let us = started.elapsed().as_micros() as u64;
            ensure!(reply == msg, "echo {i} came back as {reply:?}");
            h.saturating_record(us.max(1));
        }
        let detail = format!(
            "{n} round trips POS -> relay -> terminal -> relay -> POS: p50 {} us, p99 {} us",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99)
        );
        Ok((h, detail))
    });
    if let Some(h) = histogram {
        print_histogram(&h);
    }

    // Hand the terminals over: release the claims so that another POS can claim them.
    sca.close(1000, "demo done");
    scx.close(1000, "demo done");
    for c in &claims {
        let _ = pos.release(&c.tsn);
    }
    pos.close();
}

/// A log2-bucketed histogram with bars, and the usual percentiles.
fn print_histogram(h: &hdrhistogram::Histogram<u64>) {
    say("");
    say("round-trip latency (microseconds):");
    let buckets: Vec<(u64, u64)> = h
        .iter_log(16, 2.0)
        .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
        .collect();
    let first = buckets.iter().position(|(_, c)| *c > 0).unwrap_or(0);
    let last = buckets.iter().rposition(|(_, c)| *c > 0).unwrap_or(0);
    let max_count = buckets.iter().map(|(_, c)| *c).max().unwrap_or(1).max(1);
    let mut low = if first == 0 {
        0
    } else {
        buckets[first - 1].0 + 1
    };
    for (high, count) in &buckets[first..=last] {
        let bar = "#".repeat(((*count as f64 / max_count as f64) * 40.0).ceil() as usize);
        say(&format!("  {low:>7} .. {high:>7}  {count:>6}  {bar}"));
        low = high + 1;
    }
    say(&format!(
        "  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n = {})",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        h.len()
    ));
}

/// How to run this very binary from where the user stands: `posrelay` when that is what
/// PATH finds, else its path (relative to the working directory when below it, as after
/// `cargo run`), quoted for a POSIX shell.
fn program() -> String {
    let Ok(exe) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "posrelay".to_owned();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            dir.join("posrelay")
                .canonicalize()
                .is_ok_and(|found| found == exe)
        })
    });
    if on_path {
        return "posrelay".to_owned();
    }
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| cwd.canonicalize().ok())
        .and_then(|cwd| {
            exe.strip_prefix(cwd)
                .ok()
                .map(|rel| format!("./{}", rel.display()))
        })
        .unwrap_or_else(|| exe.display().to_string());
    shell_quote(&shown)
}

/// `text` as one POSIX shell word.
fn shell_quote(text: &str) -> String {
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if plain && !text.is_empty() {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// How to connect to the relay the demo leaves running: each command runs as printed,
/// on its own, from the directory the demo was started in.
fn print_hints(demo: &Demo) {
    let relay = demo.relay.base();
    let admin = format!("http://{}", demo.addrs.admin);
    let (t1, t2) = (TERMINALS[0].0, TERMINALS[1].0);
    let me = program();
    let client_env = format!(
        "POSRELAY_CLIENT_ID={} POSRELAY_CLIENT_SECRET={}",
        shell_quote(&demo.client_id),
        shell_quote(&demo.client_secret)
    );
    let admin_env = format!("POSRELAY_ADMIN_TOKEN={}", shell_quote(&demo.admin_token));
    say("");
    say("The relay keeps running with both simulated terminals online (Ctrl-C stops it).");
    say("");
    say(&format!("  relay        {relay}"));
    say(&format!(
        "  admin        {admin}   (metrics: {admin}/metrics)"
    ));
    say(&format!("  admin token  {}", demo.admin_token));
    say(&format!(
        "  POS client   domain {DOMAIN}, client id {}, client secret {}",
        demo.client_id, demo.client_secret
    ));
    say(&format!(
        "  terminals    {t1} (answers SCA XML), {t2} (answers ShieldConex JSON)"
    ));
    say("");
    say("Browser POS (enter the client secret on the page):");
    say(&format!(
        "  {admin}/demo/?relay={relay}&domain={DOMAIN}&client_id={}&tsn={t1}",
        demo.client_id
    ));
    say("");
    say("POS from the command line (in another shell; each command runs as it is):");
    say(&format!(
        "  echo '{SCA_SESSION_START}' | {client_env} {me} pos-sim --relay {relay} --domain {DOMAIN} --tsn {t1}"
    ));
    say("");
    say("Another terminal (provision it, run it, see it online):");
    say(&format!(
        "  {admin_env} {me} admin --admin-url {admin} create-device --domain {DOMAIN} --store {STORE} --make verifone --model v400m 10000003"
    ));
    say(&format!(
        "  {client_env} {me} device-sim --relay {relay} --tsn 10000003"
    ));
    say(&format!(
        "  {admin_env} {me} admin --admin-url {admin} list-devices --domain {DOMAIN}"
    ));
}

/// Blocks until SIGINT or SIGTERM; a second signal exits at once.
fn wait_for_signal(stop: &StopHandle) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    if signals.forever().next().is_some() {
        say("stopping: draining connections");
        stop.stop();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                std::process::exit(1);
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(
            shell_quote("./target/release/posrelay"),
            "./target/release/posrelay"
        );
        assert_eq!(
            shell_quote("/opt/my dir/posrelay"),
            "'/opt/my dir/posrelay'"
        );
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("abc+/="), "abc+/=");
    }

    #[test]
    fn steps_print_pass_and_fail_with_timings() {
        let ok = Step {
            name: "relay started",
            outcome: Ok("relay ws://x".into()),
            elapsed: Duration::from_micros(2500),
        };
        let line = format_step(1, &ok);
        assert!(line.starts_with("[PASS]  1. relay started"), "{line}");
        assert!(
            line.contains("2.5 ms") && line.ends_with("relay ws://x"),
            "{line}"
        );
        let bad = Step {
            name: "x",
            outcome: Err("boom".into()),
            elapsed: Duration::from_secs(12),
        };
        let line = format_step(12, &bad);
        assert!(
            line.starts_with("[FAIL] 12. x") && line.contains("12.0 s"),
            "{line}"
        );
    }

    #[test]
    fn a_failed_step_skips_the_rest() {
        let mut r = Report { steps: vec![] };
        assert_eq!(r.step("a", || Ok((1, String::new()))), Some(1));
        assert_eq!(r.step::<()>("b", || bail!("no")), None);
        let mut ran = false;
        assert_eq!(
            r.step("c", || {
                ran = true;
                Ok(((), String::new()))
            }),
            None
        );
        assert!(!ran);
        assert_eq!((r.passed(), r.steps.len()), (1, 3));
    }

    #[test]
    fn xml_tags_and_409_are_handled() {
        assert_eq!(xml_tag("<A><B>x</B></A>", "B"), Some("x"));
        assert_eq!(xml_tag("<A/>", "B"), None);
        let exists = HttpError {
            what: "POST".into(),
            status: 409,
            message: "exists".into(),
        };
        assert!(!idempotent(Err(exists)).unwrap());
        let bad = HttpError {
            what: "POST".into(),
            status: 401,
            message: "no".into(),
        };
        assert!(idempotent(Err(bad)).is_err());
    }
}
