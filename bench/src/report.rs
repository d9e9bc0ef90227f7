//! What a run reports: the figures per scenario and target, the ratios the
//! issue sets goals for, a human table and JSON.

use serde::Serialize;

use crate::handshake::HandshakeOutcome;
use crate::idle::IdleOutcome;
use crate::load::{LoadOutcome, Mode};
use crate::procfs::Machine;
use crate::scenario::{Scale, Work};
use crate::stats::LatencySummary;
use crate::storm::StormOutcome;
use crate::target::TargetKind;

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Full or tiny.
    pub scale: Scale,
    /// One entry per scenario.
    pub scenarios: Vec<ScenarioReport>,
}

/// One scenario, every target side by side.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Preset name.
    pub name: String,
    /// What it shows.
    pub about: String,
    /// Which repetition (from 1).
    pub repetition: usize,
    /// Whether the run is over TLS (wss://); then posrelay also runs over ws in the same
    /// repetition, as the reference for the wss/ws ratios.
    pub tls: bool,
    /// What it ran.
    pub work: Work,
    /// Pacing (load scenarios).
    pub mode: Option<Mode>,
    /// Warm-up and measured seconds (load scenarios).
    pub warmup_secs: f64,
    /// Measured seconds asked for.
    pub duration_secs: f64,
    /// Per target.
    pub results: Vec<TargetReport>,
    /// The ratios with goals.
    pub ratios: Vec<Ratio>,
}

/// One target's figures in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// Which target.
    pub target: TargetKind,
    /// Whether this target ran over TLS.
    pub tls: bool,
    /// Whether its sessions were reliable ones (`--reliable`, PROTOCOL.md §11); then the
    /// same target also runs with plain sessions in the same repetition, as reference.
    pub reliable: bool,
    /// Where the target's threads ran.
    pub target_placement: String,
    /// Where the generator ran.
    pub generator_placement: String,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// Load figures.
    pub load: Option<LoadFigures>,
    /// Idle figures.
    pub idle: Option<IdleOutcome>,
    /// Storm figures.
    pub storm: Option<StormOutcome>,
    /// Handshake figures.
    pub handshake: Option<HandshakeOutcome>,
}

impl TargetReport {
    /// The column name: the target, and `(ws)`/`(wss)` in a TLS run.
    pub fn label(&self, tls_run: bool) -> String {
        let base = match (tls_run, self.tls) {
            (false, _) => self.target.name().to_owned(),
            (true, true) => format!("{} wss", self.target.name()),
            (true, false) => format!("{} ws", self.target.name()),
        };
        if self.reliable {
            format!("{base} reliable")
        } else {
            base
        }
    }
}

/// Figures of a load run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFigures {
    /// Pairs asked for.
    pub pairs: usize,
    /// Pairs set up.
    pub pairs_up: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Measured seconds.
    pub window_secs: f64,
    /// Round trips completed in the window.
    pub round_trips: u64,
    /// Round trips per second.
    pub round_trips_per_sec: f64,
    /// Messages delivered per second: two per round trip (there and back).
    pub messages_per_sec: f64,
    /// Payload MiB delivered per second (both directions).
    pub mib_per_sec: f64,
    /// Round-trip latency.
    pub latency: LatencySummary,
    /// Messages sent (whole run).
    pub sent: u64,
    /// Failed setups, failed connections, unanswered messages.
    pub errors: u64,
    /// Wrong payloads.
    pub mismatches: u64,
    /// Target CPU seconds (utime + stime) in the window.
    pub target_cpu_secs: f64,
    /// Target CPU microseconds per round trip.
    pub target_cpu_us_per_round_trip: Option<f64>,
    /// Target CPU seconds per wall second.
    pub target_cpu_utilisation: f64,
    /// Generator CPU microseconds per round trip.
    pub generator_cpu_us_per_round_trip: Option<f64>,
    /// Seconds the pairs took to set up.
    pub setup_secs: f64,
    /// Share of the target's CPU other processes used in the window.
    pub foreign_load_target_cpu: Option<f64>,
    /// Share of the generator's CPU other processes used in the window.
    pub foreign_load_generator_cpu: Option<f64>,
    /// Share of the target's virtual CPU the hypervisor stole in the window.
    pub steal_target_cpu: Option<f64>,
    /// Share of the generator's virtual CPU the hypervisor stole in the window.
    pub steal_generator_cpu: Option<f64>,
}

