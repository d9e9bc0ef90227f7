//! `posrelay serve` settings: command-line flags over the TOML configuration file over
//! the documented defaults. Every flag has a file key of the same name (dashes become
//! underscores), so `--offline-queue-bytes 2MiB` is `offline_queue_bytes = "2MiB"`.

use crate::logging::LogFormat;
use crate::units::{parse_duration, parse_size};
use anyhow::{bail, Context};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Defaults, one place, quoted by `--help` and the README.
pub mod defaults {
    /// `--listen`
    pub const LISTEN: &str = "127.0.0.1:8080";
    /// `--admin-listen`
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9080";
    /// `--data-dir`
    pub const DATA_DIR: &str = "./posrelay-data";
    /// `--offline-queue-bytes`
    pub const OFFLINE_QUEUE_BYTES: &str = "1MiB";
    /// `--offline-grace`
    pub const OFFLINE_GRACE: &str = "30s";
    /// `--reliable-window`
    pub const RELIABLE_WINDOW: &str = "1MiB";
    /// `--claim-grace`
    pub const CLAIM_GRACE: &str = "60s";
    /// `--max-message-bytes`
    pub const MAX_MESSAGE_BYTES: &str = "1MiB";
    /// `--max-header-bytes`
    pub const MAX_HEADER_BYTES: &str = "16KiB";
    /// `--handshake-timeout`
    pub const HANDSHAKE_TIMEOUT: &str = "10s";
    /// `--ping-interval`
    pub const PING_INTERVAL: &str = "20s";
    /// `--idle-timeout`
    pub const IDLE_TIMEOUT: &str = "60s";
    /// `--drain-timeout`
    pub const DRAIN_TIMEOUT: &str = "10s";
    /// `--access-token-ttl`
    pub const ACCESS_TOKEN_TTL: &str = "1h";
    /// `--max-connections` (below the 20,000 open files a process may have here)
    pub const MAX_CONNECTIONS: usize = 16_384;
    /// `--max-unauthenticated`
    pub const MAX_UNAUTHENTICATED: usize = 1_024;
    /// `--max-unauthenticated-wait` (as long as `--handshake-timeout`: long enough for
    /// one shard to serve an estate that reconnects at once after a restart, see
    /// BENCHMARKS.md's storm)
    pub const MAX_UNAUTHENTICATED_WAIT: &str = "10s";
    /// `--max-connections-per-client` (a domain-wide application holds one session per
    /// terminal, so this is generous; it keeps one leaked credential from taking all)
    pub const MAX_CONNECTIONS_PER_CLIENT: usize = 8_192;
    /// `--max-header-count`
    pub const MAX_HEADER_COUNT: usize = 64;
    /// `--failed-logins-per-client` (per client id from one address, per minute)
    pub const FAILED_LOGINS_PER_CLIENT: u32 = 10;
    /// `--failed-logins-per-address` (per minute)
    pub const FAILED_LOGINS_PER_ADDRESS: u32 = 30;
    /// `--failed-logins-per-client-total` (per client id from all addresses, per minute:
    /// a ceiling against guessing from many addresses; client secrets are 256 random
    /// bits, so it is high)
    pub const FAILED_LOGINS_PER_CLIENT_TOTAL: u32 = 1_000;
    /// `--lease-ttl` (PROTOCOL.md §12)
    pub const LEASE_TTL: &str = "6s";
    /// `--cluster-replicas`: copies of the cluster's buckets and streams (three NATS
    /// servers in production: a quorum of two stores each write)
    pub const CLUSTER_REPLICAS: usize = 3;
}

