//! The reliable-session log (PROTOCOL.md §11) in `posrelay.redb`: [`ReliableLog`] for
//! [`RedbStore`], in the same database as the tenancy (schema v3).
//!
//! Tables (keys sort by device, then number, so one claim's rows are one contiguous run):
//! - `reliable_claims`: (domain, serial) → JSON `{"client_domain","client_id","session_id",
//!   "resumed","device_acked","pos_handed","pos_done"}`: the claim and its watermarks.
//! - `reliable_held`: (domain, serial, seq) → a device message held until acked.
//! - `reliable_queue`: (domain, serial, seq) → a POS message queued for the device.
//! - `reliable_reports`: (domain, serial, from_seq) → (to_seq, payload bytes).
//!
//! A message is stored as one kind byte (`T` text, `B` binary) and its payload verbatim.
//! Every commit is one redb write transaction with [`Durability::Immediate`]: durable when
//! it returns, or not applied at all.

use std::collections::BTreeMap;

use bytes::Bytes;
use redb::{Durability, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{RedbStore, StoreError};
use crate::ids::{ClientId, ClientKey, DeviceKey, DomainName, Serial, SessionId};
use crate::relay::{MessageKind, RelayedMessage};
use crate::reliable::log::unknown_claim;
use crate::reliable::{
    ClaimRecord, ClaimSnapshot, LogBatch, LogRecord, ReliableLog, Seq, SeqRange,
};

/// `reliable_claims` (v3): (domain, serial) → the claim's JSON.
pub(super) const RELIABLE_CLAIMS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("reliable_claims");
/// `reliable_held` (v3): (domain, serial, seq) → kind byte + payload.
pub(super) const RELIABLE_HELD: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("reliable_held");
/// `reliable_queue` (v3): (domain, serial, seq) → kind byte + payload.
pub(super) const RELIABLE_QUEUE: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("reliable_queue");
/// `reliable_reports` (v3): (domain, serial, from_seq) → (to_seq, bytes).
pub(super) const RELIABLE_REPORTS: TableDefinition<(&str, &str, u64), (u64, u64)> =
    TableDefinition::new("reliable_reports");

/// v2 → v3: the reliable-session tables, empty.
pub(super) fn create_reliable_v3(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(RELIABLE_CLAIMS)
        .map_err(StoreError::storage)?;
    txn.open_table(RELIABLE_HELD).map_err(StoreError::storage)?;
    txn.open_table(RELIABLE_QUEUE)
        .map_err(StoreError::storage)?;
    txn.open_table(RELIABLE_REPORTS)
        .map_err(StoreError::storage)?;
    Ok(())
}

/// `reliable_claims` value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClaimValue {
    client_domain: String,
    client_id: String,
    session_id: String,
    resumed: bool,
    device_acked: u64,
    pos_handed: u64,
    pos_done: u64,
}

impl ClaimValue {
    fn new(record: &ClaimRecord) -> ClaimValue {
        ClaimValue {
            client_domain: record.client.domain.as_str().to_owned(),
            client_id: record.client.client_id.as_str().to_owned(),
            session_id: record.session_id.as_str().to_owned(),
            resumed: false,
            device_acked: 0,
            pos_handed: 0,
            pos_done: 0,
        }
    }
}

fn corrupt(table: &'static str, device: &DeviceKey, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table,
        key: format!("{}/{}", device.domain, device.serial),
        reason: reason.to_string(),
    }
}

fn encode_message(message: &RelayedMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + message.payload.len());
    out.push(match message.kind {
        MessageKind::Text => b'T',
        MessageKind::Binary => b'B',
    });
    out.extend_from_slice(&message.payload);
    out
}

fn decode_message(
    table: &'static str,
    device: &DeviceKey,
    bytes: &[u8],
) -> Result<RelayedMessage, StoreError> {
    let (kind, payload) = match bytes.split_first() {
        Some((b'T', rest)) => (MessageKind::Text, rest),
        Some((b'B', rest)) => (MessageKind::Binary, rest),
        _ => return Err(corrupt(table, device, "message without a kind byte")),
    };
    if kind == MessageKind::Text && std::str::from_utf8(payload).is_err() {
        return Err(corrupt(table, device, "text message is not utf-8"));
    }
    Ok(RelayedMessage {
        kind,
        payload: Bytes::copy_from_slice(payload),
    })
}