impl LoadFigures {
    /// The figures of `o` for `pairs` pairs of `size`-byte messages.
    pub fn new(o: &LoadOutcome, pairs: usize, size: usize) -> LoadFigures {
        let secs = o.window.as_secs_f64().max(1e-9);
        let rt = o.counters.round_trips;
        let per_rt = |cpu: f64| (rt > 0).then(|| cpu * 1e6 / rt as f64);
        let target_cpu = o.target_cpu.as_duration().as_secs_f64();
        LoadFigures {
            pairs,
            pairs_up: o.pairs_up,
            size,
            window_secs: secs,
            round_trips: rt,
            round_trips_per_sec: rt as f64 / secs,
            messages_per_sec: 2.0 * rt as f64 / secs,
            mib_per_sec: 2.0 * rt as f64 * size as f64 / secs / (1024.0 * 1024.0),
            latency: o.latencies.summary(),
            sent: o.counters.sent,
            errors: o.counters.errors,
            mismatches: o.counters.mismatches,
            target_cpu_secs: target_cpu,
            target_cpu_us_per_round_trip: per_rt(target_cpu),
            target_cpu_utilisation: target_cpu / secs,
            generator_cpu_us_per_round_trip: per_rt(o.generator_cpu.as_duration().as_secs_f64()),
            setup_secs: o.setup.as_secs_f64(),
            foreign_load_target_cpu: o.foreign_load.map(|f| f.0),
            foreign_load_generator_cpu: o.foreign_load.map(|f| f.1),
            steal_target_cpu: o.steal.map(|f| f.0),
            steal_generator_cpu: o.steal.map(|f| f.1),
        }
    }
}

/// A ratio the issue sets a goal for.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// What is divided by what.
    pub name: String,
    /// The value, when both sides were measured.
    pub value: Option<f64>,
    /// The goal, e.g. `<= 0.5`.
    pub goal: String,
    /// Whether the goal is met.
    pub met: Option<bool>,
}

fn ratio(name: &str, num: Option<f64>, den: Option<f64>, max: f64) -> Ratio {
    let value = match (num, den) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    };
    Ratio {
        name: name.to_owned(),
        value,
        goal: format!("<= {max}"),
        met: value.map(|v| v <= max),
    }
}

impl ScenarioReport {
    fn result(&self, kind: TargetKind) -> Option<&TargetReport> {
        self.results
            .iter()
            .find(|r| r.target == kind && r.tls == self.tls && !r.reliable && r.error.is_none())
    }

    /// In a TLS run, the same target's reference run over plain ws.
    fn result_ws(&self, kind: TargetKind) -> Option<&TargetReport> {
        self.results
            .iter()
            .find(|r| r.target == kind && !r.tls && !r.reliable && r.error.is_none())
    }

