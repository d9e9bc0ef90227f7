//! What a POS sends on its control channel (PROTOCOL.md §4): `claim`, `release`, `devices`.

use super::error::{ControlError, ControlErrorCode};
use super::json::{optional_str, parse_object, required_str};
use super::request_id::RequestId;

/// One control request from a POS.
///
/// `tsn` is the device as the POS named it: a bare serial or `<make>-<model>-<serial>` (§2).
/// Resolving it (and checking the client's scope, which answers `not_found`) is the caller's
/// job, with the store. Fields this version does not know are ignored, so that a newer POS
/// can talk to this relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRequest {
    /// `{"type":"claim","tsn":"…","request_id":"…"}`: take the device exclusively.
    Claim {
        /// Echoed on the answer.
        request_id: Option<RequestId>,
        /// The device as named by the POS.
        tsn: String,
    },
    /// `{"type":"release","tsn":"…","request_id":"…"}`: end the claim.
    Release {
        /// Echoed on the answer.
        request_id: Option<RequestId>,
        /// The device as named by the POS.
        tsn: String,
    },
    /// `{"type":"devices","request_id":"…"}`: list the devices in the client's scope.
    Devices {
        /// Echoed on the answer.
        request_id: Option<RequestId>,
    },
}

/// A control request that was refused, with the `request_id` it carried when that much
/// could be read, so the `bad_request` answer still reaches the right caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct RequestRejected {
    /// The request's `request_id`, if it had a valid one.
    pub request_id: Option<RequestId>,
    /// What was wrong.
    pub error: ControlError,
}

impl RequestRejected {
    /// The wire code: `bad_request`.
    pub fn code(&self) -> ControlErrorCode {
        self.error.code()
    }

    /// The `{"type":"error","request_id":…,"code":"bad_request","message":…}` answer.
    pub fn reply(&self) -> Vec<u8> {
        super::event::error(
            self.request_id.as_ref(),
            self.code(),
            &self.error.to_string(),
        )
    }
}

impl ControlRequest {
    /// Parses one control-channel text message.
    ///
    /// simd-json parses in place, so `bytes` is clobbered: pass a copy you own. Refuses
    /// (as `bad_request`) input over [`super::MAX_CONTROL_MESSAGE`], invalid JSON, non-object
    /// JSON, a missing or non-string `type`, an unknown `type`, a missing or non-string `tsn`
    /// on `claim`/`release`, and a non-string or over-long `request_id` (`null` = absent).
    pub fn parse(bytes: &mut [u8]) -> Result<Self, RequestRejected> {
        let object = parse_object(bytes).map_err(|error| RequestRejected {
            request_id: None,
            error,
        })?;
        let request_id = optional_str(&object, "request_id")
            .and_then(|id| id.map(RequestId::new).transpose())
            .map_err(|error| RequestRejected {
                request_id: None,
                error,
            })?;
        let reject = |error| RequestRejected {
            request_id: request_id.clone(),
            error,
        };
        let kind = required_str(&object, "type").map_err(reject)?;
        match kind {
            "claim" => Ok(Self::Claim {
                tsn: required_str(&object, "tsn").map_err(reject)?.to_owned(),
                request_id,
            }),
            "release" => Ok(Self::Release {
                tsn: required_str(&object, "tsn").map_err(reject)?.to_owned(),
                request_id,
            }),
            "devices" => Ok(Self::Devices { request_id }),
            other => Err(reject(ControlError::unknown_type(other))),
        }
    }

    /// The request's `request_id`, to echo on the answer.
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            Self::Claim { request_id, .. }
            | Self::Release { request_id, .. }
            | Self::Devices { request_id } => request_id.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::MAX_CONTROL_MESSAGE;

    fn parse(text: &str) -> Result<ControlRequest, RequestRejected> {
        ControlRequest::parse(&mut text.as_bytes().to_vec())
    }

    fn rid(s: &str) -> Option<RequestId> {
        RequestId::new(s).ok()
    }

