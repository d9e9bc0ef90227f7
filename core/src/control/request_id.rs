//! The `request_id` a POS may put on a control request, echoed back on its answer (§4).

use super::error::ControlError;

/// The longest `request_id` accepted, in bytes (UTF-8).
pub const MAX_REQUEST_ID: usize = 256;

/// An opaque correlation id chosen by the POS: any JSON string of at most
/// [`MAX_REQUEST_ID`] bytes, echoed back exactly (re-escaped per RFC 8259 §7).
///
/// Decision: a `request_id` that is a JSON number (or any other non-string) is refused as
/// `bad_request`. Echoing it back as a string would change its JSON type, and a POS that
/// matches answers by value and type would silently never see its answer; refusing says so.
/// A `null` `request_id` is taken as absent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// Wraps `value` if it is at most [`MAX_REQUEST_ID`] bytes.
    pub fn new(value: impl Into<String>) -> Result<Self, ControlError> {
        let value = value.into();
        if value.len() > MAX_REQUEST_ID {
            return Err(ControlError::RequestIdTooLong {
                len: value.len(),
                max: MAX_REQUEST_ID,
            });
        }
        Ok(Self(value))
    }

    /// The id as the POS sent it (unescaped).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_bounded_in_bytes() {
        assert!(RequestId::new("x".repeat(MAX_REQUEST_ID)).is_ok());
        assert_eq!(
            RequestId::new("x".repeat(MAX_REQUEST_ID + 1)),
            Err(ControlError::RequestIdTooLong {
                len: 257,
                max: MAX_REQUEST_ID
            })
        );
        // 129 two-byte chars = 258 bytes.
        assert!(RequestId::new("é".repeat(129)).is_err());
        assert_eq!(RequestId::new("").map(|r| r.as_str().len()), Ok(0));
    }
}
