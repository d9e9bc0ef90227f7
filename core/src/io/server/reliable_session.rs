//! §11 reliable sessions (`posrelay.reliable.v1`) on one node: the io side of
//! [`crate::reliable::ReliableClaim`].
//!
//! A POS session whose upgrade selected `posrelay.reliable.v1` ([`SessionMode::Reliable`])
//! makes its claim reliable: the shard that owns the device keeps a [`ReliableClaim`]
//! beside the claim of the relay state ([`crate::relay::DeviceShard`]), and from then on
//! every message of that claim, both ways, goes through it instead of the plain path:
//!
//! - the POS session's messages: [`on_pos_message`]; the device's: [`on_device_message`]
//!   (which answers `None`, at the cost of one `is_empty`, for devices without one);
//! - what the claim asks to be made durable is committed off the shard, on its blocking
//!   pool, all claims of the shard together (group commit: what arrives while one commit
//!   runs goes into the next), through the node's [`ReliableLog`]; then
//!   [`ReliableClaim::handle_logged`];
//! - its flows ([`ReliableClaim::device_flow`], [`ReliableClaim::pos_flow`]) pause reading
//!   from the device or the POS ([`Next::Until`]);
//! - the claim of the relay state stays the truth about who holds the device: when it ends
//!   (release, claim grace, device disabled, client deleted), [`check_claims`] (run after
//!   every [`ShardCtx::drive`]) ends the reliable claim too, and what it cannot report by
//!   number goes to the client's control channels (§4 `undelivered`);
//! - at start, [`restore`] puts back every reliable claim of the log that this shard owns,
//!   with its claim in the relay state, the claim grace counted from the restart (§11);
//! - on shutdown, [`flushed`] waits until every batch is durable: nothing of a reliable
//!   claim is reported undelivered, it survives the restart.
//!
//! A plain session pays nothing: a device message asks `claims.is_empty()` once.

use super::conn::Next;
use super::metrics::ShardMetrics;
use super::shard::ShardCtx;
use crate::ids::{ClientKey, DeviceKey, SessionId};
use crate::proto::{Message, MessageKind as WireKind, Payload};
use crate::relay::{close, ConnId, MessageKind, RelayedMessage};
use crate::reliable::{
    ClaimRecord, ClaimSnapshot, Flow, LogBatch, LogRecord, ReliableClaim, ReliableEvent,
    ReliableLimits, ReliableLog, Transmit, SUBPROTOCOL,
};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Whether a POS session is plain (§5) or reliable (§11), as its upgrade selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionMode {
    /// Frames relayed verbatim.
    Plain,
    /// `posrelay.reliable.v1`: §11 envelopes.
    Reliable,
}

impl SessionMode {
    /// The mode the selected subprotocol (if any) makes.
    pub fn of(selected: Option<&str>) -> SessionMode {
        if selected == Some(SUBPROTOCOL) {
            SessionMode::Reliable
        } else {
            SessionMode::Plain
        }
    }
}

/// How long a failed commit waits before it is tried again.
const RETRY: Duration = Duration::from_millis(200);

/// One claim, and who waits for its flows.
struct Slot {
    /// Tells this claim's batches from those of an earlier claim on the same device.
    entry: u64,
    claim: ReliableClaim,
    waiters: Vec<Waker>,
}

/// The reliable claims of one shard, and their log.
pub(crate) struct ReliableClaims {
    log: Arc<dyn ReliableLog + Send + Sync>,
    limits: ReliableLimits,
    claims: HashMap<DeviceKey, Slot>,
    next_entry: u64,
    /// Batches taken, not yet committed, oldest first.
    pending: Vec<(u64, LogBatch)>,
    /// A commit is running (its task takes what is pending when it finishes).
    committing: bool,
    /// The claims (by entry) whose batches the running commit writes.
    in_flight: Vec<u64>,
    /// Reports of ended claims, held until the end is durable: a restart must not bring
    /// back messages already reported undelivered.
    deferred: Vec<(u64, ClientKey, DeviceKey, ReliableEvent)>,
    /// Waiting for every batch to be durable (the drain).
    flush_waiters: Vec<Waker>,
    /// Commit now even if only the POS's acknowledgements wait (the drain, or they have
    /// waited [`ACKS_WAIT`]).
    flush_now: bool,
    /// A timer runs to commit the acknowledgements that wait alone.
    acks_timer: bool,
    /// [`crate::relay::DeviceShard::claims_ended`] when last looked at.
    claims_ended_seen: u64,
}

