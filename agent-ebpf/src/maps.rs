//! Maps shared by the probes. Counters are per-CPU hashes: no atomics on the hot path, and
//! userspace sums the CPUs at scrape time. The loader may resize the counter maps (`--max-cgroups`).

use agent_common::{
    CgroupState, ExitDedupKey, ExitKey, LifecycleKey, LifecycleRecord, OomKey, SeccompKey, Starter, TaskState,
    config_flags, lifecycle_record, lost,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_current_task_btf},
    macros::{btf_map, map},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};

use crate::{kernel::kconfig, task_storage::TaskStorage};

/// Syscall state of threads under a seccomp filter, in the task itself (kernels with
/// `HAS_TASK_STORAGE`; on older ones the loader puts a placeholder map here and the programs use
/// `TASKS`). Use [`task_state`] and [`new_task_state`].
#[btf_map]
pub static TASK_STATE: TaskStorage<TaskState> = TaskStorage::new();

/// Syscall state of threads under a seccomp filter, by thread id (kernels without task storage
/// for tracing programs).
#[map]
pub static TASKS: LruHashMap<u32, TaskState> = LruHashMap::with_max_entries(32768, 0);

/// Whether the per-thread state lives in task storage: a constant of the load, so the verifier
/// keeps only one of the two paths below.
#[inline(always)]
fn in_task_storage() -> bool {
    kconfig!(flags) & config_flags::HAS_TASK_STORAGE != 0
}

/// The current thread's syscall state, or null when it has none yet.
#[inline(always)]
pub fn task_state() -> *mut TaskState {
    if in_task_storage() {
        TASK_STATE.get(unsafe { bpf_get_current_task_btf() })
    } else {
        TASKS.get_ptr_mut(bpf_get_current_pid_tgid() as u32).unwrap_or(core::ptr::null_mut())
    }
}

/// Gives the current thread the syscall state `init` (counted as lost, a task-map loss, when it
/// cannot be stored).
#[inline(always)]
pub fn new_task_state(init: TaskState, probe: &'static str) {
    let stored = if in_task_storage() {
        !TASK_STATE.get_or_insert(unsafe { bpf_get_current_task_btf() }, &init).is_null()
    } else {
        TASKS.insert(bpf_get_current_pid_tgid() as u32, init, 0).is_ok()
    };
    if !stored {
        count_lost(lost::TASK_MAP, 0, probe);
    }
}

/// Forgets an exiting thread's syscall state (task storage is freed with the task by itself).
#[inline(always)]
pub fn forget_task_state(tid: u32) {
    if !in_task_storage() {
        let _ = TASKS.remove(tid);
    }
}

/// Syscall number passed to `__seccomp_filter`, by thread, for the kretprobe (the fast path
/// where fexit cannot attach).
#[map]
pub static SECCOMP_SYSCALL: LruHashMap<u32, i32> = LruHashMap::with_max_entries(32768, 0);

/// Seccomp violations; per-CPU because a violation storm hits it from every CPU.
#[map]
pub static SECCOMP_COUNTS: PerCpuHashMap<SeccompKey, u64> =
    PerCpuHashMap::with_max_entries(8192, 0);

/// Thread groups killed by a seccomp KILL action, or by the SIGSYS of a TRAP they do not handle,
/// by thread group (`ExitDedupKey`: a reused pid is another key), until their exit is counted.
#[map]
pub static SECCOMP_KILLED: LruHashMap<ExitDedupKey, u32> = LruHashMap::with_max_entries(4096, 0);

/// Process and container exits.
#[map]
pub static EXIT_COUNTS: PerCpuHashMap<ExitKey, u64> = PerCpuHashMap::with_max_entries(8192, 0);

/// OOM kills by the victim's cgroup v2 id and the limit that fired.
#[map]
pub static OOM_COUNTS: PerCpuHashMap<OomKey, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// A process exit counted as a plain SIGKILL or SIGSYS, kept briefly, for a probe that learns
/// the real cause later: the OOM killer sends SIGKILL before it marks the victim, so a victim that
/// was asleep can exit before `mark_victim` fires; and where a seccomp kill raises no signal
/// (< 5.17) another thread of the group can reach the exit tracepoint before the killed one.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RecentKill {
    pub key: ExitKey,
    /// The cgroup the exit was also counted in as a container exit (the container's, where it
    /// started); 0 when it was not a container exit.
    pub container_cgroup: u64,
    /// `exit_scope::*` of that container exit.
    pub container: u32,
    pub _pad: u32,
}

