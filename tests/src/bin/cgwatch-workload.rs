//! Small, precise workloads for the integration tests. Each joins the cgroups given with
//! `--join` (writing its own pid to those `cgroup.procs` files) before doing anything else, so
//! that everything it does is accounted to the test's cgroup.

#[path = "cgwatch-workload/ctr.rs"]
mod ctr;

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

#[derive(Parser)]
struct Args {
    /// `cgroup.procs` files to join first.
    #[arg(long)]
    join: Vec<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Action {
    /// No filter at all.
    None,
    Errno,
    Trap,
    KillProcess,
    KillThread,
    /// SECCOMP_RET_LOG: the call runs, logged (complain mode).
    Log,
    /// SECCOMP_RET_TRACE without a tracer: the call fails with ENOSYS.
    Trace,
}

/// What the supervisor of a USER_NOTIF filter does with each notification.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Notify {
    /// Replies with EPERM: the call is skipped.
    Error,
    /// Replies SECCOMP_USER_NOTIF_FLAG_CONTINUE: the call runs.
    Continue,
    /// No supervisor: the listener is closed before the calls, which fail with ENOSYS.
    Gone,
}

/// What the tracer of a `traced` child does at each seccomp TRACE stop.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum TracerDoes {
    /// Lets the syscall run (the kernel rechecks the filters, which allow it this time).
    Allow,
    /// Skips it: syscall number -1, return value -EPERM.
    Skip,
    /// Turns it into getpgrp (getpgid on arm64, which has no getpgrp), which the child's second
    /// filter denies with EPERM on the recheck.
    Redirect,
}

/// What a TRAP's SIGSYS meets.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Sigsys {
    /// A handler that counts the traps.
    Handler,
    /// The default action: the process dies of it (a core dump).
    Default,
    /// Ignored: the kernel resets it to the default action, and the process dies of it.
    Ignore,
    /// The handler, but SIGSYS blocked: the kernel unblocks it and resets it to the default.
    Block,
}

