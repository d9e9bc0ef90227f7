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
            "posrelay_admin_calls_total",
            "Admin API calls answered.",
            &[("", self.admin_calls.get())],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
