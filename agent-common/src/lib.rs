//! Types shared by the eBPF programs (`agent-ebpf`) and the userspace agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so that both sides agree on the layout; the
//! `const` assertions beside each type catch an accidental change. No `bool`: the BPF side writes
//! plain integers.
#![no_std]

use core::mem::size_of;

/// Seccomp actions as counted by the probes (`SeccompKey::action`).
pub mod action {
    /// The syscall was skipped and returned an error: SECCOMP_RET_ERRNO (and, where no hook
    /// tells them apart, a TRACE without a tracer or a USER_NOTIF the syscall did not run after).
    pub const ERRNO: u32 = 1;
    /// SECCOMP_RET_TRAP: a SIGSYS forced on the caller (a process that does not handle it dies
    /// of it, and its exit is a `reason::SECCOMP_KILL`).
    pub const TRAP: u32 = 2;
    /// SECCOMP_RET_KILL_PROCESS (or KILL_THREAD of the last thread, which the kernel turns into
    /// the same forced SIGSYS).
    pub const KILL_PROCESS: u32 = 3;
    /// SECCOMP_RET_KILL_THREAD of a thread that was not the last one.
    pub const KILL_THREAD: u32 = 4;
    /// SECCOMP_RET_LOG: the syscall ran, logged (complain mode). Counted only where the
    /// `audit_seccomp` hook attaches (fexit or kprobe).
    pub const LOG: u32 = 5;
    /// SECCOMP_RET_TRACE that stopped at a tracer (`ptrace_notify` hook): counted once, whether
    /// the tracer let the syscall run or skipped it.
    pub const TRACE: u32 = 6;
    /// SECCOMP_RET_USER_NOTIF after which the syscall did not run (the supervisor answered with
    /// an error or a value of its own, or the listener was gone): `seccomp_do_user_notification`
    /// hook.
    pub const USER_NOTIF: u32 = 7;
}

/// Why a process (thread group) exited (`ExitKey::reason`).
pub mod reason {
    pub const SUCCESS: u32 = 1;
    pub const ERROR: u32 = 2;
    pub const SIGNAL: u32 = 3;
    pub const OOM_KILL: u32 = 4;
    pub const SECCOMP_KILL: u32 = 5;
}

/// Indexes of the `LOST` per-CPU array: events the probes could not record.
pub mod lost {
    /// The ring buffer was full.
    pub const RINGBUF: u32 = 0;
    /// The seccomp counter map was full.
    pub const SECCOMP_MAP: u32 = 1;
    /// The exit counter map was full.
    pub const EXIT_MAP: u32 = 2;
    /// The OOM counter map was full.
    pub const OOM_MAP: u32 = 3;
    /// The per-task syscall state map refused an insert.
    pub const TASK_MAP: u32 = 4;
    /// The event stream's ring buffer was full (`--events`).
    pub const EVENT_RING: u32 = 5;
    /// The container lifecycle counter map was full.
    pub const LIFECYCLE_MAP: u32 = 6;
    /// The container lifecycle ring buffer was full: a start or container exit counted without
    /// its latency or lifetime.
    pub const LIFECYCLE_RING: u32 = 7;
    pub const COUNT: u32 = 8;
}

/// Kernel ABI constants that BTF does not carry (they are `#define`s).
pub mod kabi {
    /// `SECCOMP_MODE_FILTER`, include/uapi/linux/seccomp.h.
    pub const SECCOMP_MODE_FILTER: i32 = 2;
    /// `SECCOMP_MODE_DEAD`, kernel/seccomp.c: `SECCOMP_MODE_FILTER + 1`, set before a kill action.
    pub const SECCOMP_MODE_DEAD: i32 = 3;
    /// `SYS_SECCOMP`, the si_code of a seccomp SIGSYS, include/uapi/asm-generic/siginfo.h.
    pub const SYS_SECCOMP: i32 = 1;
    pub const SIGKILL: u32 = 9;
    /// Indexes of `mm_struct.rss_stat`, include/linux/mm_types_task.h (an anonymous enum, the
    /// same since 2.6.34).
    pub const MM_FILEPAGES: u32 = 0;
    pub const MM_ANONPAGES: u32 = 1;
    pub const MM_SHMEMPAGES: u32 = 3;
    pub const SIGSYS: u32 = 31;
    /// `SECCOMP_RET_LOG`, include/uapi/linux/seccomp.h: the `code` `audit_seccomp` gets for it.
    pub const SECCOMP_RET_LOG: u32 = 0x7ffc_0000;
    /// The `exit_code` `ptrace_notify` gets for a seccomp TRACE stop: `PTRACE_EVENT_SECCOMP << 8 |
    /// SIGTRAP`, include/uapi/linux/ptrace.h (7) and the SIGTRAP number (5).
    pub const PTRACE_SECCOMP_STOP: i32 = PTRACE_EVENT_SECCOMP << 8 | SIGTRAP;
    pub const PTRACE_EVENT_SECCOMP: i32 = 7;
    pub const SIGTRAP: i32 = 5;
    /// `SIG_DFL` and `SIG_IGN`, the two dispositions that are not handlers (`sa_handler` values),
    /// include/uapi/asm-generic/signal-defs.h.
    pub const SIG_DFL: u64 = 0;
    pub const SIG_IGN: u64 = 1;
}

