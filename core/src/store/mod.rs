//! Durable tenancy: domains, their merchants' stores, clients (hashed secrets) and devices,
//! plus the token signing key.
//!
//! [`Store`] is the interface the admin API, the token endpoint and the relay use;
//! [`RedbStore`] keeps it in `<data_dir>/posrelay.redb` (every write committed durably
//! before it returns, PROTOCOL.md §9), [`MemStore`] in memory for tests. In a cluster
//! (PROTOCOL.md §12) `cluster::JetStreamStore` keeps it in a JetStream KV bucket laid out
//! as [`kv_layout`] says, and answers reads from a [`replica::Replica`].
//!
//! Integrity rules, the same in every implementation: a store, client or device needs its
//! domain (and a device or store-scoped client its store); names are unique per domain.
#![forbid(unsafe_code)]

mod codec;
mod error;
pub mod kv_layout;
mod mem;
mod redb_store;
mod reliable_log;
pub mod replica;
mod schema;

pub use crate::tenancy::{ClientRecord, DeviceRecord, StoreRecord};
pub use error::StoreError;
pub use mem::MemStore;
pub use redb_store::{create_private_dir, RedbStore, StoreState};
pub use schema::SCHEMA_VERSION;

use crate::ids::{ClientId, DomainName, Serial, StoreName};
use crate::tenancy::{CertFingerprint, SecretHash};

/// The durable tenancy operations. Object safe: `&dyn Store` works.
///
/// Every write either succeeds completely or changes nothing.
pub trait Store {
    /// Creates a domain. `DuplicateDomain` if it exists.
    fn create_domain(&self, domain: &DomainName) -> Result<(), StoreError>;

    /// Whether the domain exists.
    fn domain_exists(&self, domain: &DomainName) -> Result<bool, StoreError>;

    /// Creates a store of a merchant. `UnknownDomain`, `DuplicateStore`.
    fn create_store(&self, record: &StoreRecord) -> Result<(), StoreError>;

    /// Whether the store exists in the domain.
    fn store_exists(&self, domain: &DomainName, store: &StoreName) -> Result<bool, StoreError>;

    /// Creates a client. `UnknownDomain`, `UnknownStore` (store scope), `DuplicateClient`.
    fn create_client(&self, record: &ClientRecord) -> Result<(), StoreError>;

    /// Deletes a client: its tokens stop verifying. `UnknownDomain`, `UnknownClient`.
    fn delete_client(&self, domain: &DomainName, client_id: &ClientId) -> Result<(), StoreError>;

    /// Replaces a client's stored secret hash with `new` if it is still `old` (a hash
    /// migrated after a successful verification, issue 12); `Ok(false)` when the client is
    /// gone or its hash changed meanwhile (nothing written).
    fn replace_client_secret_hash(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
        old: &SecretHash,
        new: &SecretHash,
    ) -> Result<bool, StoreError>;

    /// The client, or `None` if it or its domain does not exist.
    fn get_client(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
    ) -> Result<Option<ClientRecord>, StoreError>;

    /// The client with this id in whichever domain it belongs to (client ids are unique
    /// across domains), or `None`. Used by device registration, which names no domain.
    fn find_client(&self, client_id: &ClientId) -> Result<Option<ClientRecord>, StoreError>;

    /// Provisions a device, with its pinned certificate fingerprints (§2a). `UnknownDomain`,
    /// `UnknownStore`, `DuplicateDevice`, `FingerprintPinned` (to another device).
    fn create_device(&self, record: &DeviceRecord) -> Result<(), StoreError>;

    /// Enables or disables a device; returns it as now stored. `UnknownDomain`, `UnknownDevice`.
    fn set_device_enabled(
        &self,
        domain: &DomainName,
        serial: &Serial,
        enabled: bool,
    ) -> Result<DeviceRecord, StoreError>;

    /// The device, or `None` if it or its domain does not exist.
    fn get_device(
        &self,
        domain: &DomainName,
        serial: &Serial,
    ) -> Result<Option<DeviceRecord>, StoreError>;

