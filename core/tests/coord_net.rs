//! The coordination layer (`posrelay_core::coord`) driven the way quinn-proto tests its
//! connections: several participants on one virtual clock, joined by a harness network
//! that keeps each ordered pair's messages in order (the one guarantee glommio's
//! `channel_mesh` gives, and all the coordinator asks for), delays and interleaves the
//! pairs arbitrarily, and drops everything to and from a participant that stops.
//!
//! Properties, over arbitrary schedules (proptest):
//! - every question is answered exactly once: each registration's ticket, each presence
//!   query's ticket, each claim or release; a registration answered `Registered` means
//!   the owner holds the session; a question to a stopped participant is answered
//!   unavailable once its timeout has passed, never left hanging;
//! - claims stay exclusive: a device's holder only ever changes from nobody to a client or
//!   back, never from one client to another, and every decision the requester hears is the
//!   one the claim rules give for the owner's state when it decided;
//! - events reach every control channel of the claim holder: each `device_status` an owner
//!   produces for a claimed device reaches, exactly once, every control channel the holder
//!   has open on its home when the event gets there, and nothing else is sent.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use posrelay_core::control::RequestId;
use posrelay_core::coord::{
    Answer, ClaimOutcome, CoordConfig, CoordMsg, Coordinator, Output, Participant, Placement,
    Requester, Ticket,
};
use posrelay_core::ids::{ClientId, ClientKey, DeviceKey, DomainName, Serial};
use posrelay_core::relay::{
    ClaimError, ClaimOp, ClientEventKind, ConnId, DeviceShard, RelayLimits, RelayedMessage,
    SessionKeyring,
};
use proptest::prelude::*;

type Coord = Coordinator<RelayedMessage>;

const TIMEOUT: Duration = Duration::from_secs(5);

fn device(i: usize) -> DeviceKey {
    DeviceKey {
        domain: DomainName::new("acme").expect("domain"),
        serial: Serial::new(format!("{}", 1000 + i)).expect("serial"),
    }
}

fn client(i: usize) -> ClientKey {
    ClientKey {
        domain: DomainName::new("acme").expect("domain"),
        client_id: ClientId::new(format!("pos{i}")).expect("client"),
    }
}

/// One step of a schedule.
#[derive(Debug, Clone)]
enum Op {
    /// A device registers with participant `at`.
    Register { at: usize, device: usize },
    /// A client's control channel (on its home) claims or releases a device.
    Claim {
        client: usize,
        device: usize,
        release: bool,
    },
    /// A device connects to (or disconnects from) its owner.
    Connect { device: usize, online: bool },
    /// A client opens or closes one of its control channels (on its home).
    Control { client: usize, open: bool },
    /// Participant `at` asks about every device.
    Presence { at: usize },
    /// Deliver the oldest message of one non-empty link (chosen by index).
    Deliver { pick: usize },
    /// Time passes.
    Advance { millis: u64 },
    /// A participant stops (only the first such op takes effect).
    Stop { at: usize },
}

fn op(participants: usize, devices: usize, clients: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..participants, 0..devices).prop_map(|(at, device)| Op::Register { at, device }),
        4 => (0..clients, 0..devices, any::<bool>())
            .prop_map(|(client, device, release)| Op::Claim { client, device, release }),
        3 => (0..devices, any::<bool>()).prop_map(|(device, online)| Op::Connect { device, online }),
        2 => (0..clients, any::<bool>()).prop_map(|(client, open)| Op::Control { client, open }),
        1 => (0..participants).prop_map(|at| Op::Presence { at }),
        10 => any::<usize>().prop_map(|pick| Op::Deliver { pick }),
        2 => (1u64..3_000).prop_map(|millis| Op::Advance { millis }),
        1 => (0..participants).prop_map(|at| Op::Stop { at }),
    ]
}

/// What the harness expects to hear about a question.
#[derive(Debug)]
enum Asked {
    Register { device: DeviceKey },
    Presence { devices: usize },
}

/// A claim decision the harness predicted when the owner made it, waiting to be heard.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Claimed { client: ClientKey },
    Released,
    Busy,
    Offline,
}