impl ReliableClaims {
    pub fn new(log: Arc<dyn ReliableLog + Send + Sync>, limits: ReliableLimits) -> ReliableClaims {
        ReliableClaims {
            log,
            limits,
            claims: HashMap::new(),
            next_entry: 0,
            pending: Vec::new(),
            committing: false,
            in_flight: Vec::new(),
            deferred: Vec::new(),
            flush_waiters: Vec::new(),
            flush_now: false,
            acks_timer: false,
            claims_ended_seen: 0,
        }
    }

    /// Whether batches of the claim `entry` are not yet durable.
    fn unwritten(&self, entry: u64) -> bool {
        self.in_flight.contains(&entry) || self.pending.iter().any(|(e, _)| *e == entry)
    }

    fn insert(&mut self, device: DeviceKey, claim: ReliableClaim) {
        self.next_entry += 1;
        let slot = Slot {
            entry: self.next_entry,
            claim,
            waiters: Vec::new(),
        };
        if let Some(old) = self.claims.insert(device, slot) {
            for w in old.waiters {
                w.wake();
            }
        }
    }

    fn live(&mut self, device: &DeviceKey) -> Option<&mut ReliableClaim> {
        self.claims
            .get_mut(device)
            .map(|s| &mut s.claim)
            .filter(|c| !c.is_ended())
    }
}

/// What one claim asked of the io, taken out of the shard's state before it is done (the
/// state is not borrowed while outboxes and the coordinator are).
#[derive(Default)]
struct Work {
    transmits: Vec<(DeviceKey, Transmit)>,
    events: Vec<(ClientKey, DeviceKey, ReliableEvent)>,
}

/// Takes what `device`'s claim produced: its log into the pending batches (a commit is
/// started if none runs), its transmits and events into `work`; wakes its flow waiters;
/// forgets an ended claim once its last batch is durable.
fn take_outputs(rs: &mut ReliableClaims, device: &DeviceKey, work: &mut Work) {
    take_claim_outputs(rs, device, work);
    // Reports go out once everything their claim logged before them is durable.
    if !rs.deferred.is_empty() {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut rs.deferred)
            .into_iter()
            .partition(|(e, ..)| !rs.unwritten(*e));
        rs.deferred = waiting;
        work.events
            .extend(ready.into_iter().map(|(_, c, d, ev)| (c, d, ev)));
    }
}

fn take_claim_outputs(rs: &mut ReliableClaims, device: &DeviceKey, work: &mut Work) {
    let Some(slot) = rs.claims.get_mut(device) else {
        return;
    };
    while let Some(batch) = slot.claim.poll_log() {
        rs.pending.push((slot.entry, batch));
    }
    while let Some(t) = slot.claim.poll_transmit() {
        work.transmits.push((device.clone(), t));
    }
    let entry = slot.entry;
    while let Some(event) = slot.claim.poll_event() {
        let record = slot.claim.record();
        rs.deferred
            .push((entry, record.client.clone(), record.device.clone(), event));
    }
    for w in slot.waiters.drain(..) {
        w.wake();
    }
    if slot.claim.is_ended() && !rs.unwritten(entry) {
        rs.claims.remove(device);
    }
}

