//! Restart continuity: counters and probe links pinned on the BPF filesystem survive the agent,
//! whether it stops cleanly (SIGTERM) or is killed (SIGKILL); events while it is down are
//! counted; `cgwatch --unpin` removes everything.

use std::time::Duration;

use cgwatch_tests::{Agent, Metrics, PinDir, TestCgroup, cgwatch_bin, prom::Prometheus};

fn counts(m: &Metrics, cg: &TestCgroup) -> (Option<f64>, Option<f64>) {
    (
        m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel), ("syscall", "getppid"), ("action", "errno")]),
        m.get("cgwatch_process_exits_total", &[("cgroup", &cg.rel), ("reason", "error")]),
    )
}

#[test]
fn counts_continue_across_restarts_and_events_while_down_are_counted() {
    let pins = PinDir::new("restart");
    let pin = pins.arg();
    let cg = TestCgroup::new("restart");
    let mut agent = Agent::start(&["--pin-path", &pin]);
    assert_eq!(agent.scrape().get("cgwatch_pinned", &[]), Some(1.0));
    let (mut denied, mut errors) = (0.0, 0.0);
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "SIGKILL")] {
        // N events while the agent runs...
        assert!(cg.run(&["seccomp", "--action", "errno", "--count", "10"]).success());
        assert_eq!(cg.run(&["exit", "3"]).code(), Some(3));
        denied += 10.0;
        errors += 1.0;
        let m = agent.scrape_until(Duration::from_secs(10), |m| counts(m, &cg) == (Some(denied), Some(errors)));
        assert_eq!(counts(&m, &cg), (Some(denied), Some(errors)), "before {name}");
        agent.stop(signal);
        // ...M while it is down...
        assert!(cg.run(&["seccomp", "--action", "errno", "--count", "7"]).success());
        assert_eq!(cg.run(&["exit", "3"]).code(), Some(3));
        denied += 7.0;
        errors += 1.0;
        // ...and the restarted agent shows N + M.
        agent = Agent::start(&["--pin-path", &pin]);
        let m = agent.scrape_until(Duration::from_secs(10), |m| counts(m, &cg) == (Some(denied), Some(errors)));
        assert_eq!(counts(&m, &cg), (Some(denied), Some(errors)), "after {name}:\n{}", agent.log());
        assert!(agent.log().contains("probes kept running from before this start"), "{}", agent.log());
    }
    drop(agent);

    // --unpin detaches the probes and removes the counters.
    let out = std::process::Command::new(cgwatch_bin()).args(["--unpin", "--pin-path", &pin]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!pins.path.exists());
    let agent = Agent::start(&["--pin-path", &pin]);
    assert_eq!(counts(&agent.scrape(), &cg), (None, None), "counts start over after --unpin");
}

/// Prometheus's `increase()` across a killed and restarted agent is exact: the counter did not
/// reset, and the events while the agent was down are in it.
#[test]
fn prometheus_increase_across_a_restart_is_exact() {
    let pins = PinDir::new("restart-prom");
    let pin = pins.arg();
    let port = cgwatch_tests::free_port();
    let agent = Agent::start_at(port, &["--pin-path", &pin]);
    let prom = Prometheus::start(&[port], &[], None);
    let cg = TestCgroup::new("restart-prom");
    let selector = format!("cgwatch_seccomp_violations_total{{cgroup=\"{}\",action=\"errno\"}}", cg.rel);
    assert!(cg.run(&["seccomp", "--action", "errno", "--count", "5"]).success());
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}\n{}", prom.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("5 in Prometheus", &|| prom.value(&selector) == Some(5.0));
    agent.stop(libc::SIGKILL);
    assert!(cg.run(&["seccomp", "--action", "errno", "--count", "8"]).success());
    // Prometheus sees the agent down before it comes back.
    wait("a failed scrape", &|| prom.value("up{job=\"cgwatch\"}") == Some(0.0));
    let _agent = Agent::start_at(port, &["--pin-path", &pin]);
    wait("13 in Prometheus", &|| prom.value(&selector) == Some(13.0));
    assert_eq!(prom.increase_between(&selector, 5.0, 13.0), 8.0);
    assert_eq!(prom.value(&format!("resets({selector}[10m])")), Some(0.0), "no counter reset");
}

/// A restart with another --max-cgroups resizes the counter maps: the counts move into the new
/// maps, and an agent of another map layout would start clean (both say so in the log).
#[test]
fn a_resized_map_keeps_its_counts() {
    let pins = PinDir::new("resize");
    let pin = pins.arg();
    let cg = TestCgroup::new("resize");
    let agent = Agent::start(&["--pin-path", &pin, "--max-cgroups", "2000"]);
    assert!(cg.run(&["seccomp", "--action", "errno", "--count", "6"]).success());
    assert_eq!(cg.run(&["exit", "3"]).code(), Some(3));
    let m = agent.scrape_until(Duration::from_secs(10), |m| counts(m, &cg) == (Some(6.0), Some(1.0)));
    assert_eq!(counts(&m, &cg), (Some(6.0), Some(1.0)));
    agent.stop(libc::SIGTERM);
    let agent = Agent::start(&["--pin-path", &pin, "--max-cgroups", "3000"]);
    let m = agent.scrape();
    assert_eq!(m.get("cgwatch_map_capacity", &[("map", "seccomp")]), Some(12000.0), "{}", agent.log());
    assert_eq!(counts(&m, &cg), (Some(6.0), Some(1.0)), "{}", agent.log());
    assert!(agent.log().contains("counters of SECCOMP_COUNTS carried into the resized map"), "{}", agent.log());
    // The new maps count on.
    assert!(cg.run(&["seccomp", "--action", "errno", "--count", "2"]).success());
    let m = agent.scrape();
    assert_eq!(counts(&m, &cg).0, Some(8.0));
}

/// After a restart that keeps the running probes, their skipped runs are still read without
/// CAP_SYS_ADMIN (the DaemonSet's and the systemd unit's capability sets, where the kernel will
/// not open a program by id): through the programs pinned beside their links.
#[test]
fn a_restarted_agent_without_cap_sys_admin_still_reads_its_probes_skipped_runs() {
    let pins = PinDir::new("skipped");
    let pin = pins.arg();
    let probes = |m: &Metrics| -> Vec<String> {
        m.find("cgwatch_probe_skipped_runs_total", &[]).iter().map(|s| s.labels["probe"].clone()).collect()
    };
    let first = Agent::start(&["--pin-path", &pin]);
    let want = probes(&first.scrape());
    assert!(!want.is_empty());
    first.stop(libc::SIGTERM);
    // uid 0, its capabilities bounded to the unit's set.
    let set = "-all,+bpf,+perfmon,+dac_read_search";
    let (inh, bnd) = (format!("--inh-caps={set}"), format!("--bounding-set={set}"));
    let second = Agent::start_wrapped(&["setpriv", &inh, &bnd], &["--pin-path", &pin]);
    let effective = cgwatch_tests::proc_caps(second.pid(), "CapEff:");
    const CAP_SYS_ADMIN: u32 = 21;
    assert_eq!(effective & (1 << CAP_SYS_ADMIN), 0, "{effective:x}");
    let m = second.scrape();
    assert!(second.log().contains("probes kept running from before this start"), "{}", second.log());
    assert_eq!(probes(&m), want, "{}", second.log());
    assert!(!second.log().contains("skipped runs are not reported"), "{}", second.log());
}
