//! Setup over plain HTTP, before the load phase: provisioning through the
//! admin API (PROTOCOL.md §9) and the POS's access token (§1). Blocking, with
//! `ureq`; nothing here is measured.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};

/// The tenant every benchmark provisions.
pub const DOMAIN: &str = "bench";
/// Its one store.
pub const STORE: &str = "s1";

/// A POS client's credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `client_id`.
    pub client_id: String,
    /// `client_secret`.
    pub client_secret: String,
}

/// What a posrelay run needs from provisioning.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// A domain-wide client: the POS claims with it and devices register with it.
    pub client: Credentials,
    /// Its access token.
    pub access_token: String,
    /// The devices' serial numbers, one per pair.
    pub tsns: Vec<String>,
}

/// The serial number of device `i`.
pub fn tsn(i: usize) -> String {
    format!("{:08}", 10_000_000 + i)
}

/// A client of the admin API.
pub struct Admin {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Admin {
    /// Talks to the admin listener at `addr` with `token`.
    pub fn new(addr: SocketAddr, token: &str) -> Admin {
        Admin {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
            base: format!("http://{addr}"),
            auth: format!("Bearer {token}"),
        }
    }

    /// POSTs `body` to `path`; the status and the JSON answer (`null` if none).
    fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let res = self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("Authorization", &self.auth)
            .set("Content-Type", "application/json")
            .send_string(&body.to_string());
        answer(res).with_context(|| format!("POST {path}"))
    }

    /// Creates the domain and its store, accepting an answer that says they exist.
    pub fn create_tenancy(&self) -> anyhow::Result<()> {
        let (s, v) = self.post("/admin/v1/domains", &json!({ "domain": DOMAIN }))?;
        expect_created(s, &v, "domain")?;
        let (s, v) = self.post(
            &format!("/admin/v1/domains/{DOMAIN}/stores"),
            &json!({ "store": STORE, "merchant": "m1" }),
        )?;
        expect_created(s, &v, "store")
    }

    /// Creates a domain-wide client.
    pub fn create_client(&self) -> anyhow::Result<Credentials> {
        let (s, v) = self.post(&format!("/admin/v1/domains/{DOMAIN}/clients"), &json!({}))?;
        if s != 201 {
            bail!("creating a client answered {s} {v}");
        }
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("client answer without {k}: {v}"))
        };
        Ok(Credentials {
            client_id: field("client_id")?,
            client_secret: field("client_secret")?,
        })
    }

    /// Creates device `tsn` in the store.
    pub fn create_device(&self, tsn: &str) -> anyhow::Result<()> {
        let (s, v) = self.post(
            &format!("/admin/v1/domains/{DOMAIN}/devices"),
            &json!({ "tsn": tsn, "make": "ingenico", "model": "axium", "store": STORE }),
        )?;
        expect_created(s, &v, "device")
    }
}

fn expect_created(status: u16, body: &Value, what: &str) -> anyhow::Result<()> {
    // 409 (already there) is fine: a data directory may be reused.
    if status == 201 || status == 200 || status == 409 {
        Ok(())
    } else {
        bail!("creating the {what} answered {status} {body}")
    }
}

fn answer(res: Result<ureq::Response, ureq::Error>) -> anyhow::Result<(u16, Value)> {
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    let status = resp.status();
    let text = resp.into_string()?;
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, value))
}

/// Gets an access token for `client` (RFC 6749 §4.4, credentials in the body), over
/// https when `tls` is given.
pub fn access_token(
    relay: SocketAddr,
    client: &Credentials,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> anyhow::Result<String> {
    let mut agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30));
    let scheme = match tls {
        Some(config) => {
            agent = agent.tls_config(config);
            "https"
        }
        None => "http",
    };
    let agent = agent.build();
    let res = agent
        .post(&format!("{scheme}://{relay}/oauth2/v1/{DOMAIN}/token"))
        .send_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &client.client_id),
            ("client_secret", &client.client_secret),
        ]);
    let (status, v) = answer(res).context("POST token")?;
    if status != 200 {
        bail!("token endpoint answered {status} {v}");
    }
    v.get("access_token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("token answer without access_token: {v}"))
}

/// Provisions the tenancy, one client and `devices` devices (on `threads`
/// parallel admin connections), then gets the client's access token.
pub fn provision(
    admin_addr: SocketAddr,
    relay: SocketAddr,
    token: &str,
    devices: usize,
    threads: usize,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Provisioned> {
    let admin = Admin::new(admin_addr, token);
    admin.create_tenancy()?;
    let client = admin.create_client()?;
    let tsns: Vec<String> = (0..devices).map(tsn).collect();
    let threads = threads.clamp(1, 16);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let tsns = &tsns;
                s.spawn(move || -> anyhow::Result<()> {
                    let admin = Admin::new(admin_addr, token);
                    for tsn in tsns.iter().skip(t).step_by(threads) {
                        admin.create_device(tsn)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow!("provisioning thread panicked"))??;
        }
        Ok(())
    })?;
    let access_token = access_token(relay, &client, tls)?;
    Ok(Provisioned {
        client,
        access_token,
        tsns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_eight_digits_and_distinct() {
        assert_eq!(tsn(0), "10000000");
        assert_eq!(tsn(9_999), "10009999");
        assert_ne!(tsn(1), tsn(2));
    }
}
