//! THE invariant of the product (PROTOCOL.md §6: "A frame is either delivered or reported:
//! never dropped in silence"), checked over random sequences of operations on a virtual clock.
//!
//! Every message a POS sends is either delivered exactly once (a `Route::Forward` to the
//! device, or an `Action::SendToConn` flushing the offline queue), in order, or counted in
//! exactly one `undelivered` report: delivered + reported == sent, in frames and in bytes.
//! The same bookkeeping holds for device messages, whose losses are counted in the shard's
//! stats instead (the device cannot be told).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use posrelay_core::ids::{ClientId, ClientKey, DeviceKey, DomainName, Serial};
use posrelay_core::relay::{
    Action, ClientEventKind, ConnId, DeviceShard, DropReason, MessageKind, RelayLimits,
    RelayedMessage, Route, SessionKeyring,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    DeviceConnect,
    /// Close the current device connection (`false`) or a replaced one (`true`).
    DeviceDisconnect(bool),
    DeviceSend(usize, bool),
    Claim(usize),
    Release(usize),
    OpenSession(usize),
    ClosePos(usize),
    PosSend(usize, usize),
    Presence(usize, bool),
    Advance(u64),
    Disable,
    Register,
    DeleteClient(usize),
    Shutdown,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::DeviceConnect),
        3 => any::<bool>().prop_map(Op::DeviceDisconnect),
        4 => (0usize..200, any::<bool>()).prop_map(|(n, stale)| Op::DeviceSend(n, stale)),
        3 => (0usize..2).prop_map(Op::Claim),
        2 => (0usize..2).prop_map(Op::Release),
        3 => (0usize..2).prop_map(Op::OpenSession),
        2 => (0usize..4).prop_map(Op::ClosePos),
        10 => (0usize..4, 0usize..200).prop_map(|(k, n)| Op::PosSend(k, n)),
        2 => (0usize..2, any::<bool>()).prop_map(|(c, p)| Op::Presence(c, p)),
        4 => (0u64..45).prop_map(Op::Advance),
        1 => Just(Op::Disable),
        2 => Just(Op::Register),
        1 => (0usize..2).prop_map(Op::DeleteClient),
        1 => Just(Op::Shutdown),
    ]
}

/// Device connections are numbered from 1, POS connections from 1000.
const POS_BASE: u64 = 1000;

#[derive(Default)]
struct Ledger {
    sent_frames: u64,
    sent_bytes: u64,
    delivered_frames: u64,
    delivered_bytes: u64,
    reported_frames: u64,
    reported_bytes: u64,
    last_delivered: Option<u64>,
}

impl Ledger {
    fn send(&mut self, len: usize) {
        self.sent_frames += 1;
        self.sent_bytes += len as u64;
    }

    fn deliver(&mut self, m: &RelayedMessage, what: &str) {
        let seq = seq_of(m);
        assert!(
            self.last_delivered.is_none_or(|last| seq > last),
            "{what} delivered out of order or twice: {seq} after {:?}",
            self.last_delivered
        );
        self.last_delivered = Some(seq);
        self.delivered_frames += 1;
        self.delivered_bytes += m.payload.len() as u64;
    }

    fn balanced(&self) -> bool {
        self.delivered_frames + self.reported_frames == self.sent_frames
            && self.delivered_bytes + self.reported_bytes == self.sent_bytes
    }
}

/// A message of `extra + 8` bytes whose first 8 bytes are its sequence number.
fn message(seq: u64, extra: usize) -> RelayedMessage {
    let mut payload = seq.to_be_bytes().to_vec();
    payload.resize(8 + extra, 0x5a);
    RelayedMessage {
        kind: MessageKind::Binary,
        payload: Bytes::from(payload),
    }
}

fn seq_of(m: &RelayedMessage) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&m.payload[..8]);
    u64::from_be_bytes(b)
}

struct Model {
    shard: DeviceShard<RelayedMessage>,
    device: DeviceKey,
    clients: [ClientKey; 2],
    now: Instant,
    next_conn: u64,
    next_seq: u64,
    device_conn: Option<u64>,
    old_device_conns: Vec<u64>,
    /// Open POS connections (not yet reported closed), with their client.
    pos_conns: BTreeMap<u64, usize>,
    pos: Ledger,
    dev: Ledger,
}

