//! The POS side of reliable sessions (PROTOCOL.md §11, `posrelay.reliable.v1`) for POS
//! developers, on the blocking client of [`super::ws`]:
//!
//! - [`ReliableState`] is the protocol, sans-IO: it numbers what the POS sends and keeps it
//!   until the relay settles it (acked safe, or reported undelivered), resumes with the last
//!   device message the application *processed*, sends again what the relay has not made
//!   safe, drops device messages it has already handed over, and acks what the application
//!   says it processed.
//! - [`ReliableSession`] runs it over a [`WsClient`], reconnecting and resuming after any
//!   break the relay asks clients to survive (1001, 1011, 1012, a lost connection).
//!
//! ```no_run
//! # fn demo(url: &WsUrl, opts: &ConnectOptions) -> Result<(), ReliableClientError> {
//! let mut session = ReliableSession::open(url, opts)?;
//! session.send(MessageKind::Text, b"<TRANSACTION>...</TRANSACTION>")?;
//! while let Some(event) = session.recv(Duration::from_secs(30))? {
//!     if let Event::Message { seq, message } = event {
//!         // ... store the terminal's answer durably, then:
//!         session.processed(seq)?;
//!     }
//! }
//! # Ok(()) }
//! ```
// pos-sim --reliable and the demo use it in the io phase of issue 15; tested here.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use posrelay_core::proto::MessageKind;
use posrelay_core::relay::{self, RelayedMessage};
use posrelay_core::reliable::{Envelope, EnvelopeError};
pub use posrelay_core::reliable::{Seq, SeqRange, SUBPROTOCOL};

use super::url::WsUrl;
use super::ws::{ConnectOptions, WsClient, WsError, WsMessage};
use crate::sim::backoff::Backoff;

/// Why a reliable session cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ReliableClientError {
    /// The connection failed in a way reconnecting does not fix.
    #[error(transparent)]
    Ws(#[from] WsError),
    /// The relay answered the upgrade without selecting `posrelay.reliable.v1`.
    #[error("the relay did not select {SUBPROTOCOL} (it selected {0:?}): it needs protocol v1.1")]
    NotSelected(Option<String>),
    /// `resume_failed` (4409): the relay cannot resume; start over with a new claim and
    /// [`ReliableState::reset`].
    #[error("the relay cannot resume this session: {reason}")]
    ResumeFailed {
        /// The relay's reason.
        reason: String,
    },
    /// The relay broke §11 (or this client did, and the relay closed with 1002).
    #[error("posrelay.reliable.v1 broken: {0}")]
    Protocol(String),
    /// The relay holds POS messages this client never sent: another instance used the
    /// claim while this one had messages of its own waiting.
    #[error("the relay holds POS messages up to {relay}, this client sent only up to {ours}")]
    ForeignState {
        /// `resumed`'s `seq`.
        relay: Seq,
        /// The last number this client used.
        ours: Seq,
    },
    /// Reconnecting failed every time.
    #[error("gave up after {attempts} reconnect attempts: {last}")]
    GaveUp {
        /// How many attempts.
        attempts: u32,
        /// The last failure.
        last: Box<ReliableClientError>,
    },
}

/// What the session tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A device message, once: process it, then call `processed(seq)` (the relay holds it
    /// until then, and sends it again after a break if it was not processed).
    Message {
        /// Its number.
        seq: Seq,
        /// The device's message, verbatim.
        message: WsMessage,
    },
    /// The relay made every POS message up to `seq` safe (or reported it, just before).
    Acked(Seq),
    /// These POS messages will not reach the device. `messages` are the ones this client
    /// still had; a message acked earlier (queued for an offline device, then expired, §6)
    /// is reported by number only.
    Undelivered {
        /// The numbers reported.
        range: SeqRange,
        /// The messages, as sent.
        messages: Vec<(Seq, WsMessage)>,
    },
    /// The session (re)opened: `relay_safe` is the relay's `resumed` seq, `resent` how many
    /// messages this client sent again after it.
    Resumed {
        /// The last POS message the relay has settled.
        relay_safe: Seq,
        /// Messages sent again.
        resent: usize,
    },
}

/// How many reports are remembered to drop repeats (the relay repeats a report after
/// each resume until it knows the POS read it).
const SEEN_REPORTS: usize = 256;

