//! Container starts, exec sessions, container exits and start failures with containers that the
//! workload's minimal runtime makes the way runc does (`cgwatch-workload ctr`: the runtime makes
//! the cgroup, its child joins it, unshares its mount namespace and execs the entrypoint), so
//! that they run without podman: in the VM matrix (docs/kernels.md) as on the host
//! (docs/lifecycle.md has the definitions; tests/tests/lifecycle.rs has the podman tests).
//!
//! The container cgroups are named as a runtime names them, so that the agent takes them for
//! containers (the lifecycle families have series for a container's own cgroup only), and their
//! names are in a containers/storage `containers.json` under `--path.rootfs`, so that the agent
//! resolves them at once. Each test starts its own agent, which sees every test's containers: the
//! start latency and lifetime histograms (per runtime, not per container) are asserted only in the
//! test whose containers are `crio-<id>` cgroups (runtime `cri-o`); the others are `libpod-<id>`.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use cgwatch_tests::{Agent, Metrics, TestCgroup, workload_bin};

const WAIT: Duration = Duration::from_secs(30);
const STARTS: &str = "cgwatch_container_starts_total";
const EXECS: &str = "cgwatch_container_exec_sessions_total";
const FAILURES: &str = "cgwatch_container_start_failures_total";
const EXITS: &str = "cgwatch_container_exits_total";
const DURATION_COUNT: &str = "cgwatch_container_start_duration_seconds_count";
const LIFETIME_COUNT: &str = "cgwatch_container_lifetime_seconds_count";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A container of the mini runtime: its id, name, runtime label and cgroup (made and removed by
/// the runtime, below `parent`).
struct Ctr {
    id: String,
    name: String,
    runtime: &'static str,
    /// The cgroup v2 directory.
    dir: PathBuf,
}

impl Ctr {
    /// A new container's identity below `parent`: `crio-<id>` (runtime `cri-o`) or `libpod-<id>`
    /// (runtime `podman`), as the cgroupfs drivers of CRI-O and podman name their cgroups.
    fn new(parent: &TestCgroup, prefix: &'static str) -> Ctr {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:08x}{:08x}", std::process::id(), seq).repeat(4);
        let runtime = match prefix {
            "crio" => "cri-o",
            "libpod" => "podman",
            _ => panic!("{prefix}: not a runtime of these tests"),
        };
        Ctr { name: format!("vm-{prefix}-{seq}"), dir: parent.v2.join(format!("{prefix}-{id}")), id, runtime }
    }

    fn labels(&self) -> [(&'static str, &str); 3] {
        [("container_id", self.id.as_str()), ("container", self.name.as_str()), ("runtime", self.runtime)]
    }

    /// `ctr run` for this container, entrypoint `command`.
    fn run_command(&self, pid_host: bool, command: &[&str]) -> Command {
        let mut cmd = Command::new(workload_bin());
        cmd.args(["ctr", "run", "--cgroup"]).arg(&self.dir);
        if pid_host {
            cmd.arg("--pid-host");
        }
        cmd.arg("--").args(command);
        cmd
    }

    /// Runs the container to its end.
    fn run(&self, pid_host: bool, command: &[&str]) -> Output {
        let out = self.run_command(pid_host, command).stdin(Stdio::null()).output().expect("ctr run");
        assert!(!self.dir.exists(), "the runtime left {} behind", self.dir.display());
        out
    }
}

/// A containers/storage `containers.json` naming `ctrs`, under a fresh `--path.rootfs`.
fn rootfs_naming(ctrs: &[&Ctr]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("var/lib/containers/storage/overlay-containers/containers.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let list: Vec<_> = ctrs.iter().map(|c| serde_json::json!({"id": c.id, "names": [c.name]})).collect();
    std::fs::write(file, serde_json::to_string(&list).unwrap()).unwrap();
    root
}

fn agent_with_names(root: &Path) -> Agent {
    Agent::start(&["--path.rootfs", root.to_str().unwrap()])
}

fn text(out: &Output) -> String {
    format!("stdout {:?}, stderr {:?}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The lifecycle series of one container: (starts, exec sessions, start failures, container exits
/// by (reason, signal)).
fn lifecycle_of(m: &Metrics, c: &Ctr) -> (f64, f64, f64, Vec<(String, String, f64)>) {
    let l = c.labels();
    let exits = m
        .find(EXITS, &l)
        .into_iter()
        .map(|s| (s.labels["reason"].clone(), s.labels["signal"].clone(), s.value))
        .collect();
    (m.sum(STARTS, &l), m.sum(EXECS, &l), m.sum(FAILURES, &l), exits)
}

/// Scrapes until `done`, then once more after the agent's reclassification wait (1 s) and a
/// rescan, so that a count arriving late shows as a difference: the second scrape is returned.
fn settled(agent: &Agent, done: impl Fn(&Metrics) -> bool) -> Metrics {
    agent.scrape_until(WAIT, &done);
    std::thread::sleep(Duration::from_secs(2));
    agent.scrape()
}

/// Five containers, exit codes 1 to 5, one after the other: five starts, five container exits
/// (`error`), five start latencies and five lifetimes observed; no exec session, no failure.
#[test]
fn five_containers_are_five_starts_five_exits_and_five_lifetimes() {
    let parent = TestCgroup::new("lifecycle-vm");
    let ctrs: Vec<Ctr> = (0..5).map(|_| Ctr::new(&parent, "crio")).collect();
    let root = rootfs_naming(&ctrs.iter().collect::<Vec<_>>());
    let agent = agent_with_names(root.path());
    let wl = workload_bin();
    let wl = wl.to_str().unwrap();
    for (c, code) in ctrs.iter().zip(1..) {
        let out = c.run(false, &[wl, "exit", &code.to_string()]);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("exited {code}")), "{}", text(&out));
    }
    let crio = [("runtime", "cri-o")];
    let error = [("runtime", "cri-o"), ("reason", "error")];
    let done = |m: &Metrics| {
        ctrs.iter().all(|c| m.get(STARTS, &c.labels()) == Some(1.0) && m.sum(EXITS, &c.labels()) == 1.0)
            && m.get(DURATION_COUNT, &crio) == Some(5.0)
            && m.get(LIFETIME_COUNT, &error) == Some(5.0)
    };
    let m = settled(&agent, done);
    for c in &ctrs {
        let want = (1.0, 0.0, 0.0, vec![("error".to_string(), String::new(), 1.0)]);
        assert_eq!(lifecycle_of(&m, c), want, "{}\n{}", c.name, agent.log());
    }
    assert_eq!(m.get(DURATION_COUNT, &crio), Some(5.0), "{:?}", m.find(DURATION_COUNT, &[]));
    assert_eq!(m.get(LIFETIME_COUNT, &error), Some(5.0), "{:?}", m.find(LIFETIME_COUNT, &[]));
    assert_eq!(m.sum(LIFETIME_COUNT, &crio), 5.0, "{:?}", m.find(LIFETIME_COUNT, &[]));
    // Each a real interval: a local start and these lifetimes take well under a minute.
    let inf = m.get("cgwatch_container_start_duration_seconds_bucket", &[("runtime", "cri-o"), ("le", "60.0")]);
    assert_eq!(inf, Some(5.0));
    let sum = m.get("cgwatch_container_lifetime_seconds_sum", &error).unwrap();
    assert!(sum > 0.0 && sum < 60.0, "lifetimes sum to {sum} s");
}

/// Three exec sessions into a running container (`ctr exec`, one of them a command that execs
/// again): three sessions, still one start; the container's exit when its entrypoint ends.
#[test]
fn exec_sessions_into_a_running_container_are_not_starts() {
    let parent = TestCgroup::new("lifecycle-vm");
    let c = Ctr::new(&parent, "libpod");
    let root = rootfs_naming(&[&c]);
    let agent = agent_with_names(root.path());
    let wl = workload_bin();
    let wl = wl.to_str().unwrap();
    let mut runtime = c
        .run_command(false, &[wl, "wait-eof", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ctr run");
    let mut stdout = BufReader::new(runtime.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let pid = line.trim().strip_prefix("started ").unwrap_or_else(|| panic!("ctr run said {line:?}")).to_string();
    let l = c.labels();
    let m = agent.scrape_until(WAIT, |m| m.get(STARTS, &l) == Some(1.0));
    assert_eq!(m.get(STARTS, &l), Some(1.0), "{:?}\n{}", m.find(STARTS, &[]), agent.log());
    let sessions: [&[&str]; 3] = [&[wl, "exit", "0"], &[wl, "exec", "--", wl, "exit", "0"], &[wl, "exit", "0"]];
    for command in sessions {
        let out = Command::new(wl)
            .args(["ctr", "exec", "--cgroup"])
            .arg(&c.dir)
            .args(["--pid", &pid, "--"])
            .args(command)
            .stdin(Stdio::null())
            .output()
            .expect("ctr exec");
        assert!(out.status.success(), "ctr exec {command:?}: {}", text(&out));
    }
    let m = settled(&agent, |m| m.get(EXECS, &l) == Some(3.0));
    assert_eq!(lifecycle_of(&m, &c), (1.0, 3.0, 0.0, vec![]), "{}", agent.log());
    // The entrypoint exits 0 when its stdin closes.
    drop(runtime.stdin.take());
    let status = runtime.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest.trim(), "exited 0");
    assert!(!c.dir.exists());
    let m = settled(&agent, |m| m.sum(EXITS, &l) == 1.0);
    let want = (1.0, 3.0, 0.0, vec![("success".to_string(), String::new(), 1.0)]);
    assert_eq!(lifecycle_of(&m, &c), want, "{}", agent.log());
}

/// A container without a PID namespace of its own (`--pid=host`): its start, and the exit of the
/// task that started it is the container's exit, with its code.
#[test]
fn a_pid_host_container_has_its_start_and_its_exit() {
    let parent = TestCgroup::new("lifecycle-vm");
    let c = Ctr::new(&parent, "libpod");
    let root = rootfs_naming(&[&c]);
    let agent = agent_with_names(root.path());
    let wl = workload_bin();
    let out = c.run(true, &[wl.to_str().unwrap(), "exit", "6"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let l = c.labels();
    let m = settled(&agent, |m| m.get(STARTS, &l) == Some(1.0) && m.sum(EXITS, &l) == 1.0);
    let want = (1.0, 0.0, 0.0, vec![("error".to_string(), String::new(), 1.0)]);
    assert_eq!(lifecycle_of(&m, &c), want, "{}", agent.log());
}

/// An entrypoint that does not exist, in a container with a PID namespace of its own and in one
/// without: each cgroup is made and removed without an exec in it, a start failure and no start.
///
/// The init that failed to exec the entrypoint is a PID namespace's init in the first: not a
/// container exit (it never started; starts and exits pair).
#[test]
fn an_entrypoint_that_does_not_exist_is_a_start_failure() {
    let parent = TestCgroup::new("lifecycle-vm");
    let own = Ctr::new(&parent, "libpod");
    let host = Ctr::new(&parent, "libpod");
    let root = rootfs_naming(&[&own, &host]);
    let agent = agent_with_names(root.path());
    for (c, pid_host) in [(&own, false), (&host, true)] {
        let out = c.run(pid_host, &["/no-such-entrypoint"]);
        assert_eq!(out.status.code(), Some(127), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("start failed: exec: "), "{}", text(&out));
    }
    let m = settled(&agent, |m| [&own, &host].iter().all(|c| m.get(FAILURES, &c.labels()) == Some(1.0)));
    // The init of its own PID namespace exits 127 without exec'ing: a start failure, no exit.
    assert_eq!(lifecycle_of(&m, &own), (0.0, 0.0, 1.0, vec![]), "{}", agent.log());
    assert_eq!(lifecycle_of(&m, &host), (0.0, 0.0, 1.0, vec![]), "{}", agent.log());
}

/// A cgroup that is no container's (a systemd unit with `PrivateTmp=`: PID 1 forks a child into
/// the unit's new cgroup, which unshares its mount namespace and execs): the kernel sees a start
/// there too, but its exit is no container exit; the process exit is counted as ever.
#[test]
fn a_service_started_in_its_own_mount_namespace_is_no_container() {
    let parent = TestCgroup::new("lifecycle-vm");
    let dir = parent.v2.join(format!("svc-{}.service", SEQ.fetch_add(1, Ordering::Relaxed)));
    let rel = format!("{}/{}", parent.rel, dir.file_name().unwrap().to_str().unwrap());
    let agent = Agent::start(&[]);
    let wl = workload_bin();
    let out = Command::new(&wl)
        .args(["ctr", "run", "--pid-host", "--cgroup"])
        .arg(&dir)
        .arg("--")
        .args([wl.to_str().unwrap(), "exit", "3"])
        .stdin(Stdio::null())
        .output()
        .expect("ctr run");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let cg = [("cgroup", rel.as_str())];
    let m = settled(&agent, |m| m.sum("cgwatch_process_exits_total", &cg) == 1.0);
    assert_eq!(m.get("cgwatch_process_exits_total", &[("cgroup", rel.as_str()), ("reason", "error")]), Some(1.0), "{}", agent.log());
    assert_eq!(m.sum(EXITS, &cg), 0.0, "a container exit in a cgroup that is no container's: {:?}", m.find(EXITS, &cg));
    assert_eq!(m.sum(STARTS, &cg), 0.0);
    assert_eq!(m.sum(FAILURES, &cg), 0.0);
}
