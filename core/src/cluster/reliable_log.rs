//! Reliable claims in the cluster (PROTOCOL.md §11: "Held messages, the sequence numbers
//! and the claim itself survive … the loss of a node in a cluster"): the
//! [`ReliableLog`] of a cluster node, on JetStream.
//!
//! - Where: `posrelay.tsn.<domain>.<serial>.rel` in `POSRELAY_OWNERSHIP`, beside the tsn's
//!   ownership record, so that every write is fenced on the owner's epoch
//!   (`Nats-Expected-Last-Subject-Sequence` on the ownership subject, as
//!   [`super::ownership::append_fenced`]): a node that lost the device writes nothing,
//!   whatever it believes, and the next owner reads everything the last one wrote.
//! - What: each commit writes, per claim, either its new records (appended) or, when that
//!   is cheaper, the claim's whole state as records with `Nats-Rollup: sub`, which drops
//!   everything before it (a compaction). A claim acknowledged up to date is a few dozen
//!   bytes, so in the common case a claim's subject holds one message. Records are
//!   [`crate::reliable::record_codec`]'s bytes; a write larger than [`PART`] goes as parts
//!   (under nats-server's `max_payload`), and a reader skips a set whose parts are not all
//!   there (a node that died between two of them).
//! - When: the node's shards commit here off the shard (their blocking pool waits); the
//!   publishes of one commit are pipelined, so a commit costs one round trip to the
//!   stream's quorum, whatever it holds.
//! - Who reads: only the node a device arrives at, when it takes the tsn over from another
//!   owner ([`load_device`]); its shard restores the claim from that. A node starts with
//!   nothing ([`ReliableLog::load`] gives the claims it writes), since a new incarnation
//!   owns no tsn yet.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_nats::HeaderMap;
use bytes::{Bytes, BytesMut};

use async_nats::jetstream::stream::Stream;

use super::ownership::{current_owner, fenced_headers, last_on_subject, publish, OwnershipStreams};
use super::{BridgeHandle, ClusterError, Nats};
use crate::ids::DeviceKey;
use crate::ownership::{ownership_subject, tsn_subject, Epoch, OwnershipRecord};
use crate::reliable::log::unknown_claim;
use crate::reliable::record_codec::{decode_records, encode_records};
use crate::reliable::{ClaimSnapshot, LogBatch, LogRecord, ReliableLog};
use crate::store::StoreError;

/// `posrelay.tsn.<domain>.<serial>.rel`: a reliable claim's records.
pub const RELIABLE_KIND: &str = "rel";

/// The largest message written: parts of a larger write stay well under nats-server's
/// default `max_payload` (1 MiB), headers included.
pub const PART: usize = 256 * 1024;

/// A claim whose whole state is at most this big is written whole (rolled up) on every
/// commit: one message per claim on the subject.
const ROLLUP_ALWAYS: usize = 16 * 1024;

/// Header: the write a part belongs to (unique per node and incarnation).
const BATCH_HEADER: &str = "Posrelay-Write";
/// Header: `<index>/<count>` of a part in its write.
const PART_HEADER: &str = "Posrelay-Part";

/// What the log keeps of one claim this node owns.
#[derive(Debug, Clone)]
struct Kept {
    snapshot: ClaimSnapshot,
    /// Bytes on the subject since the last rollup (what a rollup would drop).
    since_rollup: usize,
}

#[derive(Debug, Default)]
struct State {
    /// The claims this node writes, as the stream has them.
    claims: BTreeMap<DeviceKey, Kept>,
    /// The epoch this node owns each claim's tsn at (from its arrival, or read at the
    /// claim's first write): kept for live claims only.
    epochs: HashMap<DeviceKey, Epoch>,
    /// This node and incarnation, as ownership records name it.
    me: Option<OwnershipRecord>,
}

/// What the log did so far (Prometheus counters).
#[derive(Debug, Default)]
pub struct ReliableWrites {
    /// Claim writes stored (appends and rollups).
    pub written: AtomicU64,
    /// Of those, rollups.
    pub rolled_up: AtomicU64,
    /// Claim writes the stream refused because another node owns the device now.
    pub fenced: AtomicU64,
    /// Commits that failed (NATS unreachable, timeout); the shard retries them.
    pub failed: AtomicU64,
}

