//! `posrelay admin`: the admin API (PROTOCOL.md §9) from the command line, with
//! readable tables, or JSON with `--json`.

use crate::client::http::{agent, AdminClient, ClientCredentials, DeviceRow};
use crate::client::tls::client_config;
use anyhow::Context as _;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use posrelay_core::tenancy::CertFingerprint;
use serde_json::json;
use std::path::PathBuf;

/// Flags of `posrelay admin`.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Admin listener URL
    #[arg(
        long,
        default_value = "http://127.0.0.1:9080",
        value_name = "URL",
        global = true
    )]
    pub admin_url: String,
    /// Admin API token (better: the POSRELAY_ADMIN_TOKEN environment variable)
    #[arg(
        long,
        env = "POSRELAY_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        global = true
    )]
    pub admin_token: Option<String>,
    /// Print JSON instead of tables and sentences
    #[arg(long, global = true)]
    pub json: bool,
    /// PEM file of the CA certificates to trust for an https:// admin URL
    #[arg(long, value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// One admin call.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// Create a domain (a tenant)
    CreateDomain {
        /// Domain name, e.g. acme
        domain: String,
    },
    /// List the domains
    ListDomains,
    /// Delete a domain (refused while it has stores, clients or terminals)
    DeleteDomain {
        /// Domain name
        domain: String,
    },
    /// Create a store of a merchant in a domain
    CreateStore {
        /// The domain
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// The merchant the store belongs to
        #[arg(long, value_name = "MERCHANT")]
        merchant: String,
        /// Store name
        store: String,
    },
    /// List a domain's stores
    ListStores {
        /// The domain
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
    },
    /// Delete a store (refused while terminals or clients belong to it)
    DeleteStore {
        /// The domain
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// Store name
        store: String,
    },
    /// Create a POS client (prints its id and secret; the secret is shown once)
    CreateClient {
        /// The domain
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// The store it may claim terminals of [default: the whole domain]
        #[arg(long, value_name = "STORE")]
        store: Option<String>,
    },
    /// List a domain's POS clients (ids and scopes, never secrets)
    ListClients {
        /// The domain
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
    },
    /// Give a POS client a new secret; the old one keeps working for --grace (the new secret is shown once)
    RotateSecret {
        /// The domain
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// How long the old secret keeps working, so terminals and POS can move over
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_grace)]
        grace: std::time::Duration,
        /// The client id (it may start with '-': base64url)
        #[arg(allow_hyphen_values = true)]
        client_id: String,
    },
    /// Delete a POS client (its tokens stop working)
    DeleteClient {
        /// The domain
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// The client id (it may start with '-': base64url)
        #[arg(allow_hyphen_values = true)]
        client_id: String,
    },
    /// Provision a terminal
    CreateDevice {
        /// The domain
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// The store it belongs to
        #[arg(long, value_name = "STORE")]
        store: String,
        /// Make, e.g. verifone
        #[arg(long, value_name = "MAKE")]
        make: String,
        /// Model, e.g. p400
        #[arg(long, value_name = "MODEL")]
        model: String,
        /// Terminal serial number
        tsn: String,
    },
    /// List a domain's terminals with their state
    ListDevices {
        /// The domain
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
    },
    /// Disable a terminal (its connection is closed; it cannot register)
    DisableDevice {
        /// The domain
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// Terminal serial number
        tsn: String,
    },
    /// Enable a disabled terminal again
    EnableDevice {
        /// The domain
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// Terminal serial number
        tsn: String,
    },
    /// Pin a terminal's TLS client certificate (mTLS listener): prints its SHA-256 fingerprint
    ///
    /// The certificate's fingerprint is added to the terminal's pins (those already there
    /// stay, so that a rotation can pin the new certificate beside the old one; remove the
    /// old one with unpin-cert once the terminal uses the new one).
    PinCert {
        /// The domain
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// Terminal serial number
        tsn: String,
        /// PEM file of the terminal's client certificate (its first certificate is pinned)
        file: PathBuf,
    },
    /// Remove a pinned client certificate from a terminal (a connection made with it is closed)
    UnpinCert {
        /// The domain
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// Terminal serial number
        tsn: String,
        /// PEM file of the certificate, or its SHA-256 fingerprint (64 hex digits)
        certificate: String,
    },
}

