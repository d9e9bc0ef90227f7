//! The durable [`Store`]: one redb file, `<data_dir>/posrelay.redb`.
//!
//! Every write is one redb write transaction, committed with
//! [`Durability::Immediate`] before the call returns, so that what the admin API answered
//! survives a crash or `kill -9` (PROTOCOL.md §9). Checks and writes of one call happen
//! in the same transaction: a refused write changes nothing.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable, WriteTransaction};

use super::codec;
use super::schema::{
    self, CERT_PINS, CLIENTS, CLIENT_DOMAINS, DEVICES, DOMAINS, META, SESSION_KEY, SIGNING_KEY,
    STORES,
};
use super::{ClientRecord, DeviceRecord, Store, StoreError, StoreRecord};
use crate::ids::{ClientId, DomainName, Serial, StoreName};
use crate::tenancy::{CertFingerprint, Scope, SecretHash};

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
    ///
    /// The file holds the token signing key (HS256: whoever reads it can mint tokens),
    /// so a new directory is created 0700 and a new file 0600, and an existing file that
    /// other users may read or write is refused ([`StoreError::Insecure`]) before it is
    /// opened.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(dir)?;
        let path = dir.join(DB_FILE_NAME);
        create_private_file(&path)?;
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

    /// The database, for the other tables of the same file (`reliable_log`).
    pub(super) fn db(&self) -> &Database {
        &self.db
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

/// What a data directory holds, learned without changing it (`posrelay check-config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreState {
    /// No store yet: `serve` creates it.
    Absent,
    /// A running relay holds the file open (its permissions were checked).
    InUse,
    /// A store this build reads, at this schema version (older ones are migrated when
    /// `serve` opens them).
    Ready {
        /// The version in the file.
        schema_version: u64,
    },
}

impl RedbStore {
    /// Looks at `<dir>/posrelay.redb` without creating, migrating or writing anything:
    /// whether it exists, whether other users may read it ([`StoreError::Insecure`]),
    /// whether a relay holds it, and its schema version (a newer one is
    /// [`StoreError::SchemaTooNew`]).
    pub fn inspect(dir: &Path) -> Result<StoreState, StoreError> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(DB_FILE_NAME);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StoreState::Absent),
            Err(e) => {
                return Err(StoreError::Storage {
                    reason: format!("cannot read {}: {e}", path.display()),
                })
            }
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & SHARED_BITS != 0 {
            return Err(StoreError::Insecure {
                path: path.display().to_string(),
                mode,
            });
        }
        let db = match Database::open(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Ok(StoreState::InUse),
            Err(e) => {
                return Err(StoreError::Storage {
                    reason: format!("cannot open {}: {e}", path.display()),
                })
            }
        };
        let txn = db.begin_read().map_err(StoreError::storage)?;
        let version = match txn.open_table(META) {
            Ok(meta) => match meta.get(schema::VERSION_KEY).map_err(StoreError::storage)? {
                Some(raw) => {
                    let bytes: [u8; 8] =
                        raw.value().try_into().map_err(|_| StoreError::Corrupt {
                            table: "meta",
                            key: schema::VERSION_KEY.to_owned(),
                            reason: "not 8 bytes".to_owned(),
                        })?;
                    u64::from_le_bytes(bytes)
                }
                None => 0,
            },
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(StoreError::storage(e)),
        };
        if version > schema::SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported: schema::SCHEMA_VERSION,
            });
        }
        Ok(StoreState::Ready {
            schema_version: version,
        })
    }
}

/// Permission bits of group and others: none of them may be set on the store file.
const SHARED_BITS: u32 = 0o077;

/// Creates `dir` (and its parents) readable by the owner only, if it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StoreError::Storage {
            reason: format!(
                "cannot create data directory {}: {e}{}",
                dir.display(),
                match e.kind() {
                    std::io::ErrorKind::AlreadyExists =>
                        ": a file of that name is in the way; remove it or choose another --data-dir",
                    std::io::ErrorKind::PermissionDenied =>
                        ": give the user posrelay runs as write access to its parent, or choose another --data-dir",
                    _ => "",
                }
            ),
        })
}

