//! The NATS bridge: async-nats on one dedicated thread with a current-thread tokio
//! runtime, and the rest of the process talking to it over channels.
//!
//! Nothing outside this thread runs tokio: a glommio shard hands a job over with
//! [`BridgeHandle::call`] (never blocking: the queue is unbounded and the answer is a
//! [`Reply`], a future any executor can await), and a blocking caller (the store's
//! methods on the blocking pool) waits with [`Reply::wait`]. Only cluster traffic crosses
//! the bridge; the data path of a device and a POS on the same node never does.
//!
//! The client reconnects across the whole server list for as long as the node runs (a
//! dead server is detected by its closed socket at once, a silent one after two missed
//! pings); [`BridgeHandle::link`] tells whether it is connected now, for `/healthz`, and
//! every change is logged once.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::ClusterError;

/// How the bridge connects.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// NATS servers (`nats://host:port`), tried in turn (`--cluster`).
    pub servers: Vec<String>,
    /// The connection's name in NATS monitoring (`posrelay <node-id>`).
    pub name: String,
    /// How long a JetStream call (API request, publish acknowledgement) may take.
    pub request_timeout: Duration,
    /// How often the client pings its server; two unanswered pings drop the connection
    /// and the client moves on to another server.
    pub ping_interval: Duration,
}

impl BridgeConfig {
    /// Defaults: 5 s per JetStream call, a ping every 2 s.
    pub fn new(servers: Vec<String>, name: impl Into<String>) -> Self {
        Self {
            servers,
            name: name.into(),
            request_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(2),
        }
    }
}

/// Whether the bridge has a NATS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Never connected yet.
    Connecting,
    /// Connected to one of the servers.
    Connected,
    /// Lost its connection; reconnecting.
    Disconnected,
}

/// The link's state and since when (for `/healthz` and the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    /// Connected or not.
    pub state: LinkState,
    /// When it entered that state.
    pub since: Instant,
    /// Connections made so far (the first one included).
    pub connections: u64,
}

impl LinkStatus {
    /// Whether the node may do what needs the cluster (claims, registrations, admin
    /// writes); `/healthz` answers 503 when not.
    pub fn is_up(&self) -> bool {
        self.state == LinkState::Connected
    }

    /// One line for `/healthz` and the log: `nats: connected for 12s` or
    /// `nats: disconnected for 3s, reconnecting (…)`.
    pub fn describe(&self, now: Instant, servers: &str) -> String {
        let secs = now.saturating_duration_since(self.since).as_secs();
        match self.state {
            LinkState::Connected => format!("nats: connected for {secs}s"),
            LinkState::Connecting => {
                format!("nats: not connected yet after {secs}s, trying {servers}")
            }
            LinkState::Disconnected => {
                format!("nats: disconnected for {secs}s, reconnecting to {servers}")
            }
        }
    }

    /// Prometheus series: `posrelay_cluster_connected` (gauge, 1 or 0) and
    /// `posrelay_cluster_connections_total` (counter: connections made, reconnects included).
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP posrelay_cluster_connected Whether the node is connected to a NATS server (1) or not (0).\n\
             # TYPE posrelay_cluster_connected gauge\n\
             posrelay_cluster_connected {}\n\
             # HELP posrelay_cluster_connections_total NATS connections made, reconnects included.\n\
             # TYPE posrelay_cluster_connections_total counter\n\
             posrelay_cluster_connections_total {}",
            u8::from(self.is_up()),
            self.connections
        );
    }
}

/// What a job gets: the connection and its JetStream context.
#[derive(Clone, Debug)]
pub struct Nats {
    /// The NATS client (core NATS: subjects, requests).
    pub client: async_nats::Client,
    /// JetStream on it, with the bridge's request timeout.
    pub js: async_nats::jetstream::Context,
    /// That timeout (to report it in errors).
    pub timeout: Duration,
}

type Job = Box<dyn FnOnce(Nats) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

enum Msg {
    Job(Job),
    Stop,
}

/// A cloneable way to the bridge's thread.
#[derive(Clone)]
pub struct BridgeHandle {
    jobs: mpsc::UnboundedSender<Msg>,
    link: Arc<Mutex<LinkStatus>>,
    servers: Arc<str>,
}

impl std::fmt::Debug for BridgeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeHandle")
            .field("servers", &self.servers)
            .field("link", &self.link())
            .finish()
    }
}

impl BridgeHandle {
    /// The configured servers, comma-separated (for messages).
    pub fn servers(&self) -> &str {
        &self.servers
    }

