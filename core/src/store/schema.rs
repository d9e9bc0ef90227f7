//! The database schema: table definitions, the version number and the migrations.
//!
//! `meta["schema_version"]` holds the version as 8 bytes little-endian. Opening a file
//! runs every migration from its version up to [`SCHEMA_VERSION`] in one write
//! transaction, and refuses a file of a newer version.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::StoreError;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u64 = 4;

/// `meta`: `schema_version` (u64 LE), `signing_key` and `session_key` (32 bytes each;
/// `session_key` is written when first needed, so it needs no migration).
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// `domains`: domain → `{}`.
pub(super) const DOMAINS: TableDefinition<&str, &[u8]> = TableDefinition::new("domains");
/// `stores`: (domain, store) → `{"merchant":…}`.
pub(super) const STORES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("stores");
/// `clients`: (domain, client_id) → `{"scope":…,"secret_hash":…}`.
pub(super) const CLIENTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("clients");
/// `client_domains` (v2): client_id → domain, so that a device's registration, which
/// names only the client (PROTOCOL.md §2), finds the client's domain. Client ids are
/// 128 random bits, unique across domains.
pub(super) const CLIENT_DOMAINS: TableDefinition<&str, &str> =
    TableDefinition::new("client_domains");
/// `devices`: (domain, serial) → `{"make":…,"model":…,"store":…,"enabled":…}` (and, from
/// v4, `"client_cert_sha256":[…]` when the device has pins).
///
/// v3 adds the reliable-session tables, defined beside their code in `reliable_log`.
pub(super) const DEVICES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("devices");
/// `cert_pins` (v4): client certificate fingerprint (64 lowercase hex) → (domain, serial)
/// of the one device it is pinned to, so that the mTLS listener, which names no domain,
/// finds the device (PROTOCOL.md §2a) and a fingerprint stays pinned to one device.
pub(super) const CERT_PINS: TableDefinition<&str, (&str, &str)> = TableDefinition::new("cert_pins");

/// The `meta` key of the schema version.
pub(super) const VERSION_KEY: &str = "schema_version";
/// The `meta` key of the token signing key.
pub(super) const SIGNING_KEY: &str = "signing_key";
/// The `meta` key of the key that derives `session_id`s (`relay::keyring`).
pub(super) const SESSION_KEY: &str = "session_key";

/// One migration: brings a file from version `n` to `n + 1` (index `n` of [`MIGRATIONS`]).
type Migration = fn(&WriteTransaction) -> Result<(), StoreError>;

/// `MIGRATIONS[n]` migrates from version `n`; version 0 is an empty file.
const MIGRATIONS: [Migration; SCHEMA_VERSION as usize] = [
    create_v1,
    index_client_ids_v2,
    super::reliable_log::create_reliable_v3,
    index_cert_pins_v4,
];

/// v0 → v1: create the tables.
fn create_v1(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(DOMAINS).map_err(StoreError::storage)?;
    txn.open_table(STORES).map_err(StoreError::storage)?;
    txn.open_table(CLIENTS).map_err(StoreError::storage)?;
    txn.open_table(DEVICES).map_err(StoreError::storage)?;
    Ok(())
}

/// v1 → v2: index every existing client by its id.
fn index_client_ids_v2(txn: &WriteTransaction) -> Result<(), StoreError> {
    let clients = txn.open_table(CLIENTS).map_err(StoreError::storage)?;
    let mut index = txn
        .open_table(CLIENT_DOMAINS)
        .map_err(StoreError::storage)?;
    for entry in clients.iter().map_err(StoreError::storage)? {
        let (key, _) = entry.map_err(StoreError::storage)?;
        let (domain, client_id) = key.value();
        index
            .insert(client_id, domain)
            .map_err(StoreError::storage)?;
    }
    Ok(())
}

/// v3 → v4: index the pins of every device by fingerprint. An older file has no pins, so
/// the index starts empty; the scan keeps the migration right for any file it meets.
fn index_cert_pins_v4(txn: &WriteTransaction) -> Result<(), StoreError> {
    let devices = txn.open_table(DEVICES).map_err(StoreError::storage)?;
    let mut index = txn.open_table(CERT_PINS).map_err(StoreError::storage)?;
    for entry in devices.iter().map_err(StoreError::storage)? {
        let (key, value) = entry.map_err(StoreError::storage)?;
        let (domain, serial) = key.value();
        let device = super::codec::decode_device(domain, serial, value.value())?;
        for fp in &device.client_cert_sha256 {
            index
                .insert(fp.to_hex().as_str(), (domain, serial))
                .map_err(StoreError::storage)?;
        }
    }
    Ok(())
}

/// Runs only the migrations up to `version` (tests of the upgrade path).
#[cfg(test)]
pub(super) fn migrate_to(txn: &WriteTransaction, version: u64) -> Result<(), StoreError> {
    for (from, migration) in MIGRATIONS.iter().enumerate().take(version as usize) {
        migration(txn)?;
        write_version(txn, from as u64 + 1)?;
    }
    Ok(())
}

/// The version written in the file (0 for a new file).
pub(super) fn read_version(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let meta = txn.open_table(META).map_err(StoreError::storage)?;
    let Some(raw) = meta.get(VERSION_KEY).map_err(StoreError::storage)? else {
        return Ok(0);
    };
    let bytes: [u8; 8] = raw.value().try_into().map_err(|_| StoreError::Corrupt {
        table: "meta",
        key: VERSION_KEY.to_owned(),
        reason: format!("expected 8 bytes, found {}", raw.value().len()),
    })?;
    Ok(u64::from_le_bytes(bytes))
}

/// Writes `version` into `meta`.
pub(super) fn write_version(txn: &WriteTransaction, version: u64) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).map_err(StoreError::storage)?;
    meta.insert(VERSION_KEY, version.to_le_bytes().as_slice())
        .map_err(StoreError::storage)?;
    Ok(())
}

/// Brings the file to [`SCHEMA_VERSION`], or refuses a newer one. Returns the version
/// found before migrating.
pub(super) fn migrate(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let found = read_version(txn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (from, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        migration(txn)?;
        write_version(txn, from as u64 + 1)?;
    }
    Ok(found)
}
