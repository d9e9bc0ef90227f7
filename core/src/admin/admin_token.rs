//! The operator's admin token and its constant-time check.

use std::fmt;

use subtle::{Choice, ConstantTimeEq};

/// The admin token every admin call must present as `Authorization: Bearer <token>`.
/// `Debug` is redacted.
#[derive(Clone)]
pub struct AdminToken(Vec<u8>);

impl AdminToken {
    /// The configured token; `None` if it is empty (an empty token would let anyone in).
    pub fn new(token: impl Into<String>) -> Option<Self> {
        let token = token.into();
        if token.is_empty() {
            None
        } else {
            Some(Self(token.into_bytes()))
        }
    }

    /// Whether `presented` is the token. Takes time that depends only on the configured
    /// token's length, never on where `presented` differs or how long it is.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = &self.0;
        let mut equal: Choice = (presented.len() as u64).ct_eq(&(expected.len() as u64));
        for (i, byte) in expected.iter().enumerate() {
            let got = presented.get(i).copied().unwrap_or(0);
            equal &= got.ct_eq(byte);
        }
        equal.into()
    }

    /// Checks an `Authorization` header value: `Bearer <token>` (RFC 6750 §2.1; the scheme
    /// is case-insensitive, RFC 9110 §11.1).
    pub fn check_header(&self, authorization: Option<&str>) -> Result<(), super::AdminError> {
        let header = authorization.ok_or(super::AdminError::MissingToken)?;
        let (scheme, token) = header
            .trim()
            .split_once(' ')
            .ok_or(super::AdminError::MissingToken)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(super::AdminError::MissingToken);
        }
        if self.matches(token.trim_start().as_bytes()) {
            Ok(())
        } else {
            Err(super::AdminError::WrongToken)
        }
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::AdminError;

    #[test]
    fn matches_only_the_exact_token() {
        let token = AdminToken::new("s3cret").unwrap();
        assert!(token.matches(b"s3cret"));
        assert!(!token.matches(b"s3cre"));
        assert!(!token.matches(b"s3cret!"));
        assert!(!token.matches(b"S3cret"));
        assert!(!token.matches(b""));
        assert!(AdminToken::new("").is_none());
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
    }

    #[test]
    fn header_needs_bearer_scheme() {
        let token = AdminToken::new("t").unwrap();
        assert_eq!(token.check_header(Some("Bearer t")), Ok(()));
        assert_eq!(token.check_header(Some("bearer t")), Ok(()));
        assert_eq!(token.check_header(None), Err(AdminError::MissingToken));
        assert_eq!(
            token.check_header(Some("Basic t")),
            Err(AdminError::MissingToken)
        );
        assert_eq!(
            token.check_header(Some("Bearer")),
            Err(AdminError::MissingToken)
        );
        assert_eq!(
            token.check_header(Some("Bearer u")),
            Err(AdminError::WrongToken)
        );
    }
}