/// Flags of `posrelay serve` (each also a key of the configuration file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file; flags given on the command line override its keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the relay listener (devices, POS, OAuth) [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the admin listener (provisioning, /metrics, /healthz) [default: 127.0.0.1:9080]
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Directory of the embedded store and the token signing key [default: ./posrelay-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Base of the URLs the relay hands out (e.g. wss://relay.example.com) [default: from the request's Host]
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Number of shards (executors, one per core) [default: all cores]
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// PEM certificate chain: serve wss:// and https:// (with --tls-key) [default: plain ws://]
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Listen address for terminals that authenticate with a TLS client certificate (PROTOCOL.md §2a; serves --tls-cert) [default: none]
    #[arg(long, value_name = "ADDR")]
    pub device_mtls_listen: Option<SocketAddr>,
    /// PEM CA certificate(s) that terminals' client certificates must chain to [default: any certificate, identified by its pinned fingerprint alone]
    #[arg(long, value_name = "FILE")]
    pub device_client_ca: Option<PathBuf>,
    /// Application subprotocols the relay may select, in preference order [default: the first one offered]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub subprotocols: Option<Vec<String>>,
    /// Bytes queued per device while it is offline [default: 1MiB]
    #[arg(long, value_name = "SIZE")]
    pub offline_queue_bytes: Option<String>,
    /// How long frames wait for an offline device [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub offline_grace: Option<String>,
    /// Device messages a reliable session's claim holds until its POS acknowledges them; a full window stops reading from the device (PROTOCOL.md §11) [default: 1MiB]
    #[arg(long, value_name = "SIZE")]
    pub reliable_window: Option<String>,
    /// How long a claim outlives its POS's last control channel and session [default: 60s]
    #[arg(long, value_name = "DURATION")]
    pub claim_grace: Option<String>,
    /// Largest message (and frame) accepted [default: 1MiB]
    #[arg(long, value_name = "SIZE")]
    pub max_message_bytes: Option<String>,
    /// Largest request head (answer 431 beyond) [default: 16KiB]
    #[arg(long, value_name = "SIZE")]
    pub max_header_bytes: Option<String>,
    /// Time for a request head (and a registration) to arrive [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub handshake_timeout: Option<String>,
    /// Ping a connection idle for this long [default: 20s]
    #[arg(long, value_name = "DURATION")]
    pub ping_interval: Option<String>,
    /// Close a connection that sent nothing for this long [default: 60s]
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Time allowed to drain on SIGTERM/SIGINT [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// Lifetime of access tokens [default: 1h]
    #[arg(long, value_name = "DURATION")]
    pub access_token_ttl: Option<String>,
    /// Connections open at once on the relay listener; beyond: 503 + Retry-After [default: 16384]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections not yet authenticated (slow or anonymous clients); beyond, a connection waits for a place (--max-unauthenticated-wait), then 503 [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_unauthenticated: Option<usize>,
    /// How long a connection past --max-unauthenticated waits for a place before its 503; 0s refuses at once [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub max_unauthenticated_wait: Option<String>,
    /// POS connections (control channels and sessions) per client id; beyond: 429 [default: 8192]
    #[arg(long, value_name = "N")]
    pub max_connections_per_client: Option<usize>,
    /// Header lines in a request head (431 beyond) [default: 64]
    #[arg(long, value_name = "N")]
    pub max_header_count: Option<usize>,
    /// Failed logins (token requests, registrations) per client id from one address per minute before 429 [default: 10]
    #[arg(long, value_name = "N")]
    pub failed_logins_per_client: Option<u32>,
    /// Failed logins per source address (any client id) per minute before 429 [default: 30]
    #[arg(long, value_name = "N")]
    pub failed_logins_per_address: Option<u32>,
    /// Failed logins per client id from all addresses per minute; beyond, only addresses it logged in from in the last day may try [default: 1000]
    #[arg(long, value_name = "N")]
    pub failed_logins_per_client_total: Option<u32>,
    /// File holding the admin API token (e.g. ${CREDENTIALS_DIRECTORY}/admin-token under systemd's LoadCredential=)
    #[arg(long, value_name = "FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// Admin API token (better: the POSRELAY_ADMIN_TOKEN environment variable) [default: none, admin API refuses every call]
    #[arg(
        long,
        env = "POSRELAY_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,
    /// Log format [default: text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Run as a node of a cluster on these NATS JetStream servers (PROTOCOL.md §12; nats-server 2.11+) instead of the embedded store [default: one node, embedded store]
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub cluster: Option<Vec<String>>,
    /// This node's name in the cluster: letters, digits, '-' and '_' (required with --cluster)
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// This node's own URL (ws:// or wss://), reachable by POS software, named in `session_url` for the devices it serves (required with --cluster)
    #[arg(long, value_name = "URL")]
    pub node_url: Option<String>,
    /// How long a node's lease outlives its last renewal; a node renews it every third of that [default: 6s]
    #[arg(long, value_name = "DURATION")]
    pub lease_ttl: Option<String>,
    /// Copies the cluster keeps of its buckets and streams, when this node creates them [default: 3]
    #[arg(long, value_name = "N")]
    pub cluster_replicas: Option<usize>,
}

/// The configuration file: the same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    public_url: Option<String>,
    shards: Option<usize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    device_mtls_listen: Option<SocketAddr>,
    device_client_ca: Option<PathBuf>,
    subprotocols: Option<Vec<String>>,
    offline_queue_bytes: Option<String>,
    offline_grace: Option<String>,
    reliable_window: Option<String>,
    claim_grace: Option<String>,
    max_message_bytes: Option<String>,
    max_header_bytes: Option<String>,
    handshake_timeout: Option<String>,
    ping_interval: Option<String>,
    idle_timeout: Option<String>,
    drain_timeout: Option<String>,
    access_token_ttl: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    log_format: Option<LogFormat>,
    max_connections: Option<usize>,
    max_unauthenticated: Option<usize>,
    max_unauthenticated_wait: Option<String>,
    max_connections_per_client: Option<usize>,
    max_header_count: Option<usize>,
    failed_logins_per_client: Option<u32>,
    failed_logins_per_address: Option<u32>,
    failed_logins_per_client_total: Option<u32>,
    cluster: Option<Vec<String>>,
    node_id: Option<String>,
    node_url: Option<String>,
    lease_ttl: Option<String>,
    cluster_replicas: Option<usize>,
}

/// `--cluster` and what goes with it, resolved (PROTOCOL.md §12).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub servers: Vec<String>,
    pub node_id: String,
    pub node_url: Option<String>,
    pub lease_ttl: Duration,
    pub replicas: usize,
}

