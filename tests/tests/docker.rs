//! Real Docker Engine containers: Debian's dockerd + runc with Docker's default seccomp profile,
//! memory limits and restart policies, an image of busybox-static and the test workload, and
//! the agent reading docker's own state (`/var/lib/docker/containers`) for the names. The
//! daemon is the harness's own (`cgwatch_tests::docker`), shared by the tests of this binary;
//! the data root test starts a second one of its own (`docker::OwnDaemon`).

use std::{
    sync::{RwLock, RwLockReadGuard},
    time::{Duration, Instant},
};

use cgwatch_tests::{
    Agent,
    docker::{self, Container},
};

const WAIT: Duration = Duration::from_secs(15);

/// The tests run in parallel on one daemon; the one that counts running containers runs alone.
static DAEMON_USE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    DAEMON_USE.read().unwrap_or_else(|e| e.into_inner())
}

fn ctr_labels(c: &Container) -> [(&'static str, &str); 3] {
    [("container_id", c.id.as_str()), ("container", c.name.as_str()), ("runtime", "docker")]
}

fn with<'a>(base: &[(&'a str, &'a str)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    [base, extra].concat()
}

#[test]
fn a_syscall_denied_by_dockers_default_profile_is_counted_under_the_container() {
    let _use = shared();
    let agent = Agent::start(&[]);
    // acct() needs CAP_SYS_PACCT, which docker does not grant: its default profile answers EPERM.
    let c = Container::start("seccomp", &[], &["/cgwatch-workload", "acct", "--count", "250"]);
    assert_eq!(c.wait(), 0, "{}", c.logs());
    assert_eq!(c.logs().trim(), "250", "every call failed with EPERM");
    let cgroup = c.cgroup();
    let want = with(&ctr_labels(&c), &[("syscall", "acct"), ("action", "errno"), ("cgroup", &cgroup)]);
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_seccomp_violations_total", &want) == Some(250.0));
    assert_eq!(m.get("cgwatch_seccomp_violations_total", &want), Some(250.0), "{:?}", m.find("cgwatch_seccomp_violations_total", &[]));
    // Nothing else in a docker container is counted as acct.
    assert_eq!(m.sum("cgwatch_seccomp_violations_total", &[("syscall", "acct"), ("runtime", "docker")]), 250.0);
    let exit = with(&ctr_labels(&c), &[("reason", "success")]);
    assert_eq!(m.get("cgwatch_container_exits_total", &exit), Some(1.0));
}

/// Why Docker may not see an OOM kill here: containerd loads a container's cgroups from every
/// v1 hierarchy in /proc/self/cgroup, and fails ("cannot find cgroup mount destination", no OOM
/// watch, `OOMKilled` false) when one is mounted nowhere on the host: made by a systemd inside
/// another container (a `systemd` test's left behind, seen after a killed run).
fn unwatched_hierarchies() -> String {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let missing: Vec<String> = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .filter(|c| !c.is_empty())
        .filter(|c| !mounts.lines().any(|m| m.contains(" - cgroup ") && c.split(',').all(|s| m.contains(s))))
        .map(str::to_string)
        .collect();
    if missing.is_empty() {
        return String::new();
    }
    format!(": v1 cgroup hierarchies {missing:?} are mounted nowhere on this host, so Docker cannot watch OOM events (a container running systemd made them; remove it)")
}

#[test]
fn a_container_over_its_memory_limit_is_oom_killed_once() {
    let _use = shared();
    let agent = Agent::start(&[]);
    let c = Container::start(
        "oom",
        &["--memory", "32m", "--memory-swap", "32m"],
        &["/cgwatch-workload", "alloc", "--mb", "256"],
    );
    assert_eq!(c.wait(), 137, "killed by SIGKILL");
    assert_eq!(c.inspect("{{.State.OOMKilled}}"), "true", "docker saw the OOM kill{}", unwatched_hierarchies());
    let l = ctr_labels(&c);
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_container_exits_total", &l).is_some());
    let cgroup = c.cgroup();
    let oom = with(&l, &[("limit", "own"), ("limit_cgroup", &cgroup)]);
    assert_eq!(m.get("cgwatch_oom_kills_total", &oom), Some(1.0), "{:?}", m.find("cgwatch_oom_kills_total", &[]));
    assert_eq!(m.sum("cgwatch_oom_kills_total", &l), 1.0);
    assert_eq!(m.get("cgwatch_container_exits_total", &with(&l, &[("reason", "oom_kill")])), Some(1.0));
    assert_eq!(m.sum("cgwatch_container_exits_total", &l), 1.0, "{:?}", m.find("cgwatch_container_exits_total", &l));
}