    /// The link's state now.
    pub fn link(&self) -> LinkStatus {
        *self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Disconnected` unless the link is up: callers that must not wait out a timeout for
    /// nothing (an admin write while NATS is away answers 503 at once).
    pub fn require_connected(&self) -> Result<(), ClusterError> {
        match self.link().state {
            LinkState::Connected => Ok(()),
            _ => Err(ClusterError::Disconnected {
                servers: self.servers.to_string(),
            }),
        }
    }

    /// Runs `f` on the bridge's thread and answers with its output. Never blocks.
    pub fn call<T, F, Fut>(&self, f: F) -> Reply<T>
    where
        T: Send + 'static,
        F: FnOnce(Nats) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |nats| {
            Box::pin(async move {
                let _ = tx.send(f(nats).await);
            })
        });
        match self.jobs.send(Msg::Job(job)) {
            Ok(()) => Reply { rx: Some(rx) },
            Err(_) => Reply { rx: None },
        }
    }

    /// Runs `f` on the bridge's thread in the background (watches, lease renewals): it
    /// stops when its future ends or when the bridge stops.
    pub fn spawn<F, Fut>(&self, f: F) -> Result<(), ClusterError>
    where
        F: FnOnce(Nats) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let job: Job = Box::new(move |nats| Box::pin(f(nats)));
        self.jobs
            .send(Msg::Job(job))
            .map_err(|_| ClusterError::Stopped)
    }
}

// Handles cross threads (shards, the blocking pool); the bridge is owned by the node.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<BridgeHandle>();
    shared::<NatsBridge>();
};

/// The answer of a [`BridgeHandle::call`]: await it (any executor), or [`Reply::wait`]
/// for it on a thread that may block.
#[must_use = "a call's answer says whether it happened"]
pub struct Reply<T> {
    rx: Option<oneshot::Receiver<T>>,
}

impl<T> Reply<T> {
    /// Blocks the calling thread until the answer comes. Never call it on a shard or on
    /// the bridge's own thread.
    pub fn wait(self) -> Result<T, ClusterError> {
        match self.rx {
            Some(rx) => rx.blocking_recv().map_err(|_| ClusterError::Stopped),
            None => Err(ClusterError::Stopped),
        }
    }
}

impl<T> Future for Reply<T> {
    type Output = Result<T, ClusterError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.rx.as_mut() {
            Some(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.map_err(|_| ClusterError::Stopped)),
            None => Poll::Ready(Err(ClusterError::Stopped)),
        }
    }
}

/// The bridge: owns the thread; dropping it stops the thread (after flushing what was
/// published, for at most a second) and joins it.
pub struct NatsBridge {
    handle: BridgeHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for NatsBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.handle.fmt(f)
    }
}

impl NatsBridge {
    /// Starts the thread and the client; the connection is made in the background (and
    /// made again whenever it is lost), so this returns at once. Watch
    /// [`BridgeHandle::link`] or make a call to know when NATS answers.
    pub fn start(config: BridgeConfig) -> Result<Self, ClusterError> {
        if config.servers.is_empty() {
            return Err(ClusterError::Start("no NATS server given".into()));
        }
        let link = Arc::new(Mutex::new(LinkStatus {
            state: LinkState::Connecting,
            since: Instant::now(),
            connections: 0,
        }));
        let servers: Arc<str> = config.servers.join(",").into();
        let (tx, rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        let for_thread = link.clone();
        let thread = std::thread::Builder::new()
            .name("posrelay-nats".into())
            .spawn(move || run(runtime, config, rx, for_thread))
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        Ok(Self {
            handle: BridgeHandle {
                jobs: tx,
                link,
                servers,
            },
            thread: Some(thread),
        })
    }

    /// A handle for callers.
    pub fn handle(&self) -> BridgeHandle {
        self.handle.clone()
    }
}

impl Drop for NatsBridge {
    fn drop(&mut self) {
        let _ = self.handle.jobs.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn set_link(link: &Mutex<LinkStatus>, state: LinkState) {
    let mut status = link.lock().unwrap_or_else(|p| p.into_inner());
    if status.state != state {
        status.state = state;
        status.since = Instant::now();
    }
    if state == LinkState::Connected {
        status.connections += 1;
    }
}

fn run(
    runtime: tokio::runtime::Runtime,
    config: BridgeConfig,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    link: Arc<Mutex<LinkStatus>>,
) {
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let servers = config.servers.join(",");
        let events = link.clone();
        let logged_servers = servers.clone();
        let options = async_nats::ConnectOptions::new()
            .name(&config.name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .ping_interval(config.ping_interval)
            .request_timeout(Some(config.request_timeout))
            // Quick first retries (a server restarting), then at most every 2 s.
            .reconnect_delay_callback(|attempts| {
                let exp = attempts.min(5) as u32;
                Duration::from_millis(50 * 2u64.pow(exp)).min(Duration::from_secs(2))
            })
            .event_callback(move |event| {
                let link = events.clone();
                let servers = logged_servers.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            set_link(&link, LinkState::Connected);
                            tracing::info!(servers = %servers, "NATS connected");
                        }
                        async_nats::Event::Disconnected => {
                            set_link(&link, LinkState::Disconnected);
                            tracing::warn!(
                                servers = %servers,
                                "NATS connection lost: reconnecting to the next server; cluster operations wait until then"
                            );
                        }
                        async_nats::Event::LameDuckMode => {
                            tracing::info!("NATS server entering lame duck mode: moving to another server")
                        }
                        async_nats::Event::SlowConsumer(sid) => {
                            tracing::warn!(sid, "NATS slow consumer: a subscription is not keeping up")
                        }
                        other => tracing::warn!(event = %other, "NATS event"),
                    }
                }
            });
        let client = match async_nats::connect_with_options(config.servers.clone(), options).await
        {
            Ok(client) => client,
            Err(e) => {
                // With retry_on_initial_connect only malformed options end up here.
                tracing::error!(error = %e, servers = %servers, "cannot start the NATS client");
                return;
            }
        };
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let nats = Nats {
            client,
            js,
            timeout: config.request_timeout,
        };
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Job(job) => {
                    tokio::task::spawn_local(job(nats.clone()));
                }
                Msg::Stop => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), nats.client.flush()).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::NatsCluster;

    /// Waits (bounded) until `cond` holds, polling every 10 ms.
    pub(crate) fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn round_trip(handle: &BridgeHandle) -> Result<(), ClusterError> {
        handle
            .call(|nats| async move {
                let timeout = nats.timeout;
                nats.js
                    .query_account()
                    .await
                    .map(|_| ())
                    .map_err(|e| ClusterError::other(e, timeout))
            })
            .wait()?
    }

    #[test]
    fn the_link_is_described_for_operators() {
        let t0 = Instant::now();
        let mut link = LinkStatus {
            state: LinkState::Disconnected,
            since: t0,
            connections: 3,
        };
        assert!(!link.is_up());
        assert_eq!(
            link.describe(t0 + Duration::from_secs(4), "nats://a:4222"),
            "nats: disconnected for 4s, reconnecting to nats://a:4222"
        );
        let mut text = String::new();
        link.render_metrics(&mut text);
        assert!(text.contains("\nposrelay_cluster_connected 0\n"), "{text}");
        assert!(
            text.ends_with("posrelay_cluster_connections_total 3\n"),
            "{text}"
        );
        link.state = LinkState::Connected;
        assert!(link.is_up());
        assert_eq!(link.describe(t0, "x"), "nats: connected for 0s");
    }

    #[test]
    fn reconnects_to_another_server_and_reports_its_link() {
        let mut cluster = NatsCluster::start(3);
        let mut config = BridgeConfig::new(vec![cluster.client_url(0)], "posrelay test");
        config.request_timeout = Duration::from_secs(2);
        // Only server 0 is configured: the others are learnt from it (server gossip), as
        // a node configured with one seed learns the rest.
        let bridge = NatsBridge::start(config).unwrap();
        let handle = bridge.handle();
        eventually("connected", Duration::from_secs(10), || {
            handle.link().state == LinkState::Connected
        });
        round_trip(&handle).unwrap();

        cluster.kill(0);
        eventually("link down seen", Duration::from_secs(10), || {
            handle.link().state != LinkState::Connected || handle.link().connections > 1
        });
        eventually("reconnected elsewhere", Duration::from_secs(15), || {
            handle.link().state == LinkState::Connected && handle.link().connections >= 2
        });
        eventually("JetStream answers again", Duration::from_secs(15), || {
            round_trip(&handle).is_ok()
        });

        // Every server gone: calls fail (fast when the link is known to be down), nothing hangs.
        cluster.kill(1);
        cluster.kill(2);
        eventually("link down", Duration::from_secs(10), || {
            handle.link().state == LinkState::Disconnected
        });
        assert!(matches!(
            handle.require_connected(),
            Err(ClusterError::Disconnected { .. })
        ));
        assert!(round_trip(&handle).is_err());

        // Back: the link comes up again by itself.
        cluster.start_again(1).unwrap();
        cluster.start_again(2).unwrap();
        cluster
            .wait_ready(crate::cluster::testing::READY_TIMEOUT)
            .unwrap();
        eventually(
            "reconnected after the outage",
            Duration::from_secs(20),
            || handle.link().state == LinkState::Connected,
        );
        eventually(
            "JetStream answers after the outage",
            Duration::from_secs(20),
            || round_trip(&handle).is_ok(),
        );
        drop(bridge);
        assert!(matches!(round_trip(&handle), Err(ClusterError::Stopped)));
    }
}
