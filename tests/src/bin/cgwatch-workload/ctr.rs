//! A minimal container runtime, making containers the way runc does, so that
//! docs/lifecycle.md's definitions apply to them without podman or docker (the VM matrix has
//! neither):
//!
//! - `ctr run`: the runtime (outside the container's cgroup, in the host's mount namespace)
//!   makes the container's cgroup v2 directory, forks the container's init (PID 1 of a new PID
//!   namespace, unless `--pid-host`), moves it into the cgroup, and lets it exec the entrypoint
//!   once it has unshared its mount namespace (its mounts made private, as runc does): the start.
//!   The runtime waits for the init, removes the cgroup (as `runc delete` does) and exits with
//!   the init's exit code (128 + the signal that killed it). An entrypoint that cannot be exec'd
//!   is a start failure: the cgroup is removed without any exec in it, and the runtime exits with
//!   127.
//! - `ctr exec`: an exec session, as `runc exec` makes one: the runtime forks a process that it
//!   moves into the container's cgroup, which joins the mount namespace of the container's init
//!   (and its PID namespace, where it has one of its own) and execs the command.
//!
//! What the runtime prints on stdout, a line each: `started <init pid>` (host PID) once the
//! entrypoint was exec'd, then `exited <code>` or `killed <signal>`; `start failed: <why>` when
//! the entrypoint could not be exec'd. Everything between fork and exec in the child uses only
//! raw system calls (the workload is single-threaded when it forks).

use std::{
    ffi::CString,
    fs,
    io::Write as _,
    os::fd::AsRawFd as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Ctr {
    /// Make CGROUP (a cgroup v2 directory, absolute path), start a container in it whose
    /// entrypoint is COMMAND, wait for it, remove CGROUP; exit with its exit code.
    Run {
        #[arg(long)]
        cgroup: std::path::PathBuf,
        /// No PID namespace of its own (`--pid=host`).
        #[arg(long)]
        pid_host: bool,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Run COMMAND in the running container whose init is PID (host PID), in its cgroup CGROUP;
    /// exit with its exit code.
    Exec {
        #[arg(long)]
        cgroup: std::path::PathBuf,
        #[arg(long)]
        pid: u32,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

pub fn main(ctr: Ctr) -> Result<()> {
    let code = match ctr {
        Ctr::Run { cgroup, pid_host, command } => run(&cgroup, pid_host, &command)?,
        Ctr::Exec { cgroup, pid, command } => exec(&cgroup, pid, &command)?,
    };
    std::process::exit(code)
}

/// What the child failed at, sent back on the error pipe with its errno.
const AT_UNSHARE: i32 = 1;
const AT_MOUNT: i32 = 2;
const AT_SETNS: i32 = 3;
const AT_EXEC: i32 = 4;

fn stage_name(stage: i32) -> &'static str {
    match stage {
        AT_UNSHARE => "unshare(CLONE_NEWNS)",
        AT_MOUNT => "making / private",
        AT_SETNS => "setns(mount namespace)",
        _ => "exec",
    }
}

fn last_error(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", std::io::Error::last_os_error())
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> Result<(libc::c_int, libc::c_int)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_error("pipe2"));
    }
    Ok((fds[0], fds[1]))
}

/// The argv of `command`, NUL-terminated, made before the fork.
struct Argv {
    _strings: Vec<CString>,
    ptrs: Vec<*const libc::c_char>,
}

impl Argv {
    fn new(command: &[String]) -> Result<Argv> {
        let strings: Vec<CString> = command.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?;
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        Ok(Argv { _strings: strings, ptrs })
    }
}

/// In the child: report `stage` and errno on `err`, and exit.
fn child_fail(err: libc::c_int, stage: i32) -> ! {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let msg = [stage, errno];
    unsafe {
        libc::write(err, msg.as_ptr().cast(), size_of_val(&msg));
        libc::_exit(127)
    }
}

/// In the child: wait for the runtime's go (one byte; end of file if the runtime died), then
/// exec `argv`.
fn child_exec(go: libc::c_int, err: libc::c_int, argv: &Argv) -> ! {
    let mut byte = 0u8;
    if unsafe { libc::read(go, (&raw mut byte).cast(), 1) } != 1 {
        unsafe { libc::_exit(126) };
    }
    unsafe { libc::execvp(argv.ptrs[0], argv.ptrs.as_ptr()) };
    child_fail(err, AT_EXEC)
}

/// A forked child, with the runtime's ends of its pipes.
struct Child {
    pid: libc::pid_t,
    go: libc::c_int,
    err: libc::c_int,
}

/// Forks; the child runs `child` (which does not return: it execs or exits) with the child's
/// ends of the pipes.
fn fork(child: impl FnOnce(libc::c_int, libc::c_int)) -> Result<Child> {
    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    match unsafe { libc::fork() } {
        -1 => Err(last_error("fork")),
        0 => {
            unsafe {
                libc::close(go_w);
                libc::close(err_r);
            }
            child(go_r, err_w);
            unsafe { libc::_exit(127) }
        }
        pid => {
            unsafe {
                libc::close(go_r);
                libc::close(err_w);
            }
            Ok(Child { pid, go: go_w, err: err_r })
        }
    }
}

impl Child {
    /// Moves the child into `cgroup` (v2) and tells it to go on. On failure the child is killed.
    fn join_and_go(&self, cgroup: &Path) -> Result<()> {
        let moved = fs::write(cgroup.join("cgroup.procs"), self.pid.to_string());
        if let Err(e) = moved {
            self.kill_and_reap();
            bail!("moving {} into {}: {e}", self.pid, cgroup.display());
        }
        let byte = 1u8;
        if unsafe { libc::write(self.go, (&raw const byte).cast(), 1) } != 1 {
            let e = last_error("telling the child to go on");
            self.kill_and_reap();
            return Err(e);
        }
        unsafe { libc::close(self.go) };
        Ok(())
    }

    /// `Err` with what failed if the child could not exec (the error pipe closed on exec).
    fn exec_result(&self) -> Result<(), String> {
        let mut msg = [0i32; 2];
        let n = loop {
            let n = unsafe { libc::read(self.err, msg.as_mut_ptr().cast(), size_of_val(&msg)) };
            if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break n;
            }
        };
        unsafe { libc::close(self.err) };
        if n == 0 {
            return Ok(());
        }
        if n as usize != size_of_val(&msg) {
            return Err(format!("the child's error pipe: {n} bytes"));
        }
        Err(format!("{}: {}", stage_name(msg[0]), std::io::Error::from_raw_os_error(msg[1])))
    }

    /// waitpid; the exit code, 128 + the signal, and the line to print.
    fn wait(&self) -> Result<(i32, String)> {
        let mut status = 0;
        loop {
            if unsafe { libc::waitpid(self.pid, &mut status, 0) } == self.pid {
                break;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return Err(last_error("waitpid"));
            }
        }
        Ok(if libc::WIFEXITED(status) {
            let code = libc::WEXITSTATUS(status);
            (code, format!("exited {code}"))
        } else {
            let sig = libc::WTERMSIG(status);
            (128 + sig, format!("killed {sig}"))
        })
    }

    fn kill_and_reap(&self) {
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Removes a cgroup directory, waiting for the tasks of a dying PID namespace to leave it.
fn remove_cgroup(cgroup: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fs::remove_dir(cgroup) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => bail!("removing {}: {e}", cgroup.display()),
        }
    }
}