#[test]
fn a_container_exiting_7_is_a_container_exit_with_reason_error() {
    let _use = shared();
    let agent = Agent::start(&[]);
    let c = Container::start("exit", &[], &["/cgwatch-workload", "exit", "7"]);
    assert_eq!(c.wait(), 7);
    let l = ctr_labels(&c);
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_container_exits_total", &l).is_some());
    assert_eq!(m.get("cgwatch_container_exits_total", &with(&l, &[("reason", "error"), ("signal", "")])), Some(1.0));
    assert_eq!(m.sum("cgwatch_container_exits_total", &l), 1.0, "{:?}", m.find("cgwatch_container_exits_total", &l));
}

#[test]
fn a_crash_loop_under_restart_on_failure_3_is_four_exits_of_one_container() {
    let _use = shared();
    let agent = Agent::start(&[]);
    let c = Container::start("crashloop", &["--restart", "on-failure:3"], &["/cgwatch-workload", "exit", "3"]);
    // Docker restarts it 3 times (after 100, 200 and 400 ms), then leaves it exited.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = c.inspect("{{.RestartCount}} {{.State.Status}} {{.State.ExitCode}}");
        if state == "3 exited 3" {
            break;
        }
        assert!(Instant::now() < deadline, "still {state:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let l = ctr_labels(&c);
    let m = agent.scrape_until(WAIT, |m| m.sum("cgwatch_container_exits_total", &l) >= 4.0);
    let exits = m.find("cgwatch_container_exits_total", &[("container_id", &c.id)]);
    assert_eq!(m.get("cgwatch_container_exits_total", &with(&l, &[("reason", "error")])), Some(4.0), "{exits:?}");
    assert_eq!(m.sum("cgwatch_container_exits_total", &[("container_id", &c.id)]), 4.0, "{exits:?}");
}

#[test]
fn docker_kill_is_a_container_exit_by_sigkill() {
    let _use = shared();
    let agent = Agent::start(&[]);
    let c = Container::start("kill", &[], &["sleep", "300"]);
    let l = ctr_labels(&c);
    // Killed once the agent knows it runs (its PID 1 was seen starting).
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_container_info", &l).is_some());
    assert!(m.get("cgwatch_container_info", &l).is_some(), "container not seen:\n{}", m.text);
    docker::docker(&["kill", &c.name]);
    assert_eq!(c.wait(), 137);
    assert_eq!(c.inspect("{{.State.OOMKilled}}"), "false");
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_container_exits_total", &l).is_some());
    assert_eq!(m.get("cgwatch_container_exits_total", &with(&l, &[("reason", "signal"), ("signal", "SIGKILL")])), Some(1.0));
    assert_eq!(m.sum("cgwatch_container_exits_total", &l), 1.0, "{:?}", m.find("cgwatch_container_exits_total", &l));
    assert_eq!(m.sum("cgwatch_oom_kills_total", &l), 0.0);
}

#[test]
fn live_docker_containers_are_what_docker_ps_lists() {
    // Alone on the daemon: no other test starts or removes containers meanwhile.
    let _alone = DAEMON_USE.write().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::start(&[]);
    let mut running: Vec<Container> = (0..3).map(|_| Container::start("ps", &[], &["sleep", "300"])).collect();
    let exited = Container::start("ps-exited", &[], &["true"]);
    assert_eq!(exited.wait(), 0);
    let count = |m: &cgwatch_tests::Metrics| m.get("cgwatch_containers", &[("runtime", "docker")]).unwrap_or(0.0);
    let ps = docker::running_containers();
    assert!(ps >= running.len(), "docker ps lists {ps}");
    let m = agent.scrape_until(WAIT, |m| count(m) == ps as f64);
    assert_eq!(count(&m), ps as f64, "docker ps lists {ps}: {:?}", m.find("cgwatch_container_info", &[("runtime", "docker")]));
    for c in &running {
        assert_eq!(m.get("cgwatch_container_info", &ctr_labels(c)), Some(1.0), "{}", c.name);
    }
    assert!(m.find("cgwatch_container_info", &[("container_id", &exited.id)]).is_empty(), "an exited container is not live");
    // One fewer when one is removed.
    let removed = running.remove(0);
    let removed_id = removed.id.clone();
    drop(removed);
    assert_eq!(docker::running_containers(), ps - 1);
    let m = agent.scrape_until(WAIT, |m| count(m) == (ps - 1) as f64);
    assert_eq!(count(&m), (ps - 1) as f64, "docker ps lists {}: {:?}", ps - 1, m.find("cgwatch_container_info", &[("runtime", "docker")]));
    assert!(m.find("cgwatch_container_info", &[("container_id", &removed_id)]).is_empty(), "a removed container is not live");
    for c in &running {
        assert_eq!(m.get("cgwatch_container_info", &ctr_labels(c)), Some(1.0), "{}", c.name);
    }
}

#[test]
fn container_info_names_the_image_the_container_runs() {
    let _use = shared();
    let agent = Agent::start(&[]);
    let c = Container::start("image", &[], &["sleep", "300"]);
    let image = c.inspect("{{.Config.Image}}");
    assert_eq!(image, docker::IMAGE);
    let want = with(&ctr_labels(&c), &[("image", &image), ("pod", ""), ("namespace", "")]);
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_container_info", &want).is_some());
    assert_eq!(m.get("cgwatch_container_info", &want), Some(1.0), "{:?}", m.find("cgwatch_container_info", &[("container_id", &c.id)]));
}

/// A dockerd with another `--data-root` (a daemon of this test's own, its data root a fresh
/// directory): with `--docker.data-root` set to it the agent names its containers; without it
/// their names and image stay empty, and the log says once where it looked and which flag to set.
#[test]
fn a_daemon_with_another_data_root_is_named_with_docker_data_root() {
    // Alone: a second daemon starting, and its container (a docker container to the agent, not
    // one `docker ps` lists), overlap no other test.
    let _alone = DAEMON_USE.write().unwrap_or_else(|e| e.into_inner());
    let own = docker::OwnDaemon::start();
    let c = own.run("dataroot", &["sleep", "300"]);
    let cgroup = c.cgroup();
    let labels = [("container_id", c.id.as_str()), ("container", c.name.as_str()), ("runtime", "docker")];
    let short = format!("docker container {}: ", &c.id[..12]);

    let agent = Agent::start(&["--docker.data-root", own.data_root.to_str().unwrap()]);
    let want = with(&labels, &[("image", docker::IMAGE), ("pod", ""), ("namespace", "")]);
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_container_info", &want).is_some());
    assert_eq!(m.get("cgwatch_container_info", &want), Some(1.0), "{:?}", m.find("cgwatch_container_info", &[("container_id", &c.id)]));
    let series = with(&labels, &[("cgroup", &cgroup)]);
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_cgroup_memory_usage_bytes", &series).is_some());
    assert!(m.get("cgwatch_cgroup_memory_usage_bytes", &series).is_some(), "{:?}", m.find("cgwatch_cgroup_memory_usage_bytes", &[("cgroup", &cgroup)]));
    assert!(!agent.log().contains(&short), "{}", agent.log());
    drop(agent);

    let agent = Agent::start(&[]);
    let looked_at = format!("/var/lib/docker/containers/{}/config.v2.json", c.id);
    let unnamed = [("container_id", c.id.as_str()), ("container", ""), ("image", ""), ("runtime", "docker")];
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_container_info", &unnamed).is_some() && agent.log().contains(&looked_at));
    assert_eq!(m.get("cgwatch_container_info", &unnamed), Some(1.0), "{:?}", m.find("cgwatch_container_info", &[("container_id", &c.id)]));
    assert!(m.find("cgwatch_cgroup_memory_usage_bytes", &[("cgroup", &cgroup), ("container", &c.name)]).is_empty());
    let log = agent.log();
    let said = log.lines().find(|l| l.contains(&looked_at)).unwrap_or_else(|| panic!("nothing about {looked_at}:\n{log}"));
    assert!(said.contains(" WARN ") && said.contains(&short), "{said}");
    assert!(said.contains("--docker.data-root") && said.contains("CGWATCH_DOCKER_DATA_ROOT"), "{said}");
    // Once for the run, not at every lookup (the resolver retries unnamed containers every
    // --scan-interval, 500 ms here).
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    assert_eq!(log.matches("--docker.data-root").count(), 1, "{log}");
    drop(agent);
    drop(own);
}
