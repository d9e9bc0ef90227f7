//! Devices that authenticate with a TLS client certificate (PROTOCOL.md §2a): which
//! device a certificate's fingerprint identifies, once the TLS handshake has proved that
//! the client holds the certificate's key.

use super::AuthError;
use crate::store::Store;
use crate::tenancy::{CertFingerprint, DeviceRecord};

/// The device the client certificate with `fingerprint` identifies.
///
/// §2a: "A certificate pinned to no device, or pinned to a disabled device, answers `403`
/// before the upgrade and counts as a failed login for its address (§1)":
/// [`AuthError::CertificateNotPinned`] and [`AuthError::DeviceDisabled`], both `403`.
/// A store failure is [`AuthError::Storage`] (`500`, not the client's doing).
pub fn identify_device<S: Store + ?Sized>(
    store: &S,
    fingerprint: &CertFingerprint,
) -> Result<DeviceRecord, AuthError> {
    match store.find_device_by_fingerprint(fingerprint)? {
        None => Err(AuthError::CertificateNotPinned),
        Some(device) if !device.enabled => Err(AuthError::DeviceDisabled {
            serial: device.serial.to_string(),
        }),
        Some(device) => Ok(device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DomainName;
    use crate::store::conformance::{device_rec, store_rec};
    use crate::store::MemStore;

    #[test]
    fn a_pinned_enabled_device_is_identified_anything_else_is_403() {
        let store = MemStore::new();
        store
            .create_domain(&DomainName::new("acme").expect("name"))
            .expect("domain");
        store.create_store(&store_rec("acme", "s1")).expect("store");
        let mut device = device_rec("acme", "12345678", "s1");
        let fp = CertFingerprint::of_der(b"terminal certificate");
        device.client_cert_sha256 = vec![fp];
        store.create_device(&device).expect("device");

        assert_eq!(identify_device(&store, &fp), Ok(device.clone()));
        let unknown = CertFingerprint::of_der(b"another certificate");
        let err = identify_device(&store, &unknown).expect_err("not pinned");
        assert_eq!(err, AuthError::CertificateNotPinned);
        assert_eq!((err.status(), err.close_code()), (403, 1008));
        store
            .set_device_enabled(&device.domain, &device.serial, false)
            .expect("disable");
        let err = identify_device(&store, &fp).expect_err("disabled");
        assert!(matches!(err, AuthError::DeviceDisabled { .. }));
        assert_eq!(err.status(), 403);
        // The error never carries the fingerprint (it is never logged).
        assert!(!AuthError::CertificateNotPinned
            .to_string()
            .contains(&fp.to_hex()));
    }
}
