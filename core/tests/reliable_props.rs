//! PROTOCOL.md §11's promise, checked over random interleavings on a virtual clock:
//! - every device message the relay numbered durably is processed by the POS exactly
//!   once, in order, and its number never names another message;
//! - every POS message reaches the device at most once, in order, or is reported
//!   (`undelivered` by number); once everything heals, each one has reached the device or
//!   been reported, and none is left unsettled.
//!
//! The relay is one `ReliableClaim` over an in-memory log whose commits happen when the
//! schedule says; a restart drops what was not committed (and the io's unconfirmed
//! writes) and rebuilds the claim from the log. The POS and the device are small models:
//! the POS resumes with the last message it processed, acks what it processed (when the
//! schedule says), resends what the relay has not settled and drops duplicates; the
//! device receives what the io writes and sends numbered answers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use posrelay_core::ids::{ClientId, ClientKey, DeviceKey, DomainName, Serial, SessionId};
use posrelay_core::relay::{ConnId, MessageKind, RelayLimits, RelayedMessage};
use posrelay_core::reliable::{
    ClaimRecord, Envelope, Flow, LogBatch, LogRecord, MemReliableLog, ReliableClaim,
    ReliableLimits, ReliableLog, Seq, Transmit,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// The device sends a message of this many bytes (if the relay reads it).
    DeviceSend(usize),
    /// The io writes the next POS message to the device.
    DeviceWrite,
    /// The io reports the device writes done so far.
    ConfirmWrites,
    DeviceDisconnect,
    DeviceConnect,
    /// The POS sends a new message of this many bytes.
    PosSend(usize),
    /// The POS sends again a message it sent before (by how far back).
    PosDuplicate(u64),
    /// The POS acks what it processed.
    PosAck,
    /// A message crosses the network, POS → relay.
    ToRelay,
    /// A message crosses the network, relay → POS.
    ToPos,
    /// The POS session breaks (either side); messages on the wire are lost.
    SessionBreak,
    SessionOpen,
    /// The log commits what the relay has asked so far.
    Commit,
    /// The relay stops (kill -9) and starts again on its log.
    Restart,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..40).prop_map(Op::DeviceSend),
        6 => Just(Op::DeviceWrite),
        4 => Just(Op::ConfirmWrites),
        2 => Just(Op::DeviceDisconnect),
        3 => Just(Op::DeviceConnect),
        6 => (0usize..40).prop_map(Op::PosSend),
        2 => (0u64..6).prop_map(Op::PosDuplicate),
        4 => Just(Op::PosAck),
        10 => Just(Op::ToRelay),
        10 => Just(Op::ToPos),
        2 => Just(Op::SessionBreak),
        3 => Just(Op::SessionOpen),
        8 => Just(Op::Commit),
        1 => Just(Op::Restart),
        2 => (0u64..40).prop_map(Op::Advance),
    ]
}

fn record() -> ClaimRecord {
    ClaimRecord {
        device: DeviceKey {
            domain: DomainName::new("acme").unwrap(),
            serial: Serial::new("1").unwrap(),
        },
        client: ClientKey {
            domain: DomainName::new("acme").unwrap(),
            client_id: ClientId::new("pos").unwrap(),
        },
        session_id: SessionId::from_random([1; 16]),
    }
}

fn limits() -> ReliableLimits {
    let relay = RelayLimits {
        offline_queue_bytes: 120,
        offline_queue_frames: 5,
        ..RelayLimits::default()
    };
    ReliableLimits::new(&relay, 160)
}

/// A payload that names its sender's message and has `len` bytes of filler.
fn payload(tag: &str, n: u64, len: usize) -> Bytes {
    let mut text = format!("{tag}{n}:");
    text.extend(std::iter::repeat_n('x', len));
    Bytes::from(text)
}

fn text(payload: Bytes) -> RelayedMessage {
    RelayedMessage {
        kind: MessageKind::Text,
        payload,
    }
}

/// The POS side: a client following §11.
#[derive(Default)]
struct Pos {
    /// The last device message processed, and what each one was.
    processed: Vec<(u64, Bytes)>,
    acked_to_relay: u64,
    /// POS messages not yet settled by the relay, in order.
    unsettled: VecDeque<(u64, Bytes)>,
    sent: u64,
    /// Resumed on the current session (may send data).
    live: bool,
    reported: BTreeSet<u64>,
    acked_by_relay: BTreeSet<u64>,
    payloads: BTreeMap<u64, Bytes>,
}

impl Pos {
    fn last_processed(&self) -> u64 {
        self.processed.last().map_or(0, |(n, _)| *n)
    }

