//! Host CPU and memory: `cgwatch_host_cpu_seconds_total{mode}`, `cgwatch_host_cpu_usage_ratio`,
//! `cgwatch_host_memory_total_bytes`, `cgwatch_host_memory_available_bytes`,
//! `cgwatch_host_memory_usage_ratio`, `cgwatch_host_pressure_seconds_total{resource,kind}`.
//! Reads `<procfs>/stat`, `<procfs>/meminfo` and `<procfs>/pressure/*`.

use std::{
    collections::BTreeMap,
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use procfs::{CpuTime, FromReadSI, KernelStats};

use super::{Collector, Labels, counter_family, single_gauge};
use crate::{catalog, cgroups::read_pressure, encoding::Encoder};

/// CPU seconds by mode from `<procfs>/stat`'s first line.
pub fn read_cpu_seconds(procfs: &Path) -> Option<Vec<(&'static str, f64)>> {
    parse_cpu_seconds(File::open(procfs.join("stat")).ok()?)
}

/// [`read_cpu_seconds`] of the contents of `/proc/stat`.
pub fn parse_cpu_seconds(stat: impl Read) -> Option<Vec<(&'static str, f64)>> {
    let stats = KernelStats::from_read(stat, procfs::current_system_info()).ok()?;
    Some(cpu_seconds(&stats.total, procfs::ticks_per_second()))
}

/// Host memory as exported, from `<procfs>/meminfo`. Both values are at most `i64::MAX` (they
/// are exported as gauges of i64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl HostMemory {
    pub fn read(procfs: &Path) -> Option<Self> {
        Self::parse(File::open(procfs.join("meminfo")).ok()?)
    }

    /// [`HostMemory::read`] of the contents of `/proc/meminfo`: MemTotal, MemFree and Cached
    /// must be there, MemAvailable may be. Parsed here, not by procfs's `Meminfo`: that one
    /// panics on a field name ending in a multi-byte character, overflows (and in release
    /// builds wraps) on a value of 2^54 kB or more in any field, and wants some twenty fields
    /// the agent does not use.
    pub fn parse(mut meminfo: impl Read) -> Option<Self> {
        let mut text = String::new();
        meminfo.read_to_string(&mut text).ok()?;
        let (mut total, mut free, mut available, mut cached) = (None, None, None, None);
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let slot = match words.next() {
                Some("MemTotal:") => &mut total,
                Some("MemFree:") => &mut free,
                Some("MemAvailable:") => &mut available,
                Some("Cached:") => &mut cached,
                _ => continue,
            };
            *slot = meminfo_bytes(words.next(), words.next());
        }
        let bounded = |v: u64| v.min(i64::MAX as u64);
        // Kernels before 3.14 have no MemAvailable: approximate it with free + page cache.
        let available = available.unwrap_or(free?.saturating_add(cached?));
        Some(HostMemory { total_bytes: bounded(total?), available_bytes: bounded(available) })
    }

    /// Share of memory in use; `None` when the total is 0.
    pub fn usage_ratio(&self) -> Option<f64> {
        (self.total_bytes > 0).then(|| (1.0 - self.available_bytes as f64 / self.total_bytes as f64).clamp(0.0, 1.0))
    }
}

/// A meminfo value in bytes, from its number and unit (the kernel writes kB, which are KiB),
/// saturating; `None` when either does not parse.
fn meminfo_bytes(value: Option<&str>, unit: Option<&str>) -> Option<u64> {
    let scale: u64 = match unit {
        None | Some("B") => 1,
        Some("kB" | "KB" | "KiB" | "kiB") => 1 << 10,
        Some("MB" | "mB" | "MiB" | "miB") => 1 << 20,
        Some("GB" | "gB" | "GiB" | "giB") => 1 << 30,
        Some(_) => return None,
    };
    Some(value?.parse::<u64>().ok()?.saturating_mul(scale))
}

fn cpu_seconds(t: &CpuTime, tps: u64) -> Vec<(&'static str, f64)> {
    let tps = tps.max(1) as f64;
    [
        ("user", Some(t.user)),
        ("nice", Some(t.nice)),
        ("system", Some(t.system)),
        ("idle", Some(t.idle)),
        ("iowait", t.iowait),
        ("irq", t.irq),
        ("softirq", t.softirq),
        ("steal", t.steal),
    ]
    .into_iter()
    .filter_map(|(mode, ticks)| ticks.map(|v| (mode, v as f64 / tps)))
    .collect()
}

/// Busy share of CPU time between two samples: everything but idle and iowait.
pub fn usage_ratio(prev: &[(&str, f64)], cur: &[(&str, f64)]) -> Option<f64> {
    let total = |s: &[(&str, f64)]| s.iter().map(|(_, v)| v).sum::<f64>();
    let idle = |s: &[(&str, f64)]| {
        s.iter().filter(|(m, _)| *m == "idle" || *m == "iowait").map(|(_, v)| v).sum::<f64>()
    };
    let dt = total(cur) - total(prev);
    if dt <= 0.0 {
        return None;
    }
    let busy = dt - (idle(cur) - idle(prev));
    Some((busy / dt).clamp(0.0, 1.0))
}

/// The CPU usage ratio over the last sampling interval, kept by `crate::tasks::host_sampler`.
#[derive(Debug, Default)]
pub struct HostSampler {
    state: Mutex<SamplerState>,
}

