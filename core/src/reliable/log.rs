//! What a reliable claim makes durable, and what comes back after a restart (PROTOCOL.md
//! §11: "Held messages, the sequence numbers and the claim itself survive a relay restart").
//!
//! [`super::ReliableClaim`] never writes: it queues [`LogRecord`]s, the io layer takes them
//! as a [`LogBatch`] ([`super::ReliableClaim::poll_log`]), commits it through a
//! [`ReliableLog`] (off the shard, it blocks on fsync) and reports the batch's
//! [`LogTicket`] back ([`super::ReliableClaim::handle_logged`]). Whatever waits on a record
//! (a device message going to the POS, a POS message going to the device, an `ack`) waits
//! until then. After a restart, [`ReliableLog::load`] gives one [`ClaimSnapshot`] per claim
//! and [`super::ReliableClaim::restore`] rebuilds the state machine from it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::ids::DeviceKey;
use crate::relay::RelayedMessage;
use crate::store::StoreError;

use super::claim::ClaimRecord;
use super::seq::{Seq, SeqRange};

/// Orders a claim's batches: the io reports the ticket of the last batch committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogTicket(pub(crate) u64);

/// One change to a claim's durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    /// A reliable claim begins: replaces anything the log held for its device.
    Claim(ClaimRecord),
    /// A POS has resumed this claim at least once (a later `resume` with a `seq` above 0
    /// then names this claim's numbers, not an older claim's).
    Resumed,
    /// A device message, held with its number until the POS acknowledges it.
    DeviceHeld {
        /// Its number.
        seq: Seq,
        /// The message, verbatim.
        message: RelayedMessage,
    },
    /// The POS processed every device message up to `upto`: they are no longer held.
    DeviceAcked {
        /// The POS's cumulative ack.
        upto: Seq,
    },
    /// A POS message queued for the device (§6), safe from here on.
    PosQueued {
        /// Its number.
        seq: Seq,
        /// The message, verbatim.
        message: RelayedMessage,
    },
    /// The POS messages up to `upto` are about to be written to the device's socket.
    /// Written before the socket write, so that after a crash no message is written twice:
    /// those handed but not [`LogRecord::PosDone`] are reported instead.
    PosHanding {
        /// The last message handed.
        upto: Seq,
    },
    /// Every POS message up to `upto` that was handed to the device is settled (written,
    /// or reported in a [`LogRecord::PosReported`]); queued ones up to it are gone.
    PosDone {
        /// The last message settled.
        upto: Seq,
    },
    /// POS messages that will not reach the device; kept until the POS has surely read the
    /// report. Queued ones in the range are gone.
    PosReported {
        /// Their numbers.
        range: SeqRange,
        /// Their payload bytes (for a §4 report if the claim ends first).
        bytes: u64,
    },
    /// The POS has read the report of `range`.
    ReportConfirmed {
        /// The report's range, as recorded.
        range: SeqRange,
    },
    /// The claim ended (released, lost, device disabled): everything of it goes.
    ClaimEnded,
}

/// One claim's records, in order, and the ticket to report once they are durable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "commit the batch, then report its ticket, or what waits on it never moves"]
pub struct LogBatch {
    /// The claim's device (one reliable claim per device).
    pub claim: DeviceKey,
    /// What to apply, in order.
    pub records: Vec<LogRecord>,
    /// Give this to [`super::ReliableClaim::handle_logged`] once committed.
    pub ticket: LogTicket,
}

/// A claim's durable state, as [`ReliableLog::load`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimSnapshot {
    /// Who holds the claim on which device, and its session id.
    pub record: ClaimRecord,
    /// Whether a POS has resumed it at least once.
    pub resumed: bool,
    /// The POS's cumulative ack of device messages.
    pub device_acked: Seq,
    /// Device messages held, by number, oldest first (all after `device_acked`).
    pub held: Vec<(Seq, RelayedMessage)>,
    /// The last POS message handed to the device's socket.
    pub pos_handed: Seq,
    /// The last POS message settled after being handed.
    pub pos_done: Seq,
    /// POS messages queued for the device, by number, oldest first.
    pub queued: Vec<(Seq, RelayedMessage)>,
    /// Reports not yet surely read: (range, payload bytes), by first number.
    pub reports: Vec<(SeqRange, u64)>,
}