#[derive(Subcommand)]
enum What {
    /// exit(CODE).
    Exit { code: i32 },
    /// Dereference a null pointer.
    Segv,
    /// Kill itself with SIGKILL.
    Sigkill,
    /// Send itself SIGNAL (a number) with kill(2), its default action restored first.
    Raise { signal: i32 },
    /// Install a filter that answers getppid with ACTION, then call getppid COUNT times.
    Seccomp {
        #[arg(long, value_enum)]
        action: Action,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Afterwards, make syscalls that fail on their own (ENOENT, EPERM, EBADF).
        #[arg(long)]
        also_failing: bool,
        /// Switch to uid/gid 65534 first (so capability checks fail with EPERM).
        #[arg(long)]
        as_nobody: bool,
        /// Threads calling getppid in parallel (each COUNT times).
        #[arg(long, default_value_t = 1)]
        threads: u32,
        /// With `--action trap`: the disposition of SIGSYS before the filter is installed.
        #[arg(long, value_enum, default_value_t = Sigsys::Handler)]
        sigsys: Sigsys,
        /// At the end, send itself SIGNAL (a number) with kill(2), as `raise` does.
        #[arg(long)]
        then_raise: Option<i32>,
    },
    /// Allocate and touch MB mebibytes, print "ready", then sleep HOLD seconds.
    Alloc {
        #[arg(long)]
        mb: usize,
        #[arg(long, default_value_t = 0)]
        hold: u64,
        /// Allocate in pieces of this many MiB (each one touched before the next), so that no
        /// single allocation can be refused by the overcommit heuristic: only the OOM killer
        /// stops it.
        #[arg(long)]
        chunk_mb: Option<usize>,
    },
    /// Burn SECS seconds of CPU time (not wall time), print "ready", then sleep HOLD seconds.
    Spin {
        #[arg(long)]
        secs: f64,
        #[arg(long, default_value_t = 0)]
        hold: u64,
    },
    /// Time COUNT raw getpid syscalls, print nanoseconds per call. With --filter, first install
    /// a seccomp filter that allows them (and denies only getppid).
    Nullsys {
        #[arg(long, default_value_t = 5_000_000)]
        count: u64,
        #[arg(long)]
        filter: bool,
    },
    /// Fork COUNT children that exit at once, RATE per second at most (0: as fast as possible).
    Forks {
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Call acct(NULL) COUNT times (denied by container runtimes' default seccomp profiles);
    /// print how many calls failed with EPERM.
    Acct {
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Install a filter that answers getppid with SECCOMP_RET_USER_NOTIF (with a listener), have
    /// a supervisor thread answer as NOTIFY says, call getppid COUNT times and check each result.
    UserNotif {
        #[arg(long, value_enum)]
        notify: Notify,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Instead: THREADS threads call getppid once each and wait inside the filter; once all
        /// are waiting the supervisor prints `held THREADS` and replies (EPERM) only when the
        /// file RELEASE exists.
        #[arg(long, requires = "release")]
        threads: Option<u32>,
        #[arg(long)]
        release: Option<std::path::PathBuf>,
    },
    /// Fork a child that installs a filter answering getppid with SECCOMP_RET_TRACE (and a second
    /// one denying getpgrp with EPERM) and calls getppid COUNT times, checking each result, while
    /// this process traces it (PTRACE_O_TRACESECCOMP) and does TRACER at each stop.
    Traced {
        #[arg(long, value_enum)]
        tracer: TracerDoes,
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Complain mode as a Docker profile with `"defaultAction": "SCMP_ACT_LOG"` writes it: every
    /// syscall LOG but getppid, denied with EPERM; then getpid LOGGED times and getppid DENIED
    /// times.
    Complain {
        #[arg(long)]
        logged: u64,
        #[arg(long)]
        denied: u64,
    },
    /// Replace this process with COMMAND (after joining the cgroups).
    Exec {
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Read stdin to its end, then exit(CODE).
    WaitEof {
        #[arg(default_value_t = 0)]
        code: i32,
    },
    /// A minimal container runtime (`ctr run`, `ctr exec`): see ctr.rs.
    #[command(subcommand)]
    Ctr(ctr::Ctr),
}

static TRAPS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_sigsys(_: libc::c_int) {
    TRAPS.fetch_add(1, Ordering::Relaxed);
}

fn no_core_dumps() {
    let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
}

fn install_filter(action: Action) -> Result<()> {
    let on_match = match action {
        Action::None => return Ok(()),
        Action::Errno => SeccompAction::Errno(libc::EPERM as u32),
        Action::Trap => SeccompAction::Trap,
        Action::KillProcess => SeccompAction::KillProcess,
        Action::KillThread => SeccompAction::KillThread,
        Action::Log => SeccompAction::Log,
        Action::Trace => SeccompAction::Trace(0),
    };
    let filter = SeccompFilter::new(
        [(libc::SYS_getppid, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        on_match,
        TARGET_ARCH,
    )
    .context("building the filter")?;
    let program: BpfProgram = filter.try_into().context("compiling the filter")?;
    seccompiler::apply_filter(&program).context("installing the filter")?;
    Ok(())
}

/// `struct seccomp_notif` and `struct seccomp_notif_resp`, include/uapi/linux/seccomp.h.
#[repr(C)]
#[derive(Default)]
struct SeccompNotif {
    id: u64,
    pid: u32,
    flags: u32,
    nr: i32,
    arch: u32,
    instruction_pointer: u64,
    args: [u64; 6],
}
const _: () = assert!(size_of::<SeccompNotif>() == 80);

#[repr(C)]
struct SeccompNotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}
const _: () = assert!(size_of::<SeccompNotifResp>() == 24);

/// `_IOWR('!', 0, struct seccomp_notif)` and `_IOWR('!', 1, struct seccomp_notif_resp)`.
const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;

/// A filter answering getppid with USER_NOTIF, installed on this thread only; returns the
/// listener.
fn install_user_notif_filter() -> Result<libc::c_int> {
    let stmt = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
    let mut prog = [
        // A = seccomp_data.nr
        stmt((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, 0),
        libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt: 0, jf: 1, k: libc::SYS_getppid as u32 },
        stmt((libc::BPF_RET | libc::BPF_K) as u16, SECCOMP_RET_USER_NOTIF),
        stmt((libc::BPF_RET | libc::BPF_K) as u16, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        bail!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error());
    }
    let fd = unsafe {
        libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog)
    };
    if fd < 0 {
        bail!("seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER): {}", std::io::Error::last_os_error());
    }
    Ok(fd as libc::c_int)
}

/// Answers `count` notifications on `fd`: with EPERM or CONTINUE.
fn supervise(fd: libc::c_int, count: u64, notify: Notify) -> Result<()> {
    for _ in 0..count {
        let mut req = SeccompNotif::default();
        if unsafe { libc::ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
            bail!("SECCOMP_IOCTL_NOTIF_RECV: {}", std::io::Error::last_os_error());
        }
        let resp = match notify {
            Notify::Continue => SeccompNotifResp { id: req.id, val: 0, error: 0, flags: SECCOMP_USER_NOTIF_FLAG_CONTINUE },
            _ => SeccompNotifResp { id: req.id, val: 0, error: -libc::EPERM, flags: 0 },
        };
        if unsafe { libc::ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) } != 0 {
            bail!("SECCOMP_IOCTL_NOTIF_SEND: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets what the SIGSYS of the TRAP verdicts to come meets.
fn set_sigsys(sigsys: Sigsys) -> Result<()> {
    let handler = match sigsys {
        Sigsys::Handler | Sigsys::Block => on_sigsys as *const () as libc::sighandler_t,
        Sigsys::Default => libc::SIG_DFL,
        Sigsys::Ignore => libc::SIG_IGN,
    };
    if unsafe { libc::signal(libc::SIGSYS, handler) } == libc::SIG_ERR {
        bail!("signal(SIGSYS): {}", std::io::Error::last_os_error());
    }
    if sigsys == Sigsys::Block {
        // Before the threads start: they inherit the mask.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGSYS);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
    }
    Ok(())
}

fn user_notif(notify: Notify, count: u64) -> Result<()> {
    // The supervisor is another thread, started before the filter (which only this thread gets).
    let (tx, rx) = std::sync::mpsc::channel::<libc::c_int>();
    let supervisor = std::thread::spawn(move || -> Result<()> {
        let Ok(fd) = rx.recv() else { return Ok(()) };
        supervise(fd, count, notify)
    });
    // Before the filter, which catches getppid.
    let ppid = unsafe { libc::getppid() };
    let fd = install_user_notif_filter()?;
    if notify == Notify::Gone {
        unsafe { libc::close(fd) };
        drop(tx);
    } else {
        tx.send(fd).context("handing the listener over")?;
    }
    for i in 0..count {
        let r = getppid_raw();
        let errno = std::io::Error::last_os_error().raw_os_error();
        let ok = match notify {
            Notify::Error => r == -1 && errno == Some(libc::EPERM),
            Notify::Continue => r == i64::from(ppid),
            Notify::Gone => r == -1 && errno == Some(libc::ENOSYS),
        };
        if !ok {
            bail!("call {i}: getppid returned {r} (errno {errno:?})");
        }
    }
    supervisor.join().map_err(|_| anyhow::anyhow!("the supervisor panicked"))??;
    Ok(())
}

/// `threads` threads waiting inside the filter at once, until `release` exists.
fn user_notif_held(threads: u32, release: &std::path::Path) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<libc::c_int>();
    let release = release.to_path_buf();
    let supervisor = std::thread::spawn(move || -> Result<()> {
        let fd = rx.recv().context("no listener")?;
        let mut held = Vec::new();
        for _ in 0..threads {
            let mut req = SeccompNotif::default();
            if unsafe { libc::ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
                bail!("SECCOMP_IOCTL_NOTIF_RECV: {}", std::io::Error::last_os_error());
            }
            held.push(req.id);
        }
        println!("held {threads}");
        std::io::Write::flush(&mut std::io::stdout())?;
        while !release.exists() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for id in held {
            let resp = SeccompNotifResp { id, val: 0, error: -libc::EPERM, flags: 0 };
            if unsafe { libc::ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) } != 0 {
                bail!("SECCOMP_IOCTL_NOTIF_SEND: {}", std::io::Error::last_os_error());
            }
        }
        Ok(())
    });
    // The threads started after the filter inherit it; the supervisor, started before, does not.
    tx.send(install_user_notif_filter()?).context("handing the listener over")?;
    let callers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(|| {
                let r = getppid_raw();
                (r, std::io::Error::last_os_error().raw_os_error())
            })
        })
        .collect();
    for c in callers {
        let (r, errno) = c.join().map_err(|_| anyhow::anyhow!("a caller panicked"))?;
        if r != -1 || errno != Some(libc::EPERM) {
            bail!("getppid returned {r} (errno {errno:?})");
        }
    }
    supervisor.join().map_err(|_| anyhow::anyhow!("the supervisor panicked"))??;
    Ok(())
}

/// A filter with one rule: `nr` gets `on_match`, every other syscall `otherwise`.
fn install_one_rule(nr: i64, on_match: SeccompAction, otherwise: SeccompAction) -> Result<()> {
    let filter = SeccompFilter::new([(nr, vec![])].into_iter().collect(), otherwise, on_match, TARGET_ARCH)
        .context("building the filter")?;
    let program: BpfProgram = filter.try_into().context("compiling the filter")?;
    seccompiler::apply_filter(&program).context("installing the filter")
}

fn complain(logged: u64, denied: u64) -> Result<()> {
    // Before the filter: std may ask the kernel (one more getpid).
    let me = std::process::id() as i64;
    install_one_rule(libc::SYS_getppid, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Log)?;
    for i in 0..logged {
        let r = unsafe { libc::syscall(libc::SYS_getpid) };
        if r != me {
            bail!("logged call {i}: getpid returned {r}");
        }
    }
    for i in 0..denied {
        let r = getppid_raw();
        if r != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
            bail!("denied call {i}: getppid returned {r}");
        }
    }
    Ok(())
}

/// The traced child: stops for its tracer, installs the filters, makes the calls and exits 0
/// when each returned what `tracer` makes of it.
fn traced_child(tracer: TracerDoes, count: u64) -> i32 {
    let ppid = unsafe { libc::getppid() } as i64;
    unsafe {
        libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
        libc::raise(libc::SIGSTOP);
    }
    // The later filter runs first; the kernel takes the verdict of highest precedence (ERRNO over
    // TRACE), so getpgrp is denied on the recheck after a redirect, and getppid traced.
    if install_one_rule(SYS_REDIRECT, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow).is_err()
        || install_one_rule(libc::SYS_getppid, SeccompAction::Trace(0), SeccompAction::Allow).is_err()
    {
        return 2;
    }
    for _ in 0..count {
        let r = getppid_raw();
        let errno = std::io::Error::last_os_error().raw_os_error();
        let ok = match tracer {
            TracerDoes::Allow => r == ppid,
            TracerDoes::Skip | TracerDoes::Redirect => r == -1 && errno == Some(libc::EPERM),
        };
        if !ok {
            return 1;
        }
    }
    0
}

/// Traces a `traced_child` to its end; returns the number of seccomp stops it saw.
fn traced(tracer: TracerDoes, count: u64) -> Result<u64> {
    let child = unsafe { libc::fork() };
    if child < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if child == 0 {
        unsafe { libc::_exit(traced_child(tracer, count)) };
    }
    let wait = || -> Result<i32> {
        let mut status = 0;
        if unsafe { libc::waitpid(child, &mut status, libc::__WALL) } != child {
            bail!("waitpid: {}", std::io::Error::last_os_error());
        }
        Ok(status)
    };
    let status = wait()?;
    if !libc::WIFSTOPPED(status) {
        bail!("the child did not stop for its tracer ({status:#x})");
    }
    let options = libc::PTRACE_O_TRACESECCOMP | libc::PTRACE_O_EXITKILL;
    if unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, child, 0, options) } != 0 {
        bail!("PTRACE_SETOPTIONS: {}", std::io::Error::last_os_error());
    }
    let mut signal = 0;
    let mut stops = 0;
    loop {
        if unsafe { libc::ptrace(libc::PTRACE_CONT, child, 0, signal) } != 0 {
            bail!("PTRACE_CONT: {}", std::io::Error::last_os_error());
        }
        let status = wait()?;
        if libc::WIFEXITED(status) {
            match libc::WEXITSTATUS(status) {
                0 => return Ok(stops),
                code => bail!("the traced child exited {code} after {stops} seccomp stops"),
            }
        }
        if libc::WIFSIGNALED(status) {
            bail!("the traced child died of signal {}", libc::WTERMSIG(status));
        }
        signal = 0;
        if status >> 8 == libc::SIGTRAP | (libc::PTRACE_EVENT_SECCOMP << 8) {
            stops += 1;
            if tracer != TracerDoes::Allow {
                if tracer == TracerDoes::Skip {
                    set_syscall(child, -1, Some(-i64::from(libc::EPERM)))?;
                } else {
                    set_syscall(child, SYS_REDIRECT, None)?;
                }
            }
        } else if libc::WIFSTOPPED(status) {
            // Any other signal goes on to the child.
            signal = libc::WSTOPSIG(status);
        }
    }
}

/// The filters' architecture: the one this is built for.
#[cfg(target_arch = "x86_64")]
const TARGET_ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const TARGET_ARCH: TargetArch = TargetArch::aarch64;

/// The syscall a tracer turns a traced one into, which a second filter denies.
#[cfg(target_arch = "x86_64")]
const SYS_REDIRECT: libc::c_long = libc::SYS_getpgrp;
#[cfg(target_arch = "aarch64")]
const SYS_REDIRECT: libc::c_long = libc::SYS_getpgid;

/// At a seccomp stop: makes the tracee's syscall `nr` (-1 skips it), with return value `ret`.
#[cfg(target_arch = "x86_64")]
fn set_syscall(child: libc::pid_t, nr: libc::c_long, ret: Option<i64>) -> Result<()> {
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    if unsafe { libc::ptrace(libc::PTRACE_GETREGS, child, 0, &mut regs) } != 0 {
        bail!("PTRACE_GETREGS: {}", std::io::Error::last_os_error());
    }
    regs.orig_rax = nr as u64;
    if let Some(ret) = ret {
        regs.rax = ret as u64;
    }
    if unsafe { libc::ptrace(libc::PTRACE_SETREGS, child, 0, &regs) } != 0 {
        bail!("PTRACE_SETREGS: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// At a seccomp stop: makes the tracee's syscall `nr` (-1 skips it), with return value `ret`.
/// arm64 has no PTRACE_GETREGS: the registers are a regset (NT_PRSTATUS, x0 the return value)
/// and the syscall number its own (NT_ARM_SYSTEM_CALL).
#[cfg(target_arch = "aarch64")]
fn set_syscall(child: libc::pid_t, nr: libc::c_long, ret: Option<i64>) -> Result<()> {
    const NT_ARM_SYSTEM_CALL: libc::c_int = 0x404;
    let regset = |request, kind: libc::c_int, data: *mut libc::c_void, len: usize| {
        let mut iov = libc::iovec { iov_base: data, iov_len: len };
        if unsafe { libc::ptrace(request, child, kind as usize, &mut iov) } != 0 {
            bail!("ptrace regset {kind:#x}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    };
    if let Some(ret) = ret {
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        let len = size_of::<libc::user_regs_struct>();
        regset(libc::PTRACE_GETREGSET, libc::NT_PRSTATUS, (&raw mut regs).cast(), len)?;
        regs.regs[0] = ret as u64;
        regset(libc::PTRACE_SETREGSET, libc::NT_PRSTATUS, (&raw mut regs).cast(), len)?;
    }
    let mut nr = nr as i32;
    regset(libc::PTRACE_SETREGSET, NT_ARM_SYSTEM_CALL, (&raw mut nr).cast(), size_of::<i32>())
}

/// Sends itself `sig` with kill(2), with its default action and unblocked, and returns only if
/// that did not kill it.
fn raise(sig: i32) -> Result<()> {
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
    }
    bail!("still alive after signal {sig}")
}

fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn getppid_raw() -> i64 {
    unsafe { libc::syscall(libc::SYS_getppid) }
}

extern "C" fn getppid_worker(count: *mut libc::c_void) -> *mut libc::c_void {
    for _ in 0..count as u64 {
        getppid_raw();
    }
    std::ptr::null_mut()
}

/// Raw pthreads rather than std threads: a thread killed by KILL_THREAD never returns, which
/// std's join treats as a panic, while pthread_join just sees the kernel clear its tid.
fn run_threads(threads: u32, count: u64) -> Result<()> {
    let mut ids = Vec::new();
    for _ in 0..threads {
        let mut id: libc::pthread_t = 0;
        let rc = unsafe {
            libc::pthread_create(&mut id, std::ptr::null(), getppid_worker, count as *mut libc::c_void)
        };
        if rc != 0 {
            bail!("pthread_create: {rc}");
        }
        ids.push(id);
    }
    for id in ids {
        unsafe { libc::pthread_join(id, std::ptr::null_mut()) };
    }
    Ok(())
}

fn failing_syscalls() {
    unsafe {
        // ENOENT
        libc::open(c"/nonexistent/cgwatch".as_ptr(), libc::O_RDONLY);
        // EBADF
        libc::close(-1);
        // EPERM as uid 65534 (CAP_SYS_ADMIN check); a harmless no-op name change as root.
        let mut name = [0u8; 65];
        libc::gethostname(name.as_mut_ptr().cast(), 64);
        let len = name.iter().position(|&b| b == 0).unwrap_or(0);
        libc::sethostname(name.as_ptr().cast(), len);
        // EPERM as uid 65534: signal another user's process (pid 1 belongs to root).
        libc::kill(1, 0);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let pid = std::process::id().to_string();
    for procs in &args.join {
        std::fs::write(procs, &pid).with_context(|| format!("joining {}", procs.display()))?;
    }
    no_core_dumps();
    match args.what {
        What::Exit { code } => std::process::exit(code),
        What::Segv => unsafe {
            std::ptr::null_mut::<u64>().write_volatile(1);
            unreachable!()
        },
        What::Sigkill => {
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!()
        }
        What::Raise { signal } => raise(signal),
        What::Seccomp { action, count, also_failing, as_nobody, threads, sigsys, then_raise } => {
            if as_nobody {
                unsafe {
                    if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                        bail!("cannot switch to uid 65534");
                    }
                }
            }
            if action == Action::Trap {
                set_sigsys(sigsys)?;
            }
            install_filter(action)?;
            run_threads(threads, count)?;
            if action == Action::Trap && sigsys != Sigsys::Handler {
                bail!("survived a TRAP with SIGSYS not handled");
            }
            if also_failing {
                failing_syscalls();
            }
            if action == Action::Trap {
                let traps = TRAPS.load(Ordering::Relaxed);
                if traps != count * u64::from(threads) {
                    bail!("handler saw {traps} traps");
                }
            }
            match then_raise {
                Some(sig) => raise(sig),
                None => Ok(()),
            }
        }
        What::Alloc { mb, hold, chunk_mb } => {
            let chunk = chunk_mb.unwrap_or(mb).clamp(1, mb.max(1));
            let mut held: Vec<Vec<u8>> = Vec::new();
            let mut left = mb;
            while left > 0 {
                let n = chunk.min(left);
                let mut v: Vec<u8> = Vec::with_capacity(n << 20);
                // Touch every page so it is charged.
                for i in (0..(n << 20)).step_by(4096) {
                    v.spare_capacity_mut()[i].write(1);
                }
                unsafe { v.set_len(n << 20) };
                held.push(v);
                left -= n;
            }
            let v = held;
            println!("ready");
            std::io::stdout().flush()?;
            std::thread::sleep(Duration::from_secs(hold));
            std::hint::black_box(&v);
            Ok(())
        }
        What::Spin { secs, hold } => {
            let mut x = 0u64;
            while process_cpu_seconds() < secs {
                for i in 0..10_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
            }
            println!("ready");
            std::io::stdout().flush()?;
            std::thread::sleep(Duration::from_secs(hold));
            Ok(())
        }
        What::Nullsys { count, filter } => {
            if filter {
                install_filter(Action::Errno)?;
            }
            let start = Instant::now();
            for _ in 0..count {
                unsafe { libc::syscall(libc::SYS_getpid) };
            }
            let ns = start.elapsed().as_nanos() as f64 / count as f64;
            println!("{ns:.2}");
            Ok(())
        }
        What::Forks { count, rate } => {
            let start = Instant::now();
            for i in 0..count {
                if rate > 0 {
                    let due = Duration::from_secs_f64(i as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                match unsafe { libc::fork() } {
                    0 => unsafe { libc::_exit(0) },
                    -1 => bail!("fork: {}", std::io::Error::last_os_error()),
                    pid => unsafe {
                        let mut status = 0;
                        libc::waitpid(pid, &mut status, 0);
                    },
                }
            }
            println!("{:.0}", count as f64 / start.elapsed().as_secs_f64());
            Ok(())
        }
        What::Acct { count } => {
            let eperm = (0..count)
                .filter(|_| {
                    let r = unsafe { libc::syscall(libc::SYS_acct, std::ptr::null::<libc::c_char>()) };
                    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
                })
                .count();
            println!("{eperm}");
            Ok(())
        }
        What::UserNotif { threads: Some(threads), release: Some(release), .. } => user_notif_held(threads, &release),
        What::UserNotif { notify, count, .. } => user_notif(notify, count),
        What::Traced { tracer, count } => {
            let stops = traced(tracer, count)?;
            if stops != count {
                bail!("{stops} seccomp stops for {count} calls");
            }
            Ok(())
        }
        What::Complain { logged, denied } => complain(logged, denied),
        What::Exec { command } => {
            let err = std::process::Command::new(&command[0]).args(&command[1..]).exec();
            bail!("exec {}: {err}", command[0])
        }
        What::WaitEof { code } => {
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
            std::process::exit(code)
        }
        What::Ctr(c) => ctr::main(c),
    }
}
