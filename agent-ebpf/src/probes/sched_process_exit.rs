//! `sched:sched_process_exit`: fires for every exiting thread. Cleans up per-thread state, counts
//! a seccomp KILL_THREAD of a non-last thread (it exits with SIGSYS without any signal), and for
//! the thread-group exit counts the process exit and, for the task that started a container (or a
//! PID-namespace init), the container exit, classified by reason.

use agent_common::{
    ExitDedupKey, ExitKey, LifecycleRecord, exit_scope, OomKey, SeccompKey, TaskState, action, config_flags, kabi, lifecycle_record, reason,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::{
    kernel::{self, kconfig},
    maps,
};

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "process_exit";

// Kernels >= 6.16 pass `group_dead` as a second argument; older ones have only the task, and
// a program may not read past a tracepoint's arguments, hence two variants of each. The BTF
// programs can ask for the exiting thread's user registers (the syscall a KILL_THREAD verdict
// stopped); a raw tracepoint cannot and reports the syscall as unknown.

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit_gd_btf(ctx: BtfTracePointContext) -> i32 {
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    crate::diag::report(PROBE, try_sched_process_exit(ctx.arg(0), Some(ctx.arg::<u64>(1)), regs));
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit_btf(ctx: BtfTracePointContext) -> i32 {
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    crate::diag::report(PROBE, try_sched_process_exit(ctx.arg(0), None, regs));
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit_gd_raw(ctx: RawTracePointContext) -> i32 {
    crate::diag::report(PROBE, try_sched_process_exit(ctx.arg(0), Some(ctx.arg::<u64>(1)), 0));
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit_raw(ctx: RawTracePointContext) -> i32 {
    crate::diag::report(PROBE, try_sched_process_exit(ctx.arg(0), None, 0));
    0
}

#[inline(always)]
fn try_sched_process_exit(task: u64, group_dead: Option<u64>, regs: u64) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // The thread group (its tgid and leader's start time: a reused pid is another group).
    let group = kernel::group_key(task)?;
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let flags = kconfig!(flags);
    let mode = kernel::seccomp_mode(task)?;
    let exit_code = kernel::read::<i32>(task, kconfig!(task_exit_code))? as u32;
    let sig = exit_code & 0x7f;

    // signal_generate counted this thread's kill verdict (read before the state is forgotten).
    let kill_counted = mode == kabi::SECCOMP_MODE_DEAD && {
        let state = maps::task_state();
        !state.is_null() && unsafe { (*state).trap_pending } == TaskState::KILL_COUNTED
    };
    if mode == kabi::SECCOMP_MODE_FILTER || mode == kabi::SECCOMP_MODE_DEAD {
        // A thread that dies marked by a verdict hook (killed on the recheck after its tracer)
        // never reaches the return that releases its mark.
        maps::release_mark(maps::task_state());
        maps::forget_task_state(tid);
        let _ = maps::SECCOMP_SYSCALL.remove(tid);
    }
    let group_dead_arg = group_dead;
    let group_dead = is_group_exit(task, &group, group_dead)?;
    // The exit status of the thread group, as wait() reports it. Without `group_dead` the thread
    // that counts the group exit is the first to reach here once `signal->live` is 0, not
    // necessarily the last to exit: a thread killed by KILL_THREAD that the main thread already
    // joined (the kernel wakes the joiner before this tracepoint) can arrive after the main
    // thread's exit, and its own SIGSYS is not the process's status.
    let status = if group_dead && group_dead_arg.is_none() { group_status(task)? } else { exit_code };
    let group_sig = status & 0x7f;
    // A kill verdict that raised no signal (signal_generate did not see it, so SECCOMP_KILLED
    // has no entry): KILL_THREAD of a non-last thread (`do_exit(SIGSYS)`), and on kernels
    // before the signal-based kill (5.10) every kill: KILL_PROCESS is `do_group_exit(SIGSYS)`,
    // which sets the group exit code first. Not a killed thread whose signal was counted: another
    // thread of the group may have counted the group exit, and taken the SECCOMP_KILLED entry,
    // before this one got here (it decremented `signal->live` first but was slower since).
    if mode == kabi::SECCOMP_MODE_DEAD
        && sig == kabi::SIGSYS
        && !kill_counted
        && maps::SECCOMP_KILLED.get_ptr(&group).is_none()
    {
        let signal = kernel::read::<u64>(task, kconfig!(task_signal))?;
        let group_code = kernel::read::<i32>(signal, kconfig!(signal_group_exit_code))? as u32;
        let act = if group_code & 0x7f == kabi::SIGSYS { action::KILL_PROCESS } else { action::KILL_THREAD };
        if act == action::KILL_PROCESS || (group_dead && group_sig == kabi::SIGSYS) {
            // The whole thread group dies of it: its exit is a seccomp_kill. Without group_dead
            // another thread may be counting the group exit on another CPU right now, as a plain
            // SIGSYS: publish the kill first, then move a count already made. The thread counting
            // the exit does the same in the other order (see `seccomp_later` below), and
            // `reclassify_exit`'s delete lets only one of the two move it.
            let _ = maps::SECCOMP_KILLED.insert(&group, 1u32, 0);
            if group_dead_arg.is_none() && maps::reclassify_exit(&group, kabi::SIGSYS, reason::SECCOMP_KILL, PROBE) {
                let _ = maps::SECCOMP_KILLED.remove(&group);
            }
        }
        let nr = if regs != 0 {
            kernel::read::<u64>(regs, kconfig!(pt_regs_syscall_nr)).unwrap_or(u64::MAX) as i32
        } else {
            -1
        };
        maps::count_seccomp(&SeccompKey { cgroup_id, syscall_nr: nr, action: act }, PROBE);
        crate::events::seccomp(cgroup_id, nr, act, -1, PROBE);
    }

    if !group_dead {
        return Ok(());
    }

    let sig = group_sig;
    // Taken whatever the exit: a mark of a process that died of something else first (another
    // thread's exit_group, or a SIGKILL, before its TRAP's SIGSYS was delivered) must not label
    // the next process with its pid.
    let seccomp_killed = maps::SECCOMP_KILLED.remove(&group).is_ok();
    let (why, signal) = if sig == 0 {
        let code = (status >> 8) & 0xff;
        (if code == 0 { reason::SUCCESS } else { reason::ERROR }, 0)
    } else if sig == kabi::SIGSYS && seccomp_killed {
        (reason::SECCOMP_KILL, sig)
    } else if sig == kabi::SIGKILL && flags & config_flags::MARK_VICTIM_HAS_TASK != 0 && is_oom_victim(task)? {
        // Counted as an OOM kill by mark_victim.
        (reason::OOM_KILL, sig)
    } else if sig == kabi::SIGKILL
        && flags & config_flags::MARK_VICTIM_HAS_TASK == 0
        && let Some(key) = oom_kill_at_exit(task, cgroup_id)?
    {
        // mark_victim carries only a pid on this kernel: the OOM kill is counted here.
        maps::count_oom(&key, PROBE);
        crate::events::oom_kill(task, &key, true, PROBE);
        (reason::OOM_KILL, sig)
    } else {
        (reason::SIGNAL, sig)
    };
    let key = ExitKey { cgroup_id, reason: why, signal, container: 0, _pad: 0 };
    maps::count_exit(&key, PROBE);
    let (container_cgroup, scope) = container_exit(task, &group, cgroup_id, why)?;
    let container = scope != exit_scope::PROCESS;
    if container {
        maps::count_exit(&ExitKey { cgroup_id: container_cgroup, container: scope, ..key }, PROBE);
    }
    // Exits worth a look, and every container exit (in the container's cgroup, as its count).
    if crate::events::enabled() && (why != reason::SUCCESS || container) {
        let code = if sig == 0 { ((status >> 8) & 0xff) as i32 } else { -1 };
        let in_cgroup = if container { container_cgroup } else { cgroup_id };
        crate::events::exit(task, in_cgroup, why, code, signal, scope, PROBE);
    }
    // Possibly an OOM victim that exited before the OOM killer marked it, or a seccomp kill
    // whose killed thread reaches this tracepoint after the one counting the group exit: the
    // probe that learns it later looks here (see maps::RECENT_KILLS).
    let oom_later = sig == kabi::SIGKILL && flags & config_flags::MARK_VICTIM_HAS_TASK != 0;
    let seccomp_later = sig == kabi::SIGSYS && group_dead_arg.is_none();
    if why == reason::SIGNAL && (oom_later || seccomp_later) {
        let rec = maps::RecentKill { key, container_cgroup, container: scope, _pad: 0 };
        let _ = maps::RECENT_KILLS.insert(&group, rec, 0);
        // The killed thread may have published its kill after the check above and looked for
        // this record before it was written: then the move is this thread's to make.
        if seccomp_later && maps::SECCOMP_KILLED.remove(&group).is_ok() {
            maps::reclassify_exit(&group, kabi::SIGSYS, reason::SECCOMP_KILL, PROBE);
        }
    }
    Ok(())
}

/// The cgroup in which the exit of `task`'s thread group is a container exit and how
/// (`exit_scope`), or `(0, PROCESS)`. A container's
/// exit is the exit of the task that started it (`sched_process_exec` recorded it, and the
/// container's cgroup, which may not be the one it exits in), whatever its PID namespace
/// (`--pid=host`); for containers whose start the probes did not see (started before them), the
/// exit of a PID namespace's init. Not a PID-namespace init in a container that started while the
/// probes ran with another task (a pod's shared PID namespace): that one's exit is the starter's.
/// Also sends the container's lifetime to the agent.
#[inline(always)]
fn container_exit(task: u64, group: &ExitDedupKey, cgroup_id: u64, reason: u32) -> Result<(u64, u32), i64> {
    let _ = maps::EXEC_SEEN.remove(group);
    if let Some(starter) = unsafe { maps::STARTERS.get(group) }.copied() {
        let _ = maps::STARTERS.remove(group);
        let now = unsafe { bpf_ktime_get_ns() };
        maps::lifecycle_record(
            &LifecycleRecord {
                cgroup_id: starter.cgroup_id,
                duration_ns: now.saturating_sub(starter.start_ns),
                kind: lifecycle_record::EXIT,
                reason,
            },
            PROBE,
        );
        return Ok((starter.cgroup_id, exit_scope::STARTER));
    }
    if !kernel::is_pidns_init(task)? {
        return Ok((0, exit_scope::PROCESS));
    }
    let Some(state) = unsafe { maps::CGROUP_STATE.get(&cgroup_id) }.copied() else {
        // Made before the probes ran: its PID namespace init's exit is the container's.
        return Ok((cgroup_id, exit_scope::PIDNS_INIT));
    };
    if state.started != 0 {
        return Ok((0, exit_scope::PROCESS));
    }
    // Made while the probes ran and nothing started in it: a runtime's init (in a mount namespace
    // of its own, its parent in the runtime's) exiting before it exec'd the entrypoint is a start
    // failure (had it exec'd, it would be the starter), not a container exit.
    let parent = kernel::read::<u64>(task, kconfig!(task_real_parent))?;
    Ok(if crate::probes::sched_process_exec::same_mount_ns(task, parent)? {
        (cgroup_id, exit_scope::PIDNS_INIT)
    } else {
        (0, exit_scope::PROCESS)
    })
}

/// The thread group's exit status: `signal->group_exit_code` after a group exit (`exit_group`,
/// a fatal signal), else the leader's `exit_code`, which is what the parent's wait() reports.
#[inline(always)]
fn group_status(task: u64) -> Result<u32, i64> {
    let signal = kernel::read::<u64>(task, kconfig!(task_signal))?;
    let group_code = kernel::read::<i32>(signal, kconfig!(signal_group_exit_code))? as u32;
    if group_code != 0 {
        return Ok(group_code);
    }
    let leader = kernel::read::<u64>(task, kconfig!(task_group_leader))?;
    Ok(kernel::read::<i32>(leader, kconfig!(task_exit_code))? as u32)
}

/// True for the last thread of the thread group.
#[inline(always)]
fn is_group_exit(task: u64, group: &ExitDedupKey, group_dead: Option<u64>) -> Result<bool, i64> {
    if let Some(group_dead) = group_dead {
        return Ok(group_dead & 0xff != 0);
    }
    // Older kernels: `signal->live` reaches 0 at the last thread, but threads exiting together
    // may all see 0 by the time they reach the tracepoint; count the first one only.
    let signal = kernel::read::<u64>(task, kconfig!(task_signal))?;
    if kernel::read::<i32>(signal, kconfig!(signal_live))? != 0 {
        return Ok(false);
    }
    Ok(maps::EXIT_DEDUP.insert(group, 1u32, aya_ebpf::bindings::BPF_NOEXIST as u64).is_ok())
}

/// The OOM counter key of an exiting OOM victim, on kernels whose `mark_victim` carries only a
/// pid. The `oom_kill_process` kprobe (where kprobes exist) recorded the victim and the limit
/// that fired; that record also catches a victim that exits before the OOM killer marks it
/// (its SIGKILL comes first). Without a record (no kprobes, or a `memory.oom.group` member) the
/// last decision or `unknown` names the limit: the reaper may have freed the memory by now.
#[inline(always)]
fn oom_kill_at_exit(task: u64, cgroup_id: u64) -> Result<Option<OomKey>, i64> {
    if let Ok(group) = kernel::group_key(task)
        && let Some(pending) = unsafe { maps::OOM_PENDING.get(&group) }.copied()
    {
        let _ = maps::OOM_PENDING.remove(&group);
        return Ok(Some(OomKey { cgroup_id, ..pending }));
    }
    if !is_oom_victim(task)? {
        return Ok(None);
    }
    Ok(Some(kernel::oom_key_at_exit(task, cgroup_id)))
}

/// `task->signal->oom_mm` is set by `mark_oom_victim` and never cleared.
#[inline(always)]
fn is_oom_victim(task: u64) -> Result<bool, i64> {
    let signal = kernel::read::<u64>(task, kconfig!(task_signal))?;
    Ok(kernel::read::<u64>(signal, kconfig!(signal_oom_mm))? != 0)
}