/// The cluster's [`ReliableLog`]: see the module's documentation.
#[derive(Debug)]
pub struct JetStreamReliableLog {
    bridge: BridgeHandle,
    streams: OwnershipStreams,
    state: Mutex<State>,
    next_write: AtomicU64,
    /// What it did so far.
    pub counts: std::sync::Arc<ReliableWrites>,
}

/// One claim's write in a commit.
struct Write {
    device: DeviceKey,
    /// `None`: read the owner first (the claim's first write since its device arrived).
    epoch: Option<Epoch>,
    /// The encoded records.
    bytes: Bytes,
    /// A rollup: the claim's whole state (or its end), dropping what came before.
    rollup: bool,
    /// The claim after the write (`None`: ended).
    after: Option<ClaimSnapshot>,
}

/// How one claim's write went.
enum Outcome {
    /// At this epoch.
    Stored(Epoch),
    Fenced,
}

impl JetStreamReliableLog {
    /// A log on `streams` (the ownership stream), writing through `bridge`.
    pub fn new(bridge: BridgeHandle, streams: OwnershipStreams) -> JetStreamReliableLog {
        let mut seed = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        JetStreamReliableLog {
            bridge,
            streams,
            state: Mutex::new(State::default()),
            next_write: AtomicU64::new(u64::from_le_bytes(seed) >> 1),
            counts: Default::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's incarnation (a new one with each lease): the owner a claim's first
    /// write checks it is.
    pub fn set_me(&self, me: OwnershipRecord) {
        self.state().me = Some(me);
    }

    /// §12: `device` arrived here and this node owns its tsn at `epoch`. `loaded` is what
    /// [`load_device`] found when the tsn came from another owner; `None` when this node
    /// owned it already (what it keeps stands).
    pub fn adopt(&self, device: &DeviceKey, epoch: Epoch, loaded: Option<Loaded>) {
        let mut state = self.state();
        let holds = loaded
            .as_ref()
            .map_or(state.claims.contains_key(device), |l| l.snapshot.is_some());
        if holds {
            state.epochs.insert(device.clone(), epoch);
        } else {
            state.epochs.remove(device);
        }
        if let Some(loaded) = loaded {
            match loaded.snapshot {
                Some(snapshot) => {
                    state.claims.insert(
                        device.clone(),
                        Kept {
                            snapshot,
                            since_rollup: loaded.bytes,
                        },
                    );
                }
                None => {
                    state.claims.remove(device);
                }
            }
        }
    }

    /// [`ReliableLog::commit_owned`]: the others are durable on the stream's quorum. `Err`
    /// if NATS could not be asked (some writes may be stored: every record applies
    /// idempotently, so the retry of the same batches is safe).
    fn write(&self, batches: &[LogBatch]) -> Result<Vec<DeviceKey>, StoreError> {
        let mut fenced = Vec::new();
        let writes = {
            let state = self.state();
            // Each touched claim, as the batches leave it (all checked before any write).
            let mut touched: BTreeMap<DeviceKey, (Option<ClaimSnapshot>, Vec<LogRecord>)> =
                BTreeMap::new();
            for batch in batches {
                let (mut current, mut records) = match touched.remove(&batch.claim) {
                    Some(t) => t,
                    None => (
                        state.claims.get(&batch.claim).map(|k| k.snapshot.clone()),
                        Vec::new(),
                    ),
                };
                for record in &batch.records {
                    let needs_claim =
                        !matches!(record, LogRecord::Claim(_) | LogRecord::ClaimEnded);
                    if needs_claim && current.is_none() {
                        return Err(unknown_claim(&batch.claim));
                    }
                    current = ClaimSnapshot::replay(current, std::slice::from_ref(record));
                    records.push(record.clone());
                }
                touched.insert(batch.claim.clone(), (current, records));
            }
            let mut writes = Vec::with_capacity(touched.len());
            for (device, (after, records)) in touched {
                let epoch = state.epochs.get(&device).copied();
                let since = state.claims.get(&device).map_or(0, |k| k.since_rollup);
                writes.push(plan(device, epoch, after, records, since));
            }
            (writes, state.me.clone())
        };
        let (writes, me) = writes;
        if writes.is_empty() {
            return Ok(fenced);
        }
        let first_write = self
            .next_write
            .fetch_add(writes.len() as u64, Ordering::Relaxed);
        let jobs: Vec<Job> = writes
            .iter()
            .map(|w| Job {
                device: w.device.clone(),
                epoch: w.epoch,
                bytes: w.bytes.clone(),
                rollup: w.rollup,
            })
            .collect();
        let streams = self.streams.clone();
        let outcomes = self
            .bridge
            .call(
                move |nats| async move { write_all(&nats, &streams, me, jobs, first_write).await },
            )
            .wait()
            .and_then(|r| r)
            .map_err(|e| {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                StoreError::Storage {
                    reason: format!("cannot write reliable claims to JetStream: {e}"),
                }
            })?;
        let mut state = self.state();
        for (write, outcome) in writes.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Fenced => {
                    self.counts.fenced.fetch_add(1, Ordering::Relaxed);
                    state.claims.remove(&write.device);
                    state.epochs.remove(&write.device);
                    fenced.push(write.device);
                }
                Outcome::Stored(epoch) => {
                    self.counts.written.fetch_add(1, Ordering::Relaxed);
                    if write.after.is_some() {
                        state.epochs.insert(write.device.clone(), epoch);
                    } else {
                        state.epochs.remove(&write.device);
                    }
                    if write.rollup {
                        self.counts.rolled_up.fetch_add(1, Ordering::Relaxed);
                    }
                    let before = state
                        .claims
                        .get(&write.device)
                        .map_or(0, |k| k.since_rollup);
                    match write.after {
                        Some(snapshot) => {
                            let since_rollup = if write.rollup {
                                write.bytes.len()
                            } else {
                                before + write.bytes.len()
                            };
                            state.claims.insert(
                                write.device,
                                Kept {
                                    snapshot,
                                    since_rollup,
                                },
                            );
                        }
                        None => {
                            state.claims.remove(&write.device);
                        }
                    }
                }
            }
        }
        Ok(fenced)
    }
}

