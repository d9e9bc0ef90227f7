//! One direction's offline queue of one session: in order, bounded in bytes and messages,
//! each message stamped with when it was queued.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::limits::RelayLimits;
use super::message::QueuedMessage;

/// How many messages and payload bytes left a queue without being delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Messages.
    pub frames: u64,
    /// Payload bytes.
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, len: usize) {
        self.frames = self.frames.saturating_add(1);
        self.bytes = self
            .bytes
            .saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
    }

    /// Adds another count.
    pub fn merge(&mut self, other: Count) {
        self.frames = self.frames.saturating_add(other.frames);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }

    /// Nothing counted.
    pub fn is_empty(&self) -> bool {
        self.frames == 0 && self.bytes == 0
    }
}

/// A bounded FIFO of messages waiting for their receiver.
#[derive(Debug)]
pub(crate) struct OfflineQueue<M> {
    items: VecDeque<(Instant, M)>,
    bytes: usize,
}

impl<M> Default for OfflineQueue<M> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<M: QueuedMessage> OfflineQueue<M> {
    /// Appends `message` if it fits within `limits`; hands it back if it does not.
    pub(crate) fn push(&mut self, message: M, now: Instant, limits: &RelayLimits) -> Result<(), M> {
        let len = message.payload_len();
        let fits = self.items.len() < limits.offline_queue_frames
            && self
                .bytes
                .checked_add(len)
                .is_some_and(|total| total <= limits.offline_queue_bytes);
        if !fits {
            return Err(message);
        }
        self.bytes += len;
        self.items.push_back((now, message));
        Ok(())
    }

    /// When the oldest message was queued.
    pub(crate) fn oldest(&self) -> Option<Instant> {
        self.items.front().map(|(at, _)| *at)
    }

    /// Takes every message, oldest first.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = M> + '_ {
        self.bytes = 0;
        self.items.drain(..).map(|(_, m)| m)
    }

    /// Drops the messages queued `grace` or longer before `now` (a prefix: they were queued
    /// in order) and counts them.
    pub(crate) fn expire(&mut self, now: Instant, grace: Duration) -> Count {
        let mut gone = Count::default();
        while let Some((at, _)) = self.items.front() {
            let due = at
                .checked_add(grace)
                .is_some_and(|deadline| deadline <= now);
            if !due {
                break;
            }
            if let Some((_, m)) = self.items.pop_front() {
                let len = m.payload_len();
                self.bytes = self.bytes.saturating_sub(len);
                gone.add(len);
            }
        }
        gone
    }

    /// Drops everything and counts it.
    pub(crate) fn clear(&mut self) -> Count {
        let mut gone = Count::default();
        for m in self.drain() {
            gone.add(m.payload_len());
        }
        gone
    }

    /// What is queued.
    pub(crate) fn count(&self) -> Count {
        Count {
            frames: u64::try_from(self.items.len()).unwrap_or(u64::MAX),
            bytes: u64::try_from(self.bytes).unwrap_or(u64::MAX),
        }
    }

    /// Whether nothing is queued.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn limits(bytes: usize, frames: usize) -> RelayLimits {
        RelayLimits {
            offline_queue_bytes: bytes,
            offline_queue_frames: frames,
            ..RelayLimits::default()
        }
    }

    fn msg(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn bounded_by_bytes_and_by_frames() {
        let t = Instant::now();
        let mut q = OfflineQueue::default();
        let l = limits(10, 3);
        assert!(q.push(msg(6), t, &l).is_ok());
        assert_eq!(q.push(msg(5), t, &l).map_err(|m| m.len()), Err(5));
        assert!(
            q.push(msg(4), t, &l).is_ok(),
            "exactly at the byte bound fits"
        );
        assert!(q.push(msg(0), t, &l).is_ok());
        assert!(q.push(msg(0), t, &l).is_err(), "frame bound");
        assert_eq!(
            q.clear(),
            Count {
                frames: 3,
                bytes: 10
            }
        );
        assert!(q.is_empty());
        assert!(q.push(msg(10), t, &l).is_ok(), "bytes freed by clear");
    }

    #[test]
    fn expires_the_oldest_prefix_only() {
        let t = Instant::now();
        let grace = Duration::from_secs(30);
        let l = limits(100, 100);
        let mut q = OfflineQueue::default();
        for (i, n) in [1usize, 2, 3].into_iter().enumerate() {
            assert!(q
                .push(msg(n), t + Duration::from_secs(10 * i as u64), &l)
                .is_ok());
        }
        assert_eq!(
            q.expire(t + Duration::from_secs(29), grace),
            Count::default()
        );
        assert_eq!(
            q.expire(t + Duration::from_secs(40), grace),
            Count {
                frames: 2,
                bytes: 3
            }
        );
        assert_eq!(q.oldest(), Some(t + Duration::from_secs(20)));
        assert_eq!(
            q.count(),
            Count {
                frames: 1,
                bytes: 3
            }
        );
        let rest: Vec<usize> = q.drain().map(|m| m.len()).collect();
        assert_eq!(rest, vec![3]);
        assert!(
            q.push(msg(100), t, &l).is_ok(),
            "drain resets the byte count"
        );
    }
}
