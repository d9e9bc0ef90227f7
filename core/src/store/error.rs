//! The store layer's error: one variant per refused write or failed read.

use crate::ids::IdError;

/// Why a store operation failed.
///
/// [`StoreError::status`] maps each to the admin API's HTTP answer (PROTOCOL.md §9):
/// 404 unknown parent or target, 409 duplicate, 400 invalid name, 500 storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The domain has not been created.
    #[error("unknown domain {domain:?}")]
    UnknownDomain {
        /// The domain named.
        domain: String,
    },
    /// The store does not exist in this domain.
    #[error("unknown store {store:?} in domain {domain:?}")]
    UnknownStore {
        /// The domain.
        domain: String,
        /// The store named.
        store: String,
    },
    /// No device with this serial in this domain.
    #[error("unknown device {serial:?} in domain {domain:?}")]
    UnknownDevice {
        /// The domain.
        domain: String,
        /// The bare serial named.
        serial: String,
    },
    /// No client with this id in this domain.
    #[error("unknown client {client_id:?} in domain {domain:?}")]
    UnknownClient {
        /// The domain.
        domain: String,
        /// The client id named.
        client_id: String,
    },
    /// The domain exists already.
    #[error("domain {domain:?} already exists")]
    DuplicateDomain {
        /// The domain.
        domain: String,
    },
    /// The store exists already in this domain (store names are unique per domain).
    #[error("store {store:?} already exists in domain {domain:?}")]
    DuplicateStore {
        /// The domain.
        domain: String,
        /// The store.
        store: String,
    },
    /// A device with this serial is already provisioned in this domain.
    #[error("device {serial:?} already exists in domain {domain:?}")]
    DuplicateDevice {
        /// The domain.
        domain: String,
        /// The bare serial.
        serial: String,
    },
    /// A client with this id exists already (a client id collision).
    #[error("client {client_id:?} already exists in domain {domain:?}")]
    DuplicateClient {
        /// The domain.
        domain: String,
        /// The client id.
        client_id: String,
    },
    /// A delete refused because something still belongs to what it would delete.
    #[error("{what} still has {holds}")]
    NotEmpty {
        /// What the delete named: `domain "acme"`, `store "s1" in domain "acme"`.
        what: String,
        /// What belongs to it: `2 stores, 1 client`.
        holds: String,
    },
    /// A name does not follow the identifier rules.
    #[error(transparent)]
    InvalidName(#[from] IdError),
    /// The database file is of a newer schema than this build knows: refuse rather than
    /// misread it.
    #[error("database schema version {found} is newer than the supported {supported}: run a newer posrelay or restore a backup")]
    SchemaTooNew {
        /// Version in the file.
        found: u64,
        /// Newest version this build reads.
        supported: u64,
    },
    /// The database file may be read (or written) by other users: it holds the token
    /// signing key, so whoever reads it can mint tokens. Refused before it is opened.
    #[error("{path} may be read or written by other users (mode {mode:04o}), and it holds the token signing key: fix it with `chmod 600 {path}` (and `chmod 700` on its directory)")]
    Insecure {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A stored value could not be decoded.
    #[error("corrupt {table} record {key:?}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The record's key.
        key: String,
        /// What did not decode.
        reason: String,
    },
    /// The underlying database failed (I/O, lock, commit).
    #[error("storage failure: {reason}")]
    Storage {
        /// The database's error message.
        reason: String,
    },
    /// The cluster's store (NATS JetStream, PROTOCOL.md §12) cannot answer now: no NATS
    /// server reachable, no quorum, or no acknowledgement in time. A write that timed out
    /// may still have been stored: read before retrying.
    #[error("cluster store unavailable: {reason}")]
    Unavailable {
        /// What failed, for the operator.
        reason: String,
    },
    /// §9: a client certificate fingerprint in the request is already pinned to another
    /// device ("A fingerprint is pinned to at most one device", §2a).
    #[error("client_cert_sha256[{position}] is already pinned to device {serial:?} in domain {domain:?}")]
    FingerprintPinned {
        /// Its position in the request's `client_cert_sha256` list.
        position: usize,
        /// The domain of the device it is pinned to.
        domain: String,
        /// That device's bare serial.
        serial: String,
    },
}

impl StoreError {
    /// HTTP status for the admin API: 404 unknown, 409 duplicate, 400 invalid name,
    /// 503 cluster store unavailable (retry later), 500 everything else the operator cannot
    /// fix by changing the request.
    pub fn status(&self) -> u16 {
        match self {
            StoreError::UnknownDomain { .. }
            | StoreError::UnknownStore { .. }
            | StoreError::UnknownDevice { .. }
            | StoreError::UnknownClient { .. } => 404,
            StoreError::DuplicateDomain { .. }
            | StoreError::DuplicateStore { .. }
            | StoreError::DuplicateDevice { .. }
            | StoreError::DuplicateClient { .. }
            | StoreError::FingerprintPinned { .. }
            | StoreError::NotEmpty { .. } => 409,
            StoreError::InvalidName(_) => 400,
            StoreError::SchemaTooNew { .. }
            | StoreError::Insecure { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Storage { .. } => 500,
            StoreError::Unavailable { .. } => 503,
        }
    }

    /// A storage failure from anything the database returns.
    pub(crate) fn storage(err: impl std::fmt::Display) -> Self {
        StoreError::Storage {
            reason: err.to_string(),
        }
    }
}
