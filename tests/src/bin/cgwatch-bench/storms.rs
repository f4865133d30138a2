//! Sections 2, 3 and 5: violation and exit storms, the agent's memory and CPU around them.

use std::{
    fs,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use cgwatch_tests::{Agent, TestCgroup};

use crate::{
    Out,
    common::{ProcStats, scrape_latencies, violation_storm},
};

pub fn storms(report: &mut String, out: Out, scrapes: usize) -> Result<()> {
    // 5 (idle part). The agent alone, idle.
    let agent = Agent::start(&[]);
    let stats = ProcStats { pid: agent.pid() };
    std::thread::sleep(Duration::from_secs(2));
    let c0 = stats.cpu_seconds();
    std::thread::sleep(Duration::from_secs(20));
    let idle_cpu = (stats.cpu_seconds() - c0) / 20.0 * 100.0;
    let idle_rss = stats.status_kib("VmRSS:") / 1024.0;

    // 2. Violation storm.
    out(report, "### 2. Violation storm: 4 threads x 1,000,000 denied getppid (ERRNO)\n".into());
    let (cg, wall, storm_cpu) = violation_storm("bench-storm", &stats)?;
    let m = agent.scrape();
    let counted = m.sum("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]);
    let lost = m.sum("cgwatch_events_lost_total", &[]);
    out(report, "| denied | counted | lost | workload wall time | agent CPU during it |".into());
    out(report, "| --- | --- | --- | --- | --- |".into());
    out(report, format!("| 4000000 | {counted} | {lost} | {wall:.2} s | {storm_cpu:.2} s |\n"));

    // 2b. The same storm with the event stream on: the rate limit holds it to a few hundred
    // lines, and the agent's CPU shows what the stream costs.
    {
        let events = tempfile::NamedTempFile::new()?;
        let path = events.path().to_str().context("temp path")?.to_string();
        let agent = Agent::start(&["--events", &path]);
        let stats = ProcStats { pid: agent.pid() };
        let (cg, wall, cpu) = violation_storm("bench-storm-events", &stats)?;
        std::thread::sleep(Duration::from_secs(1));
        let m = agent.scrape();
        let counted = m.sum("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]);
        let suppressed = m.sum("cgwatch_events_suppressed_total", &[("cgroup", &cg.rel)]);
        let lines = fs::read_to_string(events.path())?.lines().filter(|l| l.contains(&cg.rel)).count();
        out(report, "With `--events` on (rate 100/s, burst 1000 per cgroup), the same storm:\n".into());
        out(report, "| denied | counted | event lines written | suppressed | workload wall time | agent CPU during it |".into());
        out(report, "| --- | --- | --- | --- | --- | --- |".into());
        out(report, format!("| 4000000 | {counted} | {lines} | {suppressed} | {wall:.2} s | {cpu:.2} s |\n"));
    }

    // 3. Exit storm: two forkers at 10,000/s each for 10 s.
    out(report, "### 3. Exit storm: 2 forkers x 10,000 short processes/s for 10 s\n".into());
    let cg = TestCgroup::new("bench-exits");
    let c0 = stats.cpu_seconds();
    let t = Instant::now();
    let forkers: Vec<Child> = (0..2)
        .map(|_| cg.workload(&["forks", "--count", "100000", "--rate", "10000"]).stdout(Stdio::piped()).spawn())
        .collect::<Result<_, _>>()?;
    let mut achieved = 0.0;
    for f in forkers {
        let o = f.wait_with_output()?;
        achieved += String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().unwrap_or(0.0);
    }
    let wall = t.elapsed().as_secs_f64();
    let exit_cpu = stats.cpu_seconds() - c0;
    let m = agent.scrape();
    let counted = m.sum("cgwatch_process_exits_total", &[("cgroup", &cg.rel)]);
    let lost = m.sum("cgwatch_events_lost_total", &[]);
    out(report, "| processes (children + 2 forkers) | counted | lost | achieved rate | wall time | agent CPU during it |".into());
    out(report, "| --- | --- | --- | --- | --- | --- |".into());
    out(report, format!("| 200002 | {counted} | {lost} | {achieved:.0}/s | {wall:.1} s | {exit_cpu:.2} s |\n"));
    let storm_rss_peak = stats.status_kib("VmHWM:") / 1024.0;
    let storm_rss_now = stats.status_kib("VmRSS:") / 1024.0;
    let (p50, p99, _) = scrape_latencies(&format!("http://127.0.0.1:{}/metrics", agent.port), scrapes)?;
    drop(agent);

    out(report, "### 5. Agent resident memory and CPU\n".into());
    out(report, "| state | RSS | CPU |".into());
    out(report, "| --- | --- | --- |".into());
    out(report, format!("| idle, 20 s | {idle_rss:.1} MiB | {idle_cpu:.3} % of a core |"));
    out(report, format!("| after both storms | {storm_rss_now:.1} MiB (peak VmHWM {storm_rss_peak:.1} MiB) | see 2 and 3 |"));
    out(report, format!("| scrape after the storms (p50 / p99 of {scrapes}) | {p50:.2} ms / {p99:.2} ms | |\n"));
    Ok(())
}
