//! Every relay → POS message of the control channel (PROTOCOL.md §4), as JSON bytes.
//!
//! Each builder returns one complete text message. `request_id` is echoed when the request
//! had one and omitted otherwise. Strings are escaped per RFC 8259 §7.

use super::error::ControlErrorCode;
use super::json::JsonWriter;
use super::request_id::RequestId;
use crate::ids::{Serial, SessionId};

/// One entry of a `devices` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    /// The bare serial.
    pub tsn: Serial,
    /// Whether the device has an open connection.
    pub online: bool,
}

/// `base` + `/cloud-connector/v1/session/<session_id>` (§4, §7a).
///
/// `base` is `--public-url` or `ws[s]://<Host>`; a trailing `/` on it is dropped.
pub fn session_url(base: &str, session_id: &SessionId) -> String {
    format!(
        "{}/cloud-connector/v1/session/{}",
        base.trim_end_matches('/'),
        session_id
    )
}

/// `{"type":"claimed","request_id":…,"tsn":…,"session_id":…,"session_url":…,"online":…,"pending_frames":N}`.
///
/// §4: "`pending_frames`: device messages waiting for this client's session (§5)".
pub fn claimed(
    request_id: Option<&RequestId>,
    tsn: &Serial,
    session_id: &SessionId,
    session_url: &str,
    online: bool,
    pending_frames: u64,
) -> Vec<u8> {
    JsonWriter::message("claimed")
        .opt_str("request_id", request_id.map(RequestId::as_str))
        .str("tsn", tsn.as_str())
        .str("session_id", session_id.as_str())
        .str("session_url", session_url)
        .bool("online", online)
        .u64("pending_frames", pending_frames)
        .finish()
}

/// `{"type":"released","request_id":…,"tsn":…}`.
pub fn released(request_id: Option<&RequestId>, tsn: &Serial) -> Vec<u8> {
    JsonWriter::message("released")
        .opt_str("request_id", request_id.map(RequestId::as_str))
        .str("tsn", tsn.as_str())
        .finish()
}

/// `{"type":"devices","request_id":…,"devices":[{"tsn":…,"online":…},…]}`.
pub fn devices(request_id: Option<&RequestId>, devices: &[DeviceEntry]) -> Vec<u8> {
    JsonWriter::message("devices")
        .opt_str("request_id", request_id.map(RequestId::as_str))
        .array("devices", devices, |w, d| {
            w.str("tsn", d.tsn.as_str()).bool("online", d.online);
        })
        .finish()
}

/// `{"type":"device_status","tsn":…,"online":…}`: pushed when a claimed device goes on- or offline.
pub fn device_status(tsn: &Serial, online: bool) -> Vec<u8> {
    JsonWriter::message("device_status")
        .str("tsn", tsn.as_str())
        .bool("online", online)
        .finish()
}

/// `{"type":"undelivered","tsn":…,"frames":N,"bytes":B}`: frames this POS sent that could
/// not be delivered (§6); `bytes` counts payload bytes.
pub fn undelivered(tsn: &Serial, frames: u64, bytes: u64) -> Vec<u8> {
    JsonWriter::message("undelivered")
        .str("tsn", tsn.as_str())
        .u64("frames", frames)
        .u64("bytes", bytes)
        .finish()
}

/// `{"type":"error","request_id":…,"code":…,"message":…}`.
pub fn error(request_id: Option<&RequestId>, code: ControlErrorCode, message: &str) -> Vec<u8> {
    JsonWriter::message("error")
        .opt_str("request_id", request_id.map(RequestId::as_str))
        .str("code", code.as_str())
        .str("message", message)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::prelude::*;
    use simd_json::BorrowedValue;

    fn serial(s: &str) -> Serial {
        Serial::new(s).expect("valid serial")
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).expect("utf-8")
    }

    fn field<'v>(v: &'v BorrowedValue<'_>, k: &str) -> Option<&'v str> {
        v.get(k).and_then(|x| x.as_str())
    }

    #[test]
    fn claimed_matches_section_4_and_round_trips() {
        let sid = SessionId::from_random([1; 16]);
        let url = session_url("ws://h:8080", &sid);
        assert_eq!(url, format!("ws://h:8080/cloud-connector/v1/session/{sid}"));
        let rid = RequestId::new("q\"1\u{1}").expect("short");
        let mut out = claimed(Some(&rid), &serial("123"), &sid, &url, true, 3);
        let v = simd_json::to_borrowed_value(&mut out).expect("valid json");
        assert_eq!(field(&v, "type"), Some("claimed"));
        assert_eq!(field(&v, "request_id"), Some("q\"1\u{1}"));
        assert_eq!(field(&v, "tsn"), Some("123"));
        assert_eq!(field(&v, "session_id"), Some(sid.as_str()));
        assert_eq!(field(&v, "session_url"), Some(url.as_str()));
        assert_eq!(v.get("online").and_then(|x| x.as_bool()), Some(true));
        assert_eq!(v.get("pending_frames").and_then(|x| x.as_u64()), Some(3));
        let none_waiting = claimed(None, &serial("1"), &sid, &url, false, 0);
        assert_eq!(
            text(none_waiting),
            format!(
                r#"{{"type":"claimed","tsn":"1","session_id":"{sid}","session_url":"{url}","online":false,"pending_frames":0}}"#
            )
        );
    }

    #[test]
    fn request_id_is_omitted_when_absent() {
        assert_eq!(
            text(released(None, &serial("9"))),
            r#"{"type":"released","tsn":"9"}"#
        );
        let rid = RequestId::new("r").expect("short");
        assert_eq!(
            text(released(Some(&rid), &serial("9"))),
            r#"{"type":"released","request_id":"r","tsn":"9"}"#
        );
    }

    #[test]
    fn devices_lists_every_entry() {
        let list = [
            DeviceEntry {
                tsn: serial("1"),
                online: true,
            },
            DeviceEntry {
                tsn: serial("2"),
                online: false,
            },
        ];
        assert_eq!(
            text(devices(None, &list)),
            r#"{"type":"devices","devices":[{"tsn":"1","online":true},{"tsn":"2","online":false}]}"#
        );
        let mut empty = devices(RequestId::new("e").ok().as_ref(), &[]);
        let v = simd_json::to_borrowed_value(&mut empty).expect("json");
        assert_eq!(
            v.get("devices").and_then(|d| d.as_array()).map(|a| a.len()),
            Some(0)
        );
        assert_eq!(field(&v, "request_id"), Some("e"));
    }

    #[test]
    fn pushed_events_match_section_4() {
        assert_eq!(
            text(device_status(&serial("5"), false)),
            r#"{"type":"device_status","tsn":"5","online":false}"#
        );
        assert_eq!(
            text(undelivered(&serial("5"), 3, 1024)),
            r#"{"type":"undelivered","tsn":"5","frames":3,"bytes":1024}"#
        );
        assert_eq!(
            text(error(
                None,
                ControlErrorCode::DeviceBusy,
                "claimed by another client"
            )),
            r#"{"type":"error","code":"device_busy","message":"claimed by another client"}"#
        );
        let mut out = error(None, ControlErrorCode::NotFound, "line\nbreak \\ \"q\"");
        let v = simd_json::to_borrowed_value(&mut out).expect("json");
        assert_eq!(field(&v, "message"), Some("line\nbreak \\ \"q\""));
        assert_eq!(field(&v, "code"), Some("not_found"));
    }
}