/// Flags in `KernelConfig::flags`, chosen by the loader from BTF.
pub mod config_flags {
    /// `oom:mark_victim` passes the victim's `task_struct *` (kernels >= 6.8); otherwise OOM kills
    /// are counted at the victim's exit.
    pub const MARK_VICTIM_HAS_TASK: u32 = 1 << 0;
    /// `sched:sched_process_exit` passes `group_dead` (kernels >= 6.16); otherwise the thread-group
    /// exit is found from `signal->live` with a de-duplication map.
    pub const EXIT_HAS_GROUP_DEAD: u32 = 1 << 1;
    /// BTF had the memory cgroup offsets (`KernelConfig::memcg_*`): the OOM probe tells which
    /// limit fired.
    pub const HAS_MEMCG: u32 = 1 << 2;
    /// The memory controller is mounted on cgroup v1 (hybrid host): its mem+swap counter can
    /// fire too, and its cgroup ids are v1 ids.
    pub const MEMCG_V1: u32 = 1 << 3;
    /// BTF had `oom_control.chosen` and `.memcg` (`KernelConfig::oom_control_*`): a kprobe on
    /// `oom_kill_process` can tell the victim and the limit that fired.
    pub const HAS_OOM_CONTROL: u32 = 1 << 4;
    /// BTF had the offsets of a task's resident-memory counters (`KernelConfig::mm_*`): OOM kill
    /// events carry the victim's anon / file / shmem RSS.
    pub const HAS_RSS: u32 = 1 << 5;
    /// Tracing programs may use task local storage (kernels >= 5.12): the per-thread syscall
    /// state lives in the task (`TASK_STATE`) instead of a hash map by thread id (`TASKS`).
    pub const HAS_TASK_STORAGE: u32 = 1 << 6;
}

/// Which memory limit an OOM kill enforced (`OomKey::limit`).
pub mod oom_limit {
    /// Not known: the kernel's tracepoint gave no victim task, or no memory cgroup offsets.
    pub const UNKNOWN: u32 = 0;
    /// The victim's own memory cgroup's limit.
    pub const OWN: u32 = 1;
    /// The limit of a memory cgroup above the victim's (a pod or a slice).
    pub const ANCESTOR: u32 = 2;
    /// No cgroup at its limit: a global (host) OOM.
    pub const HOST: u32 = 3;
}

