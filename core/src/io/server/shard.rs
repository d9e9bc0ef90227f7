//! One shard: its coordinator (its share of the relay state and its side of the
//! conversation with the other shards, `crate::coord`), its connections' outboxes, the
//! mesh that carries coordination messages, and the tick that drives timers (relay timers,
//! pings, idle and token expiry).
//!
//! Everything the shard decides is decided by the coordinator; this file only carries out
//! its outputs ([`ShardCtx::drive`]): messages onto the mesh, frames and closes onto
//! outboxes, answers to the connections that wait for them.

use super::answers::Answers;
use super::conn::ConnEntry;
use super::mesh::{Mesh, ShardMsg};
use super::metrics::{ConnRole, ShardMetrics};
use super::Shared;
use crate::auth::AuthError;
use crate::control::event;
use crate::coord::{
    Answer, ClaimOutcome, ConnClass, CoordConfig, Coordinator, Nodes, Output, Participant,
    Placement, Requester, Ticket,
};
use crate::ids::{ClientKey, DeviceKey};
use crate::io::outbox::OutboxRef;
use crate::proto::{Message, Payload};
use crate::relay::{close, owner_shard, ClaimOp, ConnId, DeviceShard, SessionKeyring};
use bytes::Bytes;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a device's arrival ([`ShardCtx::arrive`]) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArrivalError {
    /// §12: the cluster did not record the device's new node (retry: 503).
    Cluster,
    /// The shard that owns the device did not answer in time.
    Shard,
}

impl ArrivalError {
    /// For the log and the refused device.
    pub(crate) fn message(self) -> &'static str {
        match self {
            ArrivalError::Cluster => "the cluster did not record the device's new node",
            ArrivalError::Shard => "the shard that owns the device did not answer",
        }
    }
}

/// One shard's state. `!Send`: it never leaves its executor.
pub(crate) struct ShardCtx {
    pub index: usize,
    pub shards: usize,
    pub shared: Arc<Shared>,
    pub metrics: Arc<ShardMetrics>,
    /// This shard's side of the coordination, over the devices it owns and the clients it
    /// is home to.
    pub coord: RefCell<Coordinator<Message>>,
    pub conns: RefCell<HashMap<ConnId, ConnEntry>>,
    /// §2a: the client certificate each device connection of the mTLS listener was made
    /// with (so that an unpin closes it). A map of its own: the other connections, idle by
    /// the thousand, pay nothing for it in their entry.
    pub cert_conns: RefCell<HashMap<ConnId, crate::tenancy::CertFingerprint>>,
    next_conn: Cell<u64>,
    pub mesh: Rc<Mesh>,
    answers: Answers,
    draining: Cell<bool>,
    /// Tasks waiting for the drain to start (registrations waiting for their message).
    drain_waiters: RefCell<Vec<std::task::Waker>>,
    /// Registrations in progress: WebSocket connections that are not in `conns` (they
    /// never relay) but that a drain must close with 1001 and wait for (§6).
    registering: Cell<usize>,
    /// The reliable claims of the devices this shard owns (§11).
    pub reliable: RefCell<super::reliable_session::ReliableClaims>,
    /// §12: claims other nodes put to this one, by the stand-in connection id they were
    /// asked for (shard 0 only).
    pub remote_claims: RefCell<HashMap<ConnId, crate::cluster::remote::Replier>>,
    /// §12: the forwarded sessions' ends on this shard (edges and stand-ins).
    pub forward_ends: RefCell<super::forward::Ends>,
    /// §12: when this shard last listed its clients with control channels to the other
    /// nodes.
    presence_listed: Cell<Option<Instant>>,
    /// §12: the plain POS sessions connected here whose device is here, which go on with
    /// the device's new node if it moves.
    pub movable: RefCell<HashMap<ConnId, Rc<super::forward::Movable>>>,
    /// §12: session ids looked up for forwarded sessions, and their devices.
    pub session_index: RefCell<super::forward::SessionIndex>,
    /// §12: the node's fencing lease losses this shard has acted on.
    fences_seen: Cell<u64>,
    /// §12: a fence is closing this shard's devices: nothing is forwarded meanwhile.
    pub fencing: Cell<bool>,
    /// §12: the node's ended offline lapses this shard has checked its devices after.
    revalidations_seen: Cell<u64>,
}

