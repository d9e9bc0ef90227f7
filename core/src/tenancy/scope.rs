//! Scopes: which devices a client may reach within its domain (PROTOCOL.md §1, §4).

use serde::{Deserialize, Serialize};

use crate::ids::{IdError, StoreName};

use super::DeviceRecord;

/// What a client may reach within its domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Only the devices of this store.
    Store(StoreName),
    /// Every device of the domain.
    Domain,
}

impl Scope {
    /// Whether a device of the client's own domain is within this scope. The domain itself
    /// is checked by [`resolve_device`]; this compares stores only.
    pub fn covers(&self, device: &DeviceRecord) -> bool {
        match self {
            Scope::Store(store) => *store == device.store,
            Scope::Domain => true,
        }
    }

    /// The JSON form shared by the admin API, the store and the token claims:
    /// `{"store":"s1"}` or `{}` for domain-wide.
    pub(crate) fn to_json(&self) -> ScopeJson {
        ScopeJson {
            store: match self {
                Scope::Store(store) => Some(store.as_str().to_owned()),
                Scope::Domain => None,
            },
        }
    }
}

/// The wire form of a [`Scope`]: `{"store":"s1"}` or `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ScopeJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) store: Option<String>,
}

impl ScopeJson {
    /// Validates the store name, if any.
    pub(crate) fn into_scope(self) -> Result<Scope, IdError> {
        match self.store {
            Some(store) => Ok(Scope::Store(StoreName::new(store)?)),
            None => Ok(Scope::Domain),
        }
    }
}