/// Kernel structure offsets, read from BTF by the loader and set as the global `KCONFIG` before
/// the programs load. All offsets are in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// `task_struct.seccomp.mode`.
    pub task_seccomp_mode: u32,
    /// `task_struct.exit_code`.
    pub task_exit_code: u32,
    /// `task_struct.signal`.
    pub task_signal: u32,
    /// `task_struct.thread_pid`.
    pub task_thread_pid: u32,
    /// `task_struct.cgroups`.
    pub task_cgroups: u32,
    /// `task_struct.group_leader`.
    pub task_group_leader: u32,
    /// `task_struct.start_time`.
    pub task_start_time: u32,
    /// `signal_struct.live` (an `atomic_t`).
    pub signal_live: u32,
    /// `signal_struct.oom_mm`.
    pub signal_oom_mm: u32,
    /// `signal_struct.group_exit_code`.
    pub signal_group_exit_code: u32,
    /// `struct pid.level`.
    pub pid_level: u32,
    /// `struct pid.numbers`.
    pub pid_numbers: u32,
    /// `sizeof(struct upid)`.
    pub upid_size: u32,
    /// `struct upid.nr`.
    pub upid_nr: u32,
    /// `css_set.dfl_cgrp`.
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn`.
    pub cgroup_kn: u32,
    /// `cgroup.root`.
    pub cgroup_root: u32,
    /// `cgroup_root.hierarchy_id`.
    pub cgroup_root_hierarchy_id: u32,
    /// `kernfs_node.id`.
    pub kernfs_node_id: u32,
    /// The syscall number's field in `struct pt_regs`: `orig_ax` on x86_64, `syscallno` on arm64.
    pub pt_regs_syscall_nr: u32,
    /// `kernel_siginfo.si_code`.
    pub siginfo_code: u32,
    /// `kernel_siginfo._sifields._sigsys._syscall`.
    pub siginfo_syscall: u32,
    /// `css_set.subsys[memory_cgrp_id]`.
    pub css_set_memcg: u32,
    /// `cgroup_subsys_state.parent`.
    pub css_parent: u32,
    /// `cgroup_subsys_state.cgroup`.
    pub css_cgroup: u32,
    /// `mem_cgroup.css`.
    pub memcg_css: u32,
    /// `mem_cgroup.memory.usage` (pages).
    pub memcg_memory_usage: u32,
    /// `mem_cgroup.memory.max` (pages).
    pub memcg_memory_max: u32,
    /// `mem_cgroup.memsw.usage` (v1 mem+swap; the v2 `swap` counter shares the union).
    pub memcg_memsw_usage: u32,
    /// `mem_cgroup.memsw.max`.
    pub memcg_memsw_max: u32,
    /// Number of parameters of `__seccomp_filter` (its return value follows them in an fexit
    /// context); 0 when BTF does not have the function.
    pub seccomp_filter_args: u32,
    /// Index of `__seccomp_filter`'s `recheck_after_trace` parameter, found by name in BTF (its
    /// position changed in 6.15); 0 when BTF names none (parameter 0 is always the syscall).
    pub seccomp_filter_recheck_arg: u32,
    /// Offset in `struct pt_regs` of the register that passes that parameter (the kprobe reads
    /// it there); 0 when not known.
    pub seccomp_recheck_reg: u32,
    /// `oom_control.chosen`, the victim.
    pub oom_control_chosen: u32,
    /// `oom_control.memcg`, the memory cgroup whose limit fired (NULL for a global OOM).
    pub oom_control_memcg: u32,
    /// `task_struct.comm`.
    pub task_comm: u32,
    /// `task_struct.real_parent`.
    pub task_real_parent: u32,
    /// `task_struct.pid` (the thread id).
    pub task_pid: u32,
    /// `task_struct.tgid` (the process id).
    pub task_tgid: u32,
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `mm_struct.rss_stat`: an array of counters (`percpu_counter` from 6.2, `atomic_long_t`
    /// before), `mm_rss_stride` bytes apart, each value (in pages) at `mm_rss_count`.
    pub mm_rss_stat: u32,
    pub mm_rss_stride: u32,
    pub mm_rss_count: u32,
    /// `task_struct.nsproxy`.
    pub task_nsproxy: u32,
    /// `nsproxy.mnt_ns`.
    pub nsproxy_mnt_ns: u32,
    /// `task_struct.sighand`.
    pub task_sighand: u32,
    /// `task_struct.blocked` (a `sigset_t`: bit `n - 1` of its first word is signal `n`).
    pub task_blocked: u32,
    /// `sighand_struct.action`, an array of `struct k_sigaction` indexed by signal number - 1.
    pub sighand_action: u32,
    /// `sizeof(struct k_sigaction)`, the stride of `sighand_struct.action`.
    pub k_sigaction_size: u32,
    /// `k_sigaction.sa.sa_handler`.
    pub k_sigaction_handler: u32,
    /// `linux_binprm.filename`, the exec'd path (`sched_process_exec`'s third argument).
    pub binprm_filename: u32,
    /// `config_flags::*`.
    pub flags: u32,
}
const _: () = assert!(size_of::<KernelConfig>() == 208);

/// Key of the per-CPU OOM kill counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OomKey {
    /// cgroup v2 id of the victim.
    pub cgroup_id: u64,
    /// Kernfs id of the memory cgroup whose limit fired (a v1 id on hybrid hosts); 0 for
    /// `oom_limit::HOST` and `UNKNOWN`.
    pub limit_cgroup_id: u64,
    /// `oom_limit::*`.
    pub limit: u32,
    /// How many memory cgroup levels above the victim's the limit fired (0 for `OWN`).
    pub levels_up: u32,
}
const _: () = assert!(size_of::<OomKey>() == 24);

/// Key of the per-CPU seccomp violation counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeccompKey {
    /// cgroup v2 id (inode of the cgroup directory).
    pub cgroup_id: u64,
    /// Syscall number (the native table: x86_64 or arm64); negative when unknown.
    pub syscall_nr: i32,
    /// `action::*`.
    pub action: u32,
}
const _: () = assert!(size_of::<SeccompKey>() == 16);

/// Key of the exit counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExitKey {
    pub cgroup_id: u64,
    /// `reason::*`.
    pub reason: u32,
    /// Signal number for `reason::SIGNAL` (and the killing signal for OOM / seccomp), else 0.
    pub signal: u32,
    /// `exit_scope::*`: 0 for a process exit, else how it is a container exit.
    pub container: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ExitKey>() == 24);

/// How an exit is a container exit (`ExitKey::container`, `Event::container`).
pub mod exit_scope {
    /// A process exit (not a container's).
    pub const PROCESS: u32 = 0;
    /// The exit of a PID namespace's init, in a cgroup whose start the probes did not see.
    pub const PIDNS_INIT: u32 = 1;
    /// The exit of the task that started the container. Any cgroup may have such a "start" (a
    /// systemd unit with `PrivateTmp=` execs from PID 1 in a mount namespace of its own): the
    /// agent shows it as a container exit only for a container's own cgroup.
    pub const STARTER: u32 = 2;
}

/// Per-thread syscall state for tasks under a seccomp filter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskState {
    /// 1 between `sys_enter` and `sys_exit`.
    pub in_syscall: u32,
    /// 1 when a seccomp TRAP was counted for the syscall now being skipped; `KILL_COUNTED` once
    /// `signal_generate` counted a KILL verdict of the thread (dead by then: none of its syscalls
    /// returns, so no hook takes it for a pending TRAP).
    pub trap_pending: u32,
    /// What the fast path's verdict hooks saw during the current `__seccomp_filter` call:
    /// `TRACE_STOPPED`, `TRACE_RECHECK` or `USER_NOTIF_PENDING`; 0 otherwise.
    pub verdict: u32,
}
const _: () = assert!(size_of::<TaskState>() == 12);

impl TaskState {
    /// `trap_pending` of a thread whose KILL verdict was counted from its SIGSYS: its exit must
    /// not count the kill again.
    pub const KILL_COUNTED: u32 = 2;
    /// `verdict` of a thread that stopped at its tracer for a TRACE verdict: the return of the
    /// outer `__seccomp_filter` counts it as a TRACE, whatever the tracer did.
    pub const TRACE_STOPPED: u32 = 1;
    /// `verdict` while the kprobe pair is inside the recheck after the tracer (the nested
    /// `__seccomp_filter` call, which the kretprobe cannot tell apart by itself).
    pub const TRACE_RECHECK: u32 = 2;
    /// `verdict` of a thread in a USER_NOTIF verdict: the return of `__seccomp_filter` counts it
    /// as USER_NOTIF where the syscall is skipped (-1), not ERRNO, and nothing where it runs.
    pub const USER_NOTIF_PENDING: u32 = 3;
}

/// Key of the thread-group exit de-duplication map (kernels without `group_dead`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitDedupKey {
    pub leader_start_time: u64,
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ExitDedupKey>() == 16);

/// What a lifecycle counter counts (`LifecycleKey::kind`).
pub mod lifecycle {
    /// The first exec in a container cgroup instance by a task whose parent is outside it.
    pub const START: u32 = 1;
    /// A later first exec of a task whose parent is outside the cgroup (`docker exec`).
    pub const EXEC_SESSION: u32 = 2;
    /// The cgroup was removed before any start in it.
    pub const START_FAILURE: u32 = 3;
}

/// Key of the per-CPU container lifecycle counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LifecycleKey {
    pub cgroup_id: u64,
    /// `lifecycle::*`.
    pub kind: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<LifecycleKey>() == 16);

/// Per cgroup instance (by cgroup id): when it was made and whether it started.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupState {
    /// `bpf_ktime_get_ns` at its `cgroup_mkdir`.
    pub mkdir_ns: u64,
    /// `bpf_ktime_get_ns` at its start; 0 before.
    pub start_ns: u64,
    /// 1 once started.
    pub started: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CgroupState>() == 24);

/// Kinds of `LifecycleRecord`.
pub mod lifecycle_record {
    /// A container start: `duration_ns` from the cgroup's mkdir to the entrypoint's exec.
    pub const START: u32 = 1;
    /// The exit of the task that started a container: `duration_ns` from its start (the
    /// container's lifetime), `reason` its exit reason.
    pub const EXIT: u32 = 2;
    /// The last container exit of `cgroup_id` was reclassified (a kill learnt after the exit was
    /// counted) to `reason`.
    pub const RECLASSIFY: u32 = 3;
}

/// A container start or exit, for the agent's start latency and lifetime histograms.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifecycleRecord {
    /// The container's cgroup (where it started).
    pub cgroup_id: u64,
    pub duration_ns: u64,
    /// `lifecycle_record::*`.
    pub kind: u32,
    /// `reason::*` for EXIT and RECLASSIFY; 0 for START.
    pub reason: u32,
}
const _: () = assert!(size_of::<LifecycleRecord>() == 24);

/// The task that started a container (by `ExitDedupKey`), until it exits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Starter {
    /// The container's cgroup.
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns` at the start.
    pub start_ns: u64,
}
const _: () = assert!(size_of::<Starter>() == 16);

