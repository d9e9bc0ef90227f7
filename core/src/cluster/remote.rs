//! What nodes say to each other directly (PROTOCOL.md §12), on core NATS subjects
//! addressed to one node, `posrelay.node.<node>.<kind>`:
//!
//! | subject | sent by | answered | what |
//! |---|---|---|---|
//! | `posrelay.node.<owner>.claim` | a node whose control channel claims or releases a tsn owned by `<owner>` | yes: the owner's decision | §12 "claims are exclusive across the cluster": the owner decides, as the owning shard does within a node |
//! | `posrelay.node.<old>.moved` | the node a device just connected to, when the tsn's last owner was `<old>` | no | §12 "a newer connection of the device on another node takes it over, and the older connection is closed with 4000" |
//! | `posrelay.events` (every node) | the node that owns a claimed device | no | §12 "`device_status` and `undelivered` reach the claim holder's control channels on whichever nodes they are" |
//!
//! The node's subscription runs on the bridge's thread and hands what arrives to the
//! shards over a channel ([`NodeInbox`]); the owner of a tsn is read from its ownership
//! record ([`super::ownership::current_owner`]).

use std::time::Duration;

use bytes::Bytes;
use futures_lite::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::forward::{
    open_subject, ping_subject, ForwardAddress, OpenRefusal, OpenReply, OpenRequest,
};
use super::ownership::{current_owner, take_over_tsn, take_over_tsn_from, OwnershipStreams};
use super::{BridgeHandle, ClusterError};
use crate::ids::{ClientId, ClientKey, DeviceKey, DomainName, Serial, SessionId};
use crate::ownership::{Epoch, NodeId, OwnershipRecord};
use crate::relay::{ClaimError, ClaimGranted, ClaimOp, ClientEventKind};

/// Where every node hears the §4 events of claimed devices.
pub const EVENTS_SUBJECT: &str = "posrelay.events";

/// Where every node hears which clients have control channels on the others (§4 claim
/// grace counts every node's channels).
pub const PRESENCE_SUBJECT: &str = "posrelay.presence";

/// One node's shard says which clients have a control channel homed on it: all of them
/// (`clients`, every refresh period), or one that came or went (`client`, `online`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceNotice {
    /// The node.
    pub node: String,
    /// Its shard.
    pub shard: usize,
    /// The clients' domain and id, when it lists all of them.
    #[serde(default)]
    pub clients: Option<Vec<(String, String)>>,
    /// The client that came or went.
    #[serde(default)]
    pub client: Option<(String, String)>,
    /// Whether it came.
    #[serde(default)]
    pub online: bool,
}

impl PresenceNotice {
    /// Who said it (the source the receiver keys it by).
    pub fn source(&self) -> String {
        format!("{}/{}", self.node, self.shard)
    }

    /// A full list.
    pub fn full(node: &NodeId, shard: usize, clients: &[ClientKey]) -> Self {
        Self {
            node: node.as_str().to_owned(),
            shard,
            clients: Some(clients.iter().map(pair).collect()),
            client: None,
            online: false,
        }
    }

    /// One change.
    pub fn delta(node: &NodeId, shard: usize, client: &ClientKey, online: bool) -> Self {
        Self {
            node: node.as_str().to_owned(),
            shard,
            clients: None,
            client: Some(pair(client)),
            online,
        }
    }

    /// The listed clients (those that are not valid keys are left out).
    pub fn listed(&self) -> Option<Vec<ClientKey>> {
        self.clients
            .as_ref()
            .map(|all| all.iter().filter_map(unpair).collect())
    }

    /// The client that came or went.
    pub fn changed(&self) -> Option<(ClientKey, bool)> {
        Some((unpair(self.client.as_ref()?)?, self.online))
    }
}

fn pair(client: &ClientKey) -> (String, String) {
    (client.domain.to_string(), client.client_id.to_string())
}

fn unpair((domain, id): &(String, String)) -> Option<ClientKey> {
    Some(ClientKey {
        domain: DomainName::new(domain.clone()).ok()?,
        client_id: ClientId::new(id.clone()).ok()?,
    })
}