/// Carries out `work` (and what the writes it makes lead to), then starts a commit if
/// batches wait and none runs.
fn carry(ctx: &Rc<ShardCtx>, mut work: Work) {
    let now = Instant::now();
    let mut routed_events = false;
    loop {
        let mut written: Vec<(DeviceKey, ConnId, crate::reliable::Seq)> = Vec::new();
        for (device, t) in work.transmits.drain(..) {
            match t {
                Transmit::Pos { conn, envelope } => {
                    if let Some(ob) = ctx.outbox(conn) {
                        let message = Message {
                            kind: WireKind::Text,
                            payload: Payload::Single(envelope),
                        };
                        let _ = ShardCtx::push_message(&ob, &message, None);
                    }
                }
                Transmit::ClosePos { conn, code, reason } => {
                    tracing::info!(tsn = %device.serial, conn = conn.0, code, %reason, "closing a reliable session");
                    ctx.close_conn(conn, code, close_reason(code));
                }
                Transmit::Device { conn, seq, message } => {
                    let len = message.payload.len() as u64;
                    let taken = ctx.outbox(conn).is_some_and(|ob| {
                        ShardCtx::push_message(&ob, &to_wire(message), None).is_ok()
                    });
                    if taken {
                        ShardMetrics::add(&ctx.metrics.frames_to_device, 1);
                        ShardMetrics::add(&ctx.metrics.bytes_to_device, len);
                        written.push((device, conn, seq));
                    }
                    // Not taken: the connection is gone; its close reports it by number.
                }
            }
        }
        if !work.events.is_empty() {
            routed_events = true;
            let mut coord = ctx.coord.borrow_mut();
            for (client, device, ReliableEvent::Undelivered(count)) in work.events.drain(..) {
                coord.handle_client_undelivered(client, &device, count, now);
            }
        }
        if written.is_empty() {
            break;
        }
        // Taken by the device's outbox, which its socket writes next, in order.
        let mut rs = ctx.reliable.borrow_mut();
        for (device, conn, seq) in written {
            if let Some(c) = rs.live(&device) {
                c.handle_device_written(conn, seq, now);
            }
            take_outputs(&mut rs, &device, &mut work);
        }
    }
    schedule_commit(ctx);
    if routed_events {
        ctx.drive();
    }
}

/// A close reason the outbox can keep (the claim's own reason is logged).
fn close_reason(code: u16) -> &'static str {
    match code {
        close::RESUME_FAILED => "resume failed",
        close::REPLACED => "replaced",
        close::CLAIM_ENDED => "claim ended",
        close::INTERNAL_ERROR => "storage failure: resume later",
        close::POLICY => "client deleted",
        _ => "reliable session protocol error",
    }
}

fn to_wire(message: RelayedMessage) -> Message {
    Message {
        kind: match message.kind {
            MessageKind::Text => WireKind::Text,
            MessageKind::Binary => WireKind::Binary,
        },
        payload: Payload::Single(message.payload),
    }
}

fn from_wire(message: &Message) -> RelayedMessage {
    RelayedMessage {
        kind: match message.kind {
            WireKind::Text => MessageKind::Text,
            WireKind::Binary => MessageKind::Binary,
        },
        payload: message.payload.to_bytes(),
    }
}

/// Runs `f` on `device`'s live claim, then carries out what it produced. `false` when the
/// device has no live reliable claim.
fn with_claim(ctx: &Rc<ShardCtx>, device: &DeviceKey, f: impl FnOnce(&mut ReliableClaim)) -> bool {
    let mut work = Work::default();
    {
        let mut rs = ctx.reliable.borrow_mut();
        let Some(claim) = rs.live(device) else {
            return false;
        };
        f(claim);
        take_outputs(&mut rs, device, &mut work);
    }
    carry(ctx, work);
    true
}

// ------------------------------------------------------------------------- POS sessions

