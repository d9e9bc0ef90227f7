//! The command line of `posrelay-bench`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::scenario::Scale;
use crate::target::TargetKind;

/// posrelay-bench: load generator and latency benchmark for posrelay, with
/// the peers it is compared to (`direct` echo: the floor; `baseline`: a plain
/// tokio-tungstenite relay), each measured in the same run.
///
/// Example: `cargo run -p posrelay-bench --release -- --scenario small --target all`
#[derive(Debug, Parser)]
#[command(name = "posrelay-bench", version, about, long_about = None)]
pub struct Cli {
    /// Internal: serve a peer (used by the benchmark itself).
    #[command(subcommand)]
    pub serve: Option<Serve>,
    /// The benchmark run.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The peers this binary serves when it is the target.
#[derive(Debug, Subcommand)]
pub enum Serve {
    /// Serve posrelay-core's echo server (the `direct` peer) on one shard.
    #[command(hide = true)]
    ServeEcho {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Serve wss:// with this PEM certificate chain (and --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Serve the tokio + tokio-tungstenite relay (the `baseline` peer).
    #[command(hide = true)]
    ServeBaseline {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Serve wss:// (tokio-rustls) with this PEM certificate chain (and --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

/// What to measure and how.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Scenarios to run: latency, small, large, many, idle, storm, or all (those six);
    /// handshake (connections per second; full and resumed TLS handshakes with --tls)
    /// runs only when named.
    #[arg(long = "scenario", default_values_t = vec!["small".to_string()], value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Targets: posrelay, direct, baseline, or all.
    #[arg(long = "target", default_values_t = vec!["all".to_string()], value_name = "NAME")]
    pub targets: Vec<String>,
    /// Every scenario over TLS (wss://, https://) against every target: posrelay with a
    /// certificate generated for the run, the echo server with the same TLS stack, the
    /// baseline with tokio-rustls; the generator trusts that certificate only.
    #[arg(long)]
    pub tls: bool,
    /// Storm: how devices retry after the restart. `backoff`: as terminals do,
    /// exponentially from 0.5 s to 30 s with full jitter, never before a refusal's
    /// Retry-After; `hammer`: every 50-150 ms regardless.
    #[arg(long, value_enum, default_value = "backoff")]
    pub storm_mode: crate::storm::StormMode,
    /// Full sizes, or a tiny run that only proves every path works.
    #[arg(long, value_enum, default_value = "full")]
    pub scale: Scale,
    /// CI mode: every scenario, every target, tiny scale, about a second each;
    /// exits non-zero on any error or mismatch (never on timing).
    #[arg(long)]
    pub ci: bool,
    /// Measured time per load run ("10s", "500ms", "2m").
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Time under load before measuring.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Override the scenario's number of pairs (devices for storm).
    #[arg(long)]
    pub pairs: Option<usize>,
    /// Override the scenario's message size in bytes (at least 12).
    #[arg(long)]
    pub size: Option<usize>,
    /// Closed loop: messages in flight per pair.
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Open loop instead: total messages per second, all pairs together
    /// (latency corrected for coordinated omission).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run each scenario this many times (each repetition runs every target
    /// and has its own table and ratios).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Print JSON on stdout (the tables go to stderr).
    #[arg(long)]
    pub json: bool,
    /// The posrelay binary [default: next to this one, built under cargo].
    #[arg(long, env = "POSRELAY_BIN")]
    pub posrelay_bin: Option<PathBuf>,
    /// Do not run `cargo build -p posrelay` before using the binary next to this one.
    #[arg(long)]
    pub no_build: bool,
    /// CPU the target is pinned to.
    #[arg(long, default_value_t = 0)]
    pub target_cpu: usize,
    /// CPU the generator is pinned to [default: another CPU than the target's].
    #[arg(long)]
    pub generator_cpu: Option<usize>,
    /// Pairs set up at the same time.
    #[arg(long, default_value_t = 64)]
    pub setup_concurrency: usize,
    /// Idle: how long the target idles before each memory reading.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub idle_settle: Duration,
    /// Handshake: clients connecting at once (each connects, makes one request, closes,
    /// and starts again).
    #[arg(long, default_value_t = 16)]
    pub handshake_clients: usize,
    /// Storm: how long devices may take to come back.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub storm_deadline: Duration,
    /// Storm: how long one attempt to come online may take before the device
    /// gives up and tries again.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub storm_attempt_timeout: Duration,
    /// Extra argument for `posrelay serve` (repeat for several).
    #[arg(long = "relay-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub relay_args: Vec<String>,
    /// Keep the targets' data directories and logs.
    #[arg(long)]
    pub keep: bool,
    /// posrelay's sessions offer posrelay.reliable.v1 (PROTOCOL.md §11): each message
    /// travels in a data envelope, is held durably before it goes on, and is acked by
    /// the POS once checked.
    #[arg(long)]
    pub reliable: bool,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// Parses "10s", "500ms", "2m", "1.5s", "250us" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (use s, ms, us, m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Expands `all` and checks names.
pub fn targets(names: &[String]) -> Result<Vec<TargetKind>, String> {
    let mut out = Vec::new();
    for n in names {
        if n == "all" {
            out.extend(TargetKind::ALL);
            continue;
        }
        let k = TargetKind::ALL
            .into_iter()
            .find(|k| k.name() == n)
            .ok_or_else(|| format!("unknown target {n:?} (posrelay, direct, baseline, all)"))?;
        out.push(k);
    }
    let mut seen = Vec::new();
    out.retain(|k| {
        let new = !seen.contains(k);
        seen.push(*k);
        new
    });
    Ok(out)
}

/// Expands `all` and checks names.
pub fn scenarios(names: &[String]) -> Result<Vec<&'static str>, String> {
    let mut out: Vec<&'static str> = Vec::new();
    for n in names {
        if n == "all" {
            out.extend(crate::scenario::NAMES);
            continue;
        }
        let name = crate::scenario::NAMES
            .into_iter()
            .chain(crate::scenario::EXTRA)
            .find(|k| k == n)
            .ok_or_else(|| {
                format!(
                    "unknown scenario {n:?} ({} or all)",
                    crate::scenario::NAMES.join(", ")
                )
            })?;
        out.push(name);
    }
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(targets(&["all".into()]).unwrap().len(), 3);
        assert_eq!(
            targets(&["direct".into(), "direct".into()]).unwrap(),
            vec![TargetKind::Direct]
        );
        assert!(targets(&["nginx".into()]).is_err());
        assert_eq!(scenarios(&["all".into()]).unwrap().len(), 6);
        assert!(scenarios(&["huge".into()]).is_err());
    }

    #[test]
    fn cli_parses() {
        let c = Cli::try_parse_from([
            "posrelay-bench",
            "--scenario",
            "small",
            "--target",
            "all",
            "--json",
        ])
        .unwrap();
        assert!(c.serve.is_none());
        assert!(c.run.json);
        let c = Cli::try_parse_from(["posrelay-bench", "serve-echo", "--listen", "127.0.0.1:0"])
            .unwrap();
        assert!(matches!(c.serve, Some(Serve::ServeEcho { .. })));
    }
}
