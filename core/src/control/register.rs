//! The device registration message (PROTOCOL.md §2) and the replies to it.
//!
//! A device opens `device-listener`, sends one `register` text message, receives one reply
//! (`registered` or `error`) and the relay closes: with [`CLOSE_AFTER_REGISTERED`] after
//! success, [`CLOSE_AFTER_ERROR`] after an error.

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::error::{ControlError, ControlErrorCode};
use super::json::{optional_str, parse_object, required_str, JsonWriter};
use crate::auth::ClientSecret;
use crate::ids::SessionId;

/// §2 / §8: the close code after a `registered` reply (normal closure).
pub const CLOSE_AFTER_REGISTERED: u16 = 1000;
/// §2 / §8: the close code after an `error` reply (policy).
pub const CLOSE_AFTER_ERROR: u16 = 1008;

/// `{"type":"register","tsn":"…","client_id":"…","client_secret":"…"}` (§2), or with the
/// credentials inside `custom_registration_data` (an object, or a string holding that JSON
/// object), the property a terminal configured from seed 001 carries them in.
///
/// Fields are taken as sent: resolving the tsn (bare or `<make>-<model>-<serial>`) and
/// checking the credentials is the caller's job; a `client_id` that is not a valid
/// [`crate::ids::ClientId`] should answer `invalid_client`, like an unknown one.
/// Unknown extra fields are ignored, at the top level and in `custom_registration_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// The device, bare serial or fully qualified.
    pub tsn: String,
    /// The POS client or domain application whose credentials the terminal carries.
    pub client_id: String,
    /// Its secret.
    pub client_secret: ClientSecret,
    /// Where the credentials were (for the operator's log line when they are refused).
    pub source: CredentialSource,
}

/// Where a registration carried its credentials (§2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// `client_id` and `client_secret` at the top level of the message.
    TopLevel,
    /// Inside `custom_registration_data`, as an object.
    CustomObject,
    /// Inside `custom_registration_data`, as a string holding the JSON object.
    CustomString,
}

impl CredentialSource {
    /// The name an operator recognises in the terminal's configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TopLevel => "top-level client_id/client_secret",
            Self::CustomObject => "custom_registration_data (object)",
            Self::CustomString => "custom_registration_data (string)",
        }
    }
}

/// The property a terminal carries its credentials in (PROTOCOL.md §2, seed 001).
const CUSTOM: &str = "custom_registration_data";

impl RegisterRequest {
    /// Parses the registration message (in place: pass a copy you own).
    ///
    /// Every refusal answers `bad_request` (§2): oversize, invalid or non-object JSON,
    /// `type` other than `register`, a missing or non-string `tsn`, `client_id` or
    /// `client_secret`; a `custom_registration_data` that is neither an object nor a string
    /// holding one; and, §2: "Credentials both at the top level and in
    /// `custom_registration_data` answer `bad_request`" (either credential field at the top
    /// level counts). `custom_registration_data: null` is absent.
    pub fn parse(bytes: &mut [u8]) -> Result<Self, ControlError> {
        let object = parse_object(bytes)?;
        let kind = required_str(&object, "type")?;
        if kind != "register" {
            return Err(ControlError::unknown_type(kind));
        }
        let tsn = required_str(&object, "tsn")?.to_owned();
        let top_id = optional_str(&object, "client_id")?;
        let top_secret = optional_str(&object, "client_secret")?;
        let top_level = top_id.is_some() || top_secret.is_some();
        let (client_id, client_secret, source) = match object.get(CUSTOM).filter(|v| !v.is_null()) {
            Some(value) if !top_level => custom_credentials(value)?,
            // §2: "Credentials both at the top level and in `custom_registration_data`
            // answer `bad_request`": credentials, not the property itself; whatever else a
            // terminal carries there beside top-level credentials is its own business.
            Some(value) if holds_credentials(value) => return Err(ControlError::CredentialsTwice),
            _ => {
                let id = top_id.ok_or(ControlError::MissingField { field: "client_id" })?;
                let secret = top_secret.ok_or(ControlError::MissingField {
                    field: "client_secret",
                })?;
                (
                    id.to_owned(),
                    ClientSecret::new(secret),
                    CredentialSource::TopLevel,
                )
            }
        };
        Ok(Self {
            tsn,
            client_id,
            client_secret,
            source,
        })
    }
}

