//! A node's lease: when to renew it, and whether it still holds at `now`.
//!
//! The lease is a record on `posrelay.lease.<node>` stored with a per-message TTL: the
//! server removes it (leaving a delete marker, ADR-43/ADR-48) once the TTL has passed
//! since the server stored it. The node cannot see the server's clock, so it counts from
//! the instant it *sent* a write: a write acknowledged by the server was stored at or
//! after that instant, so `sent_at + ttl` is never later than the server's expiry, and a
//! node that believes its lease holds is never wrong about it (clock rates aside, which
//! differ by parts per million). A lease is lost for good — for this incarnation — once
//! that instant passes without a newer acknowledged renewal, or once the server refuses a
//! renewal (the record changed: it expired there, or another process writes this node
//! id's lease). A node that lost its lease forwards nothing more for the devices it held
//! (PROTOCOL.md §12) and starts a new incarnation.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Incarnation;

/// Why lease settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Per-message TTLs count whole seconds at best: a shorter lease cannot be kept.
    #[error("--lease-ttl must be at least 1s (NATS per-message TTLs count seconds), got {0:?}")]
    TooShort(Duration),
}

/// The lease's duration and what follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms {
    ttl: Duration,
}

impl LeaseTerms {
    /// The default `--lease-ttl` (PROTOCOL.md §12).
    pub const DEFAULT_TTL: Duration = Duration::from_secs(6);

    /// Terms for a lease of `ttl` (at least 1 s).
    pub fn new(ttl: Duration) -> Result<Self, LeaseError> {
        if ttl < Duration::from_secs(1) {
            return Err(LeaseError::TooShort(ttl));
        }
        Ok(Self { ttl })
    }

    /// The lease's lifetime after a write.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often the lease is renewed: TTL/3, so that two renewals in a row may fail
    /// before the lease lapses.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// How soon a failed renewal is tried again.
    pub fn retry_after(&self) -> Duration {
        self.ttl / 12
    }

    /// The `Nats-TTL` header's value (a Go duration).
    pub fn ttl_header(&self) -> String {
        format!("{}ms", self.ttl.as_millis())
    }
}

/// The lease record: `{"incarnation":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The run that holds the lease.
    pub incarnation: String,
}

impl LeaseRecord {
    /// The record for `incarnation`.
    pub fn new(incarnation: &Incarnation) -> Self {
        Self {
            incarnation: incarnation.as_str().to_owned(),
        }
    }

    /// As stored.
    pub fn encode(&self) -> Vec<u8> {
        simd_json::to_vec(self).unwrap_or_default()
    }

    /// A stored record, or `None` if it does not decode.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut buf = bytes.to_vec();
        simd_json::serde::from_slice(&mut buf).ok()
    }
}

/// What the lease subject holds when a node starts: may it take the lease?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseSlot {
    /// Free: write the first record expecting this last subject sequence (0 when the
    /// subject is empty, the delete marker's sequence when the last lease expired).
    Free {
        /// `Nats-Expected-Last-Subject-Sequence`.
        expected: u64,
    },
    /// Another run of this node id holds it until it expires (a process restarted within
    /// the lease, or a second process with the same `--node-id`): wait and read again.
    Held {
        /// The live record's sequence.
        revision: u64,
        /// Its holder.
        incarnation: String,
    },
}

/// Decides from the lease subject's last message: `None` if it has none, else its
/// sequence and its record (`None` for a delete marker or a record that does not decode).
pub fn acquisition(last: Option<(u64, Option<LeaseRecord>)>) -> LeaseSlot {
    match last {
        None => LeaseSlot::Free { expected: 0 },
        Some((revision, None)) => LeaseSlot::Free { expected: revision },
        Some((revision, Some(record))) => LeaseSlot::Held {
            revision,
            incarnation: record.incarnation,
        },
    }
}

/// A write of the lease record that is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct LeaseWrite {
    /// `Nats-Expected-Last-Subject-Sequence`: the revision of this lease's last write.
    pub expected: u64,
    /// When it was sent (pass it back with the answer).
    pub sent_at: Instant,
}

/// Why a lease was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// No renewal was acknowledged within the TTL (NATS unreachable, the process paused).
    Expired,
    /// The server refused a renewal: the record is no longer the one this lease wrote.
    Superseded,
}

/// Where the lease stands at some `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Not acquired yet.
    Acquiring,
    /// Holds until this instant unless renewed.
    Held {
        /// The end of the lease as the node counts it.
        until: Instant,
    },
    /// Lost for good (this incarnation).
    Lost(LostReason),
}

/// One incarnation's lease.
#[derive(Debug, Clone)]
pub struct Lease {
    terms: LeaseTerms,
    /// Revision of the last acknowledged write: the fence of the next one.
    revision: Option<u64>,
    valid_until: Option<Instant>,
    in_flight: bool,
    next_write: Option<Instant>,
    lost: Option<LostReason>,
}