/// §12: hands a presence notice to the other nodes.
pub fn publish_presence(bridge: &BridgeHandle, notice: &PresenceNotice) {
    let Ok(payload) = simd_json::to_vec(notice) else {
        return;
    };
    let _ = bridge.spawn(move |nats| async move {
        if let Err(e) = nats
            .client
            .publish(PRESENCE_SUBJECT, Bytes::from(payload))
            .await
        {
            tracing::warn!(error = %e, "cannot publish this node's control channels to the other nodes");
        }
    });
}

/// `posrelay.node.<node>.<kind>`.
pub fn node_subject(node: &NodeId, kind: &str) -> String {
    format!("posrelay.node.{}.{kind}", node.as_str())
}

/// A claim or release put to a tsn's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// `claim` or `release`.
    pub op: String,
    /// The client's (and the device's) domain.
    pub domain: String,
    /// The client.
    pub client_id: String,
    /// The device.
    pub serial: String,
}

impl ClaimRequest {
    /// The request for `op` by `client` on `device`.
    pub fn new(op: ClaimOp, client: &ClientKey, device: &DeviceKey) -> Self {
        Self {
            op: match op {
                ClaimOp::Claim => "claim",
                ClaimOp::Release => "release",
            }
            .into(),
            domain: device.domain.to_string(),
            client_id: client.client_id.to_string(),
            serial: device.serial.to_string(),
        }
    }

    /// What it asks, checked: `None` if any part is malformed.
    pub fn parts(&self) -> Option<(ClaimOp, ClientKey, DeviceKey)> {
        let op = match self.op.as_str() {
            "claim" => ClaimOp::Claim,
            "release" => ClaimOp::Release,
            _ => return None,
        };
        let domain = DomainName::new(self.domain.as_str()).ok()?;
        let client = ClientKey {
            domain: domain.clone(),
            client_id: ClientId::new(self.client_id.as_str()).ok()?,
        };
        let device = DeviceKey {
            domain,
            serial: Serial::new(self.serial.as_str()).ok()?,
        };
        Some((op, client, device))
    }
}

/// The owner's decision, as it travels back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimReply {
    /// `claimed`, `released`, `device_busy`, `offline` or `unavailable`.
    pub outcome: String,
    /// `claimed`: the device's session.
    pub session_id: Option<String>,
    /// `claimed`: whether the device is connected.
    pub online: bool,
    /// `claimed`: device messages waiting for the session.
    pub pending_frames: u64,
    /// The owner's `--node-url`, for the `session_url` (§12: it names the owning node).
    pub node_url: Option<String>,
}

/// A [`ClaimReply`] read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteOutcome {
    /// Claimed, with the owner's URL base when it has one.
    Claimed(ClaimGranted, Option<String>),
    /// Released.
    Released,
    /// Refused.
    Refused(ClaimError),
}

impl ClaimReply {
    /// The reply for an outcome decided here.
    pub fn of(outcome: &RemoteOutcome) -> Self {
        let mut reply = Self::unavailable();
        reply.outcome = match outcome {
            RemoteOutcome::Claimed(g, url) => {
                reply.session_id = Some(g.session_id.to_string());
                reply.online = g.online;
                reply.pending_frames = g.pending_frames;
                reply.node_url = url.clone();
                "claimed"
            }
            RemoteOutcome::Released => "released",
            RemoteOutcome::Refused(ClaimError::DeviceBusy { .. }) => "device_busy",
            RemoteOutcome::Refused(ClaimError::Offline { .. }) => "offline",
            RemoteOutcome::Refused(ClaimError::Unavailable { .. }) => "unavailable",
        }
        .into();
        reply
    }

    /// `unavailable`: the owner cannot decide (a request it could not read).
    pub fn unavailable() -> Self {
        Self {
            outcome: "unavailable".into(),
            session_id: None,
            online: false,
            pending_frames: 0,
            node_url: None,
        }
    }