    #[test]
    fn parses_the_three_requests() {
        assert_eq!(
            parse(r#"{"type":"claim","tsn":"12345678","request_id":"r1"}"#),
            Ok(ControlRequest::Claim {
                request_id: rid("r1"),
                tsn: "12345678".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"release","tsn":"ingenico-axium-1"}"#),
            Ok(ControlRequest::Release {
                request_id: None,
                tsn: "ingenico-axium-1".into()
            })
        );
        assert_eq!(
            parse(r#" {"request_id":"x","type":"devices","extra":[1,{"a":2}]} "#),
            Ok(ControlRequest::Devices {
                request_id: rid("x")
            })
        );
    }

    #[test]
    fn request_id_is_echoed_exactly_including_escapes() {
        let req = parse(r#"{"type":"devices","request_id":"a\"b\\c\u00e9\n"}"#).expect("valid");
        assert_eq!(req.request_id().map(RequestId::as_str), Some("a\"b\\cé\n"));
    }

    #[test]
    fn null_request_id_is_absent() {
        assert_eq!(
            parse(r#"{"type":"devices","request_id":null}"#),
            Ok(ControlRequest::Devices { request_id: None })
        );
    }

    #[test]
    fn number_request_id_is_bad_request() {
        let err = parse(r#"{"type":"devices","request_id":7}"#).expect_err("refused");
        assert_eq!(
            err.error,
            ControlError::WrongType {
                field: "request_id",
                expected: "string"
            }
        );
        assert_eq!(err.request_id, None);
        assert_eq!(err.code(), ControlErrorCode::BadRequest);
    }

    #[test]
    fn refusals_keep_the_request_id_when_it_was_readable() {
        let err = parse(r#"{"type":"claim","request_id":"r9"}"#).expect_err("no tsn");
        assert_eq!(err.error, ControlError::MissingField { field: "tsn" });
        assert_eq!(err.request_id, rid("r9"));
        let reply = String::from_utf8(err.reply()).expect("utf-8");
        assert_eq!(
            reply,
            r#"{"type":"error","request_id":"r9","code":"bad_request","message":"field \"tsn\" is required"}"#
        );
    }

    #[test]
    fn refuses_every_malformed_shape() {
        let cases: &[(&str, ControlError)] = &[
            (
                r#"{"tsn":"1"}"#,
                ControlError::MissingField { field: "type" },
            ),
            (
                r#"{"type":1}"#,
                ControlError::WrongType {
                    field: "type",
                    expected: "string",
                },
            ),
            (
                r#"{"type":"claim","tsn":12}"#,
                ControlError::WrongType {
                    field: "tsn",
                    expected: "string",
                },
            ),
            (
                r#"{"type":"release","tsn":null}"#,
                ControlError::MissingField { field: "tsn" },
            ),
            (
                r#"{"type":"bogus"}"#,
                ControlError::UnknownType {
                    found: "bogus".into(),
                },
            ),
            (r#"[]"#, ControlError::NotObject { found: "array" }),
            (r#"null"#, ControlError::NotObject { found: "null" }),
            (r#"17"#, ControlError::NotObject { found: "number" }),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse(text).map_err(|e| e.error),
                Err(want.clone()),
                "{text}"
            );
        }
        for text in ["", "{", "{\"type\":\"claim\",}", "not json", "{\"a\":tru}"] {
            assert!(
                matches!(
                    parse(text).map_err(|e| e.error),
                    Err(ControlError::Malformed { .. })
                ),
                "{text:?}"
            );
        }
    }

    #[test]
    fn long_request_id_and_oversize_messages_are_refused() {
        let long = format!(r#"{{"type":"devices","request_id":"{}"}}"#, "x".repeat(257));
        assert_eq!(
            parse(&long).map_err(|e| e.error),
            Err(ControlError::RequestIdTooLong { len: 257, max: 256 })
        );
        let pad = " ".repeat(MAX_CONTROL_MESSAGE);
        let big = format!(r#"{{"type":"devices"}}{pad}"#);
        assert!(matches!(
            parse(&big).map_err(|e| e.error),
            Err(ControlError::TooLarge { .. })
        ));
        // Exactly at the limit is parsed.
        let mut fits = br#"{"type":"devices"}"#.to_vec();
        fits.resize(MAX_CONTROL_MESSAGE, b' ');
        assert!(ControlRequest::parse(&mut fits).is_ok());
    }

    #[test]
    fn deep_nesting_within_the_limit_does_not_crash() {
        let mut deep = format!(
            r#"{{"type":"devices","x":{}{}}}"#,
            "[".repeat(30_000),
            "]".repeat(30_000)
        )
        .into_bytes();
        // simd-json alone overflows the stack here; the depth check refuses it first.
        assert!(matches!(
            ControlRequest::parse(&mut deep).map_err(|e| e.error),
            Err(ControlError::TooDeep { .. })
        ));
        let mut open = "[".repeat(MAX_CONTROL_MESSAGE).into_bytes();
        assert!(ControlRequest::parse(&mut open).is_err());
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let mut bytes = b"{\"type\":\"claim\",\"tsn\":\"\xff\"}".to_vec();
        assert!(matches!(
            ControlRequest::parse(&mut bytes).map_err(|e| e.error),
            Err(ControlError::Malformed { .. })
        ));
    }
}
