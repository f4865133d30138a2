//! Per-cgroup CPU and memory agree with the cgroup's own files; host metrics are sane.

use std::time::Duration;

use cgwatch_tests::{Agent, TestCgroup};

fn within(got: f64, want: f64, tolerance: f64) -> bool {
    (got - want).abs() <= want.abs() * tolerance
}

#[test]
fn busy_loop_cpu_matches_cgroup_files() {
    let agent = Agent::start(&[]);
    let cg = TestCgroup::new("cpu");
    let mut child = cg.start_ready(&["spin", "--secs", "1.5", "--hold", "30"]);
    // The cgroup is populated and has no events: it shows up after a rescan (500ms in tests).
    let name = "cgwatch_cgroup_cpu_usage_seconds_total";
    agent.scrape_until(Duration::from_secs(5), |m| m.get(name, &[("cgroup", &cg.rel)]).is_some());
    // Cgroup files are sampled every --sample-interval (500ms in tests): let a sample taken
    // after the loop ended reach the snapshot.
    std::thread::sleep(Duration::from_millis(1200));
    let m = agent.scrape();
    let files = cg.cpu_seconds_from_files();
    let got = m.get(name, &[("cgroup", &cg.rel)]).expect("cpu series");
    let _ = child.kill();
    let _ = child.wait();
    // The loop burned 1.5 s by its own clock; cgroup accounting may trail it by a tick.
    assert!(files >= 1.4, "the loop burned 1.5 s of CPU; the cgroup files say {files}s");
    assert!(within(got, files, 0.10), "agent {got}s vs files {files}s");
}

#[test]
fn known_allocation_memory_matches_cgroup_files() {
    let agent = Agent::start(&[]);
    let cg = TestCgroup::new("mem");
    let mut child = cg.start_ready(&["alloc", "--mb", "64", "--hold", "30"]);
    let name = "cgwatch_cgroup_memory_usage_bytes";
    agent.scrape_until(Duration::from_secs(5), |m| m.get(name, &[("cgroup", &cg.rel)]).is_some());
    std::thread::sleep(Duration::from_millis(1200));
    let m = agent.scrape();
    let files = cg.memory_bytes_from_files();
    let got = m.get(name, &[("cgroup", &cg.rel)]).expect("memory series");
    let _ = child.kill();
    let _ = child.wait();
    assert!(files >= (64 << 20) as f64, "64 MiB touched, files say {files}");
    assert!(within(got, files, 0.10), "agent {got} vs files {files}");
    assert!(m.get("cgwatch_cgroup_memory_limit_bytes", &[("cgroup", &cg.rel)]).is_none(), "unlimited: absent");
}

#[test]
fn host_cpu_and_memory() {
    let agent = Agent::start(&[]);
    let m = agent.scrape_until(Duration::from_secs(12), |m| m.get("cgwatch_host_cpu_usage_ratio", &[]).is_some());
    let ratio = m.get("cgwatch_host_cpu_usage_ratio", &[]).expect("ratio after one sampling interval");
    assert!((0.0..=1.0).contains(&ratio), "{ratio}");
    for mode in ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"] {
        assert!(m.get("cgwatch_host_cpu_seconds_total", &[("mode", mode)]).is_some(), "mode {mode}");
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb = |key: &str| -> f64 {
        let line = meminfo.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() * 1024.0
    };
    assert_eq!(m.get("cgwatch_host_memory_total_bytes", &[]), Some(kb("MemTotal:")));
    let avail = m.get("cgwatch_host_memory_available_bytes", &[]).unwrap();
    assert!(within(avail, kb("MemAvailable:"), 0.10));
    let usage = m.get("cgwatch_host_memory_usage_ratio", &[]).unwrap();
    assert!((usage - (1.0 - avail / kb("MemTotal:"))).abs() < 1e-9);
}