    /// The domain's devices ordered by serial. `UnknownDomain`.
    fn list_devices(&self, domain: &DomainName) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Replaces the device's pinned client certificate fingerprints (§9 PATCH
    /// `client_cert_sha256`); returns the device as now stored. `UnknownDomain`,
    /// `UnknownDevice`, `FingerprintPinned` (pinned to another device: nothing changes).
    fn set_device_pins(
        &self,
        domain: &DomainName,
        serial: &Serial,
        pins: &[CertFingerprint],
    ) -> Result<DeviceRecord, StoreError>;

    /// The device a client certificate fingerprint is pinned to, in whichever domain
    /// (a fingerprint is pinned to at most one device across domains: the mTLS listener
    /// names no domain, §2a), or `None`.
    fn find_device_by_fingerprint(
        &self,
        fingerprint: &CertFingerprint,
    ) -> Result<Option<DeviceRecord>, StoreError>;
    /// Every domain, ordered by name.
    fn list_domains(&self) -> Result<Vec<DomainName>, StoreError>;

    /// Deletes an empty domain. `UnknownDomain`; `NotEmpty` while it has stores,
    /// clients or devices (delete those first: nothing is deleted by implication).
    fn delete_domain(&self, domain: &DomainName) -> Result<(), StoreError>;

    /// The domain's stores ordered by name. `UnknownDomain`.
    fn list_stores(&self, domain: &DomainName) -> Result<Vec<StoreRecord>, StoreError>;

    /// Deletes a store no device and no client belongs to. `UnknownDomain`,
    /// `UnknownStore`; `NotEmpty` while a device or a store-scoped client names it.
    fn delete_store(&self, domain: &DomainName, store: &StoreName) -> Result<(), StoreError>;

    /// The domain's clients ordered by id (with their secret hashes). `UnknownDomain`.
    fn list_clients(&self, domain: &DomainName) -> Result<Vec<ClientRecord>, StoreError>;

    /// Replaces the client's secret hash with `new`, keeping the current one as its
    /// previous secret, good until `old_valid_until` (unix seconds; an older previous
    /// secret is dropped). Returns the client as now stored. `UnknownDomain`,
    /// `UnknownClient`.
    fn rotate_client_secret(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
        new: &crate::tenancy::SecretHash,
        old_valid_until: u64,
    ) -> Result<ClientRecord, StoreError>;

    /// The token signing key: the stored one, or `fresh` (32 bytes from a CSPRNG, passed in
    /// by the caller) stored now and returned. It survives restarts so that access tokens
    /// stay valid until they expire (PROTOCOL.md §6).
    fn load_or_create_signing_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError>;

    /// The key that derives `session_id`s (`relay::keyring`): the stored one, or `fresh`
    /// (32 bytes from a CSPRNG, passed in by the caller) stored now and returned. It
    /// survives restarts so that a reliable claim keeps its `session_id` (PROTOCOL.md §11:
    /// "the claim (with its `session_id` …) resumes where it was"); in a cluster every node
    /// gets the same key (§12). A plain device's `session_id` is then also stable across
    /// restarts, which §2 allows ("for as long as the relay runs" is a minimum).
    fn load_or_create_session_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError>;