    /// An ack (or `resumed`) sent when the relay's reports had reached `epoch` settles
    /// the messages up to `n`. None of them may be one reported before that ack was sent:
    /// the POS must hear a report before any ack that covers it.
    fn settle_upto(&mut self, n: u64, epoch: u64, reported_at: &BTreeMap<u64, u64>) {
        while self.unsettled.front().is_some_and(|(s, _)| *s <= n) {
            if let Some((s, _)) = self.unsettled.pop_front() {
                if let Some(at) = reported_at.get(&s) {
                    assert!(
                        *at > epoch,
                        "an ack covering message {s} arrived before its report"
                    );
                }
                self.acked_by_relay.insert(s);
            }
        }
    }

    /// What the POS sends in answer to one relay envelope, sent at report `epoch`.
    fn receive(
        &mut self,
        envelope: Envelope,
        epoch: u64,
        reported_at: &BTreeMap<u64, u64>,
    ) -> Vec<Envelope> {
        match envelope {
            Envelope::Resumed { seq } => {
                let m = seq.get();
                assert!(m <= self.sent, "resumed {m} is beyond what the POS sent");
                // Everything up to M is settled; send again everything after it.
                self.settle_upto(m, epoch, reported_at);
                self.live = true;
                self.unsettled
                    .iter()
                    .map(|(s, p)| Envelope::Data {
                        seq: Seq::new(*s),
                        message: text(p.clone()),
                    })
                    .collect()
            }
            Envelope::Ack { seq } => {
                assert!(seq.get() <= self.sent, "ack {seq} of a message never sent");
                self.settle_upto(seq.get(), epoch, reported_at);
                vec![]
            }
            Envelope::Undelivered { range } => {
                assert!(
                    range.to().get() <= self.sent,
                    "report {range} of unsent messages"
                );
                for n in range.from().get()..=range.to().get() {
                    self.reported.insert(n);
                }
                self.unsettled
                    .retain(|(s, _)| !range.contains(Seq::new(*s)));
                vec![]
            }
            Envelope::Data { seq, message } => {
                let n = seq.get();
                let last = self.last_processed();
                assert!(n <= last + 1, "device message {n} skips ahead of {last}");
                if n == last + 1 {
                    self.processed.push((n, message.payload));
                }
                vec![]
            }
            other => panic!("the relay sent {other:?}"),
        }
    }
}

struct World {
    claim: ReliableClaim,
    log: MemReliableLog,
    now: Instant,
    uncommitted: Vec<LogBatch>,
    next_conn: u64,

    device: Option<ConnId>,
    /// Transmits for the device's connection the io has not written yet.
    outbox: VecDeque<(Seq, RelayedMessage)>,
    written_unconfirmed: Option<Seq>,
    device_received: Vec<u64>,
    device_sent: u64,
    /// Device payloads by the number the relay durably gave them.
    durable: BTreeMap<u64, Bytes>,
    /// POS messages reported by the relay (durably), with the commit that did it.
    reported_at: BTreeMap<u64, u64>,
    commits: u64,

    pos: Pos,
    session: Option<ConnId>,
    to_relay: VecDeque<Bytes>,
    /// Relay → POS, each with the commit count when it was sent.
    to_pos: VecDeque<(Bytes, u64)>,
}

impl World {
    fn new() -> World {
        let mut w = World {
            claim: ReliableClaim::new(record(), limits()),
            log: MemReliableLog::new(),
            now: Instant::now(),
            uncommitted: Vec::new(),
            next_conn: 1,
            device: None,
            outbox: VecDeque::new(),
            written_unconfirmed: None,
            device_received: Vec::new(),
            device_sent: 0,
            durable: BTreeMap::new(),
            reported_at: BTreeMap::new(),
            commits: 0,
            pos: Pos::default(),
            session: None,
            to_relay: VecDeque::new(),
            to_pos: VecDeque::new(),
        };
        w.pump();
        w
    }

