//! `posrelay device-sim`: a simulated payment terminal. It registers with its tsn and
//! credentials (PROTOCOL.md §2), opens its device connection (§3), answers every
//! request (see [`Responder`]), and when the connection goes it registers again
//! with exponential backoff and jitter, as a real terminal does; the relay gives it
//! back the same `session_id`, so the POS session outlives the reconnect.

use super::backoff::Backoff;
use super::responder::Responder;
use crate::client::tls::client_config_with_cert;
use crate::client::url::WsUrl;
use crate::client::ws::{ConnectOptions, WsClient, WsError};
use anyhow::Context;
use posrelay_core::proto::MessageKind;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Flags of `posrelay device-sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceSimArgs {
    /// Relay URL (ws:// or wss://); repeat to give the nodes of a cluster (PROTOCOL.md §12): a terminal whose connection fails tries the next one, as behind DNS round robin
    #[arg(long, default_value = "ws://127.0.0.1:8080", value_name = "URL")]
    pub relay: Vec<String>,
    /// Terminal serial number, bare or <make>-<model>-<serial>; repeat to run several terminals
    #[arg(long, value_name = "TSN", required = true)]
    pub tsn: Vec<String>,
    /// Client id the terminal registers with (its custom_registration_data)
    #[arg(
        long,
        env = "POSRELAY_CLIENT_ID",
        allow_hyphen_values = true,
        hide_env_values = true,
        value_name = "ID",
        required_unless_present = "client_cert"
    )]
    pub client_id: Option<String>,
    /// Client secret the terminal registers with
    #[arg(
        long,
        env = "POSRELAY_CLIENT_SECRET",
        allow_hyphen_values = true,
        hide_env_values = true,
        value_name = "SECRET",
        required_unless_present = "client_cert"
    )]
    pub client_secret: Option<String>,
    /// PEM client certificate: connect like a Verifone SCA terminal (PROTOCOL.md §2a), without registering, to --relay as given (the --device-mtls-listen URL, e.g. wss://relay:8443/), offering sci
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Answer with the rules of this JSON file: [{"match": "...", "reply": "..."}] [default: SCA XML and ShieldConex JSON answers, else echo]
    #[arg(long, value_name = "FILE", conflicts_with = "echo")]
    pub script: Option<PathBuf>,
    /// Send every request back unchanged
    #[arg(long)]
    pub echo: bool,
    /// PEM file of the CA certificates to trust for wss:// [default: the public web PKI roots]
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Longest wait between reconnect attempts
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub backoff_max: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::units::parse_duration(s)
}

/// One terminal's settings.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The relay listener, or the nodes of a cluster (at least one): after a failed
    /// attempt the terminal tries the next.
    pub relays: Vec<WsUrl>,
    /// The tsn it registers with.
    pub tsn: String,
    /// Registration credentials.
    pub client_id: String,
    /// Registration secret.
    pub client_secret: String,
    /// How it answers.
    pub responder: Responder,
    /// §2a: it presents a client certificate (in `tls`) and connects to `relay` in one
    /// step, without registering.
    pub client_cert: bool,
    /// TLS roots for `wss://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

/// Lets another thread take the terminal offline, bring it back, or stop it.
#[derive(Debug, Clone, Default)]
pub struct DeviceControl {
    offline: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl DeviceControl {
    /// Simulates network loss: the connection is dropped (no Close frame) and the
    /// terminal stays away until [`DeviceControl::set_online`].
    pub fn set_offline(&self) {
        self.offline.store(true, Ordering::SeqCst);
    }

    /// Lets the terminal reconnect.
    pub fn set_online(&self) {
        self.offline.store(false, Ordering::SeqCst);
    }

    /// Closes the connection (1000) and ends [`run_device`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn is_offline(&self) -> bool {
        self.offline.load(Ordering::SeqCst)
    }

    fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// What the terminal did, for printing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// §2 registration answered.
    Registered {
        /// The session named by the relay (the same across reconnects).
        session_id: String,
    },
    /// §3 device connection open: the terminal is online.
    Online,
    /// A request answered.
    Answered {
        /// Request size in bytes.
        request_bytes: usize,
        /// Reply size in bytes.
        reply_bytes: usize,
        /// The start of the request, for the log.
        preview: String,
    },
    /// The connection went (or could not be made).
    Offline {
        /// Why.
        reason: String,
    },
    /// The next attempt waits this long.
    Retrying {
        /// The backoff delay.
        delay: Duration,
    },
    /// The relay refused the registration for good (wrong credentials, a malformed
    /// request): retrying cannot help, so the terminal stops.
    GaveUp {
        /// Why, and what to fix.
        reason: String,
    },
}

