//! [`Coordinator`]: one participant's side of the conversation, over its share of the relay
//! state. Modelled on quinn-proto's `Endpoint`: it routes what concerns others into
//! messages and applies what others send, while the per-device state machine
//! ([`DeviceShard`]) and the per-client one ([`ClientHub`]) stay what they were.

use std::collections::{BTreeSet, HashSet, VecDeque};

use super::remote_presence::RemotePresence;
use std::time::{Duration, Instant};

use crate::ids::{ClientKey, DeviceKey};
use crate::relay::{
    Action, ClaimError, ClaimOp, ClientEventKind, ClientHub, ConnId, Count, DeviceShard, HubAction,
    QueuedMessage,
};

use super::claim::{ClaimOutcome, Requester};
use super::drain::{ConnClass, Drain, DrainPhase, Step};
use super::msg::CoordMsg;
use super::output::{Answer, Output};
use super::participant::{Participant, Placement};
use super::pending::{Pending, Ticket, Waiting};
use super::presence::DevicePresence;

/// How the coordination behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordConfig {
    /// How long a question to another participant may stay unanswered before it is
    /// answered [`Answer::Unavailable`] (or a claim refused as unavailable). Shards of one
    /// process always answer within microseconds; this bounds what a stopped or wedged
    /// participant can cost a client.
    pub answer_timeout: Duration,
    /// Whether other nodes share the cluster (PROTOCOL.md §12): then every event this
    /// participant produces for a client is also handed out for them
    /// ([`Output::ToOtherNodes`]), since the client's control channels may be there too.
    pub nodes: Nodes,
}

/// Whether a coordinator's process is alone or a node of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nodes {
    /// One node: every control channel is on one of this process's participants.
    #[default]
    Alone,
    /// A node of a cluster (§12).
    Cluster,
}

impl Default for CoordConfig {
    fn default() -> Self {
        Self {
            answer_timeout: Duration::from_secs(5),
            nodes: Nodes::Alone,
        }
    }
}

/// One participant's coordination state. `M` is the io layer's message type.
#[derive(Debug)]
pub struct Coordinator<M> {
    me: Participant,
    placement: Placement,
    config: CoordConfig,
    devices: DeviceShard<M>,
    hub: ClientHub,
    pending: Pending,
    drain: Drain,
    outputs: VecDeque<Output<M>>,
    /// POS messages reported `undelivered` since the io last asked (for its metrics).
    undelivered_frames: u64,
    /// §4 claim grace: the clients with a control channel on this node (heard from their
    /// home participants, this one included).
    local_present: HashSet<ClientKey>,
    /// §12: and those with one on other nodes.
    remote_present: RemotePresence,
}

/// §12: how long another node's word on its clients' control channels holds without a
/// refresh (three of its refreshes, every [`PRESENCE_REFRESH`]).
pub const PRESENCE_TTL: Duration = Duration::from_secs(30);

/// §12: how often a cluster node's participants list their clients to the other nodes.
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(10);

impl<M: QueuedMessage> Coordinator<M> {
    /// The coordinator of participant `me`, over `devices` (the state of the devices it will
    /// own), placing devices and clients with `placement` (the same on every participant).
    pub fn new(
        me: Participant,
        placement: Placement,
        mut devices: DeviceShard<M>,
        config: CoordConfig,
    ) -> Self {
        if config.nodes == Nodes::Cluster {
            // §12: the claims are recorded where the device's next node finds them.
            devices.announce_claims();
        }
        let others: BTreeSet<Participant> = placement.all().filter(|p| *p != me).collect();
        Self {
            me,
            placement,
            config,
            devices,
            hub: ClientHub::new(),
            pending: Pending::default(),
            drain: Drain::new(others),
            outputs: VecDeque::new(),
            undelivered_frames: 0,
            local_present: HashSet::new(),
            remote_present: RemotePresence::new(PRESENCE_TTL),
        }
    }

    // ----- §12: control channels on other nodes (claim grace) ---------------------------

    /// Another node's participant `source` lists every client with a control channel
    /// homed on it.
    pub fn handle_remote_presence_full(
        &mut self,
        source: &str,
        clients: Vec<ClientKey>,
        now: Instant,
    ) {
        for (client, _) in self.remote_present.handle_full(source, clients, now) {
            self.presence_changed(&client, now);
        }
    }

