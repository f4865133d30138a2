//! The JSON event stream (`--events`): one event per seccomp verdict, OOM kill and noteworthy
//! exit, with the right process, syscall, action, errno and exit code; rate-limited per cgroup in
//! the kernel while the counters stay exact. Runs in the VM matrix too (the fields that older
//! kernels cannot give are `null` there, never wrong).

use std::{
    os::unix::process::ExitStatusExt,
    process::Stdio,
    time::{Duration, Instant},
};

use agent_common::config_flags;
use cgwatch_tests::{
    Agent, Metrics, TestCgroup, assert_counted,
    events::{EventLog, of_type},
    killed_syscall, kills_raise_signals, oom_limit_known, skipped_runs,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// Whether the errno verdict is seen on the syscall's return (the tracepoints), which tells the
/// errno; the fexit / kprobe fast path sees the verdict only.
fn errno_known(m: &Metrics) -> bool {
    m.get("cgwatch_probe_attached", &[("probe", "seccomp_sys_exit")]) == Some(1.0)
}

fn kernel_flags() -> u32 {
    let btf = cgwatch::btf::KernelBtf::from_sysfs(std::path::Path::new("/sys")).expect("kernel BTF");
    btf.kernel_config().expect("kernel layout").flags
}

/// The fields every event of a workload process carries.
fn assert_process(e: &Value, pid: u32) {
    assert_eq!(e["pid"], pid, "{e}");
    assert_eq!(e["comm"], "cgwatch-workloa", "{e}");
    assert!(e["tid"].as_u64().unwrap() >= u64::from(pid), "{e}");
    // The workload's parent is the test's thread that started it (named after the test, cut to
    // 15 bytes by the kernel).
    let parent = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    assert_eq!(e["parent_comm"], parent.trim(), "{e}");
    assert_eq!(e["suppressed"], 0, "{e}");
    assert_eq!(e["container_id"], Value::Null, "a test cgroup is nobody's container: {e}");
}

#[test]
fn each_verdict_kill_and_failure_is_one_event_with_its_process() {
    let log = EventLog::default();
    let agent = Agent::start(&log.flag());
    let m = agent.scrape();

    // An errno denial: one event, the syscall and the errno the filter returned (EPERM).
    let errno = TestCgroup::new("ev-errno");
    let child = errno.workload(&["seccomp", "--action", "errno", "--count", "1"]).stdout(Stdio::null()).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let events = log.wait_for(&errno.rel, WAIT, |e| !e.is_empty());
    let seccomp = of_type(&events, "seccomp");
    assert_eq!(seccomp.len(), 1, "{events:?}");
    let e = seccomp[0];
    assert_process(e, pid);
    assert_eq!((&e["syscall"], &e["syscall_nr"], &e["action"]), (&json!("getppid"), &json!(libc::SYS_getppid), &json!("errno")));
    let want_errno = if errno_known(&m) { json!(libc::EPERM) } else { Value::Null };
    assert_eq!(e["errno"], want_errno, "{e}");
    assert!(of_type(&events, "exit").is_empty(), "a successful exit writes no event: {events:?}");

    // A trap: one event, no errno; the handler returns and the process exits 0.
    let trap = TestCgroup::new("ev-trap");
    let child = trap.workload(&["seccomp", "--action", "trap"]).stdout(Stdio::null()).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let events = log.wait_for(&trap.rel, WAIT, |e| !e.is_empty());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_process(&events[0], pid);
    assert_eq!((&events[0]["syscall"], &events[0]["action"], &events[0]["errno"]), (&json!("getppid"), &json!("trap"), &Value::Null));

    // KILL_PROCESS: the verdict, and the exit it caused.
    let kill = TestCgroup::new("ev-kill");
    let child = kill.workload(&["seccomp", "--action", "kill-process"]).stdout(Stdio::null()).spawn().unwrap();
    let pid = child.id();
    assert_eq!(child.wait_with_output().unwrap().status.signal(), Some(libc::SIGSYS));
    let events = log.wait_for(&kill.rel, WAIT, |e| e.len() >= 2);
    let (seccomp, exit) = (of_type(&events, "seccomp"), of_type(&events, "exit"));
    // On a kernel that preempts running programs the exit probe's run may be skipped: said.
    let skipped = exit.is_empty() && seccomp.len() == 1 && skipped_runs(&agent.scrape()) > 0.0;
    if skipped {
        cgwatch_tests::note("ev-kill: no exit event, skipped runs reported (a preemptible kernel)");
    } else {
        assert_eq!((seccomp.len(), exit.len()), (1, 1), "{events:?}");
    }
    assert_process(seccomp[0], pid);
    let syscall = killed_syscall(&m, !kills_raise_signals());
    assert_eq!((&seccomp[0]["syscall"], &seccomp[0]["action"]), (&json!(syscall), &json!("kill_process")));
    for exit in exit.iter().take(usize::from(!skipped)) {
        assert_process(exit, pid);
        // Before 5.17 a kill raises no signal, and the thread that counts the group's exit may get
        // there before the killed thread: the counter is then moved to seccomp_kill afterwards, the
        // event (already written) says what was known, a SIGSYS (docs/kernels.md).
        let reasons: &[&str] = if kills_raise_signals() { &["seccomp_kill"] } else { &["seccomp_kill", "signal"] };
        assert!(reasons.iter().any(|r| exit["reason"] == *r), "{exit:?}");
        assert_eq!((&exit["signal"], &exit["exit_code"], &exit["scope"]), (&json!("SIGSYS"), &Value::Null, &json!("process")));
    }

    // A failed process: its exit code, and how long it ran.
    let fail = TestCgroup::new("ev-fail");
    let started = Instant::now();
    let child = fail.workload(&["exit", "3"]).stdout(Stdio::null()).spawn().unwrap();
    let pid = child.id();
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(3));
    let ran = started.elapsed().as_secs_f64();
    let events = log.wait_for(&fail.rel, WAIT, |e| !e.is_empty());
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_process(e, pid);
    assert_eq!((&e["type"], &e["reason"], &e["exit_code"], &e["signal"]), (&json!("exit"), &json!("error"), &json!(3), &Value::Null));
    let lifetime = e["lifetime_seconds"].as_f64().expect("lifetime");
    assert!(lifetime > 0.0 && lifetime <= ran, "ran {lifetime} s of {ran} s");
    // Time: RFC 3339 with nanoseconds, within this test's run.
    let time = e["time"].as_str().unwrap();
    assert_eq!(time.len(), "2026-12-02T08:00:00.123456789Z".len(), "{time}");
    let at = humantime::parse_rfc3339(time).unwrap();
    let age = std::time::SystemTime::now().duration_since(at).unwrap();
    assert!(age < Duration::from_secs(60), "{time} is {age:?} old");

    // The counters agree with the file (every agent sees every cgroup: the file also holds the
    // events of tests running beside this one).
    // Lines are counted once written: the count lies between the lines read before the scrape
    // and those read after it.
    let lines = |t: &str| of_type(&log.read(), t).len() as f64;
    for t in cgwatch::events::schema::TYPES {
        let before = lines(t);
        let m = agent.scrape();
        let after = lines(t);
        let written = m.get("cgwatch_events_written_total", &[("type", t)]).unwrap();
        assert!(before <= written && written <= after, "{t}: {before} lines, then {written} written, then {after} lines");
    }
    let m = agent.scrape();
    assert_eq!(m.sum("cgwatch_events_dropped_total", &[]), 0.0);
    assert_eq!(m.get("cgwatch_events_lost_total", &[("reason", "event_ring")]), Some(0.0));
}