/// The rows of one device, from number `from` to `to`.
fn rows(device: &DeviceKey, from: u64, to: u64) -> std::ops::RangeInclusive<(&str, &str, u64)> {
    let (d, s) = (device.domain.as_str(), device.serial.as_str());
    (d, s, from)..=(d, s, to)
}

/// One write transaction's view of the claims it touches: read once, written back once.
struct Claims<'t> {
    txn: &'t WriteTransaction,
    touched: BTreeMap<DeviceKey, Option<ClaimValue>>,
}

impl Claims<'_> {
    fn get(&mut self, device: &DeviceKey) -> Result<Option<&mut ClaimValue>, StoreError> {
        if !self.touched.contains_key(device) {
            let table = self
                .txn
                .open_table(RELIABLE_CLAIMS)
                .map_err(StoreError::storage)?;
            let value = match table
                .get((device.domain.as_str(), device.serial.as_str()))
                .map_err(StoreError::storage)?
            {
                Some(raw) => Some(decode_claim(device, raw.value())?),
                None => None,
            };
            self.touched.insert(device.clone(), value);
        }
        Ok(self.touched.get_mut(device).and_then(Option::as_mut))
    }

    fn set(&mut self, device: &DeviceKey, value: Option<ClaimValue>) {
        self.touched.insert(device.clone(), value);
    }

    fn write_back(self) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(RELIABLE_CLAIMS)
            .map_err(StoreError::storage)?;
        for (device, value) in self.touched {
            let key = (device.domain.as_str(), device.serial.as_str());
            match value {
                Some(value) => {
                    let bytes = simd_json::to_vec(&value).map_err(StoreError::storage)?;
                    table
                        .insert(key, bytes.as_slice())
                        .map_err(StoreError::storage)?;
                }
                None => {
                    table.remove(key).map_err(StoreError::storage)?;
                }
            }
        }
        Ok(())
    }
}

fn decode_claim(device: &DeviceKey, bytes: &[u8]) -> Result<ClaimValue, StoreError> {
    let mut buf = bytes.to_vec();
    simd_json::serde::from_slice(&mut buf).map_err(|e| corrupt("reliable_claims", device, e))
}

/// Deletes every row of `device` in the three row tables.
fn clear_rows(txn: &WriteTransaction, device: &DeviceKey) -> Result<(), StoreError> {
    let all = rows(device, 0, u64::MAX);
    for table in [RELIABLE_HELD, RELIABLE_QUEUE] {
        txn.open_table(table)
            .map_err(StoreError::storage)?
            .retain_in(all.clone(), |_, _| false)
            .map_err(StoreError::storage)?;
    }
    txn.open_table(RELIABLE_REPORTS)
        .map_err(StoreError::storage)?
        .retain_in(all, |_, _| false)
        .map_err(StoreError::storage)?;
    Ok(())
}