impl ClaimSnapshot {
    /// A claim that has nothing yet.
    pub fn new(record: ClaimRecord) -> ClaimSnapshot {
        ClaimSnapshot {
            record,
            resumed: false,
            device_acked: Seq::ZERO,
            held: Vec::new(),
            pos_handed: Seq::ZERO,
            pos_done: Seq::ZERO,
            queued: Vec::new(),
            reports: Vec::new(),
        }
    }

    /// Applies one record (not `Claim` nor `ClaimEnded`, which replace the snapshot). The
    /// reference semantics every [`ReliableLog`] follows.
    pub fn apply(&mut self, record: &LogRecord) {
        match record {
            LogRecord::Claim(record) => *self = ClaimSnapshot::new(record.clone()),
            LogRecord::ClaimEnded => {}
            LogRecord::Resumed => self.resumed = true,
            LogRecord::DeviceHeld { seq, message } => {
                self.held.retain(|(s, _)| s != seq);
                self.held.push((*seq, message.clone()));
                self.held.sort_by_key(|(s, _)| *s);
            }
            LogRecord::DeviceAcked { upto } => {
                self.device_acked = self.device_acked.max(*upto);
                self.held.retain(|(s, _)| s > upto);
            }
            LogRecord::PosQueued { seq, message } => {
                self.queued.retain(|(s, _)| s != seq);
                self.queued.push((*seq, message.clone()));
                self.queued.sort_by_key(|(s, _)| *s);
            }
            LogRecord::PosHanding { upto } => self.pos_handed = self.pos_handed.max(*upto),
            LogRecord::PosDone { upto } => {
                self.pos_done = self.pos_done.max(*upto);
                self.queued.retain(|(s, _)| s > upto);
            }
            LogRecord::PosReported { range, bytes } => {
                self.queued.retain(|(s, _)| !range.contains(*s));
                self.reports.retain(|(r, _)| r.from() != range.from());
                self.reports.push((*range, *bytes));
                self.reports.sort_by_key(|(r, _)| r.from());
            }
            LogRecord::ReportConfirmed { range } => {
                self.reports.retain(|(r, _)| r.from() != range.from());
            }
        }
    }

    /// The snapshot as records that rebuild exactly it when applied in order to nothing
    /// ([`ClaimSnapshot::replay`] from `None`): `Claim` first, then `Resumed` (if
    /// resumed), the watermarks `DeviceAcked`, `PosHanding`, `PosDone` (each only when
    /// above 0), a `PosReported` per report, a `DeviceHeld` per held message and a
    /// `PosQueued` per queued one. Messages come after the watermarks and reports, so
    /// [`ClaimSnapshot::apply`]'s pruning (acks drop held messages, `PosDone` and reports
    /// drop queued ones) never removes one of them. Exact for a snapshot whose lists are
    /// ordered by strictly increasing number (as `apply` and every [`ReliableLog::load`]
    /// keep them).
    pub fn to_records(&self) -> Vec<LogRecord> {
        let mut records =
            Vec::with_capacity(5 + self.reports.len() + self.held.len() + self.queued.len());
        records.push(LogRecord::Claim(self.record.clone()));
        if self.resumed {
            records.push(LogRecord::Resumed);
        }
        if self.device_acked > Seq::ZERO {
            records.push(LogRecord::DeviceAcked {
                upto: self.device_acked,
            });
        }
        if self.pos_handed > Seq::ZERO {
            records.push(LogRecord::PosHanding {
                upto: self.pos_handed,
            });
        }
        if self.pos_done > Seq::ZERO {
            records.push(LogRecord::PosDone {
                upto: self.pos_done,
            });
        }
        for (range, bytes) in &self.reports {
            records.push(LogRecord::PosReported {
                range: *range,
                bytes: *bytes,
            });
        }
        for (seq, message) in &self.held {
            records.push(LogRecord::DeviceHeld {
                seq: *seq,
                message: message.clone(),
            });
        }
        for (seq, message) in &self.queued {
            records.push(LogRecord::PosQueued {
                seq: *seq,
                message: message.clone(),
            });
        }
        records
    }

    /// One device's state after `records`, in order, from `state`: `Claim` starts a fresh
    /// snapshot, `ClaimEnded` leaves none, any other record applies to the snapshot there
    /// is ([`ClaimSnapshot::apply`]) and is ignored when there is none (a log that lost
    /// the claim's start keeps nothing of it rather than failing).
    pub fn replay(state: Option<ClaimSnapshot>, records: &[LogRecord]) -> Option<ClaimSnapshot> {
        records
            .iter()
            .fold(state, |state, record| match (state, record) {
                (_, LogRecord::Claim(claim)) => Some(ClaimSnapshot::new(claim.clone())),
                (_, LogRecord::ClaimEnded) => None,
                (Some(mut snapshot), record) => {
                    snapshot.apply(record);
                    Some(snapshot)
                }
                (None, _) => None,
            })
    }
}

