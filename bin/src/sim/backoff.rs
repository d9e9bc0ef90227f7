//! Reconnect delays as a real terminal uses them: exponential, capped, with jitter so
//! that a fleet that lost the relay at once does not come back at once.

use rand::Rng;
use std::time::Duration;

/// Exponential backoff with "equal jitter": attempt `n` waits a random time in
/// `[d/2, d]` where `d = min(max, initial * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `initial`, never waits longer than `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next attempt (and counts the attempt).
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_millis() as u64;
        half + Duration::from_millis(rng.gen_range(0..=spread))
    }

    /// After a successful connection: start again from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let first = b.next_delay(&mut rng);
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
        let mut last = first;
        for _ in 0..30 {
            last = b.next_delay(&mut rng);
            assert!(last <= Duration::from_secs(30), "{last:?}");
        }
        assert!(
            last >= Duration::from_secs(15),
            "capped delays stay in [max/2, max]"
        );
        let delays: std::collections::HashSet<_> =
            (0..20).map(|_| b.next_delay(&mut rng)).collect();
        assert!(delays.len() > 1, "jitter: not every delay is the same");
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(500));
    }
}