/// Creates the store file 0600 if it does not exist; refuses one other users may read
/// or write, with the command that fixes it.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(StoreError::Storage {
                reason: format!("cannot create {}: {e}", path.display()),
            })
        }
    }
    let meta = std::fs::metadata(path).map_err(|e| StoreError::Storage {
        reason: format!("cannot read the permissions of {}: {e}", path.display()),
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & SHARED_BITS != 0 {
        return Err(StoreError::Insecure {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// How many rows of `table` (keyed by (domain, name)) in `domain` satisfy `keep`
/// (given the name and the encoded value).
fn count_in(
    txn: &WriteTransaction,
    table: redb::TableDefinition<(&str, &str), &[u8]>,
    domain: &str,
    keep: impl Fn((&str, &[u8])) -> bool,
) -> Result<usize, StoreError> {
    let t = txn.open_table(table).map_err(StoreError::storage)?;
    let mut n = 0;
    for entry in t.range((domain, "")..).map_err(StoreError::storage)? {
        let (key, value) = entry.map_err(StoreError::storage)?;
        let (key_domain, name) = key.value();
        if key_domain != domain {
            break;
        }
        if keep((name, value.value())) {
            n += 1;
        }
    }
    Ok(n)
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

/// §2a: refuses `pins` when one is pinned to a device other than (domain, serial).
fn need_free_pins(
    index: &redb::Table<'_, &str, (&str, &str)>,
    domain: &DomainName,
    serial: &Serial,
    pins: &[CertFingerprint],
) -> Result<(), StoreError> {
    for (position, fp) in pins.iter().enumerate() {
        let Some(owner) = index
            .get(fp.to_hex().as_str())
            .map_err(StoreError::storage)?
        else {
            continue;
        };
        let (owner_domain, owner_serial) = owner.value();
        if owner_domain != domain.as_str() || owner_serial != serial.as_str() {
            return Err(StoreError::FingerprintPinned {
                position,
                domain: owner_domain.to_owned(),
                serial: owner_serial.to_owned(),
            });
        }
    }
    Ok(())
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
            let mut index = txn.open_table(CERT_PINS).map_err(StoreError::storage)?;
            need_free_pins(
                &index,
                &record.domain,
                &record.serial,
                &record.client_cert_sha256,
            )?;
            for fp in &record.client_cert_sha256 {
                index
                    .insert(fp.to_hex().as_str(), key)
                    .map_err(StoreError::storage)?;
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

    fn list_domains(&self) -> Result<Vec<DomainName>, StoreError> {
        self.read(|txn| {
            let domains = txn.open_table(DOMAINS).map_err(StoreError::storage)?;
            let mut out = Vec::new();
            for entry in domains.iter().map_err(StoreError::storage)? {
                let (key, _) = entry.map_err(StoreError::storage)?;
                let name = key.value();
                out.push(DomainName::new(name).map_err(|e| StoreError::Corrupt {
                    table: "domains",
                    key: name.to_owned(),
                    reason: e.to_string(),
                })?);
            }
            Ok(out)
        })
    }

    fn delete_domain(&self, domain: &DomainName) -> Result<(), StoreError> {
        self.write(|txn| {
            need_domain(txn, domain)?;
            let d = domain.as_str();
            let count = |n: usize, noun: &str| (n > 0).then(|| super::plural(n, noun));
            let stores = count_in(txn, STORES, d, |_| true)?;
            let clients = count_in(txn, CLIENTS, d, |_| true)?;
            let devices = count_in(txn, DEVICES, d, |_| true)?;
            let holds: Vec<String> = [
                count(stores, "store"),
                count(clients, "client"),
                count(devices, "device"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !holds.is_empty() {
                return Err(StoreError::NotEmpty {
                    what: format!("domain {d:?}"),
                    holds: holds.join(", "),
                });
            }
            let mut domains = txn.open_table(DOMAINS).map_err(StoreError::storage)?;
            domains.remove(d).map_err(StoreError::storage)?;
            Ok(())
        })
    }

    fn list_stores(&self, domain: &DomainName) -> Result<Vec<StoreRecord>, StoreError> {
        self.read(|txn| {
            let domains = txn.open_table(DOMAINS).map_err(StoreError::storage)?;
            if domains
                .get(domain.as_str())
                .map_err(StoreError::storage)?
                .is_none()
            {
                return Err(unknown_domain(domain));
            }
            let stores = txn.open_table(STORES).map_err(StoreError::storage)?;
            let mut out = Vec::new();
            for entry in stores
                .range((domain.as_str(), "")..)
                .map_err(StoreError::storage)?
            {
                let (key, value) = entry.map_err(StoreError::storage)?;
                let (key_domain, store) = key.value();
                if key_domain != domain.as_str() {
                    break;
                }
                out.push(codec::decode_store(key_domain, store, value.value())?);
            }
            Ok(out)
        })
    }

    fn delete_store(&self, domain: &DomainName, store: &StoreName) -> Result<(), StoreError> {
        self.write(|txn| {
            need_store(txn, domain, store)?;
            let d = domain.as_str();
            let devices = count_in(txn, DEVICES, d, |(serial, value)| {
                codec::decode_device(d, serial, value).is_ok_and(|r| &r.store == store)
            })?;
            let clients = count_in(txn, CLIENTS, d, |(id, value)| {
                codec::decode_client(d, id, value)
                    .is_ok_and(|r| r.scope == Scope::Store(store.clone()))
            })?;
            let count = |n: usize, noun: &str| (n > 0).then(|| super::plural(n, noun));
            let holds: Vec<String> = [count(clients, "client"), count(devices, "device")]
                .into_iter()
                .flatten()
                .collect();
            if !holds.is_empty() {
                return Err(StoreError::NotEmpty {
                    what: format!("store {:?} in domain {d:?}", store.as_str()),
                    holds: holds.join(", "),
                });
            }
            let mut stores = txn.open_table(STORES).map_err(StoreError::storage)?;
            stores
                .remove((d, store.as_str()))
                .map_err(StoreError::storage)?;
            Ok(())
        })
    }

    fn list_clients(&self, domain: &DomainName) -> Result<Vec<ClientRecord>, StoreError> {
        self.read(|txn| {
            let domains = txn.open_table(DOMAINS).map_err(StoreError::storage)?;
            if domains
                .get(domain.as_str())
                .map_err(StoreError::storage)?
                .is_none()
            {
                return Err(unknown_domain(domain));
            }
            let clients = txn.open_table(CLIENTS).map_err(StoreError::storage)?;
            let mut out = Vec::new();
            for entry in clients
                .range((domain.as_str(), "")..)
                .map_err(StoreError::storage)?
            {
                let (key, value) = entry.map_err(StoreError::storage)?;
                let (key_domain, id) = key.value();
                if key_domain != domain.as_str() {
                    break;
                }
                out.push(codec::decode_client(key_domain, id, value.value())?);
            }
            Ok(out)
        })
    }

    fn rotate_client_secret(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
        new: &crate::tenancy::SecretHash,
        old_valid_until: u64,
    ) -> Result<ClientRecord, StoreError> {
        self.write(|txn| {
            need_domain(txn, domain)?;
            let mut clients = txn.open_table(CLIENTS).map_err(StoreError::storage)?;
            let key = (domain.as_str(), client_id.as_str());
            let current = match clients.get(key).map_err(StoreError::storage)? {
                Some(v) => codec::decode_client(domain.as_str(), client_id.as_str(), v.value())?,
                None => {
                    return Err(StoreError::UnknownClient {
                        domain: domain.to_string(),
                        client_id: client_id.to_string(),
                    })
                }
            };
            let rotated = ClientRecord {
                secret_hash: new.clone(),
                previous_secret: Some(crate::tenancy::PreviousSecret {
                    hash: current.secret_hash.clone(),
                    valid_until: old_valid_until,
                }),
                ..current
            };
            let value = codec::encode_client(&rotated)?;
            clients
                .insert(key, value.as_slice())
                .map_err(StoreError::storage)?;
            Ok(rotated)
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

    fn set_device_pins(
        &self,
        domain: &DomainName,
        serial: &Serial,
        pins: &[CertFingerprint],
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
            let mut index = txn.open_table(CERT_PINS).map_err(StoreError::storage)?;
            need_free_pins(&index, domain, serial, pins)?;
            for old in current
                .client_cert_sha256
                .iter()
                .filter(|fp| !pins.contains(fp))
            {
                index
                    .remove(old.to_hex().as_str())
                    .map_err(StoreError::storage)?;
            }
            for fp in pins {
                index
                    .insert(fp.to_hex().as_str(), key)
                    .map_err(StoreError::storage)?;
            }
            let updated = DeviceRecord {
                client_cert_sha256: pins.to_vec(),
                ..current
            };
            let value = codec::encode_device(&updated)?;
            devices
                .insert(key, value.as_slice())
                .map_err(StoreError::storage)?;
            Ok(updated)
        })
    }

    fn find_device_by_fingerprint(
        &self,
        fingerprint: &CertFingerprint,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.read(|txn| {
            let index = txn.open_table(CERT_PINS).map_err(StoreError::storage)?;
            let Some(owner) = index
                .get(fingerprint.to_hex().as_str())
                .map_err(StoreError::storage)?
            else {
                return Ok(None);
            };
            let (domain, serial) = owner.value();
            let devices = txn.open_table(DEVICES).map_err(StoreError::storage)?;
            let Some(value) = devices.get((domain, serial)).map_err(StoreError::storage)? else {
                return Ok(None);
            };
            let device = codec::decode_device(domain, serial, value.value())?;
            // The device record is the truth; the index only finds it.
            Ok(device.is_pinned(fingerprint).then_some(device))
        })
    }

    fn load_or_create_signing_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
        self.load_or_create_key(SIGNING_KEY, fresh)
    }

    fn load_or_create_session_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
        self.load_or_create_key(SESSION_KEY, fresh)
    }
}

impl RedbStore {
    /// The 32-byte key stored in `meta[name]`, or `fresh` stored now.
    fn load_or_create_key(
        &self,
        name: &'static str,
        fresh: [u8; 32],
    ) -> Result<[u8; 32], StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META).map_err(StoreError::storage)?;
            if let Some(existing) = meta.get(name).map_err(StoreError::storage)? {
                return existing
                    .value()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt {
                        table: "meta",
                        key: name.to_owned(),
                        reason: format!("expected 32 bytes, found {}", existing.value().len()),
                    });
            }
            meta.insert(name, fresh.as_slice())
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
    fn a_new_data_directory_and_store_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TempDir::new("private");
        let data = dir.0.join("nested").join("data");
        let store = RedbStore::open(&data).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(store.path()), 0o600);
        drop(store);
        // Reopening keeps it private and works.
        let store = RedbStore::open(&data).unwrap();
        assert_eq!(mode(store.path()), 0o600);
    }

    #[test]
    fn inspecting_a_data_directory_changes_nothing() {
        let dir = TempDir::new("inspect");
        assert_eq!(RedbStore::inspect(&dir.0).unwrap(), StoreState::Absent);
        assert!(!dir.0.exists(), "inspect creates nothing");
        let store = RedbStore::open(&dir.0).unwrap();
        assert_eq!(RedbStore::inspect(&dir.0).unwrap(), StoreState::InUse);
        drop(store);
        assert_eq!(
            RedbStore::inspect(&dir.0).unwrap(),
            StoreState::Ready {
                schema_version: SCHEMA_VERSION
            }
        );
    }

    #[test]
    fn a_store_other_users_can_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TempDir::new("insecure");
        let path = RedbStore::open(&dir.0).unwrap().path().to_owned();
        for bad in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
            let err = RedbStore::open(&dir.0).unwrap_err();
            assert!(matches!(err, StoreError::Insecure { mode, .. } if mode == bad));
            let text = err.to_string();
            assert!(
                text.contains(&format!("chmod 600 {}", path.display())),
                "{text}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(RedbStore::open(&dir.0).is_ok());
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
            assert_eq!(s.load_or_create_session_key([8; 32]).unwrap(), [8; 32]);
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
        assert_eq!(s.load_or_create_session_key([9; 32]).unwrap(), [8; 32]);
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

    #[test]
    fn a_version_2_file_gets_its_pin_index_and_keeps_its_devices() {
        let dir = TempDir::new("v2");
        let device = device_rec("acme", "42", "s1");
        {
            // A file exactly as a version-2 build leaves it, with one device (v2 values
            // have no client_cert_sha256 field).
            let db = Database::create(dir_file(&dir)).unwrap();
            let txn = db.begin_write().unwrap();
            schema::migrate_to(&txn, 2).unwrap();
            txn.open_table(DOMAINS)
                .unwrap()
                .insert("acme", b"{}".as_slice())
                .unwrap();
            txn.open_table(STORES)
                .unwrap()
                .insert(("acme", "s1"), br#"{"merchant":"m1"}"#.as_slice())
                .unwrap();
            txn.open_table(DEVICES)
                .unwrap()
                .insert(
                    ("acme", "42"),
                    br#"{"make":"ingenico","model":"axium","store":"s1","enabled":true}"#
                        .as_slice(),
                )
                .unwrap();
            txn.commit().unwrap();
        }
        let s = RedbStore::open(&dir.0).unwrap();
        {
            let txn = s.db.begin_write().unwrap();
            assert_eq!(schema::read_version(&txn).unwrap(), SCHEMA_VERSION);
        }
        assert_eq!(
            s.get_device(&d("acme"), &device.serial).unwrap(),
            Some(device.clone())
        );
        let pin = conformance::fp(1);
        let pinned = s
            .set_device_pins(&d("acme"), &device.serial, &[pin])
            .unwrap();
        assert_eq!(s.find_device_by_fingerprint(&pin).unwrap(), Some(pinned));
    }

    #[test]
    fn pins_survive_reopen() {
        let dir = TempDir::new("pins");
        let mut device = device_rec("acme", "7", "s1");
        device.client_cert_sha256 = vec![conformance::fp(1), conformance::fp(2)];
        {
            let s = RedbStore::open(&dir.0).unwrap();
            s.create_domain(&d("acme")).unwrap();
            s.create_store(&store_rec("acme", "s1")).unwrap();
            s.create_device(&device).unwrap();
        }
        let s = RedbStore::open(&dir.0).unwrap();
        assert_eq!(
            s.find_device_by_fingerprint(&conformance::fp(2)).unwrap(),
            Some(device)
        );
    }

    /// The store file's path, created empty and private (as a build of any version
    /// would leave it now) for a test to fill with an older layout.
    fn dir_file(dir: &TempDir) -> PathBuf {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(DB_FILE_NAME);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .unwrap();
        path
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
