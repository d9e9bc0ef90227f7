//! HTTP Basic client credentials (RFC 7617, as RFC 6749 §2.3.1 uses them).

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
    match authorization {
        None => BasicAuth::Absent,
        // RFC 7617 and RFC 6749 §2.3.1 (form-encoded id and secret): handshake::form.
        Some(header) => match crate::handshake::parse_basic_auth(header) {
            Some((client_id, client_secret)) => BasicAuth::Credentials {
                client_id,
                client_secret,
            },
            None => BasicAuth::Invalid,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

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
