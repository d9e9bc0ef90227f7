//! A node's name (`--node-id`) and the incarnation that tells its runs apart.

use std::fmt;

use crate::ids::IdError;

/// A node's id (`--node-id`): 1 to 64 letters, digits, `_` or `-`, so that it is one NATS
/// subject token as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// Validates and wraps `value`.
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        if value.is_empty() || value.len() > 64 {
            return Err(IdError::Length {
                kind: "node id",
                max: 64,
                len: value.len(),
            });
        }
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        {
            return Err(IdError::Charset {
                kind: "node id",
                allowed: "letters, digits, '_' and '-'",
                value,
            });
        }
        Ok(Self(value))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One run of a node: 128 random bits drawn at start (base64url). A node that restarts
/// with the same id is another incarnation, so that nobody mistakes the records of the
/// run that died for those of the new one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Incarnation(String);

impl Incarnation {
    /// An incarnation from 16 bytes of a CSPRNG.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        use base64::Engine as _;
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Wraps one read back from a record (any non-empty text up to 64 bytes).
    pub fn from_record(value: String) -> Option<Self> {
        (!value.is_empty() && value.len() <= 64).then_some(Self(value))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_one_subject_token() {
        assert!(NodeId::new("node-a_1").is_ok());
        assert!(NodeId::new("a.b").is_err());
        assert!(NodeId::new("a*").is_err());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("x".repeat(65)).is_err());
    }

    #[test]
    fn incarnations_differ_by_their_bits() {
        let a = Incarnation::from_random([1; 16]);
        assert_eq!(a.as_str().len(), 22);
        assert_ne!(a, Incarnation::from_random([2; 16]));
        assert_eq!(Incarnation::from_record(a.as_str().to_owned()), Some(a));
        assert_eq!(Incarnation::from_record(String::new()), None);
    }
}
