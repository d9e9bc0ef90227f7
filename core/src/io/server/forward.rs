//! §12 forwarded sessions, the io side: "a session opened on any other node works as
//! well, its frames forwarded between nodes". The wire is in
//! [`crate::cluster::forward`].
//!
//! - The edge (this node has the POS connection, another owns the device):
//!   [`serve_edge`] finds the session's device (its id is a keyed hash of the device, so
//!   the client's domain is searched once and remembered), reads the tsn's owner, asks it
//!   for a stand-in, then answers the upgrade and relays: the POS's messages go out as
//!   numbered frames, the owner's come back into the POS's outbox.
//! - The owner: [`serve_inbox`] (one per shard) opens stand-ins ([`open_stand_in`]): a
//!   connection id with an outbox, opened as the claim holder's POS session as a local
//!   connection would be, so that the device shard's rules (one session per claim, offline
//!   queue, `undelivered`, 4000/1012 on a move or a lost lease) apply unchanged. Its
//!   outbox is drained onto NATS instead of a socket.
//!
//! Both ends keep a [`Link`]: the numbering of both directions (a gap ends the session with
//! 1012 on both sides), the credit (at most [`FORWARD_WINDOW`] unacknowledged bytes per
//! direction, acknowledged once handed on: §6 backpressure across nodes) and liveness
//! (a ping after `--ping-interval` of silence, given up after `--idle-timeout`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use super::conn::{answer_upgrade, retire, serve_ws, ConnEntry, Handler, Next};
use super::device::{carry, log_end};
use super::login::refuse;
use super::metrics::{ConnRole, ShardMetrics};
use super::reliable_session::{self, SessionMode};
use super::reply;
use super::session::refuse_session;
use super::shard::ShardCtx;
use super::upgrade::Accepted;
use crate::auth::AccessClaims;
use crate::cluster::forward::{
    data_bodies, ForwardAssembler, ForwardFrame, FrameBody, OpenRefusal, OpenReply, OpenRequest,
    Sequencer, FORWARD_WINDOW, MAX_FORWARD_CHUNK,
};
use crate::cluster::remote::{ForwardInbound, Replier};
use crate::control::LoginDenied::Offline;
use crate::ids::{ClientKey, DeviceKey, SessionId};
use crate::io::outbox::{Outbox, OutboxRef};
use crate::ownership::NodeId;
use crate::proto::message::MAX_KEPT_FRAGMENTS;
use crate::proto::{Message, MessageKind, Payload};
use crate::relay::{close, ConnId, Count, SessionError, SessionKeyring};

/// Session ids this shard has looked up, and their devices (a session id names one device
/// for as long as the cluster's session key lives: never stale).
#[derive(Default)]
pub(crate) struct SessionIndex {
    devices: HashMap<SessionId, DeviceKey>,
    /// When each domain's devices were last all indexed: a session id not found within
    /// [`REINDEX_AFTER`] of that is unknown without another search (a client sending made-up
    /// ids costs one search of its domain per period, not one per request).
    indexed: HashMap<crate::ids::DomainName, Instant>,
}

/// How long a domain's index answers "unknown" before devices provisioned since are
/// searched for.
const REINDEX_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// At most this many remembered session ids per shard; past it the index starts over.
const MAX_INDEXED: usize = 100_000;

/// The forwarded sessions' ends on this shard, by end id, and those that ended lately.
#[derive(Default)]
pub(crate) struct Ends {
    ends: HashMap<u64, LocalSender<ForwardFrame>>,
    /// Ends gone for less than [`ENDED_KEPT`]: what still arrives for them crossed their
    /// end, and is reported (§6: "a frame is either delivered or reported").
    ended: HashMap<u64, Ended>,
}

/// An end that is gone, for the frames that crossed its end.
struct Ended {
    at: Instant,
    /// The POS's messages to the device (a stand-in): reported `undelivered` to the client;
    /// `None` at an edge (the device's messages to a POS that is gone: counted dropped, as
    /// on one node).
    report_to: Option<(ClientKey, DeviceKey)>,
    /// Bytes of the message being received.
    partial: u64,
}

/// How long the frames that crossed an end's end are still recognised.
const ENDED_KEPT: std::time::Duration = std::time::Duration::from_secs(30);

impl Ends {
    fn add(&mut self, end: u64) -> LocalReceiver<ForwardFrame> {
        let (tx, rx) = local_channel::new_unbounded();
        self.ends.insert(end, tx);
        rx
    }

    fn remove(&mut self, end: u64, report_to: Option<(ClientKey, DeviceKey)>) {
        if self.ends.remove(&end).is_none() {
            return;
        }
        let now = Instant::now();
        self.ended
            .retain(|_, e| now.saturating_duration_since(e.at) < ENDED_KEPT);
        self.ended.insert(
            end,
            Ended {
                at: now,
                report_to,
                partial: 0,
            },
        );
    }

    /// A frame for `end`, which is gone: the whole message it ends, if it ends one, and
    /// whom to report it to.
    fn crossed(
        &mut self,
        end: u64,
        frame: &ForwardFrame,
    ) -> Option<(Count, Option<(ClientKey, DeviceKey)>)> {
        let ended = self.ended.get_mut(&end)?;
        let FrameBody::Data { fin, payload, .. } = &frame.body else {
            return None;
        };
        ended.partial += payload.len() as u64;
        if !fin {
            return None;
        }
        let count = Count {
            frames: 1,
            bytes: std::mem::take(&mut ended.partial),
        };
        Some((count, ended.report_to.clone()))
    }
}