#[map]
pub static RECENT_KILLS: LruHashMap<ExitDedupKey, RecentKill> = LruHashMap::with_max_entries(1024, 0);

/// Moves the exit recorded for `group` with `signal` to `reason`, if there is one. The entry's
/// removal decides: of two threads trying at once (on two CPUs), only the one whose delete
/// succeeds moves the count, so a count is never moved twice.
#[inline(always)]
pub fn reclassify_exit(group: &ExitDedupKey, signal: u32, reason: u32, probe: &'static str) -> bool {
    let Some(rec) = (unsafe { RECENT_KILLS.get(group) }).copied() else { return false };
    if rec.key.signal != signal || RECENT_KILLS.remove(group).is_err() {
        return false;
    }
    let moved = ExitKey { reason, ..rec.key };
    uncount_exit(&rec.key, probe);
    count_exit(&moved, probe);
    if rec.container_cgroup != 0 {
        let ctr = ExitKey { cgroup_id: rec.container_cgroup, container: rec.container, ..rec.key };
        uncount_exit(&ctr, probe);
        count_exit(&ExitKey { reason, ..ctr }, probe);
        lifecycle_record(
            &LifecycleRecord { cgroup_id: rec.container_cgroup, duration_ns: 0, kind: lifecycle_record::RECLASSIFY, reason },
            probe,
        );
    }
    true
}

/// The last memory cgroup OOM decision (see `kernel::oom_key`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastOom {
    /// `cgroup_subsys_state *` of the memory cgroup whose limit fired.
    /// 0 for a global OOM (recorded only by the `oom_kill_process` kprobe).
    pub css: u64,
    /// 0 until the first decision.
    pub time_ns: u64,
}

#[map]
pub static LAST_OOM: Array<LastOom> = Array::with_max_entries(1, 0);

/// OOM kills decided by `oom_kill_process` (kprobe), by the victim's thread group, until the
/// victim's exit counts them: on kernels whose `mark_victim` carries only a pid, the only place
/// that knows which limit fired. Also catches a victim that exits before it is marked.
#[map]
pub static OOM_PENDING: LruHashMap<ExitDedupKey, OomKey> = LruHashMap::with_max_entries(1024, 0);

/// Thread groups whose exit was counted, on kernels whose exit tracepoint lacks `group_dead`.
#[map]
pub static EXIT_DEDUP: LruHashMap<ExitDedupKey, u32> = LruHashMap::with_max_entries(4096, 0);

/// Container lifecycle counts: starts, exec sessions, start failures (`LifecycleKey`).
#[map]
pub static LIFECYCLE_COUNTS: PerCpuHashMap<LifecycleKey, u64> = PerCpuHashMap::with_max_entries(8192, 0);

/// Every cgroup v2 instance made while the probes run, by cgroup id, until its rmdir: when it was
/// made and whether it started. The loader sizes it from `--max-cgroups`.
#[map]
pub static CGROUP_STATE: LruHashMap<u64, CgroupState> = LruHashMap::with_max_entries(8192, 0);

/// Thread groups whose exec was counted as a start or an exec session: their later execs are not.
#[map]
pub static EXEC_SEEN: LruHashMap<ExitDedupKey, u32> = LruHashMap::with_max_entries(4096, 0);

/// Tasks that started a container (`Starter`), until their exit: the container's exit and
/// lifetime. The loader sizes it as `CGROUP_STATE`.
#[map]
pub static STARTERS: LruHashMap<ExitDedupKey, Starter> = LruHashMap::with_max_entries(8192, 0);

/// Container starts and exits (`LifecycleRecord`), for the agent's start latency and lifetime
/// histograms.
#[map]
pub static LIFECYCLE_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Sends a lifecycle record to the agent (counted as lost when the ring is full).
#[inline(always)]
pub fn lifecycle_record(record: &LifecycleRecord, probe: &'static str) {
    if LIFECYCLE_EVENTS.output::<LifecycleRecord>(record, 0).is_err() {
        count_lost(lost::LIFECYCLE_RING, record.cgroup_id, probe);
    }
}

/// cgroup creation / removal records (`CgroupEvent`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Events that could not be recorded, by `lost::*` index.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::COUNT, 0);

/// Counts an event `probe` could not record (and logs it: `diag`).
#[inline(always)]
pub fn count_lost(index: u32, cgroup_id: u64, probe: &'static str) {
    if let Some(p) = LOST.get_ptr_mut(index) {
        unsafe { *p += 1 };
    }
    crate::diag::lost(index, cgroup_id, probe);
}

