//! Device status over HTTP (PROTOCOL.md §10): the JSON answers of
//! `GET /cloud-connector/v1/devices` (a list) and `GET /cloud-connector/v1/devices/{tsn}`
//! (one object), like a terminal-status API:
//!
//! ```json
//! {"devices":[{"tsn":"12345678","online":true,"last_seen":"2026-12-02T14:06:45Z","claim":"yours"}]}
//! ```
//!
//! Pure: the caller gathers presence, `last_seen` and the claim holder; nothing here reads
//! a clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::json::JsonWriter;
use crate::ids::{ClientKey, Serial};

/// §10 `claim`: who holds the device's claim, as seen by the client asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimView {
    /// Nobody holds it.
    None,
    /// The asking client holds it.
    Yours,
    /// Another client holds it.
    Other,
}

impl ClaimView {
    /// The view of a claim held by `holder` (if any) for the client `asking`.
    pub fn of(holder: Option<&ClientKey>, asking: &ClientKey) -> Self {
        match holder {
            None => Self::None,
            Some(holder) if holder == asking => Self::Yours,
            Some(_) => Self::Other,
        }
    }

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Yours => "yours",
            Self::Other => "other",
        }
    }
}

/// One device's status (§10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// The bare serial ("every reply and event names the device by its bare serial", §2).
    pub tsn: Serial,
    /// Whether the device has an open connection.
    pub online: bool,
    /// When the device last had a connection: now when online, `None` if it has not
    /// connected since the relay started.
    pub last_seen: Option<SystemTime>,
    /// Who holds its claim.
    pub claim: ClaimView,
}

/// `{"devices":[…]}`: the answer of `GET /cloud-connector/v1/devices`.
pub fn device_status_list(devices: &[DeviceStatus]) -> Vec<u8> {
    JsonWriter::object()
        .array("devices", devices, write_status)
        .finish()
}

/// One object: the answer of `GET /cloud-connector/v1/devices/{tsn}`.
pub fn device_status_one(device: &DeviceStatus) -> Vec<u8> {
    let mut w = JsonWriter::object();
    write_status(&mut w, device);
    w.finish()
}

fn write_status(w: &mut JsonWriter, d: &DeviceStatus) {
    let last_seen = d.last_seen.map(rfc3339_utc);
    w.str("tsn", d.tsn.as_str())
        .bool("online", d.online)
        .str_or_null("last_seen", last_seen.as_deref())
        .str("claim", d.claim.as_str());
}

/// The last second of year 9999, the latest time RFC 3339 can write (§5.6: four-digit year).
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// `t` as RFC 3339 in UTC, to the second (`2026-12-02T14:06:45Z`). Times before 1970 or
/// after 9999 (a clock gone wrong, never a real connection) are written as the nearest
/// time that can be, rather than failing the answer.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .min(LAST_RFC3339_SECOND);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientId, DomainName};
    use simd_json::prelude::*;

    fn client(id: &str) -> ClientKey {
        ClientKey {
            domain: DomainName::new("acme").expect("name"),
            client_id: ClientId::new(id).expect("id"),
        }
    }

    fn status(tsn: &str, online: bool, last_seen: Option<u64>, claim: ClaimView) -> DeviceStatus {
        DeviceStatus {
            tsn: Serial::new(tsn).expect("serial"),
            online,
            last_seen: last_seen.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            claim,
        }
    }

    #[test]
    fn claim_view_is_seen_from_the_asking_client() {
        let me = client("me");
        let other = client("other");
        assert_eq!(ClaimView::of(None, &me), ClaimView::None);
        assert_eq!(ClaimView::of(Some(&me), &me), ClaimView::Yours);
        assert_eq!(ClaimView::of(Some(&other), &me), ClaimView::Other);
        // The same id in another domain is another client.
        let twin = ClientKey {
            domain: DomainName::new("globex").expect("name"),
            client_id: me.client_id.clone(),
        };
        assert_eq!(ClaimView::of(Some(&twin), &me), ClaimView::Other);
    }

    #[test]
    fn the_list_matches_section_10() {
        // 2026-12-02T14:06:45Z, the example of §10.
        let out = device_status_list(&[
            status("12345678", true, Some(1_796_220_405), ClaimView::Yours),
            status("87654321", false, None, ClaimView::None),
            status("5", false, Some(0), ClaimView::Other),
        ]);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            concat!(
                r#"{"devices":["#,
                r#"{"tsn":"12345678","online":true,"last_seen":"2026-12-02T14:06:45Z","claim":"yours"},"#,
                r#"{"tsn":"87654321","online":false,"last_seen":null,"claim":"none"},"#,
                r#"{"tsn":"5","online":false,"last_seen":"1970-01-01T00:00:00Z","claim":"other"}"#,
                r#"]}"#
            )
        );
        assert_eq!(device_status_list(&[]), br#"{"devices":[]}"#);
    }

    #[test]
    fn the_single_form_is_one_object() {
        let mut out = device_status_one(&status("1", true, Some(1_700_000_000), ClaimView::None));
        let v = simd_json::to_borrowed_value(&mut out).expect("json");
        assert_eq!(v.get("tsn").and_then(|x| x.as_str()), Some("1"));
        assert_eq!(v.get("online").and_then(|x| x.as_bool()), Some(true));
        assert_eq!(
            v.get("last_seen").and_then(|x| x.as_str()),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(v.get("claim").and_then(|x| x.as_str()), Some("none"));
        assert!(v.get("devices").is_none());
    }

    #[test]
    fn rfc3339_is_utc_to_the_second_and_never_fails() {
        let t = UNIX_EPOCH + Duration::new(1_796_220_405, 999_999_999);
        assert_eq!(rfc3339_utc(t), "2026-12-02T14:06:45Z");
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 100)),
            "9999-12-31T23:59:59Z"
        );
        // Round trip through the parser of the same crate.
        let parsed = humantime::parse_rfc3339("2024-02-29T23:59:59Z").expect("valid");
        assert_eq!(rfc3339_utc(parsed), "2024-02-29T23:59:59Z");
    }
}