fn apply(
    txn: &WriteTransaction,
    claims: &mut Claims<'_>,
    device: &DeviceKey,
    record: &LogRecord,
) -> Result<(), StoreError> {
    let (d, s) = (device.domain.as_str(), device.serial.as_str());
    match record {
        LogRecord::Claim(r) => {
            clear_rows(txn, device)?;
            claims.set(device, Some(ClaimValue::new(r)));
            return Ok(());
        }
        LogRecord::ClaimEnded => {
            clear_rows(txn, device)?;
            claims.set(device, None);
            return Ok(());
        }
        _ => {}
    }
    let claim = claims.get(device)?.ok_or_else(|| unknown_claim(device))?;
    match record {
        LogRecord::Claim(_) | LogRecord::ClaimEnded => {}
        LogRecord::Resumed => claim.resumed = true,
        LogRecord::DeviceHeld { seq, message } => {
            txn.open_table(RELIABLE_HELD)
                .map_err(StoreError::storage)?
                .insert((d, s, seq.get()), encode_message(message).as_slice())
                .map_err(StoreError::storage)?;
        }
        LogRecord::DeviceAcked { upto } => {
            claim.device_acked = claim.device_acked.max(upto.get());
            txn.open_table(RELIABLE_HELD)
                .map_err(StoreError::storage)?
                .retain_in(rows(device, 0, upto.get()), |_, _| false)
                .map_err(StoreError::storage)?;
        }
        LogRecord::PosQueued { seq, message } => {
            txn.open_table(RELIABLE_QUEUE)
                .map_err(StoreError::storage)?
                .insert((d, s, seq.get()), encode_message(message).as_slice())
                .map_err(StoreError::storage)?;
        }
        LogRecord::PosHanding { upto } => claim.pos_handed = claim.pos_handed.max(upto.get()),
        LogRecord::PosDone { upto } => {
            claim.pos_done = claim.pos_done.max(upto.get());
            txn.open_table(RELIABLE_QUEUE)
                .map_err(StoreError::storage)?
                .retain_in(rows(device, 0, upto.get()), |_, _| false)
                .map_err(StoreError::storage)?;
        }
        LogRecord::PosReported { range, bytes } => {
            txn.open_table(RELIABLE_QUEUE)
                .map_err(StoreError::storage)?
                .retain_in(
                    rows(device, range.from().get(), range.to().get()),
                    |_, _| false,
                )
                .map_err(StoreError::storage)?;
            txn.open_table(RELIABLE_REPORTS)
                .map_err(StoreError::storage)?
                .insert((d, s, range.from().get()), (range.to().get(), *bytes))
                .map_err(StoreError::storage)?;
        }
        LogRecord::ReportConfirmed { range } => {
            txn.open_table(RELIABLE_REPORTS)
                .map_err(StoreError::storage)?
                .remove((d, s, range.from().get()))
                .map_err(StoreError::storage)?;
        }
    }
    Ok(())
}

fn load_rows(
    txn: &redb::ReadTransaction,
    table: TableDefinition<(&str, &str, u64), &[u8]>,
    name: &'static str,
    device: &DeviceKey,
) -> Result<Vec<(Seq, RelayedMessage)>, StoreError> {
    let table = txn.open_table(table).map_err(StoreError::storage)?;
    let mut out = Vec::new();
    for entry in table
        .range(rows(device, 0, u64::MAX))
        .map_err(StoreError::storage)?
    {
        let (key, value) = entry.map_err(StoreError::storage)?;
        let (_, _, seq) = key.value();
        out.push((Seq::new(seq), decode_message(name, device, value.value())?));
    }
    Ok(out)
}

impl ReliableLog for RedbStore {
    fn commit(&self, batches: &[LogBatch]) -> Result<(), StoreError> {
        let mut txn = self.db().begin_write().map_err(StoreError::storage)?;
        // Durable when commit returns (PROTOCOL.md §11: written before the message goes on).
        txn.set_durability(Durability::Immediate);
        let applied = (|| {
            let mut claims = Claims {
                txn: &txn,
                touched: BTreeMap::new(),
            };
            for batch in batches {
                for record in &batch.records {
                    apply(&txn, &mut claims, &batch.claim, record)?;
                }
            }
            claims.write_back()
        })();
        match applied {
            Ok(()) => txn.commit().map_err(StoreError::storage),
            Err(err) => {
                txn.abort().map_err(StoreError::storage)?;
                Err(err)
            }
        }
    }