struct Net {
    /// How many devices the run uses (device keys 0..devices).
    devices: usize,
    now: Instant,
    coords: Vec<Coord>,
    stopped: Option<usize>,
    links: BTreeMap<(usize, usize), VecDeque<CoordMsg>>,
    /// Open control channels, per client (all on the client's home).
    channels: HashMap<ClientKey, BTreeSet<ConnId>>,
    /// Device connections, per device.
    device_conns: HashMap<DeviceKey, ConnId>,
    next_conn: u64,
    /// Tickets and what they asked, per asking participant.
    asked: HashMap<(usize, Ticket), Asked>,
    /// Answers heard, per (participant, ticket).
    answers: HashMap<(usize, Ticket), Vec<Answer>>,
    /// Claims asked (by request id) and the decision the owner made (once it made it).
    claims_asked: HashMap<String, (ClientKey, DeviceKey, ClaimOp)>,
    claims_decided: HashMap<String, Expected>,
    claims_heard: HashMap<String, usize>,
    /// Claim requests in flight, by (asking participant, ticket) → request id.
    claim_tickets: HashMap<(usize, Ticket), String>,
    next_request: u64,
    /// The claim whose message to its owner the next `Claim` transmit from this
    /// participant is.
    pending_claim_rid: Option<(usize, String)>,
    /// device_status events expected at each home, by the step they were produced or
    /// delivered at: (participant, conn, event) → count.
    expected_events: BTreeMap<(usize, ConnId, String), usize>,
}

fn describe(event: &ClientEventKind) -> String {
    format!("{event:?}")
}

impl Net {
    fn new(participants: usize, devices: usize) -> Net {
        let keyring = SessionKeyring::new([7; 32]);
        let coords = (0..participants)
            .map(|i| {
                Coordinator::new(
                    Participant(i),
                    Placement::new(keyring.clone(), participants),
                    DeviceShard::new(keyring.clone(), RelayLimits::default()),
                    CoordConfig {
                        answer_timeout: TIMEOUT,
                        ..CoordConfig::default()
                    },
                )
            })
            .collect();
        Net {
            devices,
            now: Instant::now(),
            coords,
            stopped: None,
            links: BTreeMap::new(),
            channels: HashMap::new(),
            device_conns: HashMap::new(),
            next_conn: 0,
            asked: HashMap::new(),
            answers: HashMap::new(),
            claims_asked: HashMap::new(),
            claims_decided: HashMap::new(),
            claims_heard: HashMap::new(),
            claim_tickets: HashMap::new(),
            next_request: 0,
            pending_claim_rid: None,
            expected_events: BTreeMap::new(),
        }
    }

    fn live(&self, p: usize) -> bool {
        self.stopped != Some(p)
    }

    fn placement(&self) -> &Placement {
        self.coords[0].placement()
    }