#[derive(Debug, Default)]
struct SamplerState {
    last: Option<Vec<(&'static str, f64)>>,
    ratio: Option<f64>,
}

impl HostSampler {
    pub fn sample(&self, procfs: &Path) {
        let Some(cur) = read_cpu_seconds(procfs) else { return };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(prev) = &st.last {
            st.ratio = usage_ratio(prev, &cur).or(st.ratio);
        }
        st.last = Some(cur);
    }

    pub fn ratio(&self) -> Option<f64> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).ratio
    }
}

#[derive(Debug)]
pub struct HostCollector {
    pub procfs: PathBuf,
    pub sampler: Arc<HostSampler>,
}

impl Collector for HostCollector {
    fn encode(&self, encoder: &mut Encoder<'_>) {
        if let Some(modes) = read_cpu_seconds(&self.procfs) {
            let series: BTreeMap<Labels, f64> =
                modes.into_iter().map(|(m, v)| (vec![("mode", m.to_string())], v)).collect();
            counter_family(encoder, &catalog::HOST_CPU_SECONDS, &series);
        }
        if let Some(r) = self.sampler.ratio() {
            single_gauge(encoder, &catalog::HOST_CPU_USAGE_RATIO, r);
        }
        let mut pressure: BTreeMap<Labels, f64> = BTreeMap::new();
        for resource in ["cpu", "memory", "io", "irq"] {
            for (kind, seconds) in read_pressure(&self.procfs.join("pressure").join(resource)) {
                pressure.insert(vec![("resource", resource.to_string()), ("kind", kind.to_string())], seconds);
            }
        }
        if !pressure.is_empty() {
            counter_family(encoder, &catalog::HOST_PRESSURE, &pressure);
        }
        if let Some(mem) = HostMemory::read(&self.procfs) {
            let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
            single_gauge(encoder, &catalog::HOST_MEMORY_TOTAL, gauge(mem.total_bytes));
            single_gauge(encoder, &catalog::HOST_MEMORY_AVAILABLE, gauge(mem.available_bytes));
            if let Some(ratio) = mem.usage_ratio() {
                single_gauge(encoder, &catalog::HOST_MEMORY_USAGE_RATIO, ratio);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_procfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("stat"),
            "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 100 0 100 700 100 0 0 0 0 0\nctxt 1\nbtime 1\nprocesses 1\nprocs_running 1\nprocs_blocked 0\n",
        )
        .unwrap();
        let s = read_cpu_seconds(dir.path()).unwrap();
        let tps = procfs::ticks_per_second() as f64;
        assert_eq!(s.iter().find(|(m, _)| *m == "idle").unwrap().1, 700.0 / tps);
        let later: Vec<_> = s.iter().map(|(m, v)| (*m, if *m == "user" { v + 2.0 } else { v + 0.5 })).collect();
        // user +2, 7 other modes +0.5 each (idle and iowait among them): busy = 2 + 2.5 = 4.5 of 5.5.
        let r = usage_ratio(&s, &later).unwrap();
        assert!((r - 4.5 / 5.5).abs() < 1e-9, "{r}");
        assert_eq!(usage_ratio(&s, &s), None);
    }

    const MEMINFO: &str = "MemTotal:        8148236 kB\nMemFree:          912344 kB\nMemAvailable:    5120932 kB\n\
                           Buffers:          201932 kB\nCached:          4012093 kB\nHugePages_Total:       0\n";

    #[test]
    fn meminfo_with_and_without_memavailable() {
        let mem = HostMemory::parse(MEMINFO.as_bytes()).unwrap();
        assert_eq!(mem, HostMemory { total_bytes: 8148236 * 1024, available_bytes: 5120932 * 1024 });
        assert!((mem.usage_ratio().unwrap() - (1.0 - 5120932.0 / 8148236.0)).abs() < 1e-12);
        let old = MEMINFO.replace("MemAvailable:    5120932 kB\n", "");
        assert_eq!(HostMemory::parse(old.as_bytes()).unwrap().available_bytes, (912344 + 4012093) * 1024);
        assert_eq!(HostMemory::parse(MEMINFO.replace("MemTotal:", "MemTotaI:").as_bytes()), None);
        assert_eq!(HostMemory::parse(&b"MemTotal: 1 kB\xff"[..]), None, "not text");
    }

    /// Found by `cargo xtask fuzz` (proc_files): procfs's meminfo parser multiplied any kB value
    /// unchecked (overflow: a panic with debug assertions, a wrapped value in release), and
    /// panicked on a field name ending in a multi-byte character; values over i64::MAX (or
    /// MemFree + Cached overflowing) came out negative or wrapped.
    #[test]
    fn weird_meminfo_values_do_not_panic_or_wrap() {
        let crash = "MemTo18446744073709wMe 18446744073709551615     kB";
        assert_eq!(HostMemory::parse(format!("{crash}\n{MEMINFO}").as_bytes()).unwrap().total_bytes, 8148236 * 1024);
        assert!(HostMemory::parse(format!("M\u{e9} 5 kB\n{MEMINFO}").as_bytes()).is_some());
        let huge = "MemTotal: 18446744073709551615\nMemFree: 18014398509481984 kB\nCached: 18446744073709551615 kB\n";
        let mem = HostMemory::parse(huge.as_bytes()).unwrap();
        assert_eq!(mem, HostMemory { total_bytes: i64::MAX as u64, available_bytes: i64::MAX as u64 });
        assert_eq!(mem.usage_ratio(), Some(0.0));
    }
}
