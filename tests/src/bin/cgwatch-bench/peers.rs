//! Section 6: peers measured in the same run: node_exporter on the host metrics both serve
//! (6), the bpftrace script a user would write instead on the seccomp denials both count (6b).

use std::{
    os::unix::fs::MetadataExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use cgwatch_tests::{Agent, free_port};

use crate::common::{BPFTRACE_SCRIPT, Bpftrace, ProcStats, scrape_latencies, violation_storm};

pub fn node_exporter_compare(scrapes: usize) -> Result<Vec<String>> {
    let ne = ["/usr/bin/prometheus-node-exporter", "/usr/bin/node_exporter"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .context("install prometheus-node-exporter")?;
    let port = free_port();
    let mut child = Command::new(ne)
        .args([
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--collector.disable-defaults",
            "--collector.cpu",
            "--collector.meminfo",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let ne_url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ureq::get(&ne_url).call().is_err() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("node_exporter did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let agent = Agent::start(&[]);
    let agent_url = format!("http://127.0.0.1:{}/metrics", agent.port);
    let ne_stats = ProcStats { pid: child.id() };
    let ag_stats = ProcStats { pid: agent.pid() };
    let mut lines = vec![
        "| exporter | scrapes | p50 | p99 | size | RSS after |".into(),
        "| --- | --- | --- | --- | --- | --- |".into(),
    ];
    for (name, url, stats) in [
        ("node_exporter (cpu + meminfo collectors)", &ne_url, &ne_stats),
        ("cgwatch (everything)", &agent_url, &ag_stats),
    ] {
        let (p50, p99, size) = scrape_latencies(url, scrapes)?;
        lines.push(format!(
            "| {name} | {scrapes} | {p50:.2} ms | {p99:.2} ms | {} KiB | {:.1} MiB |",
            size / 1024,
            stats.status_kib("VmRSS:") / 1024.0
        ));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(lines)
}

/// The violation storm (4 threads x 1,000,000 denied getppid) with nothing attached, with
/// tests/bench/seccomp-denials.bt attached alone, then with cgwatch alone: what each counted for
/// the storm's cgroup, what it lost, the storm's wall time and the observer's own CPU.
pub fn bpftrace_compare() -> Result<Vec<String>> {
    const SETTLE: Duration = Duration::from_secs(2);
    let mut lines = vec![
        format!(
            "`bpftrace {BPFTRACE_SCRIPT}` (`tracepoint:raw_syscalls:sys_enter`/`sys_exit`: a sys_exit with no sys_enter of a thread with `curtask->seccomp.mode == 2` is a denial, counted in `@denied[cgroup, args->id]`) against cgwatch, each attached alone:\n"
        ),
        "| observer | denied | counted | lost | workload wall time | observer CPU during it |".into(),
        "| --- | --- | --- | --- | --- | --- |".into(),
    ];
    let me = ProcStats { pid: std::process::id() };
    let (_cg, wall, _) = violation_storm("bench-storm-bare", &me)?;
    lines.push(format!("| neither | 4000000 | | | {wall:.2} s | |"));

    let bpftrace = Bpftrace::start()?;
    let version = Command::new("bpftrace").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    let private_tracefs = bpftrace.private_tracefs;
    let stats = ProcStats { pid: bpftrace.pid() };
    // Each observer settles for the same 2 s before its storm (the agent's first cgroup scan).
    std::thread::sleep(SETTLE);
    let (cg, wall, cpu) = violation_storm("bench-storm-bpftrace", &stats)?;
    // bpftrace's key: the cgroup v2 id, the inode number of the cgroup's v2 directory.
    let id = std::fs::metadata(&cg.v2).with_context(|| format!("{}", cg.v2.display()))?.ino();
    let printed = bpftrace.stop()?;
    let counted: u64 = printed.denied.iter().filter(|(c, _, _)| *c == id).map(|(_, _, n)| n).sum();
    let syscalls: Vec<String> =
        printed.denied.iter().filter(|(c, _, _)| *c == id).map(|(_, nr, n)| format!("{nr}: {n}")).collect();
    lines.push(format!("| {version}, the script | 4000000 | {counted} | {} | {wall:.2} s | {cpu:.2} s |", printed.lost));

    let agent = Agent::start(&[]);
    let stats = ProcStats { pid: agent.pid() };
    std::thread::sleep(SETTLE);
    let (cg2, wall, cpu) = violation_storm("bench-storm-cgwatch", &stats)?;
    let m = agent.scrape();
    let agent_counted = m.sum("cgwatch_seccomp_violations_total", &[("cgroup", &cg2.rel)]);
    let lost = m.sum("cgwatch_events_lost_total", &[]);
    lines.push(format!("| cgwatch | 4000000 | {agent_counted} | {lost} | {wall:.2} s | {cpu:.2} s |"));
    lines.push(String::new());
    lines.push(format!(
        "bpftrace's count for the storm's cgroup (v2 id {id}) by syscall number: {}; lost is what bpftrace printed as \"Lost N events\" (the script sends no events, only maps), cgwatch's cgwatch_events_lost_total.{}",
        if syscalls.is_empty() { "none".to_string() } else { syscalls.join(", ") },
        if private_tracefs { " tracefs was not mounted: bpftrace ran in a mount namespace of its own with tracefs mounted there." } else { "" }
    ));
    Ok(lines)
}
