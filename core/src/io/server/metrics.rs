//! Per-shard counters and gauges: each shard writes only its own (relaxed atomics on
//! memory no other core writes), the admin shard reads them all for `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The role a connection plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRole {
    /// `device-listener`, until registered.
    Registration,
    /// `device-connection`.
    Device,
    /// `pos-listener`.
    PosControl,
    /// `session`.
    PosSession,
}

impl ConnRole {
    /// Every role, in metric order.
    pub const ALL: [ConnRole; 4] = [
        ConnRole::Registration,
        ConnRole::Device,
        ConnRole::PosControl,
        ConnRole::PosSession,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnRole::Registration => "registration",
            ConnRole::Device => "device",
            ConnRole::PosControl => "pos_control",
            ConnRole::PosSession => "pos_session",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One shard's numbers.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    open: [AtomicI64; 4],
    opened: [AtomicU64; 4],
    /// Messages relayed device → POS.
    pub frames_to_pos: AtomicU64,
    /// Payload bytes relayed device → POS.
    pub bytes_to_pos: AtomicU64,
    /// Messages relayed POS → device.
    pub frames_to_device: AtomicU64,
    /// Payload bytes relayed POS → device.
    pub bytes_to_device: AtomicU64,
    /// Messages put in an offline queue.
    pub queued: AtomicU64,
    /// POS messages reported undelivered.
    pub undelivered_frames: AtomicU64,
    /// Device messages dropped because nobody could receive them or be told.
    pub dropped_device_frames: AtomicU64,
    /// Connections handed over to this shard by another.
    pub handovers_in: AtomicU64,
    /// Connections closed for a protocol error.
    pub protocol_errors: AtomicU64,
    /// §12 forwarded sessions opened: POS connections here for a device on another node.
    pub forwarded_edge: AtomicU64,
    /// §12 forwarded sessions opened: stand-ins here for another node's POS connection.
    pub forwarded_owner: AtomicU64,
    /// §11 reliable claims this shard holds (set at each tick).
    pub reliable_claims: AtomicI64,
    /// Bytes those claims hold for delivery (set at each tick).
    pub reliable_held_bytes: AtomicI64,
    /// How long relayed messages waited in the relay before their socket took them.
    pub relay_latency: std::sync::Arc<crate::io::metrics::LatencyHistogram>,
}

impl ShardMetrics {
    /// A connection of `role` opened.
    pub fn opened(&self, role: ConnRole) {
        self.open[role.index()].fetch_add(1, Ordering::Relaxed);
        self.opened[role.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection of `role` closed.
    pub fn closed(&self, role: ConnRole) {
        self.open[role.index()].fetch_sub(1, Ordering::Relaxed);
    }

    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A counter series: name, help (empty: same family as the previous one), labels, field.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardMetrics) -> &AtomicU64,
);

/// A gauge series: name, help, field.
type Gauge = (&'static str, &'static str, fn(&ShardMetrics) -> &AtomicI64);

/// Appends the per-shard series to `out` (Prometheus text format).
pub fn render(shards: &[std::sync::Arc<ShardMetrics>], out: &mut String) {
    let histograms: Vec<&crate::io::metrics::LatencyHistogram> =
        shards.iter().map(|m| &*m.relay_latency).collect();
    crate::io::metrics::LatencyHistogram::render(
        "posrelay_relay_latency_seconds",
        "Time a relayed message spends in the relay, from the read that completed it to when the receiver's socket takes it.",
        &histograms,
        out,
    );
    let _ = writeln!(
        out,
        "# HELP posrelay_connections Open connections by role and shard."
    );
    let _ = writeln!(out, "# TYPE posrelay_connections gauge");
    for (i, m) in shards.iter().enumerate() {
        for role in ConnRole::ALL {
            let v = m.open[role.index()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "posrelay_connections{{role=\"{}\",shard=\"{i}\"}} {v}",
                role.as_str()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP posrelay_connections_opened_total Connections opened by role and shard."
    );
    let _ = writeln!(out, "# TYPE posrelay_connections_opened_total counter");
    for (i, m) in shards.iter().enumerate() {
        for role in ConnRole::ALL {
            let v = m.opened[role.index()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "posrelay_connections_opened_total{{role=\"{}\",shard=\"{i}\"}} {v}",
                role.as_str()
            );
        }
    }
    let gauges: [Gauge; 2] = [
        (
            "posrelay_reliable_claims",
            "Reliable claims (posrelay.reliable.v1) held by this node, by shard.",
            |m| &m.reliable_claims,
        ),
        (
            "posrelay_reliable_held_bytes",
            "Payload bytes reliable claims hold for delivery, by shard.",
            |m| &m.reliable_held_bytes,
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (i, m) in shards.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{i}\"}} {}",
                get(m).load(Ordering::Relaxed)
            );
        }
    }
    let series: [Series; 11] = [
        (
            "posrelay_relayed_frames_total",
            "Messages relayed, by direction.",
            "direction=\"to_pos\"",
            |m| &m.frames_to_pos,
        ),
        (
            "posrelay_relayed_frames_total",
            "",
            "direction=\"to_device\"",
            |m| &m.frames_to_device,
        ),
        (
            "posrelay_relayed_bytes_total",
            "Payload bytes relayed, by direction.",
            "direction=\"to_pos\"",
            |m| &m.bytes_to_pos,
        ),
        (
            "posrelay_relayed_bytes_total",
            "",
            "direction=\"to_device\"",
            |m| &m.bytes_to_device,
        ),
        (
            "posrelay_queued_frames_total",
            "Messages put in an offline queue.",
            "",
            |m| &m.queued,
        ),
        (
            "posrelay_undelivered_frames_total",
            "POS messages reported undelivered.",
            "",
            |m| &m.undelivered_frames,
        ),
        (
            "posrelay_dropped_device_frames_total",
            "Device messages nobody could receive (no claim).",
            "",
            |m| &m.dropped_device_frames,
        ),
        (
            "posrelay_handovers_total",
            "Connections handed over to their owning shard.",
            "",
            |m| &m.handovers_in,
        ),
        (
            "posrelay_protocol_errors_total",
            "Connections closed for an RFC 6455 violation.",
            "",
            |m| &m.protocol_errors,
        ),
        (
            "posrelay_forwarded_sessions_total",
            "Sessions forwarded between cluster nodes: the POS connection here (edge), or the device here (owner).",
            "end=\"edge\"",
            |m| &m.forwarded_edge,
        ),
        (
            "posrelay_forwarded_sessions_total",
            "",
            "end=\"owner\"",
            |m| &m.forwarded_owner,
        ),
    ];
    for (name, help, labels, get) in series {
        if !help.is_empty() {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
        }
        for (i, m) in shards.iter().enumerate() {
            let v = get(m).load(Ordering::Relaxed);
            let sep = if labels.is_empty() { "" } else { "," };
            let _ = writeln!(out, "{name}{{{labels}{sep}shard=\"{i}\"}} {v}");
        }
    }
}
