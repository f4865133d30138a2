//! Container starts, exits, exec sessions, start failures and the start latency and lifetime
//! histograms, with real podman containers (runc, cgroupfs): docs/lifecycle.md; and their lines in
//! the event stream (docs/events.md).
//!
//! The tests run one at a time (`serial`): the histograms are by runtime only, so a container of
//! another test would land in them.

use std::{
    io::{BufRead, BufReader, Write},
    process::Stdio,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use cgwatch_tests::{
    Agent, Metrics, PinDir,
    events::{EventLog, of_type},
    podman::{self, Container},
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const STARTS: &str = "cgwatch_container_starts_total";
const EXECS: &str = "cgwatch_container_exec_sessions_total";
const FAILURES: &str = "cgwatch_container_start_failures_total";
const EXITS: &str = "cgwatch_container_exits_total";
const DURATION: &str = "cgwatch_container_start_duration_seconds";
const LIFETIME: &str = "cgwatch_container_lifetime_seconds";

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _serial = serial();
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

/// `podman exec` three times into a running container: three exec sessions, still one start.
#[test]
fn exec_sessions_are_counted_and_are_not_starts() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let c = Container::start("cgwatch-exec", &[], &["sleep", "120"]);
    let l = ctr_labels(&c);
    let m = agent.scrape_until(WAIT, |m| m.get(STARTS, &l) == Some(1.0));
    assert_eq!(m.get(STARTS, &l), Some(1.0), "{:?}", m.find(STARTS, &l));
    assert_eq!(m.sum(EXECS, &l), 0.0);
    for _ in 0..3 {
        // A command that execs again: one session all the same.
        podman_ok(&["exec", &c.name, "sh", "-c", "exec true"]);
    }
    let m = agent.scrape_until(WAIT, |m| m.get(EXECS, &l) == Some(3.0));
    assert_eq!(m.get(EXECS, &l), Some(3.0), "{:?}", m.find(EXECS, &l));
    assert_eq!(m.get(STARTS, &l), Some(1.0), "{:?}", m.find(STARTS, &l));
}

/// Every start counted under podman is one observation of the latency histogram, each a real
/// interval: positive and under the bound of a quick local start.
#[test]
fn the_start_latency_histogram_observes_every_start() {
    let _serial = serial();
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
    let _serial = serial();
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
    assert_eq!(m.sum(EXITS, &l), 0.0, "a start failure is no container exit: {:?}", m.find(EXITS, &l));
}

/// With pinned maps, a start while the agent is down is counted, and its latency observed from
/// the pinned ring, by the next agent; the starts before are kept.
#[test]
fn starts_while_the_agent_is_down_are_counted_after_its_restart() {
    let _serial = serial();
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

/// N short containers: N starts and N exits, each on its own container id.
#[test]
fn short_containers_pair_one_start_with_one_exit_each() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let cs: Vec<Container> = (0..4).map(|i| Container::start("cgwatch-pair", &[], &["/cgwatch-workload", "exit", &format!("{}", i + 1)])).collect();
    for (i, c) in cs.iter().enumerate() {
        assert_eq!(c.wait(), i as i32 + 1);
    }
    let paired = |m: &Metrics| cs.iter().all(|c| m.get(STARTS, &ctr_labels(c)) == Some(1.0) && m.sum(EXITS, &ctr_labels(c)) == 1.0);
    let m = agent.scrape_until(WAIT, paired);
    for c in &cs {
        let l = ctr_labels(c);
        assert_eq!(m.get(STARTS, &l), Some(1.0), "{}: {:?}", c.name, m.find(STARTS, &l));
        let errors = [l[0], l[1], l[2], ("reason", "error")];
        assert_eq!(m.get(EXITS, &errors), Some(1.0), "{}: {:?}", c.name, m.find(EXITS, &l));
    }
}

/// `--restart on-failure:3` of a container that exits 1: four starts and four error exits on one
/// container id (a crash ratio of 1), and four lifetime observations with reason error.
#[test]
fn a_crash_loop_is_four_starts_and_four_exits_on_one_container() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let c = Container::start("cgwatch-loop", &["--restart", "on-failure:3"], &["sh", "-c", "sleep 0.3; exit 1"]);
    let l = ctr_labels(&c);
    let errors = [l[0], l[1], l[2], ("reason", "error")];
    let lifetimes = format!("{LIFETIME}_count");
    let done = |m: &Metrics| {
        m.get(STARTS, &l) == Some(4.0) && m.get(EXITS, &errors) == Some(4.0)
            && m.get(&lifetimes, &[("runtime", "podman"), ("reason", "error")]) == Some(4.0)
    };
    let m = agent.scrape_until(Duration::from_secs(90), done);
    assert_eq!(m.get(STARTS, &l), Some(4.0), "{:?}", m.find(STARTS, &l));
    assert_eq!(m.get(EXITS, &errors), Some(4.0), "{:?}", m.find(EXITS, &l));
    assert_eq!(m.sum(EXITS, &l), 4.0, "{:?}", m.find(EXITS, &l));
    assert_eq!(m.get(&lifetimes, &[("runtime", "podman"), ("reason", "error")]), Some(4.0), "{:?}", m.find(&lifetimes, &[]));
    assert_eq!(m.sum(FAILURES, &l), 0.0);
}

