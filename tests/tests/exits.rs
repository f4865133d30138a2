//! Process and container exits, by reason, and OOM kills in the victim's cgroup.

use cgwatch_tests::{Agent, TestCgroup, assert_counted, assert_counts};

const P: &str = "cgwatch_process_exits_total";
const C: &str = "cgwatch_container_exits_total";

#[test]
fn exit_codes_and_signals_are_classified() {
    let agent = Agent::start(&[]);
    let cg = TestCgroup::new("exits");
    assert_eq!(cg.run(&["exit", "0"]).code(), Some(0));
    assert_eq!(cg.run(&["exit", "3"]).code(), Some(3));
    assert_eq!(cg.run(&["exit", "3"]).code(), Some(3));
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&cg.run(&["segv"])), Some(libc::SIGSEGV));
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&cg.run(&["sigkill"])), Some(libc::SIGKILL));
    let m = agent.scrape();
    let got: Vec<_> = m
        .find(P, &[("cgroup", &cg.rel)])
        .into_iter()
        .map(|s| (s.labels["reason"].as_str(), s.labels["signal"].as_str(), s.value))
        .collect();
    let want = [("error", "", 2.0), ("signal", "SIGKILL", 1.0), ("signal", "SIGSEGV", 1.0), ("success", "", 1.0)];
    let owned = |v: &[(&str, &str, f64)]| v.iter().map(|(r, s, n)| (r.to_string(), s.to_string(), *n)).collect();
    assert_counts(owned(&got), owned(&want), &m, "exits");
    assert!(m.find(C, &[("cgroup", &cg.rel)]).is_empty(), "no PID-namespace init exited");
}

#[test]
fn pid_namespace_init_exit_is_a_container_exit() {
    let agent = Agent::start(&[]);
    let cg = TestCgroup::new("pidns");
    let status = cg.run(&["exec", "--", "unshare", "--pid", "--fork", "sh", "-c", "exit 7"]);
    assert_eq!(status.code(), Some(7));
    let m = agent.scrape();
    let containers = m.find(C, &[("cgroup", &cg.rel)]);
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].labels["reason"], "error");
    assert_eq!(containers[0].value, 1.0);
    // unshare itself and the namespace's PID 1 both exited with 7.
    assert_counted(m.get(P, &[("cgroup", &cg.rel), ("reason", "error")]).unwrap_or(0.0), 2.0, &m, "exits and OOM kills");
}

#[test]
fn oom_kill_in_a_memory_limited_cgroup() {
    let agent = Agent::start(&[]);
    let cg = TestCgroup::new("oom");
    cg.set_memory_limit(32 << 20);
    let status = cg.run(&["alloc", "--mb", "256"]);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    let m = agent.scrape();
    assert_counted(m.get("cgwatch_oom_kills_total", &[("cgroup", &cg.rel)]).unwrap_or(0.0), 1.0, &m, "exits and OOM kills");
    // Its own limit fired (where the kernel tells the agent the victim while it holds its memory).
    let (limit, limit_cgroup) = if cgwatch_tests::oom_limit_known(&m) { ("own", cg.rel.as_str()) } else { ("unknown", "") };
    assert_counted(m.get("cgwatch_oom_kills_total", &[("cgroup", &cg.rel), ("limit", limit), ("limit_cgroup", limit_cgroup)]).unwrap_or(0.0), 1.0, &m, &format!("{:?}", m.find("cgwatch_oom_kills_total", &[("cgroup", &cg.rel)])));
    let exits = m.find(P, &[("cgroup", &cg.rel)]);
    let exits = exits.iter().map(|s| (s.labels["reason"].clone(), s.labels["signal"].clone(), s.value)).collect();
    assert_counts(exits, vec![("oom_kill".into(), "".into(), 1.0)], &m, "exits");
    // Cgroup resources come from a sample taken every --sample-interval (500ms here).
    let limit = |m: &cgwatch_tests::Metrics| m.get("cgwatch_cgroup_memory_limit_bytes", &[("cgroup", &cg.rel)]);
    let m = agent.scrape_until(std::time::Duration::from_secs(5), |m| limit(m).is_some());
    assert_eq!(limit(&m), Some((32 << 20) as f64));
}

