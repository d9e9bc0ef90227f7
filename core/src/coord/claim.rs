//! Claims asked across participants (PROTOCOL.md §4): who asked, and what the owner said.

use crate::control::RequestId;
use crate::relay::{ClaimError, ClaimGranted, ConnId};

/// The control channel that asked for a claim or release, and the `request_id` its answer
/// must repeat. Stays with the asking participant; only a [`super::Ticket`] travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// The control channel.
    pub conn: ConnId,
    /// The request's `request_id`, if it had one.
    pub request_id: Option<RequestId>,
}

/// The owner's decision on a claim or release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// §4 `claimed`: the claim is the client's (new, or held already).
    Claimed(ClaimGranted),
    /// §4 `released`: the device is not claimed (any more).
    Released,
    /// §4 `error`: refused, with the reason.
    Refused(ClaimError),
}

impl ClaimOutcome {
    /// The outcome of a claim as the relay state answered it.
    pub fn of_claim(result: Result<ClaimGranted, ClaimError>) -> Self {
        match result {
            Ok(granted) => Self::Claimed(granted),
            Err(e) => Self::Refused(e),
        }
    }

    /// The outcome of a release as the relay state answered it.
    pub fn of_release(result: Result<(), ClaimError>) -> Self {
        match result {
            Ok(()) => Self::Released,
            Err(e) => Self::Refused(e),
        }
    }
}
