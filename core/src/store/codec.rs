//! The on-disk encoding of store values: small JSON objects with explicit field names.
//!
//! These structs are the file format, kept apart from the record types so that a change to
//! a Rust type cannot silently change what is on disk. Keys are the names themselves
//! (see `redb_store`); values carry the rest. Unknown fields are ignored on read, so a
//! later schema may add optional fields without a migration.

use serde::{Deserialize, Serialize};

use super::{ClientRecord, DeviceRecord, StoreError, StoreRecord};
use crate::ids::{ClientId, DeviceModelName, DomainName, Serial, StoreName};
use crate::tenancy::{CertFingerprint, PreviousSecret, ScopeJson, SecretHash};

/// `stores` value: `{"merchant":"m1"}`.
#[derive(Serialize, Deserialize)]
struct StoreValue {
    merchant: String,
}

/// `clients` value: `{"scope":{"store":"s1"},"secret_hash":"$argon2id$…"}`, and after a
/// rotation `"previous_secret":{"hash":"$argon2id$…","valid_until":1767225600}` (an
/// optional field: files without it read as before, no migration).
#[derive(Serialize, Deserialize)]
struct ClientValue {
    scope: ScopeJson,
    secret_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_secret: Option<PreviousValue>,
}

/// A rotated-out secret in a `clients` value (the cluster's client values carry the same).
#[derive(Serialize, Deserialize)]
pub(crate) struct PreviousValue {
    hash: String,
    valid_until: u64,
}

impl PreviousValue {
    /// The stored form of a client's previous secret.
    pub(crate) fn of(previous: &Option<PreviousSecret>) -> Option<PreviousValue> {
        previous.as_ref().map(|p| PreviousValue {
            hash: p.hash.as_phc().to_owned(),
            valid_until: p.valid_until,
        })
    }

    /// Back to the record's form; `Err` names what is wrong with the hash.
    pub(crate) fn into_previous(self) -> Result<PreviousSecret, String> {
        Ok(PreviousSecret {
            hash: SecretHash::from_phc(self.hash).map_err(|e| e.to_string())?,
            valid_until: self.valid_until,
        })
    }
}

/// `devices` value: `{"make":"ingenico","model":"axium","store":"s1","enabled":true}`, plus
/// `"client_cert_sha256":["<64 lowercase hex>",…]` when the device has pins (schema v4;
/// absent in older values and for devices without pins).
#[derive(Serialize, Deserialize)]
struct DeviceValue {
    make: String,
    model: String,
    store: String,
    enabled: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    client_cert_sha256: Vec<String>,
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    simd_json::to_vec(value).map_err(StoreError::storage)
}

fn from_json<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    // simd-json parses in place: work on a copy.
    let mut buf = bytes.to_vec();
    simd_json::serde::from_slice(&mut buf).map_err(|e| corrupt(table, key, e))
}