/// Before a reliable POS session `sid` of `client` on `device` is registered with the
/// relay state: makes sure the claim is reliable (a first reliable session creates its
/// [`ReliableClaim`]; an ended one, or one of another client, is replaced), and numbers the
/// device messages the relay state kept for the claim holder (§5), so that none reaches
/// the reliable session unwrapped.
pub(crate) fn session_opening(
    ctx: &Rc<ShardCtx>,
    sid: &SessionId,
    device: &DeviceKey,
    client: &ClientKey,
) {
    let now = Instant::now();
    let mut work = Work::default();
    {
        let mut rs = ctx.reliable.borrow_mut();
        let current = rs
            .claims
            .get(device)
            .is_some_and(|s| !s.claim.is_ended() && s.claim.record().client == *client);
        if !current {
            let record = ClaimRecord {
                device: device.clone(),
                client: client.clone(),
                session_id: sid.clone(),
            };
            let limits = rs.limits;
            // What an ended claim still has to log was taken already (take_outputs runs
            // after every call): the new claim's records follow it.
            rs.insert(device.clone(), ReliableClaim::new(record, limits));
            tracing::info!(tsn = %device.serial, domain = %device.domain, client = %client.client_id, "claim is reliable from now on");
        }
        let backlog = ctx.coord.borrow_mut().devices_mut().take_queued_to_pos(sid);
        let device_conn = ctx.coord.borrow().devices().device_conn(device);
        if let Some(claim) = rs.live(device) {
            if let Some(conn) = device_conn {
                claim.handle_device_connected(conn, now);
            }
            for message in &backlog {
                let _ = claim.handle_device_backlog(from_wire(message), now);
            }
        }
        take_outputs(&mut rs, device, &mut work);
    }
    carry(ctx, work);
}

/// The reliable POS session `conn` on `device` is open: its first message must be
/// `resume` (§11).
pub(crate) fn session_opened(ctx: &Rc<ShardCtx>, device: &DeviceKey, conn: ConnId) {
    with_claim(ctx, device, |c| {
        c.handle_session_opened(conn, Instant::now())
    });
}

/// The reliable POS session `conn` closed.
pub(crate) fn session_closed(ctx: &Rc<ShardCtx>, device: &DeviceKey, conn: ConnId) {
    with_claim(ctx, device, |c| {
        c.handle_session_closed(conn, Instant::now())
    });
}

/// A whole message from the reliable POS session `conn`; says what to wait for before
/// reading on (the POS window, §11 flow control).
pub(crate) fn on_pos_message(
    ctx: &Rc<ShardCtx>,
    device: &DeviceKey,
    conn: ConnId,
    message: Message,
    received: Instant,
) -> Next {
    let kind = match message.kind {
        WireKind::Text => MessageKind::Text,
        WireKind::Binary => MessageKind::Binary,
    };
    let payload = message.payload.to_bytes();
    drop(message);
    let mut failed = None;
    let known = with_claim(ctx, device, |c| {
        failed = c.handle_pos_message(conn, kind, payload, received).err();
    });
    if !known {
        // The claim ended under the session (its close is on its way).
        return Next::Read;
    }
    if let Some(err) = failed {
        tracing::info!(tsn = %device.serial, conn = conn.0, close_code = err.close_code(), error = %err, "reliable session: bad input");
    }
    wait_for(ctx, device, |c| c.pos_flow())
}

// ------------------------------------------------------------------------- the device

/// The device connection `conn` is open.
pub(crate) fn device_connected(ctx: &Rc<ShardCtx>, device: &DeviceKey, conn: ConnId) {
    if ctx.reliable.borrow().claims.is_empty() {
        return;
    }
    with_claim(ctx, device, |c| {
        c.handle_device_connected(conn, Instant::now())
    });
}

/// The device connection `conn` closed.
pub(crate) fn device_disconnected(ctx: &Rc<ShardCtx>, device: &DeviceKey, conn: ConnId) {
    if ctx.reliable.borrow().claims.is_empty() {
        return;
    }
    with_claim(ctx, device, |c| {
        c.handle_device_disconnected(conn, Instant::now())
    });
}

