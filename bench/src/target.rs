//! The server under test: start it (pinned to a CPU), find its ports, restart
//! and stop it.
//!
//! - `posrelay`: the real relay, `posrelay serve --shards 1` (see the binary
//!   contract: readiness lines on stdout, SIGTERM drains).
//! - `direct`: posrelay-core's echo server (`posrelay_core::io::echo`, the code
//!   behind `posrelay echo`), run by this binary as `posrelay-bench serve-echo`
//!   with one shard: the same io layer and protocol core as the relay, minus
//!   the relay. It is the floor.
//! - `baseline`: the tokio + tokio-tungstenite relay of [`crate::baseline`],
//!   run as `posrelay-bench serve-baseline` on a current-thread runtime.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde::Serialize;

/// How long a server may take to print its readiness lines.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Which server the generator talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// The posrelay relay: the real flow (token, registration, claim, session).
    Posrelay,
    /// A plain echo server, no relay hop: the floor.
    Direct,
    /// A plain tokio + tokio-tungstenite relay pairing by a first message.
    Baseline,
}

impl TargetKind {
    /// Every target, in the order the table shows them.
    pub const ALL: [TargetKind; 3] = [
        TargetKind::Posrelay,
        TargetKind::Baseline,
        TargetKind::Direct,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Posrelay => "posrelay",
            TargetKind::Direct => "direct",
            TargetKind::Baseline => "baseline",
        }
    }

    /// WebSocket connections the target holds per pair (the POS's control
    /// channel is closed once the claim is made).
    pub fn connections_per_pair(self) -> u64 {
        match self {
            TargetKind::Direct => 1,
            TargetKind::Posrelay | TargetKind::Baseline => 2,
        }
    }
}

/// The executables the targets run from.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The `posrelay` binary.
    pub posrelay: Option<PathBuf>,
    /// This binary (it serves `direct` and `baseline` itself).
    pub bench: PathBuf,
}

/// How to launch a target.
#[derive(Debug, Clone)]
pub struct Launch {
    /// CPU to pin the server to (with `taskset`), if any.
    pub cpu: Option<usize>,
    /// Where its WebSocket listener binds (port 0: any).
    pub listen: SocketAddr,
    /// posrelay's data directory (created if missing).
    pub data_dir: PathBuf,
    /// posrelay's admin token.
    pub admin_token: String,
    /// Extra arguments for `posrelay serve`.
    pub extra_args: Vec<String>,
    /// `--tls`: serve wss:// with this certificate.
    pub tls: Option<crate::tls::RunCert>,
}

/// A running server.
#[derive(Debug)]
pub struct Target {
    /// What it is.
    pub kind: TargetKind,
    /// Its process id (for /proc).
    pub pid: u32,
    /// Its WebSocket listener.
    pub ws: SocketAddr,
    /// posrelay's admin listener.
    pub admin: Option<SocketAddr>,
    /// Where its stderr goes.
    pub log: PathBuf,
    child: Option<Child>,
    launch: Launch,
    programs: Programs,
}

/// The address in a readiness line such as `relay listening on ws://127.0.0.1:4000`.
pub fn parse_ready_line(line: &str, prefix: &str) -> Option<SocketAddr> {
    let rest = line.trim_end().strip_prefix(prefix)?;
    let addr = rest
        .strip_prefix("ws://")
        .or_else(|| rest.strip_prefix("wss://"))
        .or_else(|| rest.strip_prefix("http://"))?;
    addr.trim_end_matches('/').parse().ok()
}

/// Parses a CPU list such as `0-1,3` (as in `Cpus_allowed_list`).
pub fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.trim().parse::<usize>().ok()),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

