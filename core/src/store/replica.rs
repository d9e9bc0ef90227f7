//! A node's replica of the cluster's tenancy: the bucket's keys (`kv_layout`), decoded,
//! kept current by applying what the bucket's watch delivers, in stream order.
//!
//! Pure state: the io side (`cluster::kv_store`) feeds it [`KvChange`]s and answers the
//! store's reads from it, so that a token check or a registration never waits on the
//! network. "Current" means: every change the watch has delivered so far. A write
//! acknowledged by JetStream through node A is in node B's replica once B's watch has
//! delivered it (normally within milliseconds; while B is cut off from NATS, B answers
//! from what it had). [`Replica::applied`] is the stream sequence up to which the replica
//! holds every change; a node reads its own writes by waiting until `applied` reaches the
//! sequence of the write's acknowledgement.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use super::kv_layout::{self, KvKey, MetaKey};
use super::{ClientRecord, DeviceRecord, StoreError, StoreRecord};
use crate::ids::{ClientId, DomainName, Serial, StoreName};
use crate::tenancy::CertFingerprint;

/// One change the bucket's watch delivered.
#[derive(Debug, Clone, Copy)]
pub struct KvChange<'a> {
    /// The bucket key.
    pub key: &'a str,
    /// Its stream sequence (the KV revision).
    pub revision: u64,
    /// The new value, or `None` for a delete or purge marker.
    pub value: Option<&'a [u8]>,
}

/// What the replica knows of one key: what a conditional write must expect
/// (`Nats-Expected-Last-Subject-Sequence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRevision {
    /// Never written (or its history is gone): a create expects 0.
    Absent,
    /// Holds a value written at this revision.
    Live(u64),
    /// Deleted by the marker at this revision: a create expects it.
    Deleted(u64),
}

impl KeyRevision {
    /// The last subject sequence a create must expect, or `None` if the key holds a value.
    pub fn expected_for_create(self) -> Option<u64> {
        match self {
            KeyRevision::Absent => Some(0),
            KeyRevision::Deleted(revision) => Some(revision),
            KeyRevision::Live(_) => None,
        }
    }
}

/// The decoded tenancy, as of [`Replica::applied`].
#[derive(Debug, Default)]
pub struct Replica {
    domains: BTreeMap<DomainName, u64>,
    stores: BTreeMap<(DomainName, StoreName), (StoreRecord, u64)>,
    clients: BTreeMap<ClientId, (ClientRecord, u64)>,
    devices: BTreeMap<(DomainName, Serial), (DeviceRecord, u64)>,
    meta: BTreeMap<MetaKey, (Vec<u8>, u64)>,
    pins: BTreeMap<CertFingerprint, ((DomainName, Serial), u64)>,
    deleted: BTreeMap<KvKey, u64>,
    applied: u64,
}

impl Replica {
    /// An empty replica (nothing applied).
    pub fn new() -> Self {
        Self::default()
    }

    /// The stream sequence up to which every change has been applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Applies one change. `applied` advances even when the change is refused (a value
    /// that does not decode leaves its key absent, and the error says which key), so that
    /// one bad record never stalls the replica; a change older than what the key already
    /// holds (a watch delivering again) changes nothing.
    pub fn handle_change(&mut self, change: KvChange<'_>) -> Result<(), StoreError> {
        self.applied = self.applied.max(change.revision);
        let Some(key) = KvKey::parse(change.key)? else {
            return Ok(());
        };
        if let KeyRevision::Live(held) | KeyRevision::Deleted(held) = self.revision(&key) {
            if change.revision <= held {
                return Ok(());
            }
        }
        self.remove(&key);
        let Some(bytes) = change.value else {
            self.deleted.insert(key, change.revision);
            return Ok(());
        };
        self.deleted.remove(&key);
        let rev = change.revision;
        match key {
            KvKey::Domain(domain) => {
                self.domains.insert(domain, rev);
            }
            KvKey::Store(domain, store) => {
                let record = kv_layout::decode_store(&domain, &store, bytes)?;
                self.stores.insert((domain, store), (record, rev));
            }
            KvKey::Client(id) => {
                let record = kv_layout::decode_client(&id, bytes)?;
                self.clients.insert(id, (record, rev));
            }
            KvKey::Device(domain, serial) => {
                let record = kv_layout::decode_device(&domain, &serial, bytes)?;
                self.devices.insert((domain, serial), (record, rev));
            }
            KvKey::Meta(meta) => {
                self.meta.insert(meta, (bytes.to_vec(), rev));
            }
            KvKey::Pin(fp) => {
                let device = kv_layout::decode_pin(&fp, bytes)?;
                self.pins.insert(fp, (device, rev));
            }
        }
        Ok(())
    }

