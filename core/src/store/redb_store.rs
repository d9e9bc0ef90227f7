//! The durable [`Store`]: one redb file, `<data_dir>/posrelay.redb`.
//!
//! Every write is one redb write transaction, committed with
//! [`Durability::Immediate`] before the call returns, so that what the admin API answered
//! survives a crash or `kill -9` (PROTOCOL.md §9). Checks and writes of one call happen
//! in the same transaction: a refused write changes nothing.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable, WriteTransaction};

use super::codec;
use super::schema::{self, CLIENTS, CLIENT_DOMAINS, DEVICES, DOMAINS, META, SIGNING_KEY, STORES};
use super::{ClientRecord, DeviceRecord, Store, StoreError, StoreRecord};
use crate::ids::{ClientId, DomainName, Serial, StoreName};
use crate::tenancy::{Scope, SecretHash};

/// The file name inside the data directory.
pub const DB_FILE_NAME: &str = "posrelay.redb";

/// Tenancy kept in a redb database file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbStore {
    /// Opens (or creates) `<dir>/posrelay.redb`, creating `dir` if needed, and migrates
    /// it to [`schema::SCHEMA_VERSION`]. Refuses a file written by a newer schema.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Storage {
            reason: format!("cannot create data directory {}: {e}", dir.display()),
        })?;
        let path = dir.join(DB_FILE_NAME);
        let db = Database::create(&path).map_err(|e| StoreError::Storage {
            reason: format!("cannot open {}: {e}", path.display()),
        })?;
        let store = Self { db, path };
        store.write(|txn| schema::migrate(txn).map(|_| ()))?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one write transaction and commits it durably, or aborts it on error.
    fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write().map_err(StoreError::storage)?;
        // Durable the moment the call returns (PROTOCOL.md §9).
        txn.set_durability(Durability::Immediate);
        match f(&txn) {
            Ok(value) => {
                txn.commit().map_err(StoreError::storage)?;
                Ok(value)
            }
            Err(err) => {
                txn.abort().map_err(StoreError::storage)?;
                Err(err)
            }
        }
    }

    /// Runs `f` in a read transaction.
    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::storage)?;
        f(&txn)
    }
}

fn unknown_domain(domain: &DomainName) -> StoreError {
    StoreError::UnknownDomain {
        domain: domain.to_string(),
    }
}

fn need_domain(txn: &WriteTransaction, domain: &DomainName) -> Result<(), StoreError> {
    let domains = txn.open_table(DOMAINS).map_err(StoreError::storage)?;
    let found = domains
        .get(domain.as_str())
        .map_err(StoreError::storage)?
        .is_some();
    if found {
        Ok(())
    } else {
        Err(unknown_domain(domain))
    }
}

fn need_store(
    txn: &WriteTransaction,
    domain: &DomainName,
    store: &StoreName,
) -> Result<(), StoreError> {
    need_domain(txn, domain)?;
    let stores = txn.open_table(STORES).map_err(StoreError::storage)?;
    let found = stores
        .get((domain.as_str(), store.as_str()))
        .map_err(StoreError::storage)?
        .is_some();
    if found {
        Ok(())
    } else {
        Err(StoreError::UnknownStore {
            domain: domain.to_string(),
            store: store.to_string(),
        })
    }
}