/// A whole message from the device connection `conn`: numbered and held by the reliable
/// claim, and sent to the POS once durable. `None` when the device has no reliable claim
/// (the plain path takes it).
pub(crate) fn on_device_message(
    ctx: &Rc<ShardCtx>,
    device: &DeviceKey,
    conn: ConnId,
    message: &Message,
    received: Instant,
) -> Option<Next> {
    if ctx.reliable.borrow().claims.is_empty() {
        return None;
    }
    let relayed = from_wire(message);
    let known = with_claim(ctx, device, |c| {
        if c.handle_device_message(conn, relayed, received).is_none() {
            tracing::debug!(
                conn = conn.0,
                "message from a replaced device connection dropped"
            );
        }
    });
    known.then(|| wait_for(ctx, device, |c| c.device_flow()))
}

/// Reads on at once while `flow` is open; otherwise waits until it is (or the claim goes).
fn wait_for(ctx: &Rc<ShardCtx>, device: &DeviceKey, flow: fn(&ReliableClaim) -> Flow) -> Next {
    let paused = ctx
        .reliable
        .borrow_mut()
        .live(device)
        .is_some_and(|c| flow(c) == Flow::Paused);
    if !paused {
        return Next::Read;
    }
    let ctx = ctx.clone();
    let device = device.clone();
    Next::Until(Box::pin(std::future::poll_fn(move |cx| {
        let mut rs = ctx.reliable.borrow_mut();
        let Some(slot) = rs.claims.get_mut(&device) else {
            return Poll::Ready(());
        };
        if slot.claim.is_ended() || flow(&slot.claim) == Flow::Open {
            return Poll::Ready(());
        }
        slot.waiters.push(cx.waker().clone());
        Poll::Pending
    })))
}

// ------------------------------------------------------------------------- claims

/// Ends the reliable claims whose claim the relay state no longer has for their client
/// (released, claim grace run out, device disabled, client deleted). Called after every
/// [`ShardCtx::drive`]; one `is_empty` when there are none.
pub(crate) fn check_claims(ctx: &Rc<ShardCtx>) {
    {
        let mut rs = ctx.reliable.borrow_mut();
        if rs.claims.is_empty() {
            return;
        }
        let ended = ctx.coord.borrow().devices().claims_ended();
        if ended == rs.claims_ended_seen {
            return;
        }
        rs.claims_ended_seen = ended;
    }
    let gone: Vec<DeviceKey> = {
        let rs = ctx.reliable.borrow();
        let coord = ctx.coord.borrow();
        rs.claims
            .iter()
            .filter(|(_, s)| !s.claim.is_ended())
            .filter(|(d, s)| coord.devices().claimed_by(d) != Some(&s.claim.record().client))
            .map(|(d, _)| d.clone())
            .collect()
    };
    for device in gone {
        tracing::info!(tsn = %device.serial, domain = %device.domain, "reliable claim ended");
        with_claim(ctx, &device, |c| {
            c.handle_claim_ended(close::CLAIM_ENDED, "claim ended", Instant::now())
        });
    }
}

/// At start: every reliable claim of the log that this shard owns comes back, with its
/// claim in the relay state (its grace counted from now, §11) and its session, so that
/// the POS can resume before the device is back.
pub(crate) fn restore(ctx: &Rc<ShardCtx>, snapshots: Vec<ClaimSnapshot>) {
    let now = Instant::now();
    for snapshot in snapshots {
        let record = snapshot.record.clone();
        let device = record.device.clone();
        let sid = {
            let mut coord = ctx.coord.borrow_mut();
            let devices = coord.devices_mut();
            let sid = devices.handle_register(device.clone(), now);
            if let Err(e) = devices.handle_claim(&record.client, &device, now) {
                tracing::warn!(tsn = %device.serial, error = %e, "a reliable claim could not be restored");
                continue;
            }
            sid
        };
        if sid != record.session_id {
            // The session key changed (a store without it): the POS must claim again.
            tracing::warn!(tsn = %device.serial, "a restored reliable claim has a new session_id: its POS must claim again");
        }
        let limits = ctx.reliable.borrow().limits;
        let claim = ReliableClaim::restore(snapshot, limits, now);
        tracing::info!(tsn = %device.serial, domain = %device.domain, client = %record.client.client_id, held = claim.held_bytes(), "reliable claim restored");
        let mut work = Work::default();
        {
            let mut rs = ctx.reliable.borrow_mut();
            rs.insert(device.clone(), claim);
            take_outputs(&mut rs, &device, &mut work);
        }
        carry(ctx, work);
    }
    ctx.drive();
}

