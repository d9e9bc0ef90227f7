//! Why a control or registration message was refused, and the error codes of the wire.

/// The `code` of a `{"type":"error",...}` message.
///
/// §4 (control channel): `bad_request`, `not_found`, `device_busy`, `offline`.
/// §2 (registration): `invalid_client`, `unknown_device`, `device_disabled`, `bad_request`.
/// §7b (login by first message): `not_found`, `device_busy`, `offline`, `forbidden`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlErrorCode {
    /// The message is not a well-formed request (§2, §4).
    BadRequest,
    /// No such device in the client's scope, including another tenant's device (§4).
    NotFound,
    /// The device is claimed by another POS client (§4).
    DeviceBusy,
    /// The device has not registered since the relay started, or is disabled (§4).
    Offline,
    /// Registration credentials are wrong or unknown (§2).
    InvalidClient,
    /// Registration names a device that is not provisioned, or not in the credentials' scope (§2).
    UnknownDevice,
    /// Registration names a disabled device (§2).
    DeviceDisabled,
    /// §7b: a token that is valid but not for this session (where the upgrade would
    /// have answered `403`).
    Forbidden,
}

impl ControlErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::DeviceBusy => "device_busy",
            Self::Offline => "offline",
            Self::InvalidClient => "invalid_client",
            Self::UnknownDevice => "unknown_device",
            Self::DeviceDisabled => "device_disabled",
            Self::Forbidden => "forbidden",
        }
    }
}

impl std::fmt::Display for ControlErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A control or registration message that breaks a rule of §2 or §4.
///
/// Every variant answers `bad_request`; the variant (and its message, which is sent as the
/// error's `message`) says which rule was broken. Peer text quoted in a message is cut to
/// [`QUOTE_LIMIT`] bytes so an error reply never grows with the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Larger than [`crate::control::MAX_CONTROL_MESSAGE`].
    #[error("message is {len} bytes, the limit is {max}")]
    TooLarge {
        /// Size of the message.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON at all (RFC 8259).
    #[error("message is not valid json: {reason}")]
    Malformed {
        /// The parser's description.
        reason: String,
    },
    /// Arrays and objects nested deeper than the control messages ever need.
    #[error("message is nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// Valid JSON, but not an object.
    #[error("message must be a json object, got {found}")]
    NotObject {
        /// The JSON type found instead.
        found: &'static str,
    },
    /// A required field is absent.
    #[error("field {field:?} is required")]
    MissingField {
        /// The field.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field {field:?} must be a {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// The JSON type it must have.
        expected: &'static str,
    },
    /// `type` names no message this endpoint knows.
    #[error("unknown message type {found:?}")]
    UnknownType {
        /// The type given (cut to [`QUOTE_LIMIT`] bytes).
        found: String,
    },
    /// §2: credentials both at the top level and inside `custom_registration_data`.
    #[error(
        "credentials both at the top level and in custom_registration_data: send them in one place"
    )]
    CredentialsTwice,
    /// §2: `custom_registration_data` is a string that does not hold a JSON object.
    #[error("custom_registration_data must be a json object or a string holding one: {reason}")]
    CustomRegistrationData {
        /// What was wrong with the string's content.
        reason: String,
    },
    /// `request_id` is longer than [`crate::control::request_id::MAX_REQUEST_ID`].
    #[error("request_id is {len} bytes, the limit is {max}")]
    RequestIdTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// How many bytes of peer text an error message quotes at most.
pub const QUOTE_LIMIT: usize = 64;

impl ControlError {
    /// The wire code of this error: always `bad_request` (§2, §4).
    pub fn code(&self) -> ControlErrorCode {
        match self {
            Self::TooLarge { .. }
            | Self::Malformed { .. }
            | Self::TooDeep { .. }
            | Self::NotObject { .. }
            | Self::MissingField { .. }
            | Self::WrongType { .. }
            | Self::UnknownType { .. }
            | Self::CredentialsTwice
            | Self::CustomRegistrationData { .. }
            | Self::RequestIdTooLong { .. } => ControlErrorCode::BadRequest,
        }
    }

    /// An [`UnknownType`](Self::UnknownType) quoting at most [`QUOTE_LIMIT`] bytes of `found`.
    pub(crate) fn unknown_type(found: &str) -> Self {
        Self::UnknownType {
            found: quote(found).to_owned(),
        }
    }
}

/// The longest prefix of `text` that is at most [`QUOTE_LIMIT`] bytes and ends on a char boundary.
fn quote(text: &str) -> &str {
    if text.len() <= QUOTE_LIMIT {
        return text;
    }
    let mut end = QUOTE_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_wire_strings() {
        let all = [
            (ControlErrorCode::BadRequest, "bad_request"),
            (ControlErrorCode::NotFound, "not_found"),
            (ControlErrorCode::DeviceBusy, "device_busy"),
            (ControlErrorCode::Offline, "offline"),
            (ControlErrorCode::InvalidClient, "invalid_client"),
            (ControlErrorCode::UnknownDevice, "unknown_device"),
            (ControlErrorCode::DeviceDisabled, "device_disabled"),
            (ControlErrorCode::Forbidden, "forbidden"),
        ];
        for (code, text) in all {
            assert_eq!(code.as_str(), text);
            assert_eq!(code.to_string(), text);
        }
    }

    #[test]
    fn every_parse_error_is_bad_request() {
        let errors = [
            ControlError::TooLarge { len: 1, max: 0 },
            ControlError::Malformed { reason: "x".into() },
            ControlError::TooDeep { max: 32 },
            ControlError::NotObject { found: "array" },
            ControlError::MissingField { field: "tsn" },
            ControlError::WrongType {
                field: "tsn",
                expected: "string",
            },
            ControlError::unknown_type("nope"),
            ControlError::RequestIdTooLong { len: 300, max: 256 },
            ControlError::CredentialsTwice,
            ControlError::CustomRegistrationData { reason: "x".into() },
        ];
        for e in errors {
            assert_eq!(e.code(), ControlErrorCode::BadRequest, "{e}");
        }
    }

    #[test]
    fn quoted_peer_text_is_bounded_and_utf8_safe() {
        let long = "é".repeat(100); // 2 bytes each
        let ControlError::UnknownType { found } = ControlError::unknown_type(&long) else {
            panic!("wrong variant");
        };
        assert!(found.len() <= QUOTE_LIMIT);
        assert_eq!(found, "é".repeat(32));
        let odd = format!("a{}", "é".repeat(100));
        let ControlError::UnknownType { found } = ControlError::unknown_type(&odd) else {
            panic!("wrong variant");
        };
        assert_eq!(found.len(), 63);
    }
}
