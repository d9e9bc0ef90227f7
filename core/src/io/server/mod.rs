//! `posrelay serve`: the relay node. One glommio executor per shard, each accepting on
//! the same port; every device and its POS session are served on the device's owning
//! shard (connections accepted elsewhere are handed over once, right after their
//! upgrade request names the session); a client's control channels live on the
//! client's home shard. Cores talk only by message (`mesh::ShardMsg`), and what they say is decided by the
//! coordination layer (`crate::coord`).

mod accept;
mod admin;
pub mod admission;
mod answers;
mod cluster;
mod conn;
mod control;
mod device;
mod device_mtls;
mod devices_api;
mod drain;
mod forward;
mod handover;
mod login;
mod mesh;
mod metrics;
pub mod mtls;
mod one_step;
mod path;
mod pos_login;
mod registration;
mod reliable_session;
mod remote_claims;
mod reply;
mod session;
mod shard;
mod tls;
mod token;
mod upgrade;
mod waiting;

pub use cluster::ClusterConfig;
pub use metrics::ShardMetrics;
pub use tls::load_server_config;

use crate::admin::{AdminApi, AdminToken};
use crate::auth::{HashCost, SecretHasher, SigningKey, TokenIssuer};
use crate::handshake::{HeadLimits, SubprotocolPolicy};
use crate::io::metrics::Metrics;
use crate::io::runtime::{
    check_memlock, listeners_overlap, resolve_ports, run_shards, RuntimeConfig,
};
use crate::proto::Limits;
use crate::relay::RelayLimits;
use crate::reliable::{ClaimSnapshot, MemReliableLog, ReliableLog};
use crate::store::{RedbStore, Store};
use rand::RngCore;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Everything the relay node is configured with (see `posrelay serve --help`).
/// Where the relay's tenancy lives (PROTOCOL.md §9: durable when an admin call answers).
#[derive(Clone, Default)]
pub enum StoreChoice {
    /// The embedded redb store in `ServerConfig::data_dir` (the default: nothing to install).
    #[default]
    Embedded,
    /// A store the caller opened: the cluster's (PROTOCOL.md §12), or a test's.
    Given(Arc<dyn Store + Send + Sync>),
}

impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Embedded => f.write_str("Embedded"),
            StoreChoice::Given(_) => f.write_str("Given(..)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Relay listener (devices, POS, OAuth2).
    pub listen: SocketAddr,
    /// Admin listener (provisioning, metrics, health).
    pub admin_listen: SocketAddr,
    /// Where the embedded store lives.
    pub data_dir: PathBuf,
    /// Which store holds the tenancy: the embedded one in `data_dir` by default.
    pub store: StoreChoice,
    /// Base of the URLs handed out (`ws://host` or `wss://host`); else from `Host`.
    pub public_url: Option<String>,
    /// Executors.
    pub runtime: RuntimeConfig,
    /// PEM certificate chain and key: serve `wss://` / `https://`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Which application subprotocol to select.
    pub subprotocols: SubprotocolPolicy,
    /// Offline queue, grace periods.
    pub relay_limits: RelayLimits,
    /// Frame and message limits.
    pub ws_limits: Limits,
    /// Request head limits.
    pub head_limits: HeadLimits,
    /// Time for a request head, and for a registration message, to arrive.
    pub handshake_timeout: Duration,
    /// Ping a connection idle this long.
    pub ping_interval: Duration,
    /// Close a connection that sent nothing this long.
    pub idle_timeout: Duration,
    /// Time allowed to drain on shutdown.
    pub drain_timeout: Duration,
    /// Access token lifetime.
    pub access_token_ttl: Duration,
    /// Admin API token; `None` refuses every admin call.
    pub admin_token: Option<String>,
    /// Per-connection send queue bound before the sender is paused (backpressure).
    pub send_queue_bytes: usize,
    /// Cost of hashing client secrets (lower only in tests).
    pub hash_cost: HashCost,
    /// Connection and login limits.
    pub admission: admission::AdmissionLimits,
    /// §2a: the device mTLS listener (`--device-mtls-listen`, `--device-client-ca`); it
    /// serves `tls`'s certificate, so it needs one.
    pub device_mtls: Option<DeviceMtlsConfig>,
    /// `--reliable-window`: payload bytes one reliable claim holds (§11; default 1 MiB,
    /// [`crate::reliable::ReliableLimits::DEFAULT_WINDOW`]).
    pub reliable_window: usize,
    /// `--cluster`: run as a node of a cluster on NATS JetStream (PROTOCOL.md §12); its
    /// store replaces `store`.
    pub cluster: Option<ClusterConfig>,
}