/// Kinds of records on the event stream (`Event::kind`, `EventKey::kind`).
pub mod event_kind {
    pub const SECCOMP: u32 = 1;
    pub const OOM_KILL: u32 = 2;
    pub const EXIT: u32 = 3;
    /// A container start (`lifecycle::START`), with its latency in `Event::duration_ns`.
    pub const CONTAINER_START: u32 = 4;
    /// An exec session (`lifecycle::EXEC_SESSION`): an `ExecEvent`, the exec'd path after the
    /// `Event`.
    pub const EXEC_SESSION: u32 = 5;
}

/// The event stream's settings, the global `EVENTS_CONFIG` set by the loader: `rate` events a
/// second per cgroup and kind, bursts of up to `burst`; `rate` 0 turns the stream off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventsConfig {
    pub rate: u32,
    pub burst: u32,
}
const _: () = assert!(size_of::<EventsConfig>() == 8);

/// Key of the event stream's token buckets and suppression counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey {
    pub cgroup_id: u64,
    /// `event_kind::*`.
    pub kind: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<EventKey>() == 16);

/// A token bucket of the event stream (milli-tokens, refilled from `last_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBucket {
    pub tokens_milli: u64,
    pub last_ns: u64,
    /// Events suppressed since the last one written (the next one says so).
    pub suppressed: u64,
}
const _: () = assert!(size_of::<EventBucket>() == 24);

