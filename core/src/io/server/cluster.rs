//! This node's membership of a cluster (PROTOCOL.md §12), as the shards see it: the NATS
//! bridge, the cluster's store (provisioning, the token signing key and the session key,
//! in a replicated JetStream bucket read from a local replica), the ownership streams and
//! the node's lease.
//!
//! What it answers the shards, without waiting on the network:
//! - [`ClusterNode::availability`]: whether the node may do what needs the cluster
//!   (registrations, device connections, claims): connected to NATS and holding its lease.
//!   Otherwise those are refused with 503 and `Retry-After` (§12: "refuses what needs the
//!   cluster … with 503 until NATS is back"), while connections already open keep
//!   relaying.
//! - [`ClusterNode::health`]: the lines `/healthz` shows, and its status.
//! - [`ClusterNode::render_metrics`]: the link's and the lease's series.
//!
//! A lease lost for good (the node was cut off or paused for longer than `--lease-ttl`,
//! or another process took its node id) is logged and classified
//! ([`crate::ownership::Lapse`]: fence the devices, or keep relaying because NATS itself
//! was gone), and a new incarnation acquires a new lease: [`ClusterNode::handle_tick`],
//! called by shard 0's tick. The data path asks [`ClusterNode::may_forward`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::cluster::forward::{self, ForwardFrame, ForwardPublisher, OpenReply, OpenRequest};
use crate::cluster::ownership::{ensure_streams, OwnershipStreams};
use crate::cluster::remote::{
    self, ClaimRecorder, ClaimReply, ClaimRequest, EventNotice, ForwardInbox, NodeInbox,
    PresenceNotice,
};
use crate::cluster::LinkState;
use crate::cluster::{
    BridgeConfig, BridgeHandle, JetStreamStore, KvStoreConfig, LeaseClock, LeaseKeeper,
};
use crate::cluster::{ClusterError, JetStreamReliableLog, NatsBridge};
use crate::ids::{ClientKey, DeviceKey};
use crate::ownership::OwnershipRecord;
use crate::ownership::{
    classify_lapse, Incarnation, Lapse, LeaseStatus, LeaseTerms, LostReason, NodeId,
};
use crate::relay::ClientEventKind;
use crate::reliable::ClaimSnapshot;

/// What a device's arrival brought from its previous node (§12).
#[derive(Debug, Default)]
pub(crate) struct Arrival {
    /// The claim it had ("claims stay").
    pub claim: Option<ClientKey>,
    /// Its reliable claim, as that node left it in the log (§11).
    pub reliable: Option<ClaimSnapshot>,
}

/// `--cluster` and its companions (PROTOCOL.md §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `--cluster`: the NATS servers, tried in turn.
    pub servers: Vec<String>,
    /// `--node-id`.
    pub node_id: NodeId,
    /// `--node-url`: named in `session_url` for the devices this node serves.
    pub node_url: Option<String>,
    /// `--lease-ttl`.
    pub lease: LeaseTerms,
    /// `--cluster-replicas`: copies of the bucket and streams this node creates.
    pub replicas: usize,
}

/// How long a claim put to another node may wait for its decision.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `serve` waits at start for NATS, the store and the lease.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the node cannot do what needs the cluster right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// No NATS server is connected.
    Disconnected,
    /// The lease is not held (being acquired again after it was lost).
    NoLease,
}

impl Unavailable {
    /// What the refused client (and the log) is told.
    pub(crate) fn explain(self) -> &'static str {
        match self {
            Unavailable::Disconnected => {
                "this relay node has lost its cluster (NATS unreachable): retry, or connect to another node"
            }
            Unavailable::NoLease => {
                "this relay node is rejoining its cluster (lease not held): retry, or connect to another node"
            }
        }
    }

    /// `Retry-After` seconds for a 503 that says this.
    pub(crate) const RETRY_AFTER_SECS: u64 = 2;
}