    fn conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn)
    }

    fn holders(&self, devices: usize) -> Vec<Option<ClientKey>> {
        (0..devices)
            .map(|d| {
                let dev = device(d);
                let owner = self.placement().owner_of(&dev).0;
                self.coords[owner].devices().claimed_by(&dev).cloned()
            })
            .collect()
    }

    /// Drains every live participant's outputs, routing messages onto links and checking
    /// what each output says against the model.
    fn settle(&mut self) {
        loop {
            let mut any = false;
            for p in 0..self.coords.len() {
                if !self.live(p) {
                    continue;
                }
                while let Some(out) = self.coords[p].poll_output(self.now) {
                    any = true;
                    self.observe(p, out);
                }
            }
            if !any {
                break;
            }
        }
        let left: Vec<_> = self
            .expected_events
            .iter()
            .filter(|(_, n)| **n > 0)
            .collect();
        assert!(left.is_empty(), "events expected but not sent: {left:?}");
    }

    fn observe(&mut self, p: usize, out: Output<RelayedMessage>) {
        match out {
            Output::Transmit { to, msg } => {
                assert_ne!(to.0, p, "a participant messaged itself");
                if let CoordMsg::Claim { ticket, .. } = &msg {
                    let (home, rid) = self
                        .pending_claim_rid
                        .take()
                        .expect("a claim message answers a claim asked in this step");
                    assert_eq!(home, p);
                    self.claim_tickets.insert((p, *ticket), rid);
                }
                if self.live(to.0) {
                    self.links.entry((p, to.0)).or_default().push_back(msg);
                }
            }
            Output::Answered { ticket, answer } => {
                self.answers.entry((p, ticket)).or_default().push(answer);
            }
            Output::ClaimAnswered {
                requester, outcome, ..
            } => {
                let rid = requester
                    .request_id
                    .expect("every harness claim has a request id")
                    .as_str()
                    .to_owned();
                *self.claims_heard.entry(rid.clone()).or_default() += 1;
                let heard = match &outcome {
                    ClaimOutcome::Claimed(_) => None,
                    ClaimOutcome::Released => Some(Expected::Released),
                    ClaimOutcome::Refused(ClaimError::DeviceBusy { .. }) => Some(Expected::Busy),
                    ClaimOutcome::Refused(ClaimError::Offline { .. }) => Some(Expected::Offline),
                    ClaimOutcome::Refused(ClaimError::Unavailable { .. }) => {
                        // Only when the owner stopped (time passes only once the network
                        // has delivered what was in flight, so a live owner answers in time).
                        let (_, dev, _) = &self.claims_asked[&rid];
                        let owner = self.placement().owner_of(dev).0;
                        assert_eq!(self.stopped, Some(owner), "unavailable from a live owner");
                        return;
                    }
                };
                let decided = self
                    .claims_decided
                    .get(&rid)
                    .unwrap_or_else(|| panic!("answer {outcome:?} to {rid} before any decision"));
                match heard {
                    None => assert!(
                        matches!(decided, Expected::Claimed { .. }),
                        "{rid}: heard claimed, owner decided {decided:?}"
                    ),
                    Some(h) => assert_eq!(&h, decided, "{rid}"),
                }
            }
            Output::SendEvent { conn, event } => {
                let key = (p, conn, describe(&event));
                let n = self.expected_events.entry(key.clone()).or_default();
                assert!(*n > 0, "unexpected event {key:?}");
                *n -= 1;
            }
            Output::SendToConn { .. }
            | Output::CloseConn { .. }
            | Output::CloseUndelivered { .. }
            | Output::CloseClass { .. }
            | Output::ToOtherNodes { .. }
            | Output::ClaimChanged { .. }
            | Output::PresenceToOtherNodes { .. } => {}
        }
    }

    /// The claim rules (§4) applied to the owner's state before it decides.
    fn predict(&self, client: &ClientKey, dev: &DeviceKey, op: ClaimOp) -> Expected {
        let owner = self.placement().owner_of(dev).0;
        let shard = self.coords[owner].devices();
        let holder = shard.claimed_by(dev);
        match op {
            ClaimOp::Claim if !shard.device_registered(dev) => Expected::Offline,
            ClaimOp::Claim => match holder {
                Some(h) if h != client => Expected::Busy,
                _ => Expected::Claimed {
                    client: client.clone(),
                },
            },
            ClaimOp::Release => match holder {
                Some(h) if h != client => Expected::Busy,
                _ => Expected::Released,
            },
        }
    }

    /// Expects a device_status event for the holder of `dev`, if any, when its status
    /// changes at its owner in this step.
    fn expect_status(&mut self, dev: &DeviceKey, online: bool) {
        let owner = self.placement().owner_of(dev).0;
        let Some(holder) = self.coords[owner].devices().claimed_by(dev).cloned() else {
            return;
        };
        let home = self.placement().home_of(&holder).0;
        if home == owner {
            let event = ClientEventKind::DeviceStatus {
                serial: dev.serial.clone(),
                online,
            };
            self.expect_at_home(home, &holder, &event);
        }
        // Otherwise the event travels; it is expected when delivered (see `deliver`).
    }

    fn expect_at_home(&mut self, home: usize, client: &ClientKey, event: &ClientEventKind) {
        if !matches!(event, ClientEventKind::DeviceStatus { .. }) {
            return;
        }
        for conn in self.channels.get(client).cloned().unwrap_or_default() {
            *self
                .expected_events
                .entry((home, conn, describe(event)))
                .or_default() += 1;
        }
    }

    fn step(&mut self, op: &Op, devices: usize) {
        let now = self.now;
        let mut before = self.holders(devices);
        match op.clone() {
            Op::Register { at, device: d } => {
                if self.live(at) {
                    let dev = device(d);
                    let ticket = self.coords[at].handle_register(dev.clone(), now);
                    let fresh = self
                        .asked
                        .insert((at, ticket), Asked::Register { device: dev });
                    assert!(fresh.is_none(), "ticket reused");
                }
            }
            Op::Claim {
                client: c,
                device: d,
                release,
            } => {
                let cl = client(c);
                let dev = device(d);
                let home = self.placement().home_of(&cl).0;
                if !self.live(home) {
                    return;
                }
                self.next_request += 1;
                let rid = format!("r{}", self.next_request);
                let op = if release {
                    ClaimOp::Release
                } else {
                    ClaimOp::Claim
                };
                self.claims_asked
                    .insert(rid.clone(), (cl.clone(), dev.clone(), op));
                let owner = self.placement().owner_of(&dev).0;
                if owner == home {
                    let expected = self.predict(&cl, &dev, op);
                    self.claims_decided.insert(rid.clone(), expected);
                }
                let requester = Requester {
                    conn: ConnId(0),
                    request_id: Some(RequestId::new(rid.clone()).expect("short")),
                };
                let open_before = self.coords[home].open_questions();
                if owner != home {
                    self.pending_claim_rid = Some((home, rid));
                }
                self.coords[home].handle_claim(op, cl, dev, requester, now);
                if owner != home {
                    assert_eq!(self.coords[home].open_questions(), open_before + 1);
                }
            }
            Op::Connect { device: d, online } => {
                let dev = device(d);
                let owner = self.placement().owner_of(&dev).0;
                if !self.live(owner) || !self.coords[owner].devices().device_registered(&dev) {
                    return;
                }
                let sid = self.coords[owner].devices().session_id(&dev);
                let was_online = self.coords[owner].devices().device_online(&dev);
                if online {
                    let conn = self.conn();
                    if !was_online {
                        self.expect_status(&dev, true);
                    }
                    self.coords[owner]
                        .devices_mut()
                        .handle_device_connected(&sid, conn, now)
                        .expect("registered");
                    self.device_conns.insert(dev, conn);
                } else if let Some(conn) = self.device_conns.remove(&dev) {
                    if was_online {
                        self.expect_status(&dev, false);
                    }
                    self.coords[owner]
                        .devices_mut()
                        .handle_device_disconnected(&sid, conn, now);
                }
            }
            Op::Control { client: c, open } => {
                let cl = client(c);
                let home = self.placement().home_of(&cl).0;
                if !self.live(home) {
                    return;
                }
                if open {
                    let conn = self.conn();
                    self.channels.entry(cl.clone()).or_default().insert(conn);
                    self.coords[home].handle_control_opened(&cl, conn, now);
                } else if let Some(conn) =
                    self.channels.get_mut(&cl).and_then(|set| set.pop_first())
                {
                    self.coords[home].handle_control_closed(&cl, conn, now);
                }
            }
            Op::Presence { at } => {
                if self.live(at) {
                    let all: Vec<DeviceKey> = (0..devices).map(device).collect();
                    let ticket = self.coords[at].handle_presence_query(all, now);
                    self.asked.insert((at, ticket), Asked::Presence { devices });
                }
            }
            Op::Deliver { pick } => {
                let live: Vec<(usize, usize)> = self
                    .links
                    .iter()
                    .filter(|(_, q)| !q.is_empty())
                    .map(|(k, _)| *k)
                    .collect();
                if live.is_empty() {
                    return;
                }
                let (from, to) = live[pick % live.len()];
                self.deliver(from, to);
            }
            Op::Advance { millis } => {
                // A live participant answers promptly: time moves on only once the network
                // has delivered what was in flight (in any interleaving of the pairs).
                self.flush();
                // Each delivery of the flush was checked on its own.
                before = self.holders(devices);
                self.now += Duration::from_millis(millis);
                let now = self.now;
                for p in 0..self.coords.len() {
                    if self.live(p) {
                        // Claim grace may end claims; that changes no device_status.
                        self.coords[p].handle_timeout(now);
                    }
                }
            }
            Op::Stop { at } => {
                if self.stopped.is_none() {
                    self.stopped = Some(at);
                    self.links.retain(|(from, to), _| *from != at && *to != at);
                }
            }
        }
        self.settle();
        assert!(
            self.pending_claim_rid.is_none(),
            "a remote claim sent no message"
        );
        check_exclusive(&before, &self.holders(devices));
    }

    fn deliver(&mut self, from: usize, to: usize) {
        let Some(msg) = self.links.get_mut(&(from, to)).and_then(|q| q.pop_front()) else {
            return;
        };
        let now = self.now;
        match &msg {
            CoordMsg::Claim {
                ticket,
                op,
                client,
                device,
            } => {
                let rid = self.claim_tickets[&(from, *ticket)].clone();
                let expected = self.predict(client, device, *op);
                self.claims_decided.insert(rid, expected);
            }
            CoordMsg::ClientEvent { client, event } => {
                self.expect_at_home(to, client, event);
            }
            _ => {}
        }
        // One message is one step of the protocol: a claim may end and another begin
        // within one flush, but never within one delivery.
        let before = self.holders(self.devices);
        self.coords[to].handle_msg(Participant(from), msg, now);
        check_exclusive(&before, &self.holders(self.devices));
    }

    /// Delivers everything in flight (and what that produces), rotating over the pairs.
    fn flush(&mut self) {
        let mut turn = 0usize;
        loop {
            let busy: Vec<(usize, usize)> = self
                .links
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(k, _)| *k)
                .collect();
            if busy.is_empty() {
                break;
            }
            let (from, to) = busy[turn % busy.len()];
            turn += 1;
            self.deliver(from, to);
            self.settle();
        }
    }

    /// Delivers everything, then lets every timeout pass.
    fn finish(&mut self, devices: usize) {
        self.step(
            &Op::Advance {
                millis: TIMEOUT.as_millis() as u64 + 1,
            },
            devices,
        );
    }

    fn check_answers(&self) {
        for (key, asked) in &self.asked {
            let heard = self.answers.get(key).map(Vec::as_slice).unwrap_or(&[]);
            if !self.live(key.0) {
                // The asker itself stopped: it hears nothing more, but never twice.
                assert!(heard.len() <= 1, "{key:?} {asked:?}: answers {heard:?}");
                continue;
            }
            assert_eq!(heard.len(), 1, "{key:?} {asked:?}: answers {heard:?}");
            match (asked, &heard[0]) {
                (Asked::Register { device }, Answer::Registered) => {
                    let owner = self.placement().owner_of(device).0;
                    assert!(
                        self.coords[owner].devices().device_registered(device),
                        "answered registered, but the owner holds no session"
                    );
                }
                (Asked::Register { device }, Answer::Unavailable) => {
                    let owner = self.placement().owner_of(device).0;
                    assert_eq!(self.stopped, Some(owner), "unavailable from a live owner");
                }
                (Asked::Presence { devices }, Answer::Presence(list)) => {
                    assert_eq!(list.len(), *devices, "one entry per device");
                }
                (Asked::Presence { .. }, Answer::Unavailable) => {
                    assert!(self.stopped.is_some(), "unavailable with every owner live");
                }
                (asked, answer) => panic!("{asked:?} answered {answer:?}"),
            }
        }
        for (rid, (client, _, _)) in &self.claims_asked {
            let n = self.claims_heard.get(rid).copied().unwrap_or(0);
            if self.live(self.placement().home_of(client).0) {
                assert_eq!(n, 1, "claim {rid} answered {n} times");
            } else {
                assert!(n <= 1, "claim {rid} answered {n} times");
            }
        }
        for p in 0..self.coords.len() {
            if self.live(p) {
                assert_eq!(
                    self.coords[p].open_questions(),
                    0,
                    "participant {p} still waits"
                );
            }
        }
    }
}