/// §2a: where devices that authenticate with a client certificate connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMtlsConfig {
    /// `--device-mtls-listen ADDR`.
    pub listen: SocketAddr,
    /// `--device-client-ca FILE`: client certificates must chain to these roots (and be
    /// pinned); without it, any certificate whose key the client holds (and is pinned).
    pub client_ca: Option<PathBuf>,
}

/// The device mTLS listener as the shards serve it.
pub(crate) struct MtlsListener {
    /// Its address, port 0 resolved.
    pub addr: SocketAddr,
    /// Its TLS configuration, kept in step with the relay listener's certificate.
    pub config: mtls::MtlsConfig,
}

/// Where the listeners ended up (port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct ServerAddrs {
    /// Relay listener.
    pub relay: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Whether the relay listener speaks TLS.
    pub tls: bool,
    /// §2a: the device mTLS listener, if configured (port 0 resolved).
    pub device_mtls: Option<SocketAddr>,
}

/// Lets another thread (a signal handler) stop the relay or reload its certificate.
#[derive(Debug, Clone, Default)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl StopHandle {
    /// Starts the graceful drain (PROTOCOL.md §6).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether the drain has started.
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Asks for the TLS certificate and key to be read again (SIGHUP).
    pub fn reload_tls(&self) {
        self.reload.store(true, Ordering::SeqCst);
    }

    fn take_reload(&self) -> bool {
        self.reload.swap(false, Ordering::SeqCst)
    }
}

impl Shared {
    /// Reloads the certificate if asked (new connections get it; open ones keep theirs).
    pub(crate) fn maybe_reload_tls(&self) {
        if !self.stop.take_reload() {
            return;
        }
        match &self.tls {
            Some(tls) => match tls.reload() {
                Ok(()) => {
                    self.record_cert_expiry();
                    tracing::info!("TLS certificate reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed: keeping the old certificate")
                }
            },
            None => tracing::info!("SIGHUP: no TLS configured, nothing to reload"),
        }
    }
}

