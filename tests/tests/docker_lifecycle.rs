//! Container starts, exits, exec sessions, start failures and the start latency and lifetime
//! histograms with Docker Engine (docs/lifecycle.md): the lifecycle tests of lifecycle.rs on
//! dockerd + containerd-shim-runc-v2 + runc (cgroupfs, cgroup `/docker/<id>`), on the harness's
//! own daemon (`cgwatch_tests::docker`, shared with the other test binaries that use it).
//!
//! Docker starts a container with `runc create` (the cgroup is made, `runc:[2:INIT]` waits on
//! the exec fifo, reparented to the shim, a subreaper in the daemon's cgroup) and `runc start`
//! (the init execs the entrypoint: the start); `docker exec` is `runc exec`, whose init joins the
//! cgroup and execs the command in the container's mount namespace (an exec session).
//!
//! The tests run one at a time (`serial`): the histograms are by runtime only, so a container of
//! another test would land in them. `cargo xtask test` runs one test binary at a time, so no
//! other binary's docker container lands in them either.

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use cgwatch_tests::{
    Agent, Metrics,
    docker::{self, Container, docker},
};

const WAIT: Duration = Duration::from_secs(30);
const STARTS: &str = "cgwatch_container_starts_total";
const EXECS: &str = "cgwatch_container_exec_sessions_total";
const FAILURES: &str = "cgwatch_container_start_failures_total";
const EXITS: &str = "cgwatch_container_exits_total";
const DURATION: &str = "cgwatch_container_start_duration_seconds";
const LIFETIME: &str = "cgwatch_container_lifetime_seconds";
const DOCKER: [(&str, &str); 1] = [("runtime", "docker")];

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn ctr_labels(c: &Container) -> [(&'static str, &str); 3] {
    [("container_id", c.id.as_str()), ("container", c.name.as_str()), ("runtime", "docker")]
}

fn with<'a>(base: &[(&'a str, &'a str)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    [base, extra].concat()
}

/// N short containers exiting 1 to N: N starts and N error exits, each on its own container id,
/// and nothing else on them.
#[test]
fn short_containers_pair_one_start_with_one_exit_each() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let cs: Vec<Container> =
        (0..4).map(|i| Container::start("pair", &[], &["/cgwatch-workload", "exit", &format!("{}", i + 1)])).collect();
    for (i, c) in cs.iter().enumerate() {
        assert_eq!(c.wait(), i as i32 + 1);
    }
    let paired = |m: &Metrics| cs.iter().all(|c| m.get(STARTS, &ctr_labels(c)) == Some(1.0) && m.sum(EXITS, &ctr_labels(c)) == 1.0);
    let m = agent.scrape_until(WAIT, paired);
    for c in &cs {
        let l = ctr_labels(c);
        assert_eq!(m.get(STARTS, &l), Some(1.0), "{}: {:?}\n{}", c.name, m.find(STARTS, &[]), agent.log());
        assert_eq!(m.get(EXITS, &with(&l, &[("reason", "error")])), Some(1.0), "{}: {:?}", c.name, m.find(EXITS, &l));
        assert_eq!(m.sum(EXITS, &l), 1.0, "{}: {:?}", c.name, m.find(EXITS, &l));
        assert_eq!(m.sum(EXECS, &l), 0.0, "{}: {:?}", c.name, m.find(EXECS, &l));
        assert_eq!(m.sum(FAILURES, &l), 0.0, "{}: {:?}", c.name, m.find(FAILURES, &l));
    }
}

/// One container run three times (`docker run`, then `docker start` twice): three instances of
/// its cgroup, three starts and three exits on one container id.
#[test]
fn a_container_started_three_times_is_three_starts_and_three_exits() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let c = Container::start("again", &[], &["sh", "-c", "exec /cgwatch-workload exit 3"]);
    assert_eq!(c.wait(), 3);
    for _ in 0..2 {
        docker(&["start", &c.name]);
        assert_eq!(c.wait(), 3);
    }
    let l = ctr_labels(&c);
    let errors = with(&l, &[("reason", "error")]);
    let m = agent.scrape_until(WAIT, |m| m.get(STARTS, &l) == Some(3.0) && m.get(EXITS, &errors) == Some(3.0));
    assert_eq!(m.get(STARTS, &l), Some(3.0), "{:?}", m.find(STARTS, &l));
    assert_eq!(m.get(EXITS, &errors), Some(3.0), "{:?}", m.find(EXITS, &l));
    assert_eq!(m.sum(EXITS, &l), 3.0, "{:?}", m.find(EXITS, &l));
    assert_eq!(m.sum(EXECS, &l), 0.0, "{:?}", m.find(EXECS, &l));
    assert_eq!(m.sum(FAILURES, &l), 0.0, "{:?}", m.find(FAILURES, &l));
}