/// A POS's §11 state, without I/O. Keep one per claim for as long as the claim lives
/// (persist it if the application restarts).
#[derive(Debug, Clone, Default)]
pub struct ReliableState {
    /// The last device message handed to the application.
    delivered: Seq,
    /// The last device message the application processed.
    processed: Seq,
    /// The last `ack` sent.
    acked: Seq,
    /// The last POS number used.
    last_sent: Seq,
    /// The last POS number the relay settled.
    settled: Seq,
    /// Sent (or waiting to be) and not settled, in order.
    unsettled: VecDeque<(Seq, WsMessage)>,
    /// Resumed on the current connection: data may be sent.
    live: bool,
    seen_reports: VecDeque<SeqRange>,
}

/// What [`ReliableState::handle`] asks for: envelopes to send, events for the application.
#[derive(Debug, Default)]
pub struct Handled {
    /// Envelopes to send, in order.
    pub send: Vec<Bytes>,
    /// Events, in order.
    pub events: Vec<Event>,
}

fn to_relayed(message: &WsMessage) -> RelayedMessage {
    RelayedMessage {
        kind: match message.kind {
            MessageKind::Text => relay::MessageKind::Text,
            MessageKind::Binary => relay::MessageKind::Binary,
        },
        payload: message.data.clone(),
    }
}

fn from_relayed(message: RelayedMessage) -> WsMessage {
    WsMessage {
        kind: match message.kind {
            relay::MessageKind::Text => MessageKind::Text,
            relay::MessageKind::Binary => MessageKind::Binary,
        },
        data: message.payload,
    }
}

fn data_envelope(seq: Seq, message: &WsMessage) -> Bytes {
    Envelope::Data {
        seq,
        message: to_relayed(message),
    }
    .encode()
}

impl ReliableState {
    /// A client that has sent and processed nothing (a new claim).
    pub fn new() -> ReliableState {
        ReliableState::default()
    }

    /// Starts over after `resume_failed`: nothing processed, nothing to resend (the
    /// messages still unsettled are returned, for the application to decide).
    pub fn reset(&mut self) -> Vec<(Seq, WsMessage)> {
        let left = std::mem::take(&mut self.unsettled).into_iter().collect();
        *self = ReliableState::default();
        left
    }

    /// The connection broke: what is sent from now on waits for the next `resumed`.
    pub fn disconnected(&mut self) {
        self.live = false;
    }

    /// The connection opened: the `resume` to send first.
    pub fn resume(&mut self) -> Bytes {
        self.live = false;
        self.acked = self.processed;
        Envelope::Resume {
            seq: self.processed,
        }
        .encode()
    }

    /// Numbers `message` and keeps it until settled; the envelope to send now, if the
    /// session is resumed (otherwise it goes after the next `resumed`).
    pub fn send(&mut self, message: WsMessage) -> (Seq, Option<Bytes>) {
        self.last_sent = self.last_sent.next();
        let seq = self.last_sent;
        let now = self.live.then(|| data_envelope(seq, &message));
        self.unsettled.push_back((seq, message));
        (seq, now)
    }

    /// The application processed every device message up to `seq`: the `ack` to send, if
    /// the session is resumed and it moves (otherwise the next `resume` carries it).
    pub fn processed(&mut self, seq: Seq) -> Option<Bytes> {
        let seq = seq.min(self.delivered);
        self.processed = self.processed.max(seq);
        if !self.live || self.processed <= self.acked {
            return None;
        }
        self.acked = self.processed;
        Some(Envelope::Ack { seq: self.acked }.encode())
    }

