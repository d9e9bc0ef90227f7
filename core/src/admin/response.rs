//! What an admin call answers, and what the relay must do about it.

use serde::Serialize;

use crate::ids::{ClientKey, DeviceKey};
use crate::tenancy::CertFingerprint;

/// A change the relay must act on at once, beyond what the store recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminEffect {
    /// PROTOCOL.md §9 PATCH `enabled:false`: close this device's connection with 1008.
    DeviceDisabled(DeviceKey),
    /// PROTOCOL.md §9 DELETE client: its tokens stop working; close its connections.
    ClientDeleted(ClientKey),
    /// PROTOCOL.md §2a: "Removing a pin closes a live connection made with it (1008)":
    /// close the device's connection if its client certificate has one of these
    /// fingerprints.
    CertPinsRemoved {
        /// The device.
        device: DeviceKey,
        /// The fingerprints no longer pinned to it.
        removed: Vec<CertFingerprint>,
    },
    /// The client's secret was rotated: forget any remembered verification of it
    /// (open connections and issued tokens stay).
    ClientSecretRotated(ClientKey),
}

/// An HTTP answer of the admin API: status, extra headers, JSON body (empty for 204).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminResponse {
    /// HTTP status code.
    pub status: u16,
    /// Headers besides `Content-Type: application/json` and `Content-Length`
    /// (`WWW-Authenticate` on 401, `Allow` on 405).
    pub headers: Vec<(&'static str, &'static str)>,
    /// JSON body; empty for 204.
    pub body: Vec<u8>,
    /// What the relay must do now that the call succeeded.
    pub effect: Option<AdminEffect>,
}

impl AdminResponse {
    /// A JSON answer.
    pub(super) fn json(status: u16, body: &impl Serialize) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: to_json(body),
            effect: None,
        }
    }

    /// `204 No Content`.
    pub(super) fn no_content() -> Self {
        Self {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
            effect: None,
        }
    }

    /// The same answer, telling the relay what to do.
    pub(super) fn with_effect(mut self, effect: AdminEffect) -> Self {
        self.effect = Some(effect);
        self
    }
}

/// `{"error":"…"}`.
#[derive(Serialize)]
pub(super) struct ErrorBody<'a> {
    pub(super) error: &'a str,
}

/// Serialises a body made of strings, numbers and booleans (which cannot fail).
pub(super) fn to_json(body: &impl Serialize) -> Vec<u8> {
    simd_json::to_vec(body).unwrap_or_else(|e| {
        // Only maps with non-string keys fail; our bodies have none.
        tracing::error!(error = %e, "cannot serialise an admin answer");
        br#"{"error":"internal error: cannot serialise the answer"}"#.to_vec()
    })
}