/// Between two consecutive states a claim may start or end, but never pass from one client
/// to another: the new holder would be served while the old one still believes it holds it.
fn check_exclusive(before: &[Option<ClientKey>], after: &[Option<ClientKey>]) {
    for (d, (b, a)) in before.iter().zip(after).enumerate() {
        if let (Some(b), Some(a)) = (b, a) {
            assert_eq!(b, a, "device {d}: claim moved from one client to another");
        }
    }
}

fn run(participants: usize, devices: usize, ops: &[Op]) {
    let mut net = Net::new(participants, devices);
    for op in ops {
        net.step(op, devices);
    }
    net.finish(devices);
    net.check_answers();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn questions_are_answered_once_claims_stay_exclusive_events_reach_every_channel(
        ops in prop::collection::vec(op(3, 4, 3), 1..120)
    ) {
        run(3, 4, &ops);
    }

    #[test]
    fn the_same_on_two_participants_with_many_devices(
        ops in prop::collection::vec(op(2, 12, 4), 1..160)
    ) {
        run(2, 12, &ops);
    }
}

/// A registration with a participant whose owner has stopped is answered unavailable once
/// the timeout has passed, and a registration with a live owner is answered registered.
#[test]
fn a_stopped_owner_makes_questions_time_out_not_hang() {
    let mut net = Net::new(2, 64);
    // Find a device owned by participant 1, and register it with participant 0.
    let d = (0..64)
        .find(|d| net.placement().owner_of(&device(*d)).0 == 1)
        .expect("some device lands on participant 1");
    net.step(&Op::Stop { at: 1 }, 64);
    net.step(&Op::Register { at: 0, device: d }, 64);
    assert_eq!(net.coords[0].open_questions(), 1);
    net.step(&Op::Advance { millis: 4_999 }, 64);
    assert_eq!(net.coords[0].open_questions(), 1, "not before the timeout");
    net.step(&Op::Advance { millis: 2 }, 64);
    net.check_answers();
}

