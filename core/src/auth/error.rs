//! The auth layer's error: every way a credential or a token can be refused.

use crate::store::StoreError;

/// Why a client credential, a token or an OAuth2 request was refused.
///
/// Each variant maps to HTTP with [`AuthError::status`], to the OAuth2 / bearer error
/// code with [`AuthError::oauth_error_code`] and to a WebSocket close code with
/// [`AuthError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// RFC 6749 §5.2 `invalid_request`: a parameter is missing, repeated or malformed.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong with the request.
        reason: &'static str,
    },
    /// RFC 6749 §5.2 `unsupported_grant_type`: only `client_credentials` is served.
    #[error("unsupported grant type {grant_type:?}: use client_credentials")]
    UnsupportedGrantType {
        /// The grant type asked for (truncated to 64 bytes).
        grant_type: String,
    },
    /// RFC 6749 §5.2 `invalid_client`: unknown domain, unknown client, wrong secret or
    /// missing credentials. Deliberately one variant, so that none can be told apart.
    #[error("invalid client credentials")]
    InvalidClient,
    /// RFC 6750 §3.1 `invalid_token`: not a JWT, bad signature, wrong algorithm,
    /// wrong issuer or unreadable claims.
    #[error("invalid token: {reason}")]
    InvalidToken {
        /// What failed (for logs; never sent to the peer beyond the error code).
        reason: String,
    },
    /// RFC 7519 §4.1.4: the token's `exp` is not after `now`.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp` (unix seconds).
        exp: u64,
        /// The time the token was checked at (unix seconds).
        now: u64,
    },
    /// RFC 7519 §4.1.3: the token was issued for another audience (a device token used
    /// as an access token, or the other way round — PROTOCOL.md §3).
    #[error("token is for another audience (expected {expected})")]
    WrongAudience {
        /// The audience this endpoint accepts.
        expected: &'static str,
    },
    /// The client the token was issued to has been deleted (PROTOCOL.md §9).
    #[error("client {client_id} of domain {domain} has been revoked")]
    Revoked {
        /// The token's domain.
        domain: String,
        /// The token's client.
        client_id: String,
    },
    /// PROTOCOL.md §3: the device token is valid but belongs to another session.
    #[error("token belongs to another session")]
    WrongSession,
    /// The device the token names has been disabled or removed (PROTOCOL.md §9 PATCH).
    #[error("device {serial} is disabled")]
    DeviceDisabled {
        /// The bare serial.
        serial: String,
    },
    /// PROTOCOL.md §2a: the client certificate is pinned to no device.
    #[error("the client certificate is pinned to no device: pin it with posrelay admin pin-cert")]
    CertificateNotPinned,
    /// Signing a token failed (a key or library fault, never the peer's doing).
    #[error("cannot sign token: {reason}")]
    Signing {
        /// The library's message.
        reason: String,
    },
    /// The store failed while checking a credential.
    #[error("store failure while authenticating: {0}")]
    Storage(#[from] StoreError),
}

impl AuthError {
    /// HTTP status (PROTOCOL.md §1, §8): 400 malformed request, 401 bad credentials or
    /// token, 403 a valid token not good for this resource, 500 store failure.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::InvalidRequest { .. } | AuthError::UnsupportedGrantType { .. } => 400,
            AuthError::InvalidClient
            | AuthError::InvalidToken { .. }
            | AuthError::Expired { .. }
            | AuthError::WrongAudience { .. }
            | AuthError::Revoked { .. } => 401,
            AuthError::WrongSession
            | AuthError::DeviceDisabled { .. }
            | AuthError::CertificateNotPinned => 403,
            AuthError::Signing { .. } | AuthError::Storage(_) => 500,
        }
    }

    /// The error code of the JSON body: RFC 6749 §5.2 for the token endpoint,
    /// RFC 6750 §3.1 for bearer tokens.
    pub fn oauth_error_code(&self) -> &'static str {
        match self {
            AuthError::InvalidRequest { .. } => "invalid_request",
            AuthError::UnsupportedGrantType { .. } => "unsupported_grant_type",
            AuthError::InvalidClient => "invalid_client",
            AuthError::InvalidToken { .. }
            | AuthError::Expired { .. }
            | AuthError::WrongAudience { .. }
            | AuthError::Revoked { .. } => "invalid_token",
            AuthError::WrongSession
            | AuthError::DeviceDisabled { .. }
            | AuthError::CertificateNotPinned => "insufficient_scope",
            AuthError::Signing { .. } | AuthError::Storage(_) => "server_error",
        }
    }

    /// WebSocket close code for a connection whose token fails after the upgrade
    /// (PROTOCOL.md §8): 4401 for an expired token, 1011 for a store failure,
    /// 1008 (policy) for everything else.
    pub fn close_code(&self) -> u16 {
        match self {
            AuthError::Expired { .. } => 4401,
            AuthError::Signing { .. } | AuthError::Storage(_) => 1011,
            _ => 1008,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_the_wire() {
        assert_eq!(AuthError::InvalidClient.status(), 401);
        assert_eq!(
            AuthError::InvalidClient.oauth_error_code(),
            "invalid_client"
        );
        let bad = AuthError::InvalidRequest { reason: "x" };
        assert_eq!(
            (bad.status(), bad.oauth_error_code()),
            (400, "invalid_request")
        );
        let grant = AuthError::UnsupportedGrantType {
            grant_type: "password".into(),
        };
        assert_eq!(grant.oauth_error_code(), "unsupported_grant_type");
        assert_eq!(AuthError::WrongSession.status(), 403);
        assert_eq!(AuthError::Expired { exp: 1, now: 2 }.close_code(), 4401);
        assert_eq!(AuthError::WrongSession.close_code(), 1008);
    }
}
