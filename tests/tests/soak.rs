//! Soak: mixed load for `CGWATCH_SOAK_SECS` (default 600 s: ten minutes) — denial storms, exit
//! storms, OOM kills, cgroup churn — with a scrape every second. At the end every count is
//! exact, the agent's RSS grew less than 5 % after warm-up, and it holds no more descriptors.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use cgwatch_tests::{Agent, TestCgroup, open_fds, proc_status_kib};

#[test]
fn ten_minutes_of_mixed_load_counts_exactly_without_growing() {
    let secs: u64 = std::env::var("CGWATCH_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let agent = Agent::start(&["--retain", "30s", "--scan-interval", "2s", "--sample-interval", "1s"]);
    let deadline = Instant::now() + Duration::from_secs(secs);
    // Warm-up: half the run. Cgroups leave the registry as fast as they come after one retain
    // window, but the heap takes minutes to settle on its working set under the churn (measured
    // here: RSS rises from 7 to about 10.5 MiB over the first four minutes, then stays within
    // +-0.6 MiB for the next four).
    let warm_up = Instant::now() + Duration::from_secs(secs / 2);
    let stop = AtomicBool::new(false);
    let (denied, exits, forks, ooms, churned) =
        (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let storm = TestCgroup::new("soak-storm");
    let exiter = TestCgroup::new("soak-exits");
    let forker = TestCgroup::new("soak-forks");
    let oom = TestCgroup::new("soak-oom");
    oom.set_memory_limit(32 << 20);

    let running = || !stop.load(Ordering::Relaxed) && Instant::now() < deadline;
    let (after_warm_up, samples) = std::thread::scope(|s| {
        s.spawn(|| {
            while running() {
                assert!(storm.run(&["seccomp", "--action", "errno", "--count", "100000", "--threads", "2"]).success());
                denied.fetch_add(200_000, Ordering::Relaxed);
            }
        });
        s.spawn(|| {
            while running() {
                assert_eq!(exiter.run(&["exit", "4"]).code(), Some(4));
                exits.fetch_add(1, Ordering::Relaxed);
                assert!(forker.run(&["forks", "--count", "2000"]).success());
                forks.fetch_add(2000, Ordering::Relaxed);
            }
        });
        s.spawn(|| {
            while running() {
                let status = oom.run(&["alloc", "--mb", "256"]);
                assert_eq!(status.code(), None, "OOM-killed by SIGKILL");
                ooms.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        s.spawn(|| {
            while running() {
                let cg = TestCgroup::new("soak-churn");
                assert_eq!(cg.run(&["exit", "1"]).code(), Some(1));
                churned.fetch_add(1, Ordering::Relaxed);
            }
        });
        // The scraper: one scrape a second, RSS and descriptors after warm-up.
        let mut after_warm_up = None;
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            let t = Instant::now();
            let _ = agent.scrape();
            let (rss, fd) = (proc_status_kib(agent.pid(), "VmRSS:"), open_fds(agent.pid()));
            if after_warm_up.is_none() && t >= warm_up {
                after_warm_up = Some((rss, fd));
            }
            samples.push((rss, fd));
            std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
        }
        stop.store(true, Ordering::Relaxed);
        (after_warm_up.expect("warm-up passed"), samples)
    });

    let m = agent.scrape_until(Duration::from_secs(10), |m| {
        m.get("cgwatch_seccomp_violations_total", &[("cgroup", &storm.rel)]) == Some(denied.load(Ordering::Relaxed) as f64)
    });
    let get = |name: &str, labels: &[(&str, &str)]| m.get(name, labels).unwrap_or(0.0);
    let (denied, exits, forks, ooms) =
        (denied.into_inner() as f64, exits.into_inner() as f64, forks.into_inner() as f64, ooms.into_inner() as f64);
    assert_eq!(get("cgwatch_seccomp_violations_total", &[("cgroup", &storm.rel)]), denied, "denials");
    assert_eq!(get("cgwatch_process_exits_total", &[("cgroup", &exiter.rel), ("reason", "error")]), exits, "exits");
    // The forker's children exit 0, and so does the forker.
    let fork_runs = forks / 2000.0;
    assert_eq!(get("cgwatch_process_exits_total", &[("cgroup", &forker.rel), ("reason", "success")]), forks + fork_runs);
    assert_eq!(m.sum("cgwatch_oom_kills_total", &[("cgroup", &oom.rel)]), ooms, "OOM kills");
    assert_eq!(get("cgwatch_process_exits_total", &[("cgroup", &oom.rel), ("reason", "oom_kill")]), ooms);
    assert_eq!(m.sum("cgwatch_events_lost_total", &[]), 0.0, "nothing lost: {:?}", m.find("cgwatch_events_lost_total", &[]));
    // RSS: the median of the first minute after warm-up against the median of the last minute
    // (a scrape's buffers and the registry's turnover move single samples by +-1 MiB, 7 % of the
    // agent's RSS: ten samples were not enough to tell a trend from that).
    let median = |v: &[(f64, usize)]| {
        let mut r: Vec<f64> = v.iter().map(|s| s.0).collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    let first = samples.iter().position(|s| *s == after_warm_up).unwrap();
    let window = 60.min((samples.len() - first) / 2).max(1);
    let rss0 = median(&samples[first..first + window]);
    let rss1 = median(&samples[samples.len() - window..]);
    // Descriptors: the fewest open in each window. A scrape's socket or a cgroup file being read
    // can be open at the instant of one sample; a leak raises the floor.
    let fewest = |v: &[(f64, usize)]| v.iter().map(|s| s.1).min().unwrap();
    let fd0 = fewest(&samples[first..(first + 10).min(samples.len())]);
    let fd1 = fewest(&samples[samples.len().saturating_sub(10)..]);
    let peak = samples.iter().map(|s| s.0).fold(0.0, f64::max);
    eprintln!(
        "soak {secs} s: {denied} denials, {exits} exits + {forks} forks, {ooms} OOM kills, {} churned cgroups, {} scrapes; \
         RSS {rss0} kB after warm-up -> {rss1} kB at the end (peak {peak} kB); fds {fd0} -> {fd1}",
        churned.into_inner(),
        samples.len()
    );
    assert!(rss1 <= rss0 * 1.05, "RSS grew from {rss0} kB to {rss1} kB");
    assert!(fd1 <= fd0, "descriptors grew from {fd0} to {fd1}");
}
