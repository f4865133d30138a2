//! Faults the agent meets on real nodes: no tracefs or debugfs, a full ring buffer, cgroups that
//! vanish while they are scraped. It keeps serving, says what it could not record, and counts
//! what it can. (No or broken kernel BTF: cli.rs.)

use std::{
    fs,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use cgwatch_tests::{Agent, TestCgroup, assert_promtool_parses};

/// The agent needs neither tracefs nor debugfs: tp_btf and raw_tp programs attach through bpf()
/// and kprobes through the perf kprobe PMU. Both hidden under empty mounts in a private mount
/// namespace, every probe attaches as it does with them.
#[test]
fn probes_attach_without_tracefs_or_debugfs() {
    let with = Agent::start(&[]);
    let hide = "for d in /sys/kernel/tracing /sys/kernel/debug; do [ -d $d ] && mount -t tmpfs none $d; done; \
                test -z \"$(ls /sys/kernel/tracing)\" || exit 97; exec \"$0\" \"$@\"";
    let without = Agent::start_wrapped(&["unshare", "--mount", "--propagation", "private", "sh", "-c", hide], &[]);
    let attached = |a: &Agent| {
        let mut v: Vec<(String, String, f64)> = a
            .scrape()
            .find("cgwatch_probe_attached", &[])
            .iter()
            .map(|s| (s.labels["probe"].clone(), s.labels["mode"].clone(), s.value))
            .collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    };
    let (a, b) = (attached(&with), attached(&without));
    assert!(b.iter().filter(|(_, _, v)| *v == 1.0).count() >= 6, "{b:?}");
    assert_eq!(a, b, "{}", without.log());
    let cg = TestCgroup::new("notracefs");
    assert!(cg.run(&["seccomp", "--action", "errno", "--count", "4"]).success());
    let m = without.scrape_until(Duration::from_secs(5), |m| m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]).is_some());
    assert_eq!(m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]), Some(4.0));
}

/// The cgroup event ring (256 KiB, about 500 records) overflows while the agent is stopped:
/// what did not fit is counted in cgwatch_events_lost_total, the agent serves on, and the
/// rescan names the cgroups whose mkdir records were lost.
#[test]
fn a_full_ring_buffer_is_counted_and_the_rescan_names_what_it_lost() {
    let agent = Agent::start(&["--scan-interval", "1s"]);
    let before = agent.scrape().get("cgwatch_events_lost_total", &[("reason", "ring_buffer")]).unwrap();
    let base = TestCgroup::new("ringfull");
    // SAFETY: signals to our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    let dirs: Vec<_> = (0..1500).map(|i| base.v2.join(format!("c{i}"))).collect();
    for d in &dirs {
        fs::create_dir(d).unwrap();
    }
    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
    // The last one, certainly past the ring's capacity, gets an event.
    let last = TestCgroup::at(format!("{}/c1499", base.rel));
    assert_eq!(last.run(&["exit", "6"]).code(), Some(6));
    let m = agent.scrape_until(Duration::from_secs(10), |m| {
        m.get("cgwatch_process_exits_total", &[("cgroup", &last.rel), ("reason", "error")]).is_some()
    });
    let lost = m.get("cgwatch_events_lost_total", &[("reason", "ring_buffer")]).unwrap() - before;
    assert!(lost >= 900.0, "lost {lost} of 1500 records into a ring of about 500");
    assert_eq!(m.get("cgwatch_process_exits_total", &[("cgroup", &last.rel), ("reason", "error")]), Some(1.0));
    drop(last);
    for d in &dirs {
        let _ = fs::remove_dir(d);
    }
}

/// Cgroups made, used and removed as fast as possible while /metrics is scraped in a loop:
/// every scrape succeeds and parses, and every exit is counted.
#[test]
fn cgroups_vanishing_while_scraped_never_break_a_scrape() {
    // Every cgroup keeps its series (a fast machine makes thousands in the 8 s).
    let agent =
        Agent::start(&["--sample-interval", "100ms", "--scan-interval", "100ms", "--retain", "1h", "--max-cgroups", "100000"]);
    let stop = AtomicBool::new(false);
    let (scrapes, made) = std::thread::scope(|s| {
        let scraper = s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let text = agent.try_scrape().unwrap_or_else(|e| panic!("scrape {n} failed: {e}\n{}", agent.log()));
                if n % 20 == 0 {
                    assert_promtool_parses(&text);
                }
                n += 1;
            }
            n
        });
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut made = Vec::new();
        while Instant::now() < deadline {
            let cg = TestCgroup::new("vanish");
            assert_eq!(cg.run(&["exit", "2"]).code(), Some(2));
            made.push(cg.rel.clone());
        }
        stop.store(true, Ordering::Relaxed);
        (scraper.join().unwrap(), made)
    });
    assert!(scrapes >= 20 && made.len() >= 20, "{scrapes} scrapes, {} cgroups", made.len());
    let m = agent.scrape_until(Duration::from_secs(5), |m| {
        made.iter().all(|c| m.get("cgwatch_process_exits_total", &[("cgroup", c), ("reason", "error")]).is_some())
    });
    for c in &made {
        assert_eq!(m.get("cgwatch_process_exits_total", &[("cgroup", c), ("reason", "error")]), Some(1.0), "{c}");
    }
    assert_eq!(m.sum("cgwatch_events_lost_total", &[]), 0.0);
}

/// A full counter map: what does not fit is counted by reason, and, with --log-level debug, the
/// programs say which map, probe and cgroup (aya-log), at most once a second per CPU; at the
/// default level they say nothing.
#[test]
fn a_full_counter_map_is_counted_and_logged_at_debug_level() {
    // --max-cgroups 1: the smallest maps (1,024 exit counters).
    let debug = Agent::start(&["--max-cgroups", "1", "--log-level", "debug"]);
    let quiet = Agent::start(&["--max-cgroups", "1"]);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..600 {
                    let cg = TestCgroup::new("mapfull");
                    assert_eq!(cg.run(&["exit", "3"]).code(), Some(3));
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64().ceil();
    for agent in [&debug, &quiet] {
        let m = agent.scrape();
        let lost = m.get("cgwatch_events_lost_total", &[("reason", "exit_map")]).unwrap();
        assert!(lost >= 100.0, "1,200 cgroups' exits into 1,024 counters: {lost} lost");
        assert_eq!(m.get("cgwatch_map_capacity", &[("map", "exits")]), Some(1024.0));
    }
    let said = |a: &Agent| a.log().lines().filter(|l| l.contains("the exit counter map is full")).count();
    let logged = said(&debug);
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    assert!(logged >= 1, "{}", debug.log());
    assert!((logged as f64) <= (secs + 2.0) * cpus, "{logged} lines in {secs} s: not rate-limited");
    let line = debug.log().lines().find(|l| l.contains("the exit counter map is full")).unwrap().to_string();
    assert!(line.contains("probe process_exit: an event of cgroup ") && line.contains("DEBUG"), "{line}");
    assert_eq!(said(&quiet), 0, "{}", quiet.log());
}