    /// The outcome it carries for `serial`; a malformed reply is `unavailable`.
    pub fn outcome(&self, serial: &Serial) -> RemoteOutcome {
        let refused = |e| RemoteOutcome::Refused(e);
        let serial = serial.clone();
        match self.outcome.as_str() {
            "claimed" => match self.session_id.clone().and_then(|s| SessionId::new(s).ok()) {
                Some(session_id) => RemoteOutcome::Claimed(
                    ClaimGranted {
                        session_id,
                        online: self.online,
                        pending_frames: self.pending_frames,
                    },
                    self.node_url.clone(),
                ),
                None => refused(ClaimError::Unavailable { serial }),
            },
            "released" => RemoteOutcome::Released,
            "device_busy" => refused(ClaimError::DeviceBusy { serial }),
            "offline" => refused(ClaimError::Offline { serial }),
            _ => refused(ClaimError::Unavailable { serial }),
        }
    }
}

/// A device that connected to another node: the tsn's older connection here must go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedNotice {
    /// The device's domain.
    pub domain: String,
    /// The device.
    pub serial: String,
    /// The node it connected to.
    pub node: String,
    /// The epoch it owns the tsn at now.
    pub epoch: u64,
}

impl MovedNotice {
    /// The device, checked.
    pub fn device(&self) -> Option<DeviceKey> {
        Some(DeviceKey {
            domain: DomainName::new(self.domain.as_str()).ok()?,
            serial: Serial::new(self.serial.as_str()).ok()?,
        })
    }
}

/// A §4 event for a client, from the node that owns the device, for the client's control
/// channels on every other node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventNotice {
    /// The node it comes from (which delivered it to its own channels already).
    pub node: String,
    /// The client's domain.
    pub domain: String,
    /// The client.
    pub client_id: String,
    /// `device_status` or `undelivered`.
    pub kind: String,
    /// The device.
    pub serial: String,
    /// `device_status`: online or not.
    pub online: bool,
    /// `undelivered`: messages.
    pub frames: u64,
    /// `undelivered`: their payload bytes.
    pub bytes: u64,
}

impl EventNotice {
    /// The notice of `event` for `client`, sent by `node`.
    pub fn new(node: &NodeId, client: &ClientKey, event: &ClientEventKind) -> Self {
        let mut notice = Self {
            node: node.as_str().to_owned(),
            domain: client.domain.to_string(),
            client_id: client.client_id.to_string(),
            kind: String::new(),
            serial: String::new(),
            online: false,
            frames: 0,
            bytes: 0,
        };
        match event {
            ClientEventKind::DeviceStatus { serial, online } => {
                notice.kind = "device_status".into();
                notice.serial = serial.to_string();
                notice.online = *online;
            }
            ClientEventKind::Undelivered {
                serial,
                frames,
                bytes,
            } => {
                notice.kind = "undelivered".into();
                notice.serial = serial.to_string();
                notice.frames = *frames;
                notice.bytes = *bytes;
            }
        }
        notice
    }

    /// The client and the event, checked: `None` if any part is malformed.
    pub fn parts(&self) -> Option<(ClientKey, ClientEventKind)> {
        let client = ClientKey {
            domain: DomainName::new(self.domain.as_str()).ok()?,
            client_id: ClientId::new(self.client_id.as_str()).ok()?,
        };
        let serial = Serial::new(self.serial.as_str()).ok()?;
        let event = match self.kind.as_str() {
            "device_status" => ClientEventKind::DeviceStatus {
                serial,
                online: self.online,
            },
            "undelivered" => ClientEventKind::Undelivered {
                serial,
                frames: self.frames,
                bytes: self.bytes,
            },
            _ => return None,
        };
        Some((client, event))
    }
}

/// Publishes `notice` to every node (fire and forget: core NATS).
pub fn publish_event(bridge: &BridgeHandle, notice: &EventNotice) {
    let Ok(payload) = simd_json::to_vec(notice) else {
        return;
    };
    let _ = bridge.spawn(move |nats| async move {
        if let Err(e) = nats
            .client
            .publish(EVENTS_SUBJECT, Bytes::from(payload))
            .await
        {
            tracing::warn!(error = %e, "cannot publish a client event to the other nodes");
        }
    });
}