    /// Fills in the ratios from the results.
    pub fn compute_ratios(&mut self) {
        let load = |k| self.result(k).and_then(|r| r.load.as_ref());
        let cpu = |k| load(k).and_then(|l| l.target_cpu_us_per_round_trip);
        let mut out = Vec::new();
        if let (true, Work::Load { size, .. }) = (self.tls, self.work) {
            let ws_cpu = self
                .result_ws(TargetKind::Posrelay)
                .and_then(|r| r.load.as_ref())
                .and_then(|l| l.target_cpu_us_per_round_trip);
            out.push(ratio(
                "posrelay wss CPU per round trip / posrelay ws CPU per round trip",
                cpu(TargetKind::Posrelay),
                ws_cpu,
                if size >= 16 * 1024 { 1.5 } else { 1.15 },
            ));
            out.push(ratio(
                "posrelay wss CPU per round trip / baseline (tokio-rustls) CPU per round trip",
                cpu(TargetKind::Posrelay),
                cpu(TargetKind::Baseline),
                0.6,
            ));
        }
        if let Work::Load { .. } = self.work {
            out.push(ratio(
                "posrelay CPU per round trip / baseline CPU per round trip",
                cpu(TargetKind::Posrelay),
                cpu(TargetKind::Baseline),
                0.5,
            ));
            out.push(ratio(
                "posrelay CPU per round trip / (2 x direct CPU per round trip)",
                cpu(TargetKind::Posrelay),
                cpu(TargetKind::Direct).map(|c| 2.0 * c),
                1.2,
            ));
            let lat = |k, f: fn(&LatencySummary) -> f64| load(k).map(|l| f(&l.latency));
            out.push(ratio(
                "posrelay p50 / direct p50",
                lat(TargetKind::Posrelay, |l| l.p50_us),
                lat(TargetKind::Direct, |l| l.p50_us),
                2.5,
            ));
            out.push(ratio(
                "posrelay p99 / direct p99",
                lat(TargetKind::Posrelay, |l| l.p99_us),
                lat(TargetKind::Direct, |l| l.p99_us),
                2.5,
            ));
        }
        if let Work::Idle { .. } = self.work {
            let per = self
                .result(TargetKind::Posrelay)
                .and_then(|r| r.idle.as_ref())
                .map(|i| i.rss_per_connection);
            let (name, goal) = if self.tls {
                (
                    "posrelay resident bytes per idle wss connection / 4 KiB",
                    4096.0,
                )
            } else {
                (
                    "posrelay resident bytes per idle connection / 2 KiB",
                    2048.0,
                )
            };
            out.push(ratio(name, per, Some(goal), 1.0));
        }
        if let (true, Work::Handshake { .. }) = (self.tls, self.work) {
            let h = self
                .result(TargetKind::Posrelay)
                .and_then(|r| r.handshake.as_ref());
            let full = h.and_then(|h| h.full.target_cpu_us_per_connection);
            let resumed = h
                .and_then(|h| h.resumed.as_ref())
                .and_then(|r| r.target_cpu_us_per_connection);
            out.push(Ratio {
                name: "posrelay CPU per resumed connection / per full one".into(),
                value: match (resumed, full) {
                    (Some(r), Some(f)) if f > 0.0 => Some(r / f),
                    _ => None,
                },
                goal: "report".into(),
                met: None,
            });
        }
        if let Work::Storm { .. } = self.work {
            let failed = self
                .result(TargetKind::Posrelay)
                .and_then(|r| r.storm.as_ref())
                .map(|s| s.failed_devices as f64);
            out.push(Ratio {
                name: "posrelay devices failed in the storm".into(),
                value: failed,
                goal: "= 0".into(),
                met: failed.map(|f| f == 0.0),
            });
        }
        self.ratios = out;
    }

    /// Whether any target counted errors, mismatches or failed devices, or could not run.
    pub fn has_failures(&self) -> bool {
        self.results.iter().any(|r| {
            r.error.is_some()
                || r.load.as_ref().is_some_and(|l| l.errors + l.mismatches > 0)
                || r.idle.as_ref().is_some_and(|i| i.errors + i.mismatches > 0)
                || r.storm.as_ref().is_some_and(|s| s.failed_devices > 0)
                || r.handshake.as_ref().is_some_and(|h| {
                    h.full.connections == 0 || h.resumed.as_ref().is_some_and(|r| r.resumed == 0)
                })
        })
    }
}

fn f1(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(f1).unwrap_or_else(|| "-".into())
}

