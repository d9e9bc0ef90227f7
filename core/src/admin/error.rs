//! The admin API's error: each refused call, with a message that says what to do.

use crate::ids::IdError;
use crate::store::StoreError;
use crate::tenancy::FingerprintError;

/// Why an admin call was refused. Its `Display` is the `error` of the JSON answer;
/// [`AdminError::status`] its HTTP status. A refused call changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No `Authorization: Bearer …` header (RFC 6750 §3.1).
    #[error("missing admin token: send Authorization: Bearer <admin token> (set by admin_token in the configuration or POSRELAY_ADMIN_TOKEN)")]
    MissingToken,
    /// A bearer token that is not the admin token.
    #[error("wrong admin token: use the admin token of this relay's configuration or POSRELAY_ADMIN_TOKEN")]
    WrongToken,
    /// No admin endpoint at this path (PROTOCOL.md §9).
    #[error("no admin endpoint at {path:?}: the endpoints are under /admin/v1/domains")]
    UnknownPath {
        /// The path asked for (at most 200 characters).
        path: String,
    },
    /// The endpoint exists but not with this method (RFC 9110 §15.5.6).
    #[error("method {method} is not allowed here: use {allowed}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The methods the endpoint serves (also the `Allow` header).
        allowed: &'static str,
    },
    /// The body is larger than any admin call needs.
    #[error("request body of {len} bytes is over the {max}-byte limit")]
    BodyTooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not the JSON object this call takes.
    #[error("malformed JSON body ({reason}): send {expected}")]
    MalformedBody {
        /// What the parser said.
        reason: String,
        /// An example of a good body.
        expected: &'static str,
    },
    /// §9: "A fingerprint that is not 64 hex digits answers `400`".
    #[error("client_cert_sha256[{position}]: {error}")]
    InvalidFingerprint {
        /// Its position in the list.
        position: usize,
        /// What is wrong with it.
        error: FingerprintError,
    },
    /// More pins than a device may have.
    #[error("client_cert_sha256 has {count} fingerprints, a device may have at most {max}: remove the ones no longer in use")]
    TooManyPins {
        /// How many were sent (after removing repeats).
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A `PATCH` of a device that changes nothing.
    #[error("nothing to change: send {{\"enabled\":true|false}} and/or {{\"client_cert_sha256\":[\"<64 hex>\"]}}")]
    EmptyPatch,
    /// A name in the body breaks the identifier rules.
    #[error("{0}")]
    InvalidName(#[from] IdError),
    /// The store refused or failed.
    #[error("{}", store_message(.0))]
    Store(#[from] StoreError),
}

fn store_message(err: &StoreError) -> String {
    let hint = match err {
        StoreError::UnknownDomain { .. } => "create it first with POST /admin/v1/domains",
        StoreError::UnknownStore { .. } => {
            "create it first with POST /admin/v1/domains/{domain}/stores"
        }
        StoreError::UnknownDevice { .. } => {
            "provision it first with POST /admin/v1/domains/{domain}/devices"
        }
        StoreError::UnknownClient { .. } => {
            "check the client_id (it was returned when the client was created)"
        }
        StoreError::DuplicateDomain { .. }
        | StoreError::DuplicateStore { .. }
        | StoreError::DuplicateDevice { .. } => "nothing was changed",
        StoreError::DuplicateClient { .. } => "client id collision; nothing was changed, retry",
        StoreError::FingerprintPinned { .. } => {
            "a certificate identifies one device: remove it from that device first (PATCH its client_cert_sha256); nothing was changed"
        }
        StoreError::NotEmpty { .. } => "delete those first; nothing was deleted",
        StoreError::InvalidName(_) => "fix the name",
        StoreError::SchemaTooNew { .. }
        | StoreError::Insecure { .. }
        | StoreError::Corrupt { .. }
        | StoreError::Storage { .. } => {
            "nothing was changed; check the data directory and the relay's log"
        }
        StoreError::Unavailable { .. } => {
            "retry later; a write that timed out may have been stored, so read it back first"
        }
    };
    format!("{err}: {hint}")
}

impl AdminError {
    /// HTTP status: 401 token, 404 path or unknown resource, 405 method, 413 body size,
    /// 400 malformed body or name, 409 duplicate, 500 storage, 503 cluster store unavailable.
    pub fn status(&self) -> u16 {
        match self {
            AdminError::MissingToken | AdminError::WrongToken => 401,
            AdminError::UnknownPath { .. } => 404,
            AdminError::MethodNotAllowed { .. } => 405,
            AdminError::BodyTooLarge { .. } => 413,
            AdminError::MalformedBody { .. }
            | AdminError::InvalidName(_)
            | AdminError::InvalidFingerprint { .. }
            | AdminError::TooManyPins { .. }
            | AdminError::EmptyPatch => 400,
            AdminError::Store(err) => err.status(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_status_and_say_what_to_do() {
        let err = AdminError::from(StoreError::UnknownDomain {
            domain: "acme".into(),
        });
        assert_eq!(err.status(), 404);
        assert_eq!(
            err.to_string(),
            "unknown domain \"acme\": create it first with POST /admin/v1/domains"
        );
        let dup = AdminError::from(StoreError::DuplicateDomain {
            domain: "acme".into(),
        });
        assert_eq!(dup.status(), 409);
    }
}