/// `/healthz` in cluster mode.
pub(crate) struct Health {
    /// Whether everything needing the cluster works.
    pub ok: bool,
    /// One line each: the NATS link, the lease.
    pub lines: String,
}

/// The node's side of the cluster. Lives in `Shared` for the life of the process.
pub(crate) struct ClusterNode {
    // Dropped last (fields drop in order): the store's watch and the lease task run on it.
    config: ClusterConfig,
    store: Arc<JetStreamStore>,
    streams: OwnershipStreams,
    lease: Mutex<LeaseKeeper>,
    /// This node and its incarnation (a new one with each lease), as ownership records
    /// name it.
    me: Mutex<OwnershipRecord>,
    /// What other nodes say to this one, until shard 0 takes it.
    inbox: Mutex<Option<NodeInbox>>,
    /// Each shard's forwarded sessions' traffic, until the shard takes it.
    forward_inboxes: Mutex<Vec<Option<ForwardInbox>>>,
    /// Publishes forwarded sessions' frames in order.
    publisher: ForwardPublisher,
    /// Records claims in ownership records, in order.
    claims: ClaimRecorder,
    /// Reliable claims (§11), on the ownership stream.
    reliable: Arc<JetStreamReliableLog>,
    /// Until when the lease holds, for the data path (lock-free).
    clock: Arc<LeaseClock>,
    /// Incarnations started after the first (each one a lease lost for good).
    reacquired: AtomicU64,
    /// Losses that fence ([`Lapse::Fence`]): each shard ends what it had of its devices
    /// once per loss.
    fences: AtomicU64,
    /// A lapse while NATS was gone ([`Lapse::Offline`]) is in progress: the local
    /// connections keep relaying until a new lease holds and ownership is checked again.
    offline_lapse: AtomicBool,
    /// Offline lapses ended (a new lease held): each shard checks its devices' ownership
    /// once per end.
    revalidations: AtomicU64,
    /// Requests refused with 503 because the cluster was not reachable.
    refusals: AtomicU64,
    handle: BridgeHandle,
    _bridge: NatsBridge,
}

impl ClusterNode {
    /// Connects to NATS, opens the store (loading its replica), creates the ownership
    /// streams if needed and acquires the lease. Blocks for up to [`START_TIMEOUT`] per
    /// step; the error says what to check.
    pub(crate) fn start(config: &ClusterConfig, shards: usize) -> std::io::Result<Self> {
        let name = format!("posrelay {}", config.node_id);
        let bridge = NatsBridge::start(BridgeConfig::new(config.servers.clone(), name))
            .map_err(|e| start_error("start the NATS client", e))?;
        let handle = bridge.handle();
        let store = JetStreamStore::open(
            &handle,
            &KvStoreConfig {
                replicas: config.replicas,
                load_timeout: START_TIMEOUT,
                ..KvStoreConfig::default()
            },
        )
        .map_err(std::io::Error::other)?;
        let replicas = config.replicas;
        let streams = handle
            .call(move |nats| async move { ensure_streams(&nats, replicas).await })
            .wait()
            .and_then(|r| r)
            .map_err(|e| start_error("create the ownership streams", e))?;
        let clock = Arc::new(LeaseClock::default());
        let (lease, me) = Self::keep_lease(&handle, &streams, config, &clock)?;
        let (inbox, forward_inboxes) = NodeInbox::serve(&handle, &config.node_id, shards)
            .map_err(|e| start_error("subscribe to this node's subjects", e))?;
        let publisher = ForwardPublisher::start(&handle)
            .map_err(|e| start_error("start publishing forwarded sessions", e))?;
        let claims = ClaimRecorder::start(&handle, &streams)
            .map_err(|e| start_error("start recording claims", e))?;
        match lease.wait_held(START_TIMEOUT + config.lease.ttl()) {
            LeaseStatus::Held { .. } => {}
            other => {
                return Err(std::io::Error::other(format!(
                    "cannot acquire the lease of node {:?} ({other:?}): another process may run with this --node-id; \
                     give each node its own",
                    config.node_id.as_str()
                )))
            }
        }
        tracing::info!(
            node = %config.node_id,
            servers = %handle.servers(),
            lease_ttl = ?config.lease.ttl(),
            replicas = config.replicas,
            "cluster joined: store loaded, lease held"
        );
        let reliable = Arc::new(JetStreamReliableLog::new(handle.clone(), streams.clone()));
        reliable.set_me(me.clone());
        Ok(Self {
            config: config.clone(),
            store: Arc::new(store),
            streams: streams.clone(),
            lease: Mutex::new(lease),
            me: Mutex::new(me),
            inbox: Mutex::new(Some(inbox)),
            forward_inboxes: Mutex::new(forward_inboxes.into_iter().map(Some).collect()),
            publisher,
            claims,
            reliable,
            clock,
            reacquired: AtomicU64::new(0),
            fences: AtomicU64::new(0),
            offline_lapse: AtomicBool::new(false),
            revalidations: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            handle,
            _bridge: bridge,
        })
    }

