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

/// A cgroup that gets its first process has its CPU and memory series at once, not at the next
/// rescan and sampling pass (an hour here): from its mkdir record and a check of young cgroups
/// for processes every half second. (`cargo xtask bench` measures how soon.)
#[test]
fn a_new_cgroup_has_its_series_without_waiting_for_a_rescan() {
    let agent = Agent::start(&["--scan-interval", "1h", "--sample-interval", "1h"]);
    // Let the agent's first scan and sampling pass go by.
    std::thread::sleep(Duration::from_millis(500));
    let cg = TestCgroup::new("fresh");
    let mut child = cg.start_ready(&["alloc", "--mb", "16", "--hold", "30"]);
    let l = [("cgroup", cg.rel.as_str())];
    let m = agent.scrape_until(Duration::from_secs(5), |m| {
        m.get("cgwatch_cgroup_cpu_usage_seconds_total", &l).is_some()
            && m.get("cgwatch_cgroup_memory_usage_bytes", &l).is_some()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(m.get("cgwatch_cgroup_cpu_usage_seconds_total", &l).is_some(), "no CPU series for {}", cg.rel);
    let memory = m.get("cgwatch_cgroup_memory_usage_bytes", &l).expect("memory series");
    assert!(memory > 0.0, "sampled after its first process: {memory}");
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

/// Total stall seconds of one line of a PSI file.
fn psi_total(path: &str, kind: &str) -> f64 {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find(|l| l.starts_with(kind)).unwrap();
    let total = line.split_whitespace().find_map(|f| f.strip_prefix("total=")).unwrap();
    total.parse::<f64>().unwrap() / 1e6
}

#[test]
fn cpu_throttling_memory_events_and_pressure_match_the_files() {
    let agent = Agent::start(&[]);
    let cg = TestCgroup::new("throttle");
    // 10% of a CPU: burning 0.3 s of CPU takes ~3 s, throttled most of it.
    cg.set_cpu_quota(10_000, 100_000);
    cg.set_memory_limit(48 << 20);
    let mut child = cg.start_ready(&["spin", "--secs", "0.3", "--hold", "60"]);
    let oom = cg.run(&["alloc", "--mb", "256"]);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&oom), Some(libc::SIGKILL));
    let throttled = cg.throttled_seconds_from_files();
    assert!(throttled > 0.5, "the quota throttled the loop: files say {throttled}s");
    let cpu_psi = psi_total(&format!("{}/cpu.pressure", cg.v2.display()), "some");
    let l = [("cgroup", cg.rel.as_str())];
    let ok = |m: &cgwatch_tests::Metrics| {
        m.get("cgwatch_cgroup_cpu_throttled_seconds_total", &l).is_some_and(|v| within(v, throttled, 0.10))
            && m.get("cgwatch_cgroup_memory_events_total", &[l[0], ("event", "oom_kill")]) == Some(1.0)
            && m.get("cgwatch_cgroup_pressure_seconds_total", &[l[0], ("resource", "cpu"), ("kind", "some")])
                .is_some_and(|v| within(v, cpu_psi, 0.10))
    };
    let m = agent.scrape_until(Duration::from_secs(10), ok);
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok(&m), "throttled {throttled}s, cpu some {cpu_psi}s:\n{:?}", m.find("cgwatch_cgroup_cpu_throttled_seconds_total", &l));
    assert!(cpu_psi > 0.5, "a throttled cgroup stalls on CPU: {cpu_psi}s");
    let ws = m.get("cgwatch_cgroup_memory_working_set_bytes", &l).unwrap();
    assert!(ws <= m.get("cgwatch_cgroup_memory_usage_bytes", &l).unwrap());
}

#[test]
fn host_pressure_matches_proc() {
    let agent = Agent::start(&[]);
    for (resource, kind) in [("cpu", "some"), ("memory", "some"), ("memory", "full"), ("io", "some"), ("io", "full")] {
        let path = format!("/proc/pressure/{resource}");
        let before = psi_total(&path, kind);
        let got = agent.scrape().get("cgwatch_host_pressure_seconds_total", &[("resource", resource), ("kind", kind)]);
        let after = psi_total(&path, kind);
        let got = got.unwrap_or_else(|| panic!("{resource} {kind} missing"));
        assert!(before <= got && got <= after, "{resource} {kind}: {before} <= {got} <= {after}");
    }
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
