//! Docker Engine for the Docker tests: Debian's dockerd (docker.io) on a socket of its own,
//! started by the first test binary that needs it and stopped when the last one using it exits,
//! and an image of busybox-static plus the test workload (the podman tests' root filesystem,
//! [`image_tar`]).
//!
//! The daemon runs with the cgroupfs driver (systemd is not PID 1 on the development host), no
//! iptables and no bridge (every container runs with `--network none`), its own exec root,
//! pidfile and socket, and the default data root `/var/lib/docker`: the agent reads container
//! names from `<rootfs>/var/lib/docker/containers/<id>/config.v2.json` and knows no other data
//! root. The CLI (`docker` on $PATH) reaches it through `DOCKER_HOST`.

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock, atomic::Ordering},
    time::{Duration, Instant},
};

use super::{SEQ, image_tar};

pub const SOCKET: &str = "/run/cgwatch-test-docker.sock";
pub const EXEC_ROOT: &str = "/run/cgwatch-test-docker";
pub const PIDFILE: &str = "/run/cgwatch-test-docker.pid";
/// Every test binary using the daemon holds a shared lock on this file; starting and stopping
/// it take the exclusive lock.
const LOCK: &str = "/run/cgwatch-test-docker.lock";
pub const DATA_ROOT: &str = "/var/lib/docker";
pub const IMAGE: &str = "cgwatch-dk-test:latest";

/// The daemon this test binary uses.
#[derive(Debug)]
pub struct Docker {
    pub pid: u32,
    /// Where its output goes.
    pub log: PathBuf,
    lock: fs::File,
}

static DAEMON: OnceLock<Docker> = OnceLock::new();
/// The daemon when this process started it (reaped when this process stops it).
static CHILD: Mutex<Option<Child>> = Mutex::new(None);

/// The `docker` CLI, talking to the test daemon.
pub fn command() -> Command {
    let mut c = Command::new("docker");
    c.env("DOCKER_HOST", format!("unix://{SOCKET}"));
    c
}

/// Runs `docker ARGS`, panicking with its stderr on failure; returns its stdout, trimmed.
pub fn docker(args: &[&str]) -> String {
    let out = command().args(args).output().unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
}

fn flock(file: &fs::File, op: libc::c_int) -> bool {
    // SAFETY: flock(2) on an open descriptor.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

/// The harness's daemon from an earlier start, if it still runs and answers.
fn running() -> Option<u32> {
    let pid: u32 = fs::read_to_string(PIDFILE).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let is_dockerd = cmdline.starts_with("dockerd\0") || cmdline.contains("/dockerd\0");
    if !alive(pid) || !is_dockerd || !cmdline.contains(SOCKET) {
        return None;
    }
    command().arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().ok()?.success().then_some(pid)
}

/// The test daemon, started on first use, or the one another test binary started and still
/// uses (or left behind when it was killed). The last binary using it stops it when it exits.
pub fn daemon() -> &'static Docker {
    DAEMON.get_or_init(|| {
        let log = std::env::temp_dir().join("cgwatch-test-docker.log");
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK).unwrap();
        assert!(flock(&lock, libc::LOCK_EX), "flock {LOCK}: {}", std::io::Error::last_os_error());
        let pid = running().unwrap_or_else(|| start(&log));
        remove_left_behind();
        assert!(flock(&lock, libc::LOCK_SH), "flock {LOCK}: {}", std::io::Error::last_os_error());
        // SAFETY: registers a plain function, run once at exit.
        unsafe { libc::atexit(stop_at_exit) };
        Docker { pid, log, lock }
    })
}

/// Removes the containers of test processes that are gone (killed before their `Container`s
/// were dropped).
fn remove_left_behind() {
    for name in docker(&["ps", "-a", "--filter", "name=^cgwatch-dk-", "--format", "{{.Names}}"]).lines() {
        // cgwatch-dk-WHAT-PID-N
        let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !alive(pid)) {
            let _ = command().args(["rm", "-f", name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

fn start(log: &Path) -> u32 {
    let dockerd = super::which("dockerd").expect("dockerd is not installed: apt-get install docker.io (cargo xtask test does)");
    let child = Command::new(dockerd)
        .args(["--exec-opt", "native.cgroupdriver=cgroupfs", "--iptables=false", "--ip6tables=false", "--bridge=none"])
        .args(["--data-root", DATA_ROOT, "--exec-root", EXEC_ROOT, "--pidfile", PIDFILE])
        .args(["-H", &format!("unix://{SOCKET}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .expect("cannot start dockerd");
    let pid = child.id();
    *CHILD.lock().unwrap() = Some(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = command().arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        if up {
            return pid;
        }
        let said = || fs::read_to_string(log).unwrap_or_default();
        if let Some(status) = CHILD.lock().unwrap().as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("dockerd exited ({status}):\n{}", said());
        }
        assert!(Instant::now() < deadline, "dockerd did not answer on {SOCKET} within 60 s:\n{}", said());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops the daemon when no other test binary uses it (this process gets the exclusive lock):
/// SIGTERM (dockerd stops its containers and its containerd), SIGKILL after 30 s.
extern "C" fn stop_at_exit() {
    let Some(d) = DAEMON.get() else { return };
    if !flock(&d.lock, libc::LOCK_EX | libc::LOCK_NB) {
        return;
    }
    // SAFETY: kill(2) on the daemon's pid (checked to be the harness's dockerd when found).
    unsafe { libc::kill(d.pid as i32, libc::SIGTERM) };
    let mut child = CHILD.lock().ok().and_then(|mut c| c.take());
    let mut gone = || match child.as_mut() {
        Some(c) => c.try_wait().ok().flatten().is_some(),
        None => !alive(d.pid),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gone() {
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe { libc::kill(d.pid as i32, libc::SIGKILL) };
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Imports the test image once per test binary (and drops the earlier imports it replaces).
pub fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        daemon();
        let dir = tempfile::tempdir().unwrap();
        let tar = image_tar(dir.path());
        docker(&["import", tar.to_str().unwrap(), IMAGE]);
        docker(&["image", "prune", "-f"]);
    });
    IMAGE
}

/// A detached container, removed on drop.
pub struct Container {
    pub name: String,
    pub id: String,
}

impl Container {
    /// `docker run -d --network none --name cgwatch-dk-WHAT-PID-N [run_args] IMAGE command...`.
    pub fn start(what: &str, run_args: &[&str], command_args: &[&str]) -> Container {
        let name = format!("cgwatch-dk-{what}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let mut args = vec!["run", "-d", "--network", "none", "--name", &name];
        args.extend_from_slice(run_args);
        args.push(image());
        args.extend_from_slice(command_args);
        let id = docker(&args);
        assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "docker run: not an id: {id:?}");
        Container { name, id }
    }

    /// Waits for the container to exit; returns its exit code.
    pub fn wait(&self) -> i32 {
        docker(&["wait", &self.name]).parse().expect("docker wait: exit code")
    }

    /// `docker inspect -f FORMAT`.
    pub fn inspect(&self, format: &str) -> String {
        docker(&["inspect", "-f", format, &self.name])
    }

    /// What the container wrote to stdout.
    pub fn logs(&self) -> String {
        let out = command().args(["logs", &self.name]).output().expect("docker logs");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// The container's cgroup, as the agent labels it (docker's cgroupfs layout).
    pub fn cgroup(&self) -> String {
        format!("/docker/{}", self.id)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = command().args(["rm", "-f", &self.name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// How many containers run (`docker ps -q | wc -l`).
pub fn running_containers() -> usize {
    docker(&["ps", "-q"]).lines().filter(|l| !l.trim().is_empty()).count()
}
