//! What the benchmark reads from /proc: CPU time (utime + stime), resident
//! memory, and which CPU each thread of a process runs on.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// CPU time a process has used, in clock ticks (/proc/PID/stat fields 14 and 15).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// User-mode ticks.
    pub utime: u64,
    /// Kernel-mode ticks.
    pub stime: u64,
}

impl CpuTicks {
    /// User plus kernel ticks.
    pub fn total(self) -> u64 {
        self.utime + self.stime
    }

    /// The ticks spent since `earlier`.
    pub fn since(self, earlier: CpuTicks) -> CpuTicks {
        CpuTicks {
            utime: self.utime.saturating_sub(earlier.utime),
            stime: self.stime.saturating_sub(earlier.stime),
        }
    }

    /// As a duration, with the system's tick length.
    pub fn as_duration(self) -> Duration {
        Duration::from_secs_f64(self.total() as f64 / clock_ticks_per_second() as f64)
    }
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf` once (100 when it cannot be asked).
pub fn clock_ticks_per_second() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// The fields of a /proc/PID/stat line after the command name, starting at
/// field 3 (`state`). The name is in parentheses and may hold spaces.
fn stat_fields(line: &str) -> Option<Vec<&str>> {
    let close = line.rfind(')')?;
    Some(line.get(close + 1..)?.split_whitespace().collect())
}

/// Parses utime and stime out of a /proc/PID/stat line.
pub fn parse_stat_cpu(line: &str) -> Option<CpuTicks> {
    let f = stat_fields(line)?;
    Some(CpuTicks {
        utime: f.get(14 - 3)?.parse().ok()?,
        stime: f.get(15 - 3)?.parse().ok()?,
    })
}

/// Parses the CPU a task last ran on (field 39) out of a /proc/PID/stat line.
pub fn parse_stat_processor(line: &str) -> Option<usize> {
    stat_fields(line)?.get(39 - 3)?.parse().ok()
}

/// CPU time used so far by process `pid` (all its threads).
pub fn cpu_ticks(pid: u32) -> std::io::Result<CpuTicks> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu(&line).ok_or_else(|| std::io::Error::other("unparsable /proc stat line"))
}

/// A `Key:   value kB` field of /proc/PID/status, in bytes when it is in kB.
pub fn parse_status_field(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_owned())
    })
}

/// A `... kB` value as bytes.
pub fn parse_kib(value: &str) -> Option<u64> {
    let n: u64 = value.strip_suffix("kB")?.trim().parse().ok()?;
    Some(n * 1024)
}

/// Resident memory of a process, from /proc/PID/status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// `VmRSS`: all resident pages.
    pub rss: u64,
    /// `RssAnon`: resident anonymous pages (heap, stacks): user-space memory proper.
    pub rss_anon: u64,
}

/// The resident memory of `pid`.
pub fn memory(pid: u32) -> std::io::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let get = |k| {
        parse_status_field(&status, k)
            .as_deref()
            .and_then(parse_kib)
            .unwrap_or(0)
    };
    Ok(Memory {
        rss: get("VmRSS"),
        rss_anon: get("RssAnon"),
    })
}

/// Where one thread of a process runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ThreadPlacement {
    /// Thread id.
    pub tid: u32,
    /// Thread name (`comm`).
    pub name: String,
    /// The CPU it last ran on.
    pub last_cpu: Option<usize>,
    /// The CPUs it may run on (`Cpus_allowed_list`).
    pub allowed: String,
}

/// Where every thread of `pid` runs.
pub fn placement(pid: u32) -> Vec<ThreadPlacement> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let base = entry.path();
        let read = |f: &str| std::fs::read_to_string(base.join(f)).unwrap_or_default();
        let status = read("status");
        out.push(ThreadPlacement {
            tid,
            name: read("comm").trim().to_owned(),
            last_cpu: parse_stat_processor(&read("stat")),
            allowed: parse_status_field(&status, "Cpus_allowed_list").unwrap_or_default(),
        });
    }
    out.sort_by_key(|t| t.tid);
    out
}

/// One line saying where a process's threads run, e.g. `cpu 0 (2 threads: allowed 0)`.
pub fn describe_placement(threads: &[ThreadPlacement]) -> String {
    let mut allowed: Vec<&str> = threads.iter().map(|t| t.allowed.as_str()).collect();
    allowed.sort_unstable();
    allowed.dedup();
    let mut last: Vec<usize> = threads.iter().filter_map(|t| t.last_cpu).collect();
    last.sort_unstable();
    last.dedup();
    format!(
        "{} threads, allowed cpus {}, last ran on {:?}",
        threads.len(),
        allowed.join(" | "),
        last
    )
}

/// Busy and total time of one CPU, in clock ticks (a `cpuN` line of /proc/stat).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreTicks {
    /// Ticks not idle, not waiting for I/O and not stolen.
    pub busy: u64,
    /// Ticks the hypervisor gave this virtual CPU's time to someone else (`steal`): the
    /// machine's own contention, invisible to every process on it.
    pub steal: u64,
    /// All ticks.
    pub total: u64,
}

/// How a CPU was shared over a window (fractions of the window's ticks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoreShares {
    /// Taken by processes other than the measured one.
    pub foreign: f64,
    /// Stolen by the hypervisor.
    pub steal: f64,
}

impl CoreTicks {
    /// The shares of this CPU between `earlier` and `self`, given that the measured
    /// process used `own` ticks of it.
    pub fn shares_since(self, earlier: CoreTicks, own: u64) -> CoreShares {
        let total = (self.total - earlier.total).max(1) as f64;
        CoreShares {
            foreign: (self.busy - earlier.busy).saturating_sub(own) as f64 / total,
            steal: (self.steal - earlier.steal) as f64 / total,
        }
    }
}

/// Parses the `cpu{cpu}` line of a /proc/stat text.
pub fn parse_core_ticks(stat: &str, cpu: usize) -> Option<CoreTicks> {
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    let steal = v.get(7).copied().unwrap_or(0);
    Some(CoreTicks {
        busy: total.saturating_sub(idle + steal),
        steal,
        total,
    })
}

/// The ticks of CPU `cpu` so far.
pub fn core_ticks(cpu: usize) -> Option<CoreTicks> {
    parse_core_ticks(&std::fs::read_to_string("/proc/stat").ok()?, cpu)
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft limit on open file descriptors of this process (/proc/self/limits).
pub fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_fd_limit(&limits)
}

/// Parses the `Max open files` soft limit from a /proc/PID/limits text.
pub fn parse_fd_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The machine: CPU count and model, kernel release.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// Online CPUs.
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// /proc/sys/kernel/osrelease.
    pub kernel: String,
}

/// Describes this machine.
pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    Machine {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model: parse_status_field(&cpuinfo.replace('\t', ""), "model name")
            .unwrap_or_else(|| "unknown".into()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line, with a command name holding a space and a parenthesis.
    const STAT: &str = "4242 (posrelay-sh (1)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
        150 37 0 0 20 0 2 0 98765 123456789 2345 18446744073709551615 1 1 0 0 0 0 0 \
        4096 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_cpu_and_processor() {
        assert_eq!(
            parse_stat_cpu(STAT),
            Some(CpuTicks {
                utime: 150,
                stime: 37
            })
        );
        assert_eq!(parse_stat_processor(STAT), Some(1));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn ticks_arithmetic() {
        let a = CpuTicks {
            utime: 10,
            stime: 5,
        };
        let b = CpuTicks {
            utime: 25,
            stime: 6,
        };
        assert_eq!(
            b.since(a),
            CpuTicks {
                utime: 15,
                stime: 1
            }
        );
        assert_eq!(b.since(a).total(), 16);
        assert_eq!(a.since(b).total(), 0);
    }

    #[test]
    fn status_fields() {
        let status =
            "Name:\tposrelay\nVmRSS:\t    5120 kB\nRssAnon:\t  2048 kB\nCpus_allowed_list:\t0\n";
        let f = |k| parse_status_field(status, k);
        assert_eq!(f("VmRSS").as_deref().and_then(parse_kib), Some(5120 * 1024));
        assert_eq!(
            f("RssAnon").as_deref().and_then(parse_kib),
            Some(2048 * 1024)
        );
        assert_eq!(f("Cpus_allowed_list").as_deref(), Some("0"));
        assert_eq!(f("Missing"), None);
    }

    #[test]
    fn core_ticks_line() {
        let stat =
            "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 5 1 4 50 2 1 1 0 0 0\ncpu1 5 0 6 50 0 0 0 7 0 0\n";
        assert_eq!(
            parse_core_ticks(stat, 0),
            Some(CoreTicks {
                busy: 12,
                steal: 0,
                total: 64
            })
        );
        assert_eq!(
            parse_core_ticks(stat, 1),
            Some(CoreTicks {
                busy: 11,
                steal: 7,
                total: 68
            })
        );
        assert_eq!(parse_core_ticks(stat, 2), None);
        let earlier = CoreTicks {
            busy: 10,
            steal: 1,
            total: 100,
        };
        let later = CoreTicks {
            busy: 70,
            steal: 11,
            total: 200,
        };
        assert_eq!(
            later.shares_since(earlier, 50),
            CoreShares {
                foreign: 0.1,
                steal: 0.1
            }
        );
        assert_eq!(later.shares_since(earlier, 90).foreign, 0.0);
        assert!(load_average().is_some());
    }

    #[test]
    fn fd_limit_line() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
            Max open files            20000                20000                files\n";
        assert_eq!(parse_fd_limit(limits), Some(20000));
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(memory(me).unwrap().rss > 0);
        assert!(!placement(me).is_empty());
        assert!(cpu_ticks(me).is_ok());
    }
}