    /// One message from the relay.
    pub fn handle(
        &mut self,
        kind: MessageKind,
        payload: Bytes,
    ) -> Result<Handled, ReliableClientError> {
        let kind = match kind {
            MessageKind::Text => relay::MessageKind::Text,
            MessageKind::Binary => relay::MessageKind::Binary,
        };
        let envelope = Envelope::parse(kind, payload)
            .map_err(|e: EnvelopeError| ReliableClientError::Protocol(e.to_string()))?;
        let mut out = Handled::default();
        match envelope {
            Envelope::Resumed { seq } => {
                if seq > self.last_sent {
                    if !self.unsettled.is_empty() || self.last_sent > Seq::ZERO {
                        return Err(ReliableClientError::ForeignState {
                            relay: seq,
                            ours: self.last_sent,
                        });
                    }
                    // A new instance on a claim an earlier one used: go on from its numbers.
                    self.last_sent = seq;
                }
                let mut settled = Handled::default();
                self.settle(seq, &mut settled);
                self.live = true;
                for (s, message) in &self.unsettled {
                    out.send.push(data_envelope(*s, message));
                }
                out.events.push(Event::Resumed {
                    relay_safe: seq,
                    resent: out.send.len(),
                });
                out.events.extend(settled.events);
            }
            Envelope::Ack { seq } => {
                if seq > self.last_sent {
                    return Err(ReliableClientError::Protocol(format!(
                        "ack {seq} of a message never sent (last {})",
                        self.last_sent
                    )));
                }
                self.settle(seq, &mut out);
            }
            Envelope::Undelivered { range } => {
                if range.to() > self.last_sent {
                    return Err(ReliableClientError::Protocol(format!(
                        "undelivered {range} names messages never sent"
                    )));
                }
                if !self.seen_reports.contains(&range) {
                    if self.seen_reports.len() == SEEN_REPORTS {
                        self.seen_reports.pop_front();
                    }
                    self.seen_reports.push_back(range);
                    let mut messages = Vec::new();
                    self.unsettled.retain(|(s, m)| {
                        let reported = range.contains(*s);
                        if reported {
                            messages.push((*s, m.clone()));
                        }
                        !reported
                    });
                    out.events.push(Event::Undelivered { range, messages });
                }
            }
            Envelope::Data { seq, message } => {
                if seq <= self.delivered {
                    return Ok(out); // already handed over: a resend after a break
                }
                if seq != self.delivered.next() {
                    return Err(ReliableClientError::Protocol(format!(
                        "device message {seq} skips ahead of {}",
                        self.delivered
                    )));
                }
                self.delivered = seq;
                out.events.push(Event::Message {
                    seq,
                    message: from_relayed(message),
                });
            }
            Envelope::ResumeFailed { reason } => {
                return Err(ReliableClientError::ResumeFailed { reason });
            }
            Envelope::Resume { .. } => {
                return Err(ReliableClientError::Protocol(
                    "the relay sent resume".to_owned(),
                ));
            }
        }
        Ok(out)
    }

    fn settle(&mut self, seq: Seq, out: &mut Handled) {
        while self.unsettled.front().is_some_and(|(s, _)| *s <= seq) {
            self.unsettled.pop_front();
        }
        if seq > self.settled {
            self.settled = seq;
            out.events.push(Event::Acked(seq));
        }
    }

    /// The last device message processed (what the next `resume` says).
    pub fn last_processed(&self) -> Seq {
        self.processed
    }

    /// The last POS number used.
    pub fn last_sent(&self) -> Seq {
        self.last_sent
    }

    /// POS messages not yet settled by the relay.
    pub fn unsettled(&self) -> usize {
        self.unsettled.len()
    }
}

/// Opens a new connection to the session (a fresh token each time, if need be).
pub type Connector = Box<dyn FnMut() -> Result<WsClient, WsError> + Send>;

/// A reliable session over the blocking client, reconnecting and resuming by itself.
pub struct ReliableSession {
    connect: Connector,
    ws: Option<WsClient>,
    state: ReliableState,
    events: VecDeque<Event>,
    backoff: Backoff,
    max_attempts: u32,
    timeout: Duration,
}