/// One end's view of a forwarded session: where its frames go, their numbering, the
/// credit, and whether it has ended.
struct Link {
    /// The other end: its node, shard and end id (the edge's changes when the device
    /// moves, §12).
    peer: RefCell<NodeId>,
    peer_shard: Cell<usize>,
    peer_end: Cell<u64>,
    /// The edge is opening the session again on the device's new node: the POS's
    /// messages wait in `held` (reading from the POS waits too).
    moving: Cell<bool>,
    held: RefCell<Vec<Message>>,
    seq: RefCell<Sequencer>,
    /// Payload bytes sent, and acknowledged by the peer.
    sent: Cell<u64>,
    acked: Cell<u64>,
    /// Payload bytes received and handed on, and acknowledged to the peer.
    handed_on: Cell<u64>,
    acked_back: Cell<u64>,
    /// Who waits for credit or for the end.
    waiter: RefCell<Option<Waker>>,
    done: Cell<bool>,
}

impl Link {
    fn new(peer: NodeId, peer_shard: usize, peer_end: u64) -> Rc<Self> {
        Rc::new(Self {
            peer: RefCell::new(peer),
            peer_shard: Cell::new(peer_shard),
            peer_end: Cell::new(peer_end),
            moving: Cell::new(false),
            held: RefCell::new(Vec::new()),
            seq: RefCell::new(Sequencer::default()),
            sent: Cell::new(0),
            acked: Cell::new(0),
            handed_on: Cell::new(0),
            acked_back: Cell::new(0),
            waiter: RefCell::new(None),
            done: Cell::new(false),
        })
    }

    fn send(&self, ctx: &ShardCtx, body: FrameBody) {
        let Some(node) = ctx.shared.cluster.as_ref() else {
            return;
        };
        let frame = self.seq.borrow_mut().next(body);
        node.send_frame(
            &self.peer.borrow(),
            self.peer_shard.get(),
            self.peer_end.get(),
            &frame,
        );
    }

    /// The peer's node, for logs.
    fn peer(&self) -> NodeId {
        self.peer.borrow().clone()
    }

    /// §12: the session moves to a new peer: numbering and credit start again (before the
    /// new peer is asked, so that nothing it sends is refused).
    fn start_over(&self) {
        self.moving.set(true);
        *self.seq.borrow_mut() = Sequencer::default();
        for c in [&self.sent, &self.acked, &self.handed_on, &self.acked_back] {
            c.set(0);
        }
    }

    /// The new peer took the session: what waited goes on.
    fn rebind(&self, peer: NodeId, shard: usize, end: u64) {
        *self.peer.borrow_mut() = peer;
        self.peer_shard.set(shard);
        self.peer_end.set(end);
        self.moving.set(false);
        self.wake();
    }

    /// Sends a whole message (cut into frames as needed).
    fn send_message(&self, ctx: &ShardCtx, kind: MessageKind, parts: &[Bytes]) {
        for body in data_bodies(kind, parts) {
            if let FrameBody::Data { payload, .. } = &body {
                self.sent.set(self.sent.get() + payload.len() as u64);
            }
            self.send(ctx, body);
        }
    }

    fn in_flight(&self) -> u64 {
        self.sent.get().saturating_sub(self.acked.get())
    }

    fn has_credit(&self) -> bool {
        !self.moving.get() && self.in_flight() < FORWARD_WINDOW
    }

    fn handle_ack(&self, n: u64) {
        if n > self.acked.get() {
            self.acked.set(n.min(self.sent.get()));
            self.wake();
        }
    }

