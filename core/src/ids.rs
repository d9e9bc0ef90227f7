//! Identifiers shared by every layer: tenants, clients, devices and sessions.
//!
//! Each is a validated newtype, so a bare `String` never stands for a domain or a
//! serial number. Validation rules are the ones the admin API enforces (PROTOCOL.md §9)
//! and the ones that keep names safe in URLs and log lines.
#![forbid(unsafe_code)]

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty or longer than the limit.
    #[error("{kind} must be 1 to {max} characters long, got {len}")]
    Length {
        /// Which identifier.
        kind: &'static str,
        /// Maximum length.
        max: usize,
        /// Length given.
        len: usize,
    },
    /// A character outside the allowed set.
    #[error("{kind} may contain only {allowed}, got {value:?}")]
    Charset {
        /// Which identifier.
        kind: &'static str,
        /// Human description of the allowed set.
        allowed: &'static str,
        /// The refused value (names are not secrets).
        value: String,
    },
}

fn check(
    kind: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() || value.len() > max {
        return Err(IdError::Length {
            kind,
            max,
            len: value.len(),
        });
    }
    if !value.chars().all(ok) {
        return Err(IdError::Charset {
            kind,
            allowed,
            value: value.to_owned(),
        });
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $allowed:literal, $pred:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check($kind, &value, $max, $allowed, $pred)?;
                Ok(Self(value))
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A tenant (merchant aggregator), the `{domain}` of every URL.
    DomainName, "domain", 64, "letters, digits, '.', '_' and '-'", is_name_char
);
name_type!(
    /// A store of a merchant; devices and store-scoped clients belong to one.
    StoreName, "store", 64, "letters, digits, '.', '_' and '-'", is_name_char
);
name_type!(
    /// A merchant, between the domain and its stores.
    MerchantName, "merchant", 64, "letters, digits, '.', '_' and '-'", is_name_char
);
name_type!(
    /// An OAuth2 client id (a POS client or a domain application).
    ClientId, "client_id", 64, "letters, digits, '.', '_' and '-'", is_name_char
);
name_type!(
    /// A bare terminal serial number: the tsn every reply and event names.
    Serial, "tsn", 64, "letters and digits", |c: char| c.is_ascii_alphanumeric()
);
name_type!(
    /// A device make or model ("ingenico", "axium"); no '-', which separates the qualified tsn.
    DeviceModelName, "make/model", 64, "letters, digits, '_', '.' and ' '",
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ' ')
);
name_type!(
    /// An opaque, URL-safe session id (base64url of at least 128 random bits).
    SessionId, "session_id", 64, "letters, digits, '_' and '-'",
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
);

impl SessionId {
    /// A fresh session id from 16 random bytes (128 bits), base64url without padding.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        use base64::Engine as _;
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }
}

/// A client within its domain: the unit that holds claims and control channels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    /// The tenant.
    pub domain: DomainName,
    /// The client.
    pub client_id: ClientId,
}

/// A device within its domain: the unit that owns a session and a shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    /// The tenant.
    pub domain: DomainName,
    /// The bare serial.
    pub serial: Serial,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(DomainName::new("acme").is_ok());
        assert!(DomainName::new("").is_err());
        assert!(DomainName::new("a/b").is_err());
        assert!(DomainName::new("x".repeat(65)).is_err());
        assert!(Serial::new("12345678").is_ok());
        assert!(Serial::new("1234-5678").is_err());
        assert!(DeviceModelName::new("ingenico").is_ok());
        assert!(DeviceModelName::new("a-b").is_err());
    }

    #[test]
    fn session_ids_are_url_safe_and_128_bits() {
        let id = SessionId::from_random([0xff; 16]);
        assert_eq!(id.as_str().len(), 22);
        assert!(SessionId::new(id.as_str()).is_ok());
    }
}
