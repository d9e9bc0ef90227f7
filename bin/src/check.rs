//! `posrelay check-config`: like `nginx -t`. Reads the settings exactly as `serve` would
//! (flags over the file over the defaults), then checks what `serve` would need, without
//! binding, creating or writing anything: the listeners do not overlap, the locked-memory
//! limit covers the shards, the store is private and of a schema this build reads, the
//! TLS certificate and key load. Prints every problem; exit status 0 only if none.

use crate::config::ServeArgs;
use posrelay_core::io::runtime::{check_memlock, listeners_overlap, RuntimeConfig};
use posrelay_core::store::{RedbStore, StoreState};
use std::io::Write as _;

/// Runs the checks; `Err` when any failed (each already printed).
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut problems = 0usize;
    let mut report = |ok: bool, line: String| {
        if !ok {
            problems += 1;
        }
        let _ = writeln!(out, "{} {line}", if ok { "ok:     " } else { "problem:" });
    };
    let settings = match args.resolve() {
        Ok(s) => {
            let from = args
                .config
                .as_ref()
                .map_or("flags and defaults".to_owned(), |p| {
                    format!("{}", p.display())
                });
            report(true, format!("settings read from {from}"));
            s
        }
        Err(e) => {
            report(false, format!("{e:#}"));
            anyhow::bail!("1 problem: fix it and run posrelay check-config again");
        }
    };
    if listeners_overlap(settings.listen, settings.admin_listen) {
        report(
            false,
            format!(
                "listen {} and admin_listen {} share a port: give the admin API a port of its own",
                settings.listen, settings.admin_listen
            ),
        );
    } else {
        report(
            true,
            format!(
                "listeners: relay {}, admin {}",
                settings.listen, settings.admin_listen
            ),
        );
    }
    let runtime = RuntimeConfig {
        shards: settings.shards,
        ..RuntimeConfig::default()
    };
    match check_memlock(&runtime) {
        Ok(()) => report(
            true,
            format!("locked-memory limit covers {} shard(s)", settings.shards),
        ),
        Err(e) => report(false, e.to_string()),
    }
    let dir = &settings.data_dir;
    match RedbStore::inspect(dir) {
        Ok(StoreState::Absent) => report(
            true,
            format!(
                "store: none in {} yet; serve creates it (0600)",
                dir.display()
            ),
        ),
        Ok(StoreState::InUse) => report(
            true,
            format!(
                "store in {}: private, held by a running posrelay (not opened)",
                dir.display()
            ),
        ),
        Ok(StoreState::Ready { schema_version }) => report(
            true,
            format!(
                "store in {}: private, schema version {schema_version}",
                dir.display()
            ),
        ),
        Err(e) => report(false, format!("store in {}: {e}", dir.display())),
    }
    match &settings.tls {
        Some((cert, key)) => match posrelay_core::io::server::check_tls(cert, key) {
            Ok(()) => {
                report(
                    true,
                    format!("TLS certificate {} and key load", cert.display()),
                );
                match posrelay_core::io::cert_expiry::leaf_not_after(cert) {
                    Ok(not_after) => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        let expires = humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(not_after),
                        );
                        if not_after <= now {
                            report(
                                false,
                                format!("TLS certificate expired at {expires}: renew it"),
                            );
                        } else {
                            let days = (not_after - now) / 86_400;
                            report(
                                days >= 14,
                                format!("TLS certificate expires at {expires}, in {days} days"),
                            );
                        }
                    }
                    Err(e) => report(false, format!("TLS: {e}")),
                }
            }
            Err(e) => report(false, format!("TLS: {e}")),
        },
        None => report(true, "TLS: none (plain ws://)".to_owned()),
    }
    if settings.admin_token.is_none() {
        report(
            true,
            "admin token: none, the admin API will refuse every call".to_owned(),
        );
    } else {
        report(true, "admin token: set".to_owned());
    }
    match problems {
        0 => Ok(()),
        1 => anyhow::bail!("1 problem: fix it and run posrelay check-config again"),
        n => anyhow::bail!("{n} problems: fix them and run posrelay check-config again"),
    }
}