/// Everything `serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub public_url: Option<String>,
    pub shards: usize,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub device_mtls_listen: Option<SocketAddr>,
    pub device_client_ca: Option<PathBuf>,
    pub subprotocols: Option<Vec<String>>,
    pub offline_queue_bytes: usize,
    pub offline_grace: Duration,
    pub reliable_window: usize,
    pub claim_grace: Duration,
    pub max_message_bytes: usize,
    pub max_header_bytes: usize,
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub access_token_ttl: Duration,
    pub admin_token: Option<String>,
    pub log_format: LogFormat,
    pub max_connections: usize,
    pub max_unauthenticated: usize,
    pub max_unauthenticated_wait: Duration,
    pub max_connections_per_client: usize,
    pub max_header_count: usize,
    pub failed_logins_per_client: u32,
    pub failed_logins_per_address: u32,
    pub failed_logins_per_client_total: u32,
    pub cluster: Option<ClusterSettings>,
}

impl ServeArgs {
    /// Merges flags, file and defaults.
    pub fn resolve(&self) -> anyhow::Result<Settings> {
        let file: FileConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read configuration file {}: {e}{}",
                        path.display(),
                        unreadable_hint(&e)
                    )
                })?;
                toml::from_str(&text).with_context(|| {
                    format!("configuration file {} is not valid", path.display())
                })?
            }
            None => FileConfig::default(),
        };
        let size = |flag: &Option<String>,
                    key: &Option<String>,
                    default: &str,
                    name: &str|
         -> anyhow::Result<usize> {
            let text = flag.as_deref().or(key.as_deref()).unwrap_or(default);
            parse_size(text).map_err(|e| anyhow::anyhow!("{name}: {e}"))
        };
        let dur = |flag: &Option<String>,
                   key: &Option<String>,
                   default: &str,
                   name: &str|
         -> anyhow::Result<Duration> {
            let text = flag.as_deref().or(key.as_deref()).unwrap_or(default);
            parse_duration(text).map_err(|e| anyhow::anyhow!("{name}: {e}"))
        };
        let tls_cert = self
            .tls_cert
            .clone()
            .or(file.tls_cert)
            .map(|p| expand_credentials(&p, "tls_cert"))
            .transpose()?;
        let tls_key = self
            .tls_key
            .clone()
            .or(file.tls_key)
            .map(|p| expand_credentials(&p, "tls_key"))
            .transpose()?;
        let tls = match (tls_cert, tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("tls_cert and tls_key go together: give both or neither"),
        };
        // The cluster's keys, flags over file (resolved once the rest is).
        let cluster_keys = ClusterKeys {
            servers: self.cluster.clone().or(file.cluster.clone()),
            node_id: self.node_id.clone().or(file.node_id.clone()),
            node_url: self.node_url.clone().or(file.node_url.clone()),
            lease_ttl: self.lease_ttl.clone().or(file.lease_ttl.clone()),
            replicas: self.cluster_replicas.or(file.cluster_replicas),
        };
        let shards = self
            .shards
            .or(file.shards)
            .unwrap_or_else(posrelay_core::io::runtime::available_cores);
        if shards == 0 {
            bail!("shards must be at least 1");
        }
        let settings = Settings {
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| defaults::LISTEN.parse().expect("default")),
            admin_listen: self
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| defaults::ADMIN_LISTEN.parse().expect("default")),
            data_dir: self
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR)),
            public_url: self.public_url.clone().or(file.public_url),
            shards,
            tls,
            device_mtls_listen: self.device_mtls_listen.or(file.device_mtls_listen),
            device_client_ca: self.device_client_ca.clone().or(file.device_client_ca),
            subprotocols: self.subprotocols.clone().or(file.subprotocols),
            offline_queue_bytes: size(
                &self.offline_queue_bytes,
                &file.offline_queue_bytes,
                defaults::OFFLINE_QUEUE_BYTES,
                "offline_queue_bytes",
            )?,
            reliable_window: size(
                &self.reliable_window,
                &file.reliable_window,
                defaults::RELIABLE_WINDOW,
                "reliable_window",
            )?,
            offline_grace: dur(
                &self.offline_grace,
                &file.offline_grace,
                defaults::OFFLINE_GRACE,
                "offline_grace",
            )?,
            claim_grace: dur(
                &self.claim_grace,
                &file.claim_grace,
                defaults::CLAIM_GRACE,
                "claim_grace",
            )?,
            max_message_bytes: size(
                &self.max_message_bytes,
                &file.max_message_bytes,
                defaults::MAX_MESSAGE_BYTES,
                "max_message_bytes",
            )?,
            max_header_bytes: size(
                &self.max_header_bytes,
                &file.max_header_bytes,
                defaults::MAX_HEADER_BYTES,
                "max_header_bytes",
            )?,
            handshake_timeout: dur(
                &self.handshake_timeout,
                &file.handshake_timeout,
                defaults::HANDSHAKE_TIMEOUT,
                "handshake_timeout",
            )?,
            ping_interval: dur(
                &self.ping_interval,
                &file.ping_interval,
                defaults::PING_INTERVAL,
                "ping_interval",
            )?,
            idle_timeout: dur(
                &self.idle_timeout,
                &file.idle_timeout,
                defaults::IDLE_TIMEOUT,
                "idle_timeout",
            )?,
            drain_timeout: dur(
                &self.drain_timeout,
                &file.drain_timeout,
                defaults::DRAIN_TIMEOUT,
                "drain_timeout",
            )?,
            access_token_ttl: dur(
                &self.access_token_ttl,
                &file.access_token_ttl,
                defaults::ACCESS_TOKEN_TTL,
                "access_token_ttl",
            )?,
            admin_token: admin_token(
                self.admin_token.as_ref(),
                self.admin_token_file.as_ref(),
                file.admin_token.as_ref(),
                file.admin_token_file.as_ref(),
            )?,
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults::MAX_CONNECTIONS),
            max_unauthenticated: self
                .max_unauthenticated
                .or(file.max_unauthenticated)
                .unwrap_or(defaults::MAX_UNAUTHENTICATED),
            max_unauthenticated_wait: dur(
                &self.max_unauthenticated_wait,
                &file.max_unauthenticated_wait,
                defaults::MAX_UNAUTHENTICATED_WAIT,
                "max_unauthenticated_wait",
            )?,
            max_connections_per_client: self
                .max_connections_per_client
                .or(file.max_connections_per_client)
                .unwrap_or(defaults::MAX_CONNECTIONS_PER_CLIENT),
            max_header_count: self
                .max_header_count
                .or(file.max_header_count)
                .unwrap_or(defaults::MAX_HEADER_COUNT),
            failed_logins_per_client: self
                .failed_logins_per_client
                .or(file.failed_logins_per_client)
                .unwrap_or(defaults::FAILED_LOGINS_PER_CLIENT),
            failed_logins_per_address: self
                .failed_logins_per_address
                .or(file.failed_logins_per_address)
                .unwrap_or(defaults::FAILED_LOGINS_PER_ADDRESS),
            failed_logins_per_client_total: self
                .failed_logins_per_client_total
                .or(file.failed_logins_per_client_total)
                .unwrap_or(defaults::FAILED_LOGINS_PER_CLIENT_TOTAL),
            cluster: None,
        };
        let mut settings = settings;
        settings.cluster = resolve_cluster(cluster_keys, settings.public_url.as_deref())?;
        for (name, value) in [
            ("max_connections", settings.max_connections),
            ("max_unauthenticated", settings.max_unauthenticated),
            (
                "max_connections_per_client",
                settings.max_connections_per_client,
            ),
            ("max_header_count", settings.max_header_count),
        ] {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if settings.device_mtls_listen.is_some() && settings.tls.is_none() {
            bail!(
                "--device-mtls-listen (device_mtls_listen) serves the relay's certificate: give --tls-cert and --tls-key (tls_cert, tls_key) too"
            );
        }
        if settings.device_client_ca.is_some() && settings.device_mtls_listen.is_none() {
            bail!(
                "--device-client-ca (device_client_ca) applies to the device mTLS listener: give --device-mtls-listen (device_mtls_listen) too"
            );
        }
        if let Some(url) = &settings.public_url {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                bail!("public_url must start with ws:// or wss://, got {url:?}");
            }
        }
        Ok(settings)
    }
}