/// The credentials inside `custom_registration_data`: an object, or a string holding one
/// (seed 001: `"{\"client_id\":\"…\",\"client_secret\":\"…\"}"`).
fn custom_credentials(
    value: &BorrowedValue<'_>,
) -> Result<(String, ClientSecret, CredentialSource), ControlError> {
    if value.as_object().is_some() {
        let (id, secret) = credentials_in(value)?;
        return Ok((id, secret, CredentialSource::CustomObject));
    }
    let Some(text) = value.as_str() else {
        return Err(ControlError::WrongType {
            field: CUSTOM,
            expected: "object or string holding a json object",
        });
    };
    // The string came out of a message within MAX_CONTROL_MESSAGE, so it is within it too.
    let mut inner = text.as_bytes().to_vec();
    let object = parse_object(&mut inner).map_err(|e| ControlError::CustomRegistrationData {
        reason: e.to_string(),
    })?;
    let (id, secret) = credentials_in(&object)?;
    Ok((id, secret, CredentialSource::CustomString))
}

/// Whether `custom_registration_data` carries a credential field (`client_id` or
/// `client_secret`), as an object or as a string holding one; any other value carries none.
fn holds_credentials(value: &BorrowedValue<'_>) -> bool {
    let has_one = |object: &BorrowedValue<'_>| {
        object
            .as_object()
            .is_some_and(|o| o.contains_key("client_id") || o.contains_key("client_secret"))
    };
    match value.as_str() {
        Some(text) => {
            // Within the message's size bound, like the message it came out of.
            let mut inner = text.as_bytes().to_vec();
            parse_object(&mut inner).is_ok_and(|object| has_one(&object))
        }
        None => has_one(value),
    }
}