/// Found by CI: a release and another client's claim in flight together, delivered in one
/// flush. The claim passes through "nobody" between the two deliveries, which is allowed.
#[test]
fn a_release_and_a_new_claim_delivered_in_one_flush_are_two_steps() {
    run(
        3,
        4,
        &[
            Op::Register { at: 1, device: 0 },
            Op::Claim {
                client: 1,
                device: 0,
                release: false,
            },
            Op::Deliver {
                pick: 1152979573687352822,
            },
            Op::Claim {
                client: 1,
                device: 0,
                release: true,
            },
            Op::Deliver {
                pick: 13902239020231363,
            },
            Op::Register { at: 0, device: 0 },
            Op::Claim {
                client: 2,
                device: 0,
                release: false,
            },
            Op::Advance { millis: 1 },
        ],
    );
}

/// §12: on a cluster node, an event a device's owner produces for a client is also handed
/// out for the other nodes (once, by the participant that produced it); on another node
/// it reaches the client's open control channels there, and is not kept when there are
/// none. A single node hands nothing out.
#[test]
fn a_cluster_nodes_events_reach_the_clients_channels_on_other_nodes() {
    use posrelay_core::coord::Nodes;
    let keyring = SessionKeyring::new([7; 32]);
    let node = |nodes: Nodes| -> Coord {
        Coordinator::new(
            Participant(0),
            Placement::new(keyring.clone(), 1),
            DeviceShard::new(keyring.clone(), RelayLimits::default()),
            CoordConfig {
                answer_timeout: TIMEOUT,
                nodes,
            },
        )
    };
    let drain = |c: &mut Coord, now: Instant| -> Vec<Output<RelayedMessage>> {
        std::iter::from_fn(|| c.poll_output(now)).collect()
    };
    let now = Instant::now();
    let (dev, pos) = (device(0), client(0));
    let offline = ClientEventKind::DeviceStatus {
        serial: dev.serial.clone(),
        online: false,
    };
    for nodes in [Nodes::Cluster, Nodes::Alone] {
        // The device's node: registered, claimed by a client whose channel is elsewhere,
        // connected, then gone.
        let mut owner = node(nodes);
        let _ = owner.handle_register(dev.clone(), now);
        owner.handle_claim(
            ClaimOp::Claim,
            pos.clone(),
            dev.clone(),
            Requester {
                conn: ConnId(1),
                request_id: None,
            },
            now,
        );
        let sid = owner.devices().session_id(&dev);
        owner
            .devices_mut()
            .handle_device_connected(&sid, ConnId(2), now)
            .expect("connected");
        drain(&mut owner, now);
        owner
            .devices_mut()
            .handle_device_disconnected(&sid, ConnId(2), now);
        let handed_out: Vec<_> = drain(&mut owner, now)
            .into_iter()
            .filter_map(|o| match o {
                Output::ToOtherNodes { client, event } => Some((client, event)),
                _ => None,
            })
            .collect();
        match nodes {
            Nodes::Cluster => assert_eq!(handed_out, vec![(pos.clone(), offline.clone())]),
            Nodes::Alone => assert!(handed_out.is_empty(), "{handed_out:?}"),
        }
    }

    // Another node, where the client has two control channels open: each gets it.
    let mut other = node(Nodes::Cluster);
    other.handle_control_opened(&pos, ConnId(10), now);
    other.handle_control_opened(&pos, ConnId(11), now);
    drain(&mut other, now);
    other.handle_remote_client_event(pos.clone(), offline.clone(), now);
    let mut sent: Vec<ConnId> = drain(&mut other, now)
        .into_iter()
        .map(|o| match o {
            Output::SendEvent { conn, event } => {
                assert_eq!(event, offline);
                conn
            }
            other => panic!("unexpected output {other:?}"),
        })
        .collect();
    sent.sort();
    assert_eq!(sent, vec![ConnId(10), ConnId(11)]);
    // A node where the client has no channel: nothing sent, nothing handed out again.
    let mut empty = node(Nodes::Cluster);
    empty.handle_remote_client_event(
        pos.clone(),
        ClientEventKind::Undelivered {
            serial: dev.serial.clone(),
            frames: 2,
            bytes: 10,
        },
        now,
    );
    assert!(drain(&mut empty, now).is_empty());
    // And it keeps nothing for a channel that opens later.
    empty.handle_control_opened(&pos, ConnId(12), now);
    assert!(!drain(&mut empty, now)
        .iter()
        .any(|o| matches!(o, Output::SendEvent { .. })));
}