/// The cluster's keys as given (flag, else file key).
struct ClusterKeys {
    servers: Option<Vec<String>>,
    node_id: Option<String>,
    node_url: Option<String>,
    lease_ttl: Option<String>,
    replicas: Option<usize>,
}

/// `--cluster` with its companions; each companion without `--cluster` is refused (it
/// would be ignored, and an operator would believe the node clustered).
fn resolve_cluster(
    keys: ClusterKeys,
    public_url: Option<&str>,
) -> anyhow::Result<Option<ClusterSettings>> {
    let ClusterKeys {
        servers,
        node_id,
        node_url,
        lease_ttl,
        replicas,
    } = keys;
    let Some(servers) = servers else {
        for (given, flag) in [
            (node_id.is_some(), "--node-id (node_id)"),
            (node_url.is_some(), "--node-url (node_url)"),
            (lease_ttl.is_some(), "--lease-ttl (lease_ttl)"),
            (replicas.is_some(), "--cluster-replicas (cluster_replicas)"),
        ] {
            if given {
                bail!("{flag} applies to a cluster node: give --cluster nats://HOST:4222[,...] (cluster) too");
            }
        }
        return Ok(None);
    };
    let servers: Vec<String> = servers
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        bail!("--cluster (cluster) names no NATS server: give nats://HOST:4222[,...]");
    }
    let Some(node_id) = node_id else {
        bail!("--cluster needs --node-id (node_id): a name of its own for this node, e.g. --node-id a");
    };
    if let Err(e) = posrelay_core::ownership::NodeId::new(node_id.clone()) {
        bail!("--node-id (node_id): {e}");
    }
    // §12: `session_url` names the node that serves the device: a node without its own
    // URL would hand out the load balancer's (its --public-url), and every session would
    // take the forwarded path (a NATS hop each way).
    let Some(node_url) = node_url else {
        let hint = public_url.map_or(String::new(), |p| {
            format!(" (not --public-url {p}: that is every node's address)")
        });
        bail!("--cluster needs --node-url (node_url): the ws:// or wss:// URL at which POS software reaches this very node{hint}; claims name it in session_url");
    };
    if !(node_url.starts_with("ws://") || node_url.starts_with("wss://")) {
        bail!("node_url must start with ws:// or wss://, got {node_url:?}");
    }
    let node_url = Some(node_url);
    let lease_ttl = parse_duration(lease_ttl.as_deref().unwrap_or(defaults::LEASE_TTL))
        .map_err(|e| anyhow::anyhow!("lease_ttl: {e}"))?;
    if let Err(e) = posrelay_core::ownership::LeaseTerms::new(lease_ttl) {
        bail!("{e}");
    }
    let replicas = replicas.unwrap_or(defaults::CLUSTER_REPLICAS);
    if !(1..=5).contains(&replicas) {
        bail!("cluster_replicas must be between 1 and 5 (JetStream's limit), got {replicas}");
    }
    Ok(Some(ClusterSettings {
        servers,
        node_id,
        node_url,
        lease_ttl,
        replicas,
    }))
}

