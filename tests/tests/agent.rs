//! Agent-level behaviour: probe table, retain window, cardinality bound, hostile names (the
//! metric names and types as a contract: `exposition.rs`).

use std::time::Duration;

use cgwatch::probes::PROBES;
use cgwatch_tests::{Agent, TestCgroup};

#[test]
fn every_probe_of_the_table_attaches_here() {
    let agent = Agent::start(&[]);
    let m = agent.scrape();
    // Exactly one path counts ERRNO verdicts: the fast path, or the tracepoints where it cannot
    // attach (this host refuses fexit and has no kprobes); a fallen-back fast path reads `off`.
    let fast = m.get("cgwatch_probe_attached", &[("probe", "seccomp_filter")]) == Some(1.0);
    for tp in ["seccomp_sys_enter", "seccomp_sys_exit"] {
        let mode = if fast { "off" } else { "tp_btf" };
        assert_eq!(m.get("cgwatch_probe_attached", &[("probe", tp), ("mode", mode)]), Some(if fast { 0.0 } else { 1.0 }));
    }
    if !fast {
        assert_eq!(m.get("cgwatch_probe_attached", &[("probe", "seccomp_filter"), ("mode", "off")]), Some(0.0));
        assert!(
            agent.log().contains("probe seccomp_filter: off: unavailable here, the syscall tracepoints count ERRNO verdicts"),
            "{}",
            agent.log()
        );
    }
    // The LOG, TRACE and USER_NOTIF hooks attach where fexit or kprobes work (the last two only
    // beside the fast path), else read `off` and say so.
    for (probe, says) in [
        ("seccomp_log", "LOG verdicts are not counted"),
        ("seccomp_trace", "traced TRACE verdicts count as errno"),
        ("seccomp_user_notif", "USER_NOTIF verdicts count as errno"),
    ] {
        let hook = m.find("cgwatch_probe_attached", &[("probe", probe)]);
        assert_eq!(hook.len(), 1);
        if hook[0].value == 0.0 {
            assert_eq!(hook[0].labels["mode"], "off");
            assert!(agent.log().contains(&format!("probe {probe}: off: unavailable here, {says}")), "{}", agent.log());
        } else {
            assert!(fast || probe == "seccomp_log", "{probe} needs the fast path");
            assert!(["fexit", "kprobe"].contains(&hook[0].labels["mode"].as_str()), "{hook:?}");
        }
    }
    // The oom_kill_process kprobe only stands in for a mark_victim without the victim task.
    let oom_kprobe_needed = cgwatch::btf::KernelBtf::from_sysfs(std::path::Path::new("/sys"))
        .and_then(|b| b.kernel_config())
        .is_ok_and(|c| c.flags & agent_common::config_flags::MARK_VICTIM_HAS_TASK == 0);
    let (skip, off) = if oom_kprobe_needed { ("oom_kill_process", "oom_mark_victim") } else { ("", "oom_kill_process") };
    assert_eq!(m.get("cgwatch_probe_attached", &[("probe", off), ("mode", "off")]), Some(0.0));
    for rows in PROBES
        .iter()
        .filter(|r| {
            !r[0].probe.starts_with("seccomp_sys_")
                && !["seccomp_filter", "seccomp_log", "seccomp_trace", "seccomp_user_notif", skip, off].contains(&r[0].probe)
        })
    {
        let probe = rows[0].probe;
        // This kernel has BTF and tp_btf: the preferred mode must be the one that attached.
        assert_eq!(
            m.get("cgwatch_probe_attached", &[("probe", probe), ("mode", rows[0].mode.as_str())]),
            Some(1.0),
            "{probe}\n{}",
            agent.log()
        );
    }
    assert_eq!(m.find("cgwatch_probe_attached", &[]).len(), PROBES.len());
    let kernel = cgwatch::probes::kernel_release();
    assert_eq!(m.get("cgwatch_build_info", &[("kernel", &kernel), ("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
}

#[test]
fn raw_tp_mode_attaches_everything_and_counts_the_same() {
    let agent = Agent::start(&["--probe-mode", "raw_tp", "--seccomp-mode", "tracepoint"]);
    let m = agent.scrape();
    // Every tracepoint probe attaches raw; the function probes are not tracepoints.
    let function_probes = ["seccomp_filter", "seccomp_log", "seccomp_trace", "seccomp_user_notif", "oom_kill_process"];
    for rows in PROBES.iter().filter(|r| !function_probes.contains(&r[0].probe)) {
        let probe = rows[0].probe;
        assert_eq!(m.get("cgwatch_probe_attached", &[("probe", probe), ("mode", "raw_tp")]), Some(1.0), "{probe}");
    }
    let cg = TestCgroup::new("rawtp");
    assert!(cg.run(&["seccomp", "--action", "errno", "--count", "300"]).success());
    assert!(cg.run(&["seccomp", "--action", "trap", "--count", "5"]).success());
    assert!(cg.run(&["seccomp", "--action", "kill-thread", "--threads", "2"]).success());
    assert_eq!(cg.run(&["exit", "3"]).code(), Some(3));
    let m = agent.scrape();
    let v = "cgwatch_seccomp_violations_total";
    assert_eq!(m.get(v, &[("cgroup", &cg.rel), ("syscall", "getppid"), ("action", "errno")]), Some(300.0));
    assert_eq!(m.get(v, &[("cgroup", &cg.rel), ("syscall", "getppid"), ("action", "trap")]), Some(5.0));
    // A raw tracepoint cannot read the killed thread's registers: the syscall is unknown.
    assert_eq!(m.get(v, &[("cgroup", &cg.rel), ("syscall", "syscall_unknown"), ("action", "kill_thread")]), Some(2.0));
    assert_eq!(m.get("cgwatch_process_exits_total", &[("cgroup", &cg.rel), ("reason", "error")]), Some(1.0));
    assert_eq!(m.get("cgwatch_process_exits_total", &[("cgroup", &cg.rel), ("reason", "success")]), Some(3.0));
}

#[test]
fn removed_cgroup_keeps_its_series_for_the_retain_window() {
    let agent = Agent::start(&["--retain", "3s"]);
    let cg = TestCgroup::new("retain");
    let rel = cg.rel.clone();
    assert_eq!(cg.run(&["exit", "5"]).code(), Some(5));
    drop(cg); // rmdir
    let series = |m: &cgwatch_tests::Metrics| m.get("cgwatch_process_exits_total", &[("cgroup", &rel), ("reason", "error")]);
    assert_eq!(series(&agent.scrape()), Some(1.0), "final value visible right after removal");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(series(&agent.scrape()), Some(1.0), "still within --retain");
    let m = agent.scrape_until(Duration::from_secs(8), |m| series(m).is_none());
    assert_eq!(series(&m), None, "gone after --retain");
}

/// A container restarted by its runtime gets a new cgroup at the same path, so the same series:
/// when the old cgroup leaves the retain window its counts stay in the series (a drop would be
/// a counter reset to Prometheus, which would then count the new cgroup's exits twice).
#[test]
fn a_cgroup_recreated_at_the_same_path_keeps_its_counts_after_the_old_one_expires() {
    let agent = Agent::start(&["--retain", "2s"]);
    let dir = format!("reuse-{}", std::process::id());
    let first = TestCgroup::with_dir_name(&dir);
    let rel = first.rel.clone();
    assert_eq!(first.run(&["exit", "5"]).code(), Some(5));
    assert!(first.run(&["seccomp", "--action", "errno", "--count", "3"]).success());
    drop(first);
    let second = TestCgroup::with_dir_name(&dir);
    assert_eq!(second.run(&["exit", "5"]).code(), Some(5));
    let errors = |m: &cgwatch_tests::Metrics| m.get("cgwatch_process_exits_total", &[("cgroup", &rel), ("reason", "error")]);
    let denied = |m: &cgwatch_tests::Metrics| m.get("cgwatch_seccomp_violations_total", &[("cgroup", &rel)]);
    let m = agent.scrape();
    assert_eq!((errors(&m), denied(&m)), (Some(2.0), Some(3.0)), "both cgroups, one series");
    // Past the first cgroup's retain window (and a few housekeeping rounds): still 2 and 3.
    std::thread::sleep(Duration::from_millis(4000));
    let m = agent.scrape();
    assert_eq!((errors(&m), denied(&m)), (Some(2.0), Some(3.0)), "the old cgroup's counts were dropped");
    assert!(agent.log().lines().all(|l| !l.contains("WARN")), "{}", agent.log());
    // Once the path has no cgroup left, the series goes after its retain window.
    drop(second);
    let m = agent.scrape_until(Duration::from_secs(10), |m| errors(m).is_none());
    assert_eq!((errors(&m), denied(&m)), (None, None));
}

#[test]
fn max_cgroups_folds_the_rest_into_overflow_without_losing_counts() {
    let agent = Agent::start(&["--max-cgroups", "1"]);
    let a = TestCgroup::new("maxa");
    let b = TestCgroup::new("maxb");
    assert_eq!(a.run(&["exit", "4"]).code(), Some(4));
    assert_eq!(b.run(&["exit", "4"]).code(), Some(4));
    assert_eq!(b.run(&["exit", "4"]).code(), Some(4));
    let m = agent.scrape();
    let p = "cgwatch_process_exits_total";
    // One cgroup holds the one slot (which one depends on what else exits on the host while the
    // tests run in parallel; the registry's unit tests pin the admission order)...
    let shown: std::collections::BTreeSet<&str> =
        m.find(p, &[]).iter().map(|s| s.labels["cgroup"].as_str()).filter(|c| !c.starts_with('(')).collect();
    assert!(shown.len() <= 1, "{shown:?}");
    // ...and every exit is counted, under its cgroup or summed into "(overflow)".
    let error = |cg: &str| m.sum(p, &[("cgroup", cg), ("reason", "error")]);
    assert!(error(&a.rel) + error(&b.rel) + error("(overflow)") >= 3.0);
    assert!(error("(overflow)") >= 1.0, "a and b cannot both have a slot");
    assert!(m.get("cgwatch_cgroups_not_shown", &[]).unwrap() >= 1.0);
}

#[test]
fn hostile_cgroup_names_do_not_break_the_exposition() {
    let agent = Agent::start(&[]);
    let nasty = format!("evil\"}} 1 # x\\{}-{}", "é".repeat(20), std::process::id());
    let cg = TestCgroup::with_dir_name(&nasty);
    assert_eq!(cg.run(&["exit", "9"]).code(), Some(9));
    let m = agent.scrape();
    // The parser rejects any malformed line; the label comes back byte for byte.
    assert_eq!(m.get("cgwatch_process_exits_total", &[("cgroup", &cg.rel), ("reason", "error")]), Some(1.0));
    cgwatch_tests::assert_promtool_parses(&m.text);
}
