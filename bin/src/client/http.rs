//! HTTP calls: the OAuth2 token endpoint (PROTOCOL.md §1) on the relay listener and
//! the admin API (§9) on the admin listener.

use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// An HTTP agent (keep-alive, timeouts, TLS roots).
pub fn agent(tls: Option<Arc<rustls::ClientConfig>>) -> ureq::Agent {
    let mut builder = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls);
    }
    builder.build()
}

/// A failed HTTP call: the status (0 when no answer came) and the server's error text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {}", if *.status == 0 { .message.clone() } else { format!("HTTP {} {}", .status, .message) })]
pub struct HttpError {
    /// The call, e.g. `POST /admin/v1/domains`.
    pub what: String,
    /// The HTTP status, 0 for a transport error.
    pub status: u16,
    /// The answer's `error` (and `error_description`) or the transport error.
    pub message: String,
}

fn call_error(what: String, err: ureq::Error) -> HttpError {
    match err {
        ureq::Error::Status(status, resp) => {
            let body = resp.into_string().unwrap_or_default();
            let message = match serde_json::from_str::<Value>(&body) {
                Ok(v) => {
                    let e = v["error"].as_str().unwrap_or("").to_owned();
                    match v["error_description"].as_str() {
                        Some(d) => format!("{e} ({d})"),
                        None if e.is_empty() => body,
                        None => e,
                    }
                }
                Err(_) => body,
            };
            HttpError {
                what,
                status,
                message,
            }
        }
        ureq::Error::Transport(t) => {
            let text = t.to_string();
            let message = if text.contains("UnknownIssuer") {
                format!("{text}: the certificate is not signed by a CA this client trusts; pass --ca-file with your CA's PEM")
            } else if text.contains("Connection reset")
                || text.contains("connection closed before message completed")
                || text.contains("Bad Status")
            {
                format!("{text}: if that port speaks TLS, use wss:// (https://) instead of ws:// (http://)")
            } else {
                text
            };
            HttpError {
                what,
                status: 0,
                message,
            }
        }
    }
}

/// An access token from the token endpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct AccessToken {
    /// The JWT.
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// `POST {http_base}/oauth2/v1/{domain}/token` with the client credentials grant
/// (RFC 6749 §4.4), credentials in HTTP Basic (§2.3.1).
pub fn fetch_token(
    agent: &ureq::Agent,
    http_base: &str,
    domain: &str,
    client_id: &str,
    client_secret: &str,
) -> Result<AccessToken, HttpError> {
    let url = format!("{http_base}/oauth2/v1/{domain}/token");
    let what = format!("POST /oauth2/v1/{domain}/token");
    let resp = agent
        .post(&url)
        .set(
            "Authorization",
            &basic_authorization(client_id, client_secret),
        )
        .set("Content-Type", "application/x-www-form-urlencoded")
        .send_string("grant_type=client_credentials")
        .map_err(|e| call_error(what.clone(), e))?;
    let body = resp.into_string().map_err(|e| HttpError {
        what: what.clone(),
        status: 200,
        message: e.to_string(),
    })?;
    serde_json::from_str(&body).map_err(|e| HttpError {
        what,
        status: 200,
        message: format!("unexpected answer ({e}): {body}"),
    })
}

/// `Basic base64(id:secret)`, with id and secret form-urlencoded first (RFC 6749 §2.3.1):
/// the token endpoint's client authentication, and PROTOCOL.md §7c's on upgrades.
pub fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    use base64::Engine as _;
    let pair = format!("{}:{}", form_encode(client_id), form_encode(client_secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// application/x-www-form-urlencoded encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A POS client's credentials, shown once by the admin API.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct ClientCredentials {
    /// The client id.
    pub client_id: String,
    /// The secret (stored by the relay only as a hash).
    pub client_secret: String,
}

/// One device as the admin API lists it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct DeviceRow {
    /// Bare serial number.
    pub tsn: String,
    /// The store it belongs to.
    #[serde(default)]
    pub store: String,
    /// Whether it may register.
    pub enabled: bool,
    /// Whether its connection is open now.
    pub online: bool,
    /// The client id holding its claim, if any.
    pub claimed_by: Option<String>,
    /// The SHA-256 fingerprints (lowercase hex) of the client certificates pinned to it
    /// (PROTOCOL.md §2a).
    #[serde(default)]
    pub client_cert_sha256: Vec<String>,
}

#[derive(Deserialize)]
struct DeviceList {
    devices: Vec<DeviceRow>,
}

/// The admin API (PROTOCOL.md §9) over HTTP, with the admin bearer token.
#[derive(Debug, Clone)]
pub struct AdminClient {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl AdminClient {
    /// A client for the admin listener at `base` (e.g. `http://127.0.0.1:9080`).
    pub fn new(agent: ureq::Agent, base: &str, token: &str) -> AdminClient {
        AdminClient {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<String, HttpError> {
        let what = format!("{method} {path}");
        let req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token));
        let result = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let resp = result.map_err(|e| call_error(what.clone(), e))?;
        resp.into_string().map_err(|e| HttpError {
            what,
            status: 0,
            message: e.to_string(),
        })
    }