#[test]
fn an_oom_kill_is_one_event_with_the_victim_its_memory_and_the_limit() {
    let log = EventLog::default();
    let agent = Agent::start(&log.flag());
    let cg = TestCgroup::new("ev-oom");
    cg.set_memory_limit(32 << 20);
    let child = cg.workload(&["alloc", "--mb", "256"]).stdout(Stdio::null()).spawn().unwrap();
    let pid = child.id();
    assert_eq!(child.wait_with_output().unwrap().status.signal(), Some(libc::SIGKILL));
    let events = log.wait_for(&cg.rel, WAIT, |e| e.len() >= 2);
    let (oom, exit) = (of_type(&events, "oom_kill"), of_type(&events, "exit"));
    assert_eq!((oom.len(), exit.len()), (1, 1), "{events:?}");
    let e = oom[0];
    assert_process(e, pid);
    let m = agent.scrape();
    let (limit, limit_cgroup) = if oom_limit_known(&m) { (json!("own"), json!(cg.rel)) } else { (json!("unknown"), Value::Null) };
    assert_eq!((&e["limit"], &e["limit_cgroup"]), (&limit, &limit_cgroup), "{e}");
    // The memory it held: where mark_victim passes the victim, it is nearly all of the 32 MiB
    // limit in anonymous pages; elsewhere the kill is seen at the exit, its memory freed: null.
    let flags = kernel_flags();
    if flags & config_flags::MARK_VICTIM_HAS_TASK != 0 && flags & config_flags::HAS_RSS != 0 {
        let anon = e["rss_anon_bytes"].as_u64().expect("anon RSS");
        // (The kernel's per-CPU counters may be off by a few pages, either way.)
        assert!((16 << 20..=40 << 20).contains(&anon), "anon RSS {anon}");
        assert!(e["rss_file_bytes"].is_u64() && e["rss_shmem_bytes"].is_u64(), "{e}");
    } else {
        assert_eq!((&e["rss_anon_bytes"], &e["rss_file_bytes"]), (&Value::Null, &Value::Null), "{e}");
    }
    assert_eq!((&exit[0]["reason"], &exit[0]["signal"]), (&json!("oom_kill"), &json!("SIGKILL")), "{:?}", exit[0]);

}

