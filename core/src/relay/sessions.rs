//! `DeviceShard`: the state of the device sessions one shard owns: connections, claims,
//! offline queues and their deadlines (PROTOCOL.md §3-§6). No sockets, no clock.
//!
//! Inputs are `handle_*` calls with `now` passed in; outputs are [`Action`]s drained with
//! [`DeviceShard::poll_action`], except the hot path: a data message is answered with a
//! [`Route`] so the io layer writes it directly.
//!
//! Decisions this file makes (PROTOCOL.md leaves them open):
//! - **Offline grace is per message**: a queued message waits at most `offline_grace` from
//!   when it was queued. Messages are queued in order, so expiry drops a prefix and what
//!   stays keeps its order.
//! - **Device → POS frames** are queued (same bounds) while the claim holder has no POS
//!   session open (§5). They are dropped, and counted in [`ShardStats`], when they do not
//!   fit, expire, the claim ends, nobody holds a claim, or the relay shuts down: the device
//!   cannot be told, the protocol has no message for it.
//! - **Every POS frame is delivered or reported** (§6): forwarded, flushed in order when
//!   the device connects, or counted in exactly one `undelivered` report (queue full,
//!   grace expired, claim ended, shutdown, sent on a POS session that has been replaced).
//! - **Claim grace**: a claim is unattended while its holder has no POS session open on it
//!   and no control channel open (as told by [`DeviceShard::handle_client_presence`]); a
//!   claim made while the shard does not know the client as present starts unattended,
//!   so a presence message lost to a race still ends in a release, never a stuck claim.
//! - **Disabling a device ends its session**: its connection is closed 1008, its claim
//!   ends (POS session closed 4001, queued frames reported) and its session id answers
//!   4404 until it registers again (§4: a disabled device "has no session").

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Instant;

use crate::ids::{ClientKey, DeviceKey, Serial, SessionId};

use super::action::{Action, ClientEventKind, DropReason, Route};
use super::close;
use super::conn::ConnId;
use super::error::{ClaimError, SessionError};
use super::keyring::SessionKeyring;
use super::limits::RelayLimits;
use super::message::QueuedMessage;
use super::queue::{Count, OfflineQueue};
use super::tally::UndeliveredTally;
use super::timers::{Armed, TimerSet};

/// A granted claim (§4 `claimed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimGranted {
    /// The device's session: the POS opens `/cloud-connector/v1/session/<session_id>`.
    pub session_id: SessionId,
    /// Whether the device is connected right now.
    pub online: bool,
    /// §4 `pending_frames`: device messages queued for the claim holder's session.
    pub pending_frames: u64,
}

/// Counters for metrics: what left the shard without being delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Device → POS messages dropped (see the module docs for when).
    pub device_frames_dropped: u64,
    /// Their payload bytes.
    pub device_bytes_dropped: u64,
    /// POS → device messages reported `undelivered`.
    pub pos_frames_undelivered: u64,
    /// Their payload bytes.
    pub pos_bytes_undelivered: u64,
}

impl ShardStats {
    fn dropped(&mut self, count: Count) {
        self.device_frames_dropped = self.device_frames_dropped.saturating_add(count.frames);
        self.device_bytes_dropped = self.device_bytes_dropped.saturating_add(count.bytes);
    }
}

/// The claim on one device.
#[derive(Debug)]
struct Claim {
    client: ClientKey,
    /// The current POS session.
    pos_conn: Option<ConnId>,
    /// Since when the claim has been unattended (no POS session, no control channel).
    idle_since: Option<Instant>,
}

/// One device's session.
#[derive(Debug)]
struct Session<M> {
    device: DeviceKey,
    device_conn: Option<ConnId>,
    claim: Option<Claim>,
    /// POS → device, while the device is offline. Invariant: empty while `device_conn` is set.
    to_device: OfflineQueue<M>,
    /// Device → POS, while no POS session is open. Invariant: empty without a claim, and
    /// while the claim has a POS session.
    to_pos: OfflineQueue<M>,
    armed: Armed,
    /// §10 `last_seen`: when the device's connection last opened or closed here.
    last_seen: Option<Instant>,
}