fn run(cgroup: &Path, pid_host: bool, command: &[String]) -> Result<i32> {
    let argv = Argv::new(command)?;
    let root = c"/";
    // The cgroup_mkdir the agent times the start from.
    fs::create_dir(cgroup).with_context(|| format!("mkdir {}", cgroup.display()))?;
    if !pid_host && unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        let e = last_error("unshare(CLONE_NEWPID)");
        let _ = remove_cgroup(cgroup);
        return Err(e);
    }
    // The child: the container's init (PID 1 of the new PID namespace, the runtime's first
    // child since the unshare).
    let child = fork(|go, err| unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            child_fail(err, AT_UNSHARE);
        }
        let none = std::ptr::null::<libc::c_char>();
        if libc::mount(none, root.as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            child_fail(err, AT_MOUNT);
        }
        child_exec(go, err, &argv)
    });
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = remove_cgroup(cgroup);
            return Err(e);
        }
    };
    if let Err(e) = child.join_and_go(cgroup) {
        let _ = remove_cgroup(cgroup);
        return Err(e);
    }
    let started = child.exec_result();
    match &started {
        Ok(()) => say(&format!("started {}", child.pid)),
        Err(why) => say(&format!("start failed: {why}")),
    }
    let (code, line) = child.wait()?;
    remove_cgroup(cgroup)?;
    if started.is_err() {
        return Ok(127);
    }
    say(&line);
    Ok(code)
}

/// A namespace of `pid`, opened.
fn open_ns(pid: u32, ns: &str) -> Result<fs::File> {
    fs::File::open(format!("/proc/{pid}/ns/{ns}")).with_context(|| format!("the {ns} namespace of {pid}"))
}

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let (a, b) = (fs::metadata(a)?, fs::metadata(b)?);
    Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
}

fn exec(cgroup: &Path, pid: u32, command: &[String]) -> Result<i32> {
    let argv = Argv::new(command)?;
    let mnt = open_ns(pid, "mnt")?;
    let pidns = Path::new("/proc").join(pid.to_string()).join("ns/pid");
    // Where the container has a PID namespace of its own, the session's process is forked into
    // it: setns(CLONE_NEWPID) sets the namespace of the runtime's children, not its own.
    if !same_file(&pidns, Path::new("/proc/self/ns/pid"))? {
        let ns = open_ns(pid, "pid")?;
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            return Err(last_error("setns(CLONE_NEWPID)"));
        }
    }
    let mnt_fd = mnt.as_raw_fd();
    let root = c"/";
    let child = fork(|go, err| unsafe {
        if libc::setns(mnt_fd, libc::CLONE_NEWNS) != 0 || libc::chdir(root.as_ptr()) != 0 {
            child_fail(err, AT_SETNS);
        }
        child_exec(go, err, &argv)
    })?;
    child.join_and_go(cgroup)?;
    if let Err(why) = child.exec_result() {
        let _ = child.wait();
        bail!("exec session: {why}");
    }
    let (code, line) = child.wait()?;
    say(&line);
    Ok(code)
}