/// Denials in the storm: 1,000,000 on the host; fewer in the emulated VMs, where a million
/// syscalls take minutes.
fn storm_size() -> u64 {
    if std::env::var_os("CGWATCH_VM").is_some() { 200_000 } else { 1_000_000 }
}

#[test]
fn a_storm_is_rate_limited_in_the_kernel_and_counted_exactly() {
    const RATE: u64 = 100;
    const BURST: u64 = 1000;
    let n = storm_size();
    let log = EventLog::default();
    let mut args = log.flag().to_vec();
    args.extend(["--events-rate", "100", "--events-burst", "1000"]);
    let agent = Agent::start(&args);
    let storm = TestCgroup::new("ev-storm");
    let quiet = TestCgroup::new("ev-quiet");
    let count = n.to_string();
    let started = Instant::now();
    let child = storm.workload(&["seccomp", "--action", "errno", "--count", &count]).stdout(Stdio::null()).spawn().unwrap();
    // A single denial elsewhere, while the storm rages: it still gets its event.
    let first = agent.scrape_until(WAIT, |m| m.get("cgwatch_seccomp_violations_total", &[("cgroup", &storm.rel)]).is_some());
    assert!(first.get("cgwatch_seccomp_violations_total", &[("cgroup", &storm.rel)]).is_some());
    assert!(quiet.run(&["seccomp", "--action", "errno", "--count", "1"]).success());
    let storm_running = log.of(&storm.rel).len();
    assert!(child.wait_with_output().unwrap().status.success());
    let secs = started.elapsed().as_secs_f64();

    let labels = [("cgroup", storm.rel.as_str()), ("type", "seccomp")];
    let counted = |m: &Metrics| m.get("cgwatch_seccomp_violations_total", &[("cgroup", &storm.rel)]).unwrap_or(0.0);
    // Every counted denial is an event written or suppressed; on a kernel that preempts running
    // programs, a denial the kernel skipped the program for is neither, and said.
    let m = agent.scrape_until(WAIT, |m| {
        let written = log.of(&storm.rel).len() as f64;
        let accounted = m.get("cgwatch_events_suppressed_total", &labels).unwrap_or(0.0) + written;
        accounted == counted(m) && counted(m) + skipped_runs(m) >= n as f64
    });
    let counted = counted(&m);
    assert_counted(counted, n as f64, &m, "the counter is exact");
    let counted = counted as u64;
    let events = log.of(&storm.rel);
    let written = of_type(&events, "seccomp").len() as u64;
    let suppressed = m.get("cgwatch_events_suppressed_total", &labels).unwrap_or(0.0) as u64;
    let bound = BURST + (RATE as f64 * secs).ceil() as u64;
    cgwatch_tests::note(&format!(
        "storm of {n} denials in {secs:.2} s: {counted} counted, {written} events written (bound {bound}), {suppressed} suppressed, {} skipped runs",
        skipped_runs(&m)
    ));
    assert!(written <= bound, "{written} events written in {secs:.2} s: more than burst + rate x duration = {bound}");
    assert!(written >= BURST.min(n), "the burst goes through: {written}");
    assert_eq!(written + suppressed, counted, "every denial counted is an event written or one suppressed");
    // Each event after a suppression says how many came before it (the tail after the last
    // event is in the counter only).
    let said: u64 = events.iter().map(|e| e["suppressed"].as_u64().unwrap()).sum();
    assert!(said <= suppressed && (said > 0 || written == counted), "events say {said} suppressed of {suppressed}");
    assert!(storm_running > 0, "events were written while the storm ran");
    // Its one denial is counted and is one event; on a kernel that preempts running programs,
    // the storm's preempted run can make the kernel skip it: then neither, and said.
    let quiet_counted = m.get("cgwatch_seccomp_violations_total", &[("cgroup", &quiet.rel)]).unwrap_or(0.0);
    assert_counted(quiet_counted, 1.0, &m, "the quiet cgroup's denial");
    let quiet_events = log.of(&quiet.rel);
    assert_eq!(quiet_events.len() as f64, quiet_counted, "{quiet_events:?}");
    if let Some(e) = quiet_events.first() {
        assert_eq!((&e["syscall"], &e["suppressed"]), (&json!("getppid"), &json!(0)));
    }
    assert_eq!(m.sum("cgwatch_events_dropped_total", &[]), 0.0);
    assert_eq!(m.sum("cgwatch_events_lost_total", &[]), 0.0);
}

