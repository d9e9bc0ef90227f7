//! The admin API's paths (PROTOCOL.md §9), parsed into a route.

/// An admin endpoint, with its path parameters (still unvalidated text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    /// `/admin/v1/domains`
    Domains,
    /// `/admin/v1/domains/{domain}`
    Domain { domain: String },
    /// `/admin/v1/domains/{domain}/stores/{store}`
    Store { domain: String, store: String },
    /// `/admin/v1/domains/{domain}/stores`
    Stores { domain: String },
    /// `/admin/v1/domains/{domain}/clients`
    Clients { domain: String },
    /// `/admin/v1/domains/{domain}/clients/{client_id}`
    Client { domain: String, client_id: String },
    /// `/admin/v1/domains/{domain}/clients/{client_id}/secret`
    ClientSecret { domain: String, client_id: String },
    /// `/admin/v1/domains/{domain}/devices`
    Devices { domain: String },
    /// `/admin/v1/domains/{domain}/devices/{tsn}`
    Device { domain: String, tsn: String },
}

impl Route {
    /// The route of `path` (query string ignored), or `None`.
    pub(super) fn parse(path: &str) -> Option<Route> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let rest = path.strip_prefix("/admin/v1/domains")?;
        if rest.is_empty() {
            return Some(Route::Domains);
        }
        let rest = rest.strip_prefix('/')?;
        let segments: Vec<&str> = rest.split('/').collect();
        let seg = |i: usize| -> Option<String> {
            let s = segments.get(i)?;
            if s.is_empty() {
                None
            } else {
                percent_decode(s)
            }
        };
        let domain = seg(0)?;
        match (segments.len(), segments.get(1).copied()) {
            (1, None) => Some(Route::Domain { domain }),
            (3, Some("stores")) => Some(Route::Store {
                domain,
                store: seg(2)?,
            }),
            (2, Some("stores")) => Some(Route::Stores { domain }),
            (2, Some("clients")) => Some(Route::Clients { domain }),
            (2, Some("devices")) => Some(Route::Devices { domain }),
            (3, Some("clients")) => Some(Route::Client {
                domain,
                client_id: seg(2)?,
            }),
            (4, Some("clients")) if segments.get(3) == Some(&"secret") => {
                Some(Route::ClientSecret {
                    domain,
                    client_id: seg(2)?,
                })
            }
            (3, Some("devices")) => Some(Route::Device {
                domain,
                tsn: seg(2)?,
            }),
            _ => None,
        }
    }

    /// The methods this route serves, as an `Allow` header value.
    pub(super) fn allowed(&self) -> &'static str {
        match self {
            Route::Domains | Route::Stores { .. } | Route::Clients { .. } => "GET, POST",
            Route::Domain { .. } | Route::Store { .. } | Route::Client { .. } => "DELETE",
            Route::ClientSecret { .. } => "POST",
            Route::Devices { .. } => "GET, POST",
            Route::Device { .. } => "PATCH",
        }
    }
}

/// RFC 3986 §2.1 percent-decoding of one path segment; `None` for a bad escape or
/// a result that is not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_admin_path() {
        assert_eq!(Route::parse("/admin/v1/domains"), Some(Route::Domains));
        assert_eq!(
            Route::parse("/admin/v1/domains/acme"),
            Some(Route::Domain {
                domain: "acme".into()
            })
        );
        assert_eq!(
            Route::parse("/admin/v1/domains/acme/stores/s1"),
            Some(Route::Store {
                domain: "acme".into(),
                store: "s1".into()
            })
        );
        assert_eq!(
            Route::parse("/admin/v1/domains/acme/stores"),
            Some(Route::Stores {
                domain: "acme".into()
            })
        );
        assert_eq!(
            Route::parse("/admin/v1/domains/acme/clients/abc?x=1"),
            Some(Route::Client {
                domain: "acme".into(),
                client_id: "abc".into()
            })
        );
        assert_eq!(
            Route::parse("/admin/v1/domains/acme/devices/ingenico-move%205000-1"),
            Some(Route::Device {
                domain: "acme".into(),
                tsn: "ingenico-move 5000-1".into()
            })
        );
    }

    #[test]
    fn refuses_other_paths() {
        for path in [
            "/",
            "/admin/v1/domainsx",
            "/admin/v1/domains/",
            "/admin/v1/domains/acme/",
            "/admin/v1/domains//stores",
            "/admin/v1/domains/acme/stores/s1/x",
            "/admin/v1/domains/acme/devices/1/x",
            "/admin/v1/domains/acme/devices/%zz",
            "/admin/v1/domains/acme/devices/%e",
            "/admin/v1/domains/acme/devices/%ff",
        ] {
            assert_eq!(Route::parse(path), None, "{path}");
        }
    }
}
