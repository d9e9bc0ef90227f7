//! Keeping a node's lease: the task on the bridge's thread that acquires the lease and
//! renews it every TTL/3 (decisions: `crate::ownership::Lease`), and the view the rest
//! of the node reads ([`LeaseKeeper::status`]) to know whether it may still act for the
//! devices it holds.
//!
//! Acquisition waits for a lease left by an earlier run of the same node id (a restart
//! within the TTL, or a second process started with the same `--node-id`) to expire, and
//! says so in the log. Each renewal is fenced on the revision of the previous write, so a
//! node whose lease record was replaced learns it from the server's refusal; one whose
//! renewals are not acknowledged (NATS away, the process paused) learns it from its own
//! clock, counted from when it sent the last acknowledged write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;

use super::ownership::{is_marker, last_on_subject, publish, OwnershipStreams};
use super::{BridgeHandle, ClusterError, Nats};
use crate::ownership::{
    acquisition, lease_subject, Incarnation, Lease, LeaseRecord, LeaseSlot, LeaseStatus,
    LeaseTerms, LostReason, NodeId,
};

/// Until when the lease holds, readable without a lock by every shard on the data path
/// (one atomic load): a node whose lease lapsed "forwards nothing more for the devices it
/// held" (PROTOCOL.md §12), even for a message it reads in the instant it wakes up from
/// a pause, before anything else has noticed.
#[derive(Debug)]
pub struct LeaseClock {
    base: Instant,
    /// Nanoseconds after `base` at which the lease ends; 0 when it does not hold.
    until: AtomicU64,
    /// The last end it had while it held (kept once it lapsed); 0 if it never held.
    last_until: AtomicU64,
    /// Since when renewals have gone unanswered (sent while connected, no JetStream
    /// answer: no quorum, a stream leader being elected); 0 while they are answered.
    troubled: AtomicU64,
}

impl Default for LeaseClock {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            until: AtomicU64::new(0),
            last_until: AtomicU64::new(0),
            troubled: AtomicU64::new(0),
        }
    }
}

impl LeaseClock {
    /// Whether the lease holds at `now`.
    pub fn holds_at(&self, now: Instant) -> bool {
        let until = self.until.load(Ordering::Acquire);
        until != 0 && now.saturating_duration_since(self.base).as_nanos() < u128::from(until)
    }

    /// When the lease last held until (the instant it lapsed, once it has); `None` if it
    /// never held.
    pub fn last_until(&self) -> Option<Instant> {
        match self.last_until.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(self.base + std::time::Duration::from_nanos(nanos)),
        }
    }

    /// Since when renewals have gone unanswered, if they do now.
    pub fn troubled_since(&self) -> Option<Instant> {
        match self.troubled.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(self.base + std::time::Duration::from_nanos(nanos)),
        }
    }

    /// A renewal sent at `sent_at` got no answer (the first of a run counts).
    fn mark_troubled(&self, sent_at: Instant) {
        let nanos = u64::try_from(sent_at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self
            .troubled
            .compare_exchange(0, nanos, Ordering::AcqRel, Ordering::Acquire);
    }

    /// A renewal was answered.
    fn clear_troubled(&self) {
        self.troubled.store(0, Ordering::Release);
    }

    fn set(&self, status: LeaseStatus) {
        let until = match status {
            LeaseStatus::Held { until } => {
                u64::try_from(until.saturating_duration_since(self.base).as_nanos())
                    .unwrap_or(u64::MAX)
                    .max(1)
            }
            _ => 0,
        };
        if until != 0 {
            self.last_until.store(until, Ordering::Release);
        }
        self.until.store(until, Ordering::Release);
    }
}

struct Shared {
    lease: Lease,
    /// Renewals suspended (tests: a node that stops renewing).
    paused: bool,
}

/// The node's lease, kept by a task on the bridge's thread. Dropping it stops the task
/// (the lease then lapses after its TTL).
pub struct LeaseKeeper {
    shared: Arc<Mutex<Shared>>,
    node: NodeId,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeeper")
            .field("node", &self.node)
            .finish()
    }
}