/// A POS session connection, known from its open until its close.
#[derive(Debug)]
struct PosConn {
    session: SessionId,
    client: ClientKey,
    serial: Serial,
}

/// The state of the device sessions one shard owns. `M` is the io layer's message type.
#[derive(Debug)]
pub struct DeviceShard<M> {
    keyring: SessionKeyring,
    limits: RelayLimits,
    sessions: HashMap<SessionId, Session<M>>,
    claims_by_client: HashMap<ClientKey, BTreeSet<SessionId>>,
    present: HashSet<ClientKey>,
    pos_conns: HashMap<ConnId, PosConn>,
    /// §10 `last_seen` of devices whose session ended (disabled): kept so that they still
    /// say when they were last seen. Live sessions keep theirs in the session, so that an
    /// idle device costs no second map entry (issue 7's 2 KiB per idle connection).
    last_seen_ended: HashMap<DeviceKey, Instant>,
    timers: TimerSet,
    actions: VecDeque<Action<M>>,
    shutting_down: bool,
    stats: ShardStats,
    claims_ended: u64,
    /// §12: whether claims that start and end are announced ([`Action::ClaimChanged`]):
    /// a cluster node records them in the device's ownership record.
    announce_claims: bool,
}

fn one(len: usize) -> Count {
    Count {
        frames: 1,
        bytes: u64::try_from(len).unwrap_or(u64::MAX),
    }
}

/// The deadlines a session needs, from its state alone.
fn wanted<M: QueuedMessage>(s: &Session<M>, limits: &RelayLimits) -> Armed {
    let grace = |t: Instant| t.checked_add(limits.offline_grace);
    [
        s.to_device.oldest().and_then(grace),
        s.to_pos.oldest().and_then(grace),
        s.claim
            .as_ref()
            .and_then(|c| c.idle_since)
            .and_then(|t| t.checked_add(limits.claim_grace)),
    ]
}

impl<M: QueuedMessage> DeviceShard<M> {
    /// An empty shard state. Every shard of a relay gets a clone of the same keyring.
    pub fn new(keyring: SessionKeyring, limits: RelayLimits) -> Self {
        Self {
            keyring,
            limits,
            sessions: HashMap::new(),
            claims_by_client: HashMap::new(),
            present: HashSet::new(),
            pos_conns: HashMap::new(),
            last_seen_ended: HashMap::new(),
            timers: TimerSet::default(),
            actions: VecDeque::new(),
            shutting_down: false,
            stats: ShardStats::default(),
            claims_ended: 0,
            announce_claims: false,
        }
    }

    /// §12: from now on, claims that start and end are announced as
    /// [`Action::ClaimChanged`] (a cluster node keeps them where the device's next node
    /// finds them: "claims stay (they live in the cluster's store)").
    pub fn announce_claims(&mut self) {
        self.announce_claims = true;
    }

    /// §12: the device arrived from another node, where `client` held its claim: the claim
    /// holds here as it did there (the device must be registered here first). Not
    /// announced (the record it came from has it). The claim grace runs until the client
    /// shows up. `false` if the device has no session here or another claim holds it.
    pub fn restore_claim(&mut self, client: &ClientKey, device: &DeviceKey, now: Instant) -> bool {
        let announce = std::mem::replace(&mut self.announce_claims, false);
        let restored = self.handle_claim(client, device, now).is_ok();
        self.announce_claims = announce;
        restored
    }

    /// The bounds in force.
    pub fn limits(&self) -> &RelayLimits {
        &self.limits
    }

    /// The session id `device` has (or would have) on this relay.
    pub fn session_id(&self, device: &DeviceKey) -> SessionId {
        self.keyring.session_id(device)
    }