/// Something another node said to this one.
#[derive(Debug)]
pub enum Inbound {
    /// A §4 event for a client whose control channels may be here too.
    Event(EventNotice),
    /// Decide this claim or release (this node owns the tsn); answer with the replier.
    Claim(ClaimRequest, Replier),
    /// This device connected to another node.
    Moved(MovedNotice),
}

impl Replier {
    /// A replier to the reply subject of a request.
    pub(super) fn new(bridge: BridgeHandle, reply: Option<async_nats::Subject>) -> Self {
        Self { bridge, reply }
    }
}

/// Answers one [`Inbound::Claim`] (dropping it unanswered makes the asker time out).
#[derive(Debug)]
pub struct Replier {
    bridge: BridgeHandle,
    reply: Option<async_nats::Subject>,
}

impl Replier {
    /// Sends the answer back to the asking node.
    pub fn send<T: Serialize>(self, reply: &T) {
        let Some(subject) = self.reply else { return };
        let Ok(payload) = simd_json::to_vec(reply) else {
            return;
        };
        let _ = self.bridge.spawn(move |nats| async move {
            if let Err(e) = nats.client.publish(subject, Bytes::from(payload)).await {
                tracing::warn!(error = %e, "cannot answer a request from another node");
            }
        });
    }
}

/// What other nodes say to this one, received on the bridge's thread. Read it from one
/// shard (`next` is executor-agnostic).
pub struct NodeInbox {
    rx: mpsc::UnboundedReceiver<Inbound>,
}

impl std::fmt::Debug for NodeInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeInbox")
    }
}

impl NodeInbox {
    /// Subscribes to `posrelay.node.<node>.>` (again after every reconnect, as the client
    /// does by itself) and starts handing what arrives over.
    ///
    /// Forwarded sessions' subjects (`posrelay.node.<node>.fwd.…`, [`super::forward`]) go to
    /// the shard they address instead: an open to the shard that owns its session id
    /// among `shards`, a frame to the shard its subject names. One inbox per shard.
    pub fn serve(
        bridge: &BridgeHandle,
        node: &NodeId,
        shards: usize,
    ) -> Result<(Self, Vec<ForwardInbox>), ClusterError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (forward_tx, forward_rx): (Vec<_>, Vec<_>) = (0..shards.max(1))
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        let forward_prefix = format!("posrelay.node.{}.fwd.", node.as_str());
        let subject = format!("posrelay.node.{}.>", node.as_str());
        let claim_subject = node_subject(node, "claim");
        let moved_subject = node_subject(node, "moved");
        let for_replies = bridge.clone();
        let me = node.clone();
        bridge.spawn(move |nats| async move {
            let subscribed = async {
                let mine = nats.client.subscribe(subject.clone()).await?;
                let events = nats.client.subscribe(EVENTS_SUBJECT).await?;
                let presence = nats.client.subscribe(PRESENCE_SUBJECT).await?;
                Ok::<_, async_nats::SubscribeError>(futures_lite::stream::or(
                    mine,
                    futures_lite::stream::or(events, presence),
                ))
            };
            let mut sub = match subscribed.await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, %subject, "cannot subscribe to this node's subjects: claims from other nodes will time out");
                    return;
                }
            };
            let me = me.as_str().to_owned();
            while let Some(msg) = sub.next().await {
                if let Some(tail) = msg.subject.as_str().strip_prefix(&forward_prefix) {
                    route_forward(tail, msg.payload, msg.reply, &for_replies, &forward_tx);
                    continue;
                }
                if msg.subject.as_str() == PRESENCE_SUBJECT {
                    // Every shard counts the other nodes' channels for its own claims.
                    let mut payload = msg.payload.to_vec();
                    match simd_json::from_slice::<PresenceNotice>(&mut payload) {
                        Ok(notice) if notice.node == me => {}
                        Ok(notice) => {
                            for tx in &forward_tx {
                                let _ = tx.send(ForwardInbound::Presence(notice.clone()));
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "malformed presence notice from another node"),
                    }
                    continue;
                }
                let mut payload = msg.payload.to_vec();
                let inbound = if msg.subject.as_str() == claim_subject {
                    match simd_json::from_slice::<ClaimRequest>(&mut payload) {
                        Ok(req) => Inbound::Claim(
                            req,
                            Replier {
                                bridge: for_replies.clone(),
                                reply: msg.reply,
                            },
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "malformed claim from another node");
                            continue;
                        }
                    }
                } else if msg.subject.as_str() == EVENTS_SUBJECT {
                    match simd_json::from_slice::<EventNotice>(&mut payload) {
                        // Its own events, a node delivered already.
                        Ok(notice) if notice.node == me => continue,
                        Ok(notice) => Inbound::Event(notice),
                        Err(e) => {
                            tracing::warn!(error = %e, "malformed client event from another node");
                            continue;
                        }
                    }
                } else if msg.subject.as_str() == moved_subject {
                    match simd_json::from_slice::<MovedNotice>(&mut payload) {
                        Ok(notice) => Inbound::Moved(notice),
                        Err(e) => {
                            tracing::warn!(error = %e, "malformed move notice from another node");
                            continue;
                        }
                    }
                } else {
                    continue;
                };
                if tx.send(inbound).is_err() {
                    return;
                }
            }
        })?;
        let forward = forward_rx
            .into_iter()
            .map(|rx| ForwardInbox { rx })
            .collect();
        Ok((Self { rx }, forward))
    }

    /// The next message, `None` once the bridge has stopped.
    pub async fn next(&mut self) -> Option<Inbound> {
        self.rx.recv().await
    }
}

