//! The tenancy on a JetStream key-value bucket: which key holds what, and the values' format.
//!
//! One bucket holds everything (its stream's sequence orders every change, so a node's
//! replica — `replica.rs` — always holds a prefix of the history: never a client without
//! its domain). Keys, each name written as one subject token (`crate::subject`):
//!
//! | key | value |
//! |---|---|
//! | `domain.<domain>` | `{}` |
//! | `store.<domain>.<store>` | `{"merchant":"m1"}` (as in redb) |
//! | `client.<client_id>` | `{"domain":"acme","scope":{…},"secret_hash":"$argon2id$…"}` |
//! | `device.<domain>.<serial>` | `{"make":…,"model":…,"store":…,"enabled":…}` (as in redb) |
//! | `meta.signing_key`, `meta.session_key` | 32 raw bytes |
//! | `pin.<sha256 hex>` | `{"domain":"acme","serial":"12345678"}`: the device a client certificate is pinned to (PROTOCOL.md §2a: one device per fingerprint, across domains) |
//!
//! A client is keyed by its id alone: client ids are unique across domains (device
//! registration names no domain, PROTOCOL.md §2), so the key *is* the cross-domain
//! index, and one KV `create` enforces the uniqueness that redb keeps with a second table.
//! Keys of kinds this build does not know are ignored (a later version may add some).
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::codec;
use super::{ClientRecord, DeviceRecord, StoreError, StoreRecord};
use crate::ids::{ClientId, DomainName, Serial, StoreName};
use crate::subject::{token, untoken};
use crate::tenancy::CertFingerprint;
use crate::tenancy::{ScopeJson, SecretHash};

/// A key of the tenancy bucket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KvKey {
    /// `domain.<domain>`
    Domain(DomainName),
    /// `store.<domain>.<store>`
    Store(DomainName, StoreName),
    /// `client.<client_id>`
    Client(ClientId),
    /// `device.<domain>.<serial>`
    Device(DomainName, Serial),
    /// `meta.<name>`
    Meta(MetaKey),
    /// `pin.<fingerprint>`: which device a client certificate is pinned to.
    Pin(CertFingerprint),
}

/// The secrets the cluster shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetaKey {
    /// The token signing key (PROTOCOL.md §6: tokens outlive a restart, and in a cluster
    /// a token from one node works on every other, §12).
    SigningKey,
    /// The key that derives `session_id`s (`relay::keyring`): shared, so that a device
    /// keeps its `session_id` across nodes (PROTOCOL.md §12).
    SessionKey,
}

impl MetaKey {
    fn name(self) -> &'static str {
        match self {
            MetaKey::SigningKey => "signing_key",
            MetaKey::SessionKey => "session_key",
        }
    }
}

impl KvKey {
    /// The key as written in the bucket.
    pub fn to_key(&self) -> String {
        match self {
            KvKey::Domain(d) => format!("domain.{}", token(d.as_str())),
            KvKey::Store(d, s) => format!("store.{}.{}", token(d.as_str()), token(s.as_str())),
            KvKey::Client(id) => format!("client.{}", token(id.as_str())),
            KvKey::Device(d, serial) => {
                format!("device.{}.{}", token(d.as_str()), token(serial.as_str()))
            }
            KvKey::Meta(m) => format!("meta.{}", m.name()),
            KvKey::Pin(fp) => format!("pin.{}", fp.to_hex()),
        }
    }