/// "Not known" in an `Event`'s integer fields (a kernel that does not tell).
pub const EVENT_UNKNOWN: u64 = u64::MAX;

/// One record of the event stream. Fields a kind does not use are 0; fields the kernel could
/// not tell are `EVENT_UNKNOWN` (or -1 for the signed ones).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when it happened.
    pub time_ns: u64,
    pub cgroup_id: u64,
    /// The memory cgroup whose limit fired (OOM kills).
    pub limit_cgroup_id: u64,
    /// Exits: how long the process (or container) ran. Container starts: the start latency, from
    /// the cgroup's mkdir to the entrypoint's exec.
    pub duration_ns: u64,
    /// Resident memory of an OOM victim, in pages: anonymous, file, shared memory.
    pub rss_anon: u64,
    pub rss_file: u64,
    pub rss_shmem: u64,
    /// Events of this cgroup and kind suppressed by the rate limit since the last one written.
    pub suppressed: u64,
    /// `event_kind::*`.
    pub kind: u32,
    /// Process id (thread group) and thread id, as the host's PID namespace sees them.
    pub pid: u32,
    pub tid: u32,
    pub syscall_nr: i32,
    /// `action::*` (seccomp).
    pub action: u32,
    /// The errno an ERRNO verdict returned; -1 when not known.
    pub errno: i32,
    /// `reason::*` (exits).
    pub reason: u32,
    /// The exit status's code (`exit(N)`), for exits not by a signal.
    pub exit_code: i32,
    /// The killing signal, for exits by a signal.
    pub signal: u32,
    /// `exit_scope::*`: a container exit (the exit of the task that started the container, or of
    /// a PID-namespace init when its start was not seen), or 0.
    pub container: u32,
    /// `oom_limit::*` and how many memory cgroup levels above the victim's it fired.
    pub limit: u32,
    pub levels_up: u32,
    pub comm: [u8; 16],
    pub parent_comm: [u8; 16],
}
const _: () = assert!(size_of::<Event>() == 8 * 8 + 12 * 4 + 32);