    /// Brings this process's view up to the store's last write, wherever it was made
    /// (PROTOCOL.md §12: "an admin call answered by any node … holds on every node"): a
    /// cluster node's replica catches up with the bucket's last revision; a local store
    /// has nothing to do. May wait on the network: call it off the shards, before
    /// concluding that something a client presents does not exist.
    fn read_latest(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// `1 store`, `2 stores`: for [`StoreError::NotEmpty`].
pub(crate) fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        impl<T: Store + ?Sized> Store for $ty {
            fn create_domain(&self, domain: &DomainName) -> Result<(), StoreError> {
                (**self).create_domain(domain)
            }
            fn domain_exists(&self, domain: &DomainName) -> Result<bool, StoreError> {
                (**self).domain_exists(domain)
            }
            fn create_store(&self, record: &StoreRecord) -> Result<(), StoreError> {
                (**self).create_store(record)
            }
            fn store_exists(&self, domain: &DomainName, store: &StoreName) -> Result<bool, StoreError> {
                (**self).store_exists(domain, store)
            }
            fn create_client(&self, record: &ClientRecord) -> Result<(), StoreError> {
                (**self).create_client(record)
            }
            fn delete_client(&self, domain: &DomainName, client_id: &ClientId) -> Result<(), StoreError> {
                (**self).delete_client(domain, client_id)
            }
            fn replace_client_secret_hash(&self, domain: &DomainName, client_id: &ClientId, old: &SecretHash, new: &SecretHash) -> Result<bool, StoreError> {
                (**self).replace_client_secret_hash(domain, client_id, old, new)
            }
            fn get_client(&self, domain: &DomainName, client_id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
                (**self).get_client(domain, client_id)
            }
            fn find_client(&self, client_id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
                (**self).find_client(client_id)
            }
            fn create_device(&self, record: &DeviceRecord) -> Result<(), StoreError> {
                (**self).create_device(record)
            }
            fn set_device_enabled(&self, domain: &DomainName, serial: &Serial, enabled: bool) -> Result<DeviceRecord, StoreError> {
                (**self).set_device_enabled(domain, serial, enabled)
            }
            fn get_device(&self, domain: &DomainName, serial: &Serial) -> Result<Option<DeviceRecord>, StoreError> {
                (**self).get_device(domain, serial)
            }
            fn list_devices(&self, domain: &DomainName) -> Result<Vec<DeviceRecord>, StoreError> {
                (**self).list_devices(domain)
            }
            fn set_device_pins(&self, domain: &DomainName, serial: &Serial, pins: &[CertFingerprint]) -> Result<DeviceRecord, StoreError> {
                (**self).set_device_pins(domain, serial, pins)
            }
            fn find_device_by_fingerprint(&self, fingerprint: &CertFingerprint) -> Result<Option<DeviceRecord>, StoreError> {
                (**self).find_device_by_fingerprint(fingerprint)
            }
            fn list_domains(&self) -> Result<Vec<DomainName>, StoreError> {
                (**self).list_domains()
            }
            fn delete_domain(&self, domain: &DomainName) -> Result<(), StoreError> {
                (**self).delete_domain(domain)
            }
            fn list_stores(&self, domain: &DomainName) -> Result<Vec<StoreRecord>, StoreError> {
                (**self).list_stores(domain)
            }
            fn delete_store(&self, domain: &DomainName, store: &StoreName) -> Result<(), StoreError> {
                (**self).delete_store(domain, store)
            }
            fn list_clients(&self, domain: &DomainName) -> Result<Vec<ClientRecord>, StoreError> {
                (**self).list_clients(domain)
            }
            fn rotate_client_secret(&self, domain: &DomainName, client_id: &ClientId, new: &crate::tenancy::SecretHash, old_valid_until: u64) -> Result<ClientRecord, StoreError> {
                (**self).rotate_client_secret(domain, client_id, new, old_valid_until)
            }
            fn load_or_create_signing_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
                (**self).load_or_create_signing_key(fresh)
            }
            fn load_or_create_session_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
                (**self).load_or_create_session_key(fresh)
            }
            fn read_latest(&self) -> Result<(), StoreError> {
                (**self).read_latest()
            }
        }
    )*};
}

forward_store!(&T, std::sync::Arc<T>, std::rc::Rc<T>, Box<T>);

