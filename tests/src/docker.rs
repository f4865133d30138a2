//! Docker Engine for the Docker tests: Debian's dockerd (docker.io) on a socket of its own,
//! started by the first test binary that needs it and stopped when the last one using it exits,
//! and an image of busybox-static plus the test workload (the podman tests' root filesystem,
//! [`image_tar`]).
//!
//! The daemon runs with the cgroupfs driver (systemd is not PID 1 on the development host), no
//! iptables and no bridge (every container runs with `--network none`), its own exec root,
//! pidfile and socket, and the default data root `/var/lib/docker`, where the agent reads
//! container names by default (`<rootfs>/var/lib/docker/containers/<id>/config.v2.json`). The CLI
//! (`docker` on $PATH) reaches it through `DOCKER_HOST`.
//!
//! [`OwnDaemon`] is a second dockerd of one test's own, beside the shared one, for what the shared
//! one's settings cannot show (another `--data-root`).

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
    cli(SOCKET)
}

/// The `docker` CLI, talking to the daemon on `socket`.
fn cli(socket: &str) -> Command {
    let mut c = Command::new("docker");
    c.env("DOCKER_HOST", format!("unix://{socket}"));
    c
}

/// Runs `docker ARGS`, panicking with its stderr on failure; returns its stdout, trimmed.
pub fn docker(args: &[&str]) -> String {
    run(command(), args)
}

fn run(mut cli: Command, args: &[&str]) -> String {
    let out = cli.args(args).output().unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
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
    let child = launch(SOCKET, Path::new(EXEC_ROOT), Path::new(PIDFILE), Path::new(DATA_ROOT), log);
    let pid = child.id();
    *CHILD.lock().unwrap() = Some(child);
    pid
}

