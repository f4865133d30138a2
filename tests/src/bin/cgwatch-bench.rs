//! `cargo xtask bench`: the agent's costs, measured on this kernel, printed as a markdown report.
//!
//! 1. null-syscall cost: no probes, empty programs on the same hooks (the floor), the agent;
//!    for a task without and with a seccomp filter;
//! 2. violation storm: 4 threads x 1,000,000 denied syscalls;
//! 3. exit storm: short processes at 20,000/s for 10 s;
//! 4. scrape latency and size with 2,000 cgroups with events;
//! 5. agent RSS and CPU, idle and under the storms;
//! 6. node_exporter side by side on the host metrics both serve.

use std::{
    fs,
    io::Write as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use cgwatch_tests::{Agent, TestCgroup, bin, free_port, workload_bin};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Rounds of the interleaved syscall benchmark.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Syscalls per measurement.
    #[arg(long, default_value_t = 2_000_000)]
    calls: u64,
    /// Scrapes for the latency benchmark.
    #[arg(long, default_value_t = 200)]
    scrapes: usize,
    /// Run only these sections (e.g. 1,4); all when empty.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// Write the report here as well as to stdout.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Best of three runs of `count` raw getpid calls, ns per call.
fn nullsys(count: u64, filter: bool) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut cmd = Command::new(workload_bin());
        cmd.args(["nullsys", "--count", &count.to_string()]);
        if filter {
            cmd.arg("--filter");
        }
        let out = cmd.output()?;
        let ns: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("nullsys output")?;
        best = best.min(ns);
    }
    Ok(best)
}