/// Where reliable claims are kept durably: in memory for tests ([`MemReliableLog`]), in
/// `posrelay.redb` on one node ([`crate::store::RedbStore`]), in JetStream in a cluster.
pub trait ReliableLog {
    /// Applies every batch, in order, all or nothing, and durably: once it returns `Ok`,
    /// all of it survives a crash or `kill -9`; on `Err`, none of it was applied. A batch
    /// whose first record is not [`LogRecord::Claim`] needs its claim in the log already.
    fn commit(&self, batches: &[LogBatch]) -> Result<(), StoreError>;

    /// [`Self::commit`] for a log that several nodes share (§12): the devices whose
    /// records this node may no longer write, because another node took them over, are
    /// returned; their batches are not applied (the device's new node carries the claim
    /// on from what was durable before), every other batch is, as by [`Self::commit`].
    /// A log of one node owns every device: none.
    fn commit_owned(&self, batches: &[LogBatch]) -> Result<Vec<DeviceKey>, StoreError> {
        self.commit(batches).map(|()| Vec::new())
    }

    /// Every reliable claim in the log, ordered by device.
    fn load(&self) -> Result<Vec<ClaimSnapshot>, StoreError>;

    /// Persists a reliable claim (replacing anything its device had).
    fn put_claim(&self, record: &ClaimRecord) -> Result<(), StoreError> {
        self.commit_one(&record.device, LogRecord::Claim(record.clone()))
    }

    /// Holds a device message with its number.
    fn append_device(
        &self,
        claim: &DeviceKey,
        seq: Seq,
        message: &RelayedMessage,
    ) -> Result<(), StoreError> {
        let message = message.clone();
        self.commit_one(claim, LogRecord::DeviceHeld { seq, message })
    }

    /// Drops the device messages up to `upto`: the POS acknowledged them.
    fn truncate_device(&self, claim: &DeviceKey, upto: Seq) -> Result<(), StoreError> {
        self.commit_one(claim, LogRecord::DeviceAcked { upto })
    }

    /// Queues a POS message for the device.
    fn queue_to_device(
        &self,
        claim: &DeviceKey,
        seq: Seq,
        message: &RelayedMessage,
    ) -> Result<(), StoreError> {
        let message = message.clone();
        self.commit_one(claim, LogRecord::PosQueued { seq, message })
    }

    /// Records the POS messages up to `upto` as settled once handed to the device.
    fn record_pos_done(&self, claim: &DeviceKey, upto: Seq) -> Result<(), StoreError> {
        self.commit_one(claim, LogRecord::PosDone { upto })
    }

    /// Commits one record for one claim.
    fn commit_one(&self, claim: &DeviceKey, record: LogRecord) -> Result<(), StoreError> {
        self.commit(&[LogBatch {
            claim: claim.clone(),
            records: vec![record],
            ticket: LogTicket::default(),
        }])
    }
}

impl<T: ReliableLog + ?Sized> ReliableLog for &T {
    fn commit(&self, batches: &[LogBatch]) -> Result<(), StoreError> {
        (**self).commit(batches)
    }
    fn commit_owned(&self, batches: &[LogBatch]) -> Result<Vec<DeviceKey>, StoreError> {
        (**self).commit_owned(batches)
    }
    fn load(&self) -> Result<Vec<ClaimSnapshot>, StoreError> {
        (**self).load()
    }
}

impl<T: ReliableLog + ?Sized> ReliableLog for std::sync::Arc<T> {
    fn commit(&self, batches: &[LogBatch]) -> Result<(), StoreError> {
        (**self).commit(batches)
    }
    fn commit_owned(&self, batches: &[LogBatch]) -> Result<Vec<DeviceKey>, StoreError> {
        (**self).commit_owned(batches)
    }
    fn load(&self) -> Result<Vec<ClaimSnapshot>, StoreError> {
        (**self).load()
    }
}

/// The error for records of a claim the log does not hold (an io-layer bug).
pub(crate) fn unknown_claim(claim: &DeviceKey) -> StoreError {
    StoreError::Storage {
        reason: format!(
            "reliable claim {}/{} is not in the log: its first record must be Claim",
            claim.domain, claim.serial
        ),
    }
}