    fn load(&self) -> Result<Vec<ClaimSnapshot>, StoreError> {
        let txn = self.db().begin_read().map_err(StoreError::storage)?;
        let claims = txn
            .open_table(RELIABLE_CLAIMS)
            .map_err(StoreError::storage)?;
        let mut out = Vec::new();
        for entry in claims.iter().map_err(StoreError::storage)? {
            let (key, value) = entry.map_err(StoreError::storage)?;
            let (domain, serial) = key.value();
            let bad = |e: crate::ids::IdError| StoreError::Corrupt {
                table: "reliable_claims",
                key: format!("{domain}/{serial}"),
                reason: e.to_string(),
            };
            let device = DeviceKey {
                domain: DomainName::new(domain).map_err(bad)?,
                serial: Serial::new(serial).map_err(bad)?,
            };
            let value = decode_claim(&device, value.value())?;
            let record = ClaimRecord {
                device: device.clone(),
                client: ClientKey {
                    domain: DomainName::new(value.client_domain).map_err(bad)?,
                    client_id: ClientId::new(value.client_id).map_err(bad)?,
                },
                session_id: SessionId::new(value.session_id).map_err(bad)?,
            };
            let reports_table = txn
                .open_table(RELIABLE_REPORTS)
                .map_err(StoreError::storage)?;
            let mut reports = Vec::new();
            for entry in reports_table
                .range(rows(&device, 0, u64::MAX))
                .map_err(StoreError::storage)?
            {
                let (key, value) = entry.map_err(StoreError::storage)?;
                let (_, _, from) = key.value();
                let (to, bytes) = value.value();
                let range = SeqRange::new(Seq::new(from), Seq::new(to))
                    .ok_or_else(|| corrupt("reliable_reports", &device, "empty range"))?;
                reports.push((range, bytes));
            }
            out.push(ClaimSnapshot {
                resumed: value.resumed,
                device_acked: Seq::new(value.device_acked),
                held: load_rows(&txn, RELIABLE_HELD, "reliable_held", &device)?,
                pos_handed: Seq::new(value.pos_handed),
                pos_done: Seq::new(value.pos_done),
                queued: load_rows(&txn, RELIABLE_QUEUE, "reliable_queue", &device)?,
                reports,
                record,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reliable::log::conformance;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "posrelay-reliable-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_redb_log_follows_the_rules() {
        let dir = temp_dir("rules");
        let slot = Rc::new(RefCell::new(Some(RedbStore::open(&dir).unwrap())));
        // A reopen closes the file first (redb allows one open handle per file).
        let reopen = || {
            slot.borrow_mut().take();
            *slot.borrow_mut() = Some(RedbStore::open(&dir).unwrap());
            Reopening(slot.clone())
        };
        conformance::check(&Reopening(slot.clone()), &reopen);
        slot.borrow_mut().take();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The store in a shared slot, so that a reopen replaces it under every handle.
    struct Reopening(Rc<RefCell<Option<RedbStore>>>);

    impl ReliableLog for Reopening {
        fn commit(&self, batches: &[LogBatch]) -> Result<(), StoreError> {
            self.0.borrow().as_ref().expect("open").commit(batches)
        }
        fn load(&self) -> Result<Vec<ClaimSnapshot>, StoreError> {
            self.0.borrow().as_ref().expect("open").load()
        }
    }

    #[test]
    fn a_version_2_file_gets_the_reliable_tables_and_keeps_its_tenancy() {
        use crate::store::{Store, SCHEMA_VERSION};
        let dir = temp_dir("v2");
        std::fs::create_dir_all(&dir).unwrap();
        {
            // A file exactly as a version-2 build leaves it, with a domain.
            let db =
                redb::Database::create(dir.join(super::super::redb_store::DB_FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            super::super::schema::migrate_to(&txn, 2).unwrap();
            txn.open_table(super::super::schema::DOMAINS)
                .unwrap()
                .insert("acme", b"{}".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        // Private, as every build since the data directory's modes were enforced leaves it.
        {
            use std::os::unix::fs::PermissionsExt as _;
            let file = dir.join(super::super::redb_store::DB_FILE_NAME);
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let store = RedbStore::open(&dir).unwrap();
        assert!(store
            .domain_exists(&DomainName::new("acme").unwrap())
            .unwrap());
        assert_eq!(store.load().unwrap(), vec![]);
        let record = conformance::record("1", "pos");
        store.put_claim(&record).unwrap();
        assert_eq!(store.load().unwrap(), vec![ClaimSnapshot::new(record)]);
        let txn = store.db().begin_write().unwrap();
        assert_eq!(
            super::super::schema::read_version(&txn).unwrap(),
            SCHEMA_VERSION
        );
        drop(txn);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_rows_are_reported_not_panicked() {
        let dir = temp_dir("corrupt");
        let store = RedbStore::open(&dir).unwrap();
        let record = conformance::record("9", "pos");
        store.put_claim(&record).unwrap();
        let txn = store.db().begin_write().unwrap();
        txn.open_table(RELIABLE_HELD)
            .unwrap()
            .insert(("acme", "9", 1), b"X?".as_slice())
            .unwrap();
        txn.commit().unwrap();
        let err = store.load().unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Corrupt {
                    table: "reliable_held",
                    ..
                }
            ),
            "{err}"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