    /// Another node's participant `source` says `client` has a control channel there now
    /// (`true`), or none any more.
    pub fn handle_remote_presence(
        &mut self,
        source: &str,
        client: &ClientKey,
        present: bool,
        now: Instant,
    ) {
        if let Some((client, _)) = self
            .remote_present
            .handle_delta(source, client, present, now)
        {
            self.presence_changed(&client, now);
        }
    }

    /// Forgets what other nodes not heard for [`PRESENCE_TTL`] said: their clients' claims
    /// run their grace from now. Call it now and then (the io's tick).
    pub fn expire_remote_presence(&mut self, now: Instant) {
        for (client, _) in self.remote_present.handle_timeout(now) {
            self.presence_changed(&client, now);
        }
    }

    /// The clients with a control channel homed on this participant (§12: listed to the
    /// other nodes every [`PRESENCE_REFRESH`]).
    pub fn home_clients_present(&self) -> Vec<ClientKey> {
        self.hub.clients_present()
    }

    /// A client's presence here or elsewhere changed: the device shard counts it as present
    /// while it has a control channel on any node.
    fn presence_changed(&mut self, client: &ClientKey, now: Instant) {
        let present = self.local_present.contains(client) || self.remote_present.contains(client);
        self.devices.handle_client_presence(client, present, now);
    }

    /// A client's control channels on this node went from none to some, or back.
    fn local_presence(&mut self, client: &ClientKey, online: bool, now: Instant) {
        if online {
            self.local_present.insert(client.clone());
        } else {
            self.local_present.remove(client);
        }
        self.presence_changed(client, now);
    }

    /// This participant.
    pub fn me(&self) -> Participant {
        self.me
    }

    /// Who owns what.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The state of the devices this participant owns (read-only).
    pub fn devices(&self) -> &DeviceShard<M> {
        &self.devices
    }

    /// The state of the devices this participant owns, for the data path (device and POS
    /// session lifecycle, relayed messages). Whatever it produces comes out of
    /// [`Self::poll_output`].
    pub fn devices_mut(&mut self) -> &mut DeviceShard<M> {
        &mut self.devices
    }

    /// The control channels of the clients this participant is home to (read-only).
    pub fn hub(&self) -> &ClientHub {
        &self.hub
    }

    /// Questions still waiting for another participant.
    pub fn open_questions(&self) -> usize {
        self.pending.len()
    }

    /// POS messages reported `undelivered` since the last call.
    pub fn take_undelivered_frames(&mut self) -> u64 {
        std::mem::take(&mut self.undelivered_frames)
    }

    // ----- questions from this participant's connections ------------------------------

    /// §2: a device registered here (credentials and device already checked). Its session
    /// is created on its owner; [`Answer::Registered`] for the returned ticket says it
    /// exists (or [`Answer::Unavailable`] if the owner did not answer in time).
    #[must_use = "wait for the ticket's answer before replying `registered`"]
    pub fn handle_register(&mut self, device: DeviceKey, now: Instant) -> Ticket {
        self.handle_register_claimed(device, None, now)
    }

    /// [`Self::handle_register`] for a device that arrived from another node (§12), where
    /// `claim` held its claim: the claim holds here too ("claims stay").
    #[must_use = "wait for the ticket's answer before replying `registered`"]
    pub fn handle_register_claimed(
        &mut self,
        device: DeviceKey,
        claim: Option<ClientKey>,
        now: Instant,
    ) -> Ticket {
        let owner = self.placement.owner_of(&device);
        if owner == self.me {
            self.register_here(device, claim, now);
            let ticket = self.pending.next_local();
            self.outputs.push_back(Output::Answered {
                ticket,
                answer: Answer::Registered,
            });
            return ticket;
        }
        let ticket = self.ask(owner, now, Waiting::Registered);
        self.transmit(
            owner,
            CoordMsg::Register {
                ticket,
                device,
                claim,
            },
        );
        ticket
    }

