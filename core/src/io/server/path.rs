//! The relay listener's paths (PROTOCOL.md §1-§5a, §10).

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Path {
    /// §1 `POST /oauth2/v1/{domain}/token`.
    Token(String),
    /// §2 `/cloud-connector/v1/device-listener`.
    DeviceListener,
    /// §3 `/cloud-connector/v1/device-connection/{session_id}`.
    DeviceConnection(String),
    /// §4 `/cloud-connector/v1/pos-listener`.
    PosListener,
    /// §5 `/cloud-connector/v1/session/{session_id}`.
    Session(String),
    /// §10 `/cloud-connector/v1/devices`.
    Devices,
    /// §10 `/cloud-connector/v1/devices/{tsn}` (the tsn as sent, not yet checked).
    Device(String),
    /// §5a `/cloud-connector/v1/devices/{tsn}/session`.
    DeviceSession(String),
    /// Anything else: 404.
    Unknown,
}

impl Path {
    /// Parses a request target. §2: "`/cloud-connector/v1/device-listener/` (and
    /// `/cloud-connector/v1/pos-listener/`) answer exactly like the paths without it": a
    /// trailing slash is ignored on every path.
    pub fn parse(path: &str) -> Path {
        let path = path.trim_end_matches('/');
        if let Some(rest) = path.strip_prefix("/oauth2/v1/") {
            if let Some(domain) = rest.strip_suffix("/token") {
                if !domain.is_empty() && !domain.contains('/') {
                    return Path::Token(domain.to_owned());
                }
            }
            return Path::Unknown;
        }
        match path.strip_prefix("/cloud-connector/v1/") {
            Some("device-listener") => Path::DeviceListener,
            Some("pos-listener") => Path::PosListener,
            Some("devices") => Path::Devices,
            Some(rest) => {
                let segment = |prefix: &str| {
                    rest.strip_prefix(prefix)
                        .filter(|id| !id.is_empty() && !id.contains('/'))
                        .map(str::to_owned)
                };
                if let Some(id) = segment("device-connection/") {
                    return Path::DeviceConnection(id);
                }
                if let Some(id) = segment("session/") {
                    return Path::Session(id);
                }
                if let Some(tsn) = segment("devices/") {
                    return Path::Device(tsn);
                }
                if let Some(tsn) = rest
                    .strip_prefix("devices/")
                    .and_then(|r| r.strip_suffix("/session"))
                    .filter(|tsn| !tsn.is_empty() && !tsn.contains('/'))
                {
                    return Path::DeviceSession(tsn.to_owned());
                }
                Path::Unknown
            }
            None => Path::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_parses_with_or_without_a_trailing_slash() {
        for slash in ["", "/"] {
            let p = |s: &str| Path::parse(&format!("{s}{slash}"));
            assert_eq!(p("/oauth2/v1/acme/token"), Path::Token("acme".into()));
            assert_eq!(
                p("/cloud-connector/v1/device-listener"),
                Path::DeviceListener
            );
            assert_eq!(p("/cloud-connector/v1/pos-listener"), Path::PosListener);
            assert_eq!(
                p("/cloud-connector/v1/device-connection/abc"),
                Path::DeviceConnection("abc".into())
            );
            assert_eq!(
                p("/cloud-connector/v1/session/abc"),
                Path::Session("abc".into())
            );
            assert_eq!(p("/cloud-connector/v1/devices"), Path::Devices);
            assert_eq!(
                p("/cloud-connector/v1/devices/12345678"),
                Path::Device("12345678".into())
            );
            assert_eq!(
                p("/cloud-connector/v1/devices/ingenico-axium-12345678/session"),
                Path::DeviceSession("ingenico-axium-12345678".into())
            );
        }
    }

    #[test]
    fn malformed_paths_are_unknown() {
        for path in [
            "/",
            "",
            "/oauth2/v1//token",
            "/oauth2/v1/a/b/token",
            "/oauth2/v1/acme",
            "/cloud-connector/v1/session/",
            "/cloud-connector/v1/session/a/b",
            "/cloud-connector/v1/device-connection",
            "/cloud-connector/v2/pos-listener",
            "/cloud-connector/v1/pos-listenerx",
            "/cloud-connector/v1/devices//session",
            "/cloud-connector/v1/devices/a/b",
            "/cloud-connector/v1/devices/a/session/b",
        ] {
            assert_eq!(Path::parse(path), Path::Unknown, "{path:?}");
        }
    }
}
