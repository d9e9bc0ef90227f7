//! What the store keeps: stores (under merchants), clients and devices of a domain.

use super::{CertFingerprint, Scope, SecretHash};
use crate::ids::{
    ClientId, ClientKey, DeviceKey, DeviceModelName, DomainName, MerchantName, Serial, StoreName,
};

/// A store of a merchant within a domain. Store names are unique per domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRecord {
    /// The tenant.
    pub domain: DomainName,
    /// The store.
    pub store: StoreName,
    /// The merchant the store belongs to.
    pub merchant: MerchantName,
}

/// A POS client or domain application: its scope and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// The tenant.
    pub domain: DomainName,
    /// The OAuth2 client id.
    pub client_id: ClientId,
    /// One store, or the whole domain.
    pub scope: Scope,
    /// argon2id PHC hash of the secret (the secret itself is never stored).
    pub secret_hash: SecretHash,
    /// After a rotation: the secret it replaced, still good until its deadline, so
    /// that terminals and POS can move to the new one without an outage.
    pub previous_secret: Option<PreviousSecret>,
}

/// A rotated-out secret's hash and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    /// argon2id PHC hash of the old secret.
    pub hash: SecretHash,
    /// Unix seconds: the old secret is refused from then on.
    pub valid_until: u64,
}

impl PreviousSecret {
    /// Whether the old secret is still good at `now` (unix seconds).
    pub fn valid_at(&self, now: u64) -> bool {
        now < self.valid_until
    }
}

impl ClientRecord {
    /// The client's key (domain + id).
    pub fn key(&self) -> ClientKey {
        ClientKey {
            domain: self.domain.clone(),
            client_id: self.client_id.clone(),
        }
    }
}

/// A provisioned payment terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The tenant.
    pub domain: DomainName,
    /// The bare serial (tsn).
    pub serial: Serial,
    /// Its make, e.g. `ingenico`.
    pub make: DeviceModelName,
    /// Its model, e.g. `axium`.
    pub model: DeviceModelName,
    /// The store it belongs to.
    pub store: StoreName,
    /// `false` once the operator disabled it: it may not register or be claimed.
    pub enabled: bool,
    /// §2a / §9 `client_cert_sha256`: the fingerprints of the client certificates that
    /// identify this device on the mTLS listener (several, so that a rotation can pin the
    /// new one beside the old). A fingerprint is pinned to at most one device.
    pub client_cert_sha256: Vec<CertFingerprint>,
}

impl DeviceRecord {
    /// Whether a certificate with this fingerprint identifies this device.
    pub fn is_pinned(&self, fingerprint: &CertFingerprint) -> bool {
        self.client_cert_sha256.contains(fingerprint)
    }

    /// The device's key (domain + serial).
    pub fn key(&self) -> DeviceKey {
        DeviceKey {
            domain: self.domain.clone(),
            serial: self.serial.clone(),
        }
    }
}