/// What one claim's commit writes: its records appended, or its whole state rolled up
/// when that is small, or no bigger than half of what a rollup would drop (so a claim's
/// subject holds at most about three times its state).
fn plan(
    device: DeviceKey,
    epoch: Option<Epoch>,
    after: Option<ClaimSnapshot>,
    records: Vec<LogRecord>,
    since_rollup: usize,
) -> Write {
    let Some(snapshot) = after else {
        // The claim ended: one small message, and nothing of it before.
        return Write {
            device,
            epoch,
            bytes: Bytes::from(encode_records(&[LogRecord::ClaimEnded])),
            rollup: true,
            after: None,
        };
    };
    let appended = encode_records(&records);
    // Decided on the size, so that a claim holding a full window is not encoded whole on
    // every commit only to be appended to.
    let whole = encoded_size(&snapshot);
    let rollup =
        whole <= PART && (whole <= ROLLUP_ALWAYS || whole * 2 <= since_rollup + appended.len());
    let bytes = if rollup {
        encode_records(&snapshot.to_records())
    } else {
        appended
    };
    Write {
        device,
        epoch,
        bytes: Bytes::from(bytes),
        rollup,
        after: Some(snapshot),
    }
}

/// About the size of `snapshot` encoded whole (a little over: every id counted at its
/// longest).
fn encoded_size(snapshot: &ClaimSnapshot) -> usize {
    // Version, count, the claim (five ids), the watermarks and flags.
    const FIXED: usize = 5 + 5 * (2 + 64) + 4 * 9 + 1;
    // Tag, number, kind, length.
    const PER_MESSAGE: usize = 1 + 8 + 1 + 4;
    let messages = snapshot.held.iter().chain(snapshot.queued.iter());
    FIXED
        + messages
            .map(|(_, m)| PER_MESSAGE + m.payload.len())
            .sum::<usize>()
        + snapshot.reports.len() * (1 + 3 * 8)
}

/// How many times a part is written again when the server refused it while the tsn's
/// epoch is still this node's (another fenced write for the tsn was in process there:
/// the server checks them one at a time per tsn).
const IN_PROCESS_RETRIES: u32 = 20;