fn parse_grace(s: &str) -> Result<std::time::Duration, String> {
    crate::units::parse_duration(s)
}

/// Runs one admin call and prints its result.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let Some(token) = args.admin_token.as_deref() else {
        anyhow::bail!("no admin token: set POSRELAY_ADMIN_TOKEN (or pass --admin-token)");
    };
    let tls = if args.admin_url.starts_with("https://") {
        Some(client_config(args.ca_file.as_deref())?)
    } else {
        None
    };
    let admin = AdminClient::new(agent(tls), &args.admin_url, token);
    let out = execute(&admin, &args.command, args.json)
        .map_err(|e| anyhow::anyhow!("{}", cli_hints(&format!("{e:#}"))))?;
    println!("{out}");
    Ok(())
}

/// Makes the call; returns what to print.
fn execute(admin: &AdminClient, command: &AdminCommand, as_json: bool) -> anyhow::Result<String> {
    let done = |sentence: String, value: serde_json::Value| {
        if as_json {
            value.to_string()
        } else {
            sentence
        }
    };
    Ok(match command {
        AdminCommand::CreateDomain { domain } => {
            admin.create_domain(domain)?;
            done(
                format!("created domain {domain}"),
                json!({ "domain": domain, "created": true }),
            )
        }
        AdminCommand::ListDomains => {
            let v = admin.get("/admin/v1/domains")?;
            let names: Vec<String> = v["domains"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if as_json {
                v.to_string()
            } else if names.is_empty() {
                "no domains".to_owned()
            } else {
                names.join("\n")
            }
        }
        AdminCommand::DeleteDomain { domain } => {
            admin.delete(&format!("/admin/v1/domains/{domain}"))?;
            done(
                format!("deleted domain {domain}"),
                json!({ "domain": domain, "deleted": true }),
            )
        }
        AdminCommand::ListStores { domain } => {
            let v = admin.get(&format!("/admin/v1/domains/{domain}/stores"))?;
            if as_json {
                v.to_string()
            } else {
                rows_table(
                    &v["stores"],
                    &["store", "merchant"],
                    &format!("no stores in domain {domain}"),
                )
            }
        }
        AdminCommand::DeleteStore { domain, store } => {
            admin.delete(&format!("/admin/v1/domains/{domain}/stores/{store}"))?;
            done(
                format!("deleted store {store} of domain {domain}"),
                json!({ "domain": domain, "store": store, "deleted": true }),
            )
        }
        AdminCommand::ListClients { domain } => {
            let v = admin.get(&format!("/admin/v1/domains/{domain}/clients"))?;
            if as_json {
                v.to_string()
            } else {
                rows_table(
                    &v["clients"],
                    &["client_id", "store"],
                    &format!("no clients in domain {domain}"),
                )
            }
        }
        AdminCommand::CreateStore {
            domain,
            merchant,
            store,
        } => {
            admin.create_store(domain, store, merchant)?;
            done(
                format!("created store {store} (merchant {merchant}) in domain {domain}"),
                json!({ "domain": domain, "store": store, "merchant": merchant, "created": true }),
            )
        }
        AdminCommand::CreateClient { domain, store } => {
            let creds = admin.create_client(domain, store.as_deref())?;
            if as_json {
                serde_json::to_string(&creds)?
            } else {
                client_table(domain, store.as_deref(), &creds)
            }
        }
        AdminCommand::RotateSecret {
            domain,
            grace,
            client_id,
        } => {
            let v = admin.post(
                &format!("/admin/v1/domains/{domain}/clients/{client_id}/secret"),
                json!({ "grace_seconds": grace.as_secs() }),
            )?;
            if as_json {
                v.to_string()
            } else {
                let until = v["previous_secret_valid_until"].as_u64().unwrap_or(0);
                let mut t = Table::new();
                t.load_preset(UTF8_FULL_CONDENSED);
                t.set_header(vec!["domain", "client_id", "new client_secret"]);
                t.add_row(vec![
                    domain.clone(),
                    client_id.clone(),
                    v["client_secret"].as_str().unwrap_or("").to_owned(),
                ]);
                format!(
                    "{t}\nthe new secret is shown only this once: keep it now\n\
                     the old secret keeps working for {} (until unix time {until}); \
                     move every terminal and POS of this client to the new one before then",
                    humantime::format_duration(*grace)
                )
            }
        }
        AdminCommand::DeleteClient { domain, client_id } => {
            admin.delete_client(domain, client_id)?;
            done(
                format!("deleted client {client_id} of domain {domain}"),
                json!({ "domain": domain, "client_id": client_id, "deleted": true }),
            )
        }
        AdminCommand::CreateDevice {
            domain,
            store,
            make,
            model,
            tsn,
        } => {
            admin.create_device(domain, tsn, make, model, store)?;
            done(
                format!(
                    "created terminal {tsn} ({make} {model}) in store {store} of domain {domain}"
                ),
                json!({ "domain": domain, "tsn": tsn, "make": make, "model": model, "store": store, "created": true }),
            )
        }
        AdminCommand::ListDevices { domain } => {
            let devices = admin.list_devices(domain)?;
            if as_json {
                json!({ "devices": devices }).to_string()
            } else {
                devices_table(&devices)
            }
        }
        AdminCommand::DisableDevice { domain, tsn } => {
            admin.set_device_enabled(domain, tsn, false)?;
            done(
                format!("disabled terminal {tsn} of domain {domain}"),
                json!({ "domain": domain, "tsn": tsn, "enabled": false }),
            )
        }
        AdminCommand::EnableDevice { domain, tsn } => {
            admin.set_device_enabled(domain, tsn, true)?;
            done(
                format!("enabled terminal {tsn} of domain {domain}"),
                json!({ "domain": domain, "tsn": tsn, "enabled": true }),
            )
        }
        AdminCommand::PinCert { domain, tsn, file } => {
            let fingerprint = certificate_fingerprint(file)?;
            let mut pins = current_pins(admin, domain, tsn)?;
            if !pins.contains(&fingerprint) {
                pins.push(fingerprint.clone());
            }
            admin.set_device_pins(domain, tsn, &pins)?;
            done(
                format!(
                    "pinned the client certificate of {} to terminal {tsn} of domain {domain} ({} pinned)\nsha256 fingerprint: {fingerprint}",
                    file.display(),
                    pins.len()
                ),
                json!({ "domain": domain, "tsn": tsn, "client_cert_sha256": fingerprint, "pinned": pins }),
            )
        }
        AdminCommand::UnpinCert {
            domain,
            tsn,
            certificate,
        } => {
            let fingerprint = match CertFingerprint::parse_hex(certificate) {
                Ok(fp) => fp.to_hex(),
                Err(_) => certificate_fingerprint(std::path::Path::new(certificate))?,
            };
            let mut pins = current_pins(admin, domain, tsn)?;
            let before = pins.len();
            pins.retain(|p| *p != fingerprint);
            if pins.len() == before {
                anyhow::bail!(
                    "certificate {fingerprint} is not pinned to terminal {tsn} of domain {domain}: nothing changed (list-devices --json shows its pins)"
                );
            }
            admin.set_device_pins(domain, tsn, &pins)?;
            done(
                format!(
                    "removed the client certificate {fingerprint} from terminal {tsn} of domain {domain} ({} pinned)",
                    pins.len()
                ),
                json!({ "domain": domain, "tsn": tsn, "removed": fingerprint, "pinned": pins }),
            )
        }
    })
}

/// The SHA-256 fingerprint (lowercase hex) of the first certificate of a PEM file: what
/// the relay pins and what identifies the terminal on the mTLS listener (PROTOCOL.md §2a).
fn certificate_fingerprint(file: &std::path::Path) -> anyhow::Result<String> {
    let pem = std::fs::read(file)
        .with_context(|| format!("cannot read certificate file {}", file.display()))?;
    let first = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .with_context(|| format!("{} holds no PEM certificate", file.display()))?
        .with_context(|| format!("{} is not valid PEM", file.display()))?;
    Ok(CertFingerprint::of_der(&first).to_hex())
}

/// The terminal's pins as the relay lists them.
fn current_pins(admin: &AdminClient, domain: &str, tsn: &str) -> anyhow::Result<Vec<String>> {
    // The list names terminals by bare serial; the command also takes the qualified form.
    let serial = tsn.rsplit('-').next().unwrap_or(tsn);
    let devices = admin.list_devices(domain)?;
    let device = devices
        .into_iter()
        .find(|d| d.tsn == serial)
        .with_context(|| {
            format!("no terminal {tsn} in domain {domain}: provision it first with create-device")
        })?;
    Ok(device.client_cert_sha256)
}

/// The relay's hints name HTTP routes (for curl users); here they name the command.
fn cli_hints(message: &str) -> String {
    const HINTS: [(&str, &str); 3] = [
        (
            "POST /admin/v1/domains/{domain}/stores",
            "posrelay admin create-store --domain <domain> --merchant <merchant> <store>",
        ),
        (
            "POST /admin/v1/domains/{domain}/devices",
            "posrelay admin create-device --domain <domain> --store <store> --make <make> --model <model> <tsn>",
        ),
        (
            "POST /admin/v1/domains",
            "posrelay admin create-domain <domain>",
        ),
    ];
    let mut out = message.to_owned();
    for (route, command) in HINTS {
        // Only the hint after "with ": the call's own route, at the start, stays.
        out = out.replace(&format!("with {route}"), &format!("with `{command}`"));
    }
    out
}

/// A table of JSON objects' `columns` (`null` shown as "whole domain" for a scope).
fn rows_table(rows: &serde_json::Value, columns: &[&str], empty: &str) -> String {
    let rows = rows.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return empty.to_owned();
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(columns.to_vec());
    for row in rows {
        t.add_row(
            columns
                .iter()
                .map(|c| match &row[*c] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "whole domain".to_owned(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>(),
        );
    }
    t.to_string()
}

fn client_table(domain: &str, store: Option<&str>, creds: &ClientCredentials) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["domain", "scope", "client_id", "client_secret"]);
    t.add_row(vec![
        domain.to_owned(),
        store.map_or("whole domain".to_owned(), |s| format!("store {s}")),
        creds.client_id.clone(),
        creds.client_secret.clone(),
    ]);
    format!("{t}\nthe secret is shown only this once: keep it now")
}

fn devices_table(devices: &[DeviceRow]) -> String {
    if devices.is_empty() {
        return "no terminals".to_owned();
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "tsn",
        "store",
        "enabled",
        "online",
        "claimed by",
        "client certs",
    ]);
    for d in devices {
        t.add_row(vec![
            d.tsn.clone(),
            d.store.clone(),
            yes_no(d.enabled).to_owned(),
            yes_no(d.online).to_owned(),
            d.claimed_by.clone().unwrap_or_else(|| "-".to_owned()),
            d.client_cert_sha256.len().to_string(),
        ]);
    }
    t.to_string()
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_cli_command_not_the_route() {
        let e = "POST /admin/v1/domains/ghost/stores: HTTP 404 unknown domain \"ghost\": create it first with POST /admin/v1/domains";
        assert_eq!(
            cli_hints(e),
            "POST /admin/v1/domains/ghost/stores: HTTP 404 unknown domain \"ghost\": create it first with `posrelay admin create-domain <domain>`"
        );
        let e = "x: unknown store \"s9\" in domain \"acme\": create it first with POST /admin/v1/domains/{domain}/stores";
        assert!(cli_hints(e).ends_with(
            "with `posrelay admin create-store --domain <domain> --merchant <merchant> <store>`"
        ));
    }

    #[test]
    fn device_table_is_readable() {
        let rows = vec![
            DeviceRow {
                tsn: "10000001".into(),
                store: "store-1".into(),
                enabled: true,
                online: true,
                claimed_by: Some("abc".into()),
                client_cert_sha256: vec!["ab".repeat(32)],
            },
            DeviceRow {
                tsn: "10000002".into(),
                store: "store-1".into(),
                enabled: false,
                online: false,
                claimed_by: None,
                client_cert_sha256: vec![],
            },
        ];
        let t = devices_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].contains("tsn") && lines[1].contains("claimed by"),
            "{t}"
        );
        let first = lines.iter().find(|l| l.contains("10000001")).unwrap();
        assert!(first.contains("yes") && first.contains("abc"), "{t}");
        let second = lines.iter().find(|l| l.contains("10000002")).unwrap();
        assert!(second.contains("no") && second.contains(" - "), "{t}");
        assert_eq!(devices_table(&[]), "no terminals");
    }
}
