//! Scopes: which devices a client may see and claim (PROTOCOL.md §1, §4).
//!
//! A client belongs to one domain and either to one store of it (a POS client) or to the
//! whole domain (a domain application). Every lookup of a device on behalf of a client goes
//! through [`resolve_device`], which answers [`ScopeError::NotFound`] alike for an unknown
//! device, a device outside the client's store and a device of another domain
//! (PROTOCOL.md §4: "so that tenants cannot probe each other").

use crate::ids::{DomainName, Serial};
use crate::store::Store;
use crate::store::StoreError;
use crate::tenancy::{ClientRecord, DeviceRecord, Scope};

use super::tsn::TsnInput;

/// Who is asking for a device: a client with its domain and scope, known from its
/// credentials ([`ClientRecord`]) or from its access token.
pub trait Principal {
    /// The client's domain.
    fn domain(&self) -> &DomainName;
    /// The client's scope within that domain.
    fn scope(&self) -> &Scope;
}

impl Principal for ClientRecord {
    fn domain(&self) -> &DomainName {
        &self.domain
    }
    fn scope(&self) -> &Scope {
        &self.scope
    }
}

/// Why a device could not be resolved for a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The tsn is neither a bare serial nor `<make>-<model>-<serial>` (PROTOCOL.md §2).
    #[error("malformed tsn {input:?}: {reason}")]
    MalformedTsn {
        /// The tsn as given (at most 200 characters).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// PROTOCOL.md §4 `not_found`: no such device in this client's scope — unknown,
    /// in another store, in another domain, or qualified with the wrong make or model.
    #[error("no device {serial} in scope")]
    NotFound {
        /// The bare serial asked for.
        serial: Serial,
    },
    /// The store failed.
    #[error("store failure while resolving a device: {0}")]
    Storage(#[from] StoreError),
}

impl ScopeError {
    /// HTTP status: 400 malformed tsn, 404 not found, 500 store failure.
    pub fn status(&self) -> u16 {
        match self {
            ScopeError::MalformedTsn { .. } => 400,
            ScopeError::NotFound { .. } => 404,
            ScopeError::Storage(_) => 500,
        }
    }
}

/// The device `tsn` names, if it is within `who`'s domain and scope; otherwise
/// [`ScopeError::NotFound`], whatever the reason.
pub fn resolve_device<S: Store + ?Sized>(
    store: &S,
    who: &impl Principal,
    tsn: &TsnInput,
) -> Result<DeviceRecord, ScopeError> {
    let not_found = || ScopeError::NotFound {
        serial: tsn.serial().clone(),
    };
    let device = store
        .get_device(who.domain(), tsn.serial())?
        .ok_or_else(not_found)?;
    // The lookup is per domain already; checking again keeps a store bug from leaking a
    // device across tenants.
    if device.domain != *who.domain() || !who.scope().covers(&device) || !tsn.matches(&device) {
        return Err(not_found());
    }
    Ok(device)
}

/// The devices within `who`'s scope (PROTOCOL.md §4 `devices`), ordered by serial.
pub fn devices_in_scope<S: Store + ?Sized>(
    store: &S,
    who: &impl Principal,
) -> Result<Vec<DeviceRecord>, StoreError> {
    let mut devices = store.list_devices(who.domain())?;
    devices.retain(|d| d.domain == *who.domain() && who.scope().covers(d));
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::HashCost;
    use crate::auth::SecretHasher;
    use crate::ids::{ClientId, MerchantName, StoreName};
    use crate::store::{MemStore, StoreRecord};

    fn d(n: &str) -> DomainName {
        DomainName::new(n).unwrap()
    }

    fn s(n: &str) -> StoreName {
        StoreName::new(n).unwrap()
    }

    fn tsn(t: &str) -> TsnInput {
        TsnInput::parse(t).unwrap()
    }

    fn client(domain: &str, scope: Scope) -> ClientRecord {
        ClientRecord {
            domain: d(domain),
            client_id: ClientId::new("c").unwrap(),
            scope,
            secret_hash: SecretHasher::new(HashCost::TEST_ONLY).dummy_hash().clone(),
            previous_secret: None,
        }
    }

    /// acme: s1 {100}, s2 {200}; globex: s1 {100 (same serial), 300}.
    fn world() -> MemStore {
        let st = MemStore::new();
        for (domain, store, serial) in [
            ("acme", "s1", "100"),
            ("acme", "s2", "200"),
            ("globex", "s1", "100"),
            ("globex", "s1", "300"),
        ] {
            let _ = st.create_domain(&d(domain));
            let _ = st.create_store(&StoreRecord {
                domain: d(domain),
                store: s(store),
                merchant: MerchantName::new("m").unwrap(),
            });
            st.create_device(&crate::store::conformance::device_rec(
                domain, serial, store,
            ))
            .unwrap();
        }
        st
    }

    #[test]
    fn store_client_reaches_only_its_store() {
        let st = world();
        let pos = client("acme", Scope::Store(s("s1")));
        let dev = resolve_device(&st, &pos, &tsn("100")).unwrap();
        assert_eq!((dev.domain.as_str(), dev.store.as_str()), ("acme", "s1"));
        assert_eq!(
            resolve_device(&st, &pos, &tsn("200")),
            Err(ScopeError::NotFound {
                serial: Serial::new("200").unwrap()
            })
        );
        let serials: Vec<_> = devices_in_scope(&st, &pos)
            .unwrap()
            .into_iter()
            .map(|d| d.serial.to_string())
            .collect();
        assert_eq!(serials, ["100"]);
    }

    #[test]
    fn domain_client_reaches_every_store_of_its_domain_only() {
        let st = world();
        let app = client("acme", Scope::Domain);
        assert!(resolve_device(&st, &app, &tsn("100")).is_ok());
        assert!(resolve_device(&st, &app, &tsn("200")).is_ok());
        // 300 exists, but in globex: the same answer as a device that does not exist.
        let other_tenant = resolve_device(&st, &app, &tsn("300")).unwrap_err();
        let nowhere = resolve_device(&st, &app, &tsn("999")).unwrap_err();
        assert!(matches!(other_tenant, ScopeError::NotFound { .. }));
        assert!(matches!(nowhere, ScopeError::NotFound { .. }));
        assert_eq!(other_tenant.status(), nowhere.status());
        assert_eq!(devices_in_scope(&st, &app).unwrap().len(), 2);
    }

    #[test]
    fn same_serial_in_two_domains_resolves_to_the_callers() {
        let st = world();
        let globex = client("globex", Scope::Domain);
        let dev = resolve_device(&st, &globex, &tsn("100")).unwrap();
        assert_eq!(dev.domain.as_str(), "globex");
    }

    #[test]
    fn qualified_tsn_with_wrong_model_is_not_found() {
        let st = world();
        let app = client("acme", Scope::Domain);
        assert!(resolve_device(&st, &app, &tsn("Ingenico-AXIUM-100")).is_ok());
        assert!(matches!(
            resolve_device(&st, &app, &tsn("ingenico-other-100")),
            Err(ScopeError::NotFound { .. })
        ));
    }

    #[test]
    fn covers_compares_stores() {
        let dev = crate::store::conformance::device_rec("acme", "1", "s1");
        assert!(Scope::Domain.covers(&dev));
        assert!(Scope::Store(s("s1")).covers(&dev));
        assert!(!Scope::Store(s("s2")).covers(&dev));
    }
}
