//! Decoding the credentials of the OAuth token endpoint (PROTOCOL.md §1):
//! `application/x-www-form-urlencoded` bodies and HTTP Basic client authentication.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

use super::error::HandshakeError;

/// Decodes an `application/x-www-form-urlencoded` body (WHATWG URL §5.1) into
/// (name, value) pairs, in order.
///
/// Strict where the WHATWG parser is lenient, because a mangled credential must
/// not pass silently: a `%` not followed by two hex digits, or a name or value
/// that is not UTF-8 once decoded, is a 400. `+` is a space. Empty segments
/// (`a=1&&b=2`) are skipped; a segment without `=` is a name with an empty value.
/// Repeated names are all returned: RFC 6749 §3.1 says a parameter "MUST NOT be
/// included more than once", which the token endpoint decides (`invalid_request`).
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, HandshakeError> {
    let mut pairs = Vec::new();
    let mut offset = 0;
    for segment in body.split(|&b| b == b'&') {
        if !segment.is_empty() {
            let (name, value) = match segment.iter().position(|&b| b == b'=') {
                Some(eq) => (&segment[..eq], &segment[eq + 1..]),
                None => (segment, &[][..]),
            };
            let value_offset = offset + name.len() + 1;
            pairs.push((decode(name, offset)?, decode(value, value_offset)?));
        }
        offset += segment.len() + 1;
    }
    Ok(pairs)
}

/// Decodes one form component; `offset` is its position in the body, for errors.
fn decode(component: &[u8], offset: usize) -> Result<String, HandshakeError> {
    // Every `%` must start a `%XX` escape (percent-encoding would pass it through).
    let mut i = 0;
    while let Some(p) = component
        .get(i..)
        .and_then(|r| r.iter().position(|&b| b == b'%'))
    {
        let at = i + p;
        let hex = |k: usize| component.get(at + k).is_some_and(u8::is_ascii_hexdigit);
        if !(hex(1) && hex(2)) {
            return Err(HandshakeError::BadPercentEscape { at: offset + at });
        }
        i = at + 3;
    }
    // WHATWG URL §5.1: 0x2B (+) stands for 0x20 (space); a literal + is %2B.
    let plus_decoded: Vec<u8> = component
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&plus_decoded)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| HandshakeError::FormNotUtf8)
}

/// Base64 as RFC 7617 §2 uses it (RFC 4648 §4), padding optional on input.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The (client_id, client_secret) of an `Authorization: Basic ...` value.
///
/// RFC 7617 §2: the scheme name is case-insensitive, followed by one or more
/// spaces and base64 of `user-id ":" password`; the user-id ends at the first
/// colon. The decoded bytes must be UTF-8 (RFC 7617 §2.1). RFC 6749 §2.3.1:
/// client_id and client_secret are form-urlencoded before base64, so each is
/// form-decoded here (`+` is a space, `%XX` an escape).
///
/// `None` for another scheme or any malformed value; the token endpoint answers
/// `401 invalid_client` then (RFC 6749 §5.2).
pub fn parse_basic_auth(header_value: &str) -> Option<(String, String)> {
    let value = header_value.trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASIC_B64.decode(rest.trim_start_matches(' ')).ok()?;
    let text = std::str::from_utf8(&decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let id = decode(id.as_bytes(), 0).ok()?;
    let secret = decode(secret.as_bytes(), 0).ok()?;
    Some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn token_request_body() {
        assert_eq!(
            parse_form(b"grant_type=client_credentials&client_id=pos%201&client_secret=a+b%2Bc%3D"),
            Ok(pairs(&[
                ("grant_type", "client_credentials"),
                ("client_id", "pos 1"),
                ("client_secret", "a b+c="),
            ]))
        );
    }

    #[test]
    fn edge_cases() {
        assert_eq!(parse_form(b""), Ok(vec![]));
        assert_eq!(
            parse_form(b"&a&&b=&=c&d=1=2"),
            Ok(pairs(&[("a", ""), ("b", ""), ("", "c"), ("d", "1=2")]))
        );
        assert_eq!(parse_form(b"x=%C3%A9"), Ok(pairs(&[("x", "é")])));
        assert_eq!(parse_form(b"x=1&x=2").unwrap().len(), 2);
    }

    #[test]
    fn bad_escapes_and_utf8_are_400() {
        assert_eq!(
            parse_form(b"a=1&b=%4"),
            Err(HandshakeError::BadPercentEscape { at: 6 })
        );
        assert_eq!(
            parse_form(b"a%zz=1"),
            Err(HandshakeError::BadPercentEscape { at: 1 })
        );
        assert_eq!(
            parse_form(b"a=%"),
            Err(HandshakeError::BadPercentEscape { at: 2 })
        );
        assert_eq!(parse_form(b"a=%FF"), Err(HandshakeError::FormNotUtf8));
        assert_eq!(parse_form(b"a=\xff"), Err(HandshakeError::FormNotUtf8));
        assert_eq!(parse_form(b"a=%FF").unwrap_err().status().0, 400);
    }

    #[test]
    fn basic_auth() {
        // RFC 7617 §2 example: "Aladdin:open sesame".
        assert_eq!(
            parse_basic_auth("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Some(("Aladdin".into(), "open sesame".into()))
        );
        assert_eq!(
            parse_basic_auth("basic  QWxhZGRpbjpvcGVuIHNlc2FtZQ"),
            Some(("Aladdin".into(), "open sesame".into()))
        );
        // RFC 6749 §2.3.1: form-urlencoded before base64; secret may contain ':'.
        let v = format!("Basic {}", STANDARD.encode("pos%3A1:s+e:c%25"));
        assert_eq!(
            parse_basic_auth(&v),
            Some(("pos:1".into(), "s e:c%".into()))
        );
        assert_eq!(parse_basic_auth("Bearer abc"), None);
        assert_eq!(parse_basic_auth("Basic"), None);
        assert_eq!(parse_basic_auth("Basic !!!"), None);
        assert_eq!(
            parse_basic_auth(&format!("Basic {}", STANDARD.encode("nocolon"))),
            None
        );
        assert_eq!(
            parse_basic_auth(&format!("Basic {}", STANDARD.encode(b"a:\xff"))),
            None
        );
        assert_eq!(
            parse_basic_auth(&format!("Basic {}", STANDARD.encode("a:%zz"))),
            None
        );
    }
}
