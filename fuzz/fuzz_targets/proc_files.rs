//! /proc/stat and /proc/meminfo as the host collector reads them, from a byte slice (/proc/stat
//! through the procfs crate's `KernelStats`, /proc/meminfo through the agent's own parser), and
//! what the collector exports from them. Inputs are one or more files separated by NUL (which
//! procfs text never holds), so that consecutive /proc/stat samples also go through the CPU
//! usage ratio.
#![no_main]

use cgwatch::collectors::host::{HostMemory, parse_cpu_seconds, usage_ratio};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut prev: Option<Vec<(&str, f64)>> = None;
    for file in data.split(|&b| b == 0) {
        if let Some(modes) = parse_cpu_seconds(file) {
            for (i, (mode, seconds)) in modes.iter().enumerate() {
                assert!(seconds.is_finite() && *seconds >= 0.0, "{mode}={seconds}");
                assert!(modes[..i].iter().all(|(m, _)| m != mode), "{mode} twice");
            }
            assert!(modes.len() >= 4, "user, nice, system and idle are always there: {modes:?}");
            if let Some(prev) = &prev
                && let Some(r) = usage_ratio(prev, &modes)
            {
                assert!((0.0..=1.0).contains(&r), "usage ratio {r}");
            }
            prev = Some(modes);
        }

        if let Some(mem) = HostMemory::parse(file) {
            if let Some(r) = mem.usage_ratio() {
                assert!((0.0..=1.0).contains(&r), "memory usage ratio {r}");
            }
            // Exported as gauges of i64: never negative.
            assert!(i64::try_from(mem.total_bytes).is_ok(), "{mem:?}");
            assert!(i64::try_from(mem.available_bytes).is_ok(), "{mem:?}");
        }
    }
});