/// A [`ReliableLog`] in memory: for tests, and the reference for the durable ones.
#[derive(Debug, Default)]
pub struct MemReliableLog {
    claims: Mutex<BTreeMap<DeviceKey, ClaimSnapshot>>,
}

impl MemReliableLog {
    /// An empty log.
    pub fn new() -> MemReliableLog {
        MemReliableLog::default()
    }
}

impl ReliableLog for MemReliableLog {
    fn commit(&self, batches: &[LogBatch]) -> Result<(), StoreError> {
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        // All or nothing: apply to a copy of what the batches touch, then swap it in.
        let mut touched: BTreeMap<DeviceKey, Option<ClaimSnapshot>> = BTreeMap::new();
        for batch in batches {
            let mut current = match touched.remove(&batch.claim) {
                Some(state) => state,
                None => claims.get(&batch.claim).cloned(),
            };
            for record in &batch.records {
                current = match (current, record) {
                    (_, LogRecord::Claim(r)) => Some(ClaimSnapshot::new(r.clone())),
                    (_, LogRecord::ClaimEnded) => None,
                    (Some(mut snapshot), record) => {
                        snapshot.apply(record);
                        Some(snapshot)
                    }
                    (None, _) => return Err(unknown_claim(&batch.claim)),
                };
            }
            touched.insert(batch.claim.clone(), current);
        }
        for (claim, state) in touched {
            match state {
                Some(snapshot) => claims.insert(claim, snapshot),
                None => claims.remove(&claim),
            };
        }
        Ok(())
    }

    fn load(&self) -> Result<Vec<ClaimSnapshot>, StoreError> {
        let claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        Ok(claims.values().cloned().collect())
    }
}