impl Target {
    /// Starts `kind` and waits until it listens.
    pub fn start(kind: TargetKind, programs: &Programs, launch: &Launch) -> anyhow::Result<Target> {
        let log = launch
            .data_dir
            .with_extension(format!("{}.log", kind.name()));
        std::fs::create_dir_all(&launch.data_dir)
            .with_context(|| format!("creating {}", launch.data_dir.display()))?;
        let (program, args) = command_line(kind, programs, launch)?;
        let mut cmd = match launch.cpu.filter(|_| taskset_available()) {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        cmd.args(&args)
            .env("POSRELAY_ADMIN_TOKEN", &launch.admin_token)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .with_context(|| format!("opening {}", log.display()))?,
            ));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more: keep draining so the server never blocks.
                    continue;
                }
            }
        });
        let mut target = Target {
            kind,
            pid,
            ws: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            log: log.clone(),
            child: Some(child),
            launch: launch.clone(),
            programs: programs.clone(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let (ws_prefix, admin_prefix) = match kind {
            TargetKind::Posrelay => ("relay listening on ", Some("admin listening on ")),
            TargetKind::Direct | TargetKind::Baseline => ("listening on ", None),
        };
        let mut ws = None;
        let mut admin = None;
        while ws.is_none() || (admin_prefix.is_some() && admin.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    ws = ws.or_else(|| parse_ready_line(&line, ws_prefix));
                    admin = admin.or_else(|| admin_prefix.and_then(|p| parse_ready_line(&line, p)));
                }
                Err(_) => {
                    let status = target
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    let tail = log_tail(&log);
                    drop(target);
                    bail!(
                        "{} did not become ready ({}); its log says:\n{tail}",
                        kind.name(),
                        status.map_or("still running".to_owned(), |s| s.to_string())
                    );
                }
            }
        }
        target.ws = ws.unwrap_or(target.ws);
        target.admin = admin;
        Ok(target)
    }

    /// Asks the server to stop (SIGTERM), waits for it (at most `grace`), then kills it.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server and starts it again on the same port and data directory.
    pub fn restart(mut self) -> anyhow::Result<Target> {
        self.stop(Duration::from_secs(15));
        let mut launch = self.launch.clone();
        launch.listen = self.ws;
        let started = Instant::now();
        loop {
            match Target::start(self.kind, &self.programs, &launch) {
                Ok(t) => return Ok(t),
                // The port may take a moment to be free again.
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The launch settings.
    pub fn launch(&self) -> &Launch {
        &self.launch
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn command_line(
    kind: TargetKind,
    programs: &Programs,
    launch: &Launch,
) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let listen = launch.listen.to_string();
    Ok(match kind {
        TargetKind::Posrelay => {
            let bin = programs
                .posrelay
                .clone()
                .ok_or_else(|| anyhow!("no posrelay binary (build it, or pass --posrelay-bin)"))?;
            let mut args: Vec<String> = [
                "serve",
                "--listen",
                &listen,
                "--admin-listen",
                "127.0.0.1:0",
                "--data-dir",
                &launch.data_dir.to_string_lossy(),
                "--shards",
                "1",
                // The generator drives every pair with one domain-wide client: let it
                // hold as many POS connections as the descriptor limit allows.
                "--max-connections-per-client",
                "20000",
                "--max-connections",
                "20000",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(tls_args(launch));
            args.extend(launch.extra_args.iter().cloned());
            (bin, args)
        }
        TargetKind::Direct => {
            let mut args = vec!["serve-echo".into(), "--listen".into(), listen];
            args.extend(tls_args(launch));
            (programs.bench.clone(), args)
        }
        TargetKind::Baseline => {
            let mut args = vec!["serve-baseline".into(), "--listen".into(), listen];
            args.extend(tls_args(launch));
            (programs.bench.clone(), args)
        }
    })
}

/// `--tls-cert C --tls-key K` when the run is over TLS (the same flags for every target).
fn tls_args(launch: &Launch) -> Vec<String> {
    match &launch.tls {
        Some(cert) => vec![
            "--tls-cert".into(),
            cert.cert.to_string_lossy().into_owned(),
            "--tls-key".into(),
            cert.key.to_string_lossy().into_owned(),
        ],
        None => Vec::new(),
    }
}

fn taskset_available() -> bool {
    Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Finds the `posrelay` binary: `explicit`, else `$POSRELAY_BIN`, else next to
/// this executable. Under `cargo run` (and unless `build` is false) it is first
/// brought up to date with `cargo build -p posrelay` in this profile.
pub fn find_posrelay(explicit: Option<PathBuf>, build: bool) -> Option<PathBuf> {
    if let Some(p) = explicit.or_else(|| std::env::var_os("POSRELAY_BIN").map(PathBuf::from)) {
        return Some(p);
    }
    let me = std::env::current_exe().ok()?;
    let dir = me.parent()?.to_path_buf();
    let sibling = dir.join("posrelay");
    if build {
        if let Some(cargo) = std::env::var_os("CARGO") {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "posrelay", "--manifest-path"])
                .arg(&manifest);
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            eprintln!(
                "building posrelay ({})",
                if dir.ends_with("release") {
                    "release"
                } else {
                    "debug"
                }
            );
            let _ = cmd.status();
        }
    }
    sibling.exists().then_some(sibling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lines() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            parse_ready_line(
                "relay listening on ws://127.0.0.1:4000",
                "relay listening on "
            ),
            Some(a)
        );
        assert_eq!(
            parse_ready_line(
                "relay listening on wss://127.0.0.1:4000\n",
                "relay listening on "
            ),
            Some(a)
        );
        assert_eq!(
            parse_ready_line(
                "admin listening on http://127.0.0.1:4000",
                "admin listening on "
            ),
            Some(a)
        );
        assert_eq!(
            parse_ready_line("listening on ws://127.0.0.1:4000", "listening on "),
            Some(a)
        );
        assert_eq!(
            parse_ready_line("relay listening on ws://127.0.0.1:4000", "listening on "),
            None
        );
        assert_eq!(
            parse_ready_line("listening on ws://nowhere", "listening on "),
            None
        );
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), vec![0]);
        assert_eq!(parse_cpu_list("0-1"), vec![0, 1]);
        assert_eq!(parse_cpu_list("0-2,5,7-8\n"), vec![0, 1, 2, 5, 7, 8]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
    }
}
