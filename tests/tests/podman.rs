//! Real containers: podman + runc with podman's default seccomp profile and memory limits, an
//! image of busybox-static and the test workload, and the agent reading podman's own state for
//! the names.

use std::time::Duration;

use cgwatch_tests::{
    Agent, Metrics, TestCgroup,
    events::{EventLog, of_type},
    podman::Container,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

fn ctr_labels(c: &Container) -> [(&'static str, &str); 3] {
    [("container_id", c.id.as_str()), ("container", c.name.as_str()), ("runtime", "podman")]
}

fn with<'a>(base: &[(&'a str, &'a str)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    [base, extra].concat()
}

#[test]
fn a_syscall_denied_by_the_default_profile_is_counted_under_the_container() {
    let agent = Agent::start(&[]);
    // acct() is denied with EPERM by the default profile.
    let c = Container::start("cgwatch-seccomp", &[], &["/cgwatch-workload", "acct", "--count", "250"]);
    assert_eq!(c.wait(), 0, "{}", c.logs());
    assert_eq!(c.logs().trim(), "250", "every call failed with EPERM");
    let cgroup = c.cgroup();
    let want = with(&ctr_labels(&c), &[("syscall", "acct"), ("action", "errno"), ("cgroup", &cgroup)]);
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_seccomp_violations_total", &want) == Some(250.0));
    assert_eq!(m.get("cgwatch_seccomp_violations_total", &want), Some(250.0));
    // The runtime's own denied calls while starting the container may be counted too, but
    // nothing else is counted as acct.
    assert_eq!(m.sum("cgwatch_seccomp_violations_total", &[("syscall", "acct")]), 250.0);
    let exit = with(&ctr_labels(&c), &[("reason", "success")]);
    assert_eq!(m.get("cgwatch_container_exits_total", &exit), Some(1.0));
}

#[test]
fn a_container_over_its_memory_limit_is_one_oom_kill_and_an_oom_kill_exit() {
    let agent = Agent::start(&[]);
    let c = Container::start(
        "cgwatch-oom",
        &["--memory", "64m", "--memory-swap", "64m"],
        &["/cgwatch-workload", "alloc", "--mb", "512"],
    );
    assert_eq!(c.wait(), 137, "killed by SIGKILL");
    let l = ctr_labels(&c);
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_container_exits_total", &l).is_some());
    let cgroup = c.cgroup();
    assert_eq!(m.get("cgwatch_oom_kills_total", &with(&l, &[("limit", "own"), ("limit_cgroup", &cgroup)])), Some(1.0));
    assert_eq!(m.get("cgwatch_container_exits_total", &with(&l, &[("reason", "oom_kill")])), Some(1.0));
    assert_eq!(m.sum("cgwatch_container_exits_total", &l), 1.0, "{:?}", m.find("cgwatch_container_exits_total", &l));
    assert!(m.get("cgwatch_process_exits_total", &with(&l, &[("signal", "SIGKILL")])).is_none(), "an OOM kill is not a plain SIGKILL");
}

#[test]
fn an_oom_kill_of_a_non_init_process_counts_under_the_container() {
    let agent = Agent::start(&[]);
    // PID 1 is the shell; its child goes over the limit and is killed; the shell lives on.
    let c = Container::start(
        "cgwatch-oom-child",
        &["--memory", "64m", "--memory-swap", "64m"],
        &["sh", "-c", "/cgwatch-workload alloc --mb 512; echo child=$?; exit 3"],
    );
    assert_eq!(c.wait(), 3);
    assert!(c.logs().contains("child=137"), "{}", c.logs());
    let l = ctr_labels(&c);
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_container_exits_total", &l).is_some());
    assert_eq!(m.sum("cgwatch_oom_kills_total", &l), 1.0);
    assert_eq!(m.get("cgwatch_process_exits_total", &with(&l, &[("reason", "oom_kill")])), Some(1.0));
    // The container itself exited 3, not by the OOM killer.
    assert_eq!(m.get("cgwatch_container_exits_total", &with(&l, &[("reason", "error")])), Some(1.0));
    assert_eq!(m.sum("cgwatch_container_exits_total", &l), 1.0);
}

#[test]
fn a_container_exiting_42_is_a_container_exit_with_reason_error() {
    let agent = Agent::start(&[]);
    let c = Container::start("cgwatch-exit", &[], &["/cgwatch-workload", "exit", "42"]);
    assert_eq!(c.wait(), 42);
    let l = ctr_labels(&c);
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_container_exits_total", &l).is_some());
    assert_eq!(m.get("cgwatch_container_exits_total", &with(&l, &[("reason", "error")])), Some(1.0));
    assert_eq!(m.sum("cgwatch_container_exits_total", &l), 1.0);
}

#[test]
fn a_crashing_container_is_one_exit_event_with_its_identity_and_lifetime() {
    let log = EventLog::default();
    let _agent = Agent::start(&log.flag());
    let c = Container::start("cgwatch-crash", &[], &["/cgwatch-workload", "exit", "42"]);
    assert_eq!(c.wait(), 42);
    let cgroup = c.cgroup();
    let events = log.wait_for(&cgroup, WAIT, |e| !of_type(e, "exit").is_empty());
    let exits = of_type(&events, "exit");
    assert_eq!(exits.len(), 1, "{events:?}");
    let e = exits[0];
    assert_eq!(
        (&e["scope"], &e["reason"], &e["exit_code"], &e["signal"]),
        (&json!("container"), &json!("error"), &json!(42), &Value::Null),
        "{e}"
    );
    assert_eq!(
        (&e["container_id"], &e["container"], &e["runtime"], &e["image"]),
        (&json!(c.id), &json!(c.name), &json!("podman"), &json!(cgwatch_tests::podman::IMAGE)),
        "{e}"
    );
    assert_eq!(e["comm"], "cgwatch-workloa", "{e}");
    assert!(e["lifetime_seconds"].as_f64().unwrap() > 0.0, "{e}");
}

#[test]
fn container_cpu_and_memory_agree_with_its_cgroup_files() {
    let agent = Agent::start(&[]);
    let c = Container::start(
        "cgwatch-res",
        &["--memory", "256m"],
        &["sh", "-c", "/cgwatch-workload spin --secs 1 --hold 120 & exec /cgwatch-workload alloc --mb 64 --hold 120"],
    );
    // Both workloads print "ready" once done; from then on the container is idle.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while c.logs().matches("ready").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "workload not ready: {}", c.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let layout = cgwatch_tests::layout();
    let files = cgwatch::cgroups::Layout::resources(&layout, &c.cgroup());
    let (cpu, mem) = (files.cpu_seconds.unwrap(), files.memory_bytes.unwrap() as f64);
    assert!(cpu >= 0.95 && mem >= (64 << 20) as f64, "cpu {cpu} mem {mem}");
    let l = ctr_labels(&c);
    let close = |got: Option<f64>, want: f64| got.is_some_and(|g| (g - want).abs() <= 0.1 * want);
    let m = agent.scrape_until(WAIT, |m| {
        close(m.get("cgwatch_cgroup_cpu_usage_seconds_total", &l), cpu)
            && close(m.get("cgwatch_cgroup_memory_usage_bytes", &l), mem)
    });
    assert!(close(m.get("cgwatch_cgroup_cpu_usage_seconds_total", &l), cpu), "cpu: files say {cpu}");
    assert!(close(m.get("cgwatch_cgroup_memory_usage_bytes", &l), mem), "memory: files say {mem}");
    assert_eq!(m.get("cgwatch_cgroup_memory_limit_bytes", &l), Some((256 << 20) as f64));
    let ws = m.get("cgwatch_cgroup_memory_working_set_bytes", &l).unwrap();
    // The agent sampled it a moment apart from the file read above: allow 2 % of growth.
    assert!(ws >= (60 << 20) as f64 && ws <= mem * 1.02, "working set {ws} of usage {mem}");
}

/// Done means: with two podman containers and a systemd-style service on the host, /metrics
/// names every series by container.
#[test]
fn two_containers_and_a_service_every_series_is_named() {
    let agent = Agent::start(&["--cgroups", "containers-and-services"]);
    let a = Container::start("cgwatch-a", &[], &["/cgwatch-workload", "alloc", "--mb", "4", "--hold", "120"]);
    let b = Container::start("cgwatch-b", &[], &["sh", "-c", "/cgwatch-workload acct --count 7; exec sleep 120"]);
    let unit = format!("cgwatch-test-{}.service", std::process::id());
    let slice = TestCgroup::at("/cgwatch-test.slice".into());
    let svc = slice.child(&unit);
    let mut svc_proc = svc.start_ready(&["alloc", "--mb", "4", "--hold", "120"]);
    assert_eq!(svc.run(&["exit", "1"]).code(), Some(1));

    let ready = |m: &Metrics| {
        [&a, &b].iter().all(|c| m.get("cgwatch_container_info", &ctr_labels(c)).is_some())
            && m.get("cgwatch_seccomp_violations_total", &ctr_labels(&b)) == Some(7.0)
            && m.get("cgwatch_cgroup_memory_usage_bytes", &[("container", &unit)]).is_some()
            && m.get("cgwatch_cgroup_memory_usage_bytes", &ctr_labels(&a)).is_some()
    };
    let m = agent.scrape_until(WAIT, ready);
    assert!(ready(&m), "containers or service not named:\n{}", m.text);
    assert!(m.get("cgwatch_containers", &[("runtime", "podman")]).unwrap() >= 2.0);
    assert_eq!(m.get("cgwatch_process_exits_total", &[("container", &unit), ("runtime", "systemd"), ("reason", "error")]), Some(1.0));
    // Every per-cgroup series names its container or service, or is an explicit fold.
    let mut checked = 0;
    for s in m.samples.iter().filter(|s| s.labels.contains_key("cgroup")) {
        let cg = s.labels["cgroup"].as_str();
        if cg.starts_with('(') {
            continue;
        }
        assert!(s.labels.contains_key("container") && s.labels.contains_key("runtime"), "unnamed series: {s:?}");
        assert!(!s.labels.contains_key("pod"), "not a pod: {s:?}");
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} series");
    svc_proc.kill().unwrap();
    svc_proc.wait().unwrap();
}

/// Complain mode with a real runtime: an OCI profile as Docker and podman take it, with
/// `"defaultAction": "SCMP_ACT_LOG"` and acct denied, installed by runc (libseccomp). Only acct
/// counts as a denial, exactly; everything else the container does is a `log` verdict where the
/// gauge says LOG is observable (the VM kernels; not this host), and nothing at all where not.
#[test]
fn a_complain_mode_profile_installed_by_runc_denies_only_what_it_denies() {
    let agent = Agent::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("complain.json");
    let json = json!({
        "defaultAction": "SCMP_ACT_LOG",
        "syscalls": [{ "names": ["acct"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }],
    });
    std::fs::write(&profile, json.to_string()).unwrap();
    let opt = format!("seccomp={}", profile.display());
    let c = Container::start("cgwatch-complain", &["--security-opt", &opt], &["/cgwatch-workload", "acct", "--count", "9"]);
    assert_eq!(c.wait(), 0, "{}", c.logs());
    assert_eq!(c.logs().trim(), "9", "every call failed with EPERM");
    let cgroup = c.cgroup();
    let mine = with(&ctr_labels(&c), &[("cgroup", &cgroup)]);
    let denied = with(&mine, &[("syscall", "acct"), ("action", "errno")]);
    let m = agent.scrape_until(WAIT, |m| m.get("cgwatch_seccomp_violations_total", &denied) == Some(9.0));
    assert_eq!(m.get("cgwatch_seccomp_violations_total", &denied), Some(9.0));
    let others: Vec<_> = m
        .find("cgwatch_seccomp_violations_total", &mine)
        .into_iter()
        .filter(|s| s.labels["syscall"] != "acct")
        .map(|s| (s.labels["syscall"].clone(), s.labels["action"].clone(), s.value))
        .collect();
    assert!(others.iter().all(|o| o.1 == "log"), "{others:?}");
    if m.get("cgwatch_seccomp_action_observable", &[("action", "log")]) == Some(1.0) {
        // The workload's own exit, at least, ran under the profile.
        assert!(others.iter().any(|o| o.0 == "exit_group"), "{others:?}");
    } else {
        assert_eq!(others, vec![]);
    }
}
