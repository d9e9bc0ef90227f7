//! Runs one scenario against one target: start the target pinned to its CPU,
//! provision it (posrelay), run the generator on a glommio executor pinned to
//! another CPU, read where both ran, stop the target.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use glommio::{LocalExecutorBuilder, Placement};

use crate::admin;
use crate::flow::Env;
use crate::idle::{max_pairs, run_idle};
use crate::load::{run_load, LoadSpec, Mode};
use crate::procfs;
use crate::report::{LoadFigures, TargetReport};
use crate::scenario::{Scenario, Work};
use crate::storm::{run_storm, StormSettings};
use crate::target::{parse_cpu_list, Launch, Programs, Target, TargetKind};

/// glommio's registered io memory for the generator (the process may lock 8 MiB).
const IO_MEMORY: usize = 512 * 1024;

/// Settings shared by every run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Where the targets' programs are.
    pub programs: Programs,
    /// CPU the target is pinned to.
    pub target_cpu: usize,
    /// CPU the generator is pinned to, if chosen.
    pub generator_cpu: Option<usize>,
    /// Warm-up before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Pacing.
    pub mode: Mode,
    /// Pairs set up at once.
    pub setup_concurrency: usize,
    /// Idle settle time.
    pub idle_settle: Duration,
    /// Storm deadline.
    pub storm_deadline: Duration,
    /// Storm: how long one reconnect attempt may take.
    pub storm_attempt_timeout: Duration,
    /// Override of pairs / devices.
    pub pairs: Option<usize>,
    /// Override of the message size.
    pub size: Option<usize>,
    /// Extra `posrelay serve` arguments.
    pub relay_args: Vec<String>,
    /// `--reliable`: posrelay sessions are reliable ones (§11).
    pub reliable: bool,
    /// Directory for data directories and logs.
    pub work_dir: PathBuf,
    /// Progress lines.
    pub progress: bool,
    /// `--tls`: the run's certificate (every target serves it, the generator trusts it).
    pub tls: Option<crate::tls::RunCert>,
    /// Storm: how devices retry.
    pub storm_mode: crate::storm::StormMode,
    /// Handshake: clients connecting at once.
    pub handshake_clients: usize,
}

/// posrelay's admin token for benchmark runs (the admin listener is loopback only).
const ADMIN_TOKEN: &str = "posrelay-bench-admin-token";

/// How many devices a scenario provisions.
fn device_count(s: &Scenario, cfg: &RunConfig, kind: TargetKind) -> usize {
    match s.work {
        Work::Load { pairs, .. } => cfg.pairs.unwrap_or(pairs),
        Work::Idle { pairs } => cfg.pairs.or(pairs).unwrap_or_else(|| {
            max_pairs(
                procfs::fd_limit().unwrap_or(1024),
                kind.connections_per_pair().max(2),
            )
        }),
        Work::Storm { devices } => cfg.pairs.unwrap_or(devices),
        Work::Handshake { .. } => 0,
    }
}

/// The generator's CPU: the one asked for, else one the target may not run on.
fn generator_cpu(cfg: &RunConfig, target: &Target) -> Option<usize> {
    if cfg.generator_cpu.is_some() {
        return cfg.generator_cpu;
    }
    let cpus = procfs::machine().cpus;
    let mut taken = Vec::new();
    for t in procfs::placement(target.pid) {
        taken.extend(parse_cpu_list(&t.allowed));
    }
    (0..cpus).find(|c| !taken.contains(c))
}

fn thread_placement() -> String {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    format!(
        "allowed cpus {}, last ran on {:?}",
        procfs::parse_status_field(&status, "Cpus_allowed_list").unwrap_or_default(),
        procfs::parse_stat_processor(&stat)
    )
}

/// Runs `f` on a glommio executor pinned to `cpu` and returns its result.
fn on_generator<G, F, T>(cpu: Option<usize>, f: G) -> anyhow::Result<T>
where
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
    LocalExecutorBuilder::new(placement)
        .io_memory(IO_MEMORY)
        .name("bench-generator")
        .spawn(f)
        .map_err(|e| anyhow!("starting the generator executor: {e}"))?
        .join()
        .map_err(|e| anyhow!("generator executor: {e}"))
}

/// Runs scenario `s` against `kind`.
pub fn run_one(cfg: &RunConfig, s: &Scenario, kind: TargetKind) -> TargetReport {
    let mut report = TargetReport {
        target: kind,
        tls: cfg.tls.is_some(),
        reliable: cfg.reliable && kind == TargetKind::Posrelay,
        handshake: None,
        target_placement: String::new(),
        generator_placement: String::new(),
        error: None,
        load: None,
        idle: None,
        storm: None,
    };
    if let Err(e) = run_inner(cfg, s, kind, &mut report) {
        report.error = Some(format!("{e:#}"));
    }
    report
}