    /// Creates the session of a device this participant owns, with the claim it brought.
    fn register_here(&mut self, device: DeviceKey, claim: Option<ClientKey>, now: Instant) {
        if let Some(client) = claim {
            let _sid = self.devices.handle_register(device.clone(), now);
            if !self.devices.restore_claim(&client, &device, now) {
                tracing::info!(tsn = %device.serial, client = %client.client_id, "the claim the device had on its previous node is not held here (another holds it)");
            }
        } else {
            let _sid = self.devices.handle_register(device, now);
        }
    }

    /// §4: a control channel here claims or releases `device` for `client` (scope already
    /// checked). The decision comes back as [`Output::ClaimAnswered`] for `requester`.
    pub fn handle_claim(
        &mut self,
        op: ClaimOp,
        client: ClientKey,
        device: DeviceKey,
        requester: Requester,
        now: Instant,
    ) {
        let owner = self.placement.owner_of(&device);
        let serial = device.serial.clone();
        if owner == self.me {
            let outcome = self.decide_claim(op, &client, &device, now);
            self.outputs.push_back(Output::ClaimAnswered {
                requester,
                serial,
                op,
                outcome,
            });
            return;
        }
        let waiting = Waiting::Claim {
            requester,
            serial,
            op,
        };
        let ticket = self.ask(owner, now, waiting);
        self.transmit(
            owner,
            CoordMsg::Claim {
                ticket,
                op,
                client,
                device,
            },
        );
    }

    /// §4 `devices`, §9 device list: whether each device is online and who claims it,
    /// asked of each owner. [`Answer::Presence`] for the returned ticket lists every device
    /// once (in no particular order).
    #[must_use = "wait for the ticket's answer"]
    pub fn handle_presence_query(&mut self, devices: Vec<DeviceKey>, now: Instant) -> Ticket {
        let mut local = Vec::new();
        let mut remote: std::collections::BTreeMap<Participant, Vec<DeviceKey>> =
            Default::default();
        for device in devices {
            let owner = self.placement.owner_of(&device);
            if owner == self.me {
                local.push(device);
            } else {
                remote.entry(owner).or_default().push(device);
            }
        }
        let gathered = self.presence_of(&local);
        if remote.is_empty() {
            let ticket = self.pending.next_local();
            self.outputs.push_back(Output::Answered {
                ticket,
                answer: Answer::Presence(gathered),
            });
            return ticket;
        }
        let from: BTreeSet<Participant> = remote.keys().copied().collect();
        let deadline = self.deadline(now);
        let ticket =
            self.pending
                .open(from.clone(), deadline, Waiting::Presence { from, gathered });
        for (owner, devices) in remote {
            self.transmit(owner, CoordMsg::PresenceQuery { ticket, devices });
        }
        ticket
    }

    /// A control channel of `client` opened here (its home).
    pub fn handle_control_opened(&mut self, client: &ClientKey, conn: ConnId, now: Instant) {
        self.hub.handle_control_opened(client, conn, now);
    }

    /// A control channel of `client` closed here (its home).
    pub fn handle_control_closed(&mut self, client: &ClientKey, conn: ConnId, now: Instant) {
        self.hub.handle_control_closed(client, conn, now);
    }

    /// POS messages queued on a device connection here that its socket never took: they
    /// are reported `undelivered` to the claim holder (§6), wherever its home is.
    pub fn handle_unsent_to_device(&mut self, device: &DeviceKey, count: Count, now: Instant) {
        if count.frames == 0 {
            return;
        }
        match self.devices.claimed_by(device).cloned() {
            Some(client) => self.handle_client_undelivered(client, device, count, now),
            None => {
                tracing::warn!(tsn = %device.serial, frames = count.frames, "unsent messages for a device nobody claims any more");
            }
        }
    }

    /// POS messages of `client` to `device` that will not be delivered and that no session
    /// can be told about by number (a reliable claim ended, §11): reported `undelivered`
    /// (§4) to the client's control channels, wherever its home is.
    pub fn handle_client_undelivered(
        &mut self,
        client: ClientKey,
        device: &DeviceKey,
        count: Count,
        now: Instant,
    ) {
        if count.frames == 0 {
            return;
        }
        self.undelivered_frames = self.undelivered_frames.saturating_add(count.frames);
        self.route_event(
            client,
            ClientEventKind::Undelivered {
                serial: device.serial.clone(),
                frames: count.frames,
                bytes: count.bytes,
            },
            now,
        );
    }

