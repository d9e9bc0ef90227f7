//! One shard: its share of the relay state (the devices it owns, the clients it is home
//! to), its connections' outboxes, the messages it exchanges with the other shards, and
//! the tick that drives timers (offline grace, claim grace, pings, idle and token expiry).

use super::conn::ConnEntry;
use super::handover::Handover;
use super::metrics::{ConnRole, ShardMetrics};
use super::Shared;
use crate::control::{event, RequestId};
use crate::ids::{ClientKey, DeviceKey, Serial};
use crate::io::outbox::OutboxRef;
use crate::proto::{Message, Payload};
use crate::relay::{
    client_shard, owner_shard, Action, ClaimError, ClaimGranted, ClientEventKind, ClientHub,
    ConnId, Count, DeviceShard, HubAction, SessionKeyring,
};
use bytes::Bytes;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::{GlommioError, ResourceType};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

/// What one shard tells another (the only things that cross cores).
pub(crate) enum ShardMsg {
    /// A connection whose upgrade request named a session or client this shard owns.
    Handover(Box<Handover>),
    /// A device registered (§2): make sure its session exists on its owner, then
    /// acknowledge, so that a claim right after the `registered` reply finds it.
    Registered {
        device: DeviceKey,
        query: u64,
        origin: usize,
    },
    /// The acknowledgement of a [`ShardMsg::Registered`].
    Ack { query: u64 },
    /// A control channel's claim or release, sent to the device's owner.
    ClaimRequest {
        /// Claim (true) or release (false).
        claim: bool,
        client: ClientKey,
        device: DeviceKey,
        reply: ReplyTo,
    },
    /// The owner's answer, sent back to the control channel's shard.
    ClaimAnswer {
        claim: bool,
        serial: Serial,
        result: Result<Option<ClaimGranted>, ClaimError>,
        reply: ReplyTo,
    },
    /// Which of these devices (owned by the receiver) are online, and who claims them.
    PresenceQuery {
        query: u64,
        origin: usize,
        devices: Vec<DeviceKey>,
    },
    /// The answer to a [`ShardMsg::PresenceQuery`].
    PresenceAnswer {
        query: u64,
        presence: Vec<(DeviceKey, bool, Option<ClientKey>)>,
    },
    /// An event for a client, to its home shard.
    ClientEvent {
        client: ClientKey,
        event: ClientEventKind,
    },
    /// A client's control-channel count went 0 ↔ >0.
    ClientPresence { client: ClientKey, online: bool },
    /// The operator disabled a device (admin API).
    DeviceDisabled(DeviceKey),
    /// The operator deleted a client (admin API).
    ClientDeleted(ClientKey),
    /// Drain: the sender has closed its POS sessions and devices; every report it made
    /// was sent before this (messages between two shards keep their order).
    DataClosed,
}

/// Where a control-channel answer goes back to.
#[derive(Debug, Clone)]
pub(crate) struct ReplyTo {
    pub shard: usize,
    pub conn: ConnId,
    pub request_id: Option<RequestId>,
}

/// A presence query waiting for its answers.
struct PendingQuery {
    remaining: usize,
    presence: Vec<(DeviceKey, bool, Option<ClientKey>)>,
    waker: Option<Waker>,
}

/// Messages to one shard that waited for room in its channel, in order.
struct Spill {
    tx: glommio::channels::local_channel::LocalSender<ShardMsg>,
    pending: Cell<usize>,
}

/// One shard's state. `!Send`: it never leaves its executor.
pub(crate) struct ShardCtx {
    pub index: usize,
    pub shards: usize,
    pub shared: Arc<Shared>,
    pub metrics: Arc<ShardMetrics>,
    pub devices: RefCell<DeviceShard<Message>>,
    pub hub: RefCell<ClientHub>,
    pub conns: RefCell<HashMap<ConnId, ConnEntry>>,
    next_conn: Cell<u64>,
    senders: Senders<ShardMsg>,
    spill: Vec<Spill>,
    queries: RefCell<HashMap<u64, PendingQuery>>,
    next_query: Cell<u64>,
    pub draining: Cell<bool>,
    /// Drain: how many other shards have closed their POS sessions and devices.
    pub data_closed: Cell<usize>,
}

impl ShardCtx {
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

    /// Carries out everything the relay state and the client hub asked for, until
    /// neither has anything left (one can produce work for the other).
    pub fn process_actions(self: &Rc<Self>) {
        loop {
            let mut progressed = false;
            loop {
                let action = self.devices.borrow_mut().poll_action();
                let Some(action) = action else { break };
                progressed = true;
                self.carry_device_action(action);
            }
            loop {
                let action = self.hub.borrow_mut().poll_action();
                let Some(action) = action else { break };
                progressed = true;
                self.carry_hub_action(action);
            }
            if !progressed {
                break;
            }
        }
    }