    fn keep_lease(
        handle: &BridgeHandle,
        streams: &OwnershipStreams,
        config: &ClusterConfig,
        clock: &Arc<LeaseClock>,
    ) -> std::io::Result<(LeaseKeeper, OwnershipRecord)> {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let incarnation = Incarnation::from_random(bytes);
        let keeper = LeaseKeeper::start(
            handle,
            streams.clone(),
            config.node_id.clone(),
            incarnation.clone(),
            config.lease,
            clock.clone(),
        )
        .map_err(|e| start_error("start keeping the lease", e))?;
        let me = OwnershipRecord {
            node: config.node_id.clone(),
            incarnation,
        };
        Ok((keeper, me))
    }

    /// Whether this node may forward a relayed message read at `now` (§12 "forwards
    /// nothing more"): its lease holds (one atomic load, the data path's case), or it
    /// lapsed while NATS was gone ([`Lapse::Offline`]).
    pub(crate) fn may_forward(&self, now: Instant) -> bool {
        self.clock.holds_at(now) || self.lapse() == Lapse::Offline
    }

    /// What the lapse of the lease is, once it has lapsed (latched when offline, until
    /// the node holds a new lease).
    fn lapse(&self) -> Lapse {
        if self.offline_lapse.load(Ordering::Acquire) {
            return Lapse::Offline;
        }
        let Some(lapsed_at) = self.clock.last_until() else {
            return Lapse::Fence;
        };
        let link = self.handle.link();
        let down_since = (link.state != LinkState::Connected).then_some(link.since);
        let unreachable_since = [down_since, self.clock.troubled_since()]
            .into_iter()
            .flatten()
            .min();
        let lapse = classify_lapse(lapsed_at, unreachable_since);
        if lapse == Lapse::Offline {
            self.offline_lapse.store(true, Ordering::Release);
        }
        lapse
    }

    /// How many fencing losses so far (each shard acts once per loss).
    pub(crate) fn fences(&self) -> u64 {
        self.fences.load(Ordering::Relaxed)
    }

    /// How many offline lapses ended so far (each shard checks its devices once per end).
    pub(crate) fn revalidations(&self) -> u64 {
        self.revalidations.load(Ordering::Relaxed)
    }

    /// After an offline lapse: whether `device` is still this node's (taken again under
    /// the new incarnation if so).
    pub(crate) async fn still_mine(&self, device: &DeviceKey) -> Result<bool, ClusterError> {
        let me = self.me.lock().unwrap_or_else(|p| p.into_inner()).clone();
        remote::still_mine(&self.handle, &self.streams, device, &me).await
    }

    /// §12: hands an event for `client` to the other nodes (its control channels there).
    pub(crate) fn publish_event(&self, client: &ClientKey, event: &ClientEventKind) {
        let notice = EventNotice::new(&self.config.node_id, client, event);
        remote::publish_event(&self.handle, &notice);
    }