/// A container without its own PID namespace (`--pid=host`): its entrypoint is no PID 1, and its
/// start and exit (with its code) are counted all the same.
#[test]
fn a_pid_host_container_has_its_start_and_its_exit() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let c = Container::start("cgwatch-pidhost", &["--pid=host"], &["sh", "-c", "sleep 0.5; exec /cgwatch-workload exit 4"]);
    assert_eq!(c.wait(), 4);
    let l = ctr_labels(&c);
    let errors = [l[0], l[1], l[2], ("reason", "error")];
    let m = agent.scrape_until(WAIT, |m| m.get(STARTS, &l) == Some(1.0) && m.get(EXITS, &errors) == Some(1.0));
    assert_eq!(m.get(STARTS, &l), Some(1.0), "{:?}", m.find(STARTS, &l));
    assert_eq!(m.get(EXITS, &errors), Some(1.0), "{:?}", m.find(EXITS, &l));
    assert_eq!(m.sum(EXITS, &l), 1.0, "{:?}", m.find(EXITS, &l));
}

/// A container running before the agent started: no start counted (its cgroup's creation was not
/// seen), its exit counted as before (its PID 1).
#[test]
fn a_container_running_before_the_agent_has_no_start_but_its_exit() {
    let _serial = serial();
    let c = Container::start("cgwatch-before", &[], &["sleep", "120"]);
    // Running (the runtime's exec is done) before the agent loads its probes.
    std::thread::sleep(Duration::from_millis(500));
    let agent = Agent::start(&[]);
    let l = ctr_labels(&c);
    let known = agent.scrape_until(WAIT, |m| m.get("cgwatch_container_info", &[("container_id", c.id.as_str())]).is_some());
    assert!(known.get("cgwatch_container_info", &[("container_id", c.id.as_str())]).is_some(), "container not seen");
    podman_ok(&["stop", "-t", "0", &c.name]);
    let m = agent.scrape_until(WAIT, |m| m.sum(EXITS, &l) == 1.0);
    assert_eq!(m.sum(EXITS, &l), 1.0, "{:?}", m.find(EXITS, &l));
    assert_eq!(m.sum(STARTS, &l), 0.0, "{:?}", m.find(STARTS, &l));
    assert_eq!(m.get(&format!("{LIFETIME}_count"), &[("runtime", "podman")]), None, "no lifetime without a start");
}