    /// The key a bucket key names; `Ok(None)` for a kind this build does not know.
    pub fn parse(key: &str) -> Result<Option<KvKey>, StoreError> {
        let bad = |reason: String| StoreError::Corrupt {
            table: "tenancy bucket",
            key: key.to_owned(),
            reason,
        };
        let parts: Vec<&str> = key.split('.').collect();
        let name = |i: usize| untoken(parts.get(i).copied().unwrap_or("")).into_owned();
        let parsed =
            match (parts.first().copied(), parts.len()) {
                (Some("domain"), 2) => DomainName::new(name(1)).map(KvKey::Domain),
                (Some("store"), 3) => DomainName::new(name(1))
                    .and_then(|d| Ok(KvKey::Store(d, StoreName::new(name(2))?))),
                (Some("client"), 2) => ClientId::new(name(1)).map(KvKey::Client),
                (Some("device"), 3) => DomainName::new(name(1))
                    .and_then(|d| Ok(KvKey::Device(d, Serial::new(name(2))?))),
                (Some("pin"), 2) => {
                    return CertFingerprint::parse_hex(parts[1])
                        .map(|fp| Some(KvKey::Pin(fp)))
                        .map_err(|e| bad(e.to_string()))
                }
                (Some("meta"), 2) => {
                    return Ok(match parts[1] {
                        "signing_key" => Some(KvKey::Meta(MetaKey::SigningKey)),
                        "session_key" => Some(KvKey::Meta(MetaKey::SessionKey)),
                        _ => None,
                    })
                }
                (Some("domain" | "store" | "client" | "device" | "pin"), n) => {
                    return Err(bad(format!("{n} tokens")))
                }
                _ => return Ok(None),
            };
        parsed.map(Some).map_err(|e| bad(e.to_string()))
    }
}

/// `client.<id>` value: the domain beside what redb keeps under `(domain, id)`.
#[derive(Serialize, Deserialize)]
struct ClientValue {
    domain: String,
    scope: ScopeJson,
    secret_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_secret: Option<super::codec::PreviousValue>,
}

/// Encodes a client record as the cluster stores it.
pub(crate) fn encode_client(record: &ClientRecord) -> Result<Vec<u8>, StoreError> {
    simd_json::to_vec(&ClientValue {
        domain: record.domain.as_str().to_owned(),
        scope: record.scope.to_json(),
        secret_hash: record.secret_hash.as_phc().to_owned(),
        previous_secret: super::codec::PreviousValue::of(&record.previous_secret),
    })
    .map_err(StoreError::storage)
}

/// Decodes `client.<id>`.
pub(crate) fn decode_client(
    client_id: &ClientId,
    bytes: &[u8],
) -> Result<ClientRecord, StoreError> {
    let key = KvKey::Client(client_id.clone()).to_key();
    let corrupt = |reason: String| StoreError::Corrupt {
        table: "tenancy bucket",
        key: key.clone(),
        reason,
    };
    let mut buf = bytes.to_vec();
    let value: ClientValue =
        simd_json::serde::from_slice(&mut buf).map_err(|e| corrupt(e.to_string()))?;
    Ok(ClientRecord {
        domain: DomainName::new(value.domain).map_err(|e| corrupt(e.to_string()))?,
        client_id: client_id.clone(),
        scope: value
            .scope
            .into_scope()
            .map_err(|e| corrupt(e.to_string()))?,
        secret_hash: SecretHash::from_phc(value.secret_hash).map_err(|e| corrupt(e.to_string()))?,
        previous_secret: value
            .previous_secret
            .map(super::codec::PreviousValue::into_previous)
            .transpose()
            .map_err(corrupt)?,
    })
}

/// Encodes a store record (the redb format).
pub(crate) fn encode_store(record: &StoreRecord) -> Result<Vec<u8>, StoreError> {
    codec::encode_store(record)
}

/// Decodes `store.<domain>.<store>`.
pub(crate) fn decode_store(
    domain: &DomainName,
    store: &StoreName,
    bytes: &[u8],
) -> Result<StoreRecord, StoreError> {
    codec::decode_store(domain.as_str(), store.as_str(), bytes)
}

/// Encodes a device record (the redb format).
pub(crate) fn encode_device(record: &DeviceRecord) -> Result<Vec<u8>, StoreError> {
    codec::encode_device(record)
}