/// The admin token: a flag (or `POSRELAY_ADMIN_TOKEN`) or a flag's file first, then the
/// configuration file's key or file; a token and a token file from the same place are
/// refused as ambiguous.
fn admin_token(
    flag: Option<&String>,
    flag_file: Option<&PathBuf>,
    key: Option<&String>,
    key_file: Option<&PathBuf>,
) -> anyhow::Result<Option<String>> {
    if key.is_some() && key_file.is_some() {
        bail!("the configuration file sets both admin_token and admin_token_file: keep one");
    }
    if let Some(token) = flag {
        return Ok(Some(token.clone()));
    }
    match flag_file.or(if key.is_some() { None } else { key_file }) {
        Some(path) => read_admin_token(&expand_credentials(path, "admin_token_file")?).map(Some),
        None => Ok(key.cloned()),
    }
}

/// Reads an admin token file: its first line, without the line end.
fn read_admin_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the admin token file {}: {e}{}",
            path.display(),
            unreadable_hint(&e)
        )
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        bail!(
            "the admin token file {} is empty: put the token on its first line",
            path.display()
        );
    }
    Ok(token)
}

/// What to do about a file posrelay may not read.
fn unreadable_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            ": make it readable by the user posrelay runs as (under systemd with \
             DynamicUser=, hand secrets over with LoadCredential=, as deploy/posrelay.service does)"
        }
        std::io::ErrorKind::NotFound => ": check the path",
        _ => "",
    }
}

