//! Questions a participant put to others and is still waiting on, each with a deadline.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::Instant;

use crate::ids::Serial;
use crate::relay::ClaimOp;

use super::claim::Requester;
use super::participant::Participant;
use super::presence::DevicePresence;

/// Names one question on the participant that asked it. Unique per participant for its
/// life; meaningless anywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ticket#{}", self.0)
    }
}

/// What a pending question is waiting for.
#[derive(Debug)]
pub(crate) enum Waiting {
    /// A registration's acknowledgement from the owner.
    Registered,
    /// A claim or release decision from the owner.
    Claim {
        /// Who to answer.
        requester: Requester,
        /// Which device (for the answer, and for a timeout's refusal).
        serial: Serial,
        /// Claim or release.
        op: ClaimOp,
    },
    /// Presence answers from these owners; what arrived so far.
    Presence {
        /// Owners that have not answered yet.
        from: BTreeSet<Participant>,
        /// Entries gathered (local ones first).
        gathered: Vec<DevicePresence>,
    },
}

#[derive(Debug)]
struct Entry {
    /// Who must still answer.
    asked: BTreeSet<Participant>,
    deadline: Instant,
    waiting: Waiting,
}

/// The open questions of one participant.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    next: u64,
    open: HashMap<Ticket, Entry>,
}

impl Pending {
    /// A fresh ticket for a question to `asked`, due by `deadline`.
    pub fn open(
        &mut self,
        asked: BTreeSet<Participant>,
        deadline: Instant,
        waiting: Waiting,
    ) -> Ticket {
        self.next += 1;
        let ticket = Ticket(self.next);
        self.open.insert(
            ticket,
            Entry {
                asked,
                deadline,
                waiting,
            },
        );
        ticket
    }

    /// A ticket that needs no answer from anyone (answered at once, locally).
    pub fn next_local(&mut self) -> Ticket {
        self.next += 1;
        Ticket(self.next)
    }

    /// The question `ticket` answered by `from`: removed and returned when that was the
    /// last answer it needed. `None` for an unknown ticket (answered already, timed out) or
    /// an answer from a participant that was not asked.
    pub fn answered(
        &mut self,
        ticket: Ticket,
        from: Participant,
        presence: Vec<DevicePresence>,
    ) -> Option<Waiting> {
        let entry = self.open.get_mut(&ticket)?;
        if !entry.asked.remove(&from) {
            return None;
        }
        if let Waiting::Presence {
            from: left,
            gathered,
        } = &mut entry.waiting
        {
            left.remove(&from);
            gathered.extend(presence);
        }
        if !entry.asked.is_empty() {
            return None;
        }
        self.open.remove(&ticket).map(|e| e.waiting)
    }

    /// Removes and returns every question past its deadline at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<(Ticket, Waiting)> {
        let due: Vec<Ticket> = self
            .open
            .iter()
            .filter(|(_, e)| e.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        let mut out: Vec<(Ticket, Waiting)> = due
            .into_iter()
            .filter_map(|t| self.open.remove(&t).map(|e| (t, e.waiting)))
            .collect();
        out.sort_by_key(|(t, _)| *t);
        out
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|e| e.deadline).min()
    }

    /// How many questions are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }
}
