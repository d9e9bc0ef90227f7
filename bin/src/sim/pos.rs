//! `posrelay pos-sim`: a simulated POS. It gets an access token (PROTOCOL.md §1),
//! opens the control channel (§4), claims a terminal, opens the session (§5), sends
//! messages from a file or stdin and prints each reply. [`PosClient`] is also what
//! the demo drives.

use crate::client::http::{agent, fetch_token};
use crate::client::tls::client_config;
use crate::client::url::WsUrl;
use crate::client::ws::{ConnectOptions, WsClient};
use anyhow::Context;
use posrelay_core::proto::MessageKind;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, Read as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Flags of `posrelay pos-sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct PosSimArgs {
    /// Relay URL (ws:// or wss://)
    #[arg(long, default_value = "ws://127.0.0.1:8080", value_name = "URL")]
    pub relay: String,
    /// Domain (tenant) of the POS client (for its access token; not needed with --basic)
    #[arg(long, value_name = "DOMAIN", required_unless_present = "basic")]
    pub domain: Option<String>,
    /// POS client id
    #[arg(
        long,
        env = "POSRELAY_CLIENT_ID",
        allow_hyphen_values = true,
        hide_env_values = true,
        value_name = "ID"
    )]
    pub client_id: String,
    /// POS client secret
    #[arg(
        long,
        env = "POSRELAY_CLIENT_SECRET",
        allow_hyphen_values = true,
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub client_secret: String,
    /// Terminal serial number to claim
    #[arg(long, value_name = "TSN")]
    pub tsn: String,
    /// Messages to send: a file, or - for stdin
    #[arg(long, default_value = "-", value_name = "FILE")]
    pub input: PathBuf,
    /// How the input is cut into messages: each line, blank-line separated blocks, or the whole input as one
    #[arg(long, value_enum, default_value = "lines", value_name = "HOW")]
    pub split: Split,
    /// Send binary messages instead of text
    #[arg(long)]
    pub binary: bool,
    /// How long to wait for each reply
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub reply_timeout: Duration,
    /// PEM file of the CA certificates to trust for wss:// and https:// [default: the public web PKI roots]
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Put the client credentials on each upgrade (Authorization: Basic, PROTOCOL.md §7c) instead of getting an access token; over ws:// only to a relay on the same host
    #[arg(long)]
    pub basic: bool,
    /// Claim and open the session in one upgrade (/cloud-connector/v1/devices/{tsn}/session, PROTOCOL.md §5a), without a control channel
    #[arg(long)]
    pub one_step: bool,
    /// Open a reliable session (posrelay.reliable.v1, PROTOCOL.md §11): messages are numbered, survive breaks and relay restarts, and are resumed after them
    #[arg(long, conflicts_with = "one_step")]
    pub reliable: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::units::parse_duration(s)
}

/// How input is cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// One message per non-empty line.
    Lines,
    /// Messages separated by blank lines (for multi-line XML).
    Blank,
    /// The whole input is one message.
    Whole,
}

/// A relay answer of `{"type":"error"}` on the control channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ControlError {
    /// `bad_request`, `not_found`, `device_busy`, `offline`.
    pub code: String,
    /// The relay's explanation.
    pub message: String,
}

/// A claim (§4 `claimed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The bare serial number.
    pub tsn: String,
    /// The device's session.
    pub session_id: String,
    /// Where to open the session.
    pub session_url: String,
    /// Whether the device is connected now.
    pub online: bool,
}

/// An event the relay pushed on the control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// A claimed device went on- or offline.
    DeviceStatus {
        /// Its tsn.
        tsn: String,
        /// Now online?
        online: bool,
    },
    /// Frames this POS sent could not be delivered.
    Undelivered {
        /// The device.
        tsn: String,
        /// How many messages.
        frames: u64,
        /// Their payload bytes.
        bytes: u64,
    },
    /// Anything else, as JSON.
    Other(String),
}

/// How a POS proves who it is on each upgrade.
#[derive(Clone)]
pub enum PosAuth {
    /// An access token (§1), as `Authorization: Bearer`.
    Bearer(String),
    /// Its client credentials, as `Authorization: Basic` (§7c).
    Basic {
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: String,
    },
}

impl PosAuth {
    /// Connection options presenting these credentials.
    pub fn options(&self, tls: Option<Arc<rustls::ClientConfig>>) -> ConnectOptions {
        let (bearer, basic) = match self {
            Self::Bearer(token) => (Some(token.clone()), None),
            Self::Basic {
                client_id,
                client_secret,
            } => (None, Some((client_id.clone(), client_secret.clone()))),
        };
        ConnectOptions {
            bearer,
            basic,
            tls,
            ..ConnectOptions::default()
        }
    }
}