#[test]
fn oom_kill_is_counted_in_the_victims_cgroup_not_the_triggering_one() {
    let agent = Agent::start(&[]);
    // A parent with a 128 MiB limit; `big` holds 80 MiB in one child cgroup, then `small`
    // allocates 56 MiB in another: `small` hits the limit, the OOM killer picks `big`, and
    // `small` then fits with room to spare.
    let parent = TestCgroup::new("oomparent");
    parent.set_memory_limit(128 << 20);
    let big = parent.child("big");
    let small = parent.child("small");
    let mut victim = big.start_ready(&["alloc", "--mb", "80", "--hold", "60"]);
    let trigger = small.run(&["alloc", "--mb", "56"]);
    let victim_status = victim.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&victim_status), Some(libc::SIGKILL));
    let m = agent.scrape();
    // The parent's limit fired, not the victim's own (it has none): limit="ancestor" names it.
    let (limit, limit_cgroup) =
        if cgwatch_tests::oom_limit_known(&m) { ("ancestor", parent.rel.as_str()) } else { ("unknown", "") };
    assert_counted(m.get("cgwatch_oom_kills_total", &[("cgroup", &big.rel), ("limit", limit), ("limit_cgroup", limit_cgroup)]).unwrap_or(0.0), 1.0, &m, &format!("{:?}", m.find("cgwatch_oom_kills_total", &[("cgroup", &big.rel)])));
    assert_counted(m.get(P, &[("cgroup", &big.rel), ("reason", "oom_kill")]).unwrap_or(0.0), 1.0, &m, "exits and OOM kills");
    if trigger.success() {
        // The usual case: the trigger completes once the victim is gone, and nothing is
        // counted in its cgroup.
        assert_eq!(m.get("cgwatch_oom_kills_total", &[("cgroup", &small.rel)]), None);
        assert_counted(m.get(P, &[("cgroup", &small.rel), ("reason", "success")]).unwrap_or(0.0), 1.0, &m, "exits and OOM kills");
    } else {
        // Under emulation the kernel sometimes kills the trigger too, in a second OOM after the
        // victim: then that second kill, and only it, is counted in the trigger's cgroup.
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&trigger), Some(libc::SIGKILL));
        assert_counted(m.get("cgwatch_oom_kills_total", &[("cgroup", &small.rel), ("limit", limit), ("limit_cgroup", limit_cgroup)]).unwrap_or(0.0), 1.0, &m, "exits and OOM kills");
        assert_counted(m.get(P, &[("cgroup", &small.rel), ("reason", "oom_kill")]).unwrap_or(0.0), 1.0, &m, "exits and OOM kills");
    }
}

#[test]
fn oom_group_counts_every_killed_task_once() {
    let cg = TestCgroup::new("oomgroup");
    let group = cg.v2.join("memory.oom.group");
    if !group.exists() {
        // Hybrid hosts keep the memory controller on v1, which has no oom.group: the VM matrix
        // (`cargo xtask vm-test`, cgroup v2 with the memory controller) runs this.
        eprintln!("skipped: memory.oom.group needs the cgroup v2 memory controller");
        return;
    }
    let agent = Agent::start(&[]);
    std::fs::write(&group, "1").unwrap();
    cg.set_memory_limit(64 << 20);
    let mut holders: Vec<_> = (0..2).map(|_| cg.start_ready(&["alloc", "--mb", "8", "--hold", "60"])).collect();
    let trigger = cg.run(&["alloc", "--mb", "256"]);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&trigger), Some(libc::SIGKILL));
    for h in &mut holders {
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&h.wait().unwrap()), Some(libc::SIGKILL));
    }
    let m = agent.scrape();
    // Three tasks killed as a group: three OOM kills, three oom_kill exits, none twice.
    assert_counted(m.sum("cgwatch_oom_kills_total", &[("cgroup", &cg.rel)]), 3.0, &m, &format!("{:?}", m.find("cgwatch_oom_kills_total", &[])));
    assert_counted(m.get(P, &[("cgroup", &cg.rel), ("reason", "oom_kill")]).unwrap_or(0.0), 3.0, &m, &format!("{:?}", m.find(P, &[("cgroup", &cg.rel)])));
    if cgwatch_tests::oom_limit_known(&m) {
        assert_counted(m.get("cgwatch_oom_kills_total", &[("cgroup", &cg.rel), ("limit", "own")]).unwrap_or(0.0), 3.0, &m, "exits and OOM kills");
    }
}

#[test]
fn a_global_oom_is_a_host_limit() {
    if std::env::var_os("CGWATCH_VM").is_none() {
        // A global OOM on a real host would take the machine down with it.
        eprintln!("skipped: runs in the VM matrix only (cargo xtask vm-test)");
        return;
    }
    let agent = Agent::start(&[]);
    let cg = TestCgroup::new("globaloom");
    // No limit anywhere: touch more than the VM's 2 GiB, 64 MiB at a time (no single allocation
    // the overcommit heuristic could refuse), as the OOM killer's first choice.
    let script = "echo 1000 > /proc/self/oom_score_adj && exec cgwatch-workload alloc --mb 4096 --chunk-mb 64";
    let status = cg.run(&["exec", "--", "sh", "-c", script]);
    let dmesg = || String::from_utf8_lossy(&std::process::Command::new("dmesg").output().map(|o| o.stdout).unwrap_or_default()).lines().rev().take(15).collect::<Vec<_>>().join("\n");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "{status}; the kernel's last lines:\n{}", dmesg());
    let m = agent.scrape();
    let limit = if cgwatch_tests::oom_limit_known(&m) { "host" } else { "unknown" };
    assert_counted(m.get("cgwatch_oom_kills_total", &[("cgroup", &cg.rel), ("limit", limit), ("limit_cgroup", "")]).unwrap_or(0.0), 1.0, &m, &format!("{:?}", m.find("cgwatch_oom_kills_total", &[])));
    assert_counted(m.get(P, &[("cgroup", &cg.rel), ("reason", "oom_kill")]).unwrap_or(0.0), 1.0, &m, "exits and OOM kills");
}