/// Starts a dockerd with the harness's flags and these paths, its output in `log`; returns once
/// it answers on `socket`.
fn launch(socket: &str, exec_root: &Path, pidfile: &Path, data_root: &Path, log: &Path) -> Child {
    let dockerd = super::which("dockerd").expect("dockerd is not installed: apt-get install docker.io (cargo xtask test does)");
    let mut child = Command::new(dockerd)
        .args(["--exec-opt", "native.cgroupdriver=cgroupfs", "--iptables=false", "--ip6tables=false", "--bridge=none"])
        .arg("--data-root")
        .arg(data_root)
        .arg("--exec-root")
        .arg(exec_root)
        .arg("--pidfile")
        .arg(pidfile)
        .args(["-H", &format!("unix://{socket}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .expect("cannot start dockerd");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = cli(socket).arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        if up {
            return child;
        }
        let said = || fs::read_to_string(log).unwrap_or_default();
        if let Some(status) = child.try_wait().ok().flatten() {
            panic!("dockerd exited ({status}):\n{}", said());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dockerd did not answer on {socket} within 60 s:\n{}", said());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops the daemon when no other test binary uses it (this process gets the exclusive lock).
extern "C" fn stop_at_exit() {
    let Some(d) = DAEMON.get() else { return };
    if !flock(&d.lock, libc::LOCK_EX | libc::LOCK_NB) {
        return;
    }
    let child = CHILD.lock().ok().and_then(|mut c| c.take());
    stop(d.pid, child);
}

/// SIGTERM to a dockerd (it stops its containers and its containerd), SIGKILL after 30 s; waits
/// for it (reaps it when it is this process's `child`).
fn stop(pid: u32, mut child: Option<Child>) {
    // SAFETY: kill(2) on a dockerd's pid (the harness's: its child, or checked when found).
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut gone = || match child.as_mut() {
        Some(c) => c.try_wait().ok().flatten().is_some(),
        None => !alive(pid),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gone() {
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            if let Some(c) = child.as_mut() {
                let _ = c.wait();
            }
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
        import(command);
    });
    IMAGE
}

/// `docker import` of the test image ([`image_tar`]) through `cli`, as [`IMAGE`].
fn import(cli: impl Fn() -> Command) {
    let dir = tempfile::tempdir().unwrap();
    let tar = image_tar(dir.path());
    run(cli(), &["import", tar.to_str().unwrap(), IMAGE]);
    run(cli(), &["image", "prune", "-f"]);
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

/// Where [`OwnDaemon`]s keep their socket, pidfile and exec root (`<prefix>-<test pid>-<n>.sock`,
/// `.pid`, and the directory itself), and, below the temporary directory, their data root and log.
const OWN_PREFIX: &str = "cgwatch-test-dockerd";

/// A dockerd of one test's own, beside the shared one and independent of it: the harness's
/// flags, its own socket, exec root, pidfile and data root (a fresh directory, so its
/// `--data-root` is not docker's default), its own import of the test image. On drop its
/// containers are removed, it is stopped and its directories are deleted; those of a test
/// process that was killed are, by the next `OwnDaemon::start`.
pub struct OwnDaemon {
    pub socket: String,
    /// Its `--data-root`.
    pub data_root: PathBuf,
    /// Its output.
    pub log: PathBuf,
    exec_root: PathBuf,
    pidfile: PathBuf,
    child: Option<Child>,
}

/// A container of an [`OwnDaemon`] (removed with the daemon).
pub struct OwnContainer {
    pub name: String,
    pub id: String,
}

impl OwnContainer {
    /// The container's cgroup, as the agent labels it (docker's cgroupfs layout).
    pub fn cgroup(&self) -> String {
        format!("/docker/{}", self.id)
    }
}

impl OwnDaemon {
    /// Starts one, with the test image imported.
    pub fn start() -> OwnDaemon {
        remove_own_left_behind();
        let name = format!("{OWN_PREFIX}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let tmp = std::env::temp_dir();
        let run_dir = Path::new("/run");
        let mut d = OwnDaemon {
            socket: run_dir.join(format!("{name}.sock")).to_str().unwrap().to_string(),
            data_root: tmp.join(&name),
            log: tmp.join(format!("{name}.log")),
            exec_root: run_dir.join(&name),
            pidfile: run_dir.join(format!("{name}.pid")),
            child: None,
        };
        fs::create_dir_all(&d.data_root).unwrap();
        // (On a panic in launch, the drop of `d` removes what was made.)
        d.child = Some(launch(&d.socket, &d.exec_root, &d.pidfile, &d.data_root, &d.log));
        import(|| d.command());
        d
    }

    /// The `docker` CLI, talking to this daemon.
    pub fn command(&self) -> Command {
        cli(&self.socket)
    }

    /// Runs `docker ARGS` on this daemon, panicking with its stderr on failure; returns its
    /// stdout, trimmed.
    pub fn docker(&self, args: &[&str]) -> String {
        run(self.command(), args)
    }

    /// `docker run -d --network none --name cgwatch-dk-WHAT-PID-N IMAGE command...` on this
    /// daemon.
    pub fn run(&self, what: &str, command_args: &[&str]) -> OwnContainer {
        let name = format!("cgwatch-dk-{what}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let mut args = vec!["run", "-d", "--network", "none", "--name", &name, IMAGE];
        args.extend_from_slice(command_args);
        let id = self.docker(&args);
        assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "docker run: not an id: {id:?}");
        OwnContainer { name, id }
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            remove_all_containers(&self.socket);
            stop(child.id(), Some(child));
        }
        remove_own_files(&self.socket, &self.exec_root, &self.pidfile, &self.data_root);
        if !std::thread::panicking() {
            let _ = fs::remove_file(&self.log);
        }
    }
}

/// `docker rm -f` of every container of the daemon on `socket`, whatever fails.
fn remove_all_containers(socket: &str) {
    let listed = cli(socket).args(["ps", "-aq"]).stderr(Stdio::null()).output();
    let ids = listed.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    for id in ids.split_whitespace() {
        let _ = cli(socket).args(["rm", "-f", id]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Deletes an [`OwnDaemon`]'s files, once it is stopped: what it left mounted below its exec
/// and data roots is detached first.
fn remove_own_files(socket: &str, exec_root: &Path, pidfile: &Path, data_root: &Path) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // Deepest first; mount points are the fifth field (octal escapes aside, which our paths
    // do not have).
    let mut mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(exec_root) || Path::new(m).starts_with(data_root))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let c = std::ffi::CString::new(m).unwrap();
        // SAFETY: umount2(2) with a NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = fs::remove_file(socket);
    let _ = fs::remove_file(pidfile);
    let _ = fs::remove_dir_all(exec_root);
    if let Err(e) = fs::remove_dir_all(data_root)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("cannot remove {}: {e}", data_root.display());
    }
}

/// Stops the [`OwnDaemon`]s of test processes that are gone (killed before they dropped them)
/// and deletes their files.
fn remove_own_left_behind() {
    let Ok(entries) = fs::read_dir("/run") else { return };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".pid")) else { continue };
        // <prefix>-PID-N
        let Some(rest) = name.strip_prefix(OWN_PREFIX).and_then(|r| r.strip_prefix('-')) else { continue };
        let owner = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if owner.is_none_or(alive) {
            continue;
        }
        let socket = format!("/run/{name}.sock");
        let daemon: Option<u32> = fs::read_to_string(e.path()).ok().and_then(|p| p.trim().parse().ok());
        if let Some(pid) = daemon {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if alive(pid) && String::from_utf8_lossy(&cmdline).contains(&socket) {
                remove_all_containers(&socket);
                stop(pid, None);
            }
        }
        remove_own_files(&socket, &Path::new("/run").join(name), &e.path(), &std::env::temp_dir().join(name));
        let _ = fs::remove_file(std::env::temp_dir().join(format!("{name}.log")));
    }
}