impl Lease {
    /// A lease not yet acquired.
    pub fn new(terms: LeaseTerms) -> Self {
        Self {
            terms,
            revision: None,
            valid_until: None,
            in_flight: false,
            next_write: None,
            lost: None,
        }
    }

    /// The terms.
    pub fn terms(&self) -> LeaseTerms {
        self.terms
    }

    /// The first write was acknowledged at `revision` (it was sent at `sent_at`).
    pub fn handle_acquired(&mut self, sent_at: Instant, revision: u64) {
        self.handle_written(sent_at, revision);
    }

    /// The renewal sent at `sent_at` was acknowledged at `revision`.
    pub fn handle_renewed(&mut self, sent_at: Instant, revision: u64) {
        self.handle_written(sent_at, revision);
    }

    fn handle_written(&mut self, sent_at: Instant, revision: u64) {
        self.in_flight = false;
        if self.lost.is_some() {
            return;
        }
        // An acknowledgement that arrives after the lease lapsed revives nothing: the
        // node already acted as if it had lost it.
        if let Some(until) = self.valid_until {
            if sent_at >= until {
                self.lost = Some(LostReason::Expired);
                return;
            }
        }
        self.revision = Some(revision);
        self.valid_until = Some(sent_at + self.terms.ttl);
        self.next_write = Some(sent_at + self.terms.renew_every());
    }

    /// The server refused the renewal: another write changed the lease subject.
    pub fn handle_refused(&mut self) {
        self.in_flight = false;
        self.lost.get_or_insert(LostReason::Superseded);
    }

    /// The renewal got no answer (timeout, no connection): try again soon.
    pub fn handle_failed(&mut self, now: Instant) {
        self.in_flight = false;
        self.next_write = Some(now + self.terms.retry_after());
    }

    /// Where the lease stands at `now`.
    pub fn status(&mut self, now: Instant) -> LeaseStatus {
        if let Some(reason) = self.lost {
            return LeaseStatus::Lost(reason);
        }
        match self.valid_until {
            None => LeaseStatus::Acquiring,
            Some(until) if now >= until => {
                self.lost = Some(LostReason::Expired);
                LeaseStatus::Lost(LostReason::Expired)
            }
            Some(until) => LeaseStatus::Held { until },
        }
    }

    /// The renewal to send now, if one is due (one at a time).
    pub fn poll_write(&mut self, now: Instant) -> Option<LeaseWrite> {
        if self.in_flight || !matches!(self.status(now), LeaseStatus::Held { .. }) {
            return None;
        }
        let (Some(expected), Some(due)) = (self.revision, self.next_write) else {
            return None;
        };
        if now < due {
            return None;
        }
        self.in_flight = true;
        Some(LeaseWrite {
            expected,
            sent_at: now,
        })
    }

