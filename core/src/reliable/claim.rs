//! `ReliableClaim`: one reliable claim's state machine (PROTOCOL.md §11), across its POS
//! sessions, its device's connections and relay restarts. No sockets, no clock: `handle_*`
//! takes what happened (with `now`), `poll_*` gives what to do.
//!
//! Outputs, drained by the io layer after every `handle_*`:
//! - [`ReliableClaim::poll_log`]: records to make durable ([`super::ReliableLog::commit`]),
//!   then [`ReliableClaim::handle_logged`] with the batch's ticket.
//! - [`ReliableClaim::poll_transmit`]: envelopes for the POS session, messages for the
//!   device, closes, in the order to perform them.
//! - [`ReliableClaim::poll_event`]: reports for the client's control channels (§4).
//! - [`ReliableClaim::poll_timeout`] / [`ReliableClaim::handle_timeout`]: queue grace.
//! - [`ReliableClaim::device_flow`] / [`ReliableClaim::pos_flow`]: whether to read from the
//!   device and from the POS (backpressure, §6).
//!
//! Rules, and the decisions this file makes where §11 is silent:
//! - **Device → POS.** A device message is numbered when it arrives and held; it goes to
//!   the POS only once its [`LogRecord::DeviceHeld`] is durable, so a number never names
//!   two messages even across a crash (§11). The POS's cumulative `ack` (and its `resume`)
//!   drops what it processed. Held payload bytes at or past the window pause the device.
//! - **POS → device.** Each POS message, in order, goes one of three ways:
//!   *direct* (device online, nothing queued ahead): [`LogRecord::PosHanding`] is made
//!   durable, the message is written to the device, [`LogRecord::PosDone`] is made
//!   durable, then it is safe; *queued* (device offline): [`LogRecord::PosQueued`] durable
//!   makes it safe, and it is handed to the device the same way when the device is back;
//!   *reported*: the queue is full, it expired (§6 grace), or the device connection went
//!   away while it was being written. The relay never writes a message twice: after a crash
//!   those handed but not done are reported, since the relay cannot know whether they left.
//! - **Acks to the POS** are cumulative over settled messages (safe or reported). A report
//!   always precedes, on the session, any ack that covers it; `resumed`'s `seq` stops
//!   before the first report the POS may not have read, so the POS sends those messages
//!   again and hears the report again.
//! - **Reports** (`undelivered` by number) are kept, durably, until the POS has surely read
//!   them: until it acknowledges a device message sent after the report. They are sent
//!   when made (with a session) and again after every `resumed`.
//! - **Duplicates.** POS `data` already received is never forwarded twice: if it is settled
//!   the relay acks again (or repeats its report), if it is on its way the ack follows.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use crate::ids::{ClientKey, DeviceKey, SessionId};
use crate::relay::{close, ConnId, Count, MessageKind, QueuedMessage, RelayedMessage};

use super::envelope::Envelope;
use super::error::{ReliableError, ResumeFailure};
use super::limits::ReliableLimits;
use super::log::{ClaimSnapshot, LogBatch, LogRecord, LogTicket};
use super::seq::{Seq, SeqRange};

/// The reliable claim itself: who holds which device, under which session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    /// The device claimed (one reliable claim per device).
    pub device: DeviceKey,
    /// The POS client holding the claim.
    pub client: ClientKey,
    /// The device's session id, which the claim keeps across restarts (§11).
    pub session_id: SessionId,
}

/// Whether the io layer may read from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read.
    Open,
    /// Stop reading until a `handle_*` call makes it open again (§6 backpressure).
    Paused,
}

/// Something for the io layer to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Transmit {
    /// Send `envelope` as one text message on the POS session `conn`.
    Pos {
        /// The session.
        conn: ConnId,
        /// One §11 envelope.
        envelope: Bytes,
    },
    /// Close the POS session `conn` (after sending what came before).
    ClosePos {
        /// The session.
        conn: ConnId,
        /// §8 close code.
        code: u16,
        /// The close reason (at most 123 bytes).
        reason: String,
    },
    /// Write `message` verbatim on the device connection `conn`, then report it with
    /// [`ReliableClaim::handle_device_written`]. Skip it if `conn` has closed meanwhile.
    Device {
        /// The device connection.
        conn: ConnId,
        /// The POS message's number.
        seq: Seq,
        /// The message.
        message: RelayedMessage,
    },
}

/// Something for the claim holder's control channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReliableEvent {
    /// The claim ended with POS messages that will not reach the device and that no
    /// session can be told about by number: carry it as §4 `undelivered`.
    Undelivered(Count),
}