    /// `GET` on an admin path: the JSON answer.
    pub fn get(&self, path: &str) -> Result<Value, HttpError> {
        let text = self.call("GET", path, None)?;
        serde_json::from_str(&text).map_err(|e| HttpError {
            what: format!("GET {path}"),
            status: 200,
            message: format!("unexpected answer ({e}): {text}"),
        })
    }

    /// `POST` of a JSON body on an admin path: the JSON answer.
    pub fn post(&self, path: &str, body: Value) -> Result<Value, HttpError> {
        let text = self.call("POST", path, Some(body))?;
        serde_json::from_str(&text).map_err(|e| HttpError {
            what: format!("POST {path}"),
            status: 200,
            message: format!("unexpected answer ({e}): {text}"),
        })
    }

    /// `DELETE` on an admin path.
    pub fn delete(&self, path: &str) -> Result<(), HttpError> {
        self.call("DELETE", path, None).map(drop)
    }

    /// `POST /admin/v1/domains`.
    pub fn create_domain(&self, domain: &str) -> Result<(), HttpError> {
        self.call(
            "POST",
            "/admin/v1/domains",
            Some(serde_json::json!({ "domain": domain })),
        )
        .map(drop)
    }

    /// `POST /admin/v1/domains/{domain}/stores`.
    pub fn create_store(&self, domain: &str, store: &str, merchant: &str) -> Result<(), HttpError> {
        self.call(
            "POST",
            &format!("/admin/v1/domains/{domain}/stores"),
            Some(serde_json::json!({ "store": store, "merchant": merchant })),
        )
        .map(drop)
    }

    /// `POST /admin/v1/domains/{domain}/clients`: for one store, or the whole domain.
    pub fn create_client(
        &self,
        domain: &str,
        store: Option<&str>,
    ) -> Result<ClientCredentials, HttpError> {
        let body = match store {
            Some(s) => serde_json::json!({ "store": s }),
            None => serde_json::json!({}),
        };
        let path = format!("/admin/v1/domains/{domain}/clients");
        let text = self.call("POST", &path, Some(body))?;
        serde_json::from_str(&text).map_err(|e| HttpError {
            what: format!("POST {path}"),
            status: 201,
            message: format!("unexpected answer ({e}): {text}"),
        })
    }

    /// `DELETE /admin/v1/domains/{domain}/clients/{client_id}`.
    pub fn delete_client(&self, domain: &str, client_id: &str) -> Result<(), HttpError> {
        self.call(
            "DELETE",
            &format!("/admin/v1/domains/{domain}/clients/{client_id}"),
            None,
        )
        .map(drop)
    }

    /// `POST /admin/v1/domains/{domain}/devices`.
    pub fn create_device(
        &self,
        domain: &str,
        tsn: &str,
        make: &str,
        model: &str,
        store: &str,
    ) -> Result<(), HttpError> {
        self.call(
            "POST",
            &format!("/admin/v1/domains/{domain}/devices"),
            Some(serde_json::json!({ "tsn": tsn, "make": make, "model": model, "store": store })),
        )
        .map(drop)
    }

    /// `PATCH /admin/v1/domains/{domain}/devices/{tsn}` with `{"enabled":…}`.
    pub fn set_device_enabled(
        &self,
        domain: &str,
        tsn: &str,
        enabled: bool,
    ) -> Result<(), HttpError> {
        self.call(
            "PATCH",
            &format!("/admin/v1/domains/{domain}/devices/{tsn}"),
            Some(serde_json::json!({ "enabled": enabled })),
        )
        .map(drop)
    }

    /// `PATCH /admin/v1/domains/{domain}/devices/{tsn}` with `{"client_cert_sha256":[…]}`:
    /// replaces the device's pinned certificate fingerprints.
    pub fn set_device_pins(
        &self,
        domain: &str,
        tsn: &str,
        pins: &[String],
    ) -> Result<(), HttpError> {
        self.call(
            "PATCH",
            &format!("/admin/v1/domains/{domain}/devices/{tsn}"),
            Some(serde_json::json!({ "client_cert_sha256": pins })),
        )
        .map(drop)
    }

    /// `GET /admin/v1/domains/{domain}/devices`.
    pub fn list_devices(&self, domain: &str) -> Result<Vec<DeviceRow>, HttpError> {
        let path = format!("/admin/v1/domains/{domain}/devices");
        let text = self.call("GET", &path, None)?;
        serde_json::from_str::<DeviceList>(&text)
            .map(|l| l.devices)
            .map_err(|e| HttpError {
                what: format!("GET {path}"),
                status: 200,
                message: format!("unexpected answer ({e}): {text}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_of_credentials() {
        assert_eq!(form_encode("abc-_.*"), "abc-_.*");
        assert_eq!(form_encode("a b:c/+"), "a+b%3Ac%2F%2B");
    }

    #[test]
    fn status_errors_carry_the_servers_error_text() {
        let resp = ureq::Response::new(409, "Conflict", r#"{"error":"domain exists"}"#).unwrap();
        let e = call_error("POST /x".into(), ureq::Error::Status(409, resp));
        assert_eq!((e.status, e.message.as_str()), (409, "domain exists"));
        assert_eq!(e.to_string(), "POST /x: HTTP 409 domain exists");
    }
}