    /// §4 claim grace across nodes: tells the other nodes that `client` has a control
    /// channel homed on `shard` here now, or none any more.
    pub(crate) fn publish_presence(&self, shard: usize, client: &ClientKey, online: bool) {
        let notice = PresenceNotice::delta(&self.config.node_id, shard, client, online);
        remote::publish_presence(&self.handle, &notice);
    }

    /// And every client with one homed on `shard` (every refresh period).
    pub(crate) fn publish_presence_full(&self, shard: usize, clients: &[ClientKey]) {
        let notice = PresenceNotice::full(&self.config.node_id, shard, clients);
        remote::publish_presence(&self.handle, &notice);
    }

    /// This node's `--node-url`.
    pub(crate) fn node_url(&self) -> Option<&str> {
        self.config.node_url.as_deref()
    }

    /// This node's `--node-id`.
    pub(crate) fn node_id(&self) -> &NodeId {
        &self.config.node_id
    }

    /// Shard `index`'s forwarded sessions' traffic (taken once, by that shard).
    pub(crate) fn take_forward_inbox(&self, index: usize) -> Option<ForwardInbox> {
        self.forward_inboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(index)
            .and_then(Option::take)
    }

    /// Sends a forwarded session's frame to `end` on `node`'s `shard` (in order, never
    /// blocking).
    pub(crate) fn send_frame(&self, node: &NodeId, shard: usize, end: u64, frame: &ForwardFrame) {
        self.publisher
            .publish(forward::frame_subject(node, shard, end), frame);
    }

    /// Whether `node` runs: `Ok(false)` when NATS says at once that nobody listens on its
    /// subjects (it is gone).
    pub(crate) async fn node_alive(&self, node: &NodeId) -> Result<bool, ClusterError> {
        remote::node_alive(&self.handle, node, CLAIM_TIMEOUT).await
    }

    /// Asks `owner` to open a stand-in for a session opened here.
    pub(crate) async fn ask_open(
        &self,
        owner: &NodeId,
        request: &OpenRequest,
    ) -> Result<OpenReply, ClusterError> {
        remote::ask_open(&self.handle, owner, request, CLAIM_TIMEOUT).await
    }

    /// What other nodes say to this one (taken once, by shard 0).
    pub(crate) fn take_inbox(&self) -> Option<NodeInbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// §12: a device arrived here (registered or connected): this node takes its tsn
    /// over, and its previous node is told to close its older connection. What the tsn
    /// brought ([`Arrival`]): the client whose claim it had (it holds here too: "claims
    /// stay"), and its reliable claim as the log holds it (§11), now this node's to write.
    pub(crate) async fn take_over(&self, device: &DeviceKey) -> Result<Arrival, ClusterError> {
        let me = self.me.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let taken = remote::take_over(&self.handle, &self.streams, device, &me).await?;
        let claim = taken.claim.and_then(|id| {
            Some(ClientKey {
                domain: device.domain.clone(),
                client_id: crate::ids::ClientId::new(id).ok()?,
            })
        });
        let reliable = taken
            .reliable
            .as_ref()
            .and_then(|loaded| loaded.snapshot.clone());
        self.reliable.adopt(device, taken.epoch, taken.reliable);
        // §11: the reliable claim is the claim, when the claim record agrees or lags (its
        // record is written in the background; the reliable one before anything moved).
        let reliable = reliable.filter(|r| match &claim {
            Some(holder) if *holder != r.record.client => {
                tracing::warn!(tsn = %device.serial, domain = %device.domain, "the device's reliable claim is not its claim holder's: not restored");
                false
            }
            _ => true,
        });
        let claim = reliable.as_ref().map(|r| r.record.client.clone()).or(claim);
        Ok(Arrival { claim, reliable })
    }

    /// The node's reliable claims' log (§11 in the cluster).
    pub(crate) fn reliable_log(&self) -> Arc<JetStreamReliableLog> {
        self.reliable.clone()
    }