impl ShardCtx {
    /// Whether the drain has started.
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// Starts the drain: from now on, [`Self::until_draining`] is ready.
    pub fn start_draining(&self) {
        self.draining.set(true);
        for w in self.drain_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Ready once the drain has started.
    pub async fn until_draining(&self) {
        std::future::poll_fn(|cx| {
            if self.draining.get() {
                std::task::Poll::Ready(())
            } else {
                self.drain_waiters.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Counts a registration in progress for as long as the returned guard lives.
    pub fn registering(self: &Rc<Self>) -> Registering {
        self.registering.set(self.registering.get() + 1);
        Registering(self.clone())
    }

    /// A fresh connection id (unique across shards: the shard index is in the low bits).
    pub fn new_conn_id(&self) -> ConnId {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        ConnId(n * 64 + self.index as u64)
    }

    /// Registers a connection's outbox so that others can write to it.
    pub fn add_conn(&self, id: ConnId, entry: ConnEntry) {
        self.metrics.opened(entry.role);
        self.conns.borrow_mut().insert(id, entry);
    }

    /// Forgets a connection; returns its entry.
    pub fn remove_conn(&self, id: ConnId) -> Option<ConnEntry> {
        let entry = self.conns.borrow_mut().remove(&id);
        if let Some(e) = &entry {
            self.metrics.closed(e.role);
            if e.role == ConnRole::Device {
                self.cert_conns.borrow_mut().remove(&id);
            }
        }
        entry
    }

    /// The outbox of a live connection.
    pub fn outbox(&self, id: ConnId) -> Option<OutboxRef> {
        self.conns.borrow().get(&id).map(|e| e.outbox.clone())
    }

    /// Queues a data message on `outbox`, in the relay since `since` (`None`: now; see
    /// [`crate::io::outbox::Outbox::push_message`]).
    pub fn push_message(
        outbox: &OutboxRef,
        message: &Message,
        since: Option<Instant>,
    ) -> Result<(), ()> {
        outbox
            .borrow_mut()
            .push_message(message, since)
            .map_err(|_| ())
    }

    /// Queues a text message (control-channel JSON) on a connection, if it is still open.
    pub fn send_text(&self, conn: ConnId, json: Vec<u8>) {
        if let Some(ob) = self.outbox(conn) {
            let message = Message {
                kind: crate::proto::MessageKind::Text,
                payload: Payload::Single(Bytes::from(json)),
            };
            let _ = Self::push_message(&ob, &message, None);
        }
    }

    /// Asks a connection to close with `code`.
    pub fn close_conn(&self, conn: ConnId, code: u16, reason: &'static str) {
        if let Some(ob) = self.outbox(conn) {
            ob.borrow_mut().request_close(code, reason);
        }
    }

    /// Carries out everything the coordinator asks for, until it has nothing left.
    pub fn drive(self: &Rc<Self>) {
        let now = Instant::now();
        loop {
            let output = self.coord.borrow_mut().poll_output(now);
            let Some(output) = output else { break };
            self.carry(output);
        }
        let undelivered = self.coord.borrow_mut().take_undelivered_frames();
        if undelivered > 0 {
            ShardMetrics::add(&self.metrics.undelivered_frames, undelivered);
        }
        super::reliable_session::check_claims(self);
    }

    fn carry(self: &Rc<Self>, output: Output<Message>) {
        match output {
            Output::Transmit { to, msg } => self.mesh.send_coord(to, msg),
            Output::SendToConn { conn, message } => {
                let len = message.payload.len();
                match self.outbox(conn) {
                    Some(ob) if Self::push_message(&ob, &message, None).is_ok() => {
                        self.count_delivery(conn, len);
                    }
                    _ => tracing::debug!(
                        conn = conn.0,
                        "queued message for a connection that is gone"
                    ),
                }
            }
            Output::SendEvent { conn, event } => self.send_text(conn, event.to_json()),
            Output::ClaimAnswered {
                requester,
                serial,
                op,
                outcome,
            } => self.answer_claim(requester, &serial, op, outcome),
            Output::Answered { ticket, answer } => self.answers.deliver(ticket, answer),
            Output::CloseConn { conn, code, reason } => {
                // §12: a local session whose device moved goes on with its new node.
                let moved = code == close::SERVICE_RESTART
                    && reason == close::MOVED_REASON
                    && super::forward::session_moved(self, conn);
                if !moved {
                    self.close_conn(conn, code, reason)
                }
            }
            Output::CloseUndelivered { conn, count } => {
                if let Some(ob) = self.outbox(conn) {
                    let reason =
                        format!("undelivered frames={} bytes={}", count.frames, count.bytes);
                    ob.borrow_mut()
                        .request_close_with(close::UNDELIVERED, reason.into());
                }
            }
            Output::CloseClass { class } => self.close_class(class),
            Output::ToOtherNodes { client, event } => {
                if let Some(node) = self.shared.cluster.as_ref() {
                    node.publish_event(&client, &event);
                }
            }
            Output::PresenceToOtherNodes { client, online } => {
                if let Some(node) = self.shared.cluster.as_ref() {
                    node.publish_presence(self.index, &client, online);
                }
            }
            Output::ClaimChanged { device, holder } => {
                if let Some(node) = self.shared.cluster.as_ref() {
                    node.record_claim(&device, holder.as_ref());
                }
            }
        }
    }

    fn count_delivery(&self, conn: ConnId, len: usize) {
        let role = self.conns.borrow().get(&conn).map(|e| e.role);
        match role {
            Some(ConnRole::Device) => {
                ShardMetrics::add(&self.metrics.frames_to_device, 1);
                ShardMetrics::add(&self.metrics.bytes_to_device, len as u64);
            }
            Some(ConnRole::PosSession) => {
                ShardMetrics::add(&self.metrics.frames_to_pos, 1);
                ShardMetrics::add(&self.metrics.bytes_to_pos, len as u64);
            }
            _ => {}
        }
    }

    /// Writes the answer to a claim or release on the control channel that asked.
    fn answer_claim(
        &self,
        requester: Requester,
        serial: &crate::ids::Serial,
        op: ClaimOp,
        outcome: ClaimOutcome,
    ) {
        if super::remote_claims::answer(self, &requester, &outcome) {
            return;
        }
        let rid = requester.request_id.as_ref();
        let json = match outcome {
            ClaimOutcome::Claimed(granted) => {
                let base = self.url_base_of(requester.conn);
                let url = event::session_url(&base, &granted.session_id);
                event::claimed(
                    rid,
                    serial,
                    &granted.session_id,
                    &url,
                    granted.online,
                    granted.pending_frames,
                )
            }
            ClaimOutcome::Released => event::released(rid, serial),
            ClaimOutcome::Refused(err) => event::error(rid, err.code(), err.message(op)),
        };
        self.send_text(requester.conn, json);
    }

    /// §12: once per fencing loss of the lease (or as soon as the data path finds it
    /// lapsed while NATS was reachable), this shard ends what it had of its devices: 1012
    /// on their connections and sessions. Once per offline lapse that ended, it checks
    /// each device's ownership again.
    pub fn check_lease(self: &Rc<Self>, now: Instant) {
        let Some(node) = self.shared.cluster.as_ref() else {
            return;
        };
        let revalidations = node.revalidations();
        if revalidations != self.revalidations_seen.get() {
            self.revalidations_seen.set(revalidations);
            glommio::spawn_local(revalidate(self.clone())).detach();
        }
        if self.fencing.get() {
            return;
        }
        let fences = node.fences();
        let new_fence = fences != self.fences_seen.get();
        let lapsed = !node.may_forward(now) && self.coord.borrow().devices().has_sessions();
        if !new_fence && !lapsed {
            return;
        }
        self.fences_seen.set(fences);
        // Nothing is forwarded on this shard until every device it held is closed.
        self.fencing.set(true);
        glommio::spawn_local(fence(self.clone())).detach();
    }

    /// The URL base a connection here was given (for the URLs its answers carry).
    pub fn url_base_of(&self, conn: ConnId) -> String {
        self.conns
            .borrow()
            .get(&conn)
            .and_then(|e| e.url_base.clone())
            .unwrap_or_default()
    }

    /// §6 drain: asks every connection of `class` to close with 1001.
    pub fn close_class(&self, class: ConnClass) {
        let conns: Vec<_> = self
            .conns
            .borrow()
            .iter()
            .filter(|(_, e)| in_class(e.role, class))
            .map(|(id, _)| *id)
            .collect();
        for conn in conns {
            self.close_conn(conn, close::GOING_AWAY, "relay shutting down: reconnect");
        }
    }

    /// Whether a connection of `class` is still open here.
    pub fn has_class(&self, class: ConnClass) -> bool {
        self.conns
            .borrow()
            .values()
            .any(|e| in_class(e.role, class))
    }

    /// Asks the coordination question `ask` puts, and waits for its answer.
    pub async fn ask(
        self: &Rc<Self>,
        ask: impl FnOnce(&mut Coordinator<Message>, Instant) -> Ticket,
    ) -> Answer {
        let ticket = ask(&mut self.coord.borrow_mut(), Instant::now());
        self.drive();
        self.answers.wait(ticket).await
    }

    /// §2: a device arrived here (registered, or connected): makes sure its session exists
    /// on its owner before the device is answered (a claim right after `registered` must
    /// not see `offline`). §12, on a cluster node: first this node takes the tsn over, and
    /// the claim the tsn brought from its previous node holds here ("claims stay").
    pub async fn arrive(self: &Rc<Self>, device: DeviceKey) -> Result<(), ArrivalError> {
        let mut claim = None;
        if let Some(node) = self.shared.cluster.as_ref() {
            match node.take_over(&device).await {
                Ok(brought) => {
                    claim = brought.claim;
                    if let Some(snapshot) = brought.reliable {
                        self.restore_reliable(snapshot);
                    }
                }
                Err(e) => {
                    tracing::warn!(tsn = %device.serial, error = %e, "cannot take the device over in the cluster");
                    return Err(ArrivalError::Cluster);
                }
            }
        }
        let answer = self
            .ask(|coord, now| coord.handle_register_claimed(device, claim, now))
            .await;
        if answer == Answer::Registered {
            Ok(())
        } else {
            Err(ArrivalError::Shard)
        }
    }

    /// §11/§12: a device arrived with the reliable claim its previous node left in the
    /// log: restored on the shard that owns the device, before its registration gets
    /// there (the same ordered channel).
    fn restore_reliable(self: &Rc<Self>, snapshot: crate::reliable::ClaimSnapshot) {
        let owner = crate::relay::owner_shard(&snapshot.record.session_id, self.shards).0;
        if owner == self.index {
            super::reliable_session::restore(self, vec![snapshot]);
        } else {
            self.mesh.send_reliable(owner, snapshot);
        }
    }

    /// §4 `devices`, §9 list: every device's presence, asked of its owner.
    pub async fn presence_of(self: &Rc<Self>, devices: Vec<DeviceKey>) -> Answer {
        self.ask(|coord, now| coord.handle_presence_query(devices, now))
            .await
    }

    /// A control channel here claims or releases a device; the answer is written on it.
    pub fn claim(
        self: &Rc<Self>,
        op: ClaimOp,
        client: ClientKey,
        device: DeviceKey,
        requester: Requester,
    ) {
        self.coord
            .borrow_mut()
            .handle_claim(op, client, device, requester, Instant::now());
        self.drive();
    }

    /// Reports POS messages that were queued on a device connection but never written.
    pub fn report_unsent_to_device(
        self: &Rc<Self>,
        device: &DeviceKey,
        count: crate::relay::Count,
    ) {
        self.coord
            .borrow_mut()
            .handle_unsent_to_device(device, count, Instant::now());
        self.drive();
    }

    /// Handles one message from another shard.
    fn handle_msg(self: &Rc<Self>, from: usize, msg: ShardMsg) {
        match msg {
            ShardMsg::Handover(h) => {
                ShardMetrics::add(&self.metrics.handovers_in, 1);
                super::accept::serve_handover(self.clone(), *h);
            }
            ShardMsg::Coord(msg) => {
                self.coord
                    .borrow_mut()
                    .handle_msg(Participant(from), msg, Instant::now());
                self.drive();
            }
            ShardMsg::CertsUnpinned(certs) => self.close_unpinned(&certs),
            ShardMsg::ReliableArrived(snapshot) => {
                super::reliable_session::restore(self, vec![*snapshot]);
            }
        }
    }

    /// §2a: closes (1008) the device connections made here with these client certificates.
    pub fn close_unpinned(&self, certs: &[crate::tenancy::CertFingerprint]) {
        let conns: Vec<ConnId> = self
            .cert_conns
            .borrow()
            .iter()
            .filter(|(_, cert)| certs.contains(cert))
            .map(|(id, _)| *id)
            .collect();
        for conn in conns {
            self.close_conn(conn, close::POLICY, "client certificate unpinned");
        }
    }

    /// The periodic work: coordination timers, pings, idle and token-expiry closes.
    fn tick(self: &Rc<Self>) {
        let now = Instant::now();
        {
            let mut coord = self.coord.borrow_mut();
            if coord.poll_timeout().is_some_and(|t| t <= now) {
                coord.handle_timeout(now);
            }
        }
        self.drive();
        super::reliable_session::tick(self);
        if let Some(node) = self.shared.cluster.as_ref() {
            if self.index == 0 {
                node.handle_tick(now);
            }
            self.check_lease(now);
            // §4 claim grace across nodes: this shard's clients, listed to the others now
            // and then; what the others said, forgotten once they went quiet.
            if self.presence_listed.get().is_none_or(|at| {
                now.saturating_duration_since(at) >= crate::coord::PRESENCE_REFRESH
            }) {
                self.presence_listed.set(Some(now));
                let clients = self.coord.borrow().home_clients_present();
                node.publish_presence_full(self.index, &clients);
            }
            self.coord.borrow_mut().expire_remote_presence(now);
            self.drive();
        }
        let cfg = &self.shared.config;
        let unix = super::unix_now();
        for entry in self.conns.borrow().values() {
            let mut ob = entry.outbox.borrow_mut();
            let idle = if ob.reading_paused {
                // Paused by backpressure: the relay is not reading, the peer is not idle.
                Duration::ZERO
            } else {
                now.saturating_duration_since(ob.last_rx)
            };
            if idle >= cfg.idle_timeout {
                ob.request_close(close::GOING_AWAY, "idle timeout: nothing received");
            } else if idle >= cfg.ping_interval
                && now.saturating_duration_since(entry.last_ping.get()) >= cfg.ping_interval
            {
                entry.last_ping.set(now);
                ob.request_ping();
            }
            if let Some(exp) = entry.token_expires_at.filter(|exp| unix >= *exp) {
                // §5: "POS connections close with 4401 when their access token expires".
                let expired = AuthError::Expired { exp, now: unix };
                ob.request_close(expired.close_code(), "access token expired");
            }
        }
    }
}

/// §12, after a lease that lapsed while NATS was gone: each device this shard serves is
/// taken again under the new lease, unless it connected to another node meanwhile (then
/// its connection here closes with 4000, as for a move notice).
async fn revalidate(ctx: Rc<ShardCtx>) {
    let Some(node) = ctx.shared.cluster.as_ref() else {
        return;
    };
    let devices = ctx.coord.borrow().devices().devices();
    let (mut kept, mut moved) = (0usize, 0usize);
    for device in devices {
        match node.still_mine(&device).await {
            Ok(true) => kept += 1,
            Ok(false) => {
                moved += 1;
                ctx.coord
                    .borrow_mut()
                    .handle_device_moved(device, Instant::now());
                ctx.drive();
            }
            Err(e) => {
                tracing::warn!(tsn = %device.serial, error = %e, "cannot check the device's ownership after NATS came back: keeping it");
            }
        }
    }
    tracing::info!(
        shard = ctx.index,
        kept,
        moved,
        "devices checked after the cluster came back"
    );
}

/// How long a fence may spend asking the cluster where its devices are before it closes
/// the rest with 1012.
const FENCE_LOOKUPS: Duration = Duration::from_secs(2);

/// §12 fence: every device this shard held is closed, "4000 where the device is connected
/// elsewhere by then, 1012 otherwise" (its ownership record says which; a device whose
/// record cannot be read in time gets 1012). Nothing is forwarded on this shard until it
/// is done ([`ShardCtx::fencing`]).
async fn fence(ctx: Rc<ShardCtx>) {
    let Some(node) = ctx.shared.cluster.as_ref() else {
        ctx.fencing.set(false);
        return;
    };
    let devices = ctx.coord.borrow().devices().devices();
    tracing::warn!(shard = ctx.index, devices = devices.len(), "cluster lease lost: closing this shard's device connections (4000 for devices now on another node, else 1012)");
    let deadline = Instant::now() + FENCE_LOOKUPS;
    let (mut moved, mut closed) = (0usize, 0usize);
    for device in devices {
        let left = deadline.saturating_duration_since(Instant::now());
        // Asked again while the node's NATS client reconnects (a paused process's often
        // does on waking), until the deadline.
        let lookup = async {
            loop {
                match node.other_owner(&device).await {
                    Ok(owner) => return owner.is_some(),
                    Err(_) => {
                        glommio::timer::Timer::new(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        let elsewhere = futures_lite::future::or(lookup, async {
            glommio::timer::Timer::new(left).await;
            false
        })
        .await;
        let now = Instant::now();
        // Its reliable claim stays in the log for the device's next node (§11).
        super::reliable_session::let_go(&ctx, &device);
        if elsewhere {
            moved += 1;
            ctx.coord.borrow_mut().handle_device_moved(device, now);
        } else {
            closed += 1;
            ctx.coord.borrow_mut().handle_lease_lost(&device, now);
        }
        ctx.drive();
    }
    ctx.fencing.set(false);
    tracing::info!(shard = ctx.index, moved, closed, "fence done");
}

/// A registration in progress (see [`ShardCtx::registering`]).
pub(crate) struct Registering(Rc<ShardCtx>);

impl Drop for Registering {
    fn drop(&mut self) {
        let n = &self.0.registering;
        n.set(n.get().saturating_sub(1));
    }
}

/// Which roles a drain class covers.
fn in_class(role: ConnRole, class: ConnClass) -> bool {
    match class {
        ConnClass::PosSessions => role == ConnRole::PosSession,
        ConnClass::Devices => role == ConnRole::Device,
        ConnClass::Everything => true,
    }
}

/// Runs one shard: joins the mesh, binds the listeners, serves until drained.
pub(crate) async fn run_shard(
    shared: Arc<Shared>,
    mesh: MeshBuilder<ShardMsg, Full>,
    relay_addr: SocketAddr,
    admin_addr: SocketAddr,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) -> std::io::Result<()> {
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|_| std::io::Error::other("cannot join the shard mesh"))?;
    let (mesh, spill_rx) = Mesh::new(senders);
    let mesh = Rc::new(mesh);
    let index = mesh.index();
    let shards = mesh.shards();
    let cfg = &shared.config;
    let keyring = SessionKeyring::new(shared.keyring_key);
    let coord = Coordinator::new(
        Participant(index),
        Placement::new(keyring.clone(), shards),
        DeviceShard::new(keyring, cfg.relay_limits),
        CoordConfig {
            nodes: if shared.cluster.is_some() {
                Nodes::Cluster
            } else {
                Nodes::Alone
            },
            ..CoordConfig::default()
        },
    );
    let ctx = Rc::new(ShardCtx {
        index,
        shards,
        metrics: shared.shard_metrics[index].clone(),
        coord: RefCell::new(coord),
        conns: RefCell::new(HashMap::new()),
        cert_conns: RefCell::new(HashMap::new()),
        next_conn: Cell::new(0),
        mesh: mesh.clone(),
        answers: Answers::default(),
        draining: Cell::new(false),
        drain_waiters: RefCell::new(Vec::new()),
        registering: Cell::new(0),
        reliable: RefCell::new(super::reliable_session::ReliableClaims::new(
            shared.reliable_log.clone(),
            crate::reliable::ReliableLimits::new(&cfg.relay_limits, cfg.reliable_window),
        )),
        remote_claims: RefCell::new(HashMap::new()),
        forward_ends: RefCell::new(Default::default()),
        session_index: RefCell::new(Default::default()),
        movable: RefCell::new(HashMap::new()),
        presence_listed: Cell::new(None),
        fences_seen: Cell::new(0),
        fencing: Cell::new(false),
        revalidations_seen: Cell::new(0),
        shared: shared.clone(),
    });
    let restored = shared.take_reliable_claims(|sid| owner_shard(sid, shards).0 == index);
    super::reliable_session::restore(&ctx, restored);
    super::mesh::spawn_receivers(&mut receivers, {
        let ctx = ctx.clone();
        move |from, msg| ctx.handle_msg(from, msg)
    });
    for (shard, rx) in spill_rx.into_iter().enumerate() {
        if shard != index {
            glommio::spawn_local(mesh.clone().run_spill(shard, rx)).detach();
        }
    }
    let relay_listener = match glommio::net::TcpListener::bind(relay_addr) {
        Ok(l) => l,
        Err(e) => {
            let err = std::io::Error::other(format!("cannot listen on {relay_addr}: {e}"));
            let _ = ready.send(Err(std::io::Error::other(err.to_string())));
            return Err(err);
        }
    };
    // §2a: the device mTLS listener, on every shard like the relay listener.
    let mtls_listener = match shared.mtls.as_ref().map(|m| m.addr) {
        Some(addr) => match glommio::net::TcpListener::bind(addr) {
            Ok(l) => Some(l),
            Err(e) => {
                let err = std::io::Error::other(format!(
                    "cannot listen on --device-mtls-listen {addr}: {e}"
                ));
                let _ = ready.send(Err(std::io::Error::other(err.to_string())));
                return Err(err);
            }
        },
        None => None,
    };
    // The admin listener lives on shard 0 only: provisioning is not load.
    let admin_listener = if index == 0 {
        match glommio::net::TcpListener::bind(admin_addr) {
            Ok(l) => Some(l),
            Err(e) => {
                let err = std::io::Error::other(format!("cannot listen on {admin_addr}: {e}"));
                let _ = ready.send(Err(std::io::Error::other(err.to_string())));
                return Err(err);
            }
        }
    } else {
        None
    };
    // Logins verify secrets on this shard's blocking thread, in argon2 working memory
    // that thread keeps (auth/secrets.rs): take it before saying ready, so that resident
    // memory does not jump at the first login.
    let hasher = ctx.shared.hasher.clone();
    let _ = glommio::executor()
        .spawn_blocking(move || hasher.reserve_thread_memory())
        .await;
    let _ = ready.send(Ok(()));
    // Let go of the sender: run_server learns that a shard that never reports failed.
    drop(ready);
    let relay_task = glommio::spawn_local(super::accept::accept_loop(
        ctx.clone(),
        relay_listener,
        false,
    ));
    let admin_task = admin_listener
        .map(|l| glommio::spawn_local(super::accept::accept_loop(ctx.clone(), l, true)));
    if let Some(l) = mtls_listener {
        glommio::spawn_local(super::device_mtls::accept_loop(ctx.clone(), l)).detach();
    }
    if index == 0 && shared.cluster.is_some() {
        // §12: what other nodes put to this one (claims of tsns it owns, moves).
        glommio::spawn_local(super::remote_claims::serve_inbox(ctx.clone())).detach();
    }
    if shared.cluster.is_some() {
        // §12: forwarded sessions' stand-ins and frames for this shard.
        glommio::spawn_local(super::forward::serve_inbox(ctx.clone())).detach();
    }
    // The tick: timers of the relay state, pings, idle timeouts, token expiry, drain.
    let tick = Duration::from_millis(250);
    // One timer, reset each round: the tick allocates nothing once running.
    let mut timer = glommio::timer::Timer::new(tick);
    loop {
        (&mut timer).await;
        timer.reset(tick);
        ctx.tick();
        if index == 0 {
            shared.maybe_reload_tls();
        }
        if shared.stop.is_stopping() {
            break;
        }
    }
    super::drain::drain(&ctx, relay_task, admin_task).await;
    Ok(())
}
