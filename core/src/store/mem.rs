//! An in-memory [`Store`] with the same rules as the durable one, for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use super::{ClientRecord, DeviceRecord, Store, StoreError, StoreRecord};
use crate::ids::{ClientId, DomainName, Serial, StoreName};
use crate::tenancy::{Scope, SecretHash};

#[derive(Debug, Default)]
struct State {
    domains: BTreeSet<DomainName>,
    stores: BTreeMap<(DomainName, StoreName), StoreRecord>,
    clients: BTreeMap<(DomainName, ClientId), ClientRecord>,
    devices: BTreeMap<(DomainName, Serial), DeviceRecord>,
    signing_key: Option<[u8; 32]>,
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

    fn load_or_create_signing_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
        Ok(*self.lock().signing_key.get_or_insert(fresh))
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