    /// §12: the claim of `device` (owned here) started (`Some`) or ended: recorded in its
    /// ownership record, in order, in the background.
    pub(crate) fn record_claim(&self, device: &DeviceKey, holder: Option<&ClientKey>) {
        let me = self.me.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.claims.record(
            device.clone(),
            me,
            holder.map(|c| c.client_id.as_str().to_owned()),
        );
    }

    /// The node that owns `device`, if it is another one than this (`None`: decide here).
    pub(crate) async fn other_owner(
        &self,
        device: &DeviceKey,
    ) -> Result<Option<NodeId>, ClusterError> {
        let owner = remote::owner_of(&self.handle, &self.streams, device).await?;
        Ok(owner
            .map(|(node, _)| node)
            .filter(|node| *node != self.config.node_id))
    }

    /// Puts a claim or release to the node that owns the tsn.
    pub(crate) async fn ask_claim(
        &self,
        owner: &NodeId,
        request: &ClaimRequest,
    ) -> Result<ClaimReply, ClusterError> {
        remote::ask_claim(&self.handle, owner, request, CLAIM_TIMEOUT).await
    }

    /// The cluster's store.
    pub(crate) fn store(&self) -> Arc<JetStreamStore> {
        self.store.clone()
    }

    fn lease_status(&self, now: Instant) -> LeaseStatus {
        self.lease
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .status(now)
    }

    /// Whether what needs the cluster may be done at `now`.
    pub(crate) fn availability(&self, now: Instant) -> Result<(), Unavailable> {
        if !self.handle.link().is_up() {
            return Err(Unavailable::Disconnected);
        }
        match self.lease_status(now) {
            LeaseStatus::Held { until } if until > now => Ok(()),
            _ => Err(Unavailable::NoLease),
        }
    }

    /// Counts a request refused because the cluster was not reachable.
    pub(crate) fn count_refusal(&self) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// `/healthz`: 200 only when NATS is connected and the lease held.
    pub(crate) fn health(&self, now: Instant) -> Health {
        let link = self.handle.link();
        let lease = match self.lease_status(now) {
            LeaseStatus::Held { until } => format!(
                "lease: held by node {} for {}ms more unless renewed",
                self.config.node_id,
                until.saturating_duration_since(now).as_millis()
            ),
            LeaseStatus::Acquiring => format!("lease: node {} acquiring", self.config.node_id),
            LeaseStatus::Lost(why) => format!(
                "lease: node {} lost it ({}); acquiring a new one",
                self.config.node_id,
                lost(why)
            ),
        };
        Health {
            ok: self.availability(now).is_ok(),
            lines: format!("{}\n{lease}\n", link.describe(now, self.handle.servers())),
        }
    }

