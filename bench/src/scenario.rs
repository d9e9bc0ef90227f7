//! The named presets: what each scenario runs, at full and at tiny scale.

use serde::Serialize;

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// The sizes the issue names.
    Full,
    /// A few pairs each, for CI: proves every path works, measures nothing.
    Tiny,
}

/// What a scenario does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Work {
    /// Pairs exchanging messages of `size` bytes.
    Load {
        /// Pairs.
        pairs: usize,
        /// Payload bytes per message.
        size: usize,
    },
    /// As many idle pairs as the descriptor limit allows (or `pairs` at tiny scale).
    Idle {
        /// Pairs; `None`: from the descriptor limit.
        pairs: Option<usize>,
    },
    /// Devices reconnecting at once after a restart.
    Storm {
        /// Devices.
        devices: usize,
    },
    /// Connections (TLS handshakes) per second.
    Handshake {
        /// Clients connecting at once.
        clients: usize,
    },
}

/// A named preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Scenario {
    /// Its name on the command line.
    pub name: &'static str,
    /// One line on what it shows.
    pub about: &'static str,
    /// What it runs.
    pub work: Work,
}

/// Every scenario name, in the order `--scenario all` runs them.
pub const NAMES: [&str; 6] = ["latency", "small", "large", "many", "idle", "storm"];

/// Scenarios run only when named (not part of `all`).
pub const EXTRA: [&str; 1] = ["handshake"];

impl Work {
    /// `work` with the command line's overrides of pairs (devices) and size.
    pub fn with_overrides(self, pairs: Option<usize>, size: Option<usize>) -> Work {
        match self {
            Work::Load { pairs: p, size: s } => Work::Load {
                pairs: pairs.unwrap_or(p),
                size: size.unwrap_or(s),
            },
            Work::Idle { pairs: p } => Work::Idle { pairs: pairs.or(p) },
            Work::Storm { devices } => Work::Storm {
                devices: pairs.unwrap_or(devices),
            },
            Work::Handshake { clients } => Work::Handshake { clients },
        }
    }

    /// A short description, e.g. `64 pairs, 64 B`.
    pub fn describe(&self) -> String {
        match self {
            Work::Load { pairs, size } if size % 1024 == 0 => {
                format!("{pairs} pairs, {} KiB", size / 1024)
            }
            Work::Load { pairs, size } => format!("{pairs} pairs, {size} B"),
            Work::Idle { pairs: Some(p) } => format!("{p} idle pairs"),
            Work::Idle { pairs: None } => "idle pairs up to the descriptor limit".into(),
            Work::Storm { devices } => format!("{devices} devices, target restarted"),
            Work::Handshake { clients } => format!("{clients} clients connecting"),
        }
    }
}

/// The preset `name` at `scale`.
pub fn preset(name: &str, scale: Scale) -> Option<Scenario> {
    let tiny = scale == Scale::Tiny;
    let pick = |full: usize, small: usize| if tiny { small } else { full };
    let (about, work) = match name {
        "latency" => ("the latency floor", Work::Load { pairs: 1, size: 64 }),
        "small" => (
            "per-message cost",
            Work::Load {
                pairs: pick(64, 4),
                size: 64,
            },
        ),
        "large" => (
            "per-byte cost",
            Work::Load {
                pairs: pick(64, 4),
                size: 16 * 1024,
            },
        ),
        "many" => (
            "many connections",
            Work::Load {
                pairs: pick(1000, 20),
                size: 64,
            },
        ),
        "idle" => (
            "memory per idle connection",
            Work::Idle {
                pairs: tiny.then_some(20),
            },
        ),
        "storm" => (
            "devices reconnecting at once after a restart",
            Work::Storm {
                devices: pick(10_000, 20),
            },
        ),
        "handshake" => (
            "connections (TLS handshakes: full, then resumed) per second",
            Work::Handshake {
                clients: pick(16, 2),
            },
        ),
        _ => return None,
    };
    let name = NAMES
        .iter()
        .chain(EXTRA.iter())
        .copied()
        .find(|n| *n == name)?;
    Some(Scenario { name, about, work })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_a_preset_at_both_scales() {
        for name in NAMES {
            for scale in [Scale::Full, Scale::Tiny] {
                assert_eq!(preset(name, scale).map(|s| s.name), Some(name));
            }
        }
        assert_eq!(preset("nope", Scale::Full), None);
    }

    #[test]
    fn full_scale_matches_the_issue() {
        assert_eq!(
            preset("small", Scale::Full).unwrap().work,
            Work::Load {
                pairs: 64,
                size: 64
            }
        );
        assert_eq!(
            preset("large", Scale::Full).unwrap().work,
            Work::Load {
                pairs: 64,
                size: 16384
            }
        );
        assert_eq!(
            preset("many", Scale::Full).unwrap().work,
            Work::Load {
                pairs: 1000,
                size: 64
            }
        );
        assert_eq!(
            preset("storm", Scale::Full).unwrap().work,
            Work::Storm { devices: 10_000 }
        );
        assert_eq!(
            preset("idle", Scale::Full).unwrap().work,
            Work::Idle { pairs: None }
        );
        assert!(
            matches!(preset("many", Scale::Tiny).unwrap().work, Work::Load { pairs, .. } if pairs < 100)
        );
    }
}