    fn conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn)
    }

    /// Drains the relay's outputs into the wires, the device outbox and the io's batches.
    fn pump(&mut self) {
        while let Some(t) = self.claim.poll_transmit() {
            match t {
                Transmit::Pos { conn, envelope } => {
                    if self.session == Some(conn) {
                        self.to_pos.push_back((envelope, self.commits));
                    }
                }
                Transmit::ClosePos { conn, code, reason } => {
                    assert_eq!(code, 4000, "a well-behaved POS was closed: {code} {reason}");
                    assert_ne!(self.session, Some(conn));
                }
                Transmit::Device { conn, seq, message } => {
                    if self.device == Some(conn) {
                        self.outbox.push_back((seq, message));
                    }
                }
            }
        }
        if let Some(batch) = self.claim.poll_log() {
            self.uncommitted.push(batch);
        }
        assert!(self.claim.poll_event().is_none(), "no claim ends here");
    }

    fn commit(&mut self) {
        self.pump();
        if self.uncommitted.is_empty() {
            return;
        }
        let batches = std::mem::take(&mut self.uncommitted);
        self.log.commit(&batches).unwrap();
        self.commits += 1;
        for record in batches.iter().flat_map(|b| &b.records) {
            if let LogRecord::PosReported { range, .. } = record {
                for n in range.from().get()..=range.to().get() {
                    self.reported_at.entry(n).or_insert(self.commits);
                }
            }
            if let LogRecord::DeviceHeld { seq, message } = record {
                // "A sequence number never names two different messages."
                if let Some(before) = self.durable.insert(seq.get(), message.payload.clone()) {
                    assert_eq!(before, message.payload, "number {seq} named two messages");
                }
            }
        }
        let ticket = batches.last().map(|b| b.ticket).unwrap();
        self.claim.handle_logged(ticket, self.now);
        self.pump();
    }

    fn confirm_writes(&mut self) {
        if let (Some(conn), Some(seq)) = (self.device, self.written_unconfirmed.take()) {
            self.claim.handle_device_written(conn, seq, self.now);
        }
    }

    fn break_session(&mut self) {
        if let Some(conn) = self.session.take() {
            self.claim.handle_session_closed(conn, self.now);
        }
        self.to_relay.clear();
        self.to_pos.clear();
        self.pos.live = false;
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::DeviceSend(len) => {
                let Some(conn) = self.device else { return };
                if self.claim.device_flow() == Flow::Paused && self.device_sent.is_multiple_of(2) {
                    return; // the io stopped reading (one message in two still overshoots)
                }
                self.device_sent += 1;
                let p = payload("d", self.device_sent, len);
                assert!(self
                    .claim
                    .handle_device_message(conn, text(p), self.now)
                    .is_some());
            }
            Op::DeviceWrite => {
                if let Some((seq, message)) = self.outbox.pop_front() {
                    // Written = the device has it (the socket's own losses are out of scope).
                    let n = seq.get();
                    let last = self.device_received.last().copied().unwrap_or(0);
                    assert!(
                        n > last,
                        "POS message {n} reached the device after {last}: twice or out of order"
                    );
                    assert_eq!(
                        message.payload, self.pos.payloads[&n],
                        "POS message {n} altered"
                    );
                    self.device_received.push(n);
                    self.written_unconfirmed = Some(seq);
                }
            }
            Op::ConfirmWrites => self.confirm_writes(),
            Op::DeviceDisconnect => {
                if let Some(conn) = self.device {
                    // The io reports completed writes before the close (its contract).
                    self.confirm_writes();
                    self.claim.handle_device_disconnected(conn, self.now);
                    self.device = None;
                    self.outbox.clear();
                }
            }
            Op::DeviceConnect => {
                if self.device.is_none() {
                    let conn = self.conn();
                    self.device = Some(conn);
                    self.claim.handle_device_connected(conn, self.now);
                }
            }
            Op::PosSend(len) => {
                self.pos.sent += 1;
                let n = self.pos.sent;
                let p = payload("p", n, len);
                self.pos.payloads.insert(n, p.clone());
                self.pos.unsettled.push_back((n, p.clone()));
                if self.pos.live {
                    self.send_to_relay(Envelope::Data {
                        seq: Seq::new(n),
                        message: text(p),
                    });
                }
            }
            Op::PosDuplicate(back) => {
                if self.pos.live && self.pos.sent > back {
                    let n = self.pos.sent - back;
                    let p = self.pos.payloads[&n].clone();
                    self.send_to_relay(Envelope::Data {
                        seq: Seq::new(n),
                        message: text(p),
                    });
                }
            }
            Op::PosAck => {
                let last = self.pos.last_processed();
                if self.pos.live && last > self.pos.acked_to_relay {
                    self.pos.acked_to_relay = last;
                    self.send_to_relay(Envelope::Ack {
                        seq: Seq::new(last),
                    });
                }
            }
            Op::ToRelay => {
                if let (Some(conn), Some(bytes)) = (self.session, self.to_relay.pop_front()) {
                    let r = self
                        .claim
                        .handle_pos_message(conn, MessageKind::Text, bytes, self.now);
                    assert_eq!(r, Ok(()), "a well-behaved POS was refused");
                }
            }
            Op::ToPos => {
                if let Some((bytes, epoch)) = self.to_pos.pop_front() {
                    let envelope = Envelope::parse(MessageKind::Text, bytes).unwrap();
                    for answer in self.pos.receive(envelope, epoch, &self.reported_at) {
                        self.send_to_relay(answer);
                    }
                }
            }
            Op::SessionBreak => self.break_session(),
            Op::SessionOpen => {
                if self.session.is_none() {
                    let conn = self.conn();
                    self.session = Some(conn);
                    self.claim.handle_session_opened(conn, self.now);
                    // A POS acks by resuming too: what it processed is settled for it.
                    self.pos.acked_to_relay = self.pos.last_processed();
                    self.send_to_relay(Envelope::Resume {
                        seq: Seq::new(self.pos.last_processed()),
                    });
                }
            }
            Op::Commit => self.commit(),
            Op::Restart => {
                // Nothing the io had not committed survives, nor its unconfirmed writes.
                self.uncommitted.clear();
                self.break_session();
                self.device = None;
                self.outbox.clear();
                self.written_unconfirmed = None;
                self.claim = match self.log.load().unwrap().pop() {
                    Some(snapshot) => ReliableClaim::restore(snapshot, limits(), self.now),
                    // Stopped before the claim itself was durable: nothing of it was acked
                    // or sent (all of that waits on later records), so it starts anew.
                    None => {
                        assert!(self.durable.is_empty() && self.pos.acked_by_relay.is_empty());
                        ReliableClaim::new(record(), limits())
                    }
                };
            }
            Op::Advance(secs) => {
                self.now += Duration::from_secs(secs);
                self.claim.handle_timeout(self.now);
            }
        }
        self.pump();
    }

    fn send_to_relay(&mut self, envelope: Envelope) {
        self.to_relay.push_back(envelope.encode());
    }

    /// Everything reconnects and runs until nothing moves.
    fn heal(&mut self) {
        self.apply(&Op::DeviceConnect);
        if self.session.is_none() {
            self.apply(&Op::SessionOpen);
        }
        for round in 0.. {
            assert!(round < 10_000, "no quiescence");
            let before = (
                self.to_relay.len(),
                self.to_pos.len(),
                self.outbox.len(),
                self.uncommitted.len(),
                self.written_unconfirmed,
                self.pos.last_processed() > self.pos.acked_to_relay,
            );
            if before == (0, 0, 0, 0, None, false) && !self.claim.has_log() {
                break;
            }
            for op in [
                Op::Commit,
                Op::ToRelay,
                Op::ToPos,
                Op::DeviceWrite,
                Op::ConfirmWrites,
                Op::PosAck,
            ] {
                self.apply(&op);
            }
        }
    }

    fn check_final(&self) {
        // Device → POS: every durable number processed exactly once, in order, verbatim.
        let processed: Vec<u64> = self.pos.processed.iter().map(|(n, _)| *n).collect();
        let durable: Vec<u64> = self.durable.keys().copied().collect();
        assert_eq!(
            processed, durable,
            "the POS processed exactly the durable messages"
        );
        for (n, p) in &self.pos.processed {
            assert_eq!(&self.durable[n], p, "device message {n} altered");
        }
        // POS → device: everything settled; each message delivered or reported.
        assert!(
            self.pos.unsettled.is_empty(),
            "unsettled after healing: {:?}",
            self.pos
                .unsettled
                .iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        );
        let received: BTreeSet<u64> = self.device_received.iter().copied().collect();
        for n in 1..=self.pos.sent {
            assert!(
                received.contains(&n) || self.pos.reported.contains(&n),
                "POS message {n} neither reached the device nor was reported"
            );
            if !self.pos.reported.contains(&n) {
                assert!(self.pos.acked_by_relay.contains(&n) || received.contains(&n));
            }
        }
        assert_eq!(self.claim.held_bytes(), 0, "everything processed was acked");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn nothing_is_lost_duplicated_or_reordered(ops in proptest::collection::vec(op(), 1..250)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op);
        }
        w.heal();
        w.check_final();
    }
}

