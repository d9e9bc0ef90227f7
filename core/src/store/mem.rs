//! An in-memory [`Store`] with the same rules as the durable one, for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use super::{ClientRecord, DeviceRecord, Store, StoreError, StoreRecord};
use crate::ids::{ClientId, DomainName, Serial, StoreName};
use crate::tenancy::{CertFingerprint, Scope, SecretHash};

#[derive(Debug, Default)]
struct State {
    domains: BTreeSet<DomainName>,
    stores: BTreeMap<(DomainName, StoreName), StoreRecord>,
    clients: BTreeMap<(DomainName, ClientId), ClientRecord>,
    devices: BTreeMap<(DomainName, Serial), DeviceRecord>,
    signing_key: Option<[u8; 32]>,
    session_key: Option<[u8; 32]>,
}

impl State {
    fn need_domain(&self, domain: &DomainName) -> Result<(), StoreError> {
        if self.domains.contains(domain) {
            Ok(())
        } else {
            Err(StoreError::UnknownDomain {
                domain: domain.to_string(),
            })
        }
    }

    fn need_store(&self, domain: &DomainName, store: &StoreName) -> Result<(), StoreError> {
        self.need_domain(domain)?;
        if self.stores.contains_key(&(domain.clone(), store.clone())) {
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
        &self,
        domain: &DomainName,
        serial: &Serial,
        pins: &[CertFingerprint],
    ) -> Result<(), StoreError> {
        for (position, fp) in pins.iter().enumerate() {
            let owner = self.devices.values().find(|d| d.is_pinned(fp));
            if let Some(owner) = owner.filter(|o| o.domain != *domain || o.serial != *serial) {
                return Err(StoreError::FingerprintPinned {
                    position,
                    domain: owner.domain.to_string(),
                    serial: owner.serial.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Tenancy in memory; thread safe (a `Mutex`), lost when dropped.
#[derive(Debug, Default)]
pub struct MemStore {
    state: Mutex<State>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied write (every write
        // checks first, then inserts once), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemStore {
    fn create_domain(&self, domain: &DomainName) -> Result<(), StoreError> {
        if !self.lock().domains.insert(domain.clone()) {
            return Err(StoreError::DuplicateDomain {
                domain: domain.to_string(),
            });
        }
        Ok(())
    }

    fn domain_exists(&self, domain: &DomainName) -> Result<bool, StoreError> {
        Ok(self.lock().domains.contains(domain))
    }

    fn create_store(&self, record: &StoreRecord) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.need_domain(&record.domain)?;
        let key = (record.domain.clone(), record.store.clone());
        if state.stores.contains_key(&key) {
            return Err(StoreError::DuplicateStore {
                domain: record.domain.to_string(),
                store: record.store.to_string(),
            });
        }
        state.stores.insert(key, record.clone());
        Ok(())
    }

    fn store_exists(&self, domain: &DomainName, store: &StoreName) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .stores
            .contains_key(&(domain.clone(), store.clone())))
    }

    fn create_client(&self, record: &ClientRecord) -> Result<(), StoreError> {
        let mut state = self.lock();
        match &record.scope {
            Scope::Store(store) => state.need_store(&record.domain, store)?,
            Scope::Domain => state.need_domain(&record.domain)?,
        }
        let key = (record.domain.clone(), record.client_id.clone());
        // Client ids are unique across domains (device registration names no domain).
        if state.clients.keys().any(|(_, id)| *id == record.client_id) {
            return Err(StoreError::DuplicateClient {
                domain: record.domain.to_string(),
                client_id: record.client_id.to_string(),
            });
        }
        state.clients.insert(key, record.clone());
        Ok(())
    }

    fn delete_client(&self, domain: &DomainName, client_id: &ClientId) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.need_domain(domain)?;
        match state.clients.remove(&(domain.clone(), client_id.clone())) {
            Some(_) => Ok(()),
            None => Err(StoreError::UnknownClient {
                domain: domain.to_string(),
                client_id: client_id.to_string(),
            }),
        }
    }

    fn replace_client_secret_hash(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
        old: &SecretHash,
        new: &SecretHash,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock();
        match state.clients.get_mut(&(domain.clone(), client_id.clone())) {
            Some(record) if record.secret_hash == *old => {
                record.secret_hash = new.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn get_client(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
    ) -> Result<Option<ClientRecord>, StoreError> {
        Ok(self
            .lock()
            .clients
            .get(&(domain.clone(), client_id.clone()))
            .cloned())
    }

    fn find_client(&self, client_id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        Ok(self
            .lock()
            .clients
            .iter()
            .find(|((_, id), _)| id == client_id)
            .map(|(_, record)| record.clone()))
    }

    fn create_device(&self, record: &DeviceRecord) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.need_store(&record.domain, &record.store)?;
        let key = (record.domain.clone(), record.serial.clone());
        if state.devices.contains_key(&key) {
            return Err(StoreError::DuplicateDevice {
                domain: record.domain.to_string(),
                serial: record.serial.to_string(),
            });
        }
        state.need_free_pins(&record.domain, &record.serial, &record.client_cert_sha256)?;
        state.devices.insert(key, record.clone());
        Ok(())
    }

    fn set_device_enabled(
        &self,
        domain: &DomainName,
        serial: &Serial,
        enabled: bool,
    ) -> Result<DeviceRecord, StoreError> {
        let mut state = self.lock();
        state.need_domain(domain)?;
        match state.devices.get_mut(&(domain.clone(), serial.clone())) {
            Some(device) => {
                device.enabled = enabled;
                Ok(device.clone())
            }
            None => Err(StoreError::UnknownDevice {
                domain: domain.to_string(),
                serial: serial.to_string(),
            }),
        }
    }

    fn get_device(
        &self,
        domain: &DomainName,
        serial: &Serial,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self
            .lock()
            .devices
            .get(&(domain.clone(), serial.clone()))
            .cloned())
    }

    fn list_devices(&self, domain: &DomainName) -> Result<Vec<DeviceRecord>, StoreError> {
        let state = self.lock();
        state.need_domain(domain)?;
        Ok(state
            .devices
            .values()
            .filter(|d| d.domain == *domain)
            .cloned()
            .collect())
    }

    fn set_device_pins(
        &self,
        domain: &DomainName,
        serial: &Serial,
        pins: &[CertFingerprint],
    ) -> Result<DeviceRecord, StoreError> {
        let mut state = self.lock();
        state.need_domain(domain)?;
        let key = (domain.clone(), serial.clone());
        let unknown = || StoreError::UnknownDevice {
            domain: domain.to_string(),
            serial: serial.to_string(),
        };
        if !state.devices.contains_key(&key) {
            return Err(unknown());
        }
        state.need_free_pins(domain, serial, pins)?;
        let device = state.devices.get_mut(&key).ok_or_else(unknown)?;
        device.client_cert_sha256 = pins.to_vec();
        Ok(device.clone())
    }

    fn find_device_by_fingerprint(
        &self,
        fingerprint: &CertFingerprint,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self
            .lock()
            .devices
            .values()
            .find(|d| d.is_pinned(fingerprint))
            .cloned())
    }

    fn list_domains(&self) -> Result<Vec<DomainName>, StoreError> {
        Ok(self.lock().domains.iter().cloned().collect())
    }

    fn delete_domain(&self, domain: &DomainName) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.need_domain(domain)?;
        let count = |n: usize, noun: &str| (n > 0).then(|| super::plural(n, noun));
        let holds: Vec<String> = [
            count(
                state.stores.keys().filter(|(d, _)| d == domain).count(),
                "store",
            ),
            count(
                state.clients.keys().filter(|(d, _)| d == domain).count(),
                "client",
            ),
            count(
                state.devices.keys().filter(|(d, _)| d == domain).count(),
                "device",
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !holds.is_empty() {
            return Err(StoreError::NotEmpty {
                what: format!("domain {:?}", domain.as_str()),
                holds: holds.join(", "),
            });
        }
        state.domains.remove(domain);
        Ok(())
    }

    fn list_stores(&self, domain: &DomainName) -> Result<Vec<StoreRecord>, StoreError> {
        let state = self.lock();
        state.need_domain(domain)?;
        Ok(state
            .stores
            .iter()
            .filter(|((d, _), _)| d == domain)
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn delete_store(&self, domain: &DomainName, store: &StoreName) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.need_store(domain, store)?;
        let devices = state
            .devices
            .values()
            .filter(|r| &r.domain == domain && &r.store == store)
            .count();
        let clients = state
            .clients
            .values()
            .filter(|r| &r.domain == domain && r.scope == Scope::Store(store.clone()))
            .count();
        let count = |n: usize, noun: &str| (n > 0).then(|| super::plural(n, noun));
        let holds: Vec<String> = [count(clients, "client"), count(devices, "device")]
            .into_iter()
            .flatten()
            .collect();
        if !holds.is_empty() {
            return Err(StoreError::NotEmpty {
                what: format!("store {:?} in domain {:?}", store.as_str(), domain.as_str()),
                holds: holds.join(", "),
            });
        }
        state.stores.remove(&(domain.clone(), store.clone()));
        Ok(())
    }

    fn list_clients(&self, domain: &DomainName) -> Result<Vec<ClientRecord>, StoreError> {
        let state = self.lock();
        state.need_domain(domain)?;
        Ok(state
            .clients
            .iter()
            .filter(|((d, _), _)| d == domain)
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn rotate_client_secret(
        &self,
        domain: &DomainName,
        client_id: &ClientId,
        new: &crate::tenancy::SecretHash,
        old_valid_until: u64,
    ) -> Result<ClientRecord, StoreError> {
        let mut state = self.lock();
        state.need_domain(domain)?;
        let record = state
            .clients
            .get_mut(&(domain.clone(), client_id.clone()))
            .ok_or_else(|| StoreError::UnknownClient {
                domain: domain.to_string(),
                client_id: client_id.to_string(),
            })?;
        let old = std::mem::replace(&mut record.secret_hash, new.clone());
        record.previous_secret = Some(crate::tenancy::PreviousSecret {
            hash: old,
            valid_until: old_valid_until,
        });
        Ok(record.clone())
    }

    fn load_or_create_signing_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
        Ok(*self.lock().signing_key.get_or_insert(fresh))
    }

    fn load_or_create_session_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
        Ok(*self.lock().session_key.get_or_insert(fresh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_store_rules() {
        super::super::conformance::check(&MemStore::new());
    }
}