impl Shared {
    /// Puts the served certificate's expiry in `/metrics` (and warns when it is near).
    fn record_cert_expiry(&self) {
        let Some((cert, _)) = &self.config.tls else {
            return;
        };
        match crate::io::cert_expiry::leaf_not_after(cert) {
            Ok(not_after) => {
                self.metrics
                    .tls_not_after
                    .store(not_after, Ordering::Relaxed);
                let days_left = not_after.saturating_sub(unix_now()) / 86_400;
                if days_left < 14 {
                    tracing::warn!(
                        days_left,
                        cert = %cert.display(),
                        "the TLS certificate expires soon: renew it and reload (SIGHUP)"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the TLS certificate's expiry"),
        }
    }
}

/// What every shard shares, read-only (or internally synchronised, off the data path).
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub store: Arc<dyn Store + Send + Sync>,
    pub issuer: TokenIssuer,
    pub hasher: Arc<SecretHasher>,
    pub keyring_key: [u8; 32],
    /// `None` when no admin token is configured: every admin call is refused.
    pub admin: Option<AdminApi<Arc<dyn Store + Send + Sync>>>,
    pub metrics: Metrics,
    pub shard_metrics: Vec<Arc<ShardMetrics>>,
    pub tls: Option<tls::TlsReloader>,
    pub stop: StopHandle,
    pub addrs: std::sync::OnceLock<ServerAddrs>,
    pub admission: Arc<admission::Admission>,
    /// Recently verified client secrets (registration storms after a restart).
    pub credentials: crate::auth::CredentialCache,
    /// §2a: the device mTLS listener, if configured.
    pub mtls: Option<MtlsListener>,
    /// Where reliable claims are kept (§11): the embedded store, or memory for a store
    /// the caller opened (the cluster's JetStream log comes with the cluster).
    pub reliable_log: Arc<dyn ReliableLog + Send + Sync>,
    /// The reliable claims found in the log at start, until their shards take them.
    reliable_claims: std::sync::Mutex<Vec<ClaimSnapshot>>,
    /// §12: this node's cluster, when it runs as a node of one.
    pub cluster: Option<cluster::ClusterNode>,
}

impl Shared {
    /// §12: `None` on a single node; on a cluster node, whether what needs the cluster
    /// (registrations, device connections, claims) may be done now.
    pub(crate) fn cluster_availability(&self) -> Option<Result<(), cluster::Unavailable>> {
        self.cluster
            .as_ref()
            .map(|node| node.availability(std::time::Instant::now()))
    }

    /// Takes the reliable claims found at start that `mine` picks (by session id).
    pub(crate) fn take_reliable_claims(
        &self,
        mine: impl Fn(&crate::ids::SessionId) -> bool,
    ) -> Vec<ClaimSnapshot> {
        let mut all = self
            .reliable_claims
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (taken, kept) = std::mem::take(&mut *all)
            .into_iter()
            .partition(|s| mine(&s.record.session_id));
        *all = kept;
        taken
    }
}

/// How long a starting node retries a store that answers "unavailable": a cluster's
/// freshly created bucket has no leader for a moment (JetStream elects one in about a
/// second), and a node should not exit for that.
const STORE_START_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs a store call at start, again every 200 ms while the store answers "unavailable",
/// for up to [`STORE_START_WAIT`].
fn while_starting<T>(
    mut call: impl FnMut() -> Result<T, crate::store::StoreError>,
) -> std::io::Result<T> {
    let deadline = std::time::Instant::now() + STORE_START_WAIT;
    loop {
        match call() {
            Err(e @ crate::store::StoreError::Unavailable { .. })
                if std::time::Instant::now() < deadline =>
            {
                tracing::warn!(error = %e, "store not available yet: trying again");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            other => return other.map_err(std::io::Error::other),
        }
    }
}

/// Checks what the shards need (locked memory), opens the store, binds both listeners
/// on every shard, calls `on_ready` once every shard serves, and serves until `stop` is
/// triggered and the drain is done. Nothing is bound, and `on_ready` is not called, when
/// any of it fails.
pub fn run_server(
    config: ServerConfig,
    stop: StopHandle,
    on_ready: impl FnOnce(&ServerAddrs) + Send + 'static,
) -> std::io::Result<()> {
    check_memlock(&config.runtime)?;
    crate::store::create_private_dir(&config.data_dir).map_err(std::io::Error::other)?;
    // §12: the cluster's store, streams and lease, before anything is bound.
    let cluster = match &config.cluster {
        Some(c) => Some(cluster::ClusterNode::start(
            c,
            config.runtime.shards.max(1),
        )?),
        None => None,
    };
    let (store, reliable_log): (
        Arc<dyn Store + Send + Sync>,
        Arc<dyn ReliableLog + Send + Sync>,
    ) = match (&config.store, &cluster) {
        (_, Some(node)) => (node.store(), node.reliable_log()),
        (StoreChoice::Embedded, None) => {
            let redb = Arc::new(RedbStore::open(&config.data_dir).map_err(std::io::Error::other)?);
            (redb.clone(), redb)
        }
        (StoreChoice::Given(store), None) => {
            tracing::info!("reliable sessions are kept in memory with this store: they survive a POS reconnect, not a restart");
            (store.clone(), Arc::new(MemReliableLog::default()))
        }
    };
    let reliable_claims = reliable_log.load().map_err(|e| {
        std::io::Error::other(format!("cannot read the reliable sessions' log: {e}"))
    })?;
    if !reliable_claims.is_empty() {
        tracing::info!(claims = reliable_claims.len(), "restoring reliable claims");
    }
    let mut fresh = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut fresh);
    let key = while_starting(|| store.load_or_create_signing_key(fresh))?;
    let issuer = TokenIssuer::new(&SigningKey::from_bytes(key));
    // Stored, so that session ids survive a restart (reliable claims keep theirs, §11).
    let mut fresh = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut fresh);
    let keyring_key = while_starting(|| store.load_or_create_session_key(fresh))?;
    let hasher = Arc::new(SecretHasher::new(config.hash_cost));
    let mut cache_key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut cache_key);
    let admin = config
        .admin_token
        .as_deref()
        .and_then(AdminToken::new)
        .map(|token| AdminApi::new(store.clone(), token, SecretHasher::new(config.hash_cost)));
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls::TlsReloader::load(cert, key)?),
        None => None,
    };
    let mtls = match &config.device_mtls {
        None => None,
        Some(_) if tls.is_none() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "--device-mtls-listen serves the relay's certificate: give --tls-cert and --tls-key too",
            ))
        }
        Some(m) => {
            let [addr] = resolve_ports([m.listen]).map_err(|e| {
                std::io::Error::new(e.source.kind(), e.explain("--device-mtls-listen"))
            })?;
            let config = mtls::MtlsConfig::new(m.client_ca.as_deref())?;
            tracing::info!(%addr, trust = ?config.trust(), "device mTLS listener");
            Some(MtlsListener { addr, config })
        }
    };
    let shards = config.runtime.shards.max(1);
    let config_admission = config.admission;
    if listeners_overlap(config.listen, config.admin_listen) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "--listen {} and --admin-listen {} share a port: give the admin API a port of its own (default 127.0.0.1:9080)",
                config.listen, config.admin_listen
            ),
        ));
    }
    let [relay_addr, admin_addr] =
        resolve_ports([config.listen, config.admin_listen]).map_err(|e| {
            let flag = ["--listen", "--admin-listen"][e.index];
            std::io::Error::new(e.source.kind(), e.explain(flag))
        })?;
    let shared = Arc::new(Shared {
        shard_metrics: (0..shards)
            .map(|_| Arc::new(ShardMetrics::default()))
            .collect(),
        config,
        store,
        issuer,
        hasher,
        keyring_key,
        admin,
        metrics: Metrics::default(),
        tls,
        stop,
        addrs: std::sync::OnceLock::new(),
        admission: admission::Admission::new(config_admission),
        credentials: crate::auth::CredentialCache::new(
            cache_key,
            crate::auth::DEFAULT_CREDENTIAL_TTL,
        ),
        mtls,
        reliable_log,
        reliable_claims: std::sync::Mutex::new(reliable_claims),
        cluster,
    });
    shared.record_cert_expiry();
    let addrs = ServerAddrs {
        relay: relay_addr,
        admin: admin_addr,
        tls: shared.tls.is_some(),
        device_mtls: shared.mtls.as_ref().map(|m| m.addr),
    };
    let _ = shared.addrs.set(addrs);
    let mesh = glommio::channels::channel_mesh::MeshBuilder::full(shards, 1024);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let runtime = shared.config.runtime.clone();
    let for_shards = shared.clone();
    let handle = std::thread::Builder::new()
        .name("posrelay-shards".into())
        .spawn(move || {
            run_shards(&runtime, move || async move {
                shard::run_shard(for_shards, mesh, relay_addr, admin_addr, ready_tx).await
            })
        })?;
    // Each shard reports once (its listeners bound, or why not) and then lets go of its
    // sender; a shard whose executor could not start drops it unsent.
    let mut serving = 0;
    let mut refused = None;
    while serving < shards {
        match ready_rx.recv() {
            Ok(Ok(())) => serving += 1,
            Ok(Err(e)) => {
                refused = Some(e);
                break;
            }
            Err(_) => break,
        }
    }
    if serving < shards {
        // Announce nothing: stop the shards that did start, and say why one did not.
        shared.stop.stop();
        return Err(refused.unwrap_or_else(|| shard_start_error(handle)));
    }
    tracing::info!(
        relay = %relay_addr,
        admin = %admin_addr,
        shards,
        tls = addrs.tls,
        data_dir = %shared.config.data_dir.display(),
        "posrelay ready"
    );
    on_ready(&addrs);
    let results = handle
        .join()
        .map_err(|_| std::io::Error::other("a shard panicked"))??;
    for r in results {
        r?;
    }
    tracing::info!("posrelay stopped");
    Ok(())
}

/// Why a shard never reported: the error its thread ended with, once it has ended
/// (a shard whose executor could not be set up ends at once; the others stop after
/// the drain they were just asked for).
fn shard_start_error(
    handle: std::thread::JoinHandle<std::io::Result<Vec<std::io::Result<()>>>>,
) -> std::io::Error {
    let unknown = || std::io::Error::other("a shard stopped before it could serve: see the log");
    // Bounded: shards waiting for a peer that never came never end.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !handle.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !handle.is_finished() {
        return unknown();
    }
    match handle.join() {
        Ok(Err(e)) => std::io::Error::new(e.kind(), format!("a shard could not start: {e}")),
        Ok(Ok(results)) => results
            .into_iter()
            .find_map(Result::err)
            .unwrap_or_else(unknown),
        Err(_) => std::io::Error::other("a shard panicked while starting"),
    }
}

/// Loads a PEM certificate chain and key as `serve` would (`posrelay check-config`);
/// the error names the file and what is wrong with it.
pub fn check_tls(cert: &std::path::Path, key: &std::path::Path) -> std::io::Result<()> {
    tls::TlsReloader::load(cert, key).map(drop)
}

/// Seconds since the Unix epoch (token times).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