/// Hands a forwarded session's message to the shard it is for (see [`NodeInbox::serve`]).
fn route_forward(
    tail: &str,
    payload: Bytes,
    reply: Option<async_nats::Subject>,
    bridge: &BridgeHandle,
    shards: &[mpsc::UnboundedSender<ForwardInbound>],
) {
    match ForwardAddress::parse(tail) {
        Some(ForwardAddress::Open) => {
            let mut bytes = payload.to_vec();
            let replier = Replier::new(bridge.clone(), reply);
            let request = match simd_json::from_slice::<OpenRequest>(&mut bytes) {
                Ok(request) => request,
                Err(e) => {
                    tracing::warn!(error = %e, "malformed forwarded session from another node: refused");
                    replier.send(&OpenReply::refused(OpenRefusal::Unavailable));
                    return;
                }
            };
            let Some(sid) = SessionId::new(request.session_id.clone()).ok() else {
                replier.send(&OpenReply::refused(OpenRefusal::UnknownSession));
                return;
            };
            let shard = crate::relay::owner_shard(&sid, shards.len()).0;
            if let Some(tx) = shards.get(shard) {
                let _ = tx.send(ForwardInbound::Open(request, replier));
            }
        }
        Some(ForwardAddress::Ping) => Replier::new(bridge.clone(), reply).send(&true),
        Some(ForwardAddress::Frame { shard, end }) => {
            if let Some(tx) = shards.get(shard) {
                let _ = tx.send(ForwardInbound::Frame(end, payload));
            }
        }
        None => tracing::debug!(tail, "unknown forwarded-session subject"),
    }
}

/// What reaches one shard for forwarded sessions.
#[derive(Debug)]
pub enum ForwardInbound {
    /// Open a stand-in session here (this shard owns the session id); answer with the
    /// replier.
    Open(OpenRequest, Replier),
    /// A [`super::forward::ForwardFrame`] (still encoded) for the end with this id.
    Frame(u64, Bytes),
    /// Another node's clients with control channels (every shard gets each notice).
    Presence(PresenceNotice),
}

/// One shard's traffic from other nodes, received on the bridge's thread: forwarded
/// sessions (§12) and the other nodes' clients with control channels (§4 claim grace).
pub struct ForwardInbox {
    rx: mpsc::UnboundedReceiver<ForwardInbound>,
}