    /// §2: a device registered (credentials and device already checked by the caller).
    /// Creates its session if absent; idempotent. The device connection follows (§3).
    pub fn handle_register(&mut self, device: DeviceKey, _now: Instant) -> SessionId {
        let sid = self.keyring.session_id(&device);
        if !self.sessions.contains_key(&sid) {
            let last_seen = self.last_seen_ended.remove(&device);
            self.sessions.insert(
                sid.clone(),
                Session {
                    device,
                    device_conn: None,
                    claim: None,
                    to_device: OfflineQueue::default(),
                    to_pos: OfflineQueue::default(),
                    armed: [None; 3],
                    last_seen,
                },
            );
        }
        sid
    }

    /// §3: a device connection for `sid` was upgraded (token already checked).
    ///
    /// Replaces an older connection (closed 4000), flushes the messages the POS sent while
    /// the device was offline (in order, before anything else reaches the device), then
    /// tells the claim holder the device is online, if it was not.
    pub fn handle_device_connected(
        &mut self,
        sid: &SessionId,
        conn: ConnId,
        now: Instant,
    ) -> Result<(), SessionError> {
        let s = self
            .sessions
            .get_mut(sid)
            .ok_or_else(|| SessionError::UnknownSession {
                session_id: sid.clone(),
            })?;
        s.last_seen = Some(now);
        let old = s.device_conn.replace(conn);
        if let Some(old) = old.filter(|old| *old != conn) {
            // §3: "the old one is closed with 4000 (replaced)".
            self.actions.push_back(Action::CloseConn {
                conn: old,
                code: close::REPLACED,
                reason: "replaced",
            });
        }
        // §6: queued frames are "delivered first when the device is back".
        for message in s.to_device.drain() {
            self.actions.push_back(Action::SendToConn { conn, message });
        }
        let w = wanted(s, &self.limits);
        self.timers.rearm(sid, &mut s.armed, w);
        if old.is_none() {
            if let Some(claim) = &s.claim {
                // §4: device_status is pushed whenever a claimed device goes on- or offline.
                self.actions.push_back(Action::ClientEvent {
                    client: claim.client.clone(),
                    event: ClientEventKind::DeviceStatus {
                        serial: s.device.serial.clone(),
                        online: true,
                    },
                });
            }
        }
        Ok(())
    }

    /// The device connection `conn` closed. Ignored unless it is the current one: a replaced
    /// connection closing late must not mark the device offline.
    pub fn handle_device_disconnected(&mut self, sid: &SessionId, conn: ConnId, now: Instant) {
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        if s.device_conn != Some(conn) {
            return;
        }
        s.device_conn = None;
        s.last_seen = Some(now);
        if let Some(claim) = &s.claim {
            self.actions.push_back(Action::ClientEvent {
                client: claim.client.clone(),
                event: ClientEventKind::DeviceStatus {
                    serial: s.device.serial.clone(),
                    online: false,
                },
            });
        }
    }

