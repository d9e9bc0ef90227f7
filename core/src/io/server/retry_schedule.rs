//! When to tell a refused connection to come back (`Retry-After` on a 503 past
//! `--max-connections` or `--max-unauthenticated`, PROTOCOL.md §8).
//!
//! A constant `Retry-After: 1` sends every device refused in one second back in the
//! next one, where most are refused again: after a restart, thousands of terminals
//! reconnect at once and the relay spends its CPU refusing the same devices over and
//! over (issue 12's storm). Instead the relay hands out return times the way a
//! receptionist hands out appointments: it measures how many new connections it got
//! through in the last second (its capacity), and gives each refused connection the next
//! free slot at that rate. The refused crowd is thereby spread over the time the relay
//! needs to admit it, and a relay that is not overloaded still answers `1`.
//!
//! RFC 9110 §10.2.3: `Retry-After` is delay-seconds, a non-negative integer; the value is
//! rounded up to whole seconds, never 0, and capped at [`MAX_RETRY_AFTER`] (what a
//! terminal's own backoff reaches, seed 001's 30 s).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// The longest `Retry-After` the relay hands out.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The capacity assumed before any connection got through (after a start): low enough
/// that a storm's first refusals are spread, high enough that a handful are told `1`.
pub const MIN_CAPACITY_PER_SEC: u32 = 200;

/// Connections that got through (left the unauthenticated stage) per second, over the
/// last whole second, and the schedule of return times already handed out.
#[derive(Debug, Clone)]
pub struct RetrySchedule {
    /// Start of the current one-second bucket.
    bucket_start: Option<Instant>,
    /// Connections through in the current bucket.
    through_now: u32,
    /// Connections through in the previous whole bucket (0 if it was long ago).
    through_last: u32,
    /// The time up to which return slots have been handed out.
    horizon: Option<Instant>,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::new()
    }
}

impl RetrySchedule {
    /// No history: capacity is [`MIN_CAPACITY_PER_SEC`] until measured.
    pub fn new() -> Self {
        RetrySchedule {
            bucket_start: None,
            through_now: 0,
            through_last: 0,
            horizon: None,
        }
    }

    fn roll(&mut self, now: Instant) {
        let start = *self.bucket_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(2) {
            self.through_last = 0;
            self.through_now = 0;
            self.bucket_start = Some(now);
        } else if elapsed >= Duration::from_secs(1) {
            self.through_last = self.through_now;
            self.through_now = 0;
            self.bucket_start = Some(start + Duration::from_secs(1));
        }
    }

    /// A connection left the unauthenticated stage (authenticated, answered, or closed):
    /// one more place for a newcomer this second.
    pub fn handle_through(&mut self, now: Instant) {
        self.roll(now);
        self.through_now = self.through_now.saturating_add(1);
    }

    /// New connections the relay gets through per second, as last measured.
    pub fn capacity_per_sec(&self) -> u32 {
        self.through_last
            .max(self.through_now)
            .max(MIN_CAPACITY_PER_SEC)
    }

    /// A connection is refused now: the `Retry-After` to give it, in whole seconds
    /// (1..=30). Each refusal takes the next free return slot at the measured capacity.
    #[must_use = "the value goes into the refusal's Retry-After header"]
    pub fn handle_refused(&mut self, now: Instant) -> u64 {
        self.roll(now);
        let slot = Duration::from_secs(1) / self.capacity_per_sec();
        let from = self.horizon.filter(|h| *h > now).unwrap_or(now);
        let horizon = (from + slot).min(now + MAX_RETRY_AFTER);
        self.horizon = Some(horizon);
        let wait = horizon - now;
        (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).clamp(1, MAX_RETRY_AFTER.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_relay_that_is_not_overloaded_says_one_second() {
        let t0 = Instant::now();
        let mut s = RetrySchedule::new();
        for i in 0..50 {
            assert_eq!(s.handle_refused(t0 + ms(i * 20)), 1);
        }
    }

    #[test]
    fn a_crowd_refused_at_once_is_spread_at_the_measured_capacity() {
        let t0 = Instant::now();
        let mut s = RetrySchedule::new();
        // 1,000 connections got through in the last second.
        for i in 0..1_000u64 {
            s.handle_through(t0 + Duration::from_micros(i * 1_000));
        }
        let now = t0 + ms(1_000);
        assert_eq!(s.capacity_per_sec(), 1_000);
        // 5,000 refused at once: told 1..=5 s, a thousand per second.
        let mut per_second = [0u32; 6];
        for _ in 0..5_000 {
            let r = s.handle_refused(now);
            per_second[r as usize] += 1;
        }
        assert_eq!(per_second[0], 0);
        for (sec, n) in per_second.iter().enumerate().skip(1) {
            assert!(
                (999..=1_001).contains(n),
                "second {sec}: {n} told to return"
            );
        }
    }

    #[test]
    fn the_wait_is_capped_and_never_zero() {
        let t0 = Instant::now();
        let mut s = RetrySchedule::new();
        for _ in 0..100_000 {
            let r = s.handle_refused(t0);
            assert!((1..=30).contains(&r));
        }
        assert_eq!(s.handle_refused(t0), 30);
    }

    #[test]
    fn slots_handed_out_expire_as_time_passes() {
        let t0 = Instant::now();
        let mut s = RetrySchedule::new();
        for _ in 0..2_000 {
            let _ = s.handle_refused(t0);
        }
        assert_eq!(s.handle_refused(t0), 11, "200/s: 2,001st slot is 10 s away");
        // Ten seconds later, the schedule is nearly used up.
        assert_eq!(s.handle_refused(t0 + ms(10_000)), 1);
    }

    #[test]
    fn capacity_forgets_an_old_busy_second() {
        let t0 = Instant::now();
        let mut s = RetrySchedule::new();
        for _ in 0..5_000 {
            s.handle_through(t0);
        }
        s.handle_through(t0 + ms(1_100));
        assert_eq!(s.capacity_per_sec(), 5_000, "the last whole second");
        s.handle_through(t0 + ms(3_500));
        assert_eq!(s.capacity_per_sec(), MIN_CAPACITY_PER_SEC, "long ago");
    }
}