impl std::fmt::Debug for ForwardInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardInbox")
    }
}

impl ForwardInbox {
    /// The next message, `None` once the bridge has stopped.
    pub async fn next(&mut self) -> Option<ForwardInbound> {
        self.rx.recv().await
    }
}

/// Asks `node` to open a stand-in for a forwarded session, waiting at most `timeout`.
pub async fn ask_open(
    bridge: &BridgeHandle,
    node: &NodeId,
    request: &OpenRequest,
    timeout: Duration,
) -> Result<OpenReply, ClusterError> {
    request_json(bridge, open_subject(node), request, timeout).await
}

/// Whether `node` runs (answers on its subjects): `Ok(false)` when NATS says at once that
/// nobody listens there (the node is gone); an error when NATS did not answer.
pub async fn node_alive(
    bridge: &BridgeHandle,
    node: &NodeId,
    timeout: Duration,
) -> Result<bool, ClusterError> {
    match request_json::<bool, bool>(bridge, ping_subject(node), &true, timeout).await {
        Ok(_) => Ok(true),
        Err(ClusterError::NoResponders) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A request to another node and its JSON answer, waiting at most `timeout`.
async fn request_json<Req: Serialize, Rep: serde::de::DeserializeOwned + Send + 'static>(
    bridge: &BridgeHandle,
    subject: String,
    request: &Req,
    timeout: Duration,
) -> Result<Rep, ClusterError> {
    bridge.require_connected()?;
    let payload = simd_json::to_vec(request).map_err(|e| ClusterError::JetStream(e.to_string()))?;
    bridge
        .call(move |nats| async move {
            let answer =
                tokio::time::timeout(timeout, nats.client.request(subject, Bytes::from(payload)))
                    .await
                    .map_err(|_| ClusterError::Timeout(timeout))?
                    .map_err(|e| match e.kind() {
                        async_nats::RequestErrorKind::NoResponders => ClusterError::NoResponders,
                        _ => ClusterError::other(e, timeout),
                    })?;
            let mut bytes = answer.payload.to_vec();
            simd_json::from_slice::<Rep>(&mut bytes).map_err(|e| {
                ClusterError::JetStream(format!("malformed answer from another node: {e}"))
            })
        })
        .await?
}

/// The node that owns `device` now, and its epoch; `None` if no node ever did.
pub async fn owner_of(
    bridge: &BridgeHandle,
    streams: &OwnershipStreams,
    device: &DeviceKey,
) -> Result<Option<(NodeId, Epoch)>, ClusterError> {
    bridge.require_connected()?;
    let (streams, device) = (streams.clone(), device.clone());
    bridge
        .call(move |nats| async move { current_owner(&nats, &streams, &device).await })
        .await?
        .map(|o| o.map(|o| (o.record.node, o.epoch)))
}

/// Puts a claim or release to `owner` and waits (at most `timeout`) for its decision.
pub async fn ask_claim(
    bridge: &BridgeHandle,
    owner: &NodeId,
    request: &ClaimRequest,
    timeout: Duration,
) -> Result<ClaimReply, ClusterError> {
    request_json(bridge, node_subject(owner, "claim"), request, timeout).await
}

/// What a take-over found (§12).
#[derive(Debug)]
pub struct TakenOver {
    /// The epoch this node owns the tsn at.
    pub epoch: Epoch,
    /// The claim (a client id) the tsn brought from its previous owner ("claims stay").
    pub claim: Option<String>,
    /// Its reliable claim's records, read when the tsn came from another owner (§11:
    /// they survive the loss of a node); `None` when this node owned it already.
    pub reliable: Option<super::reliable_log::Loaded>,
}

/// §12: the device connected here: this node takes the tsn over (an ownership record
/// fenced on the last one), and the node that owned it before is told to close its older
/// connection (4000). What the tsn brings with it: [`TakenOver`].
pub async fn take_over(
    bridge: &BridgeHandle,
    streams: &OwnershipStreams,
    device: &DeviceKey,
    me: &OwnershipRecord,
) -> Result<TakenOver, ClusterError> {
    bridge.require_connected()?;
    let (streams, device, me) = (streams.clone(), device.clone(), me.clone());
    bridge
        .call(move |nats| async move {
            let (epoch, before) = take_over_tsn_from(&nats, &streams, &device, &me).await?;
            // The claim the tsn had, when it comes from another owner (this one has it
            // otherwise): one more read, only when the device moved.
            let (claim, reliable) = match &before {
                Some(_) => (
                    super::ownership::claim_of(&nats, &streams, &device).await?,
                    Some(super::reliable_log::load_device(&nats, &streams, &device).await?),
                ),
                None => (None, None),
            };
            if let Some(before) = before.filter(|b| b.record.node != me.node) {
                let notice = MovedNotice {
                    domain: device.domain.to_string(),
                    serial: device.serial.to_string(),
                    node: me.node.as_str().to_owned(),
                    epoch: epoch.sequence(),
                };
                if let Ok(payload) = simd_json::to_vec(&notice) {
                    let subject = node_subject(&before.record.node, "moved");
                    if let Err(e) = nats.client.publish(subject, Bytes::from(payload)).await {
                        tracing::warn!(error = %e, "cannot tell the device's previous node that it moved");
                    }
                }
            }
            Ok(TakenOver {
                epoch,
                claim,
                reliable,
            })
        })
        .await?
}

/// §12: records claim changes of the devices this node owns in their ownership records,
/// one after the other in the order they happened (so that a release never lands before
/// the claim it ends), on the bridge's thread; never blocks.
#[derive(Clone, Debug)]
pub struct ClaimRecorder {
    tx: mpsc::UnboundedSender<(DeviceKey, OwnershipRecord, Option<String>)>,
    /// Claim changes stored (or found stored already), and those that could not be.
    pub counts: std::sync::Arc<ClaimRecords>,
}

/// What a [`ClaimRecorder`] did so far.
#[derive(Debug, Default)]
pub struct ClaimRecords {
    /// Recorded (or already so).
    pub written: std::sync::atomic::AtomicU64,
    /// Not recorded: the cluster did not answer or refused.
    pub failed: std::sync::atomic::AtomicU64,
}

impl ClaimRecorder {
    /// Starts the recording task on `bridge`.
    pub fn start(bridge: &BridgeHandle, streams: &OwnershipStreams) -> Result<Self, ClusterError> {
        let (tx, mut rx) =
            mpsc::unbounded_channel::<(DeviceKey, OwnershipRecord, Option<String>)>();
        let streams = streams.clone();
        let counts = std::sync::Arc::new(ClaimRecords::default());
        let counting = counts.clone();
        bridge.spawn(move |nats| async move {
            use std::sync::atomic::Ordering::Relaxed;
            while let Some((device, me, claim)) = rx.recv().await {
                match super::ownership::record_claim(&nats, &streams, &device, &me, claim.as_deref()).await {
                    Ok(true) => {
                        counting.written.fetch_add(1, Relaxed);
                    }
                    Ok(false) => tracing::info!(tsn = %device.serial, "claim not recorded: the device is served by another node now"),
                    Err(e) => {
                        counting.failed.fetch_add(1, Relaxed);
                        tracing::warn!(tsn = %device.serial, error = %e,
                            "cannot record the device's claim in the cluster: if this node is lost, its POS claims again");
                    }
                }
            }
        })?;
        Ok(Self { tx, counts })
    }

    /// Queues "`claim` holds `device`'s claim" (a client id; `None`: nobody), as `me`.
    pub fn record(&self, device: DeviceKey, me: OwnershipRecord, claim: Option<String>) {
        let _ = self.tx.send((device, me, claim));
    }
}

/// §12, after a lease that lapsed while NATS was gone ([`crate::ownership::Lapse::Offline`]):
/// whether `device` is still this node's. If no other node took it over meanwhile, the
/// node takes it again under its new incarnation (`true`); if one did, `false` (its
/// connection here closes with 4000).
pub async fn still_mine(
    bridge: &BridgeHandle,
    streams: &OwnershipStreams,
    device: &DeviceKey,
    me: &OwnershipRecord,
) -> Result<bool, ClusterError> {
    bridge.require_connected()?;
    let (streams, device, me) = (streams.clone(), device.clone(), me.clone());
    bridge
        .call(move |nats| async move {
            match current_owner(&nats, &streams, &device).await? {
                Some(owner) if owner.record.node != me.node => Ok(false),
                _ => take_over_tsn(&nats, &streams, &device, &me)
                    .await
                    .map(|_| true),
            }
        })
        .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceKey {
        DeviceKey {
            domain: DomainName::new("acme.com").unwrap(),
            serial: Serial::new("1001").unwrap(),
        }
    }

    #[test]
    fn a_claim_request_and_its_reply_travel_and_come_back_as_they_were() {
        let client = ClientKey {
            domain: DomainName::new("acme.com").unwrap(),
            client_id: ClientId::new("c1").unwrap(),
        };
        let req = ClaimRequest::new(ClaimOp::Claim, &client, &device());
        let mut bytes = simd_json::to_vec(&req).unwrap();
        let back: ClaimRequest = simd_json::from_slice(&mut bytes).unwrap();
        assert_eq!(back.parts(), Some((ClaimOp::Claim, client, device())));

        let granted = ClaimGranted {
            session_id: SessionId::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap(),
            online: true,
            pending_frames: 3,
        };
        let serial = device().serial;
        for outcome in [
            RemoteOutcome::Claimed(granted, Some("wss://b.example.com".into())),
            RemoteOutcome::Released,
            RemoteOutcome::Refused(ClaimError::DeviceBusy {
                serial: serial.clone(),
            }),
            RemoteOutcome::Refused(ClaimError::Offline {
                serial: serial.clone(),
            }),
            RemoteOutcome::Refused(ClaimError::Unavailable {
                serial: serial.clone(),
            }),
        ] {
            let mut bytes = simd_json::to_vec(&ClaimReply::of(&outcome)).unwrap();
            let reply: ClaimReply = simd_json::from_slice(&mut bytes).unwrap();
            assert_eq!(reply.outcome(&serial), outcome);
        }
        // Nonsense from a node is an unavailable owner, never a claim.
        let odd = ClaimReply {
            outcome: "claimed".into(),
            session_id: Some("not a session id!".into()),
            online: true,
            pending_frames: 0,
            node_url: None,
        };
        assert!(matches!(
            odd.outcome(&serial),
            RemoteOutcome::Refused(ClaimError::Unavailable { .. })
        ));
    }

    #[test]
    fn an_event_notice_carries_its_event_and_refuses_nonsense() {
        let client = ClientKey {
            domain: DomainName::new("acme.com").unwrap(),
            client_id: ClientId::new("c1").unwrap(),
        };
        let node = NodeId::new("b").unwrap();
        for event in [
            ClientEventKind::DeviceStatus {
                serial: device().serial,
                online: false,
            },
            ClientEventKind::Undelivered {
                serial: device().serial,
                frames: 3,
                bytes: 300,
            },
        ] {
            let mut bytes = simd_json::to_vec(&EventNotice::new(&node, &client, &event)).unwrap();
            let back: EventNotice = simd_json::from_slice(&mut bytes).unwrap();
            assert_eq!(back.node, "b");
            assert_eq!(back.parts(), Some((client.clone(), event)));
        }
        let mut odd = EventNotice::new(
            &node,
            &client,
            &ClientEventKind::DeviceStatus {
                serial: device().serial,
                online: true,
            },
        );
        odd.kind = "claimed".into();
        assert_eq!(odd.parts(), None);
    }

    #[test]
    fn malformed_requests_are_refused_part_by_part() {
        let mut req = ClaimRequest {
            op: "steal".into(),
            domain: "acme.com".into(),
            client_id: "c1".into(),
            serial: "1001".into(),
        };
        assert_eq!(req.parts(), None);
        req.op = "release".into();
        assert!(req.parts().is_some());
        req.serial = String::new();
        assert_eq!(req.parts(), None);
    }
}