/// §4 claim grace with §12: "A claim ends … when the client's control channels and
/// session stay closed for the claim grace period", counting every node's channels: a
/// claim whose holder has a channel on another node only (as that node lists it) holds
/// past the grace; once that node goes quiet for `PRESENCE_TTL`, the grace runs from
/// then. A cluster node hands its own clients' comings and goings to the other nodes.
#[test]
fn a_claim_holds_while_its_client_has_a_control_channel_on_another_node() {
    use posrelay_core::coord::{Nodes, PRESENCE_TTL};
    let keyring = SessionKeyring::new([7; 32]);
    let limits = RelayLimits::default();
    let grace = limits.claim_grace;
    let mut owner: Coord = Coordinator::new(
        Participant(0),
        Placement::new(keyring.clone(), 1),
        DeviceShard::new(keyring.clone(), limits),
        CoordConfig {
            answer_timeout: TIMEOUT,
            nodes: Nodes::Cluster,
        },
    );
    let drain = |c: &mut Coord, now: Instant| -> Vec<Output<RelayedMessage>> {
        std::iter::from_fn(|| c.poll_output(now)).collect()
    };
    let t0 = Instant::now();
    let (dev, pos) = (device(0), client(0));
    let _ = owner.handle_register(dev.clone(), t0);
    // Node c's shard 1 lists the client; the claim comes (through c) with no channel here.
    owner.handle_remote_presence_full("c/1", vec![pos.clone()], t0);
    owner.handle_claim(
        ClaimOp::Claim,
        pos.clone(),
        dev.clone(),
        Requester {
            conn: ConnId(1),
            request_id: None,
        },
        t0,
    );
    drain(&mut owner, t0);
    let tick = |c: &mut Coord, at: Instant| {
        c.expire_remote_presence(at);
        if c.poll_timeout().is_some_and(|t| t <= at) {
            c.handle_timeout(at);
        }
    };
    // Past the grace, c refreshing its list: the claim holds.
    let mut at = t0;
    while at < t0 + grace * 2 {
        at += Duration::from_secs(10);
        owner.handle_remote_presence_full("c/1", vec![pos.clone()], at);
        tick(&mut owner, at);
    }
    assert_eq!(owner.devices().claimed_by(&dev), Some(&pos));
    // c goes quiet: forgotten after PRESENCE_TTL, then the grace runs.
    let quiet_from = at;
    tick(&mut owner, quiet_from + PRESENCE_TTL);
    tick(
        &mut owner,
        quiet_from + PRESENCE_TTL + grace - Duration::from_secs(1),
    );
    assert_eq!(owner.devices().claimed_by(&dev), Some(&pos));
    tick(&mut owner, quiet_from + PRESENCE_TTL + grace);
    assert_eq!(owner.devices().claimed_by(&dev), None, "the claim ended");

    // This node's own clients: their channels' comings and goings go to the other nodes.
    owner.handle_control_opened(&pos, ConnId(20), at);
    owner.handle_control_closed(&pos, ConnId(20), at);
    let told: Vec<bool> = drain(&mut owner, at)
        .into_iter()
        .filter_map(|o| match o {
            Output::PresenceToOtherNodes { client, online } if client == pos => Some(online),
            _ => None,
        })
        .collect();
    assert_eq!(told, vec![true, false]);
}
