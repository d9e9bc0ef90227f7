//! The stored form of a client secret: its hash, never the secret itself (PROTOCOL.md §9).

use std::fmt;

use argon2::password_hash::PasswordHash;

/// An argon2id hash of a client secret in PHC string format
/// (`$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash(String);

impl SecretHash {
    /// Wraps a PHC string read back from the store, checking that it parses as one.
    pub fn from_phc(phc: impl Into<String>) -> Result<Self, argon2::password_hash::Error> {
        let phc = phc.into();
        PasswordHash::new(&phc)?;
        Ok(Self(phc))
    }

    /// Wraps a PHC string the hasher just produced (already well-formed).
    pub(crate) fn from_trusted_phc(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string, as stored.
    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not the secret, but it is offline-attackable: keep it out of logs.
        f.write_str("SecretHash(<redacted>)")
    }
}