/// Renders a scenario as a table: one column per target.
pub fn render(s: &ScenarioReport) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: &str, f: &dyn Fn(&TargetReport) -> String| {
        rows.push((label.to_owned(), s.results.iter().map(f).collect()));
    };
    let load = |r: &TargetReport| r.load.clone();
    match s.work {
        Work::Load { .. } => {
            row("pairs up", &|r| {
                load(r).map_or("-".into(), |l| format!("{}/{}", l.pairs_up, l.pairs))
            });
            row("round trips/s", &|r| {
                load(r).map_or("-".into(), |l| f1(l.round_trips_per_sec))
            });
            row("messages/s", &|r| {
                load(r).map_or("-".into(), |l| f1(l.messages_per_sec))
            });
            row("MiB/s", &|r| {
                load(r).map_or("-".into(), |l| format!("{:.2}", l.mib_per_sec))
            });
            type Pick = fn(&LatencySummary) -> f64;
            let pcts: [(&str, Pick); 6] = [
                ("p50 µs", |l| l.p50_us),
                ("p90 µs", |l| l.p90_us),
                ("p99 µs", |l| l.p99_us),
                ("p99.9 µs", |l| l.p999_us),
                ("p99.99 µs", |l| l.p9999_us),
                ("max µs", |l| l.max_us),
            ];
            for (label, pick) in pcts {
                row(label, &|r| {
                    load(r).map_or("-".into(), |l| f1(pick(&l.latency)))
                });
            }
            row("target CPU µs/round trip", &|r| {
                load(r).map_or("-".into(), |l| opt(l.target_cpu_us_per_round_trip))
            });
            row("target CPU use", &|r| {
                load(r).map_or("-".into(), |l| {
                    format!("{:.0}%", l.target_cpu_utilisation * 100.0)
                })
            });
            row("generator CPU µs/round trip", &|r| {
                load(r).map_or("-".into(), |l| opt(l.generator_cpu_us_per_round_trip))
            });
            row("errors / mismatches", &|r| {
                load(r).map_or("-".into(), |l| format!("{} / {}", l.errors, l.mismatches))
            });
            let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.0}%", v * 100.0));
            row("other processes on target/gen CPU", &|r| {
                load(r).map_or("-".into(), |l| {
                    format!(
                        "{}/{}",
                        pct(l.foreign_load_target_cpu),
                        pct(l.foreign_load_generator_cpu)
                    )
                })
            });
            row("hypervisor steal on target/gen CPU", &|r| {
                load(r).map_or("-".into(), |l| {
                    format!("{}/{}", pct(l.steal_target_cpu), pct(l.steal_generator_cpu))
                })
            });
        }
        Work::Idle { .. } => {
            let idle = |r: &TargetReport| r.idle.clone();
            row("pairs up", &|r| {
                idle(r).map_or("-".into(), |i| format!("{}/{}", i.pairs_up, i.pairs))
            });
            row("connections on target", &|r| {
                idle(r).map_or("-".into(), |i| i.connections.to_string())
            });
            row("target RSS before MiB", &|r| {
                idle(r).map_or("-".into(), |i| {
                    format!("{:.1}", i.before.rss as f64 / 1048576.0)
                })
            });
            row("target RSS after MiB", &|r| {
                idle(r).map_or("-".into(), |i| {
                    format!("{:.1}", i.after.rss as f64 / 1048576.0)
                })
            });
            row("RSS bytes/connection", &|r| {
                idle(r).map_or("-".into(), |i| f1(i.rss_per_connection))
            });
            row("anon RSS bytes/connection", &|r| {
                idle(r).map_or("-".into(), |i| f1(i.anon_per_connection))
            });
            row("setup s", &|r| {
                idle(r).map_or("-".into(), |i| format!("{:.1}", i.setup_secs))
            });
            row("errors / mismatches", &|r| {
                idle(r).map_or("-".into(), |i| format!("{} / {}", i.errors, i.mismatches))
            });
        }
        Work::Storm { .. } => {
            let storm = |r: &TargetReport| r.storm.clone();
            row("devices", &|r| {
                storm(r).map_or("-".into(), |s| s.devices.to_string())
            });
            row("online before restart", &|r| {
                storm(r).map_or("-".into(), |s| s.online_before.to_string())
            });
            row("first connect s", &|r| {
                storm(r).map_or("-".into(), |s| format!("{:.2}", s.first_online_secs))
            });
            row("restart s", &|r| {
                storm(r).map_or("-".into(), |s| format!("{:.2}", s.restart_secs))
            });
            row("all back online s", &|r| {
                storm(r).map_or("-".into(), |s| {
                    s.all_online_secs
                        .map_or("never".into(), |t| format!("{t:.2}"))
                })
            });
            row("failed devices", &|r| {
                storm(r).map_or("-".into(), |s| s.failed_devices.to_string())
            });
            row("failed attempts", &|r| {
                storm(r).map_or("-".into(), |s| s.failed_attempts.to_string())
            });
            row("of which readable refusals (Retry-After)", &|r| {
                storm(r).map_or("-".into(), |s| s.refusals_readable.to_string())
            });
            row("of which unreadable failures", &|r| {
                storm(r).map_or("-".into(), |s| s.failures_unreadable.to_string())
            });
            row("unreadable failures by kind", &|r| {
                storm(r).map_or("-".into(), |s| {
                    let kinds: Vec<String> = s
                        .unreadable_kinds
                        .iter()
                        .map(|(k, n)| format!("{k} x{n}"))
                        .collect();
                    if kinds.is_empty() {
                        "-".into()
                    } else {
                        kinds.join("; ")
                    }
                })
            });
            row("retry mode", &|r| {
                storm(r).map_or("-".into(), |s| format!("{:?}", s.mode).to_lowercase())
            });
        }
        Work::Handshake { .. } => {
            let hs = |r: &TargetReport| r.handshake.clone();
            row("clients", &|r| {
                hs(r).map_or("-".into(), |h| h.clients.to_string())
            });
            row("full: connections/s", &|r| {
                hs(r).map_or("-".into(), |h| f1(h.full.per_second))
            });
            row("full: target CPU µs/connection", &|r| {
                hs(r).map_or("-".into(), |h| opt(h.full.target_cpu_us_per_connection))
            });
            row("resumed: connections/s", &|r| {
                hs(r)
                    .and_then(|h| h.resumed)
                    .map_or("-".into(), |x| f1(x.per_second))
            });
            row("resumed: target CPU µs/connection", &|r| {
                hs(r)
                    .and_then(|h| h.resumed)
                    .map_or("-".into(), |x| opt(x.target_cpu_us_per_connection))
            });
            row("resumed: of which resumed", &|r| {
                hs(r)
                    .and_then(|h| h.resumed)
                    .map_or("-".into(), |x| format!("{}/{}", x.resumed, x.connections))
            });
            row("errors full / resumed", &|r| {
                hs(r).map_or("-".into(), |h| {
                    format!(
                        "{} / {}",
                        h.full.errors,
                        h.resumed.map_or("-".into(), |x| x.errors.to_string())
                    )
                })
            });
        }
    }
    row("error", &|r| {
        r.error.clone().map_or(String::new(), |e| {
            e.lines().next().unwrap_or("").chars().take(40).collect()
        })
    });

    let mut out = String::new();
    let mode = match s.mode {
        Some(Mode::Closed { in_flight }) => {
            format!(", closed loop, {in_flight} in flight per pair")
        }
        Some(Mode::Open { rate }) => format!(", open loop at {rate} msg/s"),
        None => String::new(),
    };
    let timing = if matches!(s.work, Work::Load { .. }) {
        format!(
            ", {}s measured after {}s warm-up",
            s.duration_secs, s.warmup_secs
        )
    } else {
        String::new()
    };
    let rep = if s.repetition > 1 {
        format!(" #{}", s.repetition)
    } else {
        String::new()
    };
    let over = if s.tls { " over TLS" } else { "" };
    out.push_str(&format!(
        "\n== {}{rep}{over} ({}): {}{mode}{timing}\n",
        s.name,
        s.work.describe(),
        s.about
    ));
    let width0 = rows
        .iter()
        .map(|r| r.0.chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    let widths: Vec<usize> = (0..s.results.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.1[i].chars().count())
                .chain([s.results[i].label(s.tls).chars().count()])
                .max()
                .unwrap_or(8)
                .max(10)
        })
        .collect();
    out.push_str(&format!("{:width0$}", ""));
    for (r, w) in s.results.iter().zip(&widths) {
        out.push_str(&format!("  {:>w$}", r.label(s.tls)));
    }
    out.push('\n');
    for (label, cells) in rows {
        if cells.iter().all(String::is_empty) {
            continue;
        }
        out.push_str(&format!("{:<width0$}", label));
        for (c, w) in cells.iter().zip(&widths) {
            out.push_str(&format!("  {:>w$}", c));
        }
        out.push('\n');
    }
    for r in &s.ratios {
        let verdict = match r.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        out.push_str(&format!(
            "  {}: {} (goal {}) {verdict}\n",
            r.name,
            r.value.map_or("-".into(), |v| format!("{v:.2}")),
            r.goal
        ));
    }
    for r in &s.results {
        out.push_str(&format!(
            "  placement {}: target {}; generator {}\n",
            r.label(s.tls),
            r.target_placement,
            r.generator_placement
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::CpuTicks;
    use crate::stats::{Counters, Latencies};
    use std::time::Duration;

    fn load_report(kind: TargetKind, cpu_ticks: u64, rt: u64, p50_ns: u64) -> TargetReport {
        let mut lat = Latencies::new();
        for _ in 0..rt.min(100) {
            lat.record(p50_ns);
        }
        let o = LoadOutcome {
            counters: Counters {
                sent: rt,
                round_trips: rt,
                errors: 0,
                mismatches: 0,
            },
            latencies: lat,
            window: Duration::from_secs(1),
            target_cpu: CpuTicks {
                utime: cpu_ticks,
                stime: 0,
            },
            generator_cpu: CpuTicks::default(),
            pairs_up: 1,
            foreign_load: None,
            steal: None,
            setup: Duration::ZERO,
        };
        TargetReport {
            target: kind,
            tls: false,
            reliable: false,
            handshake: None,
            target_placement: "cpu 0".into(),
            generator_placement: "cpu 1".into(),
            error: None,
            load: Some(LoadFigures::new(&o, 1, 64)),
            idle: None,
            storm: None,
        }
    }

    #[test]
    fn ratios_and_table() {
        let tck = crate::procfs::clock_ticks_per_second();
        let mut s = ScenarioReport {
            name: "small".into(),
            about: "test".into(),
            repetition: 1,
            tls: false,
            work: Work::Load { pairs: 1, size: 64 },
            mode: Some(Mode::Closed { in_flight: 1 }),
            warmup_secs: 1.0,
            duration_secs: 1.0,
            results: vec![
                load_report(TargetKind::Posrelay, tck / 10, 1000, 20_000),
                load_report(TargetKind::Baseline, tck / 2, 1000, 30_000),
                load_report(TargetKind::Direct, tck / 10, 1000, 10_000),
            ],
            ratios: vec![],
        };
        s.compute_ratios();
        let v: Vec<f64> = s.ratios.iter().map(|r| r.value.unwrap()).collect();
        assert!((v[0] - 0.2).abs() < 1e-6, "{v:?}"); // 100 µs vs 500 µs
        assert!((v[1] - 0.5).abs() < 1e-6, "{v:?}"); // 100 µs vs 2 x 100 µs
        assert!((v[2] - 2.0).abs() < 0.01, "{v:?}");
        assert_eq!(s.ratios[0].met, Some(true));
        assert_eq!(s.ratios[2].met, Some(true));
        assert!(!s.has_failures());
        let table = render(&s);
        assert!(
            table.contains("posrelay") && table.contains("baseline") && table.contains("direct")
        );
        assert!(table.contains("round trips/s"));
        s.results[0].load.as_mut().unwrap().mismatches = 1;
        assert!(s.has_failures());
    }
}