/// The behaviour every [`Store`] must show, run against each implementation.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use crate::ids::{DeviceModelName, MerchantName};
    use crate::tenancy::Scope;

    pub(crate) fn d(name: &str) -> DomainName {
        DomainName::new(name).unwrap()
    }

    pub(crate) fn store_rec(domain: &str, store: &str) -> StoreRecord {
        StoreRecord {
            domain: d(domain),
            store: StoreName::new(store).unwrap(),
            merchant: MerchantName::new("m1").unwrap(),
        }
    }

    pub(crate) fn device_rec(domain: &str, serial: &str, store: &str) -> DeviceRecord {
        DeviceRecord {
            domain: d(domain),
            serial: Serial::new(serial).unwrap(),
            make: DeviceModelName::new("ingenico").unwrap(),
            model: DeviceModelName::new("axium").unwrap(),
            store: StoreName::new(store).unwrap(),
            enabled: true,
            client_cert_sha256: Vec::new(),
        }
    }

    /// A made-up certificate fingerprint, different for each `n`.
    pub(crate) fn fp(n: u8) -> CertFingerprint {
        CertFingerprint::of_der(&[n])
    }

    /// Pins (§2a): several per device, one device per fingerprint across domains, found
    /// by fingerprint, replaced as a whole, kept by every other write.
    fn check_pins(s: &dyn Store) {
        let (a, b) = (d("pin-a"), d("pin-b"));
        for domain in [&a, &b] {
            s.create_domain(domain).unwrap();
        }
        s.create_store(&store_rec("pin-a", "s1")).unwrap();
        s.create_store(&store_rec("pin-b", "s1")).unwrap();
        let mut one = device_rec("pin-a", "1", "s1");
        one.client_cert_sha256 = vec![fp(1), fp(2)];
        s.create_device(&one).unwrap();
        assert_eq!(s.get_device(&a, &one.serial).unwrap(), Some(one.clone()));
        assert_eq!(
            s.find_device_by_fingerprint(&fp(1)).unwrap(),
            Some(one.clone())
        );
        assert_eq!(
            s.find_device_by_fingerprint(&fp(2)).unwrap(),
            Some(one.clone())
        );
        assert_eq!(s.find_device_by_fingerprint(&fp(9)).unwrap(), None);

        // A fingerprint pinned elsewhere refuses the create, in any domain, changing nothing.
        let mut twin = device_rec("pin-b", "1", "s1");
        twin.client_cert_sha256 = vec![fp(3), fp(2)];
        let err = s.create_device(&twin).unwrap_err();
        assert_eq!(
            err,
            StoreError::FingerprintPinned {
                position: 1,
                domain: "pin-a".into(),
                serial: "1".into()
            }
        );
        assert_eq!(err.status(), 409);
        assert_eq!(s.get_device(&b, &twin.serial).unwrap(), None);
        assert_eq!(s.find_device_by_fingerprint(&fp(3)).unwrap(), None);
        twin.client_cert_sha256 = vec![fp(3)];
        s.create_device(&twin).unwrap();

        // Replacing: rotation keeps one and adds one; the dropped one identifies nobody.
        let rotated = s.set_device_pins(&a, &one.serial, &[fp(2), fp(4)]).unwrap();
        assert_eq!(rotated.client_cert_sha256, vec![fp(2), fp(4)]);
        assert_eq!(s.find_device_by_fingerprint(&fp(1)).unwrap(), None);
        assert_eq!(
            s.find_device_by_fingerprint(&fp(4)).unwrap(),
            Some(rotated.clone())
        );
        // Pinned to another device: refused, nothing changes.
        let err = s
            .set_device_pins(&a, &one.serial, &[fp(5), fp(3)])
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::FingerprintPinned { position: 1, .. }
        ));
        assert_eq!(
            s.get_device(&a, &one.serial).unwrap(),
            Some(rotated.clone())
        );
        assert_eq!(s.find_device_by_fingerprint(&fp(5)).unwrap(), None);
        // The freed fingerprint can be pinned to another device.
        let moved = s
            .set_device_pins(&b, &twin.serial, &[fp(3), fp(1)])
            .unwrap();
        assert_eq!(s.find_device_by_fingerprint(&fp(1)).unwrap(), Some(moved));

        // Disabling keeps the pins (and the lookup says the device is disabled).
        let off = s.set_device_enabled(&a, &one.serial, false).unwrap();
        assert_eq!(off.client_cert_sha256, vec![fp(2), fp(4)]);
        let found = s.find_device_by_fingerprint(&fp(4)).unwrap().unwrap();
        assert!(!found.enabled);

        // Clearing the list.
        let cleared = s.set_device_pins(&a, &one.serial, &[]).unwrap();
        assert!(cleared.client_cert_sha256.is_empty());
        assert_eq!(s.find_device_by_fingerprint(&fp(2)).unwrap(), None);
        assert!(matches!(
            s.set_device_pins(&a, &Serial::new("404").unwrap(), &[fp(7)]),
            Err(StoreError::UnknownDevice { .. })
        ));
        assert!(matches!(
            s.set_device_pins(&d("ghost"), &one.serial, &[fp(7)]),
            Err(StoreError::UnknownDomain { .. })
        ));
    }

    pub(crate) fn client_rec(domain: &str, id: &str, scope: Scope) -> ClientRecord {
        ClientRecord {
            domain: d(domain),
            client_id: ClientId::new(id).unwrap(),
            scope,
            // Any well-formed argon2id PHC string: the store keeps it, never checks it.
            secret_hash: crate::tenancy::SecretHash::from_phc(
                "$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
            )
            .expect("a valid PHC string"),
            previous_secret: None,
        }
    }

    /// Every rule of the trait, in one pass over an empty store.
    /// Client ids are unique across domains and findable without the domain.
    fn check_client_index(s: &dyn Store) {
        let (a, b) = (d("idx-a"), d("idx-b"));
        s.create_domain(&a).unwrap();
        s.create_domain(&b).unwrap();
        let c = client_rec("idx-a", "unique1", Scope::Domain);
        s.create_client(&c).unwrap();
        assert_eq!(s.find_client(&c.client_id).unwrap(), Some(c.clone()));
        // The same id in another domain is refused: registration could not tell them apart.
        let twin = client_rec("idx-b", "unique1", Scope::Domain);
        assert!(matches!(
            s.create_client(&twin),
            Err(StoreError::DuplicateClient { .. })
        ));
        s.delete_client(&a, &c.client_id).unwrap();
        assert_eq!(s.find_client(&c.client_id).unwrap(), None);
        assert_eq!(
            s.find_client(&ClientId::new("never").unwrap()).unwrap(),
            None
        );
    }

    /// Listing and deleting domains, stores and clients: a delete never takes
    /// anything with it, and refuses while something still belongs to what it deletes.
    fn check_listing_and_deleting(s: &dyn Store) {
        let (a, b) = (d("zz-del-a"), d("zz-del-b"));
        s.create_domain(&b).unwrap();
        s.create_domain(&a).unwrap();
        let names: Vec<String> = s
            .list_domains()
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect();
        let (ia, ib) = (
            names.iter().position(|n| n == "zz-del-a").unwrap(),
            names.iter().position(|n| n == "zz-del-b").unwrap(),
        );
        assert!(ia < ib, "ordered by name: {names:?}");
        s.create_store(&store_rec("zz-del-a", "s2")).unwrap();
        s.create_store(&store_rec("zz-del-a", "s1")).unwrap();
        let stores = s.list_stores(&a).unwrap();
        assert_eq!(
            stores,
            vec![store_rec("zz-del-a", "s1"), store_rec("zz-del-a", "s2")]
        );
        assert_eq!(s.list_stores(&b).unwrap(), vec![]);
        assert!(matches!(
            s.list_stores(&d("ghost-l")),
            Err(StoreError::UnknownDomain { .. })
        ));
        let scoped = client_rec(
            "zz-del-a",
            "zzc2",
            Scope::Store(StoreName::new("s1").unwrap()),
        );
        let wide = client_rec("zz-del-a", "zzc1", Scope::Domain);
        s.create_client(&scoped).unwrap();
        s.create_client(&wide).unwrap();
        assert_eq!(
            s.list_clients(&a).unwrap(),
            vec![wide.clone(), scoped.clone()]
        );
        assert_eq!(s.list_clients(&b).unwrap(), vec![]);
        s.create_device(&device_rec("zz-del-a", "77", "s2"))
            .unwrap();
        // Something still belongs to it: refused, nothing changed.
        let s1 = StoreName::new("s1").unwrap();
        let s2 = StoreName::new("s2").unwrap();
        let err = s.delete_store(&a, &s1).unwrap_err();
        assert!(matches!(err, StoreError::NotEmpty { .. }), "{err:?}");
        assert_eq!(err.status(), 409);
        assert!(matches!(
            s.delete_store(&a, &s2),
            Err(StoreError::NotEmpty { .. })
        ));
        assert!(matches!(
            s.delete_domain(&a),
            Err(StoreError::NotEmpty { .. })
        ));
        assert_eq!(s.list_stores(&a).unwrap().len(), 2);
        assert!(matches!(
            s.delete_store(&a, &StoreName::new("s9").unwrap()),
            Err(StoreError::UnknownStore { .. })
        ));
        // Emptied in order, each delete works.
        s.delete_client(&a, &scoped.client_id).unwrap();
        s.delete_store(&a, &s1).unwrap();
        assert!(!s.store_exists(&a, &s1).unwrap());
        assert!(matches!(
            s.delete_domain(&a),
            Err(StoreError::NotEmpty { .. })
        ));
        s.delete_client(&a, &wide.client_id).unwrap();
        assert!(matches!(
            s.delete_domain(&a),
            Err(StoreError::NotEmpty { .. })
        ));
        // Devices have no delete yet: a domain with one stays.
        s.delete_domain(&b).unwrap();
        assert!(!s.domain_exists(&b).unwrap());
        assert!(matches!(
            s.delete_domain(&b),
            Err(StoreError::UnknownDomain { .. })
        ));
        assert!(!s.list_domains().unwrap().contains(&b));
    }

    /// Rotation keeps the current hash as the previous one, with its deadline, once.
    fn check_rotation(s: &dyn Store) {
        let dom = d("zz-rot");
        s.create_domain(&dom).unwrap();
        let c = client_rec("zz-rot", "zzrot1", Scope::Domain);
        s.create_client(&c).unwrap();
        let second = crate::tenancy::SecretHash::from_phc(
            "$argon2id$v=19$m=8,t=1,p=1$YW5vdGhlcnNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
        )
        .unwrap();
        let rotated = s
            .rotate_client_secret(&dom, &c.client_id, &second, 1_000)
            .unwrap();
        assert_eq!(rotated.secret_hash, second);
        let previous = rotated.previous_secret.clone().unwrap();
        assert_eq!(
            (previous.hash, previous.valid_until),
            (c.secret_hash.clone(), 1_000)
        );
        assert_eq!(
            s.get_client(&dom, &c.client_id).unwrap(),
            Some(rotated.clone())
        );
        assert_eq!(s.find_client(&c.client_id).unwrap(), Some(rotated));
        // Again: the previous is now the second hash; the first is gone.
        let again = s
            .rotate_client_secret(&dom, &c.client_id, &c.secret_hash, 2_000)
            .unwrap();
        assert_eq!(again.previous_secret.unwrap().hash, second);
        assert!(matches!(
            s.rotate_client_secret(&dom, &ClientId::new("nobody").unwrap(), &second, 1),
            Err(StoreError::UnknownClient { .. })
        ));
        assert!(matches!(
            s.rotate_client_secret(&d("ghost-r"), &c.client_id, &second, 1),
            Err(StoreError::UnknownDomain { .. })
        ));
        s.delete_client(&dom, &c.client_id).unwrap();
        s.delete_domain(&dom).unwrap();
    }

    /// A migrated secret hash replaces the stored one only if that is still the old one.
    fn check_secret_hash_replacement(s: &dyn Store) {
        let dom = d("rehash");
        s.create_domain(&dom).unwrap();
        let c = client_rec("rehash", "rh1", Scope::Domain);
        s.create_client(&c).unwrap();
        let new = SecretHash::from_phc(
            "$hmac-sha256$v=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .unwrap();
        assert!(s
            .replace_client_secret_hash(&dom, &c.client_id, &c.secret_hash, &new)
            .unwrap());
        let got = s.get_client(&dom, &c.client_id).unwrap().unwrap();
        assert_eq!(got.secret_hash, new);
        assert_eq!(got.scope, c.scope, "nothing else changes");
        assert_eq!(s.find_client(&c.client_id).unwrap(), Some(got));
        // Not the hash it was any more (rotated meanwhile): nothing written.
        assert!(!s
            .replace_client_secret_hash(&dom, &c.client_id, &c.secret_hash, &c.secret_hash)
            .unwrap());
        assert_eq!(
            s.get_client(&dom, &c.client_id)
                .unwrap()
                .unwrap()
                .secret_hash,
            new
        );
        // Gone: nothing written.
        let ghost = ClientId::new("ghost").unwrap();
        assert!(!s
            .replace_client_secret_hash(&dom, &ghost, &new, &c.secret_hash)
            .unwrap());
        s.delete_client(&dom, &c.client_id).unwrap();
    }

    pub(crate) fn check(s: &dyn Store) {
        check_client_index(s);
        check_pins(s);
        check_rotation(s);
        check_listing_and_deleting(s);
        check_secret_hash_replacement(s);
        let acme = d("acme");
        assert!(!s.domain_exists(&acme).unwrap());
        assert!(matches!(
            s.create_store(&store_rec("acme", "s1")),
            Err(StoreError::UnknownDomain { .. })
        ));
        s.create_domain(&acme).unwrap();
        assert!(s.domain_exists(&acme).unwrap());
        assert!(matches!(
            s.create_domain(&acme),
            Err(StoreError::DuplicateDomain { .. })
        ));

        s.create_store(&store_rec("acme", "s1")).unwrap();
        let err = s.create_store(&store_rec("acme", "s1")).unwrap_err();
        assert!(matches!(err, StoreError::DuplicateStore { .. }));
        assert_eq!(err.status(), 409);
        assert!(s
            .store_exists(&acme, &StoreName::new("s1").unwrap())
            .unwrap());
        assert!(!s
            .store_exists(&acme, &StoreName::new("s2").unwrap())
            .unwrap());

        // Devices need their store; serials are unique per domain.
        let err = s.create_device(&device_rec("acme", "1", "s2")).unwrap_err();
        assert!(matches!(err, StoreError::UnknownStore { .. }));
        assert_eq!(err.status(), 404);
        s.create_device(&device_rec("acme", "2", "s1")).unwrap();
        s.create_device(&device_rec("acme", "1", "s1")).unwrap();
        assert!(matches!(
            s.create_device(&device_rec("acme", "1", "s1")),
            Err(StoreError::DuplicateDevice { .. })
        ));
        let serials: Vec<_> = s
            .list_devices(&acme)
            .unwrap()
            .into_iter()
            .map(|d| d.serial.as_str().to_owned())
            .collect();
        assert_eq!(serials, ["1", "2"]);
        let one = Serial::new("1").unwrap();
        assert_eq!(
            s.get_device(&acme, &one).unwrap(),
            Some(device_rec("acme", "1", "s1"))
        );
        let off = s.set_device_enabled(&acme, &one, false).unwrap();
        assert!(!off.enabled);
        assert!(!s.get_device(&acme, &one).unwrap().unwrap().enabled);
        assert!(matches!(
            s.set_device_enabled(&acme, &Serial::new("9").unwrap(), false),
            Err(StoreError::UnknownDevice { .. })
        ));

        // Clients: store scope needs the store; ids unique; delete removes.
        let bad = client_rec("acme", "c0", Scope::Store(StoreName::new("nope").unwrap()));
        assert!(matches!(
            s.create_client(&bad),
            Err(StoreError::UnknownStore { .. })
        ));
        let c1 = client_rec("acme", "c1", Scope::Store(StoreName::new("s1").unwrap()));
        s.create_client(&c1).unwrap();
        assert!(matches!(
            s.create_client(&c1),
            Err(StoreError::DuplicateClient { .. })
        ));
        assert_eq!(
            s.get_client(&acme, &c1.client_id).unwrap(),
            Some(c1.clone())
        );
        s.delete_client(&acme, &c1.client_id).unwrap();
        assert_eq!(s.get_client(&acme, &c1.client_id).unwrap(), None);
        assert!(matches!(
            s.delete_client(&acme, &c1.client_id),
            Err(StoreError::UnknownClient { .. })
        ));

        // Another domain sees nothing of acme's.
        let other = d("other");
        s.create_domain(&other).unwrap();
        assert_eq!(s.list_devices(&other).unwrap(), vec![]);
        assert_eq!(s.get_device(&other, &one).unwrap(), None);
        assert!(matches!(
            s.list_devices(&d("ghost")),
            Err(StoreError::UnknownDomain { .. })
        ));
        assert!(matches!(
            s.delete_client(&d("ghost"), &c1.client_id),
            Err(StoreError::UnknownDomain { .. })
        ));
        assert_eq!(s.get_client(&d("ghost"), &c1.client_id).unwrap(), None);

        // The first key stays.
        let key = s.load_or_create_signing_key([1; 32]).unwrap();
        assert_eq!(key, [1; 32]);
        assert_eq!(s.load_or_create_signing_key([2; 32]).unwrap(), [1; 32]);

        // The session key is its own: the first one stays, and it is not the signing key.
        assert_eq!(s.load_or_create_session_key([3; 32]).unwrap(), [3; 32]);
        assert_eq!(s.load_or_create_session_key([4; 32]).unwrap(), [3; 32]);
        assert_eq!(s.load_or_create_signing_key([5; 32]).unwrap(), [1; 32]);
    }
}