/// Where one POS message is on its way to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// [`LogRecord::PosQueued`] not yet durable.
    Queuing,
    /// Durably queued, waiting for the device.
    Queued,
    /// [`LogRecord::PosHanding`] not yet durable.
    Handing,
    /// Handed to the io layer for the device's socket.
    Writing,
    /// Written; [`LogRecord::PosDone`] not yet durable.
    Confirming,
    /// [`LogRecord::PosReported`] not yet durable.
    Reporting,
}

#[derive(Debug)]
struct Outgoing {
    seq: Seq,
    message: RelayedMessage,
    stage: Stage,
    /// Safe (§11): durably queued, or written and done. Never goes back to false.
    safe: bool,
    /// The record this entry waits on.
    pending: Option<LogTicket>,
    /// When it was queued (for the offline grace).
    queued_at: Option<Instant>,
}

#[derive(Debug)]
struct Held {
    seq: Seq,
    message: RelayedMessage,
    /// The [`LogRecord::DeviceHeld`] not yet durable.
    pending: Option<LogTicket>,
}

/// An `undelivered` report kept until the POS has surely read it.
#[derive(Debug)]
struct Report {
    range: SeqRange,
    bytes: u64,
    /// The last device message sent before the report was first sent: once the POS
    /// acknowledges a later one, it has read the report.
    after: Option<Seq>,
    /// The session generation it was last sent on.
    sent_on: Option<u64>,
}

#[derive(Debug)]
enum Phase {
    /// Upgraded; the POS's first message must be `resume`.
    AwaitResume,
    /// Resumed.
    Live {
        /// The last device message sent on this session.
        sent: Seq,
        /// The last POS message acknowledged on this session (`resumed` included).
        acked: Seq,
    },
}

#[derive(Debug)]
struct Session {
    conn: ConnId,
    generation: u64,
    phase: Phase,
}

/// One reliable claim. See the module documentation for the rules.
#[derive(Debug)]
pub struct ReliableClaim {
    record: ClaimRecord,
    limits: ReliableLimits,
    resumed_once: bool,
    /// The first [`LogRecord::Resumed`], until durable: no device message goes to the POS
    /// before it, or a restart could refuse a resume from a POS that processed one.
    resumed_pending: Option<LogTicket>,
    ended: bool,

    // Device → POS.
    held: VecDeque<Held>,
    held_bytes: usize,
    device_acked: Seq,
    device_last: Seq,
    device_conn: Option<ConnId>,

    // POS → device.
    outgoing: VecDeque<Outgoing>,
    /// Payload bytes of outgoing messages not yet safe (the POS read window).
    unsafe_bytes: usize,
    queue_bytes: usize,
    queue_frames: usize,
    pos_received: Seq,
    pos_handed: Seq,
    /// Every POS message up to here is settled (safe or reported).
    settled: Seq,
    reports: VecDeque<Report>,
    /// Reports whose [`LogRecord::PosReported`] is not yet durable.
    reporting: Vec<(LogTicket, SeqRange, u64)>,

    session: Option<Session>,
    generations: u64,

    next_ticket: u64,
    log: Vec<LogRecord>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ReliableEvent>,
}

fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl ReliableClaim {
    /// A new reliable claim (its first reliable session is opening). Its first log record
    /// persists the claim itself.
    pub fn new(record: ClaimRecord, limits: ReliableLimits) -> ReliableClaim {
        let mut claim = ReliableClaim::empty(record.clone(), limits);
        claim.log(LogRecord::Claim(record));
        claim
    }

    /// The claim as it was before a restart, from its durable state. The claim grace is the
    /// io layer's to restart (§11: "counted from the restart"); so is the queue's: messages
    /// queued for the device wait `offline_grace` from `now`.
    ///
    /// POS messages that were being written to the device when the relay stopped (handed,
    /// not done) are reported: the relay cannot know whether they reached the device, and
    /// it never writes a message twice.
    pub fn restore(snapshot: ClaimSnapshot, limits: ReliableLimits, now: Instant) -> ReliableClaim {
        let mut claim = ReliableClaim::empty(snapshot.record, limits);
        claim.resumed_once = snapshot.resumed;
        claim.device_acked = snapshot.device_acked;
        claim.device_last = snapshot.device_acked;
        for (seq, message) in snapshot.held {
            if seq <= claim.device_acked {
                continue;
            }
            claim.held_bytes += message.payload_len();
            claim.device_last = claim.device_last.max(seq);
            claim.held.push_back(Held {
                seq,
                message,
                pending: None,
            });
        }
        for (range, bytes) in snapshot.reports {
            claim.reports.push_back(Report {
                range,
                bytes,
                after: None,
                sent_on: None,
            });
        }
        claim.pos_handed = snapshot.pos_handed;
        let mut received = snapshot.pos_handed.max(snapshot.pos_done);
        for report in &claim.reports {
            received = received.max(report.range.to());
        }
        let mut maybe_bytes: Vec<(Seq, u64)> = Vec::new();
        for (seq, message) in snapshot.queued {
            received = received.max(seq);
            if seq <= snapshot.pos_done {
                continue;
            }
            if seq <= snapshot.pos_handed {
                maybe_bytes.push((seq, len64(message.payload_len())));
                continue;
            }
            claim.queue_bytes += message.payload_len();
            claim.queue_frames += 1;
            claim.outgoing.push_back(Outgoing {
                seq,
                message,
                stage: Stage::Queued,
                safe: true,
                pending: None,
                queued_at: Some(now),
            });
        }
        // Handed to the device before the stop and never confirmed written: report the ones
        // not reported already, one report per run of numbers.
        if let Some(handed) = SeqRange::new(snapshot.pos_done.next(), snapshot.pos_handed) {
            let mut covered: Vec<SeqRange> = claim.reports.iter().map(|r| r.range).collect();
            covered.sort();
            for gap in uncovered(handed, &covered) {
                let bytes = maybe_bytes
                    .iter()
                    .filter(|(s, _)| gap.contains(*s))
                    .map(|(_, b)| *b)
                    .sum();
                claim.restore_report(gap, bytes);
            }
        }
        if snapshot.pos_handed > snapshot.pos_done {
            claim.log(LogRecord::PosDone {
                upto: snapshot.pos_handed,
            });
        }
        claim.pos_received = received;
        claim.settled = received;
        claim.trim_reports();
        claim
    }

    fn restore_report(&mut self, range: SeqRange, bytes: u64) {
        self.log(LogRecord::PosReported { range, bytes });
        self.reports.push_back(Report {
            range,
            bytes,
            after: None,
            sent_on: None,
        });
    }

    fn empty(record: ClaimRecord, limits: ReliableLimits) -> ReliableClaim {
        ReliableClaim {
            record,
            limits,
            resumed_once: false,
            resumed_pending: None,
            ended: false,
            held: VecDeque::new(),
            held_bytes: 0,
            device_acked: Seq::ZERO,
            device_last: Seq::ZERO,
            device_conn: None,
            outgoing: VecDeque::new(),
            unsafe_bytes: 0,
            queue_bytes: 0,
            queue_frames: 0,
            pos_received: Seq::ZERO,
            pos_handed: Seq::ZERO,
            settled: Seq::ZERO,
            reports: VecDeque::new(),
            reporting: Vec::new(),
            session: None,
            generations: 0,
            next_ticket: 0,
            log: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    // ---------------------------------------------------------------- POS sessions

    /// A POS session `conn` was upgraded with `posrelay.reliable.v1` on this claim (the
    /// client already checked to be the claim holder). An older session is replaced
    /// (closed 4000, §5). Its first message must be `resume`.
    pub fn handle_session_opened(&mut self, conn: ConnId, _now: Instant) {
        if self.ended {
            return;
        }
        if let Some(old) = self.session.take() {
            if old.conn != conn {
                self.transmits.push_back(Transmit::ClosePos {
                    conn: old.conn,
                    code: close::REPLACED,
                    reason: "replaced".to_owned(),
                });
            }
        }
        self.generations += 1;
        self.session = Some(Session {
            conn,
            generation: self.generations,
            phase: Phase::AwaitResume,
        });
    }

    /// The POS session `conn` closed (current or not).
    pub fn handle_session_closed(&mut self, conn: ConnId, _now: Instant) {
        if self.session.as_ref().is_some_and(|s| s.conn == conn) {
            self.session = None;
        }
    }

    /// A complete message from the POS session `conn`. Messages of a session that is no
    /// longer current are ignored (nothing was acknowledged: the POS sends them again).
    ///
    /// An error closes the session: the close (and `resume_failed` before a 4409) is
    /// already queued in [`Self::poll_transmit`]; the error is for logs and metrics.
    pub fn handle_pos_message(
        &mut self,
        conn: ConnId,
        kind: MessageKind,
        payload: Bytes,
        now: Instant,
    ) -> Result<(), ReliableError> {
        if self.ended || self.session.as_ref().is_none_or(|s| s.conn != conn) {
            return Ok(());
        }
        let result = Envelope::parse(kind, payload)
            .map_err(ReliableError::from)
            .and_then(|envelope| self.handle_envelope(envelope, now));
        if let Err(err) = &result {
            self.fail_session(err);
        }
        self.flush();
        result
    }

    fn handle_envelope(&mut self, envelope: Envelope, now: Instant) -> Result<(), ReliableError> {
        let live = match self.session.as_ref().map(|s| &s.phase) {
            Some(Phase::Live { .. }) => true,
            Some(Phase::AwaitResume) => false,
            None => return Ok(()),
        };
        match envelope {
            Envelope::Resume { seq } if !live => self.resume(seq),
            Envelope::Resume { .. } => Err(ReliableError::ResumeAgain),
            other if !live => Err(ReliableError::FirstNotResume {
                found: other.type_name(),
            }),
            Envelope::Ack { seq } => {
                let sent = self.sent_on_session();
                if seq > sent {
                    return Err(ReliableError::AckBeyondSent { ack: seq, sent });
                }
                self.ack_device(seq);
                Ok(())
            }
            Envelope::Data { seq, message } => self.pos_data(seq, message, now),
            other => Err(ReliableError::NotFromPos {
                found: other.type_name(),
            }),
        }
    }

    /// §11 resume: "N being the last device message it processed".
    fn resume(&mut self, n: Seq) -> Result<(), ReliableError> {
        if !self.resumed_once && n > Seq::ZERO {
            return Err(ResumeFailure::ClaimEnded.into());
        }
        if n < self.device_acked {
            return Err(ResumeFailure::NoLongerHeld {
                resume: n,
                acked: self.device_acked,
            }
            .into());
        }
        let last = self.last_durable_device();
        if n > last {
            return Err(ResumeFailure::Future { resume: n, last }.into());
        }
        if !self.resumed_once {
            self.resumed_once = true;
            self.resumed_pending = Some(self.log(LogRecord::Resumed));
        }
        self.ack_device(n);
        let resumed = self.resumed_seq();
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        session.phase = Phase::Live {
            sent: n,
            acked: resumed,
        };
        let (conn, generation) = (session.conn, session.generation);
        self.transmits.push_back(Transmit::Pos {
            conn,
            envelope: Envelope::Resumed { seq: resumed }.encode(),
        });
        for report in &mut self.reports {
            report.after.get_or_insert(n);
            report.sent_on = Some(generation);
            self.transmits.push_back(Transmit::Pos {
                conn,
                envelope: Envelope::Undelivered {
                    range: report.range,
                }
                .encode(),
            });
        }
        self.send_held();
        Ok(())
    }

    /// `resumed`'s `seq`: the last POS message settled, but before the first report the
    /// POS may not have read (it then sends those messages again and hears it again).
    fn resumed_seq(&self) -> Seq {
        self.reports
            .iter()
            .map(|r| r.range.from().prev())
            .fold(self.settled, Seq::min)
    }

    fn pos_data(
        &mut self,
        seq: Seq,
        message: RelayedMessage,
        now: Instant,
    ) -> Result<(), ReliableError> {
        if seq <= self.pos_received {
            self.duplicate(seq);
            return Ok(());
        }
        let expected = self.pos_received.next();
        if seq != expected {
            return Err(ReliableError::SeqGap { seq, expected });
        }
        self.pos_received = seq;
        let len = message.payload_len();
        let queue_ahead = self
            .outgoing
            .iter()
            .any(|o| matches!(o.stage, Stage::Queuing | Stage::Queued));
        let fits = self.queue_frames < self.limits.queue_frames
            && self.queue_bytes.saturating_add(len) <= self.limits.queue_bytes;
        let stage = if self.device_conn.is_some() && !queue_ahead {
            self.pos_handed = seq;
            Stage::Handing
        } else if fits {
            self.queue_bytes += len;
            self.queue_frames += 1;
            Stage::Queuing
        } else {
            Stage::Reporting
        };
        let ticket = match stage {
            Stage::Handing => self.log(LogRecord::PosHanding { upto: seq }),
            Stage::Queuing => self.log(LogRecord::PosQueued {
                seq,
                message: message.clone(),
            }),
            _ => {
                // §6 "queue full": reported by number (§11).
                let range = SeqRange::one(seq).unwrap_or_else(|| unreachable!("seq is above 0"));
                let bytes = len64(len);
                let ticket = self.log(LogRecord::PosReported { range, bytes });
                self.reporting.push((ticket, range, bytes));
                ticket
            }
        };
        self.unsafe_bytes += len;
        self.outgoing.push_back(Outgoing {
            seq,
            message,
            stage,
            safe: false,
            pending: Some(ticket),
            queued_at: (stage == Stage::Queuing).then_some(now),
        });
        Ok(())
    }

    /// POS `data` with a number already received: "acknowledged again and not forwarded
    /// twice" (§11).
    fn duplicate(&mut self, seq: Seq) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let (conn, generation) = (session.conn, session.generation);
        let sent = self.sent_on_session();
        if let Some(report) = self.reports.iter_mut().find(|r| r.range.contains(seq)) {
            if report.sent_on != Some(generation) {
                report.sent_on = Some(generation);
                report.after.get_or_insert(sent);
                self.transmits.push_back(Transmit::Pos {
                    conn,
                    envelope: Envelope::Undelivered {
                        range: report.range,
                    }
                    .encode(),
                });
            }
            return;
        }
        if seq <= self.settled {
            self.send_ack(true);
        }
        // Otherwise it is on its way: its ack follows when it is safe.
    }

    /// The POS processed every device message up to `n`.
    fn ack_device(&mut self, n: Seq) {
        if n <= self.device_acked {
            return;
        }
        while self.held.front().is_some_and(|h| h.seq <= n) {
            if let Some(h) = self.held.pop_front() {
                self.held_bytes -= h.message.payload_len();
            }
        }
        self.device_acked = n;
        self.log(LogRecord::DeviceAcked { upto: n });
        // A report followed by a device message the POS has now processed has been read.
        let mut confirmed = Vec::new();
        self.reports.retain(|r| {
            let read = r.after.is_some_and(|after| after < n);
            if read {
                confirmed.push(r.range);
            }
            !read
        });
        for range in confirmed {
            self.log(LogRecord::ReportConfirmed { range });
        }
    }

    fn fail_session(&mut self, err: &ReliableError) {
        let Some(session) = self.session.take() else {
            return;
        };
        if let ReliableError::ResumeFailed(failure) = err {
            self.transmits.push_back(Transmit::Pos {
                conn: session.conn,
                envelope: failure.reply(),
            });
        }
        self.transmits.push_back(Transmit::ClosePos {
            conn: session.conn,
            code: err.close_code(),
            reason: err.close_reason(),
        });
    }

    // ---------------------------------------------------------------- the device

    /// The device connection `conn` is open (§3). Messages queued for it go first.
    pub fn handle_device_connected(&mut self, conn: ConnId, now: Instant) {
        if self.ended {
            return;
        }
        if let Some(old) = self.device_conn.filter(|old| *old != conn) {
            self.handle_device_disconnected(old, now);
        }
        self.device_conn = Some(conn);
        self.hand_queued();
        self.flush();
    }

    /// The device connection `conn` closed. Report every message written before with
    /// [`Self::handle_device_written`] first: the ones still on their way are reported
    /// undelivered (the relay never writes a message twice).
    pub fn handle_device_disconnected(&mut self, conn: ConnId, _now: Instant) {
        if self.ended || self.device_conn != Some(conn) {
            return;
        }
        self.device_conn = None;
        let lost: Vec<usize> = self
            .outgoing
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o.stage, Stage::Handing | Stage::Writing))
            .map(|(i, _)| i)
            .collect();
        if !lost.is_empty() {
            self.report_entries(&lost);
            self.log(LogRecord::PosDone {
                upto: self.pos_handed,
            });
        }
        self.flush();
    }

    /// A complete message from the device connection `conn`: numbered and held. `None`
    /// when `conn` is not the device's current connection (dropped, as §3 does).
    pub fn handle_device_message(
        &mut self,
        conn: ConnId,
        message: RelayedMessage,
        _now: Instant,
    ) -> Option<Seq> {
        if self.ended || self.device_conn != Some(conn) {
            return None;
        }
        Some(self.hold(message))
    }

    /// A device message that arrived before the claim's first reliable session, kept by the
    /// relay for the claim holder (§5): numbered and held like one from the device now.
    pub fn handle_device_backlog(&mut self, message: RelayedMessage, _now: Instant) -> Option<Seq> {
        if self.ended {
            return None;
        }
        Some(self.hold(message))
    }

    /// Numbers a device message, logs it and holds it until the POS acks it.
    fn hold(&mut self, message: RelayedMessage) -> Seq {
        let seq = self.device_last.next();
        self.device_last = seq;
        self.held_bytes += message.payload_len();
        let ticket = self.log(LogRecord::DeviceHeld {
            seq,
            message: message.clone(),
        });
        self.held.push_back(Held {
            seq,
            message,
            pending: Some(ticket),
        });
        seq
    }

    /// The POS message `seq` (and every one before it) was written to the device's socket.
    pub fn handle_device_written(&mut self, conn: ConnId, seq: Seq, _now: Instant) {
        if self.ended || self.device_conn != Some(conn) {
            return;
        }
        let mut upto = None;
        for o in self.outgoing.iter_mut() {
            if o.seq > seq {
                break;
            }
            if o.stage == Stage::Writing {
                o.stage = Stage::Confirming;
                upto = Some(o.seq);
            }
        }
        if let Some(upto) = upto {
            let ticket = self.log(LogRecord::PosDone { upto });
            for o in self.outgoing.iter_mut() {
                if o.stage == Stage::Confirming && o.seq <= upto && o.pending.is_none() {
                    o.pending = Some(ticket);
                }
            }
        }
        self.flush();
    }

    // ---------------------------------------------------------------- the log

    /// Records to make durable, oldest first, as one batch. Commit batches in the order
    /// taken, then call [`Self::handle_logged`] with the ticket.
    pub fn poll_log(&mut self) -> Option<LogBatch> {
        if self.log.is_empty() {
            return None;
        }
        Some(LogBatch {
            claim: self.record.device.clone(),
            records: std::mem::take(&mut self.log),
            ticket: LogTicket(self.next_ticket),
        })
    }

    /// Every batch up to `ticket` is durable: release what waited on it.
    pub fn handle_logged(&mut self, ticket: LogTicket, _now: Instant) {
        if self.ended {
            return;
        }
        let durable = |pending: Option<LogTicket>| pending.is_some_and(|t| t <= ticket);
        if durable(self.resumed_pending) {
            self.resumed_pending = None;
        }
        for h in self.held.iter_mut().filter(|h| durable(h.pending)) {
            h.pending = None;
        }
        let mut i = 0;
        while let Some(o) = self.outgoing.get_mut(i) {
            if !durable(o.pending) {
                i += 1;
                continue;
            }
            o.pending = None;
            match o.stage {
                Stage::Queuing => {
                    o.stage = Stage::Queued;
                    o.safe = true;
                    self.unsafe_bytes -= o.message.payload_len();
                }
                // A disconnect reports what is being handed, so the device is online here.
                Stage::Handing => {
                    o.stage = Stage::Writing;
                    if let Some(conn) = self.device_conn {
                        self.transmits.push_back(Transmit::Device {
                            conn,
                            seq: o.seq,
                            message: o.message.clone(),
                        });
                    }
                }
                Stage::Confirming | Stage::Reporting => {
                    if !o.safe {
                        self.unsafe_bytes -= o.message.payload_len();
                    }
                    self.outgoing.remove(i);
                    continue;
                }
                Stage::Queued | Stage::Writing => {}
            }
            i += 1;
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reporting)
            .into_iter()
            .partition(|(t, _, _)| *t <= ticket);
        self.reporting = waiting;
        for (_, range, bytes) in done {
            self.add_report(range, bytes);
        }
        self.hand_queued();
        self.send_held();
        self.flush();
    }

    /// The io layer could not commit a batch (it retries it). The POS session is closed
    /// with 1011 so that the POS resumes later; nothing is lost or acknowledged meanwhile.
    pub fn handle_log_failed(&mut self, _now: Instant) {
        if let Some(session) = self.session.take() {
            self.transmits.push_back(Transmit::ClosePos {
                conn: session.conn,
                code: close::INTERNAL_ERROR,
                reason: "storage failure: resume later".to_owned(),
            });
        }
    }

    // ---------------------------------------------------------------- time and the end

    /// When [`Self::handle_timeout`] is next due: the oldest queued POS message's grace.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outgoing
            .iter()
            .find(|o| o.stage == Stage::Queued)
            .and_then(|o| o.queued_at)
            .and_then(|t| t.checked_add(self.limits.offline_grace))
    }

    /// Reports the queued POS messages whose grace has run out (§6).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        let grace = self.limits.offline_grace;
        let expired: Vec<usize> = self
            .outgoing
            .iter()
            .enumerate()
            .filter(|(_, o)| o.stage == Stage::Queued)
            .take_while(|(_, o)| {
                o.queued_at
                    .and_then(|t| t.checked_add(grace))
                    .is_some_and(|due| due <= now)
            })
            .map(|(i, _)| i)
            .collect();
        if !expired.is_empty() {
            self.report_entries(&expired);
        }
        self.flush();
    }

    /// The claim ended (released, its grace ran out, its device was disabled, its client
    /// deleted). The POS session is closed with `code` (4001, or 1008 for a deleted
    /// client); the log forgets the claim; what will not reach the device and was never
    /// reported by number goes to the control channels ([`Self::poll_event`]).
    pub fn handle_claim_ended(&mut self, code: u16, reason: &str, _now: Instant) {
        if self.ended {
            return;
        }
        let mut lost = Count::default();
        for o in &self.outgoing {
            // Written or being written: it reaches the device.
            if !matches!(o.stage, Stage::Writing | Stage::Confirming) {
                lost.merge(one(o.message.payload_len()));
            }
        }
        for r in self.reports.iter().filter(|r| r.sent_on.is_none()) {
            lost.merge(Count {
                frames: r.range.len(),
                bytes: r.bytes,
            });
        }
        if !lost.is_empty() {
            self.events.push_back(ReliableEvent::Undelivered(lost));
        }
        self.end(code, reason);
        self.log(LogRecord::ClaimEnded);
    }

    /// §12: another node took the device over, and carries this claim on from what the
    /// log holds (its records here are refused, [`super::ReliableLog::commit_owned`]).
    /// The POS session is closed with `code` (1012: resume, and the cluster finds the
    /// claim's node); nothing is logged or reported here: every message this claim held
    /// or queued is the new node's now, and is delivered or reported there.
    pub fn handle_moved(&mut self, code: u16, reason: &str, _now: Instant) {
        if self.ended {
            return;
        }
        self.end(code, reason);
    }

    /// Ends the claim here: its POS session closes with `code`, the records not yet taken
    /// are dropped, and it holds nothing more.
    fn end(&mut self, code: u16, reason: &str) {
        if let Some(session) = self.session.take() {
            self.transmits.push_back(Transmit::ClosePos {
                conn: session.conn,
                code,
                reason: reason.to_owned(),
            });
        }
        self.log.clear();
        self.ended = true;
        self.held.clear();
        self.held_bytes = 0;
        self.outgoing.clear();
        self.unsafe_bytes = 0;
        self.reports.clear();
        self.reporting.clear();
    }

    // ---------------------------------------------------------------- outputs

    /// The next thing to do, in order.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next report for the control channels.
    pub fn poll_event(&mut self) -> Option<ReliableEvent> {
        self.events.pop_front()
    }

    /// Whether to read from the device: paused while the held device messages fill the
    /// window (a POS that does not ack).
    pub fn device_flow(&self) -> Flow {
        if self.held_bytes >= self.limits.window_bytes {
            Flow::Paused
        } else {
            Flow::Open
        }
    }

    /// Whether to read from the POS session: paused while POS messages not yet safe fill
    /// the window (a device that reads slowly, a log that lags).
    pub fn pos_flow(&self) -> Flow {
        if self.unsafe_bytes >= self.limits.window_bytes {
            Flow::Paused
        } else {
            Flow::Open
        }
    }

    /// The claim.
    pub fn record(&self) -> &ClaimRecord {
        &self.record
    }

    /// Whether the claim has ended (the io drops it once its log and transmits are drained).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Payload bytes of device messages held.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// The last device message numbered.
    pub fn last_device_seq(&self) -> Seq {
        self.device_last
    }

    /// The last POS message settled (safe or reported).
    pub fn settled_pos_seq(&self) -> Seq {
        self.settled
    }

    /// Whether records wait to be taken by [`Self::poll_log`] (drain before exiting).
    pub fn has_log(&self) -> bool {
        !self.log.is_empty()
    }

    // ---------------------------------------------------------------- internals

    fn log(&mut self, record: LogRecord) -> LogTicket {
        self.next_ticket += 1;
        self.log.push(record);
        LogTicket(self.next_ticket)
    }

    fn last_durable_device(&self) -> Seq {
        self.held
            .iter()
            .take_while(|h| h.pending.is_none())
            .last()
            .map_or(self.device_acked, |h| h.seq)
    }

    fn sent_on_session(&self) -> Seq {
        match self.session.as_ref().map(|s| &s.phase) {
            Some(Phase::Live { sent, .. }) => *sent,
            _ => Seq::ZERO,
        }
    }

    /// Sends the durable device messages the live session has not had yet, in order.
    fn send_held(&mut self) {
        if self.resumed_pending.is_some() {
            return;
        }
        let Some(Session {
            conn,
            phase: Phase::Live { sent, .. },
            ..
        }) = self.session.as_mut()
        else {
            return;
        };
        let from = *sent;
        for h in self.held.iter().filter(|h| h.seq > from) {
            if h.pending.is_some() {
                break;
            }
            *sent = h.seq;
            self.transmits.push_back(Transmit::Pos {
                conn: *conn,
                envelope: Envelope::Data {
                    seq: h.seq,
                    message: h.message.clone(),
                }
                .encode(),
            });
        }
    }

    /// Hands the durably queued POS messages at the front to the online device, in order.
    fn hand_queued(&mut self) {
        if self.device_conn.is_none() {
            return;
        }
        let mut upto = None;
        for o in self.outgoing.iter_mut() {
            match o.stage {
                Stage::Queued => {
                    o.stage = Stage::Handing;
                    self.queue_bytes -= o.message.payload_len();
                    self.queue_frames -= 1;
                    upto = Some(o.seq);
                }
                Stage::Queuing => break,
                _ => {}
            }
        }
        if let Some(upto) = upto {
            self.pos_handed = upto;
            let ticket = self.log(LogRecord::PosHanding { upto });
            for o in self.outgoing.iter_mut() {
                if o.stage == Stage::Handing && o.pending.is_none() {
                    o.pending = Some(ticket);
                }
            }
        }
    }

    /// Reports the outgoing entries at `indices` (ascending), one record per run of
    /// consecutive numbers.
    fn report_entries(&mut self, indices: &[usize]) {
        let mut runs: Vec<(SeqRange, u64, Vec<usize>)> = Vec::new();
        for &i in indices {
            let Some(o) = self.outgoing.get(i) else {
                continue;
            };
            let bytes = len64(o.message.payload_len());
            match runs.last_mut() {
                Some((range, total, members)) if range.to().next() == o.seq => {
                    *range = range.extended_to(o.seq);
                    *total += bytes;
                    members.push(i);
                }
                _ => {
                    if let Some(range) = SeqRange::one(o.seq) {
                        runs.push((range, bytes, vec![i]));
                    }
                }
            }
        }
        for (range, bytes, members) in runs {
            let ticket = self.log(LogRecord::PosReported { range, bytes });
            self.reporting.push((ticket, range, bytes));
            for i in members {
                if let Some(o) = self.outgoing.get_mut(i) {
                    if matches!(o.stage, Stage::Queuing | Stage::Queued) {
                        self.queue_bytes -= o.message.payload_len();
                        self.queue_frames -= 1;
                    }
                    o.stage = Stage::Reporting;
                    o.pending = Some(ticket);
                }
            }
        }
    }

    /// A report is durable: keep it, and tell the live session.
    fn add_report(&mut self, range: SeqRange, bytes: u64) {
        let mut report = Report {
            range,
            bytes,
            after: None,
            sent_on: None,
        };
        if let Some(Session {
            conn,
            generation,
            phase: Phase::Live { sent, .. },
        }) = self.session.as_ref()
        {
            report.after = Some(*sent);
            report.sent_on = Some(*generation);
            self.transmits.push_back(Transmit::Pos {
                conn: *conn,
                envelope: Envelope::Undelivered { range }.encode(),
            });
        }
        self.reports.push_back(report);
        self.trim_reports();
    }

    /// Past the bound, the oldest kept report is forgotten (it was sent when made).
    fn trim_reports(&mut self) {
        while self.reports.len() > self.limits.kept_reports {
            if let Some(old) = self.reports.pop_front() {
                self.log(LogRecord::ReportConfirmed { range: old.range });
            }
        }
    }

    /// Advances the settled mark and acks it on the live session.
    fn flush(&mut self) {
        let start = self.outgoing.partition_point(|o| o.seq <= self.settled);
        let mut next = self.outgoing.range(start..).peekable();
        while self.settled < self.pos_received {
            let candidate = self.settled.next();
            match next.peek() {
                Some(o) if o.seq == candidate => {
                    if !o.safe {
                        break;
                    }
                    next.next();
                }
                // Not outgoing any more: settled and gone.
                _ => {}
            }
            self.settled = candidate;
        }
        self.send_ack(false);
    }

    /// Sends `ack` of the settled mark on the live session: when it moved, or `again`.
    fn send_ack(&mut self, again: bool) {
        let settled = self.settled;
        let Some(Session {
            conn,
            phase: Phase::Live { acked, .. },
            ..
        }) = self.session.as_mut()
        else {
            return;
        };
        if settled > *acked || again {
            *acked = settled;
            self.transmits.push_back(Transmit::Pos {
                conn: *conn,
                envelope: Envelope::Ack { seq: settled }.encode(),
            });
        }
    }
}