/// A schedule that exercises every path at least once, checked without randomness.
#[test]
fn a_long_fixed_schedule() {
    let mut w = World::new();
    let ops = [
        Op::SessionOpen,
        Op::ToRelay,
        Op::Commit,
        Op::ToPos,
        Op::PosSend(5),
        Op::PosSend(200),
        Op::PosSend(3),
        Op::ToRelay,
        Op::ToRelay,
        Op::ToRelay,
        Op::Commit,
        Op::Advance(31),
        Op::DeviceConnect,
        Op::DeviceSend(10),
        Op::Commit,
        Op::DeviceWrite,
        Op::Restart,
        Op::Commit,
        Op::DeviceConnect,
        Op::SessionOpen,
        Op::ToRelay,
        Op::Commit,
        Op::ToPos,
        Op::ToPos,
        Op::ToPos,
        Op::PosDuplicate(1),
        Op::ToRelay,
        Op::PosSend(4),
        Op::ToRelay,
        Op::Commit,
        Op::DeviceWrite,
        Op::ConfirmWrites,
        Op::Commit,
        Op::ToPos,
    ];
    for op in &ops {
        w.apply(op);
    }
    w.heal();
    w.check_final();
    assert!(!w.pos.reported.is_empty(), "{:?}", w.pos.reported);
    assert!(!w.device_received.is_empty());
}