/// Adds `delta` (wrapping: `u64::MAX` takes one back) to this CPU's slot of a per-CPU counter,
/// creating it when missing.
#[inline(always)]
pub(crate) fn add<K>(map: &PerCpuHashMap<K, u64>, key: &K, delta: u64, lost: (u32, u64, &'static str)) {
    if let Some(p) = map.get_ptr_mut(key) {
        unsafe { *p = (*p).wrapping_add(delta) };
        return;
    }
    // Another CPU may have created the key meanwhile: NOEXIST fails then, and the lookup finds it.
    if map.insert(key, delta, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    match map.get_ptr_mut(key) {
        Some(p) => unsafe { *p = (*p).wrapping_add(delta) },
        None => count_lost(lost.0, lost.1, lost.2),
    }
}

/// Adds one to a per-CPU counter.
/// Counts an event the stream's rate limit suppressed (a full map loses the count as an
/// event-ring loss).
#[inline(always)]
pub fn add_suppressed(key: &agent_common::EventKey) {
    add(&crate::events::EVENTS_SUPPRESSED, key, 1, (lost::EVENT_RING, key.cgroup_id, "events"));
}

#[inline(always)]
pub fn count_seccomp(key: &SeccompKey, probe: &'static str) {
    add(&SECCOMP_COUNTS, key, 1, (lost::SECCOMP_MAP, key.cgroup_id, probe));
}

#[inline(always)]
pub fn count_exit(key: &ExitKey, probe: &'static str) {
    add(&EXIT_COUNTS, key, 1, (lost::EXIT_MAP, key.cgroup_id, probe));
}

/// Takes one back from an exit counter: this CPU's slot wraps below zero, and userspace sums
/// the slots with wrapping addition.
#[inline(always)]
pub fn uncount_exit(key: &ExitKey, probe: &'static str) {
    add(&EXIT_COUNTS, key, u64::MAX, (lost::EXIT_MAP, key.cgroup_id, probe));
}

#[inline(always)]
pub fn count_lifecycle(key: &LifecycleKey, probe: &'static str) {
    add(&LIFECYCLE_COUNTS, key, 1, (lost::LIFECYCLE_MAP, key.cgroup_id, probe));
}

#[inline(always)]
pub fn count_oom(key: &OomKey, probe: &'static str) {
    add(&OOM_COUNTS, key, 1, (lost::OOM_MAP, key.cgroup_id, probe));
}

/// Threads now marked by a verdict hook (`TaskState::verdict` not 0: stopped at a tracer, or
/// waiting for a USER_NOTIF supervisor), all CPUs together: while it is 0, an allowed syscall's
/// return from `__seccomp_filter` costs no per-thread lookup. Changed with atomic adds only (no
/// fetch: 5.10 has none).
#[map]
pub static SECCOMP_TRACING: Array<u64> = Array::with_max_entries(1, 0);

/// Marks the thread whose state is `state` (null: none yet, made) with `verdict`, counting it in
/// `SECCOMP_TRACING` unless it was marked already.
#[inline(always)]
pub fn mark(state: *mut TaskState, verdict: u32, probe: &'static str) {
    if state.is_null() {
        new_task_state(TaskState { in_syscall: 0, trap_pending: 0, verdict }, probe);
        if task_state().is_null() {
            return;
        }
    } else {
        let st = unsafe { &mut *state };
        let was = st.verdict;
        st.verdict = verdict;
        if was != 0 {
            return;
        }
    }
    add_tracing(1);
}

/// Clears the mark of the thread whose state is `state`, if it has one.
#[inline(always)]
pub fn release_mark(state: *mut TaskState) {
    if !state.is_null() {
        let st = unsafe { &mut *state };
        if st.verdict != 0 {
            st.verdict = 0;
            add_tracing(u64::MAX);
        }
    }
}

/// Whether some thread may be inside a traced seccomp verdict.
#[inline(always)]
pub fn tracing_pending() -> bool {
    SECCOMP_TRACING.get(0).is_some_and(|n| unsafe { core::ptr::read_volatile(n) } != 0)
}

/// Adds `delta` (1, or `u64::MAX` for -1) to `SECCOMP_TRACING`, atomically: the thread may stop
/// on one CPU and go on on another.
#[inline(always)]
pub fn add_tracing(delta: u64) {
    if let Some(n) = SECCOMP_TRACING.get_ptr_mut(0) {
        // BPF_XADD (an atomic add without fetch, which every kernel has): Rust's bpf target
        // offers no atomic read-modify-write.
        unsafe { core::arch::asm!("lock *(u64 *)({n} + 0) += {d}", n = in(reg) n, d = in(reg) delta) };
    }
}
