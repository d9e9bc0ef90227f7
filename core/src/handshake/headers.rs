//! An owned list of header fields with case-insensitive lookup (RFC 9110 §5.1)
//! and the comma-separated list syntax (RFC 9110 §5.6.1).

use super::error::HandshakeError;

/// The header fields of a request or response, in the order received.
///
/// Names keep the case they arrived in; every lookup is ASCII case-insensitive
/// (RFC 9110 §5.1: "Field names are case-insensitive"). Values are trimmed of
/// surrounding whitespace (RFC 9110 §5.5). A value that is not UTF-8 (obs-text)
/// is kept with each invalid sequence replaced by U+FFFD: the relay never
/// interprets such values, and a mangled credential simply fails to verify.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<(String, String)>,
}

impl Headers {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a field.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.fields.push((name.into(), value.into()));
    }

    /// The first value of `name`, if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).next()
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of a header that may appear at most once.
    ///
    /// Errors with [`HandshakeError::DuplicateHeader`] when it appears twice or more.
    pub fn get_one(&self, name: &str) -> Result<Option<&str>, HandshakeError> {
        let mut all = self.get_all(name);
        let first = all.next();
        if all.next().is_some() {
            return Err(HandshakeError::DuplicateHeader {
                name: name.to_ascii_lowercase(),
            });
        }
        Ok(first)
    }

    /// True when `name` is present at least once.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every element of the comma-separated list carried by all `name` fields,
    /// trimmed, empty elements skipped (RFC 9110 §5.6.1, §5.3: several field
    /// lines of one name are one comma-joined list).
    pub fn list<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.get_all(name)
            .flat_map(|v| v.split(','))
            .map(|e| e.trim_matches(|c| c == ' ' || c == '\t'))
            .filter(|e| !e.is_empty())
    }

    /// True when the list in `name` holds `token`, ASCII case-insensitively
    /// (how `Connection` options and `Upgrade` protocols compare).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.list(name).any(|e| e.eq_ignore_ascii_case(token))
    }

    /// The request body length announced by `Content-Length`, if any.
    ///
    /// RFC 9112 §6.3 item 5: a value that is not a decimal number, or several
    /// differing values, make the framing invalid: 400. Several identical values
    /// (as separate lines or a list such as `5, 5`) are accepted as one.
    /// Enforcing a maximum body size is the caller's job (413).
    pub fn content_length(&self) -> Result<Option<usize>, HandshakeError> {
        let mut found: Option<usize> = None;
        for value in self.get_all("content-length") {
            for element in value.split(',') {
                let element = element.trim_matches(|c| c == ' ' || c == '\t');
                let n =
                    parse_decimal(element).ok_or_else(|| HandshakeError::InvalidContentLength {
                        value: value.to_owned(),
                    })?;
                match found {
                    Some(m) if m != n => return Err(HandshakeError::ConflictingContentLength),
                    _ => found = Some(n),
                }
            }
        }
        Ok(found)
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when there is no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Every (name, value) in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// `1*DIGIT` that fits in `usize` (RFC 9110 §8.6); no sign, no whitespace.
fn parse_decimal(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// True for `tchar` (RFC 9110 §5.6.2), the characters of an HTTP token.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// True when `s` is a non-empty HTTP `token` (RFC 9110 §5.6.2).
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(fields: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (n, v) in fields {
            h.push(*n, *v);
        }
        h
    }

    #[test]
    fn lookup_is_case_insensitive() {
        let h = h(&[("Host", "a"), ("X-Y", "1"), ("x-y", "2")]);
        assert_eq!(h.get("HOST"), Some("a"));
        assert_eq!(h.get_all("X-y").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(h.get("missing"), None);
        assert_eq!(h.get_one("host"), Ok(Some("a")));
        assert_eq!(
            h.get_one("x-Y"),
            Err(HandshakeError::DuplicateHeader { name: "x-y".into() })
        );
    }

    #[test]
    fn token_lists() {
        let h = h(&[
            ("Connection", "keep-alive, Upgrade"),
            ("Upgrade", " ,WebSocket"),
        ]);
        assert!(h.has_token("connection", "upgrade"));
        assert!(h.has_token("upgrade", "websocket"));
        assert!(!h.has_token("connection", "close"));
        assert!(!h.has_token("connection", "keep"));
        assert_eq!(h.list("upgrade").collect::<Vec<_>>(), ["WebSocket"]);
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(h(&[]).content_length(), Ok(None));
        assert_eq!(
            h(&[("Content-Length", "42")]).content_length(),
            Ok(Some(42))
        );
        assert_eq!(
            h(&[("Content-Length", "5, 5"), ("content-length", "5")]).content_length(),
            Ok(Some(5))
        );
        assert_eq!(
            h(&[("Content-Length", "5"), ("content-length", "6")]).content_length(),
            Err(HandshakeError::ConflictingContentLength)
        );
        for bad in ["", "+5", "-1", "0x10", "1 2", "99999999999999999999999999"] {
            assert_eq!(
                h(&[("Content-Length", bad)]).content_length(),
                Err(HandshakeError::InvalidContentLength { value: bad.into() }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tokens() {
        assert!(is_token("bearer.eyJ-_x.y"));
        assert!(is_token("sci"));
        assert!(!is_token(""));
        assert!(!is_token("a b"));
        assert!(!is_token("a/b"));
        assert!(!is_token("a=b"));
    }
}