/// The parts of `range` that no range of `covered` (sorted) contains.
fn uncovered(range: SeqRange, covered: &[SeqRange]) -> Vec<SeqRange> {
    let mut gaps = Vec::new();
    let mut start = range.from();
    for c in covered {
        if c.to() < start {
            continue;
        }
        if c.from() > range.to() {
            break;
        }
        if let Some(gap) = SeqRange::new(start, c.from().prev()) {
            gaps.push(gap);
        }
        if c.to() >= range.to() {
            return gaps;
        }
        start = c.to().next();
    }
    gaps.extend(SeqRange::new(start, range.to()));
    gaps
}

fn one(len: usize) -> Count {
    Count {
        frames: 1,
        bytes: len64(len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: u64, b: u64) -> SeqRange {
        SeqRange::new(Seq::new(a), Seq::new(b)).unwrap()
    }

    #[test]
    fn uncovered_is_the_range_minus_the_covered_parts() {
        assert_eq!(uncovered(r(1, 10), &[]), vec![r(1, 10)]);
        assert_eq!(
            uncovered(r(1, 10), &[r(3, 4), r(6, 6)]),
            vec![r(1, 2), r(5, 5), r(7, 10)]
        );
        assert_eq!(uncovered(r(3, 5), &[r(1, 3), r(5, 9)]), vec![r(4, 4)]);
        assert_eq!(uncovered(r(3, 5), &[r(1, 9)]), vec![]);
        assert_eq!(uncovered(r(3, 5), &[r(1, 2), r(6, 9)]), vec![r(3, 5)]);
        let top = Seq::new(u64::MAX);
        assert_eq!(
            uncovered(SeqRange::new(Seq::new(5), top).unwrap(), &[r(6, u64::MAX)]),
            vec![r(5, 5)]
        );
    }
}