impl std::fmt::Debug for ReliableSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReliableSession")
            .field("state", &self.state)
            .field("connected", &self.ws.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether a close or failure is one the relay asks clients to reconnect after.
fn worth_reconnecting(err: &WsError) -> bool {
    match err {
        // 1001 shutting down, 1011 storage failure, 1012 node lost its lease or the device
        // moved to another node; 4401: the connector brings a fresh token.
        WsError::Closed { code, .. } => matches!(code, Some(1001 | 1011 | 1012 | 4401) | None),
        // 503: the relay cannot serve it right now (its cluster is finding the device's
        // node after a node was lost, §12; or it is at its connection limits).
        WsError::Refused { status: 503, .. } => true,
        WsError::Eof | WsError::Io(_) | WsError::Connect { .. } | WsError::HandshakeTimeout(_) => {
            true
        }
        _ => false,
    }
}

impl ReliableSession {
    /// Opens the session at `url`, offering `posrelay.reliable.v1` before the protocols
    /// in `opts` (a `bearer.` entry, for instance), and resumes a new claim.
    pub fn open(
        url: &WsUrl,
        opts: &ConnectOptions,
    ) -> Result<ReliableSession, ReliableClientError> {
        let url = url.clone();
        let mut opts = opts.clone();
        opts.protocols.retain(|p| p != SUBPROTOCOL);
        opts.protocols.insert(0, SUBPROTOCOL.to_owned());
        let timeout = opts.timeout;
        ReliableSession::with_connector(
            Box::new(move || WsClient::connect(&url, &opts)),
            ReliableState::new(),
            timeout,
        )
    }

    /// Opens a session with `connect` (which must offer `posrelay.reliable.v1`) from
    /// `state` (a new one, or one kept from before), and resumes it.
    pub fn with_connector(
        connect: Connector,
        state: ReliableState,
        timeout: Duration,
    ) -> Result<ReliableSession, ReliableClientError> {
        let mut session = ReliableSession {
            connect,
            ws: None,
            state,
            events: VecDeque::new(),
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            max_attempts: 10,
            timeout,
        };
        session.connect_and_resume()?;
        Ok(session)
    }

    /// Reconnect delays (exponential from `initial`, capped at `max`, with jitter) and
    /// how many attempts in a row before giving up.
    pub fn set_reconnect(&mut self, initial: Duration, max: Duration, attempts: u32) {
        self.backoff = Backoff::new(initial, max);
        self.max_attempts = attempts.max(1);
    }

    /// Sends a message to the device; its number, for matching `Undelivered`.
    pub fn send(&mut self, kind: MessageKind, data: &[u8]) -> Result<Seq, ReliableClientError> {
        let message = WsMessage {
            kind,
            data: Bytes::copy_from_slice(data),
        };
        let (seq, envelope) = self.state.send(message);
        if let Some(envelope) = envelope {
            self.write(&envelope)?;
        }
        Ok(seq)
    }

    /// The application processed every device message up to `seq`.
    pub fn processed(&mut self, seq: Seq) -> Result<(), ReliableClientError> {
        if let Some(envelope) = self.state.processed(seq) {
            self.write(&envelope)?;
        }
        Ok(())
    }

    /// The next event, waiting up to `timeout`; `Ok(None)` when none came. A break is
    /// survived on the way (reconnect, resume, resend), reported as [`Event::Resumed`].
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Event>, ReliableClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let Some(ws) = self.ws.as_mut() else {
                self.connect_and_resume()?;
                continue;
            };
            match ws.recv(left) {
                Ok(Some(m)) => {
                    let handled = self.state.handle(m.kind, m.data)?;
                    self.events.extend(handled.events);
                    for envelope in handled.send {
                        self.write(&envelope)?;
                    }
                }
                Ok(None) => return Ok(None),
                Err(err) => self.broken(err)?,
            }
        }
    }

    /// The protocol state (persist it to resume after an application restart).
    pub fn state(&self) -> &ReliableState {
        &self.state
    }

    /// Closes the session normally (the claim stays; resume it later).
    pub fn close(mut self) {
        if let Some(ws) = self.ws.take() {
            ws.close(1000, "bye");
        }
    }

    fn write(&mut self, envelope: &Bytes) -> Result<(), ReliableClientError> {
        let Some(ws) = self.ws.as_mut() else {
            return Ok(()); // sent again after the next resume
        };
        match ws.send(MessageKind::Text, envelope) {
            Ok(()) => Ok(()),
            Err(err) => self.broken(err),
        }
    }

    /// The connection broke: reconnect if the relay asks for it, fail otherwise.
    fn broken(&mut self, err: WsError) -> Result<(), ReliableClientError> {
        self.ws = None;
        self.state.disconnected();
        if !worth_reconnecting(&err) {
            return Err(err.into());
        }
        self.connect_and_resume()
    }

    fn connect_and_resume(&mut self) -> Result<(), ReliableClientError> {
        let mut attempt = 0;
        loop {
            match self.try_connect_and_resume() {
                Ok(()) => {
                    self.backoff.reset();
                    return Ok(());
                }
                Err(ReliableClientError::Ws(err)) if worth_reconnecting(&err) => {
                    attempt += 1;
                    if attempt >= self.max_attempts {
                        return Err(ReliableClientError::GaveUp {
                            attempts: attempt,
                            last: Box::new(err.into()),
                        });
                    }
                    std::thread::sleep(self.backoff.next_delay(&mut rand::thread_rng()));
                }
                Err(other) => return Err(other),
            }
        }
    }

    fn try_connect_and_resume(&mut self) -> Result<(), ReliableClientError> {
        let mut ws = (self.connect)()?;
        if ws.protocol() != Some(SUBPROTOCOL) {
            let selected = ws.protocol().map(str::to_owned);
            ws.close(1002, "posrelay.reliable.v1 not selected");
            return Err(ReliableClientError::NotSelected(selected));
        }
        ws.send(MessageKind::Text, &self.state.resume())?;
        // §11: the relay answers resume with resumed (or resume_failed) first.
        let first = ws.recv_required(self.timeout)?;
        let handled = self.state.handle(first.kind, first.data)?;
        if !matches!(handled.events.first(), Some(Event::Resumed { .. })) {
            return Err(ReliableClientError::Protocol(
                "the first answer to resume was not resumed".to_owned(),
            ));
        }
        for envelope in &handled.send {
            ws.send(MessageKind::Text, envelope)?;
        }
        self.events.extend(handled.events);
        self.ws = Some(ws);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
