//! The audit record of an admin call: who called (from which address, with or without
//! the admin token), what (the action and what it names) and the result (the status).
//! It never holds a body, a secret or a token: a created client's secret is in the
//! answer only.

#![forbid(unsafe_code)]

use super::route::Route;

/// One admin call, for the audit log line the io layer writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAudit {
    /// The action: `create_domain`, `list_domains`, `delete_domain`, `create_store`,
    /// `list_stores`, `delete_store`, `create_client`, `list_clients`, `delete_client`, `rotate_client_secret`,
    /// `create_device`, `list_devices`, `update_device`, or `unknown` (no such endpoint
    /// or method).
    pub action: &'static str,
    /// What the call names, from its path: `acme`, `acme/<client id>`, `acme/<tsn>`
    /// (at most 200 characters; `-` for none).
    pub target: String,
    /// Whether the caller showed the admin token (a 401 did not).
    pub authenticated: bool,
    /// The HTTP status answered.
    pub status: u16,
}

impl AdminAudit {
    /// The record of `method` on `path`, answered with `status`.
    pub fn of(method: &str, path: &str, status: u16) -> AdminAudit {
        let route = Route::parse(path);
        let action = match (&route, method) {
            (Some(Route::Domains), "POST") => "create_domain",
            (Some(Route::Domains), "GET") => "list_domains",
            (Some(Route::Domain { .. }), "DELETE") => "delete_domain",
            (Some(Route::Stores { .. }), "GET") => "list_stores",
            (Some(Route::Store { .. }), "DELETE") => "delete_store",
            (Some(Route::Clients { .. }), "GET") => "list_clients",
            (Some(Route::Stores { .. }), "POST") => "create_store",
            (Some(Route::Clients { .. }), "POST") => "create_client",
            (Some(Route::Client { .. }), "DELETE") => "delete_client",
            (Some(Route::ClientSecret { .. }), "POST") => "rotate_client_secret",
            (Some(Route::Devices { .. }), "POST") => "create_device",
            (Some(Route::Devices { .. }), "GET") => "list_devices",
            (Some(Route::Device { .. }), "PATCH") => "update_device",
            _ => "unknown",
        };
        let target = match &route {
            Some(Route::Domains) | None => "-".to_owned(),
            Some(
                Route::Domain { domain }
                | Route::Stores { domain }
                | Route::Clients { domain }
                | Route::Devices { domain },
            ) => domain.clone(),
            Some(Route::Store { domain, store }) => format!("{domain}/{store}"),
            Some(
                Route::Client { domain, client_id } | Route::ClientSecret { domain, client_id },
            ) => format!("{domain}/{client_id}"),
            Some(Route::Device { domain, tsn }) => format!("{domain}/{tsn}"),
        };
        AdminAudit {
            action,
            target: target.chars().take(200).collect(),
            authenticated: status != 401,
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_names_its_action_and_target() {
        let a = AdminAudit::of("DELETE", "/admin/v1/domains/acme/clients/c1", 204);
        assert_eq!(
            a,
            AdminAudit {
                action: "delete_client",
                target: "acme/c1".into(),
                authenticated: true,
                status: 204
            }
        );
        let a = AdminAudit::of("POST", "/admin/v1/domains", 401);
        assert_eq!(
            (a.action, a.target.as_str(), a.authenticated),
            ("create_domain", "-", false)
        );
        assert_eq!(
            AdminAudit::of("PUT", "/admin/v1/domains", 405).action,
            "unknown"
        );
        assert_eq!(AdminAudit::of("GET", "/nope", 404).target, "-");
        let a = AdminAudit::of("PATCH", "/admin/v1/domains/acme/devices/1%202", 200);
        assert_eq!((a.action, a.target.as_str()), ("update_device", "acme/1 2"));
    }
}