/// The next queue deadline of the shard's reliable claims: run their timeouts when due
/// (the shard's tick).
pub(crate) fn tick(ctx: &Rc<ShardCtx>) {
    {
        let rs = ctx.reliable.borrow();
        let held: usize = rs.claims.values().map(|s| s.claim.held_bytes()).sum();
        let m = &ctx.metrics;
        m.reliable_claims
            .store(rs.claims.len() as i64, Ordering::Relaxed);
        m.reliable_held_bytes.store(held as i64, Ordering::Relaxed);
        if rs.claims.is_empty() {
            return;
        }
    }
    let now = Instant::now();
    let due: Vec<DeviceKey> = ctx
        .reliable
        .borrow()
        .claims
        .iter()
        .filter(|(_, s)| s.claim.poll_timeout().is_some_and(|t| t <= now))
        .map(|(d, _)| d.clone())
        .collect();
    for device in due {
        with_claim(ctx, &device, |c| c.handle_timeout(now));
    }
}

// ------------------------------------------------------------------------- the log

/// How long the POS's acknowledgements may wait alone for a commit (see [`only_acks`]).
const ACKS_WAIT: Duration = Duration::from_millis(20);

/// Whether a batch only records what the POS acknowledged (device messages processed,
/// reports read). Nothing waits on those being durable, and losing them in a crash
/// loses nothing (§11: the POS's `resume` names what it processed, and a report read
/// again is a repeat it drops), so they do not start a commit of their own: they go with
/// the next one, or after [`ACKS_WAIT`]. A round trip then costs the log two commits on
/// its path instead of three or four in a row (each a quorum write in a cluster).
fn only_acks(batch: &LogBatch) -> bool {
    batch.records.iter().all(|r| {
        matches!(
            r,
            LogRecord::DeviceAcked { .. } | LogRecord::ReportConfirmed { .. }
        )
    })
}

/// Whether what is pending should be committed now (not only acknowledgements, unless
/// they waited long enough or the drain asks).
fn commit_due(rs: &ReliableClaims) -> bool {
    !rs.pending.is_empty() && (rs.flush_now || !rs.pending.iter().all(|(_, b)| only_acks(b)))
}

/// Starts the commit task if batches are due and none runs; acknowledgements waiting
/// alone get a timer.
fn schedule_commit(ctx: &Rc<ShardCtx>) {
    {
        let mut rs = ctx.reliable.borrow_mut();
        if rs.committing || rs.pending.is_empty() {
            return;
        }
        if !commit_due(&rs) {
            arm_acks_timer(ctx, &mut rs);
            return;
        }
        rs.committing = true;
    }
    glommio::spawn_local(commit_loop(ctx.clone())).detach();
}

/// Commits the acknowledgements waiting alone after [`ACKS_WAIT`].
fn arm_acks_timer(ctx: &Rc<ShardCtx>, rs: &mut ReliableClaims) {
    if rs.acks_timer {
        return;
    }
    rs.acks_timer = true;
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        glommio::timer::sleep(ACKS_WAIT).await;
        {
            let mut rs = ctx.reliable.borrow_mut();
            rs.acks_timer = false;
            rs.flush_now = true;
        }
        schedule_commit(&ctx);
    })
    .detach();
}

