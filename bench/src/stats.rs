//! Round-trip latencies (hdrhistogram, nanoseconds) and the counters of a run.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram tracks (60 s); larger values are clamped.
const MAX_NANOS: u64 = 60_000_000_000;

/// Latencies of one run.
#[derive(Debug, Clone)]
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty histogram: 1 ns to 60 s, 3 significant digits.
    pub fn new() -> Latencies {
        Latencies {
            hist: Histogram::new_with_bounds(1, MAX_NANOS, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    /// Records one round trip.
    pub fn record(&mut self, nanos: u64) {
        self.hist.saturating_record(nanos.clamp(1, MAX_NANOS));
    }

    /// How many round trips were recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at `quantile` (0..=1), in nanoseconds; 0 when empty.
    pub fn quantile(&self, quantile: f64) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.value_at_quantile(quantile)
        }
    }

    /// The summary reported to the user.
    pub fn summary(&self) -> LatencySummary {
        let us = |n: u64| n as f64 / 1000.0;
        LatencySummary {
            count: self.count(),
            p50_us: us(self.quantile(0.5)),
            p90_us: us(self.quantile(0.9)),
            p99_us: us(self.quantile(0.99)),
            p999_us: us(self.quantile(0.999)),
            p9999_us: us(self.quantile(0.9999)),
            max_us: us(if self.hist.is_empty() {
                0
            } else {
                self.hist.max()
            }),
        }
    }
}

/// Percentiles of the round-trip latency, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Round trips recorded.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// 99.99th percentile.
    pub p9999_us: f64,
    /// Largest.
    pub max_us: f64,
}

/// Counters of a load run (only what happened inside the measured window
/// counts toward throughput; errors and mismatches count at any time).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Messages the POS side sent (whole run).
    pub sent: u64,
    /// Round trips completed inside the measured window.
    pub round_trips: u64,
    /// Connections or setups that failed, and messages never answered.
    pub errors: u64,
    /// Messages that arrived with the wrong bytes, length, pair or order.
    pub mismatches: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() {
        let mut l = Latencies::new();
        for v in 1..=1000u64 {
            l.record(v * 1000); // 1 µs .. 1000 µs
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn empty_and_out_of_range() {
        assert_eq!(Latencies::new().summary(), LatencySummary::default());
        let mut l = Latencies::new();
        l.record(0);
        l.record(u64::MAX);
        assert_eq!(l.count(), 2);
        assert_eq!(l.quantile(0.0), 1);
    }
}
