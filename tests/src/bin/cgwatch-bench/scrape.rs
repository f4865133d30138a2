//! Section 4: scrape latency, size and the agent's memory with 2,000 and 10,000 cgroups, each
//! with an exit event (so each has an exit series) and with the CPU / memory / pressure series
//! this host's cgroups give. Two scrapes each round: the text format uncompressed (curl, a
//! plain scraper) and what Prometheus sends (OpenMetrics preferred, `Accept-Encoding: gzip`).
//! With `--baseline PATH`, a second agent from that binary runs beside the built one, over the
//! same cgroups, and the rounds alternate between them: a before/after within one run.

use std::{
    collections::{BTreeMap, HashSet},
    ffi::CString,
    io::Read as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use cgwatch_tests::{Agent, Metrics, TestCgroup};

use crate::{
    Out,
    common::{ProcStats, percentile, start_baseline},
};

/// Cgroup counts measured.
const SIZES: [usize; 2] = [2_000, 10_000];
/// Threads that make (and remove) the cgroups.
const MAKERS: usize = 4;
/// The `Accept` header of Prometheus 2.x and 3.x (default scrape protocols).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

/// The per-cgroup families, as the table of series per cgroup names them.
const PER_CGROUP: [&str; 12] = [
    "cgwatch_process_exits_total",
    "cgwatch_container_exits_total",
    "cgwatch_seccomp_violations_total",
    "cgwatch_oom_kills_total",
    "cgwatch_cgroup_cpu_usage_seconds_total",
    "cgwatch_cgroup_cpu_throttled_seconds_total",
    "cgwatch_cgroup_memory_usage_bytes",
    "cgwatch_cgroup_memory_working_set_bytes",
    "cgwatch_cgroup_memory_limit_bytes",
    "cgwatch_cgroup_memory_events_total",
    "cgwatch_cgroup_pressure_seconds_total",
    "cgwatch_events_suppressed_total",
];

pub fn scrape_at_scale(report: &mut String, out: Out, scrapes: usize, baseline: Option<&Path>) -> Result<()> {
    out(report, "### 4. Scrape with 2,000 and 10,000 cgroups with events\n".into());
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for n in SIZES {
        let (r, note) = measure(n, scrapes, baseline).with_context(|| format!("{n} cgroups"))?;
        rows.extend(r);
        notes.push(note);
    }
    out(report, "| cgroups | agent | series per cgroup | scrape | p50 | p99 | size | RSS after (anon + file + shmem) |".into());
    out(report, "| --- | --- | --- | --- | --- | --- | --- | --- |".into());
    for r in rows {
        out(report, r);
    }
    out(report, String::new());
    for note in notes {
        out(report, note);
    }
    Ok(())
}

/// One agent under test.
struct Subject {
    name: &'static str,
    agent: Agent,
    plain: Vec<f64>,
    gzip: Vec<f64>,
    plain_size: usize,
    gzip_size: usize,
    gzip_inflated: usize,
    /// Series per cgroup, by family.
    per_cgroup: BTreeMap<String, f64>,
}

fn measure(n: usize, scrapes: usize, baseline: Option<&Path>) -> Result<(Vec<String>, String)> {
    // The production intervals (the test harness's 500 ms would re-read 10,000 cgroups' files
    // twice a second), and room for every cgroup under --max-cgroups.
    let max = (n + n / 10).to_string();
    let args = ["--max-cgroups", &max, "--scan-interval", "15s", "--sample-interval", "5s"];
    let mut subjects = vec![Subject::new("new", Agent::start(&args))];
    if let Some(bin) = baseline {
        subjects.push(Subject::new("baseline", start_baseline(bin, &args)?));
    }
    let parent = TestCgroup::new("bench-scrape");
    let t = Instant::now();
    let children = make_cgroups(&parent, n)?;
    let made = t.elapsed();

    // Every agent names every cgroup's exit and has sampled its resources.
    let prefix = format!("{}/", parent.rel);
    for s in &mut subjects {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let m = s.agent.scrape();
            let exits: Vec<_> = m.find("cgwatch_process_exits_total", &[]);
            let ours: Vec<_> = exits.iter().filter(|x| x.labels["cgroup"].starts_with(&prefix)).collect();
            let cpu = cgroups_with(&m, "cgwatch_cgroup_cpu_usage_seconds_total", &prefix);
            if ours.len() == n && cpu == n {
                let total: f64 = ours.iter().map(|x| x.value).sum();
                if total != n as f64 {
                    bail!("{}: {total} exits counted for {n} cgroups with one exit each", s.name);
                }
                s.per_cgroup = series_per_cgroup(&m, &prefix, n);
                break;
            }
            if Instant::now() > deadline {
                // Other cgroups with events (another test's churn on this host) take places under
                // --max-cgroups too: then ours are counted under "(overflow)".
                let overflow = m.sum("cgwatch_process_exits_total", &[("cgroup", "(overflow)")]);
                let others = exits.len() - ours.len();
                bail!(
                    "{}: {} of {n} cgroups with exit series, {cpu} with CPU series after 120 s \
                     ({overflow} exits under (overflow), {others} other exit series)",
                    s.name,
                    ours.len()
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    for _ in 0..scrapes {
        for s in &mut subjects {
            s.round()?;
        }
    }
    let mut rows = Vec::new();
    let mut note = format!(
        "{n} cgroups made (each with one exit) in {:.1} s; {scrapes} rounds of the two scrapes per agent.",
        made.as_secs_f64()
    );
    for s in &mut subjects {
        let total: f64 = s.per_cgroup.values().sum();
        let families: Vec<String> = s.per_cgroup.iter().map(|(f, c)| format!("{f} {c:.2}")).collect();
        note.push_str(&format!(" Series per cgroup ({}): {}.", s.name, families.join(", ")));
        let stats = ProcStats { pid: s.agent.pid() };
        let mib = |key| stats.status_kib(key) / 1024.0;
        let rss = format!(
            "{:.1} MiB ({:.1} + {:.1} + {:.1})",
            mib("VmRSS:"),
            mib("RssAnon:"),
            mib("RssFile:"),
            mib("RssShmem:")
        );
        let (p50, p99) = (percentile(&mut s.plain, 0.5), percentile(&mut s.plain, 0.99));
        rows.push(format!(
            "| {n} | {} | {total:.1} | text, plain | {p50:.1} ms | {p99:.1} ms | {} KiB | {rss} |",
            s.name,
            s.plain_size / 1024
        ));
        let (p50, p99) = (percentile(&mut s.gzip, 0.5), percentile(&mut s.gzip, 0.99));
        rows.push(format!(
            "| {n} | {} | | Prometheus: OpenMetrics, gzip | {p50:.1} ms | {p99:.1} ms | {} KiB ({} KiB inflated) | |",
            s.name,
            s.gzip_size / 1024,
            s.gzip_inflated / 1024
        ));
    }
    note.push('\n');
    drop(subjects);
    let t = Instant::now();
    remove_cgroups(children);
    drop(parent);
    eprintln!("{n} cgroups removed in {:.1} s", t.elapsed().as_secs_f64());
    Ok((rows, note))
}

impl Subject {
    fn new(name: &'static str, agent: Agent) -> Subject {
        Subject {
            name,
            agent,
            plain: Vec::new(),
            gzip: Vec::new(),
            plain_size: 0,
            gzip_size: 0,
            gzip_inflated: 0,
            per_cgroup: BTreeMap::new(),
        }
    }

    /// One plain and one Prometheus-like scrape, each timed to its last byte.
    fn round(&mut self) -> Result<()> {
        let url = self.agent.url("/metrics");
        let t = Instant::now();
        let body = get(&url, &[])?;
        self.plain.push(t.elapsed().as_secs_f64() * 1e3);
        self.plain_size = body.len();
        let t = Instant::now();
        let body = get(&url, &[("Accept", PROMETHEUS_ACCEPT), ("Accept-Encoding", "gzip")])?;
        self.gzip.push(t.elapsed().as_secs_f64() * 1e3);
        self.gzip_size = body.len();
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut inflated).context("gunzip")?;
        self.gzip_inflated = inflated.len();
        Ok(())
    }
}

/// The body of a GET, as it came (ureq here neither asks for nor undoes a compression itself).
fn get(url: &str, headers: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut req = ureq::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call()?;
    Ok(resp.body_mut().with_config().limit(256 << 20).read_to_vec()?)
}

fn cgroups_with(m: &Metrics, family: &str, prefix: &str) -> usize {
    m.find(family, &[]).iter().filter(|s| s.labels["cgroup"].starts_with(prefix)).map(|s| &s.labels["cgroup"]).collect::<HashSet<_>>().len()
}

/// Series of each per-cgroup family per cgroup below `prefix` (families with none left out).
fn series_per_cgroup(m: &Metrics, prefix: &str, n: usize) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for family in PER_CGROUP {
        let count = m.find(family, &[]).iter().filter(|s| s.labels["cgroup"].starts_with(prefix)).count();
        if count > 0 {
            let short = family.trim_start_matches("cgwatch_").trim_start_matches("cgroup_");
            out.insert(short.to_string(), count as f64 / n as f64);
        }
    }
    out
}

/// `n` children of `parent`, each with one process that joined it and exited with code
/// `i % 7`, made by `MAKERS` threads (a fork per cgroup, no exec).
fn make_cgroups(parent: &TestCgroup, n: usize) -> Result<Vec<TestCgroup>> {
    std::thread::scope(|s| {
        let makers: Vec<_> = (0..MAKERS)
            .map(|t| {
                s.spawn(move || -> Result<Vec<TestCgroup>> {
                    let mut made = Vec::with_capacity(n / MAKERS + 1);
                    for i in (t..n).step_by(MAKERS) {
                        let c = parent.child(&format!("c{i}"));
                        exit_in(&c, (i % 7) as i32)?;
                        made.push(c);
                    }
                    Ok(made)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for m in makers {
            all.extend(m.join().map_err(|_| anyhow::anyhow!("a maker thread panicked"))??);
        }
        Ok(all)
    })
}

/// Forks a child that joins `cgroup` (every hierarchy it has) and exits with `code`.
fn exit_in(cgroup: &TestCgroup, code: i32) -> Result<()> {
    let dirs = [Some(&cgroup.v2), cgroup.memory_v1.as_ref(), cgroup.cpuacct_v1.as_ref(), cgroup.cpu_v1.as_ref()];
    let procs: Vec<CString> = dirs
        .into_iter()
        .flatten()
        .map(|d| CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()))
        .collect::<Result<_, _>>()?;
    // SAFETY: the child makes only async-signal-safe calls (open, write, close, _exit) on memory
    // prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        for p in &procs {
            unsafe {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(120);
                }
                libc::close(fd);
            }
        }
        unsafe { libc::_exit(code) };
    }
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != code {
        bail!("the child in {} did not exit with {code} (status {status:#x})", cgroup.rel);
    }
    Ok(())
}

/// Removes the cgroups from `MAKERS` threads.
fn remove_cgroups(mut children: Vec<TestCgroup>) {
    let per = children.len().div_ceil(MAKERS).max(1);
    std::thread::scope(|s| {
        while !children.is_empty() {
            let chunk: Vec<TestCgroup> = children.drain(..per.min(children.len())).collect();
            s.spawn(move || drop(chunk));
        }
    });
}