/// Bytes of the exec'd path an `ExecEvent` carries, with its NUL: longer paths are cut to 255
/// bytes and marked. Only exec sessions carry a path, so only their records grow (408 bytes
/// against an `Event`'s 144); at 256, the default burst of 1,000 exec sessions of one cgroup
/// takes 0.4 MiB of the 1 MiB `EVENT_RING`, where `PATH_MAX` (4096) would need 4 MiB and crowd
/// every other kind out. Exec'd paths are short (`/bin/sh`, `/usr/local/bin/app`).
pub const EXEC_PATH_MAX: usize = 256;

/// A record of the event stream that names an exec'd file (`event_kind::EXEC_SESSION`): an
/// `Event` first (read alike by the agent, which tells the two apart by `Event::kind`), then the
/// path as the exec asked for it (`linux_binprm.filename`: relative stays relative, `/dev/fd/N`
/// for fexecve, a script's own path rather than its interpreter's).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub event: Event,
    /// Bytes of the path in `path`, without its NUL; 0 when the path could not be read.
    pub path_len: u32,
    /// 1 when the path is longer than `path` holds (cut to its first `EXEC_PATH_MAX - 1` bytes).
    pub path_truncated: u32,
    pub path: [u8; EXEC_PATH_MAX],
}
const _: () = assert!(size_of::<ExecEvent>() == size_of::<Event>() + 8 + EXEC_PATH_MAX);

/// Longest cgroup path carried by a `CgroupEvent`; a longer one is resolved by a rescan.
pub const CGROUP_PATH_MAX: usize = 512;

pub mod cgroup_event {
    pub const MKDIR: u32 = 1;
    pub const RMDIR: u32 = 2;
    /// The removal of a cgroup made while the probes ran in which nothing started (no exec by a
    /// task from outside it): a start failure if it is a container's cgroup.
    pub const RMDIR_NOT_STARTED: u32 = 3;
}

/// Ring-buffer record for cgroup v2 creation and removal, so that the agent can name a cgroup
/// that lived for less than a rescan interval.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupEvent {
    pub id: u64,
    /// `cgroup_event::*`.
    pub kind: u32,
    /// Bytes of `path` used, including the NUL; 0 when the path could not be read.
    pub path_len: u32,
    pub path: [u8; CGROUP_PATH_MAX],
}
const _: () = assert!(size_of::<CgroupEvent>() == 16 + CGROUP_PATH_MAX);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and have explicit padding.
    unsafe impl aya::Pod for KernelConfig {}
    unsafe impl aya::Pod for SeccompKey {}
    unsafe impl aya::Pod for OomKey {}
    unsafe impl aya::Pod for ExitKey {}
    unsafe impl aya::Pod for TaskState {}
    unsafe impl aya::Pod for ExitDedupKey {}
    unsafe impl aya::Pod for CgroupEvent {}
    unsafe impl aya::Pod for EventsConfig {}
    unsafe impl aya::Pod for EventKey {}
    unsafe impl aya::Pod for EventBucket {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for ExecEvent {}
    unsafe impl aya::Pod for LifecycleKey {}
    unsafe impl aya::Pod for CgroupState {}
    unsafe impl aya::Pod for LifecycleRecord {}
    unsafe impl aya::Pod for Starter {}
}
