//! Process-wide counters rendered in the Prometheus text format at `GET /metrics`.
//!
//! These are control-plane counters (requests, logins, failures): relaxed atomics,
//! never touched per relayed frame.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Log lines dropped because they could not be written (process-wide: the log writer
/// is the binary's, the relay only reports the count).
static LOG_WRITE_FAILURES: Counter = Counter(AtomicU64::new(0));

/// Counts `lines` log lines that could not be written (stderr closed, full, or too
/// slow to keep up): the log writer drops them rather than wait or fail.
pub fn log_write_failed(lines: u64) {
    LOG_WRITE_FAILURES.0.fetch_add(lines, Ordering::Relaxed);
}

/// Log lines dropped so far ([`log_write_failed`]).
pub fn log_write_failures() -> u64 {
    LOG_WRITE_FAILURES.get()
}

/// What `posrelay_build_info` reports: version, commit, build date (set once by the
/// binary, which knows them).
static BUILD_INFO: std::sync::OnceLock<[String; 3]> = std::sync::OnceLock::new();

/// Records the build the relay runs (`--version`): exposed as `posrelay_build_info`.
pub fn set_build_info(version: &str, commit: &str, build_date: &str) {
    let _ = BUILD_INFO.set([version.to_owned(), commit.to_owned(), build_date.to_owned()]);
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every counter the relay exposes.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Token requests answered 200.
    pub tokens_issued: Counter,
    /// Token requests refused with 400 (invalid_request / unsupported_grant_type).
    pub token_bad_request: Counter,
    /// Token requests refused with 401 invalid_client.
    pub token_invalid_client: Counter,
    /// Requests refused before routing: malformed (400).
    pub http_bad_request: Counter,
    /// Requests refused: headers over the limit (431).
    pub http_headers_too_large: Counter,
    /// Requests whose head did not arrive within the handshake timeout.
    pub http_handshake_timeout: Counter,
    /// Requests for an unknown path (404).
    pub http_not_found: Counter,
    /// Admin API calls, answered with any status.
    pub admin_calls: Counter,
    /// Admin API calls refused for a missing or wrong admin token.
    pub admin_unauthorized: Counter,
    /// TLS handshakes completed on the relay listener in full (certificate, signature).
    pub tls_handshakes_full: Counter,
    /// TLS handshakes completed by resuming a session (a ticket: no certificate sent).
    pub tls_handshakes_resumed: Counter,
    /// The served TLS certificate's `notAfter` (unix seconds); 0 without TLS.
    pub tls_not_after: AtomicU64,
}

impl Metrics {
    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, value) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        };
        counter(
            "posrelay_tokens_issued_total",
            "Access tokens issued by the OAuth2 token endpoint.",
            &[("", self.tokens_issued.get())],
        );
        counter(
            "posrelay_auth_failures_total",
            "Refused authentication attempts by reason.",
            &[
                ("reason=\"invalid_client\"", self.token_invalid_client.get()),
                ("reason=\"invalid_request\"", self.token_bad_request.get()),
                (
                    "reason=\"admin_unauthorized\"",
                    self.admin_unauthorized.get(),
                ),
            ],
        );
        counter(
            "posrelay_handshake_failures_total",
            "Requests refused before they were routed, by reason.",
            &[
                ("reason=\"bad_request\"", self.http_bad_request.get()),
                (
                    "reason=\"headers_too_large\"",
                    self.http_headers_too_large.get(),
                ),
                ("reason=\"timeout\"", self.http_handshake_timeout.get()),
                ("reason=\"not_found\"", self.http_not_found.get()),
            ],
        );
        counter(
            "posrelay_tls_handshakes_total",
            "TLS handshakes completed on the relay listener, full or resumed (a session ticket: no certificate, no signature).",
            &[
                ("kind=\"full\"", self.tls_handshakes_full.get()),
                ("kind=\"resumed\"", self.tls_handshakes_resumed.get()),
            ],
        );
        counter(
            "posrelay_admin_calls_total",
            "Admin API calls answered.",
            &[("", self.admin_calls.get())],
        );
        counter(
            "posrelay_log_write_failures_total",
            "Log lines dropped because they could not be written (stderr closed, full or not read fast enough).",
            &[("", log_write_failures())],
        );
        let not_after = self.tls_not_after.load(Ordering::Relaxed);
        if not_after > 0 {
            let _ = writeln!(out, "# HELP posrelay_tls_certificate_expiry_timestamp_seconds When the TLS certificate served now expires (its notAfter, unix seconds).");
            let _ = writeln!(
                out,
                "# TYPE posrelay_tls_certificate_expiry_timestamp_seconds gauge"
            );
            let _ = writeln!(
                out,
                "posrelay_tls_certificate_expiry_timestamp_seconds {not_after}"
            );
        }
        if let Some([version, commit, date]) = BUILD_INFO.get() {
            let _ = writeln!(out, "# HELP posrelay_build_info The running build: version, commit and build date (always 1).");
            let _ = writeln!(out, "# TYPE posrelay_build_info gauge");
            let _ = writeln!(
                out,
                "posrelay_build_info{{version=\"{}\",commit=\"{}\",build_date=\"{}\"}} 1",
                label_value(version),
                label_value(commit),
                label_value(date)
            );
        }
        out
    }
}