/// Writes every claim's write at once (one task each, so a commit costs about one round
/// trip to the quorum), each fenced on its epoch.
async fn write_all(
    nats: &Nats,
    streams: &OwnershipStreams,
    me: Option<OwnershipRecord>,
    jobs: Vec<Job>,
    first_write: u64,
) -> Result<Vec<Outcome>, ClusterError> {
    let tasks: Vec<_> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, job)| {
            let (nats, streams, me) = (nats.clone(), streams.clone(), me.clone());
            let id = first_write.wrapping_add(i as u64);
            tokio::task::spawn_local(async move {
                let epoch = match job.epoch {
                    Some(epoch) => epoch,
                    // The claim's first write: this node must own the tsn (its device
                    // arrived here and no other node took it since).
                    None => match current_owner(&nats, &streams, &job.device).await? {
                        Some(owner) if Some(&owner.record) == me.as_ref() => owner.epoch,
                        _ => return Ok(Outcome::Fenced),
                    },
                };
                write_one(&nats, &streams.ownership, &job, epoch, id).await
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.map_err(|_| ClusterError::Stopped)??);
    }
    Ok(outcomes)
}

/// One claim's write: its parts in order (the server takes one fenced write per tsn at a
/// time), each fenced on `epoch`.
async fn write_one(
    nats: &Nats,
    stream: &Stream,
    job: &Job,
    epoch: Epoch,
    id: u64,
) -> Result<Outcome, ClusterError> {
    let (device, bytes, rollup) = (&job.device, &job.bytes, job.rollup);
    let parts: Vec<Bytes> = if bytes.is_empty() {
        vec![Bytes::new()]
    } else {
        (0..bytes.len())
            .step_by(PART)
            .map(|at| bytes.slice(at..bytes.len().min(at + PART)))
            .collect()
    };
    let count = parts.len();
    let mut first_seq = None;
    for (index, part) in parts.into_iter().enumerate() {
        let mut attempts = 0;
        loop {
            let mut headers = fenced_headers(device, epoch);
            if rollup && count == 1 {
                headers.insert(async_nats::header::NATS_ROLLUP, "sub");
            }
            headers.insert(BATCH_HEADER, id.to_string());
            headers.insert(PART_HEADER, format!("{index}/{count}"));
            let subject = tsn_subject(device, RELIABLE_KIND);
            match publish(nats, subject, headers, part.clone()).await {
                Ok(seq) => {
                    first_seq.get_or_insert(seq);
                    break;
                }
                Err(ClusterError::WrongLastSequence) => {
                    let last = last_on_subject(stream, &ownership_subject(device), nats.timeout)
                        .await?
                        .map(|(seq, ..)| seq);
                    if last != Some(epoch.sequence()) {
                        return Ok(Outcome::Fenced);
                    }
                    attempts += 1;
                    if attempts > IN_PROCESS_RETRIES {
                        return Err(ClusterError::WrongLastSequence);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempts))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    // A rollup of several parts: what came before its first part goes now.
    if let (true, true, Some(seq)) = (rollup, count > 1, first_seq) {
        if let Err(e) = purge_before(nats, stream, device, seq).await {
            tracing::warn!(tsn = %device.serial, error = %e, "cannot compact a reliable claim's records: they stay until its next rollup");
        }
    }
    Ok(Outcome::Stored(epoch))
}

/// One claim's write, as the NATS thread gets it.
struct Job {
    device: DeviceKey,
    epoch: Option<Epoch>,
    bytes: Bytes,
    rollup: bool,
}

/// Drops a claim's messages before `seq` (a complete rollup starts there).
async fn purge_before(
    nats: &Nats,
    stream: &Stream,
    device: &DeviceKey,
    seq: u64,
) -> Result<(), ClusterError> {
    stream
        .purge()
        .filter(tsn_subject(device, RELIABLE_KIND))
        .sequence(seq)
        .await
        .map(|_| ())
        .map_err(|e| ClusterError::other(e, nats.timeout))
}

/// What [`load_device`] found of a device's reliable claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The claim, if one holds.
    pub snapshot: Option<ClaimSnapshot>,
    /// The bytes its subject holds (what a rollup would drop).
    pub bytes: usize,
}

/// Reads everything the stream has of `device`'s reliable claim, oldest first, and
/// replays it: called by the node that just took the tsn over (its writes are fenced on
/// the new epoch, so nothing more comes from the previous owner).
pub async fn load_device(
    nats: &Nats,
    streams: &OwnershipStreams,
    device: &DeviceKey,
) -> Result<Loaded, ClusterError> {
    use async_nats::jetstream::stream::RawMessageErrorKind as K;
    let subject = tsn_subject(device, RELIABLE_KIND);
    let mut reader = PartReader::default();
    let mut snapshot = None;
    let mut bytes = 0;
    let mut seq = 1;
    loop {
        let message = match streams
            .ownership
            .get_first_raw_message_by_subject(&subject, seq)
            .await
        {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), K::NoMessageFound) => break,
            Err(e) => return Err(ClusterError::other(e, nats.timeout)),
        };
        seq = message.sequence + 1;
        bytes += message.payload.len();
        let write = header(&message.headers, BATCH_HEADER);
        let part = header(&message.headers, PART_HEADER).and_then(|p| {
            let (i, n) = p.split_once('/')?;
            Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?))
        });
        let (Some(write), Some((index, count))) = (write, part) else {
            tracing::warn!(tsn = %device.serial, seq = message.sequence, "a reliable claim's record without its part headers: skipped");
            continue;
        };
        let Some(whole) = reader.push(write, index, count, message.payload) else {
            continue;
        };
        match decode_records(&whole) {
            Ok(records) => snapshot = ClaimSnapshot::replay(snapshot, &records),
            Err(e) => {
                return Err(ClusterError::JetStream(format!(
                    "the reliable claim of {}/{} cannot be read: {e}",
                    device.domain, device.serial
                )))
            }
        }
    }
    Ok(Loaded { snapshot, bytes })
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_owned())
}

