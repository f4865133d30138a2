//! Section 7: the kernel memory of the agent's BPF maps.

use std::fs;

use anyhow::Result;
use cgwatch_tests::Agent;

use crate::Out;

/// The kernel memory of the agent's maps, from the `memlock` its map descriptors report in
/// /proc/PID/fdinfo (what kernels < 5.11 charge to RLIMIT_MEMLOCK and later ones to the memory
/// cgroup), for two `--max-cgroups`.
pub fn map_memory(report: &mut String, out: Out) -> Result<()> {
    out(report, "### 7. Kernel memory of the agent's BPF maps\n".into());
    out(report, "| --max-cgroups | maps | counter maps (seccomp + exits + oom) | all maps |".into());
    out(report, "| --- | --- | --- | --- |".into());
    for max in ["2000", "10000"] {
        let agent = Agent::start(&["--max-cgroups", max]);
        let (mut maps, mut counters, mut all) = (0, 0u64, 0u64);
        for fd in fs::read_dir(format!("/proc/{}/fdinfo", agent.pid()))? {
            let info = fs::read_to_string(fd?.path()).unwrap_or_default();
            let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string());
            let (Some(kind), Some(memlock)) = (field("map_type:"), field("memlock:")) else { continue };
            let memlock: u64 = memlock.parse().unwrap_or(0);
            maps += 1;
            all += memlock;
            // BPF_MAP_TYPE_PERCPU_HASH (5): the counter maps.
            if kind == "5" {
                counters += memlock;
            }
        }
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        out(report, format!("| {max} | {maps} | {:.1} MiB | {:.1} MiB |", mib(counters), mib(all)));
    }
    out(
        report,
        format!(
            "\n{} CPUs here: a per-CPU counter map entry holds 8 bytes per possible CPU, so the counter maps grow with the node's CPUs.\n",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
    );
    Ok(())
}
