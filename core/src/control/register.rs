//! The device registration message (PROTOCOL.md §2) and the replies to it.
//!
//! A device opens `device-listener`, sends one `register` text message, receives one reply
//! (`registered` or `error`) and the relay closes: with [`CLOSE_AFTER_REGISTERED`] after
//! success, [`CLOSE_AFTER_ERROR`] after an error.

use super::error::{ControlError, ControlErrorCode};
use super::json::{parse_object, required_str, JsonWriter};
use crate::auth::ClientSecret;
use crate::ids::SessionId;

/// §2 / §8: the close code after a `registered` reply (normal closure).
pub const CLOSE_AFTER_REGISTERED: u16 = 1000;
/// §2 / §8: the close code after an `error` reply (policy).
pub const CLOSE_AFTER_ERROR: u16 = 1008;

/// `{"type":"register","tsn":"…","client_id":"…","client_secret":"…"}` (§2).
///
/// Fields are taken as sent: resolving the tsn (bare or `<make>-<model>-<serial>`) and
/// checking the credentials is the caller's job; a `client_id` that is not a valid
/// [`crate::ids::ClientId`] should answer `invalid_client`, like an unknown one.
/// Unknown extra fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// The device, bare serial or fully qualified.
    pub tsn: String,
    /// The POS client or domain application whose credentials the terminal carries.
    pub client_id: String,
    /// Its secret.
    pub client_secret: ClientSecret,
}

impl RegisterRequest {
    /// Parses the registration message (in place: pass a copy you own).
    ///
    /// Every refusal answers `bad_request` (§2): oversize, invalid or non-object JSON,
    /// `type` other than `register`, a missing or non-string `tsn`, `client_id` or
    /// `client_secret`.
    pub fn parse(bytes: &mut [u8]) -> Result<Self, ControlError> {
        let object = parse_object(bytes)?;
        let kind = required_str(&object, "type")?;
        if kind != "register" {
            return Err(ControlError::unknown_type(kind));
        }
        Ok(Self {
            tsn: required_str(&object, "tsn")?.to_owned(),
            client_id: required_str(&object, "client_id")?.to_owned(),
            client_secret: ClientSecret::new(required_str(&object, "client_secret")?),
        })
    }
}

/// `base` + `/cloud-connector/v1/device-connection/<session_id>` (§2, §7a).
///
/// `base` is `--public-url` or `ws[s]://<Host>`; a trailing `/` on it is dropped.
pub fn connection_url(base: &str, session_id: &SessionId) -> String {
    format!(
        "{}/cloud-connector/v1/device-connection/{}",
        base.trim_end_matches('/'),
        session_id
    )
}

/// The `registered` reply (§2).
pub fn registered_reply(
    session_id: &SessionId,
    connection_url: &str,
    token: &str,
    expires_in: u64,
) -> Vec<u8> {
    JsonWriter::message("registered")
        .str("session_id", session_id.as_str())
        .str("connection_url", connection_url)
        .str("token", token)
        .u64("expires_in", expires_in)
        .finish()
}

/// The `{"type":"error","code":…,"message":…}` reply to a refused registration (§2).
pub fn error_reply(code: ControlErrorCode, message: &str) -> Vec<u8> {
    super::event::error(None, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::prelude::*;

    fn parse(text: &str) -> Result<RegisterRequest, ControlError> {
        RegisterRequest::parse(&mut text.as_bytes().to_vec())
    }

    #[test]
    fn parses_the_register_message() {
        let req = parse(
            r#"{"type":"register","tsn":"ingenico-axium-12345678","client_id":"c1","client_secret":"s3cr\"t","custom":1}"#,
        )
        .expect("valid");
        assert_eq!(req.tsn, "ingenico-axium-12345678");
        assert_eq!(req.client_id, "c1");
        assert_eq!(req.client_secret.expose(), "s3cr\"t");
        assert!(!format!("{req:?}").contains("s3cr"));
    }

    #[test]
    fn refuses_bad_registrations_as_bad_request() {
        let cases: &[(&str, ControlError)] = &[
            (
                r#"{"type":"claim","tsn":"1","client_id":"c","client_secret":"s"}"#,
                ControlError::UnknownType {
                    found: "claim".into(),
                },
            ),
            (
                r#"{"type":"register","client_id":"c","client_secret":"s"}"#,
                ControlError::MissingField { field: "tsn" },
            ),
            (
                r#"{"type":"register","tsn":"1","client_secret":"s"}"#,
                ControlError::MissingField { field: "client_id" },
            ),
            (
                r#"{"type":"register","tsn":"1","client_id":"c","client_secret":5}"#,
                ControlError::WrongType {
                    field: "client_secret",
                    expected: "string",
                },
            ),
            ("[]", ControlError::NotObject { found: "array" }),
        ];
        for (text, want) in cases {
            let got = parse(text);
            assert_eq!(got.as_ref().err(), Some(want), "{text}");
            assert_eq!(
                got.err().map(|e| e.code()),
                Some(ControlErrorCode::BadRequest)
            );
        }
    }

    #[test]
    fn registered_reply_matches_section_2() {
        let sid = SessionId::from_random([7; 16]);
        let url = connection_url("wss://relay.example/", &sid);
        assert_eq!(
            url,
            format!("wss://relay.example/cloud-connector/v1/device-connection/{sid}")
        );
        let mut out = registered_reply(&sid, &url, "a.b.c", 300);
        assert_eq!(
            String::from_utf8(out.clone()).expect("utf-8"),
            format!(
                r#"{{"type":"registered","session_id":"{sid}","connection_url":"{url}","token":"a.b.c","expires_in":300}}"#
            )
        );
        let v = simd_json::to_borrowed_value(&mut out).expect("json");
        assert_eq!(v.get("expires_in").and_then(|v| v.as_u64()), Some(300));
    }

    #[test]
    fn error_reply_has_code_and_message_and_no_request_id() {
        let out = error_reply(ControlErrorCode::UnknownDevice, "no \"such\" device");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"type":"error","code":"unknown_device","message":"no \"such\" device"}"#
        );
    }
}