/// The relay answered the registration with a §2 error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("registration refused: {code} ({message})")]
pub struct RegistrationRefused {
    /// The §2 code: `invalid_client`, `unknown_device`, `device_disabled`, `bad_request`.
    pub code: String,
    /// The relay's explanation.
    pub message: String,
}

impl RegistrationRefused {
    /// Whether trying again can succeed without someone changing something: a disabled
    /// or unprovisioned device may be fixed by the operator while it retries, and a
    /// login rate limit ends; wrong credentials and a malformed request stay wrong.
    pub fn permanent(&self) -> bool {
        match self.code.as_str() {
            "invalid_client" => !self.message.starts_with("too many failed attempts"),
            "bad_request" => true,
            _ => false,
        }
    }
}

enum Ended {
    /// Stopped by [`DeviceControl::stop`].
    Stopped,
    /// Taken offline by [`DeviceControl::set_offline`].
    TakenOffline,
}

/// Runs one terminal until `control` stops it.
pub fn run_device(
    config: &DeviceConfig,
    control: &DeviceControl,
    mut on_event: impl FnMut(&DeviceEvent),
) {
    let mut rng = rand::thread_rng();
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    // Which of `relays` the next attempt goes to.
    let mut at = 0usize;
    while !control.is_stopped() {
        let relay = &config.relays[at % config.relays.len()];
        if control.is_offline() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match connect_once(
            config,
            relay,
            control,
            &mut backoff,
            &mut rng,
            &mut on_event,
        ) {
            Ok(Ended::Stopped) => return,
            Ok(Ended::TakenOffline) => {
                on_event(&DeviceEvent::Offline {
                    reason: "simulated network loss".into(),
                });
            }
            Err(e) => {
                if let Some(refused) = e
                    .downcast_ref::<RegistrationRefused>()
                    .filter(|r| r.permanent())
                {
                    let fix = if refused.code == "invalid_client" {
                        "check POSRELAY_CLIENT_ID and POSRELAY_CLIENT_SECRET (--client-id, --client-secret): the credentials `posrelay admin create-client` printed"
                    } else {
                        "fix the request"
                    };
                    on_event(&DeviceEvent::GaveUp {
                        reason: format!("{refused}; retrying cannot help: {fix}"),
                    });
                    return;
                }
                on_event(&DeviceEvent::Offline {
                    reason: format!("{e:#}"),
                });
                at = at.wrapping_add(1);
                let delay = backoff.next_delay(&mut rng);
                on_event(&DeviceEvent::Retrying { delay });
                let until = Instant::now() + delay;
                while Instant::now() < until && !control.is_stopped() {
                    std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
                }
            }
        }
    }
}

/// §2 registration: the session and the token for §3.
fn register(
    config: &DeviceConfig,
    relay: &WsUrl,
    opts: &ConnectOptions,
) -> anyhow::Result<(String, WsUrl, String)> {
    let url = relay.with_path("/cloud-connector/v1/device-listener");
    let mut ws = WsClient::connect(&url, opts).context("registration connection")?;
    let msg = json!({
        "type": "register",
        "tsn": config.tsn,
        "client_id": config.client_id,
        "client_secret": config.client_secret,
    });
    ws.send_text(&msg.to_string())?;
    let reply = ws
        .recv_required(Duration::from_secs(15))
        .context("no registration answer")?;
    ws.close(1000, "");
    let v: Value =
        serde_json::from_slice(&reply.data).context("registration answer is not JSON")?;
    match v["type"].as_str() {
        Some("registered") => {
            let session = v["session_id"].as_str().unwrap_or_default().to_owned();
            let url = v["connection_url"].as_str().unwrap_or_default();
            let token = v["token"].as_str().unwrap_or_default().to_owned();
            let url = WsUrl::parse(url).context("connection_url")?;
            Ok((session, url, token))
        }
        _ => Err(RegistrationRefused {
            code: v["code"].as_str().unwrap_or("?").to_owned(),
            message: v["message"].as_str().unwrap_or("").to_owned(),
        }
        .into()),
    }
}

