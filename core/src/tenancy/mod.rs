//! Tenancy: the records the store keeps and the types they are made of: domains' stores,
//! clients (their scope and the hash of their secret) and devices with the fingerprints of
//! the client certificates pinned to them (PROTOCOL.md §2a, §9).
//!
//! Plain data, shared by `store` (which keeps them) and `auth` (which checks credentials
//! and scopes against them), so that neither imports the other's types.
#![forbid(unsafe_code)]

mod fingerprint;
mod record;
mod scope;
mod secret_hash;

pub use fingerprint::{CertFingerprint, FingerprintError};
pub use record::{ClientRecord, DeviceRecord, PreviousSecret, StoreRecord};
pub use scope::Scope;
pub(crate) use scope::ScopeJson;
pub use secret_hash::SecretHash;