/// The start latency is a real interval: a runtime wrapper that holds `runc start` for 1.5 s (the
/// cgroup exists, the entrypoint has not run) gives an observation of 1.5 to 3 s; a quick start
/// before it lands under 2.5 s.
#[test]
fn a_start_held_for_one_and_a_half_seconds_is_observed_as_such() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("slow-runc");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = start ] && sleep 1.5 && break; done\nexec runc \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let agent = Agent::start(&[]);
    let podman = [("runtime", "podman")];
    let count = format!("{DURATION}_count");
    let sum = format!("{DURATION}_sum");
    let bucket = |m: &Metrics, le: &str| m.get(&format!("{DURATION}_bucket"), &[("runtime", "podman"), ("le", le)]).unwrap_or(0.0);

    let quick = Container::start("cgwatch-quick", &[], &["true"]);
    assert_eq!(quick.wait(), 0);
    let m = agent.scrape_until(WAIT, |m| m.get(&count, &podman) == Some(1.0));
    assert_eq!(m.get(&count, &podman), Some(1.0), "{:?}", m.find(&count, &[]));
    assert_eq!(bucket(&m, "2.5"), 1.0, "a quick start over 2.5 s: {:?}", m.get(&sum, &podman));
    let before = m.get(&sum, &podman).unwrap();

    let name = format!("cgwatch-slow-{}", std::process::id());
    let out = std::process::Command::new("podman")
        .arg("--runtime")
        .arg(&wrapper)
        .args(["--cgroup-manager", "cgroupfs", "run", "-d", "--network", "none"])
        .args(podman::ULIMITS)
        .args(["--name", &name])
        .arg(podman::image())
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .expect("podman run");
    let slow = Container { name, id: String::from_utf8_lossy(&out.stdout).trim().to_string() };
    assert!(out.status.success(), "podman run (slow runtime): {}", String::from_utf8_lossy(&out.stderr));
    let m = agent.scrape_until(WAIT, |m| m.get(&count, &podman) == Some(2.0));
    assert_eq!(m.get(&count, &podman), Some(2.0), "{:?}", m.find(&count, &[]));
    let observed = m.get(&sum, &podman).unwrap() - before;
    assert!((1.5..3.0).contains(&observed), "held 1.5 s, observed {observed} s");
    assert_eq!(bucket(&m, "1.0"), 1.0, "only the quick start is under 1 s");
    assert_eq!(m.get(STARTS, &ctr_labels(&slow)), Some(1.0));
}

/// A container that lives 3 s: one lifetime observation of 3 to 4.5 s, with its exit's reason.
#[test]
fn a_container_living_three_seconds_has_a_lifetime_of_three_seconds() {
    let _serial = serial();
    let agent = Agent::start(&[]);
    let c = Container::start("cgwatch-lifetime", &[], &["sleep", "3"]);
    assert_eq!(c.wait(), 0);
    let success = [("runtime", "podman"), ("reason", "success")];
    let count = format!("{LIFETIME}_count");
    let m = agent.scrape_until(WAIT, |m| m.get(&count, &success) == Some(1.0));
    assert_eq!(m.get(&count, &success), Some(1.0), "{:?}", m.find(&count, &[]));
    let lived = m.get(&format!("{LIFETIME}_sum"), &success).unwrap();
    assert!((3.0..4.5).contains(&lived), "lived 3 s, observed {lived} s");
    let le = |b: &str| m.get(&format!("{LIFETIME}_bucket"), &[("runtime", "podman"), ("reason", "success"), ("le", b)]);
    assert_eq!(le("2.5"), Some(0.0));
    assert_eq!(le("5.0"), Some(1.0));
}

/// The host pid of the process of `cgroup` that is `ns_pid` in its own PID namespace (the last
/// field of `NSpid`).
fn host_pid(cgroup: &str, ns_pid: u32) -> Option<u32> {
    let v2 = format!("0::{cgroup}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|d| {
        let pid: u32 = d.file_name().to_str()?.parse().ok()?;
        // (On a hybrid host the v1 hierarchies are listed too.)
        if !std::fs::read_to_string(d.path().join("cgroup")).ok()?.lines().any(|l| l == v2) {
            return None;
        }
        let status = std::fs::read_to_string(d.path().join("status")).ok()?;
        let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
        (nspid.split_whitespace().last()? == ns_pid.to_string()).then_some(pid)
    })
}