impl Store for RedbStore {
    fn create_domain(&self, domain: &DomainName) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut domains = txn.open_table(DOMAINS).map_err(StoreError::storage)?;
            if domains
                .get(domain.as_str())
                .map_err(StoreError::storage)?
                .is_some()
            {
                return Err(StoreError::DuplicateDomain {
                    domain: domain.to_string(),
                });
            }
            domains
                .insert(domain.as_str(), b"{}".as_slice())
                .map_err(StoreError::storage)?;
            Ok(())
        })
    }

    fn domain_exists(&self, domain: &DomainName) -> Result<bool, StoreError> {
        self.read(|txn| {
            let domains = txn.open_table(DOMAINS).map_err(StoreError::storage)?;
            Ok(domains
                .get(domain.as_str())
                .map_err(StoreError::storage)?
                .is_some())
        })
    }

    fn create_store(&self, record: &StoreRecord) -> Result<(), StoreError> {
        let value = codec::encode_store(record)?;
        self.write(|txn| {
            need_domain(txn, &record.domain)?;
            let mut stores = txn.open_table(STORES).map_err(StoreError::storage)?;
            let key = (record.domain.as_str(), record.store.as_str());
            if stores.get(key).map_err(StoreError::storage)?.is_some() {
                return Err(StoreError::DuplicateStore {
                    domain: record.domain.to_string(),
                    store: record.store.to_string(),
                });
            }
            stores
                .insert(key, value.as_slice())
                .map_err(StoreError::storage)?;
            Ok(())
        })
    }

    fn store_exists(&self, domain: &DomainName, store: &StoreName) -> Result<bool, StoreError> {
        self.read(|txn| {
            let stores = txn.open_table(STORES).map_err(StoreError::storage)?;
            Ok(stores
                .get((domain.as_str(), store.as_str()))
                .map_err(StoreError::storage)?
                .is_some())
        })
    }

    fn create_client(&self, record: &ClientRecord) -> Result<(), StoreError> {
        let value = codec::encode_client(record)?;
        self.write(|txn| {
            match &record.scope {
                Scope::Store(store) => need_store(txn, &record.domain, store)?,
                Scope::Domain => need_domain(txn, &record.domain)?,
            }
            let mut clients = txn.open_table(CLIENTS).map_err(StoreError::storage)?;
            let key = (record.domain.as_str(), record.client_id.as_str());
            if clients.get(key).map_err(StoreError::storage)?.is_some() {
                return Err(StoreError::DuplicateClient {
                    domain: record.domain.to_string(),
                    client_id: record.client_id.to_string(),
                });
            }
            let mut index = txn
                .open_table(CLIENT_DOMAINS)
                .map_err(StoreError::storage)?;
            if index
                .get(record.client_id.as_str())
                .map_err(StoreError::storage)?
                .is_some()
            {
                return Err(StoreError::DuplicateClient {
                    domain: record.domain.to_string(),
                    client_id: record.client_id.to_string(),
                });
            }
            clients
                .insert(key, value.as_slice())
                .map_err(StoreError::storage)?;
            index
                .insert(record.client_id.as_str(), record.domain.as_str())
                .map_err(StoreError::storage)?;
            Ok(())
        })
    }

    fn delete_client(&self, domain: &DomainName, client_id: &ClientId) -> Result<(), StoreError> {
        self.write(|txn| {
            need_domain(txn, domain)?;
            let mut clients = txn.open_table(CLIENTS).map_err(StoreError::storage)?;
            let removed = clients
                .remove((domain.as_str(), client_id.as_str()))
                .map_err(StoreError::storage)?
                .is_some();
            if !removed {
                return Err(StoreError::UnknownClient {
                    domain: domain.to_string(),
                    client_id: client_id.to_string(),
                });
            }
            let mut index = txn
                .open_table(CLIENT_DOMAINS)
                .map_err(StoreError::storage)?;
            index
                .remove(client_id.as_str())
                .map_err(StoreError::storage)?;
            Ok(())
        })
    }

    fn find_client(&self, client_id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        let domain = self.read(|txn| {
            let index = txn
                .open_table(CLIENT_DOMAINS)
                .map_err(StoreError::storage)?;
            let domain = index
                .get(client_id.as_str())
                .map_err(StoreError::storage)?
                .map(|v| v.value().to_owned());
            Ok(domain)
        })?;
        match domain.map(DomainName::new) {
            Some(Ok(domain)) => self.get_client(&domain, client_id),
            _ => Ok(None),
        }
    }

    fn replace_client_secret_hash(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
        old: &SecretHash,
        new: &SecretHash,
    ) -> Result<bool, StoreError> {
        self.write(|txn| {
            let mut clients = txn.open_table(CLIENTS).map_err(StoreError::storage)?;
            let key = (domain.as_str(), client_id.as_str());
            let current = match clients.get(key).map_err(StoreError::storage)? {
                Some(value) => {
                    codec::decode_client(domain.as_str(), client_id.as_str(), value.value())?
                }
                None => return Ok(false),
            };
            if current.secret_hash != *old {
                return Ok(false);
            }
            let updated = ClientRecord {
                secret_hash: new.clone(),
                ..current
            };
            let value = codec::encode_client(&updated)?;
            clients
                .insert(key, value.as_slice())
                .map_err(StoreError::storage)?;
            Ok(true)
        })
    }

    fn get_client(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
    ) -> Result<Option<ClientRecord>, StoreError> {
        self.read(|txn| {
            let clients = txn.open_table(CLIENTS).map_err(StoreError::storage)?;
            let Some(value) = clients
                .get((domain.as_str(), client_id.as_str()))
                .map_err(StoreError::storage)?
            else {
                return Ok(None);
            };
            codec::decode_client(domain.as_str(), client_id.as_str(), value.value()).map(Some)
        })
    }

    fn create_device(&self, record: &DeviceRecord) -> Result<(), StoreError> {
        let value = codec::encode_device(record)?;
        self.write(|txn| {
            need_store(txn, &record.domain, &record.store)?;
            let mut devices = txn.open_table(DEVICES).map_err(StoreError::storage)?;
            let key = (record.domain.as_str(), record.serial.as_str());
            if devices.get(key).map_err(StoreError::storage)?.is_some() {
                return Err(StoreError::DuplicateDevice {
                    domain: record.domain.to_string(),
                    serial: record.serial.to_string(),
                });
            }
            devices
                .insert(key, value.as_slice())
                .map_err(StoreError::storage)?;
            Ok(())
        })
    }

    fn set_device_enabled(
        &self,
        domain: &DomainName,
        serial: &Serial,
        enabled: bool,
    ) -> Result<DeviceRecord, StoreError> {
        self.write(|txn| {
            need_domain(txn, domain)?;
            let mut devices = txn.open_table(DEVICES).map_err(StoreError::storage)?;
            let key = (domain.as_str(), serial.as_str());
            let current = match devices.get(key).map_err(StoreError::storage)? {
                Some(value) => {
                    codec::decode_device(domain.as_str(), serial.as_str(), value.value())?
                }
                None => {
                    return Err(StoreError::UnknownDevice {
                        domain: domain.to_string(),
                        serial: serial.to_string(),
                    })
                }
            };
            let updated = DeviceRecord { enabled, ..current };
            let value = codec::encode_device(&updated)?;
            devices
                .insert(key, value.as_slice())
                .map_err(StoreError::storage)?;
            Ok(updated)
        })
    }

    fn get_device(
        &self,
        domain: &DomainName,
        serial: &Serial,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.read(|txn| {
            let devices = txn.open_table(DEVICES).map_err(StoreError::storage)?;
            let Some(value) = devices
                .get((domain.as_str(), serial.as_str()))
                .map_err(StoreError::storage)?
            else {
                return Ok(None);
            };
            codec::decode_device(domain.as_str(), serial.as_str(), value.value()).map(Some)
        })
    }

    fn list_devices(&self, domain: &DomainName) -> Result<Vec<DeviceRecord>, StoreError> {
        self.read(|txn| {
            let domains = txn.open_table(DOMAINS).map_err(StoreError::storage)?;
            if domains
                .get(domain.as_str())
                .map_err(StoreError::storage)?
                .is_none()
            {
                return Err(unknown_domain(domain));
            }
            let devices = txn.open_table(DEVICES).map_err(StoreError::storage)?;
            let mut out = Vec::new();
            // Keys sort by (domain, serial): the domain's devices are one contiguous run.
            for entry in devices
                .range((domain.as_str(), "")..)
                .map_err(StoreError::storage)?
            {
                let (key, value) = entry.map_err(StoreError::storage)?;
                let (key_domain, serial) = key.value();
                if key_domain != domain.as_str() {
                    break;
                }
                out.push(codec::decode_device(key_domain, serial, value.value())?);
            }
            Ok(out)
        })
    }

    fn load_or_create_signing_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META).map_err(StoreError::storage)?;
            if let Some(existing) = meta.get(SIGNING_KEY).map_err(StoreError::storage)? {
                return existing
                    .value()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt {
                        table: "meta",
                        key: SIGNING_KEY.to_owned(),
                        reason: format!("expected 32 bytes, found {}", existing.value().len()),
                    });
            }
            meta.insert(SIGNING_KEY, fresh.as_slice())
                .map_err(StoreError::storage)?;
            Ok(fresh)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, client_rec, d, device_rec, store_rec};
    use crate::store::SCHEMA_VERSION;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("posrelay-store-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn follows_the_store_rules() {
        let dir = TempDir::new("rules");
        conformance::check(&RedbStore::open(&dir.0).unwrap());
    }

    #[test]
    fn data_survives_reopen() {
        let dir = TempDir::new("reopen");
        let client = client_rec("acme", "c1", Scope::Domain);
        {
            let s = RedbStore::open(&dir.0).unwrap();
            assert_eq!(s.path(), dir.0.join("posrelay.redb"));
            s.create_domain(&d("acme")).unwrap();
            s.create_store(&store_rec("acme", "s1")).unwrap();
            s.create_device(&device_rec("acme", "42", "s1")).unwrap();
            s.set_device_enabled(&d("acme"), &Serial::new("42").unwrap(), false)
                .unwrap();
            s.create_client(&client).unwrap();
            assert_eq!(s.load_or_create_signing_key([7; 32]).unwrap(), [7; 32]);
        }
        let s = RedbStore::open(&dir.0).unwrap();
        assert!(s.domain_exists(&d("acme")).unwrap());
        assert!(s
            .store_exists(&d("acme"), &StoreName::new("s1").unwrap())
            .unwrap());
        let mut expected = device_rec("acme", "42", "s1");
        expected.enabled = false;
        assert_eq!(s.list_devices(&d("acme")).unwrap(), vec![expected]);
        assert_eq!(
            s.get_client(&d("acme"), &client.client_id).unwrap(),
            Some(client)
        );
        // The signing key survives the restart: tokens stay valid (PROTOCOL.md §6).
        assert_eq!(s.load_or_create_signing_key([9; 32]).unwrap(), [7; 32]);
    }

    #[test]
    fn new_file_gets_the_current_schema_version() {
        let dir = TempDir::new("version");
        let s = RedbStore::open(&dir.0).unwrap();
        let txn = s.db.begin_write().unwrap();
        assert_eq!(schema::read_version(&txn).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = TempDir::new("newer");
        {
            let s = RedbStore::open(&dir.0).unwrap();
            s.write(|txn| schema::write_version(txn, SCHEMA_VERSION + 1))
                .unwrap();
        }
        let err = RedbStore::open(&dir.0).unwrap_err();
        assert_eq!(
            err,
            StoreError::SchemaTooNew {
                found: SCHEMA_VERSION + 1,
                supported: SCHEMA_VERSION
            }
        );
        assert!(err.to_string().contains("newer posrelay"));
    }

    #[test]
    fn older_schema_is_migrated() {
        let dir = TempDir::new("older");
        {
            // A file as a version-0 build would leave it: a database with no tables.
            Database::create(dir_file(&dir)).unwrap();
        }
        let s = RedbStore::open(&dir.0).unwrap();
        s.create_domain(&d("acme")).unwrap();
        let txn = s.db.begin_write().unwrap();
        assert_eq!(schema::read_version(&txn).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn a_version_1_file_gets_its_client_index_built() {
        let dir = TempDir::new("v1");
        let record = client_rec("acme", "c1", Scope::Domain);
        {
            // A file exactly as a version-1 build leaves it, with one client.
            let db = Database::create(dir_file(&dir)).unwrap();
            let txn = db.begin_write().unwrap();
            schema::migrate_to(&txn, 1).unwrap();
            txn.open_table(DOMAINS)
                .unwrap()
                .insert("acme", b"{}".as_slice())
                .unwrap();
            let value = codec::encode_client(&record).unwrap();
            txn.open_table(CLIENTS)
                .unwrap()
                .insert(("acme", "c1"), value.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let s = RedbStore::open(&dir.0).unwrap();
        assert_eq!(s.find_client(&record.client_id).unwrap(), Some(record));
        let txn = s.db.begin_write().unwrap();
        assert_eq!(schema::read_version(&txn).unwrap(), SCHEMA_VERSION);
    }

    fn dir_file(dir: &TempDir) -> PathBuf {
        std::fs::create_dir_all(&dir.0).unwrap();
        dir.0.join(DB_FILE_NAME)
    }

    #[test]
    fn a_refused_write_changes_nothing() {
        let dir = TempDir::new("atomic");
        let s = RedbStore::open(&dir.0).unwrap();
        s.create_domain(&d("acme")).unwrap();
        assert!(s.create_device(&device_rec("acme", "1", "s1")).is_err());
        s.create_store(&store_rec("acme", "s1")).unwrap();
        assert_eq!(s.list_devices(&d("acme")).unwrap(), vec![]);
    }
}