/// Reassembles a write's parts, which follow each other on the subject; an incomplete
/// set (its writer stopped between two parts) is skipped.
#[derive(Default)]
struct PartReader {
    current: Option<(String, usize, BytesMut)>,
}

impl PartReader {
    /// Part `index` of `count` of write `id`: the whole write once its last part is in.
    fn push(&mut self, id: String, index: usize, count: usize, payload: Bytes) -> Option<Bytes> {
        if count == 1 && index == 0 {
            self.current = None;
            return Some(payload);
        }
        let continues =
            matches!(&self.current, Some((cur, next, _)) if *cur == id && *next == index);
        if !continues {
            self.current = None;
            if index != 0 {
                return None;
            }
            self.current = Some((id, 0, BytesMut::new()));
        }
        let (_, next, buf) = self.current.as_mut()?;
        buf.extend_from_slice(&payload);
        *next += 1;
        if *next == count {
            return self.current.take().map(|(_, _, buf)| buf.freeze());
        }
        None
    }
}

impl ReliableLog for JetStreamReliableLog {
    fn commit(&self, batches: &[LogBatch]) -> Result<(), StoreError> {
        let fenced = self.commit_owned(batches)?;
        match fenced.first() {
            None => Ok(()),
            Some(device) => Err(StoreError::Storage {
                reason: format!(
                    "another node owns {}/{} now: its reliable claim is written there",
                    device.domain, device.serial
                ),
            }),
        }
    }

    fn commit_owned(&self, batches: &[LogBatch]) -> Result<Vec<DeviceKey>, StoreError> {
        self.write(batches)
    }