impl Model {
    fn new(limits: RelayLimits) -> Self {
        let d = |s: &str| DomainName::new(s).expect("domain");
        let client = |c: &str| ClientKey {
            domain: d("acme"),
            client_id: ClientId::new(c).expect("client"),
        };
        let device = DeviceKey {
            domain: d("acme"),
            serial: Serial::new("42").expect("serial"),
        };
        let mut shard = DeviceShard::new(SessionKeyring::new([3; 32]), limits);
        let now = Instant::now();
        shard.handle_register(device.clone(), now);
        Self {
            shard,
            device,
            clients: [client("a"), client("b")],
            now,
            next_conn: 1,
            next_seq: 0,
            device_conn: None,
            old_device_conns: Vec::new(),
            pos_conns: BTreeMap::new(),
            pos: Ledger::default(),
            dev: Ledger::default(),
        }
    }

    fn sid(&self) -> posrelay_core::ids::SessionId {
        self.shard.session_id(&self.device)
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn drain(&mut self) {
        while let Some(action) = self.shard.poll_action() {
            match action {
                Action::SendToConn { conn, message } if conn.0 < POS_BASE => {
                    self.pos.deliver(&message, "pos→device (flush)");
                }
                Action::SendToConn { message, .. } => {
                    self.dev.deliver(&message, "device→pos (flush)");
                }
                Action::ClientEvent {
                    event: ClientEventKind::Undelivered { frames, bytes, .. },
                    ..
                } => {
                    assert!(frames > 0, "empty undelivered report");
                    self.pos.reported_frames += frames;
                    self.pos.reported_bytes += bytes;
                }
                Action::ClientEvent { .. }
                | Action::CloseConn { .. }
                | Action::CloseUndelivered { .. }
                | Action::ClaimChanged { .. } => {}
            }
        }
    }

    fn apply(&mut self, op: Op) {
        let sid = self.sid();
        let now = self.now;
        match op {
            Op::DeviceConnect => {
                let conn = self.next_conn;
                self.next_conn += 1;
                if self
                    .shard
                    .handle_device_connected(&sid, ConnId(conn), now)
                    .is_ok()
                {
                    if let Some(old) = self.device_conn.replace(conn) {
                        self.old_device_conns.push(old);
                    }
                }
            }
            Op::DeviceDisconnect(stale) => {
                let conn = if stale {
                    self.old_device_conns.pop()
                } else {
                    self.device_conn.take()
                };
                if let Some(conn) = conn {
                    self.shard
                        .handle_device_disconnected(&sid, ConnId(conn), now);
                }
            }
            Op::DeviceSend(extra, stale) => {
                let conn = if stale {
                    self.old_device_conns.last().copied()
                } else {
                    self.device_conn
                };
                if let Some(conn) = conn {
                    let m = message(self.seq(), extra);
                    self.dev.send(m.payload.len());
                    match self
                        .shard
                        .handle_message_from_device(&sid, ConnId(conn), m, now)
                    {
                        Route::Forward { conn, message } => {
                            assert!(conn.0 >= POS_BASE, "device frame forwarded to a device");
                            self.dev.deliver(&message, "device→pos");
                        }
                        Route::Queued => {}
                        Route::Rejected => panic!("device frames are never reported"),
                        Route::Dropped(reason) => {
                            assert_ne!(reason, DropReason::UnknownConnection);
                        }
                    }
                }
            }
            Op::Claim(c) => {
                let _ = self.shard.handle_claim(&self.clients[c], &self.device, now);
            }
            Op::Release(c) => {
                let _ = self
                    .shard
                    .handle_release(&self.clients[c], &self.device, now);
            }
            Op::OpenSession(c) => {
                let conn = POS_BASE + self.next_conn;
                self.next_conn += 1;
                let client = self.clients[c].clone();
                let checked = self.shard.check_pos_session(&sid, &client);
                let opened = self
                    .shard
                    .handle_pos_session_opened(&sid, &client, ConnId(conn), now);
                assert_eq!(checked.is_ok(), opened.is_ok(), "check agrees with open");
                if opened.is_ok() {
                    self.pos_conns.insert(conn, c);
                }
            }
            Op::ClosePos(k) => {
                if let Some(&conn) = self.pos_conns.keys().nth(k % self.pos_conns.len().max(1)) {
                    self.pos_conns.remove(&conn);
                    self.shard
                        .handle_pos_session_closed(&sid, ConnId(conn), now);
                }
            }
            Op::PosSend(k, extra) => {
                if let Some(&conn) = self.pos_conns.keys().nth(k % self.pos_conns.len().max(1)) {
                    let m = message(self.seq(), extra);
                    self.pos.send(m.payload.len());
                    match self
                        .shard
                        .handle_message_from_pos(&sid, ConnId(conn), m, now)
                    {
                        Route::Forward { conn, message } => {
                            assert!(conn.0 < POS_BASE, "pos frame forwarded to a pos");
                            self.pos.deliver(&message, "pos→device");
                        }
                        Route::Queued | Route::Rejected => {}
                        Route::Dropped(reason) => panic!("pos frame dropped silently: {reason:?}"),
                    }
                }
            }
            Op::Presence(c, present) => {
                self.shard
                    .handle_client_presence(&self.clients[c], present, now);
            }
            Op::Advance(secs) => {
                self.now += Duration::from_secs(secs);
                self.shard.handle_timeout(self.now);
                assert!(
                    self.shard.poll_timeout().is_none_or(|t| t > self.now),
                    "a deadline at or before now survived handle_timeout"
                );
            }
            Op::Disable => {
                self.shard.handle_device_disabled(&self.device);
                if let Some(old) = self.device_conn.take() {
                    self.old_device_conns.push(old);
                }
            }
            Op::Register => {
                let again = self.shard.handle_register(self.device.clone(), now);
                assert_eq!(again, sid, "session id is stable");
            }
            Op::DeleteClient(c) => {
                self.shard.handle_client_deleted(&self.clients[c]);
            }
            Op::Shutdown => self.shard.handle_shutdown(now),
        }
        self.drain();
        // While nothing is queued, the books balance at every step.
        let queued = self.shard.queued_to_device(&self.device);
        let limits = self.shard.limits();
        assert!(
            queued.bytes <= limits.offline_queue_bytes as u64,
            "byte bound"
        );
        assert!(
            queued.frames <= limits.offline_queue_frames as u64,
            "frame bound"
        );
        if queued.frames == 0 {
            assert!(self.pos.balanced(), "unbalanced with empty queues");
        }
    }
}

fn limits() -> impl Strategy<Value = RelayLimits> {
    (
        prop_oneof![Just(64usize), Just(300), Just(1 << 20)],
        1usize..6,
    )
        .prop_map(|(bytes, frames)| RelayLimits {
            offline_queue_bytes: bytes,
            offline_queue_frames: frames,
            offline_grace: Duration::from_secs(30),
            claim_grace: Duration::from_secs(60),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_pos_frame_is_delivered_once_in_order_or_reported_once(
        limits in limits(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut model = Model::new(limits);
        for op in ops {
            model.apply(op);
        }
        model.shard.handle_shutdown(model.now);
        model.drain();
        let p = &model.pos;
        prop_assert_eq!(p.delivered_frames + p.reported_frames, p.sent_frames);
        prop_assert_eq!(p.delivered_bytes + p.reported_bytes, p.sent_bytes);
        prop_assert_eq!(model.shard.stats().pos_frames_undelivered, p.reported_frames);
        prop_assert_eq!(model.shard.stats().pos_bytes_undelivered, p.reported_bytes);
        let d = &model.dev;
        let stats = model.shard.stats();
        prop_assert_eq!(d.delivered_frames + stats.device_frames_dropped, d.sent_frames);
        prop_assert_eq!(d.delivered_bytes + stats.device_bytes_dropped, d.sent_bytes);
        prop_assert_eq!(model.shard.queued_to_device(&model.device), Default::default());
    }
}