/// `--restart on-failure:3` of a container that exits 1: docker restarts it three times (a new
/// cgroup instance each time), four starts and four error exits on one container id, four
/// lifetime observations with reason error and four start latency observations.
#[test]
fn a_crash_loop_is_four_starts_and_four_exits_on_one_container() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let c = Container::start("loop", &["--restart", "on-failure:3"], &["sh", "-c", "sleep 0.3; exit 1"]);
    // Restarted after 100, 200 and 400 ms, then left exited.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = c.inspect("{{.RestartCount}} {{.State.Status}} {{.State.ExitCode}}");
        if state == "3 exited 1" {
            break;
        }
        assert!(Instant::now() < deadline, "still {state:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let l = ctr_labels(&c);
    let errors = with(&l, &[("reason", "error")]);
    let lifetimes = format!("{LIFETIME}_count");
    let error_lifetimes = [("runtime", "docker"), ("reason", "error")];
    let latencies = format!("{DURATION}_count");
    let done = |m: &Metrics| {
        m.get(STARTS, &l) == Some(4.0)
            && m.get(EXITS, &errors) == Some(4.0)
            && m.get(&lifetimes, &error_lifetimes) == Some(4.0)
            && m.get(&latencies, &DOCKER) == Some(4.0)
    };
    let m = agent.scrape_until(WAIT, done);
    assert_eq!(m.get(STARTS, &l), Some(4.0), "{:?}\n{}", m.find(STARTS, &[("container_id", &c.id)]), agent.log());
    assert_eq!(m.get(EXITS, &errors), Some(4.0), "{:?}", m.find(EXITS, &l));
    assert_eq!(m.sum(EXITS, &[("container_id", &c.id)]), 4.0, "{:?}", m.find(EXITS, &[("container_id", &c.id)]));
    assert_eq!(m.get(&lifetimes, &error_lifetimes), Some(4.0), "{:?}", m.find(&lifetimes, &[]));
    assert_eq!(m.sum(&lifetimes, &DOCKER), 4.0, "only error exits: {:?}", m.find(&lifetimes, &[]));
    assert_eq!(m.get(&latencies, &DOCKER), Some(4.0), "{:?}", m.find(&latencies, &[]));
    // Each lived its 0.3 s sleep, and less than the 2.5 s bucket's bound.
    let lived = m.get(&format!("{LIFETIME}_sum"), &error_lifetimes).unwrap();
    assert!((4.0 * 0.3..4.0 * 2.5).contains(&lived), "4 lifetimes of 0.3 s: {lived} s");
    let waited = m.get(&format!("{DURATION}_sum"), &DOCKER).unwrap();
    eprintln!("crash loop: 4 lifetimes, {lived:.3} s in all; 4 start latencies, {waited:.3} s in all");
    assert_eq!(m.sum(EXECS, &l), 0.0, "{:?}", m.find(EXECS, &l));
    assert_eq!(m.sum(FAILURES, &l), 0.0, "{:?}", m.find(FAILURES, &l));
}

/// `docker exec` three times into a running container (`runc exec`): three exec sessions, still
/// one start, and no container exit when they end.
#[test]
fn docker_exec_sessions_are_counted_and_are_not_starts() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let c = Container::start("exec", &[], &["sleep", "120"]);
    let l = ctr_labels(&c);
    let m = agent.scrape_until(WAIT, |m| m.get(STARTS, &l) == Some(1.0));
    assert_eq!(m.get(STARTS, &l), Some(1.0), "{:?}\n{}", m.find(STARTS, &[]), agent.log());
    assert_eq!(m.sum(EXECS, &l), 0.0);
    for _ in 0..3 {
        // A command that execs again: one session all the same.
        docker(&["exec", &c.name, "sh", "-c", "exec true"]);
    }
    let m = agent.scrape_until(WAIT, |m| m.get(EXECS, &l) == Some(3.0));
    assert_eq!(m.get(EXECS, &l), Some(3.0), "{:?}", m.find(EXECS, &l));
    assert_eq!(m.get(STARTS, &l), Some(1.0), "{:?}", m.find(STARTS, &l));
    assert_eq!(m.sum(EXITS, &l), 0.0, "an exec session's end is no container exit: {:?}", m.find(EXITS, &l));
}

/// A container without its own PID namespace (`--pid=host`): its entrypoint is no PID 1, and its
/// start and its exit (with its code) are counted all the same.
#[test]
fn a_pid_host_container_has_its_start_and_its_exit() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let c = Container::start("pidhost", &["--pid=host"], &["sh", "-c", "sleep 0.5; exec /cgwatch-workload exit 4"]);
    one_start_and_one_error_exit(&agent, &c, 4);
}