/// Commits what is pending, all of it in one transaction, on the blocking pool (it waits
/// for the disk); then tells each claim; again while batches came in meanwhile.
async fn commit_loop(ctx: Rc<ShardCtx>) {
    loop {
        let (log, taken) = {
            let mut rs = ctx.reliable.borrow_mut();
            if !commit_due(&rs) {
                rs.committing = false;
                if rs.pending.is_empty() {
                    for w in rs.flush_waiters.drain(..) {
                        w.wake();
                    }
                } else {
                    arm_acks_timer(&ctx, &mut rs);
                }
                return;
            }
            // The drain's (or the timer's) request is served by this commit.
            rs.flush_now = !rs.flush_waiters.is_empty();
            let taken = std::mem::take(&mut rs.pending);
            rs.in_flight = taken.iter().map(|(e, _)| *e).collect();
            (rs.log.clone(), taken)
        };
        let (entries, batches): (Vec<u64>, Vec<LogBatch>) = taken.into_iter().unzip();
        let started = Instant::now();
        let (result, batches) = glommio::executor()
            .spawn_blocking(move || {
                let result = log.commit_owned(&batches);
                (result, batches)
            })
            .await;
        let now = Instant::now();
        match result {
            Ok(moved) => {
                tracing::trace!(
                    batches = batches.len(),
                    micros = now.duration_since(started).as_micros() as u64,
                    "reliable log committed"
                );
                let mut work = Work::default();
                {
                    let mut rs = ctx.reliable.borrow_mut();
                    rs.in_flight.clear();
                    for device in &moved {
                        moved_away(&mut rs, device, now, &mut work);
                    }
                    for (entry, batch) in entries.iter().zip(batches) {
                        let device = batch.claim.clone();
                        if moved.contains(&device) {
                            continue;
                        }
                        if let Some(slot) = rs.claims.get_mut(&device) {
                            if slot.entry == *entry {
                                slot.claim.handle_logged(batch.ticket, now);
                            }
                        }
                        take_outputs(&mut rs, &device, &mut work);
                    }
                }
                carry(&ctx, work);
            }
            Err(e) => {
                tracing::error!(error = %e, batches = batches.len(), "cannot write the reliable log: sessions closed (1011), retrying");
                let mut work = Work::default();
                {
                    let mut rs = ctx.reliable.borrow_mut();
                    rs.in_flight.clear();
                    let mut again: Vec<(u64, LogBatch)> =
                        entries.into_iter().zip(batches).collect();
                    for (_, batch) in &again {
                        let device = batch.claim.clone();
                        if let Some(c) = rs.live(&device) {
                            c.handle_log_failed(now);
                        }
                    }
                    again.append(&mut rs.pending);
                    rs.pending = again;
                    let devices: Vec<DeviceKey> = rs.claims.keys().cloned().collect();
                    for d in devices {
                        // Only transmits: the pending batches stay where they are.
                        if let Some(slot) = rs.claims.get_mut(&d) {
                            while let Some(t) = slot.claim.poll_transmit() {
                                work.transmits.push((d.clone(), t));
                            }
                        }
                    }
                }
                carry_transmits_only(&ctx, work);
                glommio::timer::sleep(RETRY).await;
            }
        }
    }
}

/// §12: another node took `device` over and carries its reliable claim on from the log
/// (this node's records for it were refused): the claim goes from here without a word
/// (no `ClaimEnded`, no report: what it held is the new node's), its POS session closes
/// with 1012 and resumes through the cluster, and its batches not yet written are dropped.
fn moved_away(rs: &mut ReliableClaims, device: &DeviceKey, now: Instant, work: &mut Work) {
    let Some(mut slot) = rs.claims.remove(device) else {
        return;
    };
    tracing::info!(tsn = %device.serial, domain = %device.domain, "reliable claim left to the device's next node (it moved, or this node lost its lease): its session here closes (1012)");
    slot.claim
        .handle_moved(close::SERVICE_RESTART, close::MOVED_REASON, now);
    while let Some(t) = slot.claim.poll_transmit() {
        work.transmits.push((device.clone(), t));
    }
    for w in slot.waiters.drain(..) {
        w.wake();
    }
    rs.pending.retain(|(e, _)| *e != slot.entry);
    rs.deferred.retain(|(e, ..)| *e != slot.entry);
}

