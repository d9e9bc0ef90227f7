//! The JSON bodies of the admin API (PROTOCOL.md §9), in and out.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::AdminError;

/// The largest body an admin call accepts.
pub const MAX_ADMIN_BODY: usize = 16 * 1024;

/// `POST /admin/v1/domains`: `{"domain":"acme"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewDomain {
    pub(super) domain: String,
}

/// `POST …/stores`: `{"store":"s1","merchant":"m1"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewStore {
    pub(super) store: String,
    pub(super) merchant: String,
}

/// `POST …/clients`: `{"store":"s1"}` or `{}` for domain-wide. Unknown fields are refused,
/// so that a typo cannot create a domain-wide client by accident.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewClient {
    #[serde(default)]
    pub(super) store: Option<String>,
}

/// `POST …/devices`: `{"tsn":"12345678","make":"ingenico","model":"axium","store":"s1"}`,
/// optionally with `"client_cert_sha256":["<64 hex>",…]` (PROTOCOL.md §2a, §9).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewDevice {
    pub(super) tsn: String,
    pub(super) make: String,
    pub(super) model: String,
    pub(super) store: String,
    #[serde(default)]
    pub(super) client_cert_sha256: Vec<String>,
}

/// `PATCH …/devices/{tsn}`: `{"enabled":false}` and/or `{"client_cert_sha256":[…]}` (the
/// pins are replaced); at least one of them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DevicePatch {
    #[serde(default)]
    pub(super) enabled: Option<bool>,
    #[serde(default)]
    pub(super) client_cert_sha256: Option<Vec<String>>,
}

/// A created domain.
#[derive(Serialize)]
pub(super) struct DomainOut<'a> {
    pub(super) domain: &'a str,
}

/// A created store.
#[derive(Serialize)]
pub(super) struct StoreOut<'a> {
    pub(super) store: &'a str,
    pub(super) merchant: &'a str,
}

/// A created client: the secret is shown this once.
#[derive(Serialize)]
pub(super) struct ClientOut<'a> {
    pub(super) client_id: &'a str,
    pub(super) client_secret: &'a str,
}

/// A device as provisioned.
#[derive(Serialize)]
pub(super) struct DeviceOut<'a> {
    pub(super) tsn: &'a str,
    pub(super) make: &'a str,
    pub(super) model: &'a str,
    pub(super) store: &'a str,
    pub(super) enabled: bool,
    /// Lowercase hex (§9: "either case; answered in lowercase").
    pub(super) client_cert_sha256: Vec<String>,
}

/// One entry of the device list.
#[derive(Serialize)]
pub(super) struct DeviceListEntry<'a> {
    pub(super) tsn: &'a str,
    pub(super) store: &'a str,
    pub(super) enabled: bool,
    pub(super) online: bool,
    pub(super) claimed_by: Option<String>,
    /// Lowercase hex.
    pub(super) client_cert_sha256: Vec<String>,
}

/// `{"devices":[…]}`.
#[derive(Serialize)]
pub(super) struct DeviceList<'a> {
    pub(super) devices: Vec<DeviceListEntry<'a>>,
}

/// A rotated-out secret stays good this long unless the call says otherwise: a day.
pub(super) const DEFAULT_GRACE_SECONDS: u64 = 86_400;

/// `POST …/clients/{id}/secret`: `{"grace_seconds":86400}` (or an empty body / `{}`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Rotation {
    #[serde(default)]
    pub(super) grace_seconds: Option<u64>,
}

/// A rotated secret: shown this once, with the old one's deadline.
#[derive(Serialize)]
pub(super) struct RotatedOut<'a> {
    pub(super) client_id: &'a str,
    pub(super) client_secret: &'a str,
    pub(super) previous_secret_valid_until: u64,
}

/// `{"domains":[…]}`.
#[derive(Serialize)]
pub(super) struct DomainList<'a> {
    pub(super) domains: Vec<&'a str>,
}

/// `{"stores":[{"store":…,"merchant":…}]}`.
#[derive(Serialize)]
pub(super) struct StoreList<'a> {
    pub(super) stores: Vec<StoreOut<'a>>,
}

/// One client of the client list: never its secret, nor the secret's hash.
#[derive(Serialize)]
pub(super) struct ClientListEntry<'a> {
    pub(super) client_id: &'a str,
    /// The store it may claim terminals of; `null` for the whole domain.
    pub(super) store: Option<&'a str>,
}

/// `{"clients":[…]}`.
#[derive(Serialize)]
pub(super) struct ClientList<'a> {
    pub(super) clients: Vec<ClientListEntry<'a>>,
}

/// Decodes a request body as `T`; `expected` is an example quoted in the error.
pub(super) fn parse<T: DeserializeOwned>(
    body: &[u8],
    expected: &'static str,
) -> Result<T, AdminError> {
    if body.len() > MAX_ADMIN_BODY {
        return Err(AdminError::BodyTooLarge {
            len: body.len(),
            max: MAX_ADMIN_BODY,
        });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::MalformedBody {
            reason: "empty body".to_owned(),
            expected,
        });
    }
    // simd-json parses in place: work on a copy.
    let mut buf = body.to_vec();
    simd_json::serde::from_slice(&mut buf).map_err(|e| AdminError::MalformedBody {
        reason: e.to_string(),
        expected,
    })
}