    /// §4 `claim` (scope already checked by the caller: `not_found` is not decided here).
    ///
    /// Offline when the device has no session (never registered since start, or disabled);
    /// DeviceBusy when another client holds it; the same client again gets the same answer.
    pub fn handle_claim(
        &mut self,
        client: &ClientKey,
        device: &DeviceKey,
        now: Instant,
    ) -> Result<ClaimGranted, ClaimError> {
        let sid = self.keyring.session_id(device);
        let present = self.present.contains(client);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Err(ClaimError::Offline {
                serial: device.serial.clone(),
            });
        };
        match &s.claim {
            Some(claim) if claim.client != *client => {
                return Err(ClaimError::DeviceBusy {
                    serial: device.serial.clone(),
                })
            }
            Some(_) => {}
            None => {
                s.claim = Some(Claim {
                    client: client.clone(),
                    pos_conn: None,
                    idle_since: if present { None } else { Some(now) },
                });
                if self.announce_claims {
                    self.actions.push_back(Action::ClaimChanged {
                        device: device.clone(),
                        holder: Some(client.clone()),
                    });
                }
                let w = wanted(s, &self.limits);
                self.timers.rearm(&sid, &mut s.armed, w);
                self.claims_by_client
                    .entry(client.clone())
                    .or_default()
                    .insert(sid.clone());
            }
        }
        let online = s.device_conn.is_some();
        Ok(ClaimGranted {
            session_id: sid,
            online,
            pending_frames: s.to_pos.count().frames,
        })
    }

    /// §4 `release`: Ok when not claimed (or not even registered); DeviceBusy when another
    /// client holds it. Ending the claim closes its POS session (4001) and reports what the
    /// POS had queued for the device as `undelivered`.
    pub fn handle_release(
        &mut self,
        client: &ClientKey,
        device: &DeviceKey,
        _now: Instant,
    ) -> Result<(), ClaimError> {
        let sid = self.keyring.session_id(device);
        let holder = self
            .sessions
            .get(&sid)
            .and_then(|s| s.claim.as_ref())
            .map(|c| &c.client);
        match holder {
            None => return Ok(()),
            Some(holder) if holder != client => {
                return Err(ClaimError::DeviceBusy {
                    serial: device.serial.clone(),
                })
            }
            Some(_) => {}
        }
        let mut tally = UndeliveredTally::default();
        self.end_claim(&sid, close::CLAIM_ENDED, "claim released", &mut tally);
        self.emit(tally);
        Ok(())
    }

    /// §5: may `client` open the POS session `sid`? Ask before answering 101:
    /// UnknownSession → 404, NotClaimHolder → 403.
    pub fn check_pos_session(
        &self,
        sid: &SessionId,
        client: &ClientKey,
    ) -> Result<(), SessionError> {
        let s = self
            .sessions
            .get(sid)
            .ok_or_else(|| SessionError::UnknownSession {
                session_id: sid.clone(),
            })?;
        match &s.claim {
            Some(claim) if claim.client == *client => Ok(()),
            _ => Err(SessionError::NotClaimHolder {
                session_id: sid.clone(),
                client: client.clone(),
            }),
        }
    }

    /// §5: the claim holder's POS session `conn` on `sid` was upgraded.
    ///
    /// Replaces an older POS session of the claim (closed 4000) and flushes what the device
    /// sent meanwhile, in order. The io layer must report every opened POS connection
    /// closed again ([`Self::handle_pos_session_closed`]).
    pub fn handle_pos_session_opened(
        &mut self,
        sid: &SessionId,
        client: &ClientKey,
        conn: ConnId,
        _now: Instant,
    ) -> Result<(), SessionError> {
        self.check_pos_session(sid, client)?;
        let Some(s) = self.sessions.get_mut(sid) else {
            return Err(SessionError::UnknownSession {
                session_id: sid.clone(),
            });
        };
        let Some(claim) = s.claim.as_mut() else {
            return Err(SessionError::NotClaimHolder {
                session_id: sid.clone(),
                client: client.clone(),
            });
        };
        if let Some(old) = claim.pos_conn.replace(conn).filter(|old| *old != conn) {
            // §5: "A newer POS session for the same claim replaces the older one (closed with 4000)."
            self.actions.push_back(Action::CloseConn {
                conn: old,
                code: close::REPLACED,
                reason: "replaced",
            });
        }
        claim.idle_since = None;
        self.pos_conns.insert(
            conn,
            PosConn {
                session: sid.clone(),
                client: client.clone(),
                serial: s.device.serial.clone(),
            },
        );
        // §5: frames the device sent meanwhile "are delivered when the session opens".
        for message in s.to_pos.drain() {
            self.actions.push_back(Action::SendToConn { conn, message });
        }
        let w = wanted(s, &self.limits);
        self.timers.rearm(sid, &mut s.armed, w);
        Ok(())
    }

    /// Takes the device messages queued for the claim holder's session (§5), oldest first:
    /// a claim whose session turns reliable (§11) numbers and holds them itself.
    pub fn take_queued_to_pos(&mut self, sid: &SessionId) -> Vec<M> {
        let Some(s) = self.sessions.get_mut(sid) else {
            return Vec::new();
        };
        let taken: Vec<M> = s.to_pos.drain().collect();
        let w = wanted(s, &self.limits);
        self.timers.rearm(sid, &mut s.armed, w);
        taken
    }

    /// The POS session `conn` closed (whether current, replaced or of an ended claim).
    pub fn handle_pos_session_closed(&mut self, sid: &SessionId, conn: ConnId, now: Instant) {
        self.pos_conns.remove(&conn);
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        let Some(claim) = s.claim.as_mut().filter(|c| c.pos_conn == Some(conn)) else {
            return;
        };
        claim.pos_conn = None;
        if !self.present.contains(&claim.client) {
            claim.idle_since = Some(now);
        }
        let w = wanted(s, &self.limits);
        self.timers.rearm(sid, &mut s.armed, w);
    }

    /// A complete data message from the device connection `conn` of `sid`.
    ///
    /// Forwarded to the claim holder's POS session; queued while it has none (§5); dropped
    /// (see [`DropReason`]) when nobody can receive it.
    pub fn handle_message_from_device(
        &mut self,
        sid: &SessionId,
        conn: ConnId,
        message: M,
        now: Instant,
    ) -> Route<M> {
        let len = message.payload_len();
        let Some(s) = self.sessions.get_mut(sid) else {
            self.stats.dropped(one(len));
            return Route::Dropped(DropReason::UnknownSession);
        };
        let reason = if s.device_conn != Some(conn) {
            DropReason::StaleConnection
        } else if let Some(claim) = &s.claim {
            if let Some(pos) = claim.pos_conn {
                return Route::Forward { conn: pos, message };
            }
            if self.shutting_down {
                DropReason::ShuttingDown
            } else {
                match s.to_pos.push(message, now, &self.limits) {
                    Ok(()) => {
                        let w = wanted(s, &self.limits);
                        self.timers.rearm(sid, &mut s.armed, w);
                        return Route::Queued;
                    }
                    Err(_) => DropReason::QueueFull,
                }
            }
        } else {
            DropReason::NoClaim
        };
        tracing::debug!(session = %sid, ?reason, len, "device message dropped");
        self.stats.dropped(one(len));
        Route::Dropped(reason)
    }

    /// A complete data message from the POS session `conn` of `sid`.
    ///
    /// Forwarded to the device if it is online; queued while it is offline (§6); otherwise
    /// reported to the sending client as `undelivered` (one frame, its payload bytes) and
    /// answered [`Route::Rejected`]. A POS frame is never dropped without a report, except
    /// from a connection never opened as a POS session (an io-layer bug: nobody to report to).
    pub fn handle_message_from_pos(
        &mut self,
        sid: &SessionId,
        conn: ConnId,
        message: M,
        now: Instant,
    ) -> Route<M> {
        let len = message.payload_len();
        let Some(pos) = self.pos_conns.get(&conn) else {
            tracing::warn!(session = %sid, %conn, "message from an unknown POS connection");
            return Route::Dropped(DropReason::UnknownConnection);
        };
        let current = pos.session == *sid
            && self
                .sessions
                .get(sid)
                .and_then(|s| s.claim.as_ref())
                .is_some_and(|c| c.pos_conn == Some(conn));
        if !current {
            // A replaced session, or one whose claim ended: the frame is the client's, report it.
            let (client, serial) = (pos.client.clone(), pos.serial.clone());
            self.report(client, serial, one(len));
            return Route::Rejected;
        }
        let Some(s) = self.sessions.get_mut(sid) else {
            return Route::Dropped(DropReason::UnknownSession);
        };
        if let Some(device) = s.device_conn {
            return Route::Forward {
                conn: device,
                message,
            };
        }
        let Some(client) = s.claim.as_ref().map(|c| c.client.clone()) else {
            return Route::Dropped(DropReason::UnknownSession);
        };
        if !self.shutting_down && s.to_device.push(message, now, &self.limits).is_ok() {
            let w = wanted(s, &self.limits);
            self.timers.rearm(sid, &mut s.armed, w);
            return Route::Queued;
        }
        // §6: queue full (or shutting down): "reported to the POS with undelivered".
        let serial = s.device.serial.clone();
        self.report(client, serial, one(len));
        Route::Rejected
    }

    /// Expires what is due at `now`: queued messages past `offline_grace` (POS → device ones
    /// reported `undelivered`, summed per client and device) and unattended claims past
    /// `claim_grace` (ended like a release: POS session closed 4001, queue reported).
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut tally = UndeliveredTally::default();
        for sid in self.timers.due(now) {
            let Some(s) = self.sessions.get_mut(&sid) else {
                continue;
            };
            let expired = s.to_device.expire(now, self.limits.offline_grace);
            match &s.claim {
                Some(claim) => tally.add(&claim.client, &s.device.serial, expired),
                // Cannot happen: ending a claim empties the queue. Count it rather than lose it.
                None => self.stats.dropped(expired),
            }
            let dropped = s.to_pos.expire(now, self.limits.offline_grace);
            self.stats.dropped(dropped);
            let claim_due = s
                .claim
                .as_ref()
                .and_then(|c| c.idle_since)
                .and_then(|t| t.checked_add(self.limits.claim_grace))
                .is_some_and(|deadline| deadline <= now);
            let w = wanted(s, &self.limits);
            self.timers.rearm(&sid, &mut s.armed, w);
            if claim_due {
                // §4: "A claim ends ... when the POS's control channel and session both stay
                // closed for the claim grace period."
                self.end_claim(&sid, close::CLAIM_ENDED, "claim lost", &mut tally);
            }
        }
        self.emit(tally);
    }

    /// The next deadline: call [`Self::handle_timeout`] then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// A client's control-channel count went from 0 to more (`true`) or back to 0 (`false`),
    /// as counted on its home shard. Starts or stops the claim grace of its claims here.
    pub fn handle_client_presence(
        &mut self,
        client: &ClientKey,
        has_control_channel: bool,
        now: Instant,
    ) {
        if has_control_channel {
            self.present.insert(client.clone());
        } else {
            self.present.remove(client);
        }
        let Some(sids) = self.claims_by_client.get(client) else {
            return;
        };
        for sid in sids {
            let Some(s) = self.sessions.get_mut(sid) else {
                continue;
            };
            if let Some(claim) = s.claim.as_mut() {
                claim.idle_since = if has_control_channel || claim.pos_conn.is_some() {
                    None
                } else {
                    Some(claim.idle_since.unwrap_or(now))
                };
            }
            let w = wanted(s, &self.limits);
            self.timers.rearm(sid, &mut s.armed, w);
        }
    }

    /// §9: the device was disabled. Closes its connection (1008), tells the claim holder it
    /// is offline, ends its claim and its session (§4: it answers `offline` until it
    /// registers again, and its session id answers 4404).
    pub fn handle_device_disabled(&mut self, device: &DeviceKey) {
        self.end_session(
            device,
            (close::POLICY, "device disabled"),
            (close::CLAIM_ENDED, "device disabled"),
        );
    }

    /// §12: the device connected to another node of the cluster, which owns its tsn now.
    /// Its connection here closes with 4000, the claim holder hears it went offline here,
    /// and the claim and session here end: their POS session closes with 1012 (its
    /// queued messages reported `undelivered`), and the POS claims again, from wherever
    /// it is, on the device's new node.
    pub fn handle_device_moved(&mut self, device: &DeviceKey) {
        self.end_session(
            device,
            (
                close::REPLACED,
                "replaced: the device connected to another relay node",
            ),
            (close::SERVICE_RESTART, close::MOVED_REASON),
        );
    }

    /// §12: this node lost its lease (paused past `--lease-ttl`, or its record was taken)
    /// and `device` is not known to have connected elsewhere: this node acts for it no
    /// more. Its connection and POS session close with 1012 (queued POS messages
    /// reported `undelivered`) and its session ends: the device connects again (here once
    /// the node holds a new lease, or on another node) and its POS claims again.
    pub fn handle_lease_lost(&mut self, device: &DeviceKey) {
        self.end_session(
            device,
            (
                close::SERVICE_RESTART,
                "this relay node lost its cluster lease: reconnect",
            ),
            (
                close::SERVICE_RESTART,
                "this relay node lost its cluster lease: claim again",
            ),
        );
    }

    /// Ends `device`'s session here: its connection closes with `device_close`, the claim
    /// holder is told it is offline, its claim ends with `claim_close` on the POS session.
    fn end_session(
        &mut self,
        device: &DeviceKey,
        device_close: (u16, &'static str),
        claim_close: (u16, &'static str),
    ) {
        let sid = self.keyring.session_id(device);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(conn) = s.device_conn.take() {
            self.actions.push_back(Action::CloseConn {
                conn,
                code: device_close.0,
                reason: device_close.1,
            });
            if let Some(claim) = &s.claim {
                self.actions.push_back(Action::ClientEvent {
                    client: claim.client.clone(),
                    event: ClientEventKind::DeviceStatus {
                        serial: s.device.serial.clone(),
                        online: false,
                    },
                });
            }
        }
        let mut tally = UndeliveredTally::default();
        self.end_claim(&sid, claim_close.0, claim_close.1, &mut tally);
        if let Some(mut s) = self.sessions.remove(&sid) {
            self.stats.dropped(s.to_pos.clear());
            self.timers.rearm(&sid, &mut s.armed, [None; 3]);
            if let Some(at) = s.last_seen {
                self.last_seen_ended.insert(s.device, at);
            }
        }
        self.emit(tally);
    }

    /// §9: the client was deleted; its tokens stop working. Ends all its claims here,
    /// closing their POS sessions with 1008 and reporting what they had queued.
    pub fn handle_client_deleted(&mut self, client: &ClientKey) {
        self.present.remove(client);
        let sids: Vec<SessionId> = self
            .claims_by_client
            .get(client)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let mut tally = UndeliveredTally::default();
        for sid in sids {
            self.end_claim(&sid, close::POLICY, "client deleted", &mut tally);
        }
        self.emit(tally);
    }

    /// §6 shutdown: every POS → device message still queued is reported `undelivered`
    /// (summed per client and device); device → POS queues are dropped. From now on nothing
    /// is queued: a POS message for an offline device is reported at once. The io layer
    /// drains [`Self::poll_action`] and carries the reports before it closes connections
    /// with 1001.
    pub fn handle_shutdown(&mut self, _now: Instant) {
        self.shutting_down = true;
        let mut tally = UndeliveredTally::default();
        for (sid, s) in &mut self.sessions {
            let queued = s.to_device.clear();
            match &s.claim {
                Some(claim) => tally.add(&claim.client, &s.device.serial, queued),
                None => self.stats.dropped(queued),
            }
            self.stats.dropped(s.to_pos.clear());
            let w = wanted(s, &self.limits);
            self.timers.rearm(sid, &mut s.armed, w);
        }
        self.emit(tally);
    }

    /// The next output, in the order produced.
    pub fn poll_action(&mut self) -> Option<Action<M>> {
        self.actions.pop_front()
    }

    /// The devices that have a session here.
    pub fn devices(&self) -> Vec<DeviceKey> {
        self.sessions.values().map(|s| s.device.clone()).collect()
    }

    /// Whether any device has a session here.
    pub fn has_sessions(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// Whether `device` has a live connection.
    pub fn device_online(&self, device: &DeviceKey) -> bool {
        self.sessions
            .get(&self.keyring.session_id(device))
            .is_some_and(|s| s.device_conn.is_some())
    }

    /// §10 `last_seen`: when `device`'s connection last opened or closed here; `None` if it
    /// has not connected since start. (While it is online, §10 says "now": the caller's.)
    pub fn device_last_seen(&self, device: &DeviceKey) -> Option<Instant> {
        match self.sessions.get(&self.keyring.session_id(device)) {
            Some(s) => s.last_seen,
            None => self.last_seen_ended.get(device).copied(),
        }
    }

    /// The device's live connection, if any.
    pub fn device_conn(&self, device: &DeviceKey) -> Option<ConnId> {
        self.sessions
            .get(&self.keyring.session_id(device))
            .and_then(|s| s.device_conn)
    }

    /// Whether `device` registered since start (and was not disabled since): claimable.
    pub fn device_registered(&self, device: &DeviceKey) -> bool {
        self.sessions.contains_key(&self.keyring.session_id(device))
    }

    /// What the POS has queued for `device` while it is offline (for metrics and the admin API).
    pub fn queued_to_device(&self, device: &DeviceKey) -> Count {
        self.sessions
            .get(&self.keyring.session_id(device))
            .map(|s| s.to_device.count())
            .unwrap_or_default()
    }

    /// The client holding the claim on `device`.
    pub fn claimed_by(&self, device: &DeviceKey) -> Option<&ClientKey> {
        self.sessions
            .get(&self.keyring.session_id(device))
            .and_then(|s| s.claim.as_ref())
            .map(|c| &c.client)
    }

    /// The device a live session id belongs to.
    pub fn session_device(&self, sid: &SessionId) -> Option<&DeviceKey> {
        self.sessions.get(sid).map(|s| &s.device)
    }

    /// How many claims have ended so far (a cheap "did any end?" for the io layer).
    pub fn claims_ended(&self) -> u64 {
        self.claims_ended
    }

    /// What left the shard undelivered so far.
    pub fn stats(&self) -> ShardStats {
        self.stats
    }

    /// Ends the claim on `sid`: closes its POS session, counts its POS → device queue into
    /// `tally`, drops its device → POS queue.
    fn end_claim(
        &mut self,
        sid: &SessionId,
        code: u16,
        reason: &'static str,
        tally: &mut UndeliveredTally,
    ) {
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        let Some(claim) = s.claim.take() else {
            return;
        };
        self.claims_ended = self.claims_ended.wrapping_add(1);
        if self.announce_claims {
            self.actions.push_back(Action::ClaimChanged {
                device: s.device.clone(),
                holder: None,
            });
        }
        if let Some(conn) = claim.pos_conn {
            self.actions
                .push_back(Action::CloseConn { conn, code, reason });
        }
        tally.add(&claim.client, &s.device.serial, s.to_device.clear());
        self.stats.dropped(s.to_pos.clear());
        let w = wanted(s, &self.limits);
        self.timers.rearm(sid, &mut s.armed, w);
        if let Some(set) = self.claims_by_client.get_mut(&claim.client) {
            set.remove(sid);
            if set.is_empty() {
                self.claims_by_client.remove(&claim.client);
            }
        }
    }

    /// Reports `count` undelivered POS frames to `client` at once.
    fn report(&mut self, client: ClientKey, serial: Serial, count: Count) {
        let mut tally = UndeliveredTally::default();
        tally.add(&client, &serial, count);
        self.emit(tally);
    }

    fn emit(&mut self, tally: UndeliveredTally) {
        for (client, event) in tally.into_events() {
            if let ClientEventKind::Undelivered {
                serial,
                frames,
                bytes,
            } = &event
            {
                self.stats.pos_frames_undelivered =
                    self.stats.pos_frames_undelivered.saturating_add(*frames);
                self.stats.pos_bytes_undelivered =
                    self.stats.pos_bytes_undelivered.saturating_add(*bytes);
                // §5a: "when frames that this client sent are undeliverable (§6) while none
                // of its control channels is open, the session is closed with 4002".
                if !self.present.contains(&client) {
                    let device = DeviceKey {
                        domain: client.domain.clone(),
                        serial: serial.clone(),
                    };
                    let session = self
                        .sessions
                        .get(&self.keyring.session_id(&device))
                        .and_then(|s| s.claim.as_ref())
                        .filter(|c| c.client == client)
                        .and_then(|c| c.pos_conn);
                    if let Some(conn) = session {
                        self.actions.push_back(Action::CloseUndelivered {
                            conn,
                            count: Count {
                                frames: *frames,
                                bytes: *bytes,
                            },
                        });
                    }
                }
            }
            self.actions
                .push_back(Action::ClientEvent { client, event });
        }
    }
}
