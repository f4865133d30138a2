//! Section 9: how soon a new cgroup's series appear, from its first process: a cgroup a
//! process is moved into, and a podman container (its CPU series and its `cgwatch_container_info`
//! with the container's name), with the agent's default rescan (15 s) and sampling (5 s) periods.
//!
//! The first process's start is the kernel's (`/proc/PID/stat` start time, since boot, in clock
//! ticks: 10 ms on this host); the series are seen by scrapes every 20 ms, on the same clock
//! (CLOCK_BOOTTIME).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use cgwatch_tests::{
    Agent, Metrics, TestCgroup,
    podman::{self, Container},
};

use crate::{
    Out,
    common::{percentile, procfs_ticks, start_baseline},
};

/// Gives up on a series after this long (the periods this section is about are 15 s + 5 s).
const GIVE_UP: Duration = Duration::from_secs(30);

/// Seconds since boot (CLOCK_BOOTTIME, the clock of `/proc/PID/stat`'s start time).
fn boottime() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// When process `pid` started, in seconds since boot.
fn started_at(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state, field 3; start time is 22.
    let after = stat.rsplit_once(')').context("stat")?.1;
    let ticks: f64 = after.split_whitespace().nth(19).context("stat starttime")?.parse()?;
    Ok(ticks / procfs_ticks())
}

/// Scrapes each agent every 20 ms until `ready`; when each first saw it, in seconds since boot.
fn seen_at(agents: &[(&str, Agent)], ready: impl Fn(&Metrics) -> bool) -> Result<Vec<f64>> {
    let deadline = Instant::now() + GIVE_UP;
    let mut seen: Vec<Option<f64>> = vec![None; agents.len()];
    while Instant::now() < deadline {
        for ((_, agent), at) in agents.iter().zip(seen.iter_mut()).filter(|(_, at)| at.is_none()) {
            let text = agent.try_scrape().map_err(|e| anyhow::anyhow!("scrape: {e}"))?;
            let now = boottime();
            if ready(&Metrics::parse(&text)) {
                *at = Some(now);
            }
        }
        if seen.iter().all(Option::is_some) {
            return Ok(seen.into_iter().flatten().collect());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no series after {GIVE_UP:?}")
}

/// One row per agent: (agent, new cgroup, delays).
fn rows(agents: &[(&str, Agent)], what: &str, delays: Vec<Vec<f64>>) -> Vec<String> {
    agents
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let mut d: Vec<f64> = delays.iter().map(|round| round[i]).collect();
            let (p50, max) = (percentile(&mut d, 0.5), percentile(&mut d, 1.0));
            format!("| {name} | {what} | {} | {p50:.2} s | {max:.2} s |", d.len())
        })
        .collect()
}

/// A process moved into a new cgroup: until its CPU and memory series are served.
fn plain_cgroups(agents: &[(&str, Agent)], rounds: usize) -> Result<Vec<Vec<f64>>> {
    let mut delays = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let cg = TestCgroup::new(&format!("fresh{i}"));
        let mut child = cg.start_ready(&["alloc", "--mb", "1", "--hold", "60"]);
        let l = [("cgroup", cg.rel.as_str())];
        let seen = started_at(child.id()).and_then(|start| {
            let seen = seen_at(agents, |m| {
                m.get("cgwatch_cgroup_cpu_usage_seconds_total", &l).is_some()
                    && m.get("cgwatch_cgroup_memory_usage_bytes", &l).is_some()
            })?;
            Ok(seen.into_iter().map(|t| t - start).collect())
        });
        let _ = child.kill();
        let _ = child.wait();
        delays.push(seen?);
    }
    Ok(delays)
}

/// A podman container: until its CPU series carries its name, and its info series is served.
fn containers(agents: &[(&str, Agent)], rounds: usize) -> Result<Vec<Vec<f64>>> {
    let mut delays = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let c = Container::start("fresh", &[], &["sleep", "60"]);
        let out = podman::command().args(["inspect", "-f", "{{.State.Pid}}", &c.name]).output()?;
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().context("podman inspect pid")?;
        let start = started_at(pid)?;
        let name = c.name.as_str();
        let seen = seen_at(agents, |m| {
            m.get("cgwatch_cgroup_cpu_usage_seconds_total", &[("container", name)]).is_some()
                && m.get("cgwatch_container_info", &[("container", name)]).is_some()
        })?;
        delays.push(seen.into_iter().map(|t| t - start).collect());
    }
    Ok(delays)
}

/// With `baseline`, an agent from that binary is timed beside the built one, over the same
/// cgroups and containers.
pub fn freshness(report: &mut String, out: Out, rounds: usize, baseline: Option<&Path>) -> Result<()> {
    out(report, "### 9. Freshness: a new cgroup's series, from its first process\n".into());
    let args = ["--scan-interval", "15s", "--sample-interval", "5s"];
    let mut agents = vec![("cgwatch", Agent::start(&args))];
    if let Some(bin) = baseline {
        agents.push(("baseline", start_baseline(bin, &args)?));
    }
    // The agents' first rescan and sampling pass go by.
    std::thread::sleep(Duration::from_secs(1));
    out(report, "| agent | new cgroup | rounds | p50 | max |".into());
    out(report, "| --- | --- | --- | --- | --- |".into());
    let plain = plain_cgroups(&agents, rounds)?;
    rows(&agents, "a process moved into a new cgroup (CPU and memory series)", plain).into_iter().for_each(|l| out(report, l));
    if cgwatch_tests::which("podman").is_some() && Path::new("/usr/bin/runc").exists() {
        podman::image();
        let ctrs = containers(&agents, rounds)?;
        rows(&agents, "a podman container (CPU series named, `cgwatch_container_info`)", ctrs).into_iter().for_each(|l| out(report, l));
    } else {
        out(report, "| | a podman container | podman or runc missing: not measured | | |".into());
    }
    out(
        report,
        format!(
            "\n`--scan-interval 15s --sample-interval 5s` (the defaults); first process's start from \
             /proc/PID/stat (10 ms ticks), scrapes every 20 ms; {rounds} rounds each.\n"
        ),
    );
    Ok(())
}