/// `--init`: docker's init (tini, bind-mounted as /sbin/docker-init) is the entrypoint and PID 1,
/// and forks the command: one start (tini's exec), one exit with the command's code (tini's),
/// the command's exec no exec session.
#[test]
fn an_init_container_is_one_start_and_one_exit() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let c = Container::start("init", &["--init"], &["sh", "-c", "sleep 0.3; exit 5"]);
    one_start_and_one_error_exit(&agent, &c, 5);
}

/// `c` exits with `code`: one start, one error exit and nothing else, no exec session.
fn one_start_and_one_error_exit(agent: &Agent, c: &Container, code: i32) {
    assert_eq!(c.wait(), code);
    let l = ctr_labels(c);
    let errors = with(&l, &[("reason", "error")]);
    let m = agent.scrape_until(WAIT, |m| m.get(STARTS, &l) == Some(1.0) && m.get(EXITS, &errors) == Some(1.0));
    assert_eq!(m.get(STARTS, &l), Some(1.0), "{:?}\n{}", m.find(STARTS, &[]), agent.log());
    assert_eq!(m.get(EXITS, &errors), Some(1.0), "{:?}", m.find(EXITS, &l));
    assert_eq!(m.sum(EXITS, &l), 1.0, "{:?}", m.find(EXITS, &l));
    assert_eq!(m.sum(EXECS, &l), 0.0, "{:?}", m.find(EXECS, &l));
}

/// Runs a container whose entrypoint does not exist: `runc create` fails (runc 1.1 looks the
/// entrypoint up in `runc:[2:INIT]` before waiting on the exec fifo, and that init exits 1),
/// `docker run` fails and leaves the container created; its cgroup `/docker/<id>` was made and
/// removed without an exec. Returns the container (removed on drop).
fn run_without_entrypoint() -> Container {
    let name = format!("cgwatch-dk-noentry-{}-0", std::process::id());
    let out = docker::command()
        .args(["run", "-d", "--network", "none", "--name", &name, docker::image(), "/no-such-entrypoint"])
        .output()
        .expect("docker run");
    let c = Container { id: docker(&["inspect", "--format", "{{.Id}}", &name]), name };
    assert!(!out.status.success(), "the container started: {}", String::from_utf8_lossy(&out.stdout));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no-such-entrypoint"), "docker run: {said}");
    let ps = docker(&["ps", "-a", "--filter", &format!("name={}", c.name), "--format", "{{.ID}} {{.Status}}"]);
    assert!(c.id.starts_with(ps.split_whitespace().next().unwrap_or("?")) && ps.ends_with("Created"), "docker ps -a: {ps:?}");
    c
}

/// A container whose entrypoint does not exist: a start failure and no start.
#[test]
fn an_entrypoint_that_does_not_exist_is_a_start_failure_and_no_start() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let c = run_without_entrypoint();
    let l = ctr_labels(&c);
    let m = agent.scrape_until(WAIT, |m| m.get(FAILURES, &l) == Some(1.0));
    assert_eq!(m.get(FAILURES, &l), Some(1.0), "{:?}\n{}", m.find(FAILURES, &[]), agent.log());
    assert_eq!(m.sum(FAILURES, &[("container_id", &c.id)]), 1.0, "{:?}", m.find(FAILURES, &[]));
    assert_eq!(m.sum(STARTS, &[("container_id", &c.id)]), 0.0, "{:?}", m.find(STARTS, &[("container_id", &c.id)]));
    assert_eq!(m.sum(EXECS, &[("container_id", &c.id)]), 0.0, "{:?}", m.find(EXECS, &[("container_id", &c.id)]));
    assert_eq!(m.get(&format!("{DURATION}_count"), &DOCKER), None, "no latency without a start");
}

/// A start failure has no starter, so no container exit (docs/lifecycle.md: "starts and exits
/// pair one to one"; the crash ratio divides error exits by starts).
///
/// Fails on the agent as it is: `runc:[2:INIT]`, PID 1 of the container's new PID namespace and
/// in its cgroup, exits 1 when the entrypoint lookup fails, before runc removes the cgroup, and
/// `container_exit` (sched_process_exit.rs) takes a PID namespace init's exit as the container's
/// when nothing *started* in its cgroup, meant for containers started before the probes; the
/// cgroup here was made while they ran. podman (runc) does the same.
#[test]
fn a_start_failure_is_no_container_exit() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let c = run_without_entrypoint();
    let l = ctr_labels(&c);
    let m = agent.scrape_until(WAIT, |m| m.get(FAILURES, &l) == Some(1.0));
    assert_eq!(m.get(FAILURES, &l), Some(1.0), "{:?}\n{}", m.find(FAILURES, &[]), agent.log());
    // The init's exit is counted (if ever) before the cgroup's removal, the failure after it.
    let exits = m.find(EXITS, &[("container_id", &c.id)]);
    assert!(exits.is_empty(), "a start failure counted as a container exit: {exits:?}");
    let lifetimes = m.find(&format!("{LIFETIME}_count"), &DOCKER);
    assert!(lifetimes.is_empty(), "{lifetimes:?}");
}

