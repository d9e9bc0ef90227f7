//! Ownership records and their epochs.

use serde::{Deserialize, Serialize};

use super::{Incarnation, NodeId};

/// The stream sequence of a tsn's ownership record: it only grows, so the higher epoch is
/// the newer owner. [`Epoch::NONE`] (0) stands for "never owned": a first record is
/// written expecting it (`Nats-Expected-Last-Subject-Sequence: 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(u64);

impl Epoch {
    /// No record yet.
    pub const NONE: Epoch = Epoch(0);

    /// The epoch of the record stored at this stream sequence.
    pub fn new(sequence: u64) -> Self {
        Self(sequence)
    }

    /// The stream sequence (what a fenced write expects).
    pub fn sequence(self) -> u64 {
        self.0
    }

    /// Whether `self` names a newer owner than `other`.
    pub fn is_newer_than(self, other: Epoch) -> bool {
        self.0 > other.0
    }
}

/// Who owns a tsn: the node and its incarnation (a restarted node is another owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnershipRecord {
    /// The owning node.
    pub node: NodeId,
    /// Its run.
    pub incarnation: Incarnation,
}

/// The record's JSON: `{"node":"a","incarnation":"…"}`.
#[derive(Serialize, Deserialize)]
struct RecordJson {
    node: String,
    incarnation: String,
}

impl OwnershipRecord {
    /// The record as stored.
    pub fn encode(&self) -> Vec<u8> {
        let json = RecordJson {
            node: self.node.as_str().to_owned(),
            incarnation: self.incarnation.as_str().to_owned(),
        };
        simd_json::to_vec(&json).unwrap_or_default()
    }

    /// A stored record, or `None` if it does not decode (a record this build cannot read
    /// names no owner it could defer to).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut buf = bytes.to_vec();
        let json: RecordJson = simd_json::serde::from_slice(&mut buf).ok()?;
        Some(Self {
            node: NodeId::new(json.node).ok()?,
            incarnation: Incarnation::from_record(json.incarnation)?,
        })
    }
}

/// A tsn's current owner as read from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// The record's stream sequence.
    pub epoch: Epoch,
    /// Who.
    pub record: OwnershipRecord,
}

/// What a node that has just accepted a device's connection does (PROTOCOL.md §12: the
/// newer connection takes the tsn over).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum TakeOver {
    /// Append a record naming this node, fenced on the owner it saw: the server refuses it
    /// if someone else took the tsn over in between (then read again and decide again).
    Write {
        /// What `Nats-Expected-Last-Subject-Sequence` must say.
        expected: Epoch,
    },
    /// This incarnation owns the tsn already (the device reconnected to the same node):
    /// no write.
    AlreadyMine {
        /// The current epoch.
        epoch: Epoch,
    },
}

/// The take-over decision, given the owner the node read (`None`: never owned).
pub fn take_over(current: Option<&Ownership>, me: &OwnershipRecord) -> TakeOver {
    match current {
        Some(owner) if owner.record == *me => TakeOver::AlreadyMine { epoch: owner.epoch },
        Some(owner) => TakeOver::Write {
            expected: owner.epoch,
        },
        None => TakeOver::Write {
            expected: Epoch::NONE,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(node: &str, inc: u8) -> OwnershipRecord {
        OwnershipRecord {
            node: NodeId::new(node).unwrap(),
            incarnation: Incarnation::from_random([inc; 16]),
        }
    }

    #[test]
    fn epochs_only_grow() {
        assert!(Epoch::new(5).is_newer_than(Epoch::new(4)));
        assert!(!Epoch::new(4).is_newer_than(Epoch::new(4)));
        assert!(Epoch::new(1).is_newer_than(Epoch::NONE));
        assert_eq!(Epoch::NONE.sequence(), 0);
    }

    #[test]
    fn a_take_over_is_fenced_on_the_owner_seen() {
        let me = rec("b", 1);
        assert_eq!(
            take_over(None, &me),
            TakeOver::Write {
                expected: Epoch::NONE
            }
        );
        let other = Ownership {
            epoch: Epoch::new(41),
            record: rec("a", 1),
        };
        assert_eq!(
            take_over(Some(&other), &me),
            TakeOver::Write {
                expected: Epoch::new(41)
            }
        );
        // The same node's earlier run is another owner: it must be taken over.
        let my_last_run = Ownership {
            epoch: Epoch::new(42),
            record: rec("b", 2),
        };
        assert!(matches!(
            take_over(Some(&my_last_run), &me),
            TakeOver::Write { .. }
        ));
        let mine = Ownership {
            epoch: Epoch::new(43),
            record: me.clone(),
        };
        assert_eq!(
            take_over(Some(&mine), &me),
            TakeOver::AlreadyMine {
                epoch: Epoch::new(43)
            }
        );
    }

    #[test]
    fn records_round_trip_and_garbage_names_no_owner() {
        let r = rec("node-a", 9);
        assert_eq!(OwnershipRecord::decode(&r.encode()), Some(r));
        assert_eq!(OwnershipRecord::decode(b"{"), None);
        assert_eq!(
            OwnershipRecord::decode(br#"{"node":"a.b","incarnation":"x"}"#),
            None
        );
    }
}