    fn remove(&mut self, key: &KvKey) {
        match key {
            KvKey::Domain(d) => {
                self.domains.remove(d);
            }
            KvKey::Store(d, s) => {
                self.stores.remove(&(d.clone(), s.clone()));
            }
            KvKey::Client(id) => {
                self.clients.remove(id);
            }
            KvKey::Device(d, s) => {
                self.devices.remove(&(d.clone(), s.clone()));
            }
            KvKey::Meta(m) => {
                self.meta.remove(m);
            }
            KvKey::Pin(fp) => {
                self.pins.remove(fp);
            }
        }
    }

    /// What the replica knows of `key`.
    pub fn revision(&self, key: &KvKey) -> KeyRevision {
        let live = match key {
            KvKey::Domain(d) => self.domains.get(d).copied(),
            KvKey::Store(d, s) => self.stores.get(&(d.clone(), s.clone())).map(|v| v.1),
            KvKey::Client(id) => self.clients.get(id).map(|v| v.1),
            KvKey::Device(d, s) => self.devices.get(&(d.clone(), s.clone())).map(|v| v.1),
            KvKey::Meta(m) => self.meta.get(m).map(|v| v.1),
            KvKey::Pin(fp) => self.pins.get(fp).map(|v| v.1),
        };
        match (live, self.deleted.get(key)) {
            (Some(revision), _) => KeyRevision::Live(revision),
            (None, Some(revision)) => KeyRevision::Deleted(*revision),
            (None, None) => KeyRevision::Absent,
        }
    }

    /// Every domain, ordered by name.
    pub fn domains(&self) -> Vec<DomainName> {
        self.domains.keys().cloned().collect()
    }

    /// The domain's stores, ordered by name.
    pub fn stores_of(&self, domain: &DomainName) -> Vec<StoreRecord> {
        self.stores
            .iter()
            .filter(|((d, _), _)| d == domain)
            .map(|(_, (r, _))| r.clone())
            .collect()
    }

    /// The domain's clients, ordered by id.
    pub fn clients_of(&self, domain: &DomainName) -> Vec<ClientRecord> {
        self.clients
            .values()
            .filter(|(r, _)| r.domain == *domain)
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The devices of the domain (all of them, or those of one store).
    pub fn devices_of<'a>(
        &'a self,
        domain: &'a DomainName,
    ) -> impl Iterator<Item = &'a DeviceRecord> + 'a {
        self.devices
            .iter()
            .filter(move |((d, _), _)| d == domain)
            .map(|(_, (r, _))| r)
    }

    /// The device a pin record names, with the pin's revision (the record may be stale:
    /// check that the device still lists the fingerprint).
    pub fn pin(&self, fp: &CertFingerprint) -> Option<(&(DomainName, Serial), u64)> {
        self.pins.get(fp).map(|(d, rev)| (d, *rev))
    }

    /// Whether the domain exists.
    pub fn domain_exists(&self, domain: &DomainName) -> bool {
        self.domains.contains_key(domain)
    }

    /// Whether the store exists in the domain.
    pub fn store_exists(&self, domain: &DomainName, store: &StoreName) -> bool {
        self.stores.contains_key(&(domain.clone(), store.clone()))
    }

    /// The client with this id, in whichever domain, with its revision.
    pub fn client(&self, client_id: &ClientId) -> Option<(&ClientRecord, u64)> {
        self.clients.get(client_id).map(|(r, rev)| (r, *rev))
    }

    /// The client with this id if it belongs to `domain`.
    pub fn domain_client(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
    ) -> Option<&ClientRecord> {
        self.clients
            .get(client_id)
            .map(|(r, _)| r)
            .filter(|r| r.domain == *domain)
    }

    /// The device, with its revision.
    pub fn device(&self, domain: &DomainName, serial: &Serial) -> Option<(&DeviceRecord, u64)> {
        self.devices
            .get(&(domain.clone(), serial.clone()))
            .map(|(r, rev)| (r, *rev))
    }

    /// The domain's devices ordered by serial, or `None` if the domain does not exist.
    pub fn list_devices(&self, domain: &DomainName) -> Option<Vec<DeviceRecord>> {
        if !self.domain_exists(domain) {
            return None;
        }
        Some(
            self.devices
                .range(
                    (
                        domain.clone(),
                        Serial::new("0").unwrap_or_else(|_| unreachable!()),
                    )..,
                )
                .take_while(|((d, _), _)| d == domain)
                .map(|(_, (record, _))| record.clone())
                .collect(),
        )
    }