/// A container running before the agent started: no start counted (its cgroup's creation was not
/// seen), its exit counted as before (its PID 1's), and no lifetime.
#[test]
fn a_container_running_before_the_agent_has_no_start_but_its_exit() {
    let _serial = serial();
    let c = Container::start("before", &[], &["sleep", "120"]);
    // Running (`docker run -d` returns after `runc start`) before the agent loads its probes.
    std::thread::sleep(Duration::from_millis(500));
    let agent = Agent::start(&[]);
    let l = ctr_labels(&c);
    let known = agent.scrape_until(WAIT, |m| m.get("cgwatch_container_info", &l).is_some());
    assert!(known.get("cgwatch_container_info", &l).is_some(), "container not seen:\n{}", agent.log());
    // sleep as PID 1 ignores SIGTERM: killed by docker's SIGKILL.
    docker(&["stop", "-t", "0", &c.name]);
    assert_eq!(c.wait(), 137);
    let signal = with(&l, &[("reason", "signal"), ("signal", "SIGKILL")]);
    let m = agent.scrape_until(WAIT, |m| m.get(EXITS, &signal) == Some(1.0));
    assert_eq!(m.get(EXITS, &signal), Some(1.0), "{:?}", m.find(EXITS, &l));
    assert_eq!(m.sum(EXITS, &l), 1.0, "{:?}", m.find(EXITS, &l));
    assert_eq!(m.sum(STARTS, &l), 0.0, "{:?}", m.find(STARTS, &l));
    // A signal exit is observed a second after it, if ever: wait past that.
    std::thread::sleep(Duration::from_millis(1500));
    let m = agent.scrape();
    assert_eq!(m.get(&format!("{LIFETIME}_count"), &[("runtime", "docker"), ("reason", "signal")]), None, "no lifetime without a start");
    assert!(m.find(&format!("{LIFETIME}_count"), &DOCKER).is_empty(), "{:?}", m.find(&format!("{LIFETIME}_count"), &[]));
}

/// Every docker start is one observation of the latency histogram, each a real interval: from
/// the cgroup's mkdir (`runc create`) to the entrypoint's exec (after `runc start`), positive and
/// under the operations guide's 10 s bound.
#[test]
fn the_start_latency_histogram_observes_every_docker_start() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let cs: Vec<Container> = (0..3).map(|_| Container::start("latency", &[], &["true"])).collect();
    for c in &cs {
        assert_eq!(c.wait(), 0);
    }
    let count = format!("{DURATION}_count");
    let settled = |m: &Metrics| {
        cs.iter().all(|c| m.get(STARTS, &ctr_labels(c)) == Some(1.0)) && m.get(&count, &DOCKER) == Some(m.sum(STARTS, &DOCKER))
    };
    let m = agent.scrape_until(WAIT, settled);
    assert!(settled(&m), "starts {:?}\nhistogram {:?}", m.find(STARTS, &DOCKER), m.find(&count, &[]));
    let n = m.get(&count, &DOCKER).unwrap();
    assert_eq!(n, 3.0, "only this test's containers started: {:?}", m.find(STARTS, &DOCKER));
    let sum = m.get(&format!("{DURATION}_sum"), &DOCKER).unwrap();
    assert!(sum > 0.0 && sum / n < 10.0, "sum {sum} of {n} starts");
    eprintln!("start latency: {n} starts, {sum:.3} s in all, {:.3} s each", sum / n);
    let bucket = |le: &str| m.get(&format!("{DURATION}_bucket"), &[("runtime", "docker"), ("le", le)]);
    assert_eq!(bucket("+Inf"), Some(n));
    assert_eq!(bucket("10.0"), Some(n), "every local start takes less than 10 s: sum {sum}");
    // And the lifetimes of the three `true`s: three successes.
    let lifetimes = format!("{LIFETIME}_count");
    let m = agent.scrape_until(WAIT, |m| m.get(&lifetimes, &[("runtime", "docker"), ("reason", "success")]) == Some(3.0));
    assert_eq!(m.get(&lifetimes, &[("runtime", "docker"), ("reason", "success")]), Some(3.0), "{:?}", m.find(&lifetimes, &[]));
}
