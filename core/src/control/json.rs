//! The JSON plumbing shared by the control messages: reading fields of a parsed object
//! (simd-json, in place) and writing objects with RFC 8259 §7 string escaping.

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::error::ControlError;
use super::MAX_CONTROL_MESSAGE;

/// Parses `bytes` (in place) into a JSON object, refusing oversize input, invalid JSON and
/// non-object values.
pub(crate) fn parse_object(bytes: &mut [u8]) -> Result<BorrowedValue<'_>, ControlError> {
    if bytes.len() > MAX_CONTROL_MESSAGE {
        return Err(ControlError::TooLarge {
            len: bytes.len(),
            max: MAX_CONTROL_MESSAGE,
        });
    }
    check_depth(bytes)?;
    let value = simd_json::to_borrowed_value(bytes).map_err(|e| ControlError::Malformed {
        reason: e.to_string(),
    })?;
    if value.as_object().is_none() {
        return Err(ControlError::NotObject {
            found: type_name(&value),
        });
    }
    Ok(value)
}

/// The deepest nesting of arrays and objects a control message may have.
pub(crate) const MAX_DEPTH: usize = 32;

/// Refuses input nested deeper than [`MAX_DEPTH`] before simd-json sees it: simd-json builds
/// and drops values recursively, and 64 KiB of `[` overflows the stack (found by a test).
/// Brackets inside strings do not count; the scan is linear and allocates nothing.
fn check_depth(bytes: &[u8]) -> Result<(), ControlError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ControlError::TooDeep { max: MAX_DEPTH });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The string field `field` of `object`: `Ok(None)` when absent or `null`, an error when it
/// holds any other non-string value.
pub(crate) fn optional_str<'v>(
    object: &'v BorrowedValue<'_>,
    field: &'static str,
) -> Result<Option<&'v str>, ControlError> {
    match object.get(field) {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or(ControlError::WrongType {
            field,
            expected: "string",
        }),
    }
}

/// The string field `field` of `object`, which must be present and a string.
pub(crate) fn required_str<'v>(
    object: &'v BorrowedValue<'_>,
    field: &'static str,
) -> Result<&'v str, ControlError> {
    optional_str(object, field)?.ok_or(ControlError::MissingField { field })
}

/// The JSON type name of `value`, for error messages.
fn type_name(value: &BorrowedValue<'_>) -> &'static str {
    if value.is_null() {
        "null"
    } else if value.is_bool() {
        "boolean"
    } else if value.is_number() {
        "number"
    } else if value.is_str() {
        "string"
    } else if value.is_array() {
        "array"
    } else {
        "object"
    }
}

/// Writes one JSON object, field by field, into a `Vec<u8>`. Infallible: keys are static
/// ASCII, strings are escaped by [`write_escaped`].
pub(crate) struct JsonWriter {
    buf: Vec<u8>,
    empty: bool,
}

impl JsonWriter {
    /// Starts an object whose first field is `"type":"<kind>"`.
    pub(crate) fn message(kind: &str) -> Self {
        let mut w = Self {
            buf: Vec::with_capacity(128),
            empty: true,
        };
        w.buf.push(b'{');
        w.str("type", kind);
        w
    }

    /// Starts an object with no `type` field (the HTTP answers of §10).
    pub(crate) fn object() -> Self {
        let mut w = Self {
            buf: Vec::with_capacity(128),
            empty: true,
        };
        w.buf.push(b'{');
        w
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.buf.push(b',');
        }
        self.empty = false;
        write_escaped(&mut self.buf, key);
        self.buf.push(b':');
    }

    /// Adds a string field.
    pub(crate) fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        write_escaped(&mut self.buf, value);
        self
    }

    /// Adds a string field when `value` is present; omits the field otherwise.
    pub(crate) fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        if let Some(value) = value {
            self.str(key, value);
        }
        self
    }

    /// Adds a string field, or `null` when `value` is absent.
    pub(crate) fn str_or_null(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(key, value),
            None => {
                self.key(key);
                self.buf.extend_from_slice(b"null");
                self
            }
        }
    }

    /// Adds a boolean field.
    pub(crate) fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// Adds an unsigned integer field.
    pub(crate) fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        self.buf.extend_from_slice(value.to_string().as_bytes());
        self
    }

    /// Adds a field whose value is an array of objects, each written by `each`.
    pub(crate) fn array<T>(
        &mut self,
        key: &str,
        items: impl IntoIterator<Item = T>,
        mut each: impl FnMut(&mut JsonWriter, T),
    ) -> &mut Self {
        self.key(key);
        self.buf.push(b'[');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            let mut inner = JsonWriter {
                buf: std::mem::take(&mut self.buf),
                empty: true,
            };
            inner.buf.push(b'{');
            each(&mut inner, item);
            inner.buf.push(b'}');
            self.buf = inner.buf;
        }
        self.buf.push(b']');
        self
    }

    /// Closes the object and returns its bytes.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.push(b'}');
        buf
    }
}

