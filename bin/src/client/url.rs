//! `ws://` / `wss://` URLs: just enough parsing to open a TCP connection, send the
//! Host header and derive the relay's `http(s)://` base for the token endpoint.

use std::fmt;

/// A parsed `ws://host[:port][/path]` or `wss://…` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `wss://` (TLS) or `ws://`.
    pub secure: bool,
    /// Host name or IP literal, without brackets.
    pub host: String,
    /// Port (default 80 for `ws://`, 443 for `wss://`).
    pub port: u16,
    /// Origin-form target, always starting with `/`.
    pub path: String,
}

/// A URL that [`WsUrl::parse`] refused, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?} is not a ws:// or wss:// URL: {reason}")]
pub struct UrlError {
    /// The text given.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl WsUrl {
    /// Parses `ws://`, `wss://` (and, for convenience, `http://` / `https://`, which
    /// name the same listener).
    pub fn parse(url: &str) -> Result<WsUrl, UrlError> {
        let err = |reason| UrlError {
            url: url.to_owned(),
            reason,
        };
        let (secure, rest) = if let Some(r) = strip_prefix_ci(url, "wss://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(url, "ws://") {
            (false, r)
        } else if let Some(r) = strip_prefix_ci(url, "https://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(url, "http://") {
            (false, r)
        } else {
            return Err(err("it must start with ws:// or wss://"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes().get(i) == Some(&b'?') => {
                (&rest[..i], format!("/{}", &rest[i..]))
            }
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err(err("credentials in the URL are not supported"));
        }
        let default_port = if secure { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| err("unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| err("the port is not a number"))?,
                None if after.is_empty() => default_port,
                None => return Err(err("unexpected text after the host")),
            };
            (host.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| err("the port is not a number"))?,
                ),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(err("the host is empty"));
        }
        Ok(WsUrl {
            secure,
            host,
            port,
            path,
        })
    }

    /// The same listener with another path.
    pub fn with_path(&self, path: &str) -> WsUrl {
        WsUrl {
            path: path.to_owned(),
            ..self.clone()
        }
    }

    /// The `Host` header value (port omitted when it is the scheme's default).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.secure { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// `http(s)://authority` of the same listener (for the token endpoint).
    pub fn http_base(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }

    /// `ws(s)://authority` without a path.
    pub fn base(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        format!("{scheme}://{}", self.authority())
    }
}

impl fmt::Display for WsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.base(), self.path)
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let u = WsUrl::parse("ws://127.0.0.1:8080").unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 8080, "/")
        );
        let u = WsUrl::parse("wss://relay.example.com/cloud-connector/v1/session/abc").unwrap();
        assert_eq!((u.secure, u.port), (true, 443));
        assert_eq!(u.path, "/cloud-connector/v1/session/abc");
        assert_eq!(u.authority(), "relay.example.com");
        assert_eq!(u.http_base(), "https://relay.example.com");
        let u = WsUrl::parse("ws://[::1]:9000/x?y=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9000, "/x?y=1")
        );
        assert_eq!(u.to_string(), "ws://[::1]:9000/x?y=1");
        assert_eq!(WsUrl::parse("http://h:1").unwrap().base(), "ws://h:1");
        assert_eq!(WsUrl::parse("ws://h?q").unwrap().path, "/?q");
    }

    #[test]
    fn refuses_what_it_cannot_connect_to() {
        for bad in [
            "ftp://x",
            "ws://",
            "ws://:80",
            "ws://h:port",
            "ws://u:p@h",
            "ws://[::1",
        ] {
            assert!(WsUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