    /// A shared 32-byte key, if it has been stored.
    pub fn meta_key(&self, meta: MetaKey) -> Result<Option<[u8; 32]>, StoreError> {
        self.meta
            .get(&meta)
            .map(|(bytes, _)| kv_layout::decode_key(meta, bytes))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{client_rec, d, device_rec, store_rec};
    use crate::tenancy::Scope;

    fn put<'a>(key: &'a str, revision: u64, value: &'a [u8]) -> KvChange<'a> {
        KvChange {
            key,
            revision,
            value: Some(value),
        }
    }

    fn del(key: &str, revision: u64) -> KvChange<'_> {
        KvChange {
            key,
            revision,
            value: None,
        }
    }

    #[test]
    fn applies_the_history_and_answers_the_reads() {
        let mut r = Replica::new();
        r.handle_change(put("domain.acme", 1, b"{}")).unwrap();
        let store = kv_layout::encode_store(&store_rec("acme", "s1")).unwrap();
        r.handle_change(put("store.acme.s1", 2, &store)).unwrap();
        let client = client_rec("acme", "c1", Scope::Domain);
        let value = kv_layout::encode_client(&client).unwrap();
        r.handle_change(put("client.c1", 3, &value)).unwrap();
        for (serial, rev) in [("2", 4), ("1", 5)] {
            let device = kv_layout::encode_device(&device_rec("acme", serial, "s1")).unwrap();
            let key = format!("device.acme.{serial}");
            r.handle_change(put(&key, rev, &device)).unwrap();
        }
        assert_eq!(r.applied(), 5);
        assert!(r.domain_exists(&d("acme")));
        assert!(r.store_exists(&d("acme"), &StoreName::new("s1").unwrap()));
        assert_eq!(r.client(&client.client_id).map(|c| c.0), Some(&client));
        assert_eq!(
            r.domain_client(&d("acme"), &client.client_id),
            Some(&client)
        );
        assert_eq!(r.domain_client(&d("other"), &client.client_id), None);
        let serials: Vec<_> = r
            .list_devices(&d("acme"))
            .unwrap()
            .into_iter()
            .map(|d| d.serial.as_str().to_owned())
            .collect();
        assert_eq!(serials, ["1", "2"]);
        assert_eq!(r.list_devices(&d("ghost")), None);
        assert_eq!(
            r.revision(&KvKey::Device(d("acme"), Serial::new("1").unwrap())),
            KeyRevision::Live(5)
        );
    }

    #[test]
    fn deletes_leave_the_revision_a_create_must_expect() {
        let mut r = Replica::new();
        let key = KvKey::Client(ClientId::new("c1").unwrap());
        assert_eq!(r.revision(&key).expected_for_create(), Some(0));
        let value = kv_layout::encode_client(&client_rec("acme", "c1", Scope::Domain)).unwrap();
        r.handle_change(put("client.c1", 7, &value)).unwrap();
        assert_eq!(r.revision(&key).expected_for_create(), None);
        r.handle_change(del("client.c1", 9)).unwrap();
        assert_eq!(r.client(&ClientId::new("c1").unwrap()), None);
        assert_eq!(r.revision(&key), KeyRevision::Deleted(9));
        assert_eq!(r.revision(&key).expected_for_create(), Some(9));
    }

    #[test]
    fn an_older_change_delivered_again_changes_nothing() {
        let mut r = Replica::new();
        let on = kv_layout::encode_device(&device_rec("acme", "1", "s1")).unwrap();
        let mut off_rec = device_rec("acme", "1", "s1");
        off_rec.enabled = false;
        let off = kv_layout::encode_device(&off_rec).unwrap();
        r.handle_change(put("device.acme.1", 5, &off)).unwrap();
        r.handle_change(put("device.acme.1", 3, &on)).unwrap();
        let device = r.device(&d("acme"), &Serial::new("1").unwrap()).unwrap();
        assert_eq!((device.0.enabled, device.1), (false, 5));
        assert_eq!(r.applied(), 5);
    }

    #[test]
    fn a_corrupt_value_is_reported_and_does_not_stall_the_replica() {
        let mut r = Replica::new();
        let err = r
            .handle_change(put("device.acme.1", 4, b"{nope"))
            .unwrap_err();
        assert!(err.to_string().contains("device.acme.1") || err.to_string().contains("acme/1"));
        assert_eq!(r.applied(), 4);
        assert_eq!(r.device(&d("acme"), &Serial::new("1").unwrap()), None);
        r.handle_change(put("later.kind", 5, b"?")).unwrap();
        assert_eq!(r.applied(), 5);
    }

    #[test]
    fn shared_keys() {
        let mut r = Replica::new();
        assert_eq!(r.meta_key(MetaKey::SigningKey).unwrap(), None);
        r.handle_change(put("meta.signing_key", 1, &[3; 32]))
            .unwrap();
        r.handle_change(put("meta.session_key", 2, &[4; 31]))
            .unwrap();
        assert_eq!(r.meta_key(MetaKey::SigningKey).unwrap(), Some([3; 32]));
        assert!(r.meta_key(MetaKey::SessionKey).is_err());
    }
}
