//! `sched:sched_process_exec`: container starts and exec sessions (docs/lifecycle.md). A start is
//! the first exec in a cgroup instance whose creation `cgroup_mkdir` recorded (`CGROUP_STATE`),
//! by a task whose real parent is in another cgroup and another mount namespace; later first
//! execs of such tasks are exec sessions. The starting task is remembered (`STARTERS`): its exit
//! is the container's exit. Every other exec costs one hash lookup. With `--events`, each start
//! and exec session is an event too (`container_start`, `exec_session` with the exec'd path).
//!
//! The mount namespace leaves out the runtime's own execs once its init is in the cgroup: runc
//! 1.1's `runc init` re-execs itself from a sealed copy (`/proc/self/exe`, then `/dev/fd/N`)
//! racing with its move into the cgroup, before it unshares anything.

use agent_common::{CgroupState, LifecycleKey, LifecycleRecord, Starter, cgroup_event, lifecycle, lifecycle_record};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::{
    kernel::{self, kconfig},
    maps,
};

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "process_exec";

// Both get (struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm).
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec_btf(ctx: BtfTracePointContext) -> i32 {
    crate::diag::report(PROBE, try_sched_process_exec(ctx.arg(0), ctx.arg(2)));
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec_raw(ctx: RawTracePointContext) -> i32 {
    crate::diag::report(PROBE, try_sched_process_exec(ctx.arg(0), ctx.arg(2)));
    0
}

#[inline(always)]
fn try_sched_process_exec(task: u64, bprm: u64) -> Result<(), i64> {
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // The hash lookup every exec pays; the rest only in a cgroup made while the probes ran.
    if unsafe { maps::CGROUP_STATE.get(&cgroup_id) }.is_none() {
        return Ok(());
    }
    let parent = kernel::read::<u64>(task, kconfig!(task_real_parent))?;
    if kernel::task_cgroup_id(parent)? == cgroup_id || same_mount_ns(task, parent)? {
        return Ok(());
    }
    // Only a task's first exec here counts (an entrypoint `sh -c '...; exec server'` is one start).
    let group = kernel::group_key(task)?;
    if maps::EXEC_SEEN.insert(&group, &1u32, BPF_NOEXIST as u64).is_err() {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // Looked up again after the helper calls above: an LRU map may have recycled the entry since.
    let Some(state) = maps::CGROUP_STATE.get_ptr_mut(&cgroup_id) else {
        return Ok(());
    };
    let (kind, mkdir_ns) = unsafe {
        if (*state).started == 0 {
            (*state).started = 1;
            (*state).start_ns = now;
            (lifecycle::START, (*state).mkdir_ns)
        } else {
            (lifecycle::EXEC_SESSION, 0)
        }
    };
    maps::count_lifecycle(&LifecycleKey { cgroup_id, kind, _pad: 0 }, PROBE);
    if kind == lifecycle::START {
        // Its exit is the container's exit (`sched_process_exit`), however deep its PID namespace.
        let _ = maps::STARTERS.insert(&group, &Starter { cgroup_id, start_ns: now }, 0);
        let latency = now.saturating_sub(mkdir_ns);
        maps::lifecycle_record(&LifecycleRecord { cgroup_id, duration_ns: latency, kind: lifecycle_record::START, reason: 0 }, PROBE);
        crate::events::container_start(task, cgroup_id, latency, PROBE);
    } else {
        crate::events::exec_session(task, cgroup_id, bprm, PROBE);
    }
    Ok(())
}

/// Whether `task` shares its mount namespace with `parent`. A parent past `exit_task_namespaces`
/// (its nsproxy is gone, its children not yet handed to a reaper) shares nothing: the task is a
/// runtime's init whose runtime is exiting.
#[inline(always)]
pub fn same_mount_ns(task: u64, parent: u64) -> Result<bool, i64> {
    let mnt_ns = |t: u64| -> Result<u64, i64> {
        let nsproxy = kernel::read::<u64>(t, kconfig!(task_nsproxy))?;
        if nsproxy == 0 {
            return Ok(0);
        }
        kernel::read::<u64>(nsproxy, kconfig!(nsproxy_mnt_ns))
    };
    let parent_ns = mnt_ns(parent)?;
    Ok(parent_ns != 0 && mnt_ns(task)? == parent_ns)
}

/// `cgroup_mkdir`: a new cgroup instance, not started yet.
#[inline(always)]
pub fn cgroup_made(cgrp: u64) -> Result<(), i64> {
    if !kernel::is_v2_cgroup(cgrp)? {
        return Ok(());
    }
    let id = kernel::cgroup_id(cgrp)?;
    let state = CgroupState { mkdir_ns: unsafe { bpf_ktime_get_ns() }, start_ns: 0, started: 0, _pad: 0 };
    // A full LRU map drops its oldest instance: that cgroup gets no start (docs/lifecycle.md).
    let _ = maps::CGROUP_STATE.insert(&id, &state, 0);
    Ok(())
}

/// `cgroup_rmdir`: the instance is gone. Its `cgroup_event` kind: `RMDIR_NOT_STARTED` when it was
/// made while the probes ran and nothing started in it (the agent counts a start failure if it is
/// a container's cgroup: the kernel cannot tell), else `RMDIR`.
#[inline(always)]
pub fn cgroup_removed(cgrp: u64) -> Result<u32, i64> {
    if !kernel::is_v2_cgroup(cgrp)? {
        return Ok(cgroup_event::RMDIR);
    }
    let id = kernel::cgroup_id(cgrp)?;
    let Some(state) = (unsafe { maps::CGROUP_STATE.get(&id) }).copied() else {
        return Ok(cgroup_event::RMDIR);
    };
    let _ = maps::CGROUP_STATE.remove(&id);
    Ok(if state.started == 0 { cgroup_event::RMDIR_NOT_STARTED } else { cgroup_event::RMDIR })
}
