//! Section 10: a storm of container starts, made by the workload's minimal runtime (`ctr run`:
//! the runtime makes the cgroup, its child joins it, unshares its mount namespace and execs the
//! entrypoint, as runc does) in `crio-<id>` cgroups, four at a time: every start and exit
//! counted, every latency and lifetime observed, and the agent's CPU for it.

use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use cgwatch_tests::{Agent, Metrics, TestCgroup, workload_bin};

use crate::{Out, common::ProcStats};

/// The sum of `name` over the series whose cgroup is below `parent`.
fn below(m: &Metrics, name: &str, parent: &str) -> f64 {
    m.samples
        .iter()
        .filter(|s| s.name == name && s.labels.get("cgroup").is_some_and(|c| c.starts_with(parent)))
        .map(|s| s.value)
        .sum()
}

pub fn start_storm(report: &mut String, out: Out, starts: usize) -> Result<()> {
    out(report, format!("### 10. Container start storm: {starts} starts by a minimal runtime, 4 at a time\n"));
    let agent = Agent::start(&[]);
    let stats = ProcStats { pid: agent.pid() };
    let parent = TestCgroup::new("bench-starts");
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    std::thread::sleep(Duration::from_secs(1));
    let c0 = stats.cpu_seconds();
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= starts {
                        break;
                    }
                    let id = format!("{:08x}{i:08x}", std::process::id()).repeat(4);
                    let ok = Command::new(workload_bin())
                        .args(["ctr", "run", "--cgroup"])
                        .arg(parent.v2.join(format!("crio-{id}")))
                        .arg("--")
                        .arg(workload_bin())
                        .args(["exit", "0"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .status()
                        .is_ok_and(|st| st.success());
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let wall = t.elapsed().as_secs_f64();
    if failed.load(Ordering::Relaxed) > 0 {
        bail!("{} of {starts} containers did not run", failed.load(Ordering::Relaxed));
    }
    let want = starts as f64;
    // The histograms observe a record once its cgroup is named, or after 10 s (these containers
    // have no runtime state to name them).
    let done = |m: &Metrics| {
        below(m, "cgwatch_container_starts_total", &parent.rel) == want
            && below(m, "cgwatch_container_exits_total", &parent.rel) == want
            && m.get("cgwatch_container_start_duration_seconds_count", &[("runtime", "cri-o")]) == Some(want)
            && m.sum("cgwatch_container_lifetime_seconds_count", &[("runtime", "cri-o")]) == want
    };
    let m = agent.scrape_until(Duration::from_secs(60), done);
    let cpu = stats.cpu_seconds() - c0;
    let counted = below(&m, "cgwatch_container_starts_total", &parent.rel);
    let exits = below(&m, "cgwatch_container_exits_total", &parent.rel);
    let latencies = m.get("cgwatch_container_start_duration_seconds_count", &[("runtime", "cri-o")]).unwrap_or(0.0);
    let lifetimes = m.sum("cgwatch_container_lifetime_seconds_count", &[("runtime", "cri-o")]) + 0.0;
    let lost = m.sum("cgwatch_events_lost_total", &[]);
    out(report, "| containers run | starts counted | container exits counted | latencies observed | lifetimes observed | lost | wall time | agent CPU (storm + settling) |".into());
    out(report, "| --- | --- | --- | --- | --- | --- | --- | --- |".into());
    out(report, format!("| {starts} | {counted} | {exits} | {latencies} | {lifetimes:.0} | {lost} | {wall:.1} s | {cpu:.2} s |\n"));
    Ok(())
}