/// §12: this node lost its lease and lets `device` go: its reliable claim stays in the
/// cluster's log as it is, for the node the device connects to next (this one too, under
/// its new incarnation), and leaves this shard as after a move ([`moved_away`]); its POS
/// session closes with 1012 and resumes there.
pub(crate) fn let_go(ctx: &Rc<ShardCtx>, device: &DeviceKey) {
    let mut work = Work::default();
    {
        let mut rs = ctx.reliable.borrow_mut();
        if !rs.claims.contains_key(device) {
            return;
        }
        moved_away(&mut rs, device, Instant::now(), &mut work);
    }
    carry(ctx, work);
}

/// Closes sessions after a failed commit (no new commit is started: this task retries).
fn carry_transmits_only(ctx: &Rc<ShardCtx>, work: Work) {
    for (_, t) in work.transmits {
        if let Transmit::ClosePos { conn, code, .. } = t {
            ctx.close_conn(conn, code, close_reason(code));
        }
    }
}

/// Ready once every batch taken so far is durable (the drain waits for it, §11: shutdown
/// keeps what a reliable claim holds).
pub(crate) async fn flushed(ctx: &Rc<ShardCtx>) {
    // Take what the claims still hold (closes during the drain produce records).
    let devices: Vec<DeviceKey> = ctx.reliable.borrow().claims.keys().cloned().collect();
    let mut work = Work::default();
    {
        let mut rs = ctx.reliable.borrow_mut();
        // Acknowledgements too: nothing waits for a timer now.
        rs.flush_now = true;
        for d in &devices {
            take_outputs(&mut rs, d, &mut work);
        }
    }
    carry(ctx, work);
    schedule_commit(ctx);
    std::future::poll_fn(|cx| {
        let mut rs = ctx.reliable.borrow_mut();
        if !rs.committing && rs.pending.is_empty() {
            return Poll::Ready(());
        }
        rs.flush_now = true;
        rs.flush_waiters.push(cx.waker().clone());
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DomainName, Serial};
    use crate::reliable::{LogTicket, MemReliableLog, Seq, SeqRange};

    fn batch(records: Vec<LogRecord>) -> LogBatch {
        LogBatch {
            claim: DeviceKey {
                domain: DomainName::new("acme").unwrap(),
                serial: Serial::new("1").unwrap(),
            },
            records,
            ticket: LogTicket::default(),
        }
    }

    #[test]
    fn acknowledgements_alone_wait_and_anything_else_or_the_drain_commits_them() {
        let acked = || LogRecord::DeviceAcked { upto: Seq::new(3) };
        let read = || LogRecord::ReportConfirmed {
            range: SeqRange::new(Seq::new(1), Seq::new(2)).unwrap(),
        };
        let done = || LogRecord::PosDone { upto: Seq::new(1) };
        assert!(only_acks(&batch(vec![acked(), read()])));
        assert!(!only_acks(&batch(vec![acked(), done()])));

        let limits = ReliableLimits::new(&crate::relay::RelayLimits::default(), 1 << 20);
        let mut rs = ReliableClaims::new(Arc::new(MemReliableLog::new()), limits);
        assert!(!commit_due(&rs), "nothing pending");
        rs.pending.push((1, batch(vec![acked()])));
        assert!(!commit_due(&rs), "an acknowledgement alone waits");
        rs.pending.push((1, batch(vec![done()])));
        assert!(commit_due(&rs), "and goes with the next commit");
        let _taken = rs.pending.remove(1);
        rs.flush_now = true;
        assert!(commit_due(&rs), "or when the drain or its timer asks");
    }
}
