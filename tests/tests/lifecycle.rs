//! Container starts, exec sessions, start failures and the start latency histogram, with real
//! podman containers (runc, cgroupfs): docs/lifecycle.md.

use std::{process::Stdio, time::Duration};

use cgwatch_tests::{
    Agent, Metrics, PinDir,
    podman::{self, Container},
};

const WAIT: Duration = Duration::from_secs(30);
const STARTS: &str = "cgwatch_container_starts_total";
const EXECS: &str = "cgwatch_container_exec_sessions_total";
const FAILURES: &str = "cgwatch_container_start_failures_total";
const EXITS: &str = "cgwatch_container_exits_total";
const DURATION: &str = "cgwatch_container_start_duration_seconds";

fn ctr_labels(c: &Container) -> [(&'static str, &str); 3] {
    [("container_id", c.id.as_str()), ("container", c.name.as_str()), ("runtime", "podman")]
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman::command().args(args).stdin(Stdio::null()).output().expect("podman");
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One container run three times (`podman run`, then `podman start` twice): three instances of
/// its cgroup, three starts, as many as its exits; the entrypoint's own second exec is no new
/// start.
#[test]
fn a_container_run_three_times_is_three_starts_and_three_exits() {
    let agent = Agent::start(&[]);
    let c = Container::start("cgwatch-starts", &[], &["sh", "-c", "exec /cgwatch-workload exit 3"]);
    assert_eq!(c.wait(), 3);
    for _ in 0..2 {
        podman_ok(&["start", &c.name]);
        assert_eq!(c.wait(), 3);
    }
    let l = ctr_labels(&c);
    let done = |m: &Metrics| m.sum(EXITS, &l) == 3.0 && m.get(STARTS, &l) == Some(3.0);
    let m = agent.scrape_until(WAIT, done);
    assert_eq!(m.sum(EXITS, &l), 3.0, "{:?}", m.find(EXITS, &l));
    assert_eq!(m.get(STARTS, &l), Some(3.0), "{:?}", m.find(STARTS, &l));
    assert_eq!(m.sum(EXECS, &l), 0.0, "{:?}", m.find(EXECS, &l));
    assert_eq!(m.sum(FAILURES, &l), 0.0, "{:?}", m.find(FAILURES, &l));
}

/// `podman exec` twice into a running container: two exec sessions, still one start.
#[test]
fn exec_sessions_are_counted_and_are_not_starts() {
    let agent = Agent::start(&[]);
    let c = Container::start("cgwatch-exec", &[], &["sleep", "120"]);
    let l = ctr_labels(&c);
    let m = agent.scrape_until(WAIT, |m| m.get(STARTS, &l) == Some(1.0));
    assert_eq!(m.get(STARTS, &l), Some(1.0), "{:?}", m.find(STARTS, &l));
    assert_eq!(m.sum(EXECS, &l), 0.0);
    for _ in 0..2 {
        // A command that execs again: one session all the same.
        podman_ok(&["exec", &c.name, "sh", "-c", "exec true"]);
    }
    let m = agent.scrape_until(WAIT, |m| m.get(EXECS, &l) == Some(2.0));
    assert_eq!(m.get(EXECS, &l), Some(2.0), "{:?}", m.find(EXECS, &l));
    assert_eq!(m.get(STARTS, &l), Some(1.0), "{:?}", m.find(STARTS, &l));
}

/// Every start counted under podman is one observation of the latency histogram, each a real
/// interval: positive and under the bound of a quick local start.
#[test]
fn the_start_latency_histogram_observes_every_start() {
    let agent = Agent::start(&[]);
    let cs: Vec<Container> = (0..3).map(|_| Container::start("cgwatch-latency", &[], &["true"])).collect();
    for c in &cs {
        assert_eq!(c.wait(), 0);
    }
    let podman = [("runtime", "podman")];
    let settled = |m: &Metrics| {
        cs.iter().all(|c| m.get(STARTS, &ctr_labels(c)) == Some(1.0))
            && m.get(&format!("{DURATION}_count"), &podman) == Some(m.sum(STARTS, &podman))
    };
    let m = agent.scrape_until(WAIT, settled);
    assert!(settled(&m), "starts {:?}\nhistogram {:?}", m.find(STARTS, &podman), m.find(&format!("{DURATION}_count"), &[]));
    let count = m.get(&format!("{DURATION}_count"), &podman).unwrap();
    let sum = m.get(&format!("{DURATION}_sum"), &podman).unwrap();
    assert!(count >= 3.0, "{count}");
    assert!(sum > 0.0 && sum / count < 10.0, "sum {sum} of {count} starts");
    let inf = m.get(&format!("{DURATION}_bucket"), &[("runtime", "podman"), ("le", "+Inf")]);
    assert_eq!(inf, Some(count));
    let le60 = m.get(&format!("{DURATION}_bucket"), &[("runtime", "podman"), ("le", "60.0")]);
    assert_eq!(le60, Some(count), "every local start takes less than a minute");
}

/// A container whose entrypoint does not exist: its cgroup is made and removed without an exec,
/// a start failure and no start.
#[test]
fn an_entrypoint_that_does_not_exist_is_a_start_failure_and_no_start() {
    let agent = Agent::start(&[]);
    let name = format!("cgwatch-noentry-{}", std::process::id());
    let out = podman::command()
        .args(["run", "-d", "--network", "none"])
        .args(podman::ULIMITS)
        .args(["--name", &name])
        .arg(podman::image())
        .arg("/no-such-entrypoint")
        .stdin(Stdio::null())
        .output()
        .expect("podman run");
    assert!(!out.status.success(), "the container started: {}", String::from_utf8_lossy(&out.stdout));
    let id = podman_ok(&["inspect", "--format", "{{.Id}}", &name]).trim().to_string();
    let c = Container { name, id };
    let l = ctr_labels(&c);
    let m = agent.scrape_until(WAIT, |m| m.get(FAILURES, &l) == Some(1.0));
    assert_eq!(m.get(FAILURES, &l), Some(1.0), "{:?}\n{}", m.find(FAILURES, &[]), agent.log());
    assert_eq!(m.sum(STARTS, &l), 0.0, "{:?}", m.find(STARTS, &l));
}

/// With pinned maps, a start while the agent is down is counted, and its latency observed from
/// the pinned ring, by the next agent; the starts before are kept.
#[test]
fn starts_while_the_agent_is_down_are_counted_after_its_restart() {
    let pins = PinDir::new("lifecycle");
    let pin = pins.arg();
    let agent = Agent::start(&["--pin-path", &pin]);
    // Running across the restart: the new agent learns the first instance's path from its rmdir
    // record in the pinned ring.
    let c = Container::start("cgwatch-restart", &[], &["sleep", "120"]);
    let l = ctr_labels(&c);
    let m = agent.scrape_until(WAIT, |m| m.get(STARTS, &l) == Some(1.0));
    assert_eq!(m.get(STARTS, &l), Some(1.0), "{:?}", m.find(STARTS, &l));
    agent.stop(libc::SIGTERM);
    podman_ok(&["stop", "-t", "0", &c.name]);
    podman_ok(&["start", &c.name]);
    let agent = Agent::start(&["--pin-path", &pin]);
    let podman = [("runtime", "podman")];
    let count = format!("{DURATION}_count");
    let m = agent.scrape_until(WAIT, |m| m.get(STARTS, &l) == Some(2.0) && m.get(&count, &podman).is_some_and(|n| n >= 1.0));
    assert_eq!(m.get(STARTS, &l), Some(2.0), "{:?}\n{}", m.find(STARTS, &l), agent.log());
    assert!(m.get(&count, &podman).is_some_and(|n| n >= 1.0), "the start while down was not observed: {:?}", m.find(&count, &[]));
}