/// With `--events`, a container's start is one `container_start` line (its entrypoint's process,
/// the start latency) and each `podman exec` one `exec_session` line (the process that entered,
/// the file it exec'd, cut at 255 bytes and marked); every line of the stream follows the schema
/// (`EventLog` checks each).
#[test]
fn a_start_and_each_exec_session_are_one_event_each() {
    let log = EventLog::default();
    let _serial = serial();
    let agent = Agent::start(&log.flag());
    let c = Container::start("cgwatch-evstart", &[], &["sleep", "120"]);
    let cgroup = c.cgroup();
    let entrypoint: u32 = podman_ok(&["inspect", "--format", "{{.State.Pid}}", &c.name]).trim().parse().unwrap();
    let events = log.wait_for(&cgroup, WAIT, |e| !of_type(e, "container_start").is_empty());
    let starts = of_type(&events, "container_start");
    assert_eq!(starts.len(), 1, "{events:?}\n{}", agent.log());
    let s = starts[0];
    assert_eq!((&s["container_id"], &s["container"], &s["runtime"]), (&json!(c.id), &json!(c.name), &json!("podman")), "{s}");
    assert_eq!((&s["pid"], &s["tid"], &s["comm"]), (&json!(entrypoint), &json!(entrypoint), &json!("sleep")), "{s}");
    assert!(s["parent_comm"].is_string(), "{s}");
    let latency = s["start_latency_seconds"].as_f64().expect("start latency");
    assert!(latency > 0.0 && latency < 10.0, "{s}");
    eprintln!("{s}");

    // An exec session whose command execs again: one line, with the path podman's runc exec'd.
    podman_ok(&["exec", &c.name, "sh", "-c", "exec true"]);
    let events = log.wait_for(&cgroup, WAIT, |e| !of_type(e, "exec_session").is_empty());
    let sessions = of_type(&events, "exec_session");
    assert_eq!(sessions.len(), 1, "{events:?}");
    let e = sessions[0];
    assert_eq!((&e["container_id"], &e["container"]), (&json!(c.id), &json!(c.name)), "{e}");
    assert_eq!((&e["path"], &e["path_truncated"], &e["comm"]), (&json!("/bin/sh"), &json!(false), &json!("sh")), "{e}");
    assert!(e["parent_comm"].is_string() && e["pid"] != s["pid"], "{e}");
    eprintln!("{e}");

    // Another one, held until its host pid is known: the line names that process.
    let mut session = podman::command()
        .args(["exec", "-i", &c.name, "sh", "-c", "echo $$; read x; exec true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("podman exec");
    let mut ns_pid = String::new();
    BufReader::new(session.stdout.take().unwrap()).read_line(&mut ns_pid).unwrap();
    let ns_pid: u32 = ns_pid.trim().parse().unwrap_or_else(|_| panic!("the session's pid: {ns_pid:?}"));
    let pid = host_pid(&cgroup, ns_pid).unwrap_or_else(|| panic!("no process {ns_pid} of {cgroup}"));
    session.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(session.wait().unwrap().success());
    let events = log.wait_for(&cgroup, WAIT, |e| of_type(e, "exec_session").len() >= 2);
    let sessions = of_type(&events, "exec_session");
    assert_eq!(sessions.len(), 2, "{events:?}");
    let e = sessions[1];
    assert_eq!((&e["pid"], &e["tid"], &e["path"], &e["container_id"]), (&json!(pid), &json!(pid), &json!("/bin/sh"), &json!(c.id)), "{e}");
    assert_eq!(e["suppressed"], 0, "{e}");

    // A path longer than an event holds: its first 255 bytes, marked as cut (a third session
    // makes it: a shell under a long directory).
    let dir = format!("/tmp/{}/{}/{}", "a".repeat(100), "b".repeat(100), "c".repeat(100));
    let long = format!("{dir}/sh");
    podman_ok(&["exec", &c.name, "sh", "-c", &format!("mkdir -p {dir} && ln -s /bin/busybox {long}")]);
    podman_ok(&["exec", &c.name, &long, "-c", "exec true"]);
    let events = log.wait_for(&cgroup, WAIT, |e| of_type(e, "exec_session").len() >= 4);
    let sessions = of_type(&events, "exec_session");
    assert_eq!(sessions.len(), 4, "{events:?}");
    assert_eq!((&sessions[3]["path"], &sessions[3]["path_truncated"]), (&json!(long[..255]), &json!(true)), "{}", sessions[3]);

    assert_eq!(of_type(&events, "container_start").len(), 1, "an exec session is no start: {events:?}");
    let m = agent.scrape();
    let l = ctr_labels(&c);
    assert_eq!((m.get(STARTS, &l), m.get(EXECS, &l)), (Some(1.0), Some(4.0)), "the counters say the same");
    assert_eq!(m.get("cgwatch_events_lost_total", &[("reason", "event_ring")]), Some(0.0));
}
