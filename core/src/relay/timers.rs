//! The deadlines of every session on a shard, ordered, so the io layer sets one timer.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::ids::SessionId;

/// What a session's deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TimerKind {
    /// The oldest POS → device message reaches its grace.
    ToDevice = 0,
    /// The oldest device → POS message reaches its grace.
    ToPos = 1,
    /// An unattended claim reaches its grace.
    Claim = 2,
}

/// A session's armed deadlines, one slot per [`TimerKind`].
pub(crate) type Armed = [Option<Instant>; 3];

/// Every armed deadline of the shard, as (deadline, session, kind), with exact removal.
#[derive(Debug, Default)]
pub(crate) struct TimerSet(BTreeSet<(Instant, SessionId, TimerKind)>);

impl TimerSet {
    /// Replaces a session's armed deadlines by `wanted`.
    pub(crate) fn rearm(&mut self, session: &SessionId, armed: &mut Armed, wanted: Armed) {
        const KINDS: [TimerKind; 3] = [TimerKind::ToDevice, TimerKind::ToPos, TimerKind::Claim];
        for ((slot, want), kind) in armed.iter_mut().zip(wanted).zip(KINDS) {
            if *slot == want {
                continue;
            }
            if let Some(old) = slot.take() {
                self.0.remove(&(old, session.clone(), kind));
            }
            if let Some(new) = want {
                self.0.insert((new, session.clone(), kind));
            }
            *slot = want;
        }
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.first().map(|(at, _, _)| *at)
    }

    /// The sessions with a deadline at or before `now`, each once, in deadline order.
    pub(crate) fn due(&self, now: Instant) -> Vec<SessionId> {
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<SessionId> = Vec::new();
        for (at, sid, _) in &self.0 {
            if *at > now {
                break;
            }
            if seen.insert(sid) {
                out.push(sid.clone());
            }
        }
        out
    }

    /// How many deadlines are armed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rearm_replaces_exactly_and_due_lists_each_session_once() {
        let t = Instant::now();
        let s = |b| SessionId::from_random([b; 16]);
        let mut set = TimerSet::default();
        let mut a: Armed = [None; 3];
        let mut b: Armed = [None; 3];
        set.rearm(
            &s(1),
            &mut a,
            [Some(t + Duration::from_secs(5)), None, Some(t)],
        );
        set.rearm(
            &s(2),
            &mut b,
            [None, Some(t + Duration::from_secs(1)), None],
        );
        assert_eq!(set.len(), 3);
        assert_eq!(set.next(), Some(t));
        assert_eq!(set.due(t + Duration::from_secs(1)), vec![s(1), s(2)]);
        assert_eq!(set.due(t + Duration::from_secs(9)), vec![s(1), s(2)]);
        set.rearm(
            &s(1),
            &mut a,
            [Some(t + Duration::from_secs(5)), None, None],
        );
        assert_eq!(set.len(), 2);
        assert_eq!(set.next(), Some(t + Duration::from_secs(1)));
        set.rearm(&s(2), &mut b, [None; 3]);
        set.rearm(&s(1), &mut a, [None; 3]);
        assert_eq!(set.len(), 0);
        assert_eq!(set.next(), None);
    }
}