fn connect_once(
    config: &DeviceConfig,
    relay: &WsUrl,
    control: &DeviceControl,
    backoff: &mut Backoff,
    rng: &mut impl rand::Rng,
    on_event: &mut impl FnMut(&DeviceEvent),
) -> anyhow::Result<Ended> {
    let mut opts = ConnectOptions {
        tls: config.tls.clone(),
        ..ConnectOptions::default()
    };
    let mut ws = if config.client_cert {
        // §2a: the certificate names the device; seed 000's terminals offer `sci`.
        opts.protocols = vec!["sci".to_owned()];
        WsClient::connect(relay, &opts).context("device connection with a client certificate")?
    } else {
        let (session_id, url, token) = register(config, relay, &opts)?;
        on_event(&DeviceEvent::Registered { session_id });
        opts.bearer = Some(token);
        WsClient::connect(&url, &opts).context("device connection")?
    };
    backoff.reset();
    on_event(&DeviceEvent::Online);
    loop {
        if control.is_stopped() {
            ws.close(1000, "terminal stopped");
            return Ok(Ended::Stopped);
        }
        if control.is_offline() {
            ws.abort();
            return Ok(Ended::TakenOffline);
        }
        let msg = match ws.recv(Duration::from_millis(50)) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(WsError::Closed { code, reason }) => {
                anyhow::bail!("{}", WsError::Closed { code, reason })
            }
            Err(e) => return Err(e.into()),
        };
        let reply = match msg.text() {
            Some(text) => config.responder.answer_text(text, rng).into_bytes(),
            None => msg.data.to_vec(),
        };
        ws.send(msg.kind, &reply)?;
        let preview: String = match msg.kind {
            MessageKind::Text => String::from_utf8_lossy(&msg.data)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(60)
                .collect(),
            MessageKind::Binary => format!("<{} bytes binary>", msg.data.len()),
        };
        on_event(&DeviceEvent::Answered {
            request_bytes: msg.data.len(),
            reply_bytes: reply.len(),
            preview,
        });
    }
}

/// `posrelay device-sim`: runs the terminals until interrupted.
pub fn run(args: DeviceSimArgs) -> anyhow::Result<()> {
    let relays = args
        .relay
        .iter()
        .map(|r| WsUrl::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(relay) = relays.first().cloned() else {
        anyhow::bail!("give at least one --relay URL");
    };
    if relays.iter().any(|r| r.secure != relay.secure) {
        anyhow::bail!("--relay URLs must all be ws:// or all wss://");
    }
    let client_cert = args.client_cert.as_deref().zip(args.client_key.as_deref());
    if client_cert.is_some() && !relay.secure {
        anyhow::bail!("--client-cert needs a wss:// --relay (the relay's --device-mtls-listen)");
    }
    let tls = if relay.secure {
        Some(client_config_with_cert(
            args.ca_file.as_deref(),
            client_cert,
        )?)
    } else {
        None
    };
    let responder = match (&args.script, args.echo) {
        (Some(path), _) => Responder::from_script(path)?,
        (None, true) => Responder::Echo,
        (None, false) => Responder::Auto,
    };
    let mut threads = Vec::new();
    for tsn in &args.tsn {
        let config = DeviceConfig {
            relays: relays.clone(),
            tsn: tsn.clone(),
            client_id: args.client_id.clone().unwrap_or_default(),
            client_secret: args.client_secret.clone().unwrap_or_default(),
            responder: responder.clone(),
            client_cert: client_cert.is_some(),
            tls: tls.clone(),
            backoff_initial: Duration::from_millis(500),
            backoff_max: args.backoff_max,
        };
        let control = DeviceControl::default();
        let name = tsn.clone();
        threads.push(std::thread::spawn(move || {
            let mut gave_up = false;
            run_device(&config, &control, |event| {
                gave_up |= matches!(event, DeviceEvent::GaveUp { .. });
                print_event(&name, event)
            });
            gave_up
        }));
    }
    let mut gave_up = 0;
    for t in threads {
        gave_up += usize::from(t.join().unwrap_or(true));
    }
    if gave_up > 0 {
        anyhow::bail!(
            "{gave_up} of {} terminal(s) gave up: see the reasons above",
            args.tsn.len()
        );
    }
    Ok(())
}

/// Prints one event as a line on stdout.
pub fn print_event(tsn: &str, event: &DeviceEvent) {
    use std::io::Write as _;
    let line = match event {
        DeviceEvent::Registered { session_id } => format!("registered, session {session_id}"),
        DeviceEvent::Online => "online".to_owned(),
        DeviceEvent::Answered {
            request_bytes,
            reply_bytes,
            preview,
        } => format!("answered {request_bytes} B request with {reply_bytes} B: {preview}"),
        DeviceEvent::Offline { reason } => format!("offline: {reason}"),
        DeviceEvent::Retrying { delay } => format!("reconnecting in {} ms", delay.as_millis()),
        DeviceEvent::GaveUp { reason } => format!("giving up: {reason}"),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "[device {tsn}] {line}");
    let _ = out.flush();
}