/// Decodes `device.<domain>.<serial>`.
pub(crate) fn decode_device(
    domain: &DomainName,
    serial: &Serial,
    bytes: &[u8],
) -> Result<DeviceRecord, StoreError> {
    codec::decode_device(domain.as_str(), serial.as_str(), bytes)
}

/// Decodes a 32-byte key from `meta.*`.
pub(crate) fn decode_key(meta: MetaKey, bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt {
        table: "tenancy bucket",
        key: KvKey::Meta(meta).to_key(),
        reason: format!("expected 32 bytes, found {}", bytes.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{client_rec, d};
    use crate::tenancy::Scope;

    #[test]
    fn keys_round_trip_and_keep_dotted_names_apart() {
        let keys = [
            KvKey::Domain(d("acme.com")),
            KvKey::Store(d("a.b"), StoreName::new("c").unwrap()),
            KvKey::Store(d("a"), StoreName::new("b.c").unwrap()),
            KvKey::Client(ClientId::new("c.1").unwrap()),
            KvKey::Device(d("acme"), Serial::new("12345678").unwrap()),
            KvKey::Meta(MetaKey::SigningKey),
            KvKey::Meta(MetaKey::SessionKey),
        ];
        for key in &keys {
            assert_eq!(KvKey::parse(&key.to_key()).unwrap().as_ref(), Some(key));
        }
        assert_eq!(keys[1].to_key(), "store.a=b.c");
        assert_eq!(keys[2].to_key(), "store.a.b=c");
    }

    #[test]
    fn unknown_kinds_are_skipped_and_malformed_keys_reported() {
        assert_eq!(KvKey::parse("later.feature").unwrap(), None);
        assert_eq!(KvKey::parse("meta.later").unwrap(), None);
        assert!(matches!(
            KvKey::parse("device.acme"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            KvKey::parse("device.acme.12-34"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_client_value_carries_its_domain() {
        let record = client_rec(
            "acme.com",
            "c1",
            Scope::Store(StoreName::new("s1").unwrap()),
        );
        let bytes = encode_client(&record).unwrap();
        assert!(std::str::from_utf8(&bytes).unwrap().starts_with(
            r#"{"domain":"acme.com","scope":{"store":"s1"},"secret_hash":"$argon2id$"#
        ));
        assert_eq!(decode_client(&record.client_id, &bytes).unwrap(), record);
        assert!(matches!(
            decode_client(&record.client_id, b"{}"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn meta_keys_are_32_bytes() {
        assert_eq!(decode_key(MetaKey::SigningKey, &[7; 32]).unwrap(), [7; 32]);
        assert!(decode_key(MetaKey::SessionKey, &[7; 31]).is_err());
    }
}

/// `pin.<fingerprint>` value: the device it names.
#[derive(Serialize, Deserialize)]
struct PinValue {
    domain: String,
    serial: String,
}

/// Encodes the device a pin names.
pub(crate) fn encode_pin(domain: &DomainName, serial: &Serial) -> Result<Vec<u8>, StoreError> {
    simd_json::to_vec(&PinValue {
        domain: domain.as_str().to_owned(),
        serial: serial.as_str().to_owned(),
    })
    .map_err(StoreError::storage)
}

/// Decodes `pin.<fingerprint>`.
pub(crate) fn decode_pin(
    fingerprint: &CertFingerprint,
    bytes: &[u8],
) -> Result<(DomainName, Serial), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: "tenancy bucket",
        key: KvKey::Pin(*fingerprint).to_key(),
        reason,
    };
    let mut buf = bytes.to_vec();
    let value: PinValue =
        simd_json::serde::from_slice(&mut buf).map_err(|e| corrupt(e.to_string()))?;
    Ok((
        DomainName::new(value.domain).map_err(|e| corrupt(e.to_string()))?,
        Serial::new(value.serial).map_err(|e| corrupt(e.to_string()))?,
    ))
}