fn corrupt(table: &'static str, key: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

/// Encodes a store record's value.
pub(super) fn encode_store(record: &StoreRecord) -> Result<Vec<u8>, StoreError> {
    to_json(&StoreValue {
        merchant: record.merchant.as_str().to_owned(),
    })
}

/// Decodes a store record from its key and value (the cluster's replica reads stores back;
/// redb only checks that they exist).
pub(super) fn decode_store(
    domain: &str,
    store: &str,
    bytes: &[u8],
) -> Result<StoreRecord, StoreError> {
    let key = format!("{domain}/{store}");
    let value: StoreValue = from_json("stores", &key, bytes)?;
    let bad = |e: crate::ids::IdError| corrupt("stores", &key, e);
    Ok(StoreRecord {
        domain: DomainName::new(domain).map_err(bad)?,
        store: StoreName::new(store).map_err(bad)?,
        merchant: crate::ids::MerchantName::new(value.merchant).map_err(bad)?,
    })
}

/// Encodes a client record's value.
pub(super) fn encode_client(record: &ClientRecord) -> Result<Vec<u8>, StoreError> {
    to_json(&ClientValue {
        scope: record.scope.to_json(),
        secret_hash: record.secret_hash.as_phc().to_owned(),
        previous_secret: PreviousValue::of(&record.previous_secret),
    })
}

/// Decodes a client record from its key and value.
pub(super) fn decode_client(
    domain: &str,
    client_id: &str,
    bytes: &[u8],
) -> Result<ClientRecord, StoreError> {
    let key = format!("{domain}/{client_id}");
    let value: ClientValue = from_json("clients", &key, bytes)?;
    let bad = |e: crate::ids::IdError| corrupt("clients", &key, e);
    Ok(ClientRecord {
        domain: DomainName::new(domain).map_err(bad)?,
        client_id: ClientId::new(client_id).map_err(bad)?,
        scope: value.scope.into_scope().map_err(bad)?,
        secret_hash: SecretHash::from_phc(value.secret_hash)
            .map_err(|e| corrupt("clients", &key, e))?,
        previous_secret: value
            .previous_secret
            .map(PreviousValue::into_previous)
            .transpose()
            .map_err(|e| corrupt("clients", &key, e))?,
    })
}

/// Encodes a device record's value.
pub(super) fn encode_device(record: &DeviceRecord) -> Result<Vec<u8>, StoreError> {
    to_json(&DeviceValue {
        make: record.make.as_str().to_owned(),
        model: record.model.as_str().to_owned(),
        store: record.store.as_str().to_owned(),
        enabled: record.enabled,
        client_cert_sha256: record
            .client_cert_sha256
            .iter()
            .map(CertFingerprint::to_hex)
            .collect(),
    })
}

/// Decodes a device record from its key and value.
pub(super) fn decode_device(
    domain: &str,
    serial: &str,
    bytes: &[u8],
) -> Result<DeviceRecord, StoreError> {
    let key = format!("{domain}/{serial}");
    let value: DeviceValue = from_json("devices", &key, bytes)?;
    let bad = |e: crate::ids::IdError| corrupt("devices", &key, e);
    Ok(DeviceRecord {
        domain: DomainName::new(domain).map_err(bad)?,
        serial: Serial::new(serial).map_err(bad)?,
        make: DeviceModelName::new(value.make).map_err(bad)?,
        model: DeviceModelName::new(value.model).map_err(bad)?,
        store: StoreName::new(value.store).map_err(bad)?,
        enabled: value.enabled,
        client_cert_sha256: value
            .client_cert_sha256
            .iter()
            .map(|hex| CertFingerprint::parse_hex(hex).map_err(|e| corrupt("devices", &key, e)))
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::device_rec;

    #[test]
    fn device_format_is_explicit_json() {
        let bytes = encode_device(&device_rec("acme", "123", "s1")).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"make":"ingenico","model":"axium","store":"s1","enabled":true}"#
        );
        assert_eq!(
            decode_device("acme", "123", &bytes).unwrap(),
            device_rec("acme", "123", "s1")
        );
    }

    #[test]
    fn pins_are_stored_as_lowercase_hex_and_older_values_have_none() {
        let mut pinned = device_rec("acme", "123", "s1");
        pinned.client_cert_sha256 = vec![CertFingerprint::of_der(b"abc")];
        let bytes = encode_device(&pinned).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"make":"ingenico","model":"axium","store":"s1","enabled":true,"client_cert_sha256":["ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"]}"#
        );
        assert_eq!(decode_device("acme", "123", &bytes).unwrap(), pinned);
        // A v2 value (no field) decodes with no pins.
        let old = br#"{"make":"ingenico","model":"axium","store":"s1","enabled":false}"#;
        assert!(decode_device("acme", "123", old)
            .unwrap()
            .client_cert_sha256
            .is_empty());
        let bad =
            br#"{"make":"a","model":"m","store":"s","enabled":true,"client_cert_sha256":["xyz"]}"#;
        assert!(matches!(
            decode_device("acme", "123", bad),
            Err(StoreError::Corrupt {
                table: "devices",
                ..
            })
        ));
    }

    #[test]
    fn store_format_round_trips() {
        let record = crate::store::conformance::store_rec("acme", "s1");
        let bytes = encode_store(&record).unwrap();
        assert_eq!(bytes, br#"{"merchant":"m1"}"#);
        assert_eq!(decode_store("acme", "s1", &bytes).unwrap(), record);
    }

    #[test]
    fn client_scope_format() {
        use crate::store::conformance::client_rec;
        use crate::tenancy::Scope;
        let store_scoped = client_rec("acme", "c1", Scope::Store(StoreName::new("s1").unwrap()));
        let bytes = encode_client(&store_scoped).unwrap();
        assert!(std::str::from_utf8(&bytes)
            .unwrap()
            .starts_with(r#"{"scope":{"store":"s1"},"secret_hash":"$argon2id$"#));
        assert_eq!(decode_client("acme", "c1", &bytes).unwrap(), store_scoped);
        let wide = client_rec("acme", "c2", Scope::Domain);
        let bytes = encode_client(&wide).unwrap();
        assert!(std::str::from_utf8(&bytes)
            .unwrap()
            .starts_with(r#"{"scope":{},"#));
        assert_eq!(decode_client("acme", "c2", &bytes).unwrap(), wide);
    }

    #[test]
    fn corrupt_values_are_reported_not_panicked() {
        let err = decode_device("acme", "123", b"{not json").unwrap_err();
        assert!(matches!(
            err,
            StoreError::Corrupt {
                table: "devices",
                ..
            }
        ));
        let err = decode_device(
            "acme",
            "123",
            br#"{"make":"a-b","model":"m","store":"s","enabled":true}"#,
        )
        .unwrap_err();
        assert_eq!(err.status(), 500);
        let err = decode_client("acme", "c", br#"{"scope":{},"secret_hash":"nope"}"#).unwrap_err();
        assert!(matches!(
            err,
            StoreError::Corrupt {
                table: "clients",
                ..
            }
        ));
    }
}