/// `client_id` and `client_secret` of `custom_registration_data`'s object; the errors name
/// the nested field.
fn credentials_in(object: &BorrowedValue<'_>) -> Result<(String, ClientSecret), ControlError> {
    let nested = |e: ControlError| match e {
        ControlError::MissingField { field: "client_id" } => ControlError::MissingField {
            field: "custom_registration_data.client_id",
        },
        ControlError::MissingField {
            field: "client_secret",
        } => ControlError::MissingField {
            field: "custom_registration_data.client_secret",
        },
        ControlError::WrongType {
            field: "client_id",
            expected,
        } => ControlError::WrongType {
            field: "custom_registration_data.client_id",
            expected,
        },
        ControlError::WrongType {
            field: "client_secret",
            expected,
        } => ControlError::WrongType {
            field: "custom_registration_data.client_secret",
            expected,
        },
        other => other,
    };
    let id = required_str(object, "client_id")
        .map_err(nested)?
        .to_owned();
    let secret = required_str(object, "client_secret").map_err(nested)?;
    Ok((id, ClientSecret::new(secret)))
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
        assert_eq!(req.source, CredentialSource::TopLevel);
        assert!(!format!("{req:?}").contains("s3cr"));
    }

    #[test]
    fn credentials_in_custom_registration_data_as_an_object() {
        let req = parse(
            r#"{"type":"register","tsn":"1","custom_registration_data":{"client_id":"c1","client_secret":"k","lane":3}}"#,
        )
        .expect("valid");
        assert_eq!(
            (req.client_id.as_str(), req.client_secret.expose()),
            ("c1", "k")
        );
        assert_eq!(req.source, CredentialSource::CustomObject);
    }

    #[test]
    fn credentials_in_custom_registration_data_as_a_string_like_seed_001() {
        // Seed 001's example, escapes and all.
        let req = parse(
            r#"{"type":"register","tsn":"1","custom_registration_data":"{\"client_id\":\"c1d130d2-9dc0-4b0a-89f4-cd8f25d52afd\",\"client_secret\":\"JFc9QpS61D5lKIwv0fWPmigdy2sEinl3\"}"}"#,
        )
        .expect("valid");
        assert_eq!(req.client_id, "c1d130d2-9dc0-4b0a-89f4-cd8f25d52afd");
        assert_eq!(
            req.client_secret.expose(),
            "JFc9QpS61D5lKIwv0fWPmigdy2sEinl3"
        );
        assert_eq!(req.source, CredentialSource::CustomString);
        // A secret with a quote and a backslash survives both levels of escaping.
        let req = parse(
            r#"{"type":"register","tsn":"1","custom_registration_data":"{\"client_id\":\"c\",\"client_secret\":\"a\\\"b\\\\c\"}"}"#,
        )
        .expect("valid");
        assert_eq!(req.client_secret.expose(), "a\"b\\c");
        // null is absent: the top-level credentials are used.
        let req = parse(
            r#"{"type":"register","tsn":"1","client_id":"c","client_secret":"s","custom_registration_data":null}"#,
        )
        .expect("valid");
        assert_eq!(req.source, CredentialSource::TopLevel);
    }

    #[test]
    fn credentials_in_both_places_are_bad_request() {
        for text in [
            r#"{"type":"register","tsn":"1","client_id":"c","client_secret":"s","custom_registration_data":{"client_id":"c","client_secret":"s"}}"#,
            r#"{"type":"register","tsn":"1","client_id":"c","custom_registration_data":{"client_id":"c","client_secret":"s"}}"#,
            r#"{"type":"register","tsn":"1","client_secret":"s","custom_registration_data":"{\"client_id\":\"c\",\"client_secret\":\"s\"}"}"#,
            // Split between the two places is "both" too.
            r#"{"type":"register","tsn":"1","client_id":"c","custom_registration_data":{"client_secret":"s"}}"#,
        ] {
            assert_eq!(parse(text), Err(ControlError::CredentialsTwice), "{text}");
        }
        assert_eq!(
            ControlError::CredentialsTwice.code(),
            ControlErrorCode::BadRequest
        );
    }

    #[test]
    fn other_custom_registration_data_beside_top_level_credentials_is_the_terminals_own() {
        for custom in [
            r#"{"lane":3}"#,
            r#""{\"lane\":3}""#,
            r#""lane=3""#,
            r#"7"#,
            r#"[]"#,
        ] {
            let text = format!(
                r#"{{"type":"register","tsn":"1","client_id":"c","client_secret":"s","custom_registration_data":{custom}}}"#
            );
            let req = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (
                    req.client_id.as_str(),
                    req.client_secret.expose(),
                    req.source
                ),
                ("c", "s", CredentialSource::TopLevel),
                "{text}"
            );
        }
    }

    #[test]
    fn malformed_custom_registration_data_is_bad_request_naming_the_field() {
        let cases: &[(&str, ControlError)] = &[
            (
                r#"{"type":"register","tsn":"1","custom_registration_data":{"client_secret":"s"}}"#,
                ControlError::MissingField {
                    field: "custom_registration_data.client_id",
                },
            ),
            (
                r#"{"type":"register","tsn":"1","custom_registration_data":"{\"client_id\":\"c\"}"}"#,
                ControlError::MissingField {
                    field: "custom_registration_data.client_secret",
                },
            ),
            (
                r#"{"type":"register","tsn":"1","custom_registration_data":{"client_id":1,"client_secret":"s"}}"#,
                ControlError::WrongType {
                    field: "custom_registration_data.client_id",
                    expected: "string",
                },
            ),
            (
                r#"{"type":"register","tsn":"1","custom_registration_data":7}"#,
                ControlError::WrongType {
                    field: "custom_registration_data",
                    expected: "object or string holding a json object",
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).as_ref().err(), Some(want), "{text}");
        }
        // A string that is not a JSON object.
        for inner in [r#""not json""#, r#""[1,2]""#, r#""""#] {
            let text =
                format!(r#"{{"type":"register","tsn":"1","custom_registration_data":{inner}}}"#);
            assert!(
                matches!(
                    parse(&text),
                    Err(ControlError::CustomRegistrationData { .. })
                ),
                "{text}"
            );
        }
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