    /// Counts `n` bytes handed on, and gives the peer credit back once a quarter window
    /// has gathered (never waiting: a sender blocked at a full window always has more
    /// than a quarter of it unacknowledged here).
    fn handed_on(&self, ctx: &ShardCtx, n: u64) {
        let total = self.handed_on.get() + n;
        self.handed_on.set(total);
        if total - self.acked_back.get() >= FORWARD_WINDOW / 4 {
            self.acked_back.set(total);
            self.send(ctx, FrameBody::Ack(total));
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    /// Ends the link (once); `false` if it had ended already.
    fn end(&self) -> bool {
        if self.done.replace(true) {
            return false;
        }
        self.wake();
        true
    }

    /// Waits until the peer has acknowledged enough to send on, or the link ended.
    async fn credit(self: Rc<Self>) {
        std::future::poll_fn(|cx| {
            if self.done.get() || self.has_credit() {
                return Poll::Ready(());
            }
            *self.waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// A whole message from fragments (§5: the other side sees the same message).
fn message_of(kind: MessageKind, mut parts: Vec<Bytes>) -> Message {
    let payload = if parts.len() <= 1 {
        Payload::Single(parts.pop().unwrap_or_default())
    } else {
        parts.retain(|p| !p.is_empty());
        if parts.len() > MAX_KEPT_FRAGMENTS {
            let rest: Vec<u8> = parts
                .drain(MAX_KEPT_FRAGMENTS - 1..)
                .flat_map(|p| p.to_vec())
                .collect();
            parts.push(Bytes::from(rest));
        }
        match parts.len() {
            0 => Payload::Single(Bytes::new()),
            1 => Payload::Single(parts.pop().unwrap_or_default()),
            _ => Payload::Fragments(parts),
        }
    };
    Message { kind, payload }
}

/// What a receiving end does with one frame from its peer.
enum Received {
    /// Nothing more (an ack, a ping answered, a fragment).
    Nothing,
    /// A whole message to hand on.
    Message(Message),
    /// The peer ended the session with this code and reason.
    Closed(u16, String),
    /// The peer ended it because the device moved to another node (§12).
    Moved,
    /// The session must end: a frame was lost or made no sense.
    Broken(&'static str),
}

/// Checks `frame`'s number and handles what is the link's own business.
fn receive(
    ctx: &ShardCtx,
    link: &Link,
    assembler: &mut ForwardAssembler,
    frame: ForwardFrame,
) -> Received {
    if link.seq.borrow_mut().handle_incoming(&frame).is_err() {
        return Received::Broken(
            "forwarding between relay nodes lost a message: open the session again",
        );
    }
    match frame.body {
        FrameBody::Data {
            kind,
            first,
            fin,
            payload,
        } => match assembler.handle_data(kind, first, fin, payload) {
            Ok(Some((kind, parts))) => Received::Message(message_of(kind, parts)),
            Ok(None) => Received::Nothing,
            Err(_) => Received::Broken("forwarding between relay nodes garbled a message"),
        },
        FrameBody::Ack(n) => {
            link.handle_ack(n);
            Received::Nothing
        }
        FrameBody::Close { code, reason } => Received::Closed(code, reason),
        FrameBody::Ping => {
            link.send(ctx, FrameBody::Pong);
            Received::Nothing
        }
        FrameBody::Pong => Received::Nothing,
        FrameBody::Moved => Received::Moved,
    }
}

/// How long an edge lets its owner be silent before it checks that the owner's node
/// still runs (a node that is gone is known at once: NATS has no responder for it).
const EDGE_QUIET: std::time::Duration = std::time::Duration::from_secs(5);

/// The next frame for an end, or `None` when its peer has been silent for `quiet` (or the
/// end was removed: then `Some(None)`).
async fn next_frame(
    rx: &LocalReceiver<ForwardFrame>,
    quiet: std::time::Duration,
) -> Option<Option<ForwardFrame>> {
    futures_lite::future::or(async { Some(rx.recv().await) }, async {
        glommio::timer::Timer::new(quiet).await;
        None
    })
    .await
}

/// A close reason that fits a close frame (RFC 6455 §5.5: 123 bytes at most).
fn reason_of(reason: String) -> std::borrow::Cow<'static, str> {
    let mut reason = reason;
    if reason.len() > 120 {
        let mut cut = 120;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    std::borrow::Cow::Owned(reason)
}

// ---------------------------------------------------------------------------------------
// The edge: the POS connection is here.

/// §12: serves a §5 session whose device is owned by another node (its own session
/// lookup missed here). Answers 404 when no node has it.
pub(crate) async fn serve_edge(
    ctx: Rc<ShardCtx>,
    accepted: Box<Accepted<(SessionId, AccessClaims, SessionMode)>>,
) {
    let Accepted {
        transport,
        rbuf,
        answer,
        held,
        refusals,
        role: (sid, claims, mode),
    } = *accepted;
    let client: ClientKey = claims.client();
    let unknown = || SessionError::UnknownSession {
        session_id: sid.clone(),
    };
    let Some(node) = ctx.shared.cluster.as_ref() else {
        refuse_session(&ctx, transport, refusals, &unknown()).await;
        return;
    };
    let Some(device) = device_of(&ctx, &sid, &client) else {
        refuse_session(&ctx, transport, refusals, &unknown()).await;
        return;
    };
    let owner = match node.other_owner(&device).await {
        Ok(Some(owner)) => owner,
        Ok(None) => {
            refuse_session(&ctx, transport, refusals, &unknown()).await;
            return;
        }
        Err(e) => {
            tracing::warn!(tsn = %device.serial, error = %e, "forwarded session refused: cannot read the device's node");
            refuse_cluster_failed(transport, refusals).await;
            return;
        }
    };
    // The end exists before the owner is asked, so that nothing it sends is missed.
    let end = ctx.new_conn_id().0;
    let rx = ctx.forward_ends.borrow_mut().add(end);
    let request = open_request(ctx.index, node.node_id(), end, &sid, &client, mode);
    let reply = node.ask_open(&owner, &request).await;
    let opened = match reply {
        Ok(OpenReply {
            shard,
            end: peer_end,
            refused: None,
        }) => Ok((shard, peer_end)),
        Ok(OpenReply {
            refused: Some(why), ..
        }) => Err(Some(why)),
        Err(e) => {
            tracing::warn!(tsn = %device.serial, node = %owner, error = %e, "forwarded session refused: the device's node did not answer");
            Err(None)
        }
    };
    let (peer_shard, peer_end) = match opened {
        Ok(at) => at,
        Err(why) => {
            ctx.forward_ends.borrow_mut().remove(end, None);
            match why {
                Some(OpenRefusal::UnknownSession) => {
                    refuse_session(&ctx, transport, refusals, &unknown()).await
                }
                Some(OpenRefusal::NotClaimHolder) => {
                    let why = SessionError::NotClaimHolder {
                        session_id: sid.clone(),
                        client: client.clone(),
                    };
                    refuse_session(&ctx, transport, refusals, &why).await
                }
                Some(OpenRefusal::Unavailable) | None => {
                    refuse_cluster_failed(transport, refusals).await
                }
            }
            return;
        }
    };
    let link = Link::new(owner.clone(), peer_shard, peer_end);
    let upgraded = answer_upgrade(
        &ctx,
        transport,
        rbuf,
        &answer,
        ConnRole::PosSession,
        |entry| entry.token_expires_at = Some(claims.expires_at),
    )
    .await;
    let Some(upgraded) = upgraded else {
        link.send(&ctx, closing_frame());
        ctx.forward_ends.borrow_mut().remove(end, None);
        return;
    };
    let conn = upgraded.id;
    ShardMetrics::add(&ctx.metrics.forwarded_edge, 1);
    tracing::info!(role = "pos_session", tsn = %device.serial, domain = %device.domain, client = %client.client_id,
        node = %owner, shard = ctx.index, conn = conn.0, "connection opened (forwarded to the device's node)");
    glommio::spawn_local(edge_inbound(
        ctx.clone(),
        link.clone(),
        rx,
        upgraded.outbox.clone(),
        (device.clone(), request),
    ))
    .detach();
    let mut open = upgraded.open(EdgeHandler { link: link.clone() }, held);
    let ended = serve_ws(&ctx, &mut open.driver, &mut open.proto, &mut open.handler).await;
    if link.end() {
        link.send(&ctx, closing_frame());
    }
    ctx.forward_ends.borrow_mut().remove(end, None);
    let unsent = retire(&ctx, conn, &open.outbox);
    if unsent.frames > 0 {
        // Device messages that never reached the POS: the device cannot be told.
        ShardMetrics::add(&ctx.metrics.dropped_device_frames, unsent.frames);
    }
    open.driver.shutdown().await;
    log_end("pos_session", &device, ctx.index, conn, ended);
}

/// §12: the 503 for a session the cluster did not answer for: retry.
async fn refuse_cluster_failed(
    transport: crate::io::transport::Transport,
    refusals: super::login::Refusals,
) {
    let http = reply::cluster_call_failed();
    refuse(
        transport,
        refusals,
        &http,
        Offline,
        reply::CLUSTER_CALL_FAILED,
    )
    .await
}

/// What an edge (this node's `shard`, its `end`) asks the device's node for `client`'s
/// session `sid`.
fn open_request(
    shard: usize,
    node: &NodeId,
    end: u64,
    sid: &SessionId,
    client: &ClientKey,
    mode: SessionMode,
) -> OpenRequest {
    OpenRequest {
        session_id: sid.as_str().to_owned(),
        domain: client.domain.to_string(),
        client_id: client.client_id.to_string(),
        edge_node: node.as_str().to_owned(),
        edge_shard: shard,
        edge_end: end,
        reliable: mode == SessionMode::Reliable,
    }
}

/// The close the POS's end sends when its connection ended.
fn closing_frame() -> FrameBody {
    FrameBody::Close {
        code: close::NORMAL,
        reason: "the POS session closed".into(),
    }
}

/// The device `sid` names among `client`'s domain's devices (a keyed hash: derived for
/// each once, then remembered).
fn device_of(ctx: &ShardCtx, sid: &SessionId, client: &ClientKey) -> Option<DeviceKey> {
    {
        let index = ctx.session_index.borrow();
        if let Some(device) = index.devices.get(sid) {
            return Some(device.clone()).filter(|d| d.domain == client.domain);
        }
        let fresh = index
            .indexed
            .get(&client.domain)
            .is_some_and(|at| at.elapsed() < REINDEX_AFTER);
        if fresh {
            return None;
        }
    }
    let devices = ctx.shared.store.list_devices(&client.domain).ok()?;
    let keyring = SessionKeyring::new(ctx.shared.keyring_key);
    let mut index = ctx.session_index.borrow_mut();
    if index.devices.len() + devices.len() > MAX_INDEXED {
        index.devices.clear();
        index.indexed.clear();
    }
    index.indexed.insert(client.domain.clone(), Instant::now());
    let mut found = None;
    for record in devices {
        let device = DeviceKey {
            domain: record.domain,
            serial: record.serial,
        };
        let id = keyring.session_id(&device);
        if id == *sid {
            found = Some(device.clone());
        }
        index.devices.insert(id, device);
    }
    found
}

/// The POS's messages: sent to the owner, within the credit.
struct EdgeHandler {
    link: Rc<Link>,
}

impl Handler for EdgeHandler {
    fn on_message(&mut self, ctx: &Rc<ShardCtx>, message: Message, _received: Instant) -> Next {
        send_from_pos(ctx, &self.link, message)
    }
}

/// A POS's message at an edge: sent to the device's node within the credit.
fn send_from_pos(ctx: &Rc<ShardCtx>, link: &Rc<Link>, message: Message) -> Next {
    if link.done.get() {
        return Next::Read;
    }
    if link.moving.get() {
        // §12: the session is opening again on the device's new node: this message goes
        // there once it is open (reading waits meanwhile).
        link.held.borrow_mut().push(message);
        return Next::Until(Box::pin(link.clone().credit()));
    }
    link.send_message(ctx, message.kind, message.payload.as_slice());
    if link.has_credit() {
        Next::Read
    } else {
        Next::Until(Box::pin(link.clone().credit()))
    }
}

/// What the owner sends to the POS: messages into its outbox (acknowledged once it has
/// room), the close it ended the session with.
async fn edge_inbound(
    ctx: Rc<ShardCtx>,
    link: Rc<Link>,
    rx: LocalReceiver<ForwardFrame>,
    outbox: OutboxRef,
    again: (DeviceKey, OpenRequest),
) {
    let mut assembler = ForwardAssembler::new(ctx.shared.config.ws_limits.max_message);
    let mut heard = Instant::now();
    let silence = ctx.shared.config.idle_timeout;
    let quiet = EDGE_QUIET.min(ctx.shared.config.ping_interval);
    let gone = |outbox: &OutboxRef| {
        if link.end() {
            outbox.borrow_mut().request_close(
                close::SERVICE_RESTART,
                "the relay node that serves the device stopped answering: claim the device again",
            );
        }
    };
    loop {
        let frame = match next_frame(&rx, quiet).await {
            Some(Some(frame)) => frame,
            Some(None) => return,
            None if heard.elapsed() >= silence => return gone(&outbox),
            None => {
                // Quiet: is the owner's node still there? (Its stand-in answers the ping.)
                let alive = match ctx.shared.cluster.as_ref() {
                    Some(node) => node.node_alive(&link.peer()).await,
                    None => Ok(false),
                };
                if matches!(alive, Ok(false)) {
                    tracing::info!(node = %link.peer(), "forwarded session: the device's node is gone (no responder): closing (1012)");
                    return gone(&outbox);
                }
                link.send(&ctx, FrameBody::Ping);
                continue;
            }
        };
        heard = Instant::now();
        match receive(&ctx, &link, &mut assembler, frame) {
            Received::Nothing => {}
            Received::Message(message) => {
                let len = message.payload.len() as u64;
                if ShardCtx::push_message(&outbox, &message, None).is_err() {
                    return;
                }
                std::future::poll_fn(|cx| outbox.borrow_mut().poll_room(cx)).await;
                link.handed_on(&ctx, len);
            }
            Received::Closed(code, reason) => {
                if link.end() {
                    outbox
                        .borrow_mut()
                        .request_close_with(code, reason_of(reason));
                }
                return;
            }
            Received::Moved => {
                // §12: "A POS session stays open while its device moves between nodes".
                if !open_again(&ctx, &link, &again.0, &again.1).await {
                    return moved_nowhere(&ctx, &link, &outbox, &again);
                }
                heard = Instant::now();
            }
            Received::Broken(why) => {
                tracing::warn!(node = %link.peer(), "{why}");
                if link.end() {
                    link.send(&ctx, broken_frame(why));
                    outbox
                        .borrow_mut()
                        .request_close(close::SERVICE_RESTART, why);
                }
                return;
            }
        }
    }
}

/// §12: the session could not be opened again where its device went: what the POS sent
/// meanwhile reached no device and is reported (§6), and the POS is told with 1012.
fn moved_nowhere(
    ctx: &Rc<ShardCtx>,
    link: &Link,
    outbox: &OutboxRef,
    (device, request): &(DeviceKey, OpenRequest),
) {
    let held = std::mem::take(&mut *link.held.borrow_mut());
    if let (false, Some((_, client, _))) = (held.is_empty(), request.parts()) {
        let count = Count {
            frames: held.len() as u64,
            bytes: held.iter().map(|m| m.payload.len() as u64).sum(),
        };
        ctx.coord
            .borrow_mut()
            .handle_client_undelivered(client, device, count, Instant::now());
        ctx.drive();
    }
    if link.end() {
        outbox
            .borrow_mut()
            .request_close(close::SERVICE_RESTART, close::MOVED_REASON);
    }
}

/// §12: a plain POS session connected to this node, whose device is here: if the device
/// moves to another node, the session becomes an edge to it instead of closing
/// ("a POS session stays open while its device moves between nodes").
pub(crate) struct Movable {
    /// Once its device moved: the link to the device's node.
    link: RefCell<Option<Rc<Link>>>,
    /// The end its frames come back to, and how to open it again.
    end: u64,
    again: (DeviceKey, OpenRequest),
}

impl Movable {
    /// For the plain session `conn` of `client` on `device`'s session `sid`; registered in
    /// the shard (`ShardCtx::movable`).
    pub(crate) fn register(
        ctx: &Rc<ShardCtx>,
        conn: ConnId,
        sid: &SessionId,
        client: &ClientKey,
        device: &DeviceKey,
    ) -> Option<Rc<Self>> {
        let node = ctx.shared.cluster.as_ref()?;
        let end = ctx.new_conn_id().0;
        let request = open_request(
            ctx.index,
            node.node_id(),
            end,
            sid,
            client,
            SessionMode::Plain,
        );
        let movable = Rc::new(Self {
            link: RefCell::new(None),
            end,
            again: (device.clone(), request),
        });
        ctx.movable.borrow_mut().insert(conn, movable.clone());
        Some(movable)
    }

    /// The POS's message, if the session is an edge now (`None`: handle it here).
    pub(crate) fn on_message(&self, ctx: &Rc<ShardCtx>, message: Message) -> Result<Next, Message> {
        match self.link.borrow().as_ref() {
            Some(link) => Ok(send_from_pos(ctx, link, message)),
            None => Err(message),
        }
    }

    /// The session's connection ended: the device's node is told, if it is an edge.
    pub(crate) fn closed(&self, ctx: &Rc<ShardCtx>, conn: ConnId) {
        ctx.movable.borrow_mut().remove(&conn);
        if let Some(link) = self.link.borrow().as_ref() {
            if link.end() {
                link.send(ctx, closing_frame());
            }
            ctx.forward_ends.borrow_mut().remove(self.end, None);
        }
    }

    /// Whether the session went on to another node.
    pub(crate) fn is_edge(&self) -> bool {
        self.link.borrow().is_some()
    }
}

/// §12: the device of the local session `conn` moved (its node closed the session with
/// [`close::MOVED_REASON`]): the session becomes an edge to the device's new node. `false`
/// if `conn` is not such a session (close it as asked).
pub(crate) fn session_moved(ctx: &Rc<ShardCtx>, conn: ConnId) -> bool {
    let Some(movable) = ctx.movable.borrow().get(&conn).cloned() else {
        return false;
    };
    let Some(outbox) = ctx.outbox(conn) else {
        return false;
    };
    let Some(node) = ctx.shared.cluster.as_ref() else {
        return false;
    };
    // Held from now on: nothing the POS sends goes to the device's old session.
    let link = Link::new(node.node_id().clone(), 0, 0);
    link.start_over();
    *movable.link.borrow_mut() = Some(link.clone());
    let rx = ctx.forward_ends.borrow_mut().add(movable.end);
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let again = movable.again.clone();
        if !open_again(&ctx, &link, &again.0, &again.1).await {
            return moved_nowhere(&ctx, &link, &outbox, &again);
        }
        edge_inbound(ctx, link, rx, outbox, again).await
    })
    .detach();
    true
}

/// §12: the device of this edge's session moved: opens the session again on its new node
/// (the claim followed the device there). `false` when that failed (the POS is told
/// with 1012, and claims again).
async fn open_again(
    ctx: &Rc<ShardCtx>,
    link: &Link,
    device: &DeviceKey,
    request: &OpenRequest,
) -> bool {
    let Some(node) = ctx.shared.cluster.as_ref() else {
        return false;
    };
    link.start_over();
    let owner = match node.other_owner(device).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!(tsn = %device.serial, error = %e, "forwarded session: cannot read the device's new node");
            return false;
        }
    };
    match node.ask_open(&owner, request).await {
        Ok(OpenReply {
            shard,
            end,
            refused: None,
        }) => {
            tracing::info!(tsn = %device.serial, node = %owner, "forwarded session: the device moved, the session goes on with its new node");
            link.rebind(owner, shard, end);
            for message in std::mem::take(&mut *link.held.borrow_mut()) {
                link.send_message(ctx, message.kind, message.payload.as_slice());
            }
            true
        }
        Ok(OpenReply { refused, .. }) => {
            tracing::info!(tsn = %device.serial, node = %owner, ?refused, "forwarded session: the device's new node did not take the session");
            false
        }
        Err(e) => {
            tracing::warn!(tsn = %device.serial, node = %owner, error = %e, "forwarded session: the device's new node did not answer");
            false
        }
    }
}

fn broken_frame(why: &'static str) -> FrameBody {
    FrameBody::Close {
        code: close::SERVICE_RESTART,
        reason: why.into(),
    }
}

// ---------------------------------------------------------------------------------------
// The owner: the device is here, a stand-in takes the POS connection's place.

/// This shard's task: opens stand-ins and hands frames to the ends they are for, until
/// the bridge stops.
pub(crate) async fn serve_inbox(ctx: Rc<ShardCtx>) {
    let Some(mut inbox) = ctx
        .shared
        .cluster
        .as_ref()
        .and_then(|n| n.take_forward_inbox(ctx.index))
    else {
        return;
    };
    while let Some(inbound) = inbox.next().await {
        match inbound {
            ForwardInbound::Open(request, replier) => open_stand_in(&ctx, &request, replier),
            ForwardInbound::Frame(end, bytes) => match ForwardFrame::decode(bytes) {
                Ok(frame) => {
                    let crossed = {
                        let mut ends = ctx.forward_ends.borrow_mut();
                        match ends.ends.get(&end) {
                            Some(tx) => {
                                let _ = tx.try_send(frame);
                                None
                            }
                            None => ends.crossed(end, &frame),
                        }
                    };
                    match crossed {
                        Some((count, Some((client, device)))) => {
                            ctx.coord.borrow_mut().handle_client_undelivered(
                                client,
                                &device,
                                count,
                                Instant::now(),
                            );
                            ctx.drive();
                        }
                        Some((count, None)) => {
                            ShardMetrics::add(&ctx.metrics.dropped_device_frames, count.frames);
                        }
                        None => {}
                    }
                }
                Err(e) => tracing::warn!(error = %e, "malformed forwarded frame from another node"),
            },
            ForwardInbound::Presence(notice) => {
                let now = Instant::now();
                let source = notice.source();
                if let Some(clients) = notice.listed() {
                    ctx.coord
                        .borrow_mut()
                        .handle_remote_presence_full(&source, clients, now);
                } else if let Some((client, online)) = notice.changed() {
                    ctx.coord
                        .borrow_mut()
                        .handle_remote_presence(&source, &client, online, now);
                }
                ctx.drive();
            }
        }
    }
}

/// Opens a stand-in POS session for another node's connection, as [`super::session`]
/// opens a local one, and answers where its frames go.
fn open_stand_in(ctx: &Rc<ShardCtx>, request: &OpenRequest, replier: Replier) {
    let Some((sid, client, edge)) = request.parts() else {
        tracing::warn!("malformed forwarded session from another node: refused");
        replier.send(&OpenReply::refused(OpenRefusal::Unavailable));
        return;
    };
    if ctx.fencing.get() || ctx.draining() {
        replier.send(&OpenReply::refused(OpenRefusal::Unavailable));
        return;
    }
    let device = ctx.coord.borrow().devices().session_device(&sid).cloned();
    let check = ctx
        .coord
        .borrow()
        .devices()
        .check_pos_session(&sid, &client);
    let device = match (device, check) {
        (Some(device), Ok(())) => device,
        (None, _) | (_, Err(SessionError::UnknownSession { .. })) => {
            replier.send(&OpenReply::refused(OpenRefusal::UnknownSession));
            return;
        }
        (_, Err(SessionError::NotClaimHolder { .. })) => {
            replier.send(&OpenReply::refused(OpenRefusal::NotClaimHolder));
            return;
        }
    };
    let mode = if request.reliable {
        SessionMode::Reliable
    } else {
        SessionMode::Plain
    };
    let stand_in = ctx.new_conn_id();
    let outbox = Outbox::new(ctx.shared.config.send_queue_bytes);
    ctx.add_conn(
        stand_in,
        ConnEntry::new(outbox.clone(), ConnRole::PosSession),
    );
    if mode == SessionMode::Reliable {
        reliable_session::session_opening(ctx, &sid, &device, &client);
    }
    let opened = ctx
        .coord
        .borrow_mut()
        .devices_mut()
        .handle_pos_session_opened(&sid, &client, stand_in, Instant::now());
    if opened.is_ok() && mode == SessionMode::Reliable {
        reliable_session::session_opened(ctx, &device, stand_in);
    }
    if opened.is_err() {
        let _ = retire(ctx, stand_in, &outbox);
        replier.send(&OpenReply::refused(OpenRefusal::UnknownSession));
        ctx.drive();
        return;
    }
    let rx = ctx.forward_ends.borrow_mut().add(stand_in.0);
    let link = Link::new(edge, request.edge_shard, request.edge_end);
    replier.send(&OpenReply {
        shard: ctx.index,
        end: stand_in.0,
        refused: None,
    });
    ctx.drive();
    ShardMetrics::add(&ctx.metrics.forwarded_owner, 1);
    tracing::info!(role = "pos_session", tsn = %device.serial, domain = %device.domain, client = %client.client_id,
        node = %link.peer(), shard = ctx.index, conn = stand_in.0, "forwarded session opened for another node's connection");
    let stand = Rc::new(StandIn {
        sid,
        conn: stand_in,
        mode,
        client,
        device,
        outbox,
        link,
    });
    glommio::spawn_local(stand_in_inbound(ctx.clone(), stand.clone(), rx)).detach();
    glommio::spawn_local(stand_in_outbound(ctx.clone(), stand)).detach();
}

/// A stand-in session: the claim holder's POS session on this node, for a connection on
/// another.
struct StandIn {
    sid: SessionId,
    conn: ConnId,
    mode: SessionMode,
    client: ClientKey,
    device: DeviceKey,
    outbox: OutboxRef,
    link: Rc<Link>,
}

impl StandIn {
    /// Ends it here (once): as a local POS session's end.
    fn finish(&self, ctx: &Rc<ShardCtx>) {
        if !self.link.end() {
            return;
        }
        ctx.forward_ends.borrow_mut().remove(
            self.conn.0,
            Some((self.client.clone(), self.device.clone())),
        );
        let unsent = retire(ctx, self.conn, &self.outbox);
        if self.mode == SessionMode::Reliable {
            // Envelopes it never sent: the claim holds its device messages until acked.
            reliable_session::session_closed(ctx, &self.device, self.conn);
        } else if unsent.frames > 0 {
            ShardMetrics::add(&ctx.metrics.dropped_device_frames, unsent.frames);
        }
        ctx.coord
            .borrow_mut()
            .devices_mut()
            .handle_pos_session_closed(&self.sid, self.conn, Instant::now());
        ctx.drive();
        tracing::info!(role = "pos_session", tsn = %self.device.serial, node = %self.link.peer(), shard = ctx.index,
            conn = self.conn.0, "forwarded session closed");
    }
}

/// The POS's messages, from the edge: to the device as a local session's are.
async fn stand_in_inbound(ctx: Rc<ShardCtx>, stand: Rc<StandIn>, rx: LocalReceiver<ForwardFrame>) {
    let mut assembler = ForwardAssembler::new(ctx.shared.config.ws_limits.max_message);
    while !stand.link.done.get() {
        // Silence is the shard's business here: the stand-in's outbox is pinged and
        // closed for idleness like any connection's.
        let Some(frame) = rx.recv().await else {
            return;
        };
        let now = Instant::now();
        stand.outbox.borrow_mut().last_rx = now;
        match receive(&ctx, &stand.link, &mut assembler, frame) {
            Received::Nothing => {}
            Received::Message(message) if stand.mode == SessionMode::Reliable => {
                let len = message.payload.len() as u64;
                // §11: the envelope is the reliable claim's to handle, as on a local session.
                match reliable_session::on_pos_message(
                    &ctx,
                    &stand.device,
                    stand.conn,
                    message,
                    now,
                ) {
                    Next::Read => {}
                    Next::RoomAt(receiver) => {
                        std::future::poll_fn(|cx| receiver.borrow_mut().poll_room(cx)).await
                    }
                    Next::Finish(work) | Next::Until(work) => work.await,
                }
                stand.link.handed_on(&ctx, len);
            }
            Received::Message(message) => {
                let len = message.payload.len() as u64;
                let route = ctx
                    .coord
                    .borrow_mut()
                    .devices_mut()
                    .handle_message_from_pos(&stand.sid, stand.conn, message, now);
                if let Some(receiver) = carry(&ctx, route, Some(&stand.device), now) {
                    std::future::poll_fn(|cx| receiver.borrow_mut().poll_room(cx)).await;
                }
                stand.link.handed_on(&ctx, len);
            }
            Received::Closed(..) | Received::Moved => {
                stand.finish(&ctx);
                return;
            }
            Received::Broken(why) => {
                tracing::warn!(node = %stand.link.peer(), "{why}");
                stand.link.send(&ctx, broken_frame(why));
                stand.finish(&ctx);
                return;
            }
        }
    }
}

/// What the device shard writes to the stand-in (the device's messages, pings, its
/// close): sent to the edge, within the credit.
async fn stand_in_outbound(ctx: Rc<ShardCtx>, stand: Rc<StandIn>) {
    // The kind of the message whose fragments are being sent.
    let mut kind = MessageKind::Binary;
    loop {
        std::future::poll_fn(|cx| {
            if stand.link.done.get() {
                return Poll::Ready(());
            }
            let mut ob = stand.outbox.borrow_mut();
            ob.register_writer(cx);
            if ob.has_requests() || (!ob.is_empty() && stand.link.has_credit()) {
                return Poll::Ready(());
            }
            *stand.link.waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if stand.link.done.get() {
            return;
        }
        // What was queued before a request goes first, as a connection writes it before
        // its close frame.
        send_queued(&ctx, &stand, &mut kind, true);
        let requests = stand.outbox.borrow_mut().take_requests();
        if requests.ping {
            stand.link.send(&ctx, FrameBody::Ping);
        }
        if let Some((code, reason)) = requests.close {
            send_queued(&ctx, &stand, &mut kind, false);
            // §12: a plain session whose device moved goes on with the device's new node
            // (a reliable one's numbering stays here: it closes, and resumes elsewhere).
            let moved = code == close::SERVICE_RESTART
                && reason == close::MOVED_REASON
                && stand.mode == SessionMode::Plain;
            let body = if moved {
                FrameBody::Moved
            } else {
                FrameBody::Close {
                    code,
                    reason: reason.into_owned(),
                }
            };
            stand.link.send(&ctx, body);
            stand.finish(&ctx);
            return;
        }
    }
}

/// Sends the stand-in's queued frames to the edge: within the credit, or all of them
/// (`within_credit` false: the session is closing, the outbox's own limit bounds them).
fn send_queued(ctx: &Rc<ShardCtx>, stand: &StandIn, kind: &mut MessageKind, within_credit: bool) {
    while !within_credit || stand.link.has_credit() {
        let Some(frame) = stand.outbox.borrow_mut().pop_front() else {
            break;
        };
        let Some(fin) = frame.message_end else {
            continue; // a control frame: hop-by-hop, not forwarded
        };
        let opcode = frame.header.as_bytes().first().map_or(0, |b| b & 0x0f);
        let first = opcode != 0;
        if first {
            *kind = if opcode == 1 {
                MessageKind::Text
            } else {
                MessageKind::Binary
            };
        }
        // A fragment longer than a NATS message is cut (§5: fragmentation may be passed
        // on differently; the message is the same).
        let payload = frame.payload;
        let mut at = 0;
        loop {
            let end = (at + MAX_FORWARD_CHUNK).min(payload.len());
            let last = end == payload.len();
            stand
                .link
                .sent
                .set(stand.link.sent.get() + (end - at) as u64);
            stand.link.send(
                ctx,
                FrameBody::Data {
                    kind: *kind,
                    first: first && at == 0,
                    fin: fin && last,
                    payload: payload.slice(at..end),
                },
            );
            if last {
                break;
            }
            at = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientId, DomainName, Serial};

    fn data(seq: u64, fin: bool, len: usize) -> ForwardFrame {
        ForwardFrame {
            seq,
            body: FrameBody::Data {
                kind: MessageKind::Binary,
                first: true,
                fin,
                payload: Bytes::from(vec![1; len]),
            },
        }
    }

    /// §6 "a frame is either delivered or reported": what crosses a stand-in's end is
    /// counted as whole messages for the client it came from; an edge's, without anyone
    /// to report to; an end never seen, not at all.
    #[test]
    fn frames_that_cross_an_ends_end_are_counted_for_whom_they_came_from() {
        let domain = DomainName::new("acme.com").unwrap();
        let client = ClientKey {
            domain: domain.clone(),
            client_id: ClientId::new("pos-1").unwrap(),
        };
        let device = DeviceKey {
            domain,
            serial: Serial::new("1001").unwrap(),
        };
        let mut ends = Ends::default();
        let _rx = ends.add(5);
        let _rx2 = ends.add(6);
        ends.remove(5, Some((client.clone(), device.clone())));
        ends.remove(6, None);
        assert!(
            ends.crossed(5, &data(0, false, 100)).is_none(),
            "not whole yet"
        );
        assert_eq!(
            ends.crossed(5, &data(1, true, 20)),
            Some((
                Count {
                    frames: 1,
                    bytes: 120
                },
                Some((client, device))
            ))
        );
        let ping = ForwardFrame {
            seq: 2,
            body: FrameBody::Ping,
        };
        assert!(ends.crossed(5, &ping).is_none());
        assert_eq!(
            ends.crossed(6, &data(0, true, 3)),
            Some((
                Count {
                    frames: 1,
                    bytes: 3
                },
                None
            ))
        );
        assert!(
            ends.crossed(7, &data(0, true, 3)).is_none(),
            "never an end here"
        );
    }
}