impl LeaseKeeper {
    /// Starts acquiring and keeping `node`'s lease for this `incarnation`. Returns at once;
    /// [`LeaseKeeper::status`] says when it is held.
    /// `clock` says, lock-free, until when the lease holds (it does not while acquiring).
    pub fn start(
        bridge: &BridgeHandle,
        streams: OwnershipStreams,
        node: NodeId,
        incarnation: Incarnation,
        terms: LeaseTerms,
        clock: Arc<LeaseClock>,
    ) -> Result<Self, ClusterError> {
        clock.set(LeaseStatus::Acquiring);
        let shared = Arc::new(Mutex::new(Shared {
            lease: Lease::new(terms),
            paused: false,
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = Task {
            streams,
            node: node.clone(),
            record: Bytes::from(LeaseRecord::new(&incarnation).encode()),
            incarnation,
            shared: shared.clone(),
            clock,
        };
        bridge.spawn(move |nats| async move {
            futures_lite::future::or(task.run(nats), async {
                let _ = stopped.await;
            })
            .await
        })?;
        Ok(Self {
            shared,
            node,
            _stop: stop,
        })
    }

    /// Where the lease stands at `now`.
    pub fn status(&self, now: Instant) -> LeaseStatus {
        self.lock().lease.status(now)
    }

    /// Waits (blocking) until the lease is held, lost, or `timeout` passed.
    pub fn wait_held(&self, timeout: Duration) -> LeaseStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(Instant::now());
            if !matches!(status, LeaseStatus::Acquiring) || Instant::now() >= deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops (or resumes) sending renewals, as a paused or cut-off node would.
    pub fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Task {
    clock: Arc<LeaseClock>,
    streams: OwnershipStreams,
    node: NodeId,
    incarnation: Incarnation,
    record: Bytes,
    shared: Arc<Mutex<Shared>>,
}

impl Task {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The revision of the lease record if it is this incarnation's (not a marker, not
    /// another process's), read from the stream's leader.
    async fn own_record(&self, nats: &Nats) -> Option<u64> {
        let (sequence, headers, payload) = last_on_subject(
            &self.streams.leases,
            &lease_subject(&self.node),
            nats.timeout,
        )
        .await
        .ok()??;
        let record = (!is_marker(&headers))
            .then(|| LeaseRecord::decode(&payload))
            .flatten()?;
        (record == LeaseRecord::new(&self.incarnation)).then_some(sequence)
    }

    /// Publishes where the lease stands to the lock-free clock (after every change).
    fn sync_clock(&self) {
        let status = self.lock().lease.status(Instant::now());
        self.clock.set(status);
    }

    async fn write(
        &self,
        nats: &Nats,
        expected: u64,
        timeout: Duration,
    ) -> Result<u64, ClusterError> {
        let terms = self.lock().lease.terms();
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string(),
        );
        headers.insert(async_nats::header::NATS_MESSAGE_TTL, terms.ttl_header());
        let write = publish(
            nats,
            lease_subject(&self.node),
            headers,
            self.record.clone(),
        );
        match tokio::time::timeout(timeout, write).await {
            Ok(result) => result,
            Err(_) => Err(ClusterError::Timeout(timeout)),
        }
    }

    async fn run(self, nats: Nats) {
        let terms = self.lock().lease.terms();
        // Acquire.
        let mut waiting_logged = false;
        let mut failing = false;
        loop {
            let last = last_on_subject(
                &self.streams.leases,
                &lease_subject(&self.node),
                nats.timeout,
            )
            .await;
            let slot = match last {
                Ok(last) => acquisition(last.map(|(sequence, headers, payload)| {
                    let record = (!is_marker(&headers))
                        .then(|| LeaseRecord::decode(&payload))
                        .flatten();
                    (sequence, record)
                })),
                Err(e) => {
                    if !failing {
                        tracing::warn!(node = %self.node, error = %e, "cannot read the node's lease yet; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(terms.retry_after()).await;
                    continue;
                }
            };
            match slot {
                LeaseSlot::Free { expected } => {
                    let sent_at = Instant::now();
                    match self.write(&nats, expected, terms.renew_every()).await {
                        Ok(revision) => {
                            self.lock().lease.handle_acquired(sent_at, revision);
                            self.sync_clock();
                            tracing::info!(node = %self.node, incarnation = %self.incarnation.as_str(),
                                ttl = ?terms.ttl(), "node lease acquired");
                            break;
                        }
                        Err(ClusterError::WrongLastSequence) => continue,
                        Err(e) => {
                            if !failing {
                                tracing::warn!(node = %self.node, error = %e, "cannot write the node's lease yet; retrying");
                                failing = true;
                            }
                            tokio::time::sleep(terms.retry_after()).await;
                        }
                    }
                }
                LeaseSlot::Held { incarnation, .. } => {
                    if !waiting_logged {
                        tracing::warn!(node = %self.node, holder = %incarnation, ttl = ?terms.ttl(),
                            "the lease of this node id is held by another run (a restart within the lease, \
                             or another process with the same --node-id): waiting for it to expire");
                        waiting_logged = true;
                    }
                    tokio::time::sleep(terms.retry_after()).await;
                }
            }
        }
        // Renew. `unacknowledged`: when the earliest renewal since the last acknowledged
        // one was sent, if one went unanswered (the server may have stored it: its ack
        // can be lost with the server that sent it).
        let mut unacknowledged: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let (status, write, paused) = {
                let mut shared = self.lock();
                let paused = shared.paused;
                let write = if paused {
                    None
                } else {
                    shared.lease.poll_write(now)
                };
                (shared.lease.status(now), write, paused)
            };
            if let LeaseStatus::Lost(reason) = status {
                self.clock.set(status);
                match reason {
                    LostReason::Expired => tracing::error!(node = %self.node,
                        "node lease expired: no renewal was acknowledged within the lease TTL; \
                         this node must stop acting for its devices"),
                    LostReason::Superseded => tracing::error!(node = %self.node,
                        "node lease superseded: its record was replaced (expired on the server, or \
                         another process uses this --node-id); this node must stop acting for its devices"),
                }
                return;
            }
            if let Some(write) = write {
                match self.write(&nats, write.expected, terms.renew_every()).await {
                    Ok(revision) => {
                        self.lock().lease.handle_renewed(write.sent_at, revision);
                        self.sync_clock();
                        self.clock.clear_troubled();
                        unacknowledged = None;
                    }
                    Err(ClusterError::WrongLastSequence) => {
                        // Refused: either another process wrote the record, or an earlier
                        // renewal of ours was stored and only its ack was lost (a server
                        // failover). The record says which; ours counts from the earliest
                        // unanswered send (the server stored it after that).
                        let since = unacknowledged.unwrap_or(write.sent_at);
                        match self.own_record(&nats).await {
                            Some(revision) => {
                                tracing::info!(node = %self.node, "lease renewal found already stored (its acknowledgement was lost)");
                                self.lock().lease.handle_renewed(since, revision);
                            }
                            None => self.lock().lease.handle_refused(),
                        }
                        self.sync_clock();
                        self.clock.clear_troubled();
                        unacknowledged = None;
                    }
                    Err(e) => {
                        self.clock.mark_troubled(write.sent_at);
                        tracing::warn!(node = %self.node, error = %e, "lease renewal failed; retrying");
                        unacknowledged.get_or_insert(write.sent_at);
                        self.lock().lease.handle_failed(Instant::now());
                    }
                }
                continue;
            }
            let wake = if paused {
                now + terms.retry_after()
            } else {
                self.lock()
                    .lease
                    .poll_timeout()
                    .unwrap_or(now + terms.retry_after())
            };
            tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::with_streams;
    use crate::cluster::NatsBridge;

    fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The lease subject's last message on the server: its sequence and whether it is a
    /// live record (not a marker).
    fn on_server(
        bridge: &NatsBridge,
        streams: &OwnershipStreams,
        node: &NodeId,
    ) -> Option<(u64, bool)> {
        let (streams, subject) = (streams.clone(), lease_subject(node));
        bridge
            .handle()
            .call(move |nats| async move {
                last_on_subject(&streams.leases, &subject, nats.timeout)
                    .await
                    .unwrap()
                    .map(|(seq, headers, _)| (seq, !is_marker(&headers)))
            })
            .wait()
            .unwrap()
    }

    #[test]
    fn a_lease_lives_while_renewed_and_its_node_learns_when_it_is_lost() {
        let (_cluster, bridge, streams) = with_streams();
        let node = NodeId::new("a").unwrap();
        let terms = LeaseTerms::new(Duration::from_secs(2)).unwrap();
        let clock = Arc::new(LeaseClock::default());
        let keeper = |incarnation: u8| {
            LeaseKeeper::start(
                &bridge.handle(),
                streams.clone(),
                node.clone(),
                Incarnation::from_random([incarnation; 16]),
                terms,
                clock.clone(),
            )
            .unwrap()
        };

        let first = keeper(1);
        assert!(matches!(
            first.wait_held(Duration::from_secs(10)),
            LeaseStatus::Held { .. }
        ));
        // The shards' lock-free view agrees.
        assert!(clock.holds_at(Instant::now()));
        // Renewed: the record is written again (its sequence moves) and stays live.
        let (seq, live) = on_server(&bridge, &streams, &node).unwrap();
        assert!(live);
        eventually("a renewal", Duration::from_secs(10), || {
            on_server(&bridge, &streams, &node).is_some_and(|(s, live)| s > seq && live)
        });
        assert!(matches!(
            first.status(Instant::now()),
            LeaseStatus::Held { .. }
        ));

        // A second run with the same node id waits while the first holds the lease.
        let second = keeper(2);
        let (seen, _) = on_server(&bridge, &streams, &node).unwrap();
        eventually(
            "two more renewals by the first",
            Duration::from_secs(10),
            || on_server(&bridge, &streams, &node).is_some_and(|(s, _)| s >= seen + 2),
        );
        assert_eq!(second.status(Instant::now()), LeaseStatus::Acquiring);

        // The first stops renewing (paused, cut off): it knows it lost the lease by its
        // own clock, and the server expires the record (a marker replaces it).
        first.set_paused(true);
        eventually(
            "the node learns it lost its lease",
            Duration::from_secs(10),
            || first.status(Instant::now()) == LeaseStatus::Lost(LostReason::Expired),
        );
        // Then the waiting run takes the lease over, expecting the marker.
        assert!(matches!(
            second.wait_held(Duration::from_secs(10)),
            LeaseStatus::Held { .. }
        ));
        first.set_paused(false);
        assert_eq!(
            first.status(Instant::now()),
            LeaseStatus::Lost(LostReason::Expired),
            "a lost lease stays lost"
        );

        // Someone else writes the record (a second process misconfigured with this node
        // id): the holder's next renewal is refused and it learns it was superseded.
        let subject = lease_subject(&node);
        bridge
            .handle()
            .call(move |nats| async move {
                let mut headers = HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_TTL, "60s");
                publish(
                    &nats,
                    subject,
                    headers,
                    Bytes::from_static(b"{\"incarnation\":\"intruder\"}"),
                )
                .await
            })
            .wait()
            .unwrap()
            .unwrap();
        eventually(
            "the holder learns it was superseded",
            Duration::from_secs(10),
            || second.status(Instant::now()) == LeaseStatus::Lost(LostReason::Superseded),
        );
    }

    #[test]
    fn an_unrenewed_lease_expires_on_the_server() {
        let (_cluster, bridge, streams) = with_streams();
        let node = NodeId::new("b").unwrap();
        let keeper = LeaseKeeper::start(
            &bridge.handle(),
            streams.clone(),
            node.clone(),
            Incarnation::from_random([7; 16]),
            LeaseTerms::new(Duration::from_secs(1)).unwrap(),
            Arc::new(LeaseClock::default()),
        )
        .unwrap();
        assert!(matches!(
            keeper.wait_held(Duration::from_secs(10)),
            LeaseStatus::Held { .. }
        ));
        // The node is killed: nothing renews (dropping the keeper stops its task).
        drop(keeper);
        // The TTL counts from the last write; the server's expiry runs on a timer of about
        // a second: the marker is there within TTL + a few seconds.
        eventually(
            "the server expires the lease",
            Duration::from_secs(15),
            || on_server(&bridge, &streams, &node).is_some_and(|(_, live)| !live),
        );
    }
}