    /// §9: the operator disabled `device`: every participant hears of it.
    pub fn handle_device_disabled(&mut self, device: DeviceKey, now: Instant) {
        self.broadcast(|| CoordMsg::DeviceDisabled {
            device: device.clone(),
        });
        self.apply(self.me, CoordMsg::DeviceDisabled { device }, now);
    }

    /// §12: `device` connected to another node, which owns it now: its owner here closes
    /// what it had of it (every participant hears of it, as of a disabled device).
    pub fn handle_device_moved(&mut self, device: DeviceKey, now: Instant) {
        self.broadcast(|| CoordMsg::DeviceMoved {
            device: device.clone(),
        });
        self.apply(self.me, CoordMsg::DeviceMoved { device }, now);
    }

    /// §12: this node lost its lease and `device` (owned here) did not connect elsewhere as
    /// far as the cluster says: its connection and session end with 1012 (a device that
    /// did goes through [`Self::handle_device_moved`], 4000). Each participant of the node
    /// is told by the io layer, not by message: the loss is the node's.
    pub fn handle_lease_lost(&mut self, device: &DeviceKey, _now: Instant) {
        self.devices.handle_lease_lost(device);
    }

    /// §12: an event for `client` from another node (which owns the device): to the
    /// client's control channels here, if it has any (the other node keeps what it must
    /// keep for a client with no channel open).
    pub fn handle_remote_client_event(
        &mut self,
        client: ClientKey,
        event: ClientEventKind,
        now: Instant,
    ) {
        let home = self.placement.home_of(&client);
        if home == self.me {
            self.hub.handle_remote_client_event(&client, event, now);
        } else {
            self.transmit(home, CoordMsg::RemoteClientEvent { client, event });
        }
    }

    /// §9: the operator deleted `client`: every participant hears of it.
    pub fn handle_client_deleted(&mut self, client: ClientKey, now: Instant) {
        self.broadcast(|| CoordMsg::ClientDeleted {
            client: client.clone(),
        });
        self.apply(self.me, CoordMsg::ClientDeleted { client }, now);
    }

    // ----- messages from other participants -------------------------------------------

    /// A message `from` another participant.
    pub fn handle_msg(&mut self, from: Participant, msg: CoordMsg, now: Instant) {
        self.apply(from, msg, now);
    }

    fn apply(&mut self, from: Participant, msg: CoordMsg, now: Instant) {
        match msg {
            CoordMsg::Register {
                ticket,
                device,
                claim,
            } => {
                self.register_here(device, claim, now);
                self.transmit(from, CoordMsg::Registered { ticket });
            }
            CoordMsg::Registered { ticket } => {
                if let Some(Waiting::Registered) = self.pending.answered(ticket, from, Vec::new()) {
                    self.outputs.push_back(Output::Answered {
                        ticket,
                        answer: Answer::Registered,
                    });
                }
            }
            CoordMsg::Claim {
                ticket,
                op,
                client,
                device,
            } => {
                let outcome = self.decide_claim(op, &client, &device, now);
                self.transmit(from, CoordMsg::ClaimAnswer { ticket, outcome });
            }
            CoordMsg::ClaimAnswer { ticket, outcome } => {
                if let Some(Waiting::Claim {
                    requester,
                    serial,
                    op,
                }) = self.pending.answered(ticket, from, Vec::new())
                {
                    self.outputs.push_back(Output::ClaimAnswered {
                        requester,
                        serial,
                        op,
                        outcome,
                    });
                }
            }
            CoordMsg::PresenceQuery { ticket, devices } => {
                let presence = self.presence_of(&devices);
                self.transmit(from, CoordMsg::PresenceAnswer { ticket, presence });
            }
            CoordMsg::PresenceAnswer { ticket, presence } => {
                if let Some(Waiting::Presence { gathered, .. }) =
                    self.pending.answered(ticket, from, presence)
                {
                    self.outputs.push_back(Output::Answered {
                        ticket,
                        answer: Answer::Presence(gathered),
                    });
                }
            }
            CoordMsg::ClientEvent { client, event } => {
                self.hub.handle_client_event(&client, event, now);
            }
            CoordMsg::RemoteClientEvent { client, event } => {
                self.hub.handle_remote_client_event(&client, event, now);
            }
            CoordMsg::ClientPresence { client, online } => {
                self.local_presence(&client, online, now);
            }
            CoordMsg::DeviceDisabled { device } => {
                self.devices.handle_device_disabled(&device);
            }
            CoordMsg::DeviceMoved { device } => {
                self.devices.handle_device_moved(&device);
            }
            CoordMsg::ClientDeleted { client } => {
                self.devices.handle_client_deleted(&client);
                self.hub.handle_client_deleted(&client);
            }
            CoordMsg::DataClosed => {
                let steps = self.drain.heard_data_closed(from);
                self.carry_steps(steps);
            }
        }
    }