    /// Prometheus series: the link's, `posrelay_cluster_lease_held` and
    /// `posrelay_cluster_leases_lost_total`.
    pub(crate) fn render_metrics(&self, now: Instant, out: &mut String) {
        use std::fmt::Write as _;
        self.handle.link().render_metrics(out);
        let held = matches!(self.lease_status(now), LeaseStatus::Held { until } if until > now);
        let _ = writeln!(
            out,
            "# HELP posrelay_cluster_lease_held Whether this node holds its cluster lease (1) or not (0).\n\
             # TYPE posrelay_cluster_lease_held gauge\n\
             posrelay_cluster_lease_held {}\n\
             # HELP posrelay_cluster_leases_lost_total Leases this node lost for good and acquired again.\n\
             # TYPE posrelay_cluster_leases_lost_total counter\n\
             posrelay_cluster_leases_lost_total {}\n\
             # HELP posrelay_cluster_refusals_total Registrations, device connections and claims refused with 503 because the cluster was not reachable.\n\
             # TYPE posrelay_cluster_refusals_total counter\n\
             posrelay_cluster_refusals_total {}\n\
             # HELP posrelay_cluster_claim_records_total Claims that started or ended on this node's devices, recorded in their ownership records (written) or not (failed: a POS claims again if the node is lost).\n\
             # TYPE posrelay_cluster_claim_records_total counter\n\
             posrelay_cluster_claim_records_total{{result=\"written\"}} {}\n\
             posrelay_cluster_claim_records_total{{result=\"failed\"}} {}\n\
             # HELP posrelay_cluster_reliable_writes_total Reliable claims' writes to JetStream (§11): stored (rollups among them), refused because another node owns the device now (fenced), or failed as a commit (retried).\n\
             # TYPE posrelay_cluster_reliable_writes_total counter\n\
             posrelay_cluster_reliable_writes_total{{result=\"stored\"}} {}\n\
             posrelay_cluster_reliable_writes_total{{result=\"fenced\"}} {}\n\
             posrelay_cluster_reliable_writes_total{{result=\"failed\"}} {}\n\
             # HELP posrelay_cluster_reliable_rollups_total Reliable claims' writes that replaced the claim's earlier records with its whole state (compaction).\n\
             # TYPE posrelay_cluster_reliable_rollups_total counter\n\
             posrelay_cluster_reliable_rollups_total {}",
            u8::from(held),
            self.reacquired.load(Ordering::Relaxed),
            self.refusals.load(Ordering::Relaxed),
            self.claims.counts.written.load(Ordering::Relaxed),
            self.claims.counts.failed.load(Ordering::Relaxed),
            self.reliable.counts.written.load(Ordering::Relaxed),
            self.reliable.counts.fenced.load(Ordering::Relaxed),
            self.reliable.counts.failed.load(Ordering::Relaxed),
            self.reliable.counts.rolled_up.load(Ordering::Relaxed),
        );
    }

    /// Shard 0's tick: a lease lost for good is logged, classified ([`Lapse`]) and a new
    /// incarnation starts acquiring a new one; an offline lapse ends once the new lease
    /// holds.
    pub(crate) fn handle_tick(&self, now: Instant) {
        let mut keeper = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        match keeper.status(now) {
            LeaseStatus::Lost(why) => {
                match self.lapse() {
                    Lapse::Fence => {
                        tracing::error!(
                            node = %self.config.node_id,
                            reason = lost(why),
                            "cluster lease lost: closing this node's device connections and POS sessions (1012); \
                             registrations and claims are refused with 503 until a new lease is held"
                        );
                        self.fences.fetch_add(1, Ordering::Relaxed);
                    }
                    Lapse::Offline => tracing::warn!(
                        node = %self.config.node_id,
                        "cluster lease lapsed while the cluster could not be reached or store anything: open connections \
                         keep relaying; each device's ownership is checked once a new lease holds (4000 for those that moved)"
                    ),
                }
                match Self::keep_lease(&self.handle, &self.streams, &self.config, &self.clock) {
                    Ok((fresh, me)) => {
                        *keeper = fresh;
                        self.reliable.set_me(me.clone());
                        *self.me.lock().unwrap_or_else(|p| p.into_inner()) = me;
                        self.reacquired.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot start acquiring a new lease"),
                }
            }
            LeaseStatus::Held { .. } if self.offline_lapse.load(Ordering::Acquire) => {
                tracing::info!(node = %self.config.node_id, "new lease held after NATS came back: checking each device's ownership");
                self.offline_lapse.store(false, Ordering::Release);
                self.revalidations.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

fn lost(why: LostReason) -> &'static str {
    match why {
        LostReason::Expired => {
            "no renewal acknowledged within --lease-ttl: NATS unreachable or the process paused"
        }
        LostReason::Superseded => {
            "its record was replaced: another process may run with this --node-id"
        }
    }
}

fn start_error(what: &str, e: ClusterError) -> std::io::Error {
    std::io::Error::other(format!(
        "cannot {what}: {e}; check that nats-server 2.11+ runs with JetStream at the --cluster addresses"
    ))
}
