//! HTTP Basic client credentials (RFC 7617, as RFC 6749 §2.3.1 uses them).

use base64::Engine as _;

/// An `Authorization` header's client credentials.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BasicAuth {
    /// No `Authorization` header.
    Absent,
    /// `Basic` with a decodable `id:secret`.
    Credentials {
        /// The client id.
        client_id: String,
        /// The client secret.
        client_secret: String,
    },
    /// Another scheme, or `Basic` that does not decode: a failed client authentication.
    Invalid,
}

/// Parses `Basic base64(urlencode(id) ":" urlencode(secret))`.
pub(super) fn parse(authorization: Option<&str>) -> BasicAuth {
    let Some(header) = authorization else {
        return BasicAuth::Absent;
    };
    let Some((scheme, encoded)) = header.trim().split_once(' ') else {
        return BasicAuth::Invalid;
    };
    // RFC 9110 §11.1: the scheme is case-insensitive.
    if !scheme.eq_ignore_ascii_case("basic") {
        return BasicAuth::Invalid;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return BasicAuth::Invalid;
    };
    // RFC 7617 §2: the user-id cannot contain ':', so the first ':' separates.
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return BasicAuth::Invalid;
    };
    let (id, secret) = (&decoded[..colon], &decoded[colon + 1..]);
    // RFC 6749 §2.3.1: both are form-urlencoded before they are put in the header.
    match (form_decode(id), form_decode(secret)) {
        (Some(client_id), Some(client_secret)) => BasicAuth::Credentials {
            client_id,
            client_secret,
        },
        _ => BasicAuth::Invalid,
    }
}

/// `application/x-www-form-urlencoded` decoding of one value ('+' is a space, `%XX` a
/// byte); `None` unless the result is UTF-8.
fn form_decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let hex = |at: usize| raw.get(at).and_then(|c| char::from(*c).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits are at most 0xff.
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            // WHATWG URL: a '%' not followed by two hex digits stays as it is.
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[test]
    fn decodes_id_and_secret() {
        assert_eq!(
            parse(Some(&basic("abc:s3cr%3At+x"))),
            BasicAuth::Credentials {
                client_id: "abc".into(),
                client_secret: "s3cr:t x".into()
            }
        );
        // Scheme is case-insensitive; the secret may contain ':'.
        assert_eq!(
            parse(Some(&basic("abc:a:b").replace("Basic", "bAsIc"))),
            BasicAuth::Credentials {
                client_id: "abc".into(),
                client_secret: "a:b".into()
            }
        );
    }

    #[test]
    fn absent_and_invalid() {
        assert_eq!(parse(None), BasicAuth::Absent);
        assert_eq!(parse(Some("Bearer abc")), BasicAuth::Invalid);
        assert_eq!(parse(Some("Basic")), BasicAuth::Invalid);
        assert_eq!(parse(Some("Basic !!!")), BasicAuth::Invalid);
        assert_eq!(parse(Some(&basic("no-colon"))), BasicAuth::Invalid);
        assert_eq!(parse(Some(&basic("a:%ff"))), BasicAuth::Invalid);
    }
}