    /// When the lease next needs attention: a renewal due, or its end.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.lost.is_some() {
            return None;
        }
        match (
            self.next_write.filter(|_| !self.in_flight),
            self.valid_until,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn terms() -> LeaseTerms {
        LeaseTerms::new(Duration::from_secs(6)).unwrap()
    }

    #[test]
    fn terms_follow_the_ttl() {
        let t = terms();
        assert_eq!(t.renew_every(), Duration::from_secs(2));
        assert_eq!(t.ttl_header(), "6000ms");
        assert_eq!(LeaseTerms::new(ms(999)), Err(LeaseError::TooShort(ms(999))));
        assert!(LeaseTerms::new(ms(999))
            .unwrap_err()
            .to_string()
            .contains("--lease-ttl"));
    }

    #[test]
    fn held_while_renewed_and_expired_when_not() {
        let t0 = Instant::now();
        let mut lease = Lease::new(terms());
        assert_eq!(lease.status(t0), LeaseStatus::Acquiring);
        assert_eq!(lease.poll_write(t0), None);
        lease.handle_acquired(t0, 10);
        assert_eq!(
            lease.status(t0 + ms(5999)),
            LeaseStatus::Held {
                until: t0 + ms(6000)
            }
        );
        assert_eq!(lease.poll_write(t0 + ms(1999)), None);
        let w = lease.poll_write(t0 + ms(2000)).unwrap();
        assert_eq!(w.expected, 10);
        assert_eq!(lease.poll_write(t0 + ms(2001)), None, "one write at a time");
        // The renewal's lease counts from when it was sent, not from its answer.
        lease.handle_renewed(w.sent_at, 14);
        assert_eq!(
            lease.status(t0 + ms(7999)),
            LeaseStatus::Held {
                until: t0 + ms(8000)
            }
        );
        assert_eq!(lease.poll_write(t0 + ms(4000)).unwrap().expected, 14);
        // No more answers: the lease ends at the last acknowledged write's sent_at + TTL.
        assert_eq!(
            lease.status(t0 + ms(8000)),
            LeaseStatus::Lost(LostReason::Expired)
        );
        assert_eq!(lease.poll_timeout(), None);
    }

    #[test]
    fn a_late_acknowledgement_revives_nothing() {
        let t0 = Instant::now();
        let mut lease = Lease::new(terms());
        lease.handle_acquired(t0, 1);
        // The process was paused past its lease and resumes.
        let late = t0 + ms(9000);
        assert_eq!(lease.status(late), LeaseStatus::Lost(LostReason::Expired));
        lease.handle_renewed(late, 2);
        assert_eq!(lease.status(late), LeaseStatus::Lost(LostReason::Expired));
        // Even if the status was not polled in between.
        let mut other = Lease::new(terms());
        other.handle_acquired(t0, 1);
        other.handle_renewed(t0 + ms(6500), 2);
        assert_eq!(
            other.status(t0 + ms(6500)),
            LeaseStatus::Lost(LostReason::Expired)
        );
    }

    #[test]
    fn a_refused_renewal_loses_the_lease() {
        let t0 = Instant::now();
        let mut lease = Lease::new(terms());
        lease.handle_acquired(t0, 1);
        let _ = lease.poll_write(t0 + ms(2000)).unwrap();
        lease.handle_refused();
        assert_eq!(
            lease.status(t0 + ms(2001)),
            LeaseStatus::Lost(LostReason::Superseded)
        );
        assert_eq!(lease.poll_write(t0 + ms(5000)), None);
    }

    #[test]
    fn a_failed_renewal_is_retried_soon() {
        let t0 = Instant::now();
        let mut lease = Lease::new(terms());
        lease.handle_acquired(t0, 1);
        let _ = lease.poll_write(t0 + ms(2000)).unwrap();
        lease.handle_failed(t0 + ms(2100));
        assert_eq!(lease.poll_timeout(), Some(t0 + ms(2600)));
        assert_eq!(lease.poll_write(t0 + ms(2599)), None);
        assert_eq!(lease.poll_write(t0 + ms(2600)).unwrap().expected, 1);
    }

    #[test]
    fn acquisition_waits_for_another_run_to_expire() {
        assert_eq!(acquisition(None), LeaseSlot::Free { expected: 0 });
        assert_eq!(
            acquisition(Some((7, None))),
            LeaseSlot::Free { expected: 7 }
        );
        let held = acquisition(Some((
            7,
            Some(LeaseRecord {
                incarnation: "x".into(),
            }),
        )));
        assert_eq!(
            held,
            LeaseSlot::Held {
                revision: 7,
                incarnation: "x".into()
            }
        );
        let r = LeaseRecord::new(&Incarnation::from_random([5; 16]));
        assert_eq!(LeaseRecord::decode(&r.encode()), Some(r));
    }
}

/// What a node whose lease lapsed does with the devices it holds (PROTOCOL.md §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapse {
    /// The lease ran out while the cluster was answering it — its renewal was refused
    /// (another process holds the node id), or the node did not even try (it was paused):
    /// other nodes may have taken its devices over and it may not have heard. It forwards
    /// nothing more for them and closes their connections (1012).
    Fence,
    /// The lease ran out because the cluster could not be reached or could not store
    /// anything (every NATS server gone, or JetStream without a quorum or electing a
    /// stream leader: renewals went unanswered) since before it lapsed. Taking a device
    /// over needs the same JetStream, so the node keeps its local connections relaying
    /// (§12: "all three NATS servers gone: the node keeps its local connections
    /// relaying") and checks each device's ownership once it holds a new lease: a device
    /// that connected elsewhere meanwhile has its connection here closed with 4000, the
    /// others are taken over again. A node cut off alone cannot tell this from a cluster
    /// outage; its devices' stale connections live until it is back.
    Offline,
}

/// Which [`Lapse`] a lease that held until `lapsed_at` is, given since when the cluster
/// has been unreachable or unanswering for this node (`None`: it answers now).
pub fn classify_lapse(lapsed_at: Instant, unreachable_since: Option<Instant>) -> Lapse {
    match unreachable_since {
        Some(since) if since <= lapsed_at => Lapse::Offline,
        _ => Lapse::Fence,
    }
}

#[cfg(test)]
mod lapse_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lease_is_fenced_unless_the_cluster_was_unreachable_before_it_lapsed() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        // The cluster answered up to the lapse (a pause, a refused renewal): fenced.
        assert_eq!(classify_lapse(t, None), Lapse::Fence);
        // Trouble began after the lapse (a paused process whose client noticed its
        // missed pings, or whose first renewal failed, on waking): fenced.
        assert_eq!(classify_lapse(t, Some(t + s)), Lapse::Fence);
        // Every server gone, or renewals unanswered, first: keep relaying, check
        // ownership on return.
        assert_eq!(classify_lapse(t + s, Some(t)), Lapse::Offline);
        assert_eq!(classify_lapse(t, Some(t)), Lapse::Offline);
    }
}