/// `${CREDENTIALS_DIRECTORY}` (or `$CREDENTIALS_DIRECTORY`) at the start of a path, as
/// systemd's `LoadCredential=` hands files to a service, replaced by its value.
fn expand_credentials(path: &std::path::Path, name: &str) -> anyhow::Result<PathBuf> {
    let text = path.to_string_lossy();
    let rest = text
        .strip_prefix("${CREDENTIALS_DIRECTORY}")
        .or_else(|| text.strip_prefix("$CREDENTIALS_DIRECTORY"));
    let Some(rest) = rest else {
        return Ok(path.to_owned());
    };
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
        anyhow::anyhow!(
            "{name} is {text:?} but CREDENTIALS_DIRECTORY is not set: systemd sets it for a \
             unit with LoadCredential=; elsewhere give the file's own path"
        )
    })?;
    Ok(PathBuf::from(format!(
        "{}{rest}",
        std::path::Path::new(&dir).display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_comes_from_a_file_and_credentials_are_expanded() {
        let dir = std::env::temp_dir().join(format!("posrelay-cfg3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin-token"), "s3cret\n").unwrap();
        let args = ServeArgs {
            admin_token_file: Some(dir.join("admin-token")),
            ..Default::default()
        };
        assert_eq!(
            args.resolve().unwrap().admin_token.as_deref(),
            Some("s3cret")
        );
        // ${CREDENTIALS_DIRECTORY} as systemd sets it.
        let expanded = with_credentials_directory(&dir, || {
            expand_credentials(
                std::path::Path::new("${CREDENTIALS_DIRECTORY}/admin-token"),
                "x",
            )
            .unwrap()
        });
        assert_eq!(expanded, dir.join("admin-token"));
        let unset = expand_credentials(std::path::Path::new("$CREDENTIALS_DIRECTORY/k"), "tls_key");
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
            let text = unset.unwrap_err().to_string();
            assert!(text.contains("LoadCredential="), "{text}");
        }
        std::fs::write(dir.join("empty"), "\n").unwrap();
        let err = read_admin_token(&dir.join("empty")).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = read_admin_token(&dir.join("missing")).unwrap_err();
        assert!(err.to_string().contains("check the path"), "{err}");
    }

    /// Runs `f` with CREDENTIALS_DIRECTORY set to `dir` (tests in this module that read
    /// it run here only).
    fn with_credentials_directory<T>(dir: &std::path::Path, f: impl FnOnce() -> T) -> T {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("CREDENTIALS_DIRECTORY", dir);
        let out = f();
        std::env::remove_var("CREDENTIALS_DIRECTORY");
        out
    }

    #[test]
    fn cluster_flags_resolve_with_their_defaults_and_are_refused_alone() {
        let alone = ServeArgs {
            node_id: Some("a".into()),
            ..ServeArgs::default()
        };
        let err = alone.resolve().unwrap_err().to_string();
        assert!(
            err.contains("--node-id") && err.contains("--cluster"),
            "{err}"
        );

        let no_id = ServeArgs {
            cluster: Some(vec!["nats://127.0.0.1:4222".into()]),
            ..ServeArgs::default()
        };
        let err = no_id.resolve().unwrap_err().to_string();
        assert!(err.contains("--node-id"), "{err}");

        let bad_id = ServeArgs {
            cluster: Some(vec!["nats://127.0.0.1:4222".into()]),
            node_id: Some("a.b".into()),
            node_url: Some("ws://127.0.0.1:8080".into()),
            ..ServeArgs::default()
        };
        let err = bad_id.resolve().unwrap_err().to_string();
        assert!(err.contains("--node-id"), "{err}");

        let short = ServeArgs {
            cluster: Some(vec!["nats://127.0.0.1:4222".into()]),
            node_id: Some("a".into()),
            node_url: Some("ws://127.0.0.1:8080".into()),
            lease_ttl: Some("500ms".into()),
            ..ServeArgs::default()
        };
        let err = short.resolve().unwrap_err().to_string();
        assert!(err.contains("--lease-ttl"), "{err}");

        let mut node = ServeArgs {
            cluster: Some(vec![
                "nats://10.0.0.1:4222".into(),
                "nats://10.0.0.2:4222".into(),
            ]),
            node_id: Some("a".into()),
            public_url: Some("wss://relay.example.com".into()),
            ..ServeArgs::default()
        };
        // Without --node-url: refused, saying why the public URL will not do.
        let err = node.resolve().unwrap_err().to_string();
        assert!(
            err.contains("--node-url") && err.contains("--public-url"),
            "{err}"
        );
        node.node_url = Some("wss://a.relay.example.com".into());
        let c = node.resolve().unwrap().cluster.expect("a cluster node");
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.node_id, "a");
        assert_eq!(c.lease_ttl, Duration::from_secs(6));
        assert_eq!(c.replicas, 3);
        assert_eq!(c.node_url.as_deref(), Some("wss://a.relay.example.com"));
        assert!(ServeArgs::default().resolve().unwrap().cluster.is_none());
    }

    #[test]
    fn defaults_apply_without_flags_or_file() {
        let s = ServeArgs::default().resolve().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.admin_listen.to_string(), "127.0.0.1:9080");
        assert_eq!(s.offline_queue_bytes, 1 << 20);
        assert_eq!(s.reliable_window, 1 << 20);
        assert_eq!(s.offline_grace, Duration::from_secs(30));
        assert_eq!(s.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.max_header_bytes, 16 << 10);
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("posrelay-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("posrelay.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\noffline_grace = \"5s\"\nshards = 1\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            offline_grace: Some("7s".into()),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(s.offline_grace, Duration::from_secs(7));
        assert_eq!(s.shards, 1);
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("posrelay-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:7000\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(args.resolve().is_err());
    }
}