fn run_inner(
    cfg: &RunConfig,
    s: &Scenario,
    kind: TargetKind,
    report: &mut TargetReport,
) -> anyhow::Result<()> {
    let launch = Launch {
        cpu: Some(cfg.target_cpu),
        listen: ([127, 0, 0, 1], 0).into(),
        // A data directory per variant: reliable claims survive a restart on theirs
        // (PROTOCOL.md §11), and would hold the devices of the next run's new client.
        data_dir: cfg.work_dir.join(format!(
            "{}-{}{}{}",
            s.name,
            kind.name(),
            if cfg.tls.is_some() { "-tls" } else { "" },
            if cfg.reliable && kind == TargetKind::Posrelay {
                "-reliable"
            } else {
                ""
            }
        )),
        admin_token: ADMIN_TOKEN.into(),
        extra_args: cfg.relay_args.clone(),
        tls: cfg.tls.clone(),
    };
    let mut target = Target::start(kind, &cfg.programs, &launch)?;
    let devices = device_count(s, cfg, kind);
    let provisioned = match kind {
        TargetKind::Posrelay => {
            let admin_addr = target
                .admin
                .ok_or_else(|| anyhow!("posrelay printed no admin address"))?;
            if cfg.progress {
                eprintln!("{}/{}: provisioning {devices} devices", s.name, kind.name());
            }
            let client_tls = cfg.tls.as_ref().map(|c| c.client_config(true));
            Some(
                admin::provision(admin_addr, target.ws, ADMIN_TOKEN, devices, 4, client_tls)
                    .context("provisioning")?,
            )
        }
        _ => None,
    };
    let gen_cpu = generator_cpu(cfg, &target);
    let env = Env {
        kind,
        ws: target.ws,
        provisioned,
        tls: cfg.tls.as_ref().map(|c| c.client_config(true)),
        reliable: cfg.reliable && kind == TargetKind::Posrelay,
    };
    let pid = target.pid;
    let label = format!("{}/{}", s.name, kind.name());
    let progress = cfg.progress;
    match s.work {
        Work::Load { size, .. } => {
            let size = cfg.size.unwrap_or(size).max(crate::payload::MIN_SIZE);
            let spec = LoadSpec {
                label,
                pairs: devices,
                size,
                mode: cfg.mode,
                warmup: cfg.warmup,
                duration: cfg.duration,
                setup_concurrency: cfg.setup_concurrency,
                progress,
                cores: gen_cpu.map(|g| (cfg.target_cpu, g)),
            };
            let (outcome, placement) = on_generator(gen_cpu, move || async move {
                let o = run_load(Rc::new(env), &spec, pid).await;
                (o, thread_placement())
            })?;
            report.target_placement = procfs::describe_placement(&procfs::placement(pid));
            report.generator_placement = placement;
            report.load = Some(LoadFigures::new(&outcome, devices, size));
        }
        Work::Idle { .. } => {
            let settle = cfg.idle_settle;
            let conc = cfg.setup_concurrency;
            let (outcome, placement) = on_generator(gen_cpu, move || async move {
                let label = progress.then_some(label);
                let o = run_idle(Rc::new(env), devices, settle, conc, label.as_deref(), pid).await;
                (o, thread_placement())
            })?;
            report.target_placement = procfs::describe_placement(&procfs::placement(pid));
            report.generator_placement = placement;
            report.idle = Some(outcome);
        }
        Work::Storm { .. } => {
            report.target_placement = procfs::describe_placement(&procfs::placement(pid));
            let settings = StormSettings {
                devices,
                deadline: cfg.storm_deadline,
                attempt_timeout: cfg.storm_attempt_timeout,
                concurrency: cfg.setup_concurrency,
                progress,
                mode: cfg.storm_mode,
            };
            let (outcome, back, placement) = on_generator(gen_cpu, move || async move {
                let (o, t) = run_storm(Rc::new(env), target, settings).await;
                (o, t, thread_placement())
            })?;
            report.generator_placement = placement;
            report.storm = Some(outcome);
            target = back.context("restarting the target")?;
        }
        Work::Handshake { .. } => {
            let clients = cfg.handshake_clients;
            let (warmup, duration, cert) = (cfg.warmup, cfg.duration, cfg.tls.clone());
            let (outcome, placement) = on_generator(gen_cpu, move || async move {
                let o = crate::handshake::run_handshakes(
                    Rc::new(env),
                    cert,
                    clients,
                    warmup,
                    duration,
                    pid,
                )
                .await;
                (o, thread_placement())
            })?;
            report.target_placement = procfs::describe_placement(&procfs::placement(pid));
            report.generator_placement = placement;
            report.handshake = Some(outcome);
        }
    }
    target.stop(Duration::from_secs(15));
    Ok(())
}
