//! Churn with bounded kernel memory: 5,000 cgroups made, used and removed. Every count reaches
//! /metrics before its series expires; afterwards the kernel counter maps and the agent's RSS
//! are back near where they started, and nothing was dropped silently.

use std::{
    collections::HashSet,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use cgwatch_tests::{Agent, Metrics, TestCgroup, proc_status_kib};

const CGROUPS: usize = 5000;

fn entries(m: &Metrics) -> f64 {
    m.sum("cgwatch_map_entries", &[])
}

#[test]
fn five_thousand_cgroups_come_and_go_with_every_count_shown_and_memory_back_to_baseline() {
    let retain = Duration::from_secs(3);
    let agent = Agent::start(&["--retain", "3s", "--scan-interval", "500ms", "--max-cgroups", "5000"]);
    // Warm up with a small churn of its own (the ring buffer's pages, the blocking threads, the
    // allocator's pools come into use), let it expire, then take the baseline: what the big
    // churn must not grow.
    for _ in 0..300 {
        let cg = TestCgroup::new("warmup");
        assert_eq!(cg.run(&["exit", "1"]).code(), Some(1));
        let _ = agent.scrape();
    }
    std::thread::sleep(retain + Duration::from_secs(3));
    let _ = agent.scrape();
    let base_m = agent.scrape_until(Duration::from_secs(5), |m| !m.find("cgwatch_map_entries", &[]).is_empty());
    let (base_entries, base_rss) = (entries(&base_m), proc_status_kib(agent.pid(), "VmRSS:"));

    let seen: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let mut peak_rss = base_rss;
    let made: Vec<String> = std::thread::scope(|s| {
        let scraper = s.spawn(|| {
            let mut peak = 0.0f64;
            while !done.load(Ordering::Relaxed) {
                let m = agent.scrape();
                let mut seen = seen.lock().unwrap();
                for sample in m.find("cgwatch_process_exits_total", &[("reason", "error")]) {
                    if sample.value == 1.0 {
                        seen.insert(sample.labels["cgroup"].clone());
                    }
                }
                peak = peak.max(proc_status_kib(agent.pid(), "VmRSS:"));
                std::thread::sleep(Duration::from_millis(250));
            }
            peak
        });
        // Two makers, so that a few hundred cgroups are inside the retain window at once.
        let makers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    (0..CGROUPS / 2)
                        .map(|i| {
                            let cg = TestCgroup::new("churn");
                            assert_eq!(cg.run(&["exit", "1"]).code(), Some(1));
                            if i % 10 == 0 {
                                assert!(cg.run(&["seccomp", "--action", "errno", "--count", "2"]).success());
                            }
                            cg.rel.clone()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let made: Vec<String> = makers.into_iter().flat_map(|m| m.join().unwrap()).collect();
        // The last ones: until their retain window ends.
        std::thread::sleep(retain);
        done.store(true, Ordering::Relaxed);
        peak_rss = scraper.join().unwrap();
        made
    });
    let churn_secs = started.elapsed().as_secs_f64();

    // Every cgroup's exit was on /metrics at least once before its series went.
    let seen = seen.into_inner().unwrap();
    let missed: Vec<&String> = made.iter().filter(|c| !seen.contains(*c)).collect();
    assert!(missed.is_empty(), "{} of {CGROUPS} never shown, e.g. {:?}", missed.len(), &missed[..missed.len().min(5)]);

    // After the retain window: the counters and series are gone, memory is back.
    let m = agent.scrape_until(Duration::from_secs(15), |m| {
        m.find("cgwatch_process_exits_total", &[]).iter().all(|s| !s.labels["cgroup"].contains("/churn-"))
            && entries(m) <= base_entries * 1.1 + 10.0
    });
    let left = m.find("cgwatch_process_exits_total", &[]).iter().filter(|s| s.labels["cgroup"].contains("/churn-")).count();
    assert_eq!(left, 0, "series of removed cgroups past --retain");
    let end_entries = entries(&m);
    assert!(end_entries <= base_entries * 1.1 + 10.0, "map entries {end_entries}, baseline {base_entries}");
    std::thread::sleep(Duration::from_secs(2));
    let end_rss = proc_status_kib(agent.pid(), "VmRSS:");
    assert_eq!(m.sum("cgwatch_events_lost_total", &[]), 0.0, "nothing dropped");
    eprintln!(
        "churn: {CGROUPS} cgroups in {churn_secs:.1} s; map entries {base_entries} -> {end_entries}; \
         RSS {base_rss} kB -> peak {peak_rss} kB -> {end_rss} kB"
    );
    assert!(end_rss <= base_rss * 1.1, "RSS {end_rss} kB after the churn, {base_rss} kB before");
}
