//! Why the relay state refused a session or a claim, mapped to the wire.

use crate::control::ControlErrorCode;
use crate::ids::{ClientKey, Serial, SessionId};

use super::close;

/// A device connection or POS session that names a session it may not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// §3, §5: the session id is not one of this relay's live sessions (never registered
    /// since start, or the device was disabled).
    #[error("unknown session {session_id}")]
    UnknownSession {
        /// The session id given.
        session_id: SessionId,
    },
    /// §5: only the client that holds the claim may open the device's POS session.
    #[error("client {}/{} does not hold the claim on session {session_id}", client.domain, client.client_id)]
    NotClaimHolder {
        /// The session id given.
        session_id: SessionId,
        /// The client that tried.
        client: ClientKey,
    },
}

impl SessionError {
    /// §8: the close code when the error is found after the upgrade.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::UnknownSession { .. } => close::UNKNOWN_SESSION,
            Self::NotClaimHolder { .. } => close::POLICY,
        }
    }

    /// §8: the HTTP status when the error is found before the upgrade
    /// (404 unknown session, 403 token valid but not for this session).
    pub fn status(&self) -> u16 {
        match self {
            Self::UnknownSession { .. } => 404,
            Self::NotClaimHolder { .. } => 403,
        }
    }
}

/// A claim or release that cannot be granted (§4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The device has not registered since the relay started (or was disabled since).
    #[error("device {serial} has not registered since the relay started")]
    Offline {
        /// The device.
        serial: Serial,
    },
    /// Another client holds the claim.
    #[error("device {serial} is claimed by another client")]
    DeviceBusy {
        /// The device.
        serial: Serial,
    },
    /// The participant that owns the device (another shard, or later another node) did not
    /// answer in time. Produced by the coordination layer, never by the relay state itself.
    #[error("the owner of device {serial} did not answer in time")]
    Unavailable {
        /// The device.
        serial: Serial,
    },
}

impl ClaimError {
    /// The §4 error code to answer with.
    pub fn code(&self) -> ControlErrorCode {
        match self {
            // §4 has no code for "not reachable right now"; `offline` is the one whose
            // advice (retry later) fits.
            Self::Offline { .. } | Self::Unavailable { .. } => ControlErrorCode::Offline,
            Self::DeviceBusy { .. } => ControlErrorCode::DeviceBusy,
        }
    }

    /// The §4 error `message`: what the POS can do about it.
    pub fn message(&self, op: ClaimOp) -> &'static str {
        match (self, op) {
            (Self::DeviceBusy { .. }, ClaimOp::Claim) => {
                "the device is claimed by another POS client: it must release it first"
            }
            (Self::DeviceBusy { .. }, ClaimOp::Release) => {
                "the device is claimed by another POS client: only that client can release it"
            }
            (Self::Offline { .. }, _) => {
                "the device has not registered since the relay started (or is disabled): retry once it is online"
            }
            (Self::Unavailable { .. }, _) => {
                "the relay could not reach the part of it that serves this device: retry"
            }
        }
    }

    /// The device the refusal is about.
    pub fn serial(&self) -> &Serial {
        match self {
            Self::Offline { serial }
            | Self::DeviceBusy { serial }
            | Self::Unavailable { serial } => serial,
        }
    }
}

/// What a POS asks of a claim (§4 `claim`, `release`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimOp {
    /// `{"type":"claim"}`: take the device (idempotent for its holder).
    Claim,
    /// `{"type":"release"}`: give it back (answered `released` when not claimed).
    Release,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientId, DomainName};

    #[test]
    fn errors_map_to_the_wire() {
        let sid = SessionId::from_random([0; 16]);
        let unknown = SessionError::UnknownSession {
            session_id: sid.clone(),
        };
        assert_eq!((unknown.close_code(), unknown.status()), (4404, 404));
        let other = SessionError::NotClaimHolder {
            session_id: sid,
            client: ClientKey {
                domain: DomainName::new("d").expect("domain"),
                client_id: ClientId::new("c").expect("client"),
            },
        };
        assert_eq!((other.close_code(), other.status()), (1008, 403));
        assert!(other.to_string().contains("d/c"));
        let serial = Serial::new("1").expect("serial");
        assert_eq!(
            ClaimError::Offline {
                serial: serial.clone()
            }
            .code()
            .as_str(),
            "offline"
        );
        assert_eq!(
            ClaimError::DeviceBusy {
                serial: serial.clone()
            }
            .code()
            .as_str(),
            "device_busy"
        );
        let gone = ClaimError::Unavailable { serial };
        assert_eq!(gone.code().as_str(), "offline");
        assert!(gone.message(ClaimOp::Claim).ends_with("retry"));
    }
}