/// Bucket bounds of [`LatencyHistogram`], in microseconds.
pub const LATENCY_BOUNDS_US: [u64; 15] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    1_000_000,
];

/// A fixed-bucket latency histogram on atomics: recorded by one shard without locks or
/// allocation, read by the admin shard for `/metrics`.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; 16],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn record(&self, elapsed: std::time::Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Appends the Prometheus histogram (cumulative buckets, sum, count) of all
    /// `histograms` together under `name`.
    pub fn render(name: &str, help: &str, histograms: &[&LatencyHistogram], out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, bound) in LATENCY_BOUNDS_US
            .iter()
            .map(|b| Some(*b))
            .chain([None])
            .enumerate()
        {
            cumulative += histograms
                .iter()
                .map(|h| h.buckets[i].load(Ordering::Relaxed))
                .sum::<u64>();
            let le = match bound {
                Some(us) => format!("{}", us as f64 / 1e6),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum: u64 = histograms
            .iter()
            .map(|h| h.sum_us.load(Ordering::Relaxed))
            .sum();
        let _ = writeln!(out, "{name}_sum {}", sum as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative() {
        let h = LatencyHistogram::default();
        h.record(std::time::Duration::from_micros(5));
        h.record(std::time::Duration::from_micros(30));
        h.record(std::time::Duration::from_secs(5));
        let mut out = String::new();
        LatencyHistogram::render("x", "test", &[&h], &mut out);
        assert!(out.contains("x_bucket{le=\"0.00001\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"0.00005\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count 3\n"));
    }

    #[test]
    fn renders_prometheus_text_with_current_values() {
        let m = Metrics::default();
        m.tokens_issued.inc();
        m.tokens_issued.inc();
        m.token_invalid_client.inc();
        let text = m.render();
        assert!(text.contains(
            "# TYPE posrelay_tokens_issued_total counter\nposrelay_tokens_issued_total 2\n"
        ));
        assert!(text.contains("posrelay_auth_failures_total{reason=\"invalid_client\"} 1\n"));
    }

    #[test]
    fn build_info_is_a_gauge_with_escaped_labels() {
        set_build_info("0.1.0", "abc\"def", "2026-12-02");
        let text = Metrics::default().render();
        assert!(
            text.contains("posrelay_build_info{version=\"0.1.0\",commit=\"abc\\\"def\",build_date=\"2026-12-02\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn failed_log_writes_are_counted_process_wide() {
        let before = log_write_failures();
        log_write_failed(3);
        assert!(log_write_failures() >= before + 3);
        let text = Metrics::default().render();
        assert!(text.contains("# TYPE posrelay_log_write_failures_total counter\n"));
    }
}