/// A process that holds probes while it lives.
enum Setup {
    None,
    Floor(Child),
    // Held for its lifetime: dropping it stops the agent.
    Agent(#[allow(dead_code)] Agent),
}

impl Setup {
    fn start(kind: &str) -> Result<Setup> {
        Ok(match kind {
            "none" => Setup::None,
            "floor" => {
                let mut child = Command::new(bin("cgwatch-floor"))
                    .arg("tp_btf")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()?;
                let mut line = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line)?;
                if line.trim() != "ready" {
                    bail!("cgwatch-floor did not attach");
                }
                Setup::Floor(child)
            }
            "events" => Setup::Agent(Agent::start(&["--events", "/dev/null"])),
            _ => Setup::Agent(Agent::start(&[])),
        })
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Setup::Floor(child) = self {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

struct ProcStats {
    pid: u32,
}

impl ProcStats {
    fn cpu_seconds(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15; after the ")" they are at 11 and 12.
        (ticks(11) + ticks(12)) / procfs_ticks()
    }

    fn status_kib(&self, key: &str) -> f64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

fn procfs_ticks() -> f64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

fn scrape_latencies(url: &str, n: usize) -> Result<(f64, f64, usize)> {
    let mut lat = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let body = ureq::get(url).call()?.body_mut().read_to_string()?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        size = body.len();
    }
    Ok((percentile(&mut lat.clone(), 0.5), percentile(&mut lat, 0.99), size))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut report = String::new();
    let kernel = cgwatch::probes::kernel_release();
    let out: Out = |report: &mut String, line: String| {
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
    };
    out(&mut report, format!("Kernel {kernel}, {} CPUs.\n", std::thread::available_parallelism().map_or(0, |n| n.get())));

    let want = |n: u32| args.only.is_empty() || args.only.contains(&n);
    if want(1) {
        syscall_overhead(&args, &mut report, out)?;
    }
    if want(2) || want(3) || want(5) {
        storms(&mut report, out, args.scrapes)?;
    }
    if want(4) {
        scrape_2000(&mut report, out, args.scrapes)?;
    }
    if want(6) {
        out(&mut report, "### 6. Side by side with node_exporter (host CPU and memory only)\n".into());
        match node_exporter_compare(args.scrapes) {
            Ok(lines) => lines.into_iter().for_each(|l| out(&mut report, l)),
            Err(e) => out(&mut report, format!("node_exporter not measured: {e:#}")),
        }
    }
    if want(7) {
        map_memory(&mut report, out)?;
    }
    if let Some(path) = args.out {
        fs::File::create(&path)?.write_all(report.as_bytes())?;
    }
    Ok(())
}

type Out = fn(&mut String, String);

/// The kernel memory of the agent's maps, from the `memlock` its map descriptors report in
/// /proc/PID/fdinfo (what kernels < 5.11 charge to RLIMIT_MEMLOCK and later ones to the memory
/// cgroup), for two `--max-cgroups`.
fn map_memory(report: &mut String, out: Out) -> Result<()> {
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

fn syscall_overhead(args: &Args, report: &mut String, out: Out) -> Result<()> {
    // 1. Syscall overhead, interleaved rounds so that drift hits every setup alike.
    out(report, "### 1. Null syscall (raw getpid), ns per call\n".into());
    let kinds = ["none", "floor", "agent", "events"];
    let mut samples: Vec<[Vec<f64>; 2]> = kinds.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for round in 0..args.rounds {
        for k in 0..kinds.len() {
            let kind = kinds[(k + round) % kinds.len()];
            let idx = kinds.iter().position(|x| *x == kind).unwrap();
            let _setup = Setup::start(kind)?;
            samples[idx][0].push(nullsys(args.calls, false)?);
            samples[idx][1].push(nullsys(args.calls, true)?);
        }
    }
    let med: Vec<[f64; 2]> = samples.iter_mut().map(|[a, b]| [median(a), median(b)]).collect();
    out(report, "| task | no probes | floor (empty tp_btf on sys_enter+sys_exit) | agent | floor adds | agent adds | agent / floor |".into());
    out(report, "| --- | --- | --- | --- | --- | --- | --- |".into());
    for (i, task) in ["without a seccomp filter", "with a seccomp filter"].iter().enumerate() {
        for (agent, which) in [(2, ""), (3, ", agent with --events on")] {
            let (n, f, a) = (med[0][i], med[1][i], med[agent][i]);
            out(
                report,
                format!(
                    "| {task}{which} | {n:.1} | {f:.1} | {a:.1} | {:.1} | {:.1} | {:.2}x |",
                    f - n,
                    a - n,
                    (a - n) / (f - n)
                ),
            );
        }
    }
    out(report, format!("\nMedians of {} interleaved rounds, each the best of 3 runs of {} calls.\n", args.rounds, args.calls));
    Ok(())
}

/// 4 threads x 1,000,000 denied getppid in a new cgroup: the cgroup, the wall time and the
/// agent's CPU seconds during it.
fn violation_storm(name: &str, agent: &ProcStats) -> Result<(TestCgroup, f64, f64)> {
    let cg = TestCgroup::new(name);
    let c0 = agent.cpu_seconds();
    let t = Instant::now();
    let status = cg.run(&["seccomp", "--action", "errno", "--threads", "4", "--count", "1000000"]);
    let wall = t.elapsed().as_secs_f64();
    if !status.success() {
        bail!("storm workload failed: {status}");
    }
    Ok((cg, wall, agent.cpu_seconds() - c0))
}

fn storms(report: &mut String, out: Out, scrapes: usize) -> Result<()> {
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

fn scrape_2000(report: &mut String, out: Out, scrapes: usize) -> Result<()> {
    // 4. Scrape with 2,000 cgroups that have events.
    out(report, "### 4. Scrape with 2,000 cgroups with events\n".into());
    let agent = Agent::start(&["--max-cgroups", "2100"]);
    let stats = ProcStats { pid: agent.pid() };
    let parent = TestCgroup::new("bench-scrape");
    let mut children = Vec::with_capacity(2000);
    for i in 0..2000 {
        let c = parent.child(&format!("c{i}"));
        c.run(&["exit", &(i % 7).to_string()]);
        children.push(c);
    }
    let m = agent.scrape();
    let shown = m.find("cgwatch_process_exits_total", &[]).iter().filter(|s| s.labels["cgroup"].starts_with(&parent.rel)).count();
    let url = format!("http://127.0.0.1:{}/metrics", agent.port);
    let (p50, p99, size) = scrape_latencies(&url, scrapes)?;
    let scrape_rss = stats.status_kib("VmRSS:") / 1024.0;
    out(report, "| cgroups with exit series | scrapes | p50 | p99 | size |".into());
    out(report, "| --- | --- | --- | --- | --- |".into());
    out(report, format!("| {shown} | {scrapes} | {p50:.2} ms | {p99:.2} ms | {} KiB |", size / 1024));
    out(report, format!("\nAgent RSS with 2,000 cgroups after {scrapes} scrapes: {scrape_rss:.1} MiB.\n"));
    drop(children);
    drop(parent);
    drop(agent);
    Ok(())
}

fn node_exporter_compare(scrapes: usize) -> Result<Vec<String>> {
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