/// The length of `text` written by [`write_escaped`], quotes included, so a caller can
/// allocate a message exactly once.
pub(crate) fn escaped_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Writes `text` as a JSON string.
///
/// RFC 8259 §7: "All Unicode characters may be placed within the quotation marks, except
/// for the characters that MUST be escaped: quotation mark, reverse solidus, and the
/// control characters (U+0000 through U+001F)." Everything else is copied as UTF-8.
pub(crate) fn write_escaped(buf: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            _ => None,
        };
        if short.is_none() && b >= 0x20 {
            continue;
        }
        buf.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        match short {
            Some(esc) => buf.extend_from_slice(esc),
            // RFC 8259 §7: any character may be escaped as \u followed by four hex digits.
            None => buf.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        start = i + 1;
    }
    buf.extend_from_slice(bytes.get(start..).unwrap_or_default());
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str) -> String {
        let mut buf = Vec::new();
        write_escaped(&mut buf, text);
        String::from_utf8(buf).expect("escaper writes utf-8")
    }

    #[test]
    fn escapes_what_rfc_8259_section_7_requires() {
        assert_eq!(escaped("plain"), r#""plain""#);
        assert_eq!(escaped(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(escaped("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(escaped("\u{0}\u{1f}"), r#""\u0000\u001f""#);
        // Non-ASCII and DEL pass through unescaped.
        assert_eq!(escaped("é€\u{7f}/"), "\"é€\u{7f}/\"");
    }

    #[test]
    fn escaped_len_is_what_write_escaped_writes() {
        let all: String = (0u8..0x80).map(char::from).chain("é😀".chars()).collect();
        for text in ["", "plain", r#"a"b\c"#, "\n\u{1}é", all.as_str()] {
            assert_eq!(escaped_len(text), escaped(text).len(), "{text:?}");
        }
    }

    #[test]
    fn every_control_char_round_trips_through_simd_json() {
        let text: String = (0u8..0x80).map(char::from).chain("é😀".chars()).collect();
        let mut out = JsonWriter::message("t").str("s", &text).finish();
        let value = simd_json::to_borrowed_value(&mut out).expect("valid json");
        assert_eq!(value.get("s").and_then(|v| v.as_str()), Some(text.as_str()));
    }

    #[test]
    fn writes_objects_and_arrays() {
        let out = JsonWriter::message("x")
            .opt_str("a", None)
            .opt_str("b", Some("1"))
            .bool("c", false)
            .u64("d", u64::MAX)
            .array("e", [1u64, 2], |w, n| {
                w.u64("n", n);
            })
            .array("f", Vec::<u64>::new(), |_, _| {})
            .str_or_null("g", None)
            .str_or_null("h", Some("x"))
            .finish();
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"type":"x","b":"1","c":false,"d":18446744073709551615,"e":[{"n":1},{"n":2}],"f":[],"g":null,"h":"x"}"#
        );
        assert_eq!(JsonWriter::object().finish(), b"{}");
        assert_eq!(
            JsonWriter::object().bool("a", true).finish(),
            br#"{"a":true}"#
        );
    }

    #[test]
    fn parse_object_refuses_what_is_not_an_object() {
        assert!(matches!(
            parse_object(&mut b"[1]".to_vec()),
            Err(ControlError::NotObject { found: "array" })
        ));
        assert!(matches!(
            parse_object(&mut b"\"s\"".to_vec()),
            Err(ControlError::NotObject { found: "string" })
        ));
        assert!(matches!(
            parse_object(&mut b"{".to_vec()),
            Err(ControlError::Malformed { .. })
        ));
        assert!(matches!(
            parse_object(&mut vec![b' '; MAX_CONTROL_MESSAGE + 1]),
            Err(ControlError::TooLarge { .. })
        ));
    }

    #[test]
    fn nesting_is_bounded_and_brackets_in_strings_do_not_count() {
        let at_limit = format!(
            r#"{{"a":{}{}}}"#,
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(parse_object(&mut at_limit.into_bytes()).is_ok());
        let over = format!(
            r#"{{"a":{}{}}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert_eq!(
            parse_object(&mut over.into_bytes()).err(),
            Some(ControlError::TooDeep { max: MAX_DEPTH })
        );
        let quoted = format!(r#"{{"a":"{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
        assert!(parse_object(&mut quoted.into_bytes()).is_ok());
    }
}