/// A POS: token, control channel, claims, sessions.
pub struct PosClient {
    relay: WsUrl,
    control: WsClient,
    auth: PosAuth,
    tls: Option<Arc<rustls::ClientConfig>>,
    events: VecDeque<ControlEvent>,
    next_id: u64,
}

impl std::fmt::Debug for PosClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PosClient")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

/// Time allowed for an answer on the control channel.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

impl PosClient {
    /// Opens the control channel with an access token already fetched.
    pub fn with_token(
        relay: &WsUrl,
        token: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<PosClient> {
        Self::with_auth(relay, PosAuth::Bearer(token.to_owned()), tls)
    }

    /// Opens the control channel presenting `auth` (a token, or Basic credentials, §7c).
    pub fn with_auth(
        relay: &WsUrl,
        auth: PosAuth,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<PosClient> {
        let opts = auth.options(tls.clone());
        let control =
            WsClient::connect(&relay.with_path("/cloud-connector/v1/pos-listener"), &opts)
                .context("control channel")?;
        Ok(PosClient {
            relay: relay.clone(),
            control,
            auth,
            tls,
            events: VecDeque::new(),
            next_id: 1,
        })
    }

    /// Sends a request with a fresh `request_id` and waits for its answer, keeping
    /// pushed events for [`PosClient::next_event`].
    fn request(&mut self, mut body: Value) -> anyhow::Result<Value> {
        let id = format!("r{}", self.next_id);
        self.next_id += 1;
        body["request_id"] = Value::String(id.clone());
        self.control.send_text(&body.to_string())?;
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(msg) = self.control.recv(left)? else {
                anyhow::bail!("no answer to {} within {CONTROL_TIMEOUT:?}", body["type"]);
            };
            let v: Value =
                serde_json::from_slice(&msg.data).context("control message is not JSON")?;
            if v["request_id"].as_str() == Some(id.as_str()) {
                if v["type"] == "error" {
                    return Err(ControlError {
                        code: v["code"].as_str().unwrap_or("?").to_owned(),
                        message: v["message"].as_str().unwrap_or("").to_owned(),
                    }
                    .into());
                }
                return Ok(v);
            }
            self.events.push_back(parse_event(&v));
        }
    }

    /// §4 `claim`.
    pub fn claim(&mut self, tsn: &str) -> anyhow::Result<Claim> {
        let v = self.request(json!({ "type": "claim", "tsn": tsn }))?;
        Ok(Claim {
            tsn: v["tsn"].as_str().unwrap_or(tsn).to_owned(),
            session_id: v["session_id"].as_str().unwrap_or_default().to_owned(),
            session_url: v["session_url"].as_str().unwrap_or_default().to_owned(),
            online: v["online"].as_bool().unwrap_or(false),
        })
    }

    /// §4 `release`.
    pub fn release(&mut self, tsn: &str) -> anyhow::Result<()> {
        self.request(json!({ "type": "release", "tsn": tsn }))
            .map(drop)
    }

    /// §4 `devices`: `(tsn, online)` of every device in scope.
    pub fn devices(&mut self) -> anyhow::Result<Vec<(String, bool)>> {
        let v = self.request(json!({ "type": "devices" }))?;
        Ok(v["devices"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|d| {
                        (
                            d["tsn"].as_str().unwrap_or_default().to_owned(),
                            d["online"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// §5: opens the session of a claim.
    pub fn open_session(&self, claim: &Claim) -> anyhow::Result<WsClient> {
        let url = WsUrl::parse(&claim.session_url).context("session_url")?;
        WsClient::connect(&url, &self.auth.options(self.tls.clone())).context("session")
    }

    /// §11: opens the session of a claim as a reliable one (and resumes it).
    pub fn open_reliable_session(
        &self,
        claim: &Claim,
    ) -> anyhow::Result<crate::client::reliable::ReliableSession> {
        let url = WsUrl::parse(&claim.session_url).context("session_url")?;
        let opts = self.auth.options(self.tls.clone());
        crate::client::reliable::ReliableSession::open(&url, &opts).context("reliable session")
    }

    /// The next pushed event, waiting up to `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> anyhow::Result<Option<ControlEvent>> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        match self.control.recv(timeout)? {
            Some(msg) => {
                let v: Value =
                    serde_json::from_slice(&msg.data).context("control message is not JSON")?;
                Ok(Some(parse_event(&v)))
            }
            None => Ok(None),
        }
    }

    /// Waits up to `timeout` for an event that `want` accepts; others are dropped.
    pub fn wait_event(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&ControlEvent) -> bool,
    ) -> anyhow::Result<Option<ControlEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left)? {
                Some(e) if want(&e) => return Ok(Some(e)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    /// The control channel, to wait on it together with a session
    /// ([`crate::client::ws::wait_readable`]).
    pub fn control(&mut self) -> &mut WsClient {
        &mut self.control
    }

    /// Closes the control channel (1000).
    pub fn close(self) {
        self.control.close(1000, "");
    }
}

fn parse_event(v: &Value) -> ControlEvent {
    let tsn = v["tsn"].as_str().unwrap_or_default().to_owned();
    match v["type"].as_str() {
        Some("device_status") => ControlEvent::DeviceStatus {
            tsn,
            online: v["online"].as_bool().unwrap_or(false),
        },
        Some("undelivered") => ControlEvent::Undelivered {
            tsn,
            frames: v["frames"].as_u64().unwrap_or(0),
            bytes: v["bytes"].as_u64().unwrap_or(0),
        },
        _ => ControlEvent::Other(v.to_string()),
    }
}

/// Cuts `text` into messages.
pub fn split_messages(text: &str, split: Split) -> Vec<String> {
    match split {
        Split::Whole if text.trim().is_empty() => vec![],
        Split::Whole => vec![text.trim_end_matches(['\r', '\n']).to_owned()],
        Split::Lines => text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
        Split::Blank => {
            let mut out = Vec::new();
            let mut cur: Vec<&str> = Vec::new();
            for line in text.lines() {
                if line.trim().is_empty() {
                    if !cur.is_empty() {
                        out.push(cur.join("\n"));
                        cur.clear();
                    }
                } else {
                    cur.push(line.trim_end());
                }
            }
            if !cur.is_empty() {
                out.push(cur.join("\n"));
            }
            out
        }
    }
}

/// `posrelay pos-sim`.
pub fn run(args: PosSimArgs) -> anyhow::Result<()> {
    let relay = WsUrl::parse(&args.relay)?;
    let tls = if relay.secure {
        Some(client_config(args.ca_file.as_deref())?)
    } else {
        None
    };
    let auth = if args.basic {
        PosAuth::Basic {
            client_id: args.client_id.clone(),
            client_secret: args.client_secret.clone(),
        }
    } else {
        let token = fetch_token(
            &agent(tls.clone()),
            &relay.http_base(),
            args.domain
                .as_deref()
                .context("--domain is needed to get a token")?,
            &args.client_id,
            &args.client_secret,
        )?;
        PosAuth::Bearer(token.access_token)
    };
    let kind = if args.binary {
        MessageKind::Binary
    } else {
        MessageKind::Text
    };
    if args.reliable {
        return run_reliable(&args, &relay, auth, tls, kind);
    }
    let (mut pos, mut session, claimed) = if args.one_step {
        // §5a: claim and session in one upgrade; no control channel.
        let path = format!("/cloud-connector/v1/devices/{}/session", args.tsn);
        let session = WsClient::connect(&relay.with_path(&path), &auth.options(tls))
            .context("one-step session (claim and session in one upgrade)")?;
        say(&format!(
            "claimed {} and opened its session in one step",
            args.tsn
        ));
        (None, session, None)
    } else {
        let mut pos = PosClient::with_auth(&relay, auth, tls)?;
        say(&format!("control channel open on {}", relay.base()));
        let claim = pos.claim(&args.tsn)?;
        say_claimed(&claim);
        let session = pos.open_session(&claim)?;
        (Some(pos), session, Some(claim.tsn))
    };
    say("session open: sending messages");
    let rx = spawn_input(&args);
    let mut count = 0usize;
    let mut failed = 0usize;
    loop {
        if let Some(pos) = pos.as_mut() {
            show_events(pos)?;
        }
        match rx.try_recv() {
            Ok(msg) => {
                let msg = msg?;
                count += 1;
                if !exchange(
                    pos.as_mut(),
                    &mut session,
                    kind,
                    &msg,
                    count,
                    args.reply_timeout,
                )? {
                    failed += 1;
                }
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                if let Some(m) = session.recv(Duration::from_millis(50))? {
                    say(&format!("< (unasked) {}", shown(&m)));
                }
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
        }
    }
    session.close(1000, "");
    if let (Some(mut pos), Some(tsn)) = (pos, claimed) {
        let _ = pos.release(&tsn);
        pos.close();
    }
    say(&format!(
        "done: {count} sent, {} answered, {failed} without reply",
        count - failed
    ));
    if failed > 0 {
        anyhow::bail!("{} got no reply", plural(failed as u64, "message"));
    }
    Ok(())
}

fn say_claimed(claim: &Claim) {
    say(&format!(
        "claimed {} (session {}, {})",
        claim.tsn,
        claim.session_id,
        if claim.online {
            "online"
        } else {
            "offline: messages wait in the relay's queue"
        }
    ));
}

/// `pos-sim --reliable`: control channel, claim, and a §11 session.
fn run_reliable(
    args: &PosSimArgs,
    relay: &WsUrl,
    auth: PosAuth,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    kind: MessageKind,
) -> anyhow::Result<()> {
    let mut pos = PosClient::with_auth(relay, auth, tls)?;
    say(&format!("control channel open on {}", relay.base()));
    let claim = pos.claim(&args.tsn)?;
    say_claimed(&claim);
    let session = match pos.open_reliable_session(&claim) {
        Ok(session) => session,
        Err(e) if is_resume_failed(&e) => {
            // A reliable claim of an earlier run that this run has no state of: the
            // relay holds messages this POS cannot name. Start the claim over.
            say(&format!(
                "{e:#}: releasing and claiming {} again",
                claim.tsn
            ));
            pos.release(&claim.tsn)?;
            let claim = pos.claim(&claim.tsn)?;
            pos.open_reliable_session(&claim)?
        }
        Err(e) => return Err(e),
    };
    say("reliable session open (posrelay.reliable.v1): sending messages");
    let rx = spawn_input(args);
    let (count, answered) =
        super::pos_reliable::exchange_all(&mut pos, session, kind, &rx, args.reply_timeout)?;
    // Nothing of this run's state is kept on disk, so its claim could not be resumed
    // by a later run: release it (everything was settled above).
    let _ = pos.release(&claim.tsn);
    pos.close();
    say(&format!(
        "done: {count} sent, {answered} answered, {} without reply",
        count - answered
    ));
    if answered < count {
        anyhow::bail!(
            "{} got no reply",
            plural((count - answered) as u64, "message")
        );
    }
    Ok(())
}

/// Whether opening a reliable session failed because the relay's claim is not this
/// run's: `resume_failed` (4409), or POS messages this run never sent.
fn is_resume_failed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<crate::client::reliable::ReliableClientError>(),
            Some(
                crate::client::reliable::ReliableClientError::ResumeFailed { .. }
                    | crate::client::reliable::ReliableClientError::ForeignState { .. }
            )
        )
    })
}

/// Reads the input messages on a thread of their own, so that the connections keep
/// answering the relay's pings (and show what the terminal sends unasked) while a person
/// types.
fn spawn_input(args: &PosSimArgs) -> std::sync::mpsc::Receiver<anyhow::Result<String>> {
    let (tx, rx) = std::sync::mpsc::channel::<anyhow::Result<String>>();
    let input = args.input.clone();
    let split = args.split;
    std::thread::spawn(move || {
        if input.as_os_str() == "-" && split == Split::Lines {
            use std::io::IsTerminal as _;
            if std::io::stdin().is_terminal() {
                eprintln!("type one message per line; Ctrl-D ends");
            }
            for line in std::io::stdin().lock().lines() {
                let msg = line.map(|l| l.trim_end().to_owned()).map_err(Into::into);
                if matches!(&msg, Ok(l) if l.trim().is_empty()) {
                    continue;
                }
                if tx.send(msg).is_err() {
                    return;
                }
            }
        } else {
            let text = if input.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).map(|_| s)
            } else {
                std::fs::read_to_string(&input)
            };
            match text {
                Ok(text) => {
                    for msg in split_messages(&text, split) {
                        if tx.send(Ok(msg)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(anyhow::Error::new(e)
                            .context(format!("cannot read {}", input.display()))));
                }
            }
        }
    });
    rx
}

/// Prints the control channel's pushed events (and answers its pings) without waiting
/// for more than what has arrived.
pub(crate) fn show_events(pos: &mut PosClient) -> anyhow::Result<()> {
    while let Some(e) = pos.next_event(Duration::from_millis(1))? {
        say(&format!("  event: {}", describe_event(&e)));
    }
    Ok(())
}

/// A received message for the terminal's screen.
fn shown(m: &crate::client::ws::WsMessage) -> String {
    match m.text() {
        Some(t) => t.to_owned(),
        None => format!("<{} bytes binary>", m.data.len()),
    }
}

/// Sends message number `n` and waits for its reply; `false` when none came in time.
/// It waits on the session and the control channel at once (poll(2)), so the reply is
/// taken the moment it arrives and the round trip printed is the real one; events
/// that come meanwhile are printed as they come.
fn exchange(
    mut pos: Option<&mut PosClient>,
    session: &mut WsClient,
    kind: MessageKind,
    msg: &str,
    n: usize,
    reply_timeout: Duration,
) -> anyhow::Result<bool> {
    // Printed before the clock starts: a slow stdout is not part of the round trip.
    say(&format!("> [{n}] sent {} bytes", msg.len()));
    let started = Instant::now();
    session.send(kind, msg.as_bytes())?;
    let deadline = started + reply_timeout;
    loop {
        // What the clients already hold first: poll(2) sees only the sockets.
        if session.has_buffered() {
            if let Some(reply) = session.recv(Duration::ZERO)? {
                return Ok(replied(n, started, &reply));
            }
        }
        if let Some(pos) = pos.as_deref_mut() {
            if pos.control().has_buffered() {
                show_events(pos)?;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            say(&format!("! [{n}] no reply within {reply_timeout:?}"));
            return Ok(false);
        }
        let ready = match pos.as_deref_mut() {
            Some(pos) => {
                let ready = crate::client::ws::wait_readable(&[session, pos.control()], left)?;
                if ready[1] {
                    show_events(pos)?;
                }
                ready
            }
            None => crate::client::ws::wait_readable(&[session], left)?,
        };
        if ready[0] {
            // Readable now: a short read timeout only bounds a partial frame.
            if let Some(reply) = session.recv(Duration::from_millis(1))? {
                return Ok(replied(n, started, &reply));
            }
        }
    }
}

/// Prints a reply with its round trip (from before the send to its arrival).
fn replied(n: usize, started: Instant, reply: &crate::client::ws::WsMessage) -> bool {
    let rtt = started.elapsed();
    say(&format!(
        "< [{n}] reply in {:.3} ms: {}",
        rtt.as_secs_f64() * 1e3,
        shown(reply)
    ));
    true
}

/// One event as text.
pub fn describe_event(e: &ControlEvent) -> String {
    match e {
        ControlEvent::DeviceStatus { tsn, online } => {
            format!(
                "device {tsn} is {}",
                if *online { "online" } else { "offline" }
            )
        }
        ControlEvent::Undelivered { tsn, frames, bytes } => {
            format!(
                "{} ({}) to {tsn} could not be delivered",
                plural(*frames, "message"),
                plural(*bytes, "byte")
            )
        }
        ControlEvent::Other(json) => json.clone(),
    }
}

/// `1 message`, `2 messages`.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting_input_into_messages() {
        let text = "<A>\n<B/>\n</A>\n\n  \n{\"x\":1}\n";
        assert_eq!(
            split_messages(text, Split::Lines),
            vec!["<A>", "<B/>", "</A>", "{\"x\":1}"]
        );
        assert_eq!(
            split_messages(text, Split::Blank),
            vec!["<A>\n<B/>\n</A>", "{\"x\":1}"]
        );
        assert_eq!(split_messages(text, Split::Whole).len(), 1);
        assert!(split_messages("\n \n", Split::Whole).is_empty());
    }

    #[test]
    fn control_events_are_parsed() {
        let v: Value =
            serde_json::from_str(r#"{"type":"device_status","tsn":"1","online":false}"#).unwrap();
        assert_eq!(
            parse_event(&v),
            ControlEvent::DeviceStatus {
                tsn: "1".into(),
                online: false
            }
        );
        let v: Value =
            serde_json::from_str(r#"{"type":"undelivered","tsn":"1","frames":2,"bytes":9}"#)
                .unwrap();
        assert_eq!(
            describe_event(&parse_event(&v)),
            "2 messages (9 bytes) to 1 could not be delivered"
        );
        let v: Value =
            serde_json::from_str(r#"{"type":"undelivered","tsn":"1","frames":1,"bytes":1}"#)
                .unwrap();
        assert_eq!(
            describe_event(&parse_event(&v)),
            "1 message (1 byte) to 1 could not be delivered"
        );
    }
}