/// The behaviour every [`ReliableLog`] must show, run against each implementation.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use crate::ids::{ClientId, ClientKey, DomainName, Serial, SessionId};
    use crate::relay::MessageKind;
    use bytes::Bytes;

    pub(crate) fn device(serial: &str) -> DeviceKey {
        DeviceKey {
            domain: DomainName::new("acme").unwrap(),
            serial: Serial::new(serial).unwrap(),
        }
    }

    pub(crate) fn record(serial: &str, client: &str) -> ClaimRecord {
        ClaimRecord {
            device: device(serial),
            client: ClientKey {
                domain: DomainName::new("acme").unwrap(),
                client_id: ClientId::new(client).unwrap(),
            },
            session_id: SessionId::from_random([7; 16]),
        }
    }

    pub(crate) fn text(t: &str) -> RelayedMessage {
        RelayedMessage {
            kind: MessageKind::Text,
            payload: Bytes::copy_from_slice(t.as_bytes()),
        }
    }

    pub(crate) fn binary(b: &[u8]) -> RelayedMessage {
        RelayedMessage {
            kind: MessageKind::Binary,
            payload: Bytes::copy_from_slice(b),
        }
    }

    fn s(n: u64) -> Seq {
        Seq::new(n)
    }

    fn range(a: u64, b: u64) -> SeqRange {
        SeqRange::new(s(a), s(b)).unwrap()
    }

    fn batch(serial: &str, records: Vec<LogRecord>) -> LogBatch {
        LogBatch {
            claim: device(serial),
            records,
            ticket: LogTicket::default(),
        }
    }

    /// Every rule of the trait, in one pass over an empty log. `reopen` gives the same log
    /// as a restart would (the same value for an in-memory log).
    pub(crate) fn check<L: ReliableLog>(log: &L, reopen: &dyn Fn() -> L) {
        assert_eq!(log.load().unwrap(), vec![]);
        // Records for a claim the log does not hold are refused, and change nothing.
        let err = log
            .append_device(&device("1"), s(1), &text("x"))
            .unwrap_err();
        assert_eq!(err.status(), 500);
        assert!(err.to_string().contains("acme/1"), "{err}");

        let a = record("1", "pos-a");
        log.put_claim(&a).unwrap();
        log.append_device(&a.device, s(1), &text("one")).unwrap();
        log.append_device(&a.device, s(2), &binary(&[0, 255]))
            .unwrap();
        log.append_device(&a.device, s(3), &text("")).unwrap();
        log.truncate_device(&a.device, s(1)).unwrap();
        log.queue_to_device(&a.device, s(1), &text("req1")).unwrap();
        log.queue_to_device(&a.device, s(2), &binary(b"req2"))
            .unwrap();
        log.queue_to_device(&a.device, s(3), &text("req3")).unwrap();
        log.queue_to_device(&a.device, s(4), &text("req4")).unwrap();
        log.commit(&[batch(
            "1",
            vec![
                LogRecord::PosHanding { upto: s(2) },
                LogRecord::PosDone { upto: s(1) },
                LogRecord::PosReported {
                    range: range(3, 3),
                    bytes: 4,
                },
                LogRecord::Resumed,
            ],
        )])
        .unwrap();

        let mut want = ClaimSnapshot::new(a.clone());
        want.resumed = true;
        want.device_acked = s(1);
        want.held = vec![(s(2), binary(&[0, 255])), (s(3), text(""))];
        want.pos_handed = s(2);
        want.pos_done = s(1);
        want.queued = vec![(s(2), binary(b"req2")), (s(4), text("req4"))];
        want.reports = vec![(range(3, 3), 4)];
        assert_eq!(log.load().unwrap(), vec![want.clone()]);
        let log = reopen();
        assert_eq!(log.load().unwrap(), vec![want.clone()], "survives a reopen");

        // A failing batch among several applies none of them.
        let b = record("2", "pos-b");
        let err = log
            .commit(&[
                batch("2", vec![LogRecord::Claim(b.clone())]),
                batch("1", vec![LogRecord::DeviceAcked { upto: s(3) }]),
                batch("3", vec![LogRecord::PosDone { upto: s(1) }]),
            ])
            .unwrap_err();
        assert_eq!(err.status(), 500);
        assert_eq!(log.load().unwrap(), vec![want.clone()]);

        // Several claims in one commit; acks, confirmations and watermarks never go back.
        log.commit(&[
            batch("2", vec![LogRecord::Claim(b.clone())]),
            batch(
                "1",
                vec![
                    LogRecord::DeviceAcked { upto: s(3) },
                    LogRecord::DeviceAcked { upto: s(2) },
                    LogRecord::PosDone { upto: s(2) },
                    LogRecord::PosHanding { upto: s(1) },
                    LogRecord::ReportConfirmed { range: range(3, 3) },
                    LogRecord::PosReported {
                        range: range(4, 5),
                        bytes: 9,
                    },
                ],
            ),
            batch(
                "2",
                vec![LogRecord::DeviceHeld {
                    seq: s(1),
                    message: text("b1"),
                }],
            ),
        ])
        .unwrap();
        want.device_acked = s(3);
        want.held = vec![];
        want.pos_done = s(2);
        want.queued = vec![];
        want.reports = vec![(range(4, 5), 9)];
        let mut want_b = ClaimSnapshot::new(b.clone());
        want_b.held = vec![(s(1), text("b1"))];
        assert_eq!(log.load().unwrap(), vec![want.clone(), want_b.clone()]);

        // A new claim on a device replaces everything the old one left.
        let a2 = record("1", "pos-c");
        log.put_claim(&a2).unwrap();
        assert_eq!(
            log.load().unwrap(),
            vec![ClaimSnapshot::new(a2.clone()), want_b.clone()]
        );
        // An ended claim is gone; its device can be claimed anew.
        log.commit(&[batch("1", vec![LogRecord::ClaimEnded])])
            .unwrap();
        assert_eq!(log.load().unwrap(), vec![want_b.clone()]);
        let log = reopen();
        assert_eq!(log.load().unwrap(), vec![want_b]);
        log.commit(&[batch("2", vec![LogRecord::ClaimEnded])])
            .unwrap();
        assert_eq!(log.load().unwrap(), vec![]);

        // Payloads are verbatim, large ones included.
        let big = binary(&(0..=255u8).cycle().take(300_000).collect::<Vec<_>>());
        let c = record("3", "pos-a");
        log.put_claim(&c).unwrap();
        log.append_device(&c.device, s(u64::MAX - 1), &big).unwrap();
        log.queue_to_device(&c.device, s(1), &text("é\u{0}\""))
            .unwrap();
        let got = log.load().unwrap();
        assert_eq!(got[0].held, vec![(s(u64::MAX - 1), big)]);
        assert_eq!(got[0].queued, vec![(s(1), text("é\u{0}\""))]);
    }

    #[test]
    fn the_in_memory_log_follows_the_rules() {
        let log = std::sync::Arc::new(MemReliableLog::new());
        let same = log.clone();
        check(&log, &move || same.clone());
    }
}
