//! `posrelay-bench`: see `posrelay_bench` and `--help`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use posrelay_bench::cli::{self, Cli, RunArgs, Serve};
use posrelay_bench::load::Mode;
use posrelay_bench::procfs;
use posrelay_bench::report::{render, Report, ScenarioReport};
use posrelay_bench::runner::{run_one, RunConfig};
use posrelay_bench::scenario::{preset, Scale, Work};
use posrelay_bench::target::{find_posrelay, Programs, TargetKind};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.serve {
        Some(Serve::ServeEcho {
            listen,
            tls_cert,
            tls_key,
        }) => server_tls(tls_cert, tls_key).and_then(|tls| serve_echo(listen, tls)),
        Some(Serve::ServeBaseline {
            listen,
            tls_cert,
            tls_key,
        }) => server_tls(tls_cert, tls_key).and_then(|tls| {
            let scheme = if tls.is_some() { "wss" } else { "ws" };
            posrelay_bench::baseline::serve(listen, tls, |a| announce(scheme, a))
                .map_err(Into::into)
        }),
        None => return run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("posrelay-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn announce(scheme: &str, addr: SocketAddr) {
    println!("listening on {scheme}://{addr}");
    let _ = std::io::stdout().flush();
}

/// The TLS configuration of a peer started with `--tls-cert`/`--tls-key`: posrelay's own
/// (`posrelay_core::io::server::load_server_config`), so that every target serves the
/// same certificate, versions, cipher suites and resumption.
fn server_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(posrelay_core::io::server::load_server_config(
            &cert, &key,
        )?)),
        _ => Ok(None),
    }
}

/// The `direct` peer: posrelay-core's echo server (what `posrelay echo` runs), one shard,
/// left where `taskset` put it.
fn serve_echo(
    listen: SocketAddr,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> anyhow::Result<()> {
    use posrelay_core::io::echo::{serve_echo, EchoConfig};
    use posrelay_core::io::runtime::RuntimeConfig;
    use posrelay_core::proto::Limits;
    let config = EchoConfig {
        listen,
        runtime: RuntimeConfig {
            shards: 1,
            pin: false,
            ..RuntimeConfig::default()
        },
        limits: Limits {
            max_frame_payload: 16 << 20,
            max_message: 16 << 20,
        },
        tls: tls.clone(),
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    serve_echo(config, |a| announce(scheme, a))?;
    Ok(())
}

fn run(mut args: RunArgs) -> ExitCode {
    if args.ci {
        args.scale = Scale::Tiny;
        args.scenarios = vec!["all".into(), "handshake".into()];
        if args.targets == ["all"] || args.targets.is_empty() {
            args.targets = vec!["all".into()];
        }
        args.duration = Duration::from_secs(1);
        args.warmup = Duration::from_millis(300);
        args.idle_settle = Duration::from_millis(300);
        args.storm_deadline = Duration::from_secs(30);
    }
    let (scenarios, targets) = match (cli::scenarios(&args.scenarios), cli::targets(&args.targets))
    {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("posrelay-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let bench = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("posrelay-bench"));
    let posrelay = if targets.contains(&TargetKind::Posrelay) {
        find_posrelay(args.posrelay_bin.clone(), !args.no_build)
    } else {
        None
    };
    let work_dir = std::env::temp_dir().join(format!("posrelay-bench-{}", std::process::id()));
    let tls = if args.tls {
        match posrelay_bench::tls::RunCert::generate(&work_dir) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("posrelay-bench: {e:#}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let machine = procfs::machine();
    let mode = match args.rate {
        Some(rate) => Mode::Open { rate },
        None => Mode::Closed {
            in_flight: args.in_flight.max(1),
        },
    };
    let cfg = RunConfig {
        programs: Programs { posrelay, bench },
        target_cpu: args.target_cpu,
        generator_cpu: args.generator_cpu,
        warmup: args.warmup,
        duration: args.duration,
        mode,
        setup_concurrency: args.setup_concurrency,
        idle_settle: args.idle_settle,
        storm_deadline: args.storm_deadline,
        storm_attempt_timeout: args.storm_attempt_timeout,
        pairs: args.pairs,
        size: args.size,
        relay_args: args.relay_args.clone(),
        reliable: args.reliable,
        work_dir: work_dir.clone(),
        progress: !args.quiet,
        tls,
        storm_mode: args.storm_mode,
        handshake_clients: args.handshake_clients,
    };
    let human = |text: &str| {
        if args.json {
            eprint!("{text}");
        } else {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
    };
    human(&format!(
        "machine: {} CPUs, {}, kernel {}; target pinned to cpu {}\n",
        machine.cpus, machine.cpu_model, machine.kernel, cfg.target_cpu
    ));
    let mut report = Report {
        machine,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        scale: args.scale,
        scenarios: Vec::new(),
    };
    let repeat = args.repeat.max(1);
    for name in scenarios {
        let Some(s) = preset(name, args.scale) else {
            continue;
        };
        for repetition in 1..=repeat {
            let mut sr = ScenarioReport {
                name: s.name.into(),
                about: s.about.into(),
                repetition,
                tls: cfg.tls.is_some(),
                work: s.work.with_overrides(args.pairs, args.size),
                mode: matches!(s.work, Work::Load { .. }).then_some(mode),
                warmup_secs: cfg.warmup.as_secs_f64(),
                duration_secs: cfg.duration.as_secs_f64(),
                results: Vec::new(),
                ratios: Vec::new(),
            };
            for &kind in &targets {
                // The target as asked, then posrelay's same-run references: plain sessions
                // for reliable ones, plain ws for the wss/ws ratios.
                let mut configs = vec![cfg.clone()];
                if kind == TargetKind::Posrelay && cfg.reliable {
                    configs.push(RunConfig {
                        reliable: false,
                        ..cfg.clone()
                    });
                }
                if kind == TargetKind::Posrelay && cfg.tls.is_some() {
                    configs.push(RunConfig {
                        tls: None,
                        ..cfg.clone()
                    });
                }
                for c in &configs {
                    let r = run_one(c, &s, kind);
                    if let Some(e) = &r.error {
                        eprintln!("{}/{}: {e}", s.name, r.label(sr.tls));
                    }
                    sr.results.push(r);
                }
            }
            sr.compute_ratios();
            human(&render(&sr));
            report.scenarios.push(sr);
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("posrelay-bench: {e}"),
        }
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&work_dir);
    } else {
        eprintln!("data and logs kept in {}", work_dir.display());
    }
    if report.scenarios.iter().any(ScenarioReport::has_failures) {
        eprintln!("posrelay-bench: some runs had errors, mismatches or failures");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