    fn carry_device_action(self: &Rc<Self>, action: Action<Message>) {
        match action {
            Action::SendToConn { conn, message } => {
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
            Action::CloseConn { conn, code, reason } => self.close_conn(conn, code, reason),
            Action::ClientEvent { client, event } => {
                if let ClientEventKind::Undelivered { frames, .. } = &event {
                    ShardMetrics::add(&self.metrics.undelivered_frames, *frames);
                }
                self.route_client_event(client, event)
            }
        }
    }

    fn carry_hub_action(self: &Rc<Self>, action: HubAction) {
        match action {
            HubAction::Presence { client, online } => {
                for shard in 0..self.shards {
                    if shard == self.index {
                        self.devices.borrow_mut().handle_client_presence(
                            &client,
                            online,
                            Instant::now(),
                        );
                    } else {
                        let client = client.clone();
                        self.send(shard, ShardMsg::ClientPresence { client, online });
                    }
                }
            }
            HubAction::SendEvent { conn, event } => self.send_text(conn, event.to_json()),
            HubAction::CloseConn { conn, code, reason } => self.close_conn(conn, code, reason),
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

    /// Sends an event to the client's home shard (here, or by message).
    pub fn route_client_event(self: &Rc<Self>, client: ClientKey, event: ClientEventKind) {
        let home = client_shard(&client, self.shards).0;
        if home == self.index {
            self.hub
                .borrow_mut()
                .handle_client_event(&client, event, Instant::now());
        } else {
            self.send(home, ShardMsg::ClientEvent { client, event });
        }
    }

    /// Sends a message to another shard without waiting. Messages to one shard keep
    /// their order: when the channel is full, this and every later message wait in a
    /// local spill queue that one task drains in order.
    pub fn send(self: &Rc<Self>, shard: usize, msg: ShardMsg) {
        debug_assert_ne!(shard, self.index);
        let spill = &self.spill[shard];
        let msg = if spill.pending.get() == 0 {
            match self.senders.try_send_to(shard, msg) {
                Ok(()) => return,
                Err(GlommioError::WouldBlock(ResourceType::Channel(m))) => m,
                Err(_) => {
                    tracing::warn!(shard, "shard channel closed: message not delivered");
                    return;
                }
            }
        } else {
            msg
        };
        spill.pending.set(spill.pending.get() + 1);
        if spill.tx.try_send(msg).is_err() {
            tracing::error!(shard, "spill queue refused a message");
        }
    }

    /// Sends a handover (awaited: it carries a socket and must not be lost).
    pub async fn send_handover(self: &Rc<Self>, shard: usize, handover: Handover) {
        if self
            .senders
            .send_to(shard, ShardMsg::Handover(Box::new(handover)))
            .await
            .is_err()
        {
            tracing::warn!(shard, "handover failed: the target shard is gone");
        }
    }

    /// The owning shard of a device.
    pub fn owner_of(&self, device: &DeviceKey) -> usize {
        owner_shard(&self.devices.borrow().session_id(device), self.shards).0
    }

    /// Asks every owner about `devices` and waits for the answers.
    pub async fn presence_of(
        self: &Rc<Self>,
        devices: Vec<DeviceKey>,
    ) -> Vec<(DeviceKey, bool, Option<ClientKey>)> {
        let mut by_owner: HashMap<usize, Vec<DeviceKey>> = HashMap::new();
        for d in devices {
            by_owner.entry(self.owner_of(&d)).or_default().push(d);
        }
        let mut presence = Vec::new();
        let mut remote = Vec::new();
        for (owner, devices) in by_owner {
            if owner == self.index {
                presence.extend(self.local_presence(&devices));
            } else {
                remote.push((owner, devices));
            }
        }
        if remote.is_empty() {
            return presence;
        }
        let query = self.open_query(remote.len(), presence);
        for (owner, devices) in remote {
            self.send(
                owner,
                ShardMsg::PresenceQuery {
                    query,
                    origin: self.index,
                    devices,
                },
            );
        }
        self.wait_query(query).await
    }

    /// Records one answer to a pending query; wakes its waiter on the last one.
    fn answer_query(&self, query: u64, presence: Vec<(DeviceKey, bool, Option<ClientKey>)>) {
        let mut queries = self.queries.borrow_mut();
        if let Some(q) = queries.get_mut(&query) {
            q.presence.extend(presence);
            q.remaining = q.remaining.saturating_sub(1);
            if q.remaining == 0 {
                if let Some(w) = q.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// A new query id, registered as waiting for `remaining` answers.
    fn open_query(
        &self,
        remaining: usize,
        presence: Vec<(DeviceKey, bool, Option<ClientKey>)>,
    ) -> u64 {
        let query = self.next_query.get() + 1;
        self.next_query.set(query);
        self.queries.borrow_mut().insert(
            query,
            PendingQuery {
                remaining,
                presence,
                waker: None,
            },
        );
        query
    }

    /// Waits until every answer to `query` has arrived; returns what they carried.
    async fn wait_query(&self, query: u64) -> Vec<(DeviceKey, bool, Option<ClientKey>)> {
        std::future::poll_fn(|cx| {
            let mut queries = self.queries.borrow_mut();
            let done = queries
                .get(&query)
                .map(|q| q.remaining == 0)
                .unwrap_or(true);
            if done {
                let q = queries.remove(&query);
                std::task::Poll::Ready(q.map(|q| q.presence).unwrap_or_default())
            } else {
                if let Some(q) = queries.get_mut(&query) {
                    q.waker = Some(cx.waker().clone());
                }
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Makes sure a registered device's session exists on its owner before answering it.
    pub async fn register_device(self: &Rc<Self>, device: DeviceKey) {
        let owner = self.owner_of(&device);
        if owner == self.index {
            self.devices
                .borrow_mut()
                .handle_register(device, Instant::now());
            return;
        }
        let query = self.open_query(1, Vec::new());
        self.send(
            owner,
            ShardMsg::Registered {
                device,
                query,
                origin: self.index,
            },
        );
        self.wait_query(query).await;
    }

    fn local_presence(&self, devices: &[DeviceKey]) -> Vec<(DeviceKey, bool, Option<ClientKey>)> {
        let state = self.devices.borrow();
        devices
            .iter()
            .map(|d| {
                (
                    d.clone(),
                    state.device_online(d),
                    state.claimed_by(d).cloned(),
                )
            })
            .collect()
    }

    /// Handles a claim or release for a device this shard owns; answers `reply`.
    pub fn handle_claim_request(
        self: &Rc<Self>,
        claim: bool,
        client: ClientKey,
        device: DeviceKey,
        reply: ReplyTo,
    ) {
        let now = Instant::now();
        let result = if claim {
            self.devices
                .borrow_mut()
                .handle_claim(&client, &device, now)
                .map(Some)
        } else {
            self.devices
                .borrow_mut()
                .handle_release(&client, &device, now)
                .map(|()| None)
        };
        self.process_actions();
        let serial = device.serial.clone();
        if reply.shard == self.index {
            self.answer_claim(claim, serial, result, reply);
        } else {
            self.send(
                reply.shard,
                ShardMsg::ClaimAnswer {
                    claim,
                    serial,
                    result,
                    reply,
                },
            );
        }
    }

    /// Writes the answer of a claim or release on the control channel that asked.
    pub fn answer_claim(
        &self,
        claim: bool,
        serial: Serial,
        result: Result<Option<ClaimGranted>, ClaimError>,
        reply: ReplyTo,
    ) {
        let rid = reply.request_id.as_ref();
        let json = match result {
            Ok(Some(granted)) => {
                let base = self
                    .conns
                    .borrow()
                    .get(&reply.conn)
                    .and_then(|e| e.url_base.clone())
                    .unwrap_or_default();
                let url = event::session_url(&base, &granted.session_id);
                event::claimed(rid, &serial, &granted.session_id, &url, granted.online)
            }
            Ok(None) => event::released(rid, &serial),
            Err(err) => {
                let message = match (&err, claim) {
                    (ClaimError::DeviceBusy { .. }, true) => "the device is claimed by another POS client: it must release it first",
                    (ClaimError::DeviceBusy { .. }, false) => "the device is claimed by another POS client: only that client can release it",
                    (ClaimError::Offline { .. }, _) => "the device has not registered since the relay started (or is disabled): retry once it is online",
                };
                event::error(rid, err.code(), message)
            }
        };
        self.send_text(reply.conn, json);
    }

    /// Handles one message from another shard.
    pub fn handle_msg(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Handover(h) => {
                ShardMetrics::add(&self.metrics.handovers_in, 1);
                super::accept::serve_handover(self.clone(), *h);
            }
            ShardMsg::Registered {
                device,
                query,
                origin,
            } => {
                self.devices
                    .borrow_mut()
                    .handle_register(device, Instant::now());
                self.send(origin, ShardMsg::Ack { query });
            }
            ShardMsg::Ack { query } => self.answer_query(query, Vec::new()),
            ShardMsg::ClaimRequest {
                claim,
                client,
                device,
                reply,
            } => self.handle_claim_request(claim, client, device, reply),
            ShardMsg::ClaimAnswer {
                claim,
                serial,
                result,
                reply,
            } => self.answer_claim(claim, serial, result, reply),
            ShardMsg::PresenceQuery {
                query,
                origin,
                devices,
            } => {
                let presence = self.local_presence(&devices);
                self.send(origin, ShardMsg::PresenceAnswer { query, presence });
            }
            ShardMsg::PresenceAnswer { query, presence } => self.answer_query(query, presence),
            ShardMsg::ClientEvent { client, event } => {
                self.hub
                    .borrow_mut()
                    .handle_client_event(&client, event, Instant::now());
                self.process_actions();
            }
            ShardMsg::ClientPresence { client, online } => {
                self.devices
                    .borrow_mut()
                    .handle_client_presence(&client, online, Instant::now());
                self.process_actions();
            }
            ShardMsg::DeviceDisabled(device) => {
                self.devices.borrow_mut().handle_device_disabled(&device);
                self.process_actions();
            }
            ShardMsg::ClientDeleted(client) => {
                self.devices.borrow_mut().handle_client_deleted(&client);
                self.hub.borrow_mut().handle_client_deleted(&client);
                self.process_actions();
            }
            ShardMsg::DataClosed => self.data_closed.set(self.data_closed.get() + 1),
        }
    }

    /// Tells every shard (this one included) about an admin change.
    pub fn broadcast_admin(self: &Rc<Self>, make: impl Fn() -> ShardMsg) {
        for shard in 0..self.shards {
            if shard == self.index {
                self.handle_msg(make());
            } else {
                self.send(shard, make());
            }
        }
    }

    /// Reports POS messages that were queued on a device connection but never written.
    pub fn report_unsent_to_device(self: &Rc<Self>, device: &DeviceKey, count: Count) {
        if count.frames == 0 {
            return;
        }
        let holder = self.devices.borrow().claimed_by(device).cloned();
        if let Some(client) = holder {
            ShardMetrics::add(&self.metrics.undelivered_frames, count.frames);
            self.route_client_event(
                client,
                ClientEventKind::Undelivered {
                    serial: device.serial.clone(),
                    frames: count.frames,
                    bytes: count.bytes,
                },
            );
        } else {
            tracing::warn!(tsn = %device.serial, frames = count.frames, "unsent messages for a device nobody claims any more");
        }
    }

    /// The periodic work: relay timers, pings, idle and token-expiry closes.
    fn tick(self: &Rc<Self>) {
        let now = Instant::now();
        {
            let mut devices = self.devices.borrow_mut();
            if devices.poll_timeout().is_some_and(|t| t <= now) {
                devices.handle_timeout(now);
            }
        }
        self.process_actions();
        let cfg = &self.shared.config;
        let unix = super::unix_now();
        for entry in self.conns.borrow().values() {
            let mut ob = entry.outbox.borrow_mut();
            let idle = now.saturating_duration_since(ob.last_rx);
            if idle >= cfg.idle_timeout {
                ob.request_close(1001, "idle timeout: nothing received");
            } else if idle >= cfg.ping_interval
                && now.saturating_duration_since(entry.last_ping.get()) >= cfg.ping_interval
            {
                entry.last_ping.set(now);
                ob.request_ping();
            }
            if entry.token_expires_at.is_some_and(|exp| unix >= exp) {
                ob.request_close(4401, "access token expired");
            }
        }
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
    let index = senders.peer_id();
    let shards = senders.nr_consumers().max(1);
    let cfg = &shared.config;
    let mut spill = Vec::with_capacity(shards);
    let mut spill_rx = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = glommio::channels::local_channel::new_unbounded();
        spill.push(Spill {
            tx,
            pending: Cell::new(0),
        });
        spill_rx.push(rx);
    }
    let ctx = Rc::new(ShardCtx {
        spill,
        index,
        shards,
        metrics: shared.shard_metrics[index].clone(),
        devices: RefCell::new(DeviceShard::new(
            SessionKeyring::new(shared.keyring_key),
            cfg.relay_limits,
        )),
        hub: RefCell::new(ClientHub::new()),
        conns: RefCell::new(HashMap::new()),
        next_conn: Cell::new(0),
        senders,
        queries: RefCell::new(HashMap::new()),
        next_query: Cell::new(0),
        draining: Cell::new(false),
        data_closed: Cell::new(0),
        shared: shared.clone(),
    });
    for (_peer, rx) in receivers.streams() {
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                ctx.handle_msg(msg);
            }
        })
        .detach();
    }
    for (shard, rx) in spill_rx.into_iter().enumerate() {
        if shard == index {
            continue;
        }
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                let _ = ctx.senders.send_to(shard, msg).await;
                let spill = &ctx.spill[shard];
                spill.pending.set(spill.pending.get().saturating_sub(1));
            }
        })
        .detach();
    }
    let relay_listener = match glommio::net::TcpListener::bind(relay_addr) {
        Ok(l) => l,
        Err(e) => {
            let err = std::io::Error::other(format!("cannot listen on {relay_addr}: {e}"));
            let _ = ready.send(Err(std::io::Error::other(err.to_string())));
            return Err(err);
        }
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
    super::accept::drain(&ctx, relay_task, admin_task).await;
    Ok(())
}