    /// The claims this node writes (none at start: a new incarnation owns no tsn; each
    /// comes with its device, [`Self::adopt`]).
    fn load(&self) -> Result<Vec<ClaimSnapshot>, StoreError> {
        Ok(self
            .state()
            .claims
            .values()
            .map(|k| k.snapshot.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ownership::take_over_tsn;
    use crate::cluster::testing::{on, ownership_record as node, with_streams};
    use crate::ids::{ClientId, ClientKey, DomainName, Serial, SessionId};
    use crate::relay::{MessageKind, RelayedMessage};
    use crate::reliable::{ClaimRecord, LogTicket, MemReliableLog, Seq, SeqRange};

    fn message(len: usize) -> RelayedMessage {
        RelayedMessage {
            kind: MessageKind::Binary,
            payload: (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into(),
        }
    }

    fn batch(device: &DeviceKey, records: Vec<LogRecord>) -> LogBatch {
        LogBatch {
            claim: device.clone(),
            records,
            ticket: LogTicket::default(),
        }
    }

    #[test]
    fn the_size_estimate_is_never_below_the_encoding() {
        let record = ClaimRecord {
            device: DeviceKey {
                domain: DomainName::new("a".repeat(64)).unwrap(),
                serial: Serial::new("9".repeat(64)).unwrap(),
            },
            client: ClientKey {
                domain: DomainName::new("a".repeat(64)).unwrap(),
                client_id: ClientId::new("c".repeat(64)).unwrap(),
            },
            session_id: SessionId::from_random([1; 16]),
        };
        let mut snapshot = ClaimSnapshot::new(record);
        let check = |s: &ClaimSnapshot| {
            let real = encode_records(&s.to_records()).len();
            let estimate = encoded_size(s);
            assert!(
                estimate >= real && estimate <= real + 400,
                "{estimate} for {real}"
            );
        };
        check(&snapshot);
        snapshot.resumed = true;
        snapshot.device_acked = Seq::new(u64::MAX);
        snapshot.pos_handed = Seq::new(7);
        snapshot.pos_done = Seq::new(6);
        snapshot.held = vec![(Seq::new(1), message(0)), (Seq::new(2), message(70_000))];
        snapshot.queued = vec![(Seq::new(9), message(3))];
        snapshot.reports = vec![(SeqRange::new(Seq::new(1), Seq::new(2)).unwrap(), 9)];
        check(&snapshot);
    }

    #[test]
    fn parts_of_a_write_are_joined_and_an_incomplete_set_is_skipped() {
        let mut r = PartReader::default();
        assert_eq!(
            r.push("1".into(), 0, 1, Bytes::from("a")),
            Some(Bytes::from("a"))
        );
        // Write 2 lost its second part (its writer died): skipped when write 3 starts.
        assert_eq!(r.push("2".into(), 0, 3, Bytes::from("x")), None);
        assert_eq!(r.push("2".into(), 1, 3, Bytes::from("y")), None);
        assert_eq!(r.push("3".into(), 0, 2, Bytes::from("b")), None);
        assert_eq!(
            r.push("3".into(), 1, 2, Bytes::from("c")),
            Some(Bytes::from("bc"))
        );
        // A part out of place is skipped, and so is the rest of its write.
        assert_eq!(r.push("4".into(), 1, 2, Bytes::from("z")), None);
        assert_eq!(r.push("5".into(), 0, 2, Bytes::from("d")), None);
        assert_eq!(r.push("6".into(), 1, 2, Bytes::from("e")), None);
        assert_eq!(
            r.push("7".into(), 0, 1, Bytes::from("f")),
            Some(Bytes::from("f"))
        );
    }

    /// The log against the in-memory reference, through a move to another node: what the
    /// new owner loads is what the old one committed, a stale owner writes nothing, and a
    /// claim acknowledged up to date is one small message.
    #[test]
    fn the_next_owner_loads_what_the_last_one_committed_and_the_last_one_is_fenced() {
        let (_cluster, bridge, streams) = with_streams();
        let device = DeviceKey {
            domain: DomainName::new("acme").unwrap(),
            serial: Serial::new("1001").unwrap(),
        };
        let take = |me: OwnershipRecord| {
            let (st, d) = (streams.clone(), device.clone());
            on(&bridge, move |nats| async move {
                take_over_tsn(&nats, &st, &d, &me).await
            })
            .unwrap()
        };
        let load = || {
            let (st, d) = (streams.clone(), device.clone());
            on(&bridge, move |nats| async move {
                load_device(&nats, &st, &d).await
            })
            .unwrap()
        };
        let reference = MemReliableLog::new();
        let want = || reference.load().unwrap().into_iter().next();
        let record = ClaimRecord {
            device: device.clone(),
            client: ClientKey {
                domain: DomainName::new("acme").unwrap(),
                client_id: ClientId::new("pos-1").unwrap(),
            },
            session_id: SessionId::from_random([3; 16]),
        };
        let s = Seq::new;

        let a = JetStreamReliableLog::new(bridge.handle(), streams.clone());
        a.set_me(node("a", 1));
        // Records of a claim the log does not hold are refused, before anything is written.
        a.adopt(&device, take(node("a", 1)), Some(load()));
        let err = a
            .commit_owned(&[batch(&device, vec![LogRecord::DeviceAcked { upto: s(1) }])])
            .unwrap_err();
        assert!(err.to_string().contains("acme/1001"), "{err}");
        assert_eq!(load().snapshot, None);

        let steps: Vec<Vec<LogRecord>> = vec![
            vec![
                LogRecord::Claim(record.clone()),
                LogRecord::DeviceHeld {
                    seq: s(1),
                    message: message(10),
                },
            ],
            // 700 KB held: more than a part, written as three.
            vec![LogRecord::DeviceHeld {
                seq: s(2),
                message: message(700_000),
            }],
            vec![
                LogRecord::PosQueued {
                    seq: s(1),
                    message: message(5),
                },
                LogRecord::PosHanding { upto: s(1) },
                LogRecord::Resumed,
            ],
            vec![
                LogRecord::PosDone { upto: s(1) },
                LogRecord::PosReported {
                    range: SeqRange::new(s(2), s(3)).unwrap(),
                    bytes: 8,
                },
                LogRecord::DeviceHeld {
                    seq: s(3),
                    message: message(20),
                },
            ],
        ];
        for records in steps {
            let b = batch(&device, records);
            reference.commit(std::slice::from_ref(&b)).unwrap();
            assert_eq!(a.commit_owned(&[b]).unwrap(), vec![]);
            assert_eq!(load().snapshot, want());
            assert_eq!(a.load().unwrap(), reference.load().unwrap());
        }
        assert!(load().bytes > 700_000, "the held message is on the stream");

        // The POS acknowledges the big one: the claim is small again, rolled up, and what
        // came before is gone from the stream.
        let b = batch(&device, vec![LogRecord::DeviceAcked { upto: s(2) }]);
        reference.commit(std::slice::from_ref(&b)).unwrap();
        a.commit_owned(&[b]).unwrap();
        let loaded = load();
        assert_eq!(loaded.snapshot, want());
        assert!(loaded.bytes < 1024, "compacted: {} bytes", loaded.bytes);

        // The device moves to node b, which loads the claim as a left it.
        let b_log = JetStreamReliableLog::new(bridge.handle(), streams.clone());
        b_log.set_me(node("b", 2));
        let epoch_b = take(node("b", 2));
        let loaded = load();
        assert_eq!(loaded.snapshot, want());
        b_log.adopt(&device, epoch_b, Some(loaded));
        assert_eq!(b_log.load().unwrap(), reference.load().unwrap());

        // a, stale, is fenced: nothing of its write lands, and it forgets the claim.
        let stale = batch(&device, vec![LogRecord::DeviceAcked { upto: s(3) }]);
        assert_eq!(
            a.commit_owned(std::slice::from_ref(&stale)).unwrap(),
            vec![device.clone()]
        );
        assert_eq!(a.load().unwrap(), vec![]);
        assert!(a.commit(&[stale]).is_err());
        assert_eq!(load().snapshot, want());

        // b carries on; the claim ends, and a new one starts from nothing.
        let b1 = batch(
            &device,
            vec![
                LogRecord::DeviceAcked { upto: s(3) },
                LogRecord::ReportConfirmed {
                    range: SeqRange::new(s(2), s(3)).unwrap(),
                },
            ],
        );
        let b2 = batch(&device, vec![LogRecord::ClaimEnded]);
        reference.commit(&[b1.clone(), b2.clone()]).unwrap();
        assert_eq!(b_log.commit_owned(&[b1, b2]).unwrap(), vec![]);
        assert_eq!(load().snapshot, None);
        let fresh = batch(&device, vec![LogRecord::Claim(record.clone())]);
        reference.commit(std::slice::from_ref(&fresh)).unwrap();
        b_log.commit_owned(&[fresh]).unwrap();
        assert_eq!(load().snapshot, want());
        // (b's epoch went with the ended claim: the new claim's first write read the
        // owner, b, again.) a starting a claim of its own reads the owner too, and is
        // refused.
        let intruder = batch(&device, vec![LogRecord::Claim(record.clone())]);
        assert_eq!(a.commit_owned(&[intruder]).unwrap(), vec![device.clone()]);
        assert_eq!(load().snapshot, want());
        assert_eq!(b_log.counts.fenced.load(Ordering::Relaxed), 0);
        assert_eq!(a.counts.fenced.load(Ordering::Relaxed), 2);
    }
}
