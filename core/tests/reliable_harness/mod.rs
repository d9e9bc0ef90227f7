//! A relay around one `ReliableClaim`, for tests: its log in memory, its outputs collected.
//! Commits happen when the test says (`commit`) or after every step (`auto_commit`).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use posrelay_core::ids::{ClientId, ClientKey, DeviceKey, DomainName, Serial, SessionId};
use posrelay_core::relay::{ConnId, MessageKind, RelayedMessage};
use posrelay_core::reliable::{
    ClaimRecord, Envelope, LogBatch, MemReliableLog, ReliableClaim, ReliableError, ReliableEvent,
    ReliableLimits, ReliableLog, Seq, SeqRange, Transmit,
};

pub fn record() -> ClaimRecord {
    ClaimRecord {
        device: DeviceKey {
            domain: DomainName::new("acme").unwrap(),
            serial: Serial::new("12345678").unwrap(),
        },
        client: ClientKey {
            domain: DomainName::new("acme").unwrap(),
            client_id: ClientId::new("pos").unwrap(),
        },
        session_id: SessionId::from_random([3; 16]),
    }
}

pub fn text(t: &str) -> RelayedMessage {
    RelayedMessage {
        kind: MessageKind::Text,
        payload: Bytes::copy_from_slice(t.as_bytes()),
    }
}

pub fn s(n: u64) -> Seq {
    Seq::new(n)
}

pub fn range(a: u64, b: u64) -> SeqRange {
    SeqRange::new(s(a), s(b)).unwrap()
}

/// What the relay did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Pos(ConnId, Envelope),
    Close(ConnId, u16),
    Device(ConnId, Seq, RelayedMessage),
}

pub struct Relay {
    pub claim: ReliableClaim,
    pub log: Arc<MemReliableLog>,
    pub limits: ReliableLimits,
    pub now: Instant,
    pub auto_commit: bool,
    /// Batches taken from the claim, not yet committed.
    pub uncommitted: Vec<LogBatch>,
    pub out: Vec<Out>,
    pub events: Vec<ReliableEvent>,
}

impl Relay {
    pub fn new(limits: ReliableLimits) -> Relay {
        let mut relay = Relay {
            claim: ReliableClaim::new(record(), limits),
            log: Arc::new(MemReliableLog::new()),
            limits,
            now: Instant::now(),
            auto_commit: true,
            uncommitted: Vec::new(),
            out: Vec::new(),
            events: Vec::new(),
        };
        relay.step();
        relay
    }

    /// Takes the claim's log and transmits; commits when `auto_commit`.
    pub fn step(&mut self) {
        loop {
            let mut progress = false;
            while let Some(t) = self.claim.poll_transmit() {
                progress = true;
                self.out.push(match t {
                    Transmit::Pos { conn, envelope } => Out::Pos(
                        conn,
                        Envelope::parse(MessageKind::Text, envelope).expect("relay envelope"),
                    ),
                    Transmit::ClosePos { conn, code, .. } => Out::Close(conn, code),
                    Transmit::Device { conn, seq, message } => Out::Device(conn, seq, message),
                });
            }
            while let Some(e) = self.claim.poll_event() {
                self.events.push(e);
            }
            if let Some(batch) = self.claim.poll_log() {
                progress = true;
                self.uncommitted.push(batch);
            }
            if self.auto_commit && !self.uncommitted.is_empty() {
                self.commit();
                progress = true;
            }
            if !progress {
                return;
            }
        }
    }

    /// Commits every batch taken so far.
    pub fn commit(&mut self) {
        if let Some(batch) = self.claim.poll_log() {
            self.uncommitted.push(batch);
        }
        if self.uncommitted.is_empty() {
            return;
        }
        let batches = std::mem::take(&mut self.uncommitted);
        self.log.commit(&batches).expect("commit");
        let ticket = batches.last().map(|b| b.ticket).expect("a batch");
        self.claim.handle_logged(ticket, self.now);
        let auto = self.auto_commit;
        self.auto_commit = false;
        self.step();
        self.auto_commit = auto;
    }

    /// A restart: what was not committed is lost, the claim is rebuilt from the log.
    pub fn restart(&mut self) {
        self.uncommitted.clear();
        let mut snapshots = self.log.load().expect("load");
        assert!(snapshots.len() <= 1);
        let snapshot = snapshots.pop().expect("the claim survives");
        self.claim = ReliableClaim::restore(snapshot, self.limits, self.now);
        self.step();
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.claim.handle_timeout(self.now);
        self.step();
    }

    pub fn take(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    pub fn open(&mut self, conn: u64) {
        self.claim.handle_session_opened(ConnId(conn), self.now);
        self.step();
    }

    pub fn pos(&mut self, conn: u64, json: &str) -> Result<(), ReliableError> {
        let r = self.claim.handle_pos_message(
            ConnId(conn),
            MessageKind::Text,
            Bytes::copy_from_slice(json.as_bytes()),
            self.now,
        );
        self.step();
        r
    }

    pub fn pos_data(&mut self, conn: u64, seq: u64, t: &str) -> Result<(), ReliableError> {
        let e = Envelope::Data {
            seq: s(seq),
            message: text(t),
        }
        .encode();
        self.pos(conn, std::str::from_utf8(&e).unwrap())
    }

    pub fn device_connect(&mut self, conn: u64) {
        self.claim.handle_device_connected(ConnId(conn), self.now);
        self.step();
    }

    pub fn device_disconnect(&mut self, conn: u64) {
        self.claim
            .handle_device_disconnected(ConnId(conn), self.now);
        self.step();
    }

    pub fn device_says(&mut self, conn: u64, t: &str) -> Option<Seq> {
        let seq = self
            .claim
            .handle_device_message(ConnId(conn), text(t), self.now);
        self.step();
        seq
    }

    pub fn written(&mut self, conn: u64, seq: u64) {
        self.claim
            .handle_device_written(ConnId(conn), s(seq), self.now);
        self.step();
    }
}

pub fn resumed(conn: u64, n: u64) -> Out {
    Out::Pos(ConnId(conn), Envelope::Resumed { seq: s(n) })
}

pub fn ack(conn: u64, n: u64) -> Out {
    Out::Pos(ConnId(conn), Envelope::Ack { seq: s(n) })
}

pub fn data(conn: u64, n: u64, t: &str) -> Out {
    Out::Pos(
        ConnId(conn),
        Envelope::Data {
            seq: s(n),
            message: text(t),
        },
    )
}

pub fn undelivered(conn: u64, a: u64, b: u64) -> Out {
    Out::Pos(ConnId(conn), Envelope::Undelivered { range: range(a, b) })
}

pub fn to_device(conn: u64, n: u64, t: &str) -> Out {
    Out::Device(ConnId(conn), s(n), text(t))
}

pub fn closed(conn: u64, code: u16) -> Out {
    Out::Close(ConnId(conn), code)
}

pub const SECOND: Duration = Duration::from_secs(1);