    // ----- time ------------------------------------------------------------------------

    /// Expires what is due at `now`: the relay state's timers (offline grace, claim grace)
    /// and questions past their deadline (answered unavailable).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.devices.poll_timeout().is_some_and(|t| t <= now) {
            self.devices.handle_timeout(now);
        }
        for (ticket, waiting) in self.pending.expire(now) {
            match waiting {
                Waiting::Registered | Waiting::Presence { .. } => {
                    self.outputs.push_back(Output::Answered {
                        ticket,
                        answer: Answer::Unavailable,
                    });
                }
                Waiting::Claim {
                    requester,
                    serial,
                    op,
                } => {
                    let outcome = ClaimOutcome::Refused(ClaimError::Unavailable {
                        serial: serial.clone(),
                    });
                    self.outputs.push_back(Output::ClaimAnswered {
                        requester,
                        serial,
                        op,
                        outcome,
                    });
                }
            }
        }
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.devices.poll_timeout(), self.pending.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- shutdown (§6) ---------------------------------------------------------------

    /// Starts the drain: queued POS messages are reported, then POS sessions are closed
    /// ([`Output::CloseClass`]).
    pub fn handle_shutdown(&mut self, now: Instant) {
        if *self.drain.phase() != DrainPhase::Serving {
            return;
        }
        self.devices.handle_shutdown(now);
        // The reports first, as outputs ahead of the drain's first close: §5a's 4002 for a
        // session whose client has no control channel is requested before the 1001 that
        // closes every POS session, so its frames are reported, not dropped in silence
        // (§6: "A frame is either delivered or reported"). A connection's first close
        // request is the one it sends.
        while let Some(action) = self.devices.poll_action() {
            self.carry_device_action(action, now);
        }
        let steps = self.drain.start();
        self.carry_steps(steps);
    }

    /// No connection of `class` is left here (or the io stopped waiting for them).
    pub fn handle_class_closed(&mut self, class: ConnClass, _now: Instant) {
        let steps = self.drain.class_closed(class);
        self.carry_steps(steps);
    }

    /// The drain timeout ran out: stop waiting for other participants.
    pub fn handle_drain_deadline(&mut self, _now: Instant) {
        let missing = self.drain.missing();
        if missing > 0 {
            tracing::warn!(
                participant = %self.me,
                missing,
                "drain: some participants did not finish in time; closing control channels without their reports"
            );
        }
        let steps = self.drain.give_up_waiting();
        self.carry_steps(steps);
    }

    /// Where the drain stands.
    pub fn drain_phase(&self) -> &DrainPhase {
        self.drain.phase()
    }

    // ----- outputs ----------------------------------------------------------------------

    /// The next thing to do, in the order produced. Drains the relay state's and the
    /// client hub's actions into outputs (events for clients homed elsewhere become
    /// messages).
    pub fn poll_output(&mut self, now: Instant) -> Option<Output<M>> {
        loop {
            if let Some(out) = self.outputs.pop_front() {
                return Some(out);
            }
            if let Some(action) = self.devices.poll_action() {
                self.carry_device_action(action, now);
                continue;
            }
            if let Some(action) = self.hub.poll_action() {
                self.carry_hub_action(action, now);
                continue;
            }
            return None;
        }
    }

    // ----- internals --------------------------------------------------------------------

    fn deadline(&self, now: Instant) -> Instant {
        now.checked_add(self.config.answer_timeout).unwrap_or(now)
    }

    fn ask(&mut self, whom: Participant, now: Instant, waiting: Waiting) -> Ticket {
        let deadline = self.deadline(now);
        self.pending.open(BTreeSet::from([whom]), deadline, waiting)
    }

    /// Sends what `make` builds to every other participant.
    fn broadcast(&mut self, make: impl Fn() -> CoordMsg) {
        let me = self.me;
        let others: Vec<Participant> = self.placement.all().filter(|p| *p != me).collect();
        for p in others {
            self.transmit(p, make());
        }
    }

    fn transmit(&mut self, to: Participant, msg: CoordMsg) {
        debug_assert_ne!(to, self.me, "a participant never messages itself");
        self.outputs.push_back(Output::Transmit { to, msg });
    }

    fn decide_claim(
        &mut self,
        op: ClaimOp,
        client: &ClientKey,
        device: &DeviceKey,
        now: Instant,
    ) -> ClaimOutcome {
        match op {
            ClaimOp::Claim => {
                ClaimOutcome::of_claim(self.devices.handle_claim(client, device, now))
            }
            ClaimOp::Release => {
                ClaimOutcome::of_release(self.devices.handle_release(client, device, now))
            }
        }
    }

    fn presence_of(&self, devices: &[DeviceKey]) -> Vec<DevicePresence> {
        devices
            .iter()
            .map(|d| DevicePresence {
                device: d.clone(),
                online: self.devices.device_online(d),
                claimed_by: self.devices.claimed_by(d).cloned(),
                last_seen: self.devices.device_last_seen(d),
            })
            .collect()
    }

    /// An event for `client`: to its hub here, or to its home (and, on a cluster node, to
    /// the other nodes).
    fn route_event(&mut self, client: ClientKey, event: ClientEventKind, now: Instant) {
        if self.config.nodes == Nodes::Cluster {
            self.outputs.push_back(Output::ToOtherNodes {
                client: client.clone(),
                event: event.clone(),
            });
        }
        let home = self.placement.home_of(&client);
        if home == self.me {
            self.hub.handle_client_event(&client, event, now);
        } else {
            self.transmit(home, CoordMsg::ClientEvent { client, event });
        }
    }

    fn carry_device_action(&mut self, action: Action<M>, now: Instant) {
        match action {
            Action::SendToConn { conn, message } => {
                self.outputs.push_back(Output::SendToConn { conn, message })
            }
            Action::CloseConn { conn, code, reason } => {
                self.outputs
                    .push_back(Output::CloseConn { conn, code, reason })
            }
            Action::CloseUndelivered { conn, count } => self
                .outputs
                .push_back(Output::CloseUndelivered { conn, count }),
            Action::ClientEvent { client, event } => {
                if let ClientEventKind::Undelivered { frames, .. } = &event {
                    self.undelivered_frames = self.undelivered_frames.saturating_add(*frames);
                }
                self.route_event(client, event, now)
            }
            Action::ClaimChanged { device, holder } => self
                .outputs
                .push_back(Output::ClaimChanged { device, holder }),
        }
    }

    fn carry_hub_action(&mut self, action: HubAction, now: Instant) {
        match action {
            HubAction::Presence { client, online } => {
                self.broadcast(|| CoordMsg::ClientPresence {
                    client: client.clone(),
                    online,
                });
                if self.config.nodes == Nodes::Cluster {
                    self.outputs.push_back(Output::PresenceToOtherNodes {
                        client: client.clone(),
                        online,
                    });
                }
                self.local_presence(&client, online, now);
            }
            HubAction::SendEvent { conn, event } => {
                self.outputs.push_back(Output::SendEvent { conn, event })
            }
            HubAction::CloseConn { conn, code, reason } => self
                .outputs
                .push_back(Output::CloseConn { conn, code, reason }),
        }
    }

    fn carry_steps(&mut self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Close(ConnClass::Everything) => {
                    // §6: every control channel closes with 1001 once every report is in;
                    // reports kept for clients with no channel open die with the process.
                    let lost = self.hub.handle_shutdown();
                    if lost > 0 {
                        tracing::info!(participant = %self.me, lost, "drain: undelivered reports kept for clients without a control channel are dropped");
                    }
                    self.outputs.push_back(Output::CloseClass {
                        class: ConnClass::Everything,
                    });
                }
                Step::Close(class) => self.outputs.push_back(Output::CloseClass { class }),
                Step::AnnounceDataClosed => {
                    self.broadcast(|| CoordMsg::DataClosed);
                }
            }
        }
    }
}