#[test]
fn the_file_is_reopened_on_sighup_flushed_at_sigterm_and_a_bad_path_stops_the_agent_with_one_line() {
    let log = EventLog::default();
    let agent = Agent::start(&log.flag());
    let cg = TestCgroup::new("ev-rotate");
    assert_eq!(cg.run(&["exit", "5"]).code(), Some(5));
    log.wait_for(&cg.rel, WAIT, |e| e.len() == 1);
    // logrotate: move the file away, then SIGHUP.
    let rotated = log.path.with_extension("json.1");
    std::fs::rename(&log.path, &rotated).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + WAIT;
    while !log.path.exists() {
        assert!(Instant::now() < deadline, "not reopened:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cg.run(&["exit", "6"]).code(), Some(6));
    let events = log.wait_for(&cg.rel, WAIT, |e| !e.is_empty());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["exit_code"], 6);
    let old: Vec<Value> = cgwatch_tests::events::read(&rotated).into_iter().filter(|e| e["cgroup"] == cg.rel).collect();
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(old[0]["exit_code"], 5);
    // The agent is alive and says nothing went wrong.
    let m = agent.scrape();
    assert!(m.get("cgwatch_events_written_total", &[("type", "exit")]).unwrap() >= 2.0);
    assert_eq!(m.sum("cgwatch_events_dropped_total", &[]), 0.0);

    // SIGTERM right after an event: the agent writes it before it exits.
    assert_eq!(cg.run(&["exit", "7"]).code(), Some(7));
    let said = agent.stop(libc::SIGTERM);
    let events = log.of(&cg.rel);
    assert_eq!(events.last().map(|e| &e["exit_code"]), Some(&json!(7)), "{events:?}\n{said}");
    assert!(!said.contains("lost"), "{said}");

    // A file that cannot be opened: one line, exit status 1, before anything else starts.
    let out = std::process::Command::new(cgwatch_tests::cgwatch_bin())
        .args(["--no-pin", "--listen", "127.0.0.1:0", "--events", "/nonexistent/dir/events.json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("cgwatch: --events: cannot open the event file /nonexistent/dir/events.json"), "{stderr}");
}
