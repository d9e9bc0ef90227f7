//! Sequence numbers of a reliable claim (PROTOCOL.md §11: "Each direction numbers its
//! messages 1, 2, 3, … for the life of the claim") and ranges of them.

use std::fmt;

/// A message's number in one direction of a reliable claim. `0` names no message: it is
/// the `seq` of a first `resume` ("0 for none") and of an `ack` of nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(u64);

impl Seq {
    /// No message yet.
    pub const ZERO: Seq = Seq(0);

    /// The number `n`.
    pub const fn new(n: u64) -> Seq {
        Seq(n)
    }

    /// The number as an integer.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The number after this one. A claim would need 2^64 messages to wrap; saturate.
    #[must_use]
    pub const fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }

    /// The number before this one (0 stays 0).
    #[must_use]
    pub const fn prev(self) -> Seq {
        Seq(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The messages `from..=to` of one direction: an `undelivered` report (§11). Never empty and
/// never names message 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqRange {
    from: Seq,
    to: Seq,
}

impl SeqRange {
    /// `from..=to`, or `None` when `from` is 0 or after `to`.
    pub fn new(from: Seq, to: Seq) -> Option<SeqRange> {
        (from > Seq::ZERO && from <= to).then_some(SeqRange { from, to })
    }

    /// The single message `seq` (`None` for 0).
    pub fn one(seq: Seq) -> Option<SeqRange> {
        SeqRange::new(seq, seq)
    }

    /// The first message.
    pub fn from(self) -> Seq {
        self.from
    }

    /// The last message.
    pub fn to(self) -> Seq {
        self.to
    }

    /// How many messages.
    pub fn len(self) -> u64 {
        self.to.0 - self.from.0 + 1
    }

    /// Never empty; here for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        false
    }

    /// Whether `seq` is in the range.
    pub fn contains(self, seq: Seq) -> bool {
        self.from <= seq && seq <= self.to
    }

    /// This range grown to end at `to` (when `to` is after its end).
    #[must_use]
    pub fn extended_to(self, to: Seq) -> SeqRange {
        SeqRange {
            from: self.from,
            to: self.to.max(to),
        }
    }
}

impl fmt::Display for SeqRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.from, self.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_never_empty_and_never_name_zero() {
        assert_eq!(SeqRange::new(Seq::ZERO, Seq::new(3)), None);
        assert_eq!(SeqRange::new(Seq::new(4), Seq::new(3)), None);
        let r = SeqRange::new(Seq::new(2), Seq::new(4)).unwrap();
        assert_eq!(r.len(), 3);
        assert!(r.contains(Seq::new(2)) && r.contains(Seq::new(4)));
        assert!(!r.contains(Seq::new(1)) && !r.contains(Seq::new(5)));
        assert_eq!(r.extended_to(Seq::new(9)).to(), Seq::new(9));
        assert_eq!(r.extended_to(Seq::new(1)), r);
        assert_eq!(SeqRange::one(Seq::new(7)).unwrap().len(), 1);
        assert_eq!(r.to_string(), "2..=4");
    }

    #[test]
    fn next_saturates() {
        assert_eq!(Seq::new(u64::MAX).next(), Seq::new(u64::MAX));
        assert_eq!(Seq::ZERO.prev(), Seq::ZERO);
        assert_eq!(Seq::new(1).next(), Seq::new(2));
    }
}
