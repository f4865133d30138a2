//! fexit on `__seccomp_filter`, the kernel function that runs a task's filters: only syscalls of
//! tasks with a filter pay anything, where the tracepoint pair costs every syscall of the host.
//! A return of -1 means the syscall was skipped: an ERRNO verdict (a USER_NOTIF or traced TRACE
//! one when `user_notification` or `ptrace_notify` marked the thread), or a
//! TRAP (already counted by `signal_generate`, which marks the thread), or a KILL (the task is
//! `SECCOMP_MODE_DEAD` by then; counted from the signal or the exit, as in the tracepoint path).
//! A KILL_THREAD of a non-last thread never returns. Where fexit cannot attach, a kprobe /
//! kretprobe pair on the same function does the same work.

use agent_common::{SeccompKey, TaskState, action, lost};
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};

use crate::{
    kernel::{self, kconfig},
    maps,
};

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "seccomp_filter";

// The return value follows the arguments, whose number differs between kernel versions:
// (this_syscall, sd, recheck_after_trace) before 6.15, (this_syscall, recheck_after_trace) since.
// The verifier checks every context offset against the function's BTF, so each count is its own
// program and the loader picks the one that fits, with the recheck flag where BTF names it
// (`KernelConfig::seccomp_filter_recheck_arg`).

// The recheck flag's position is fixed in each program (the last parameter in both layouts):
// a load at an offset chosen at run time is a modified context pointer, which the verifier
// refuses. The loader takes a program only where BTF names the flag at that position.

#[fexit(function = "__seccomp_filter")]
pub fn seccomp_filter_fexit3(ctx: FExitContext) -> i32 {
    if !fexit_recheck(|| ctx.arg::<u64>(2)) {
        crate::diag::report(PROBE, try_seccomp_filter(ctx.arg::<i64>(3), || Some(ctx.arg::<i32>(0))));
    }
    0
}

#[fexit(function = "__seccomp_filter")]
pub fn seccomp_filter_fexit2(ctx: FExitContext) -> i32 {
    if !fexit_recheck(|| ctx.arg::<u64>(1)) {
        crate::diag::report(PROBE, try_seccomp_filter(ctx.arg::<i64>(2), || Some(ctx.arg::<i32>(0))));
    }
    0
}

/// Whether this call is the recheck after a tracer (`recheck_after_trace`, a `bool`): its verdict
/// belongs to the TRACE the outer call counts. Only after a TRACE stop somewhere can it be.
#[inline(always)]
fn fexit_recheck(flag: impl FnOnce() -> u64) -> bool {
    kconfig!(seccomp_filter_recheck_arg) != 0 && maps::tracing_pending() && flag() & 0xff != 0
}

// Where fexit cannot attach (no BPF trampoline, or BTF without the function): a kprobe on entry
// keeps the syscall number for the thread, and a kretprobe reads the verdict. The filter may
// sleep in between (USER_NOTIF, a ptrace stop), hence a map by thread and not per CPU.

#[kprobe]
pub fn seccomp_filter_kprobe(ctx: ProbeContext) -> u32 {
    if maps::tracing_pending() && kprobe_recheck(&ctx) {
        // The recheck after a tracer: its return is not the verdict's. Marked for the kretprobe,
        // which has no arguments to tell; the syscall number kept is the traced one.
        let state = maps::task_state();
        if !state.is_null() && unsafe { (*state).verdict } == TaskState::TRACE_STOPPED {
            unsafe { (*state).verdict = TaskState::TRACE_RECHECK };
        }
        return 0;
    }
    if let Some(nr) = ctx.arg::<u64>(0) {
        let tid = bpf_get_current_pid_tgid() as u32;
        if maps::SECCOMP_SYSCALL.insert(tid, nr as i32, 0).is_err() {
            maps::count_lost(lost::TASK_MAP, 0, PROBE);
        }
    }
    0
}

/// The recheck flag in the kprobe's registers, at the `pt_regs` offset the loader found for its
/// parameter (a helper read: the offset is not a constant of the program).
#[inline(always)]
fn kprobe_recheck(ctx: &ProbeContext) -> bool {
    let reg = kconfig!(seccomp_recheck_reg);
    reg != 0 && kernel::read::<u64>(ctx.regs as u64, reg).is_ok_and(|f| f & 0xff != 0)
}

#[kretprobe]
pub fn seccomp_filter_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret = ctx.ret::<u64>();
    let tid = bpf_get_current_pid_tgid() as u32;
    crate::diag::report(PROBE, try_seccomp_filter(ret as i64, || unsafe { maps::SECCOMP_SYSCALL.get(tid) }.copied()));
    0
}

/// `ret` is the outer `__seccomp_filter`'s return value; `nr` gives the syscall number, read
/// only for a verdict to count.
#[inline(always)]
fn try_seccomp_filter(ret: i64, nr: impl FnOnce() -> Option<i32>) -> Result<(), i64> {
    // The allowed syscall: nothing to count, unless a thread somewhere stopped at its tracer.
    if ret as i32 == 0 && !maps::tracing_pending() {
        return Ok(());
    }
    // Every use of the thread's state stays under one null test: the verifier must see it.
    let state = maps::task_state();
    let mut verdict = 0;
    if !state.is_null() {
        let st = unsafe { &mut *state };
        verdict = st.verdict;
        if verdict == TaskState::TRACE_RECHECK {
            // The nested recheck returns (kprobe pair): the outer call counts.
            st.verdict = TaskState::TRACE_STOPPED;
            return Ok(());
        }
        if verdict == TaskState::TRACE_STOPPED && ret as i32 != 0 {
            // A TRAP on the recheck was counted by signal_generate: its mark must not swallow the
            // thread's next ERRNO.
            st.trap_pending = 0;
        }
    }
    // This return decides a marked thread's verdict: the mark goes.
    maps::release_mark(state);
    if verdict == TaskState::TRACE_STOPPED {
        return count(nr().unwrap_or(-1), action::TRACE);
    }
    if ret as i32 == 0 {
        // Allowed, or a USER_NOTIF the supervisor let run (CONTINUE).
        return Ok(());
    }
    // Read with a helper rather than through the BTF task pointer: bpf_get_current_task_btf
    // needs 5.11, fexit only 5.5. Only tasks with a filter get here.
    if !kernel::is_filtered(kernel::seccomp_mode(kernel::current_task())?) {
        // SECCOMP_MODE_DEAD: a KILL verdict, counted from its SIGSYS or the exit.
        return Ok(());
    }
    if verdict == TaskState::USER_NOTIF_PENDING {
        return count(nr().unwrap_or(-1), action::USER_NOTIF);
    }
    if !state.is_null() {
        unsafe {
            if (*state).trap_pending != 0 {
                // Counted as a TRAP by signal_generate: never also as ERRNO.
                (*state).trap_pending = 0;
                return Ok(());
            }
        }
    }
    count(nr().unwrap_or(-1), action::ERRNO)
}

#[inline(always)]
fn count(nr: i32, act: u32) -> Result<(), i64> {
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    maps::count_seccomp(&SeccompKey { cgroup_id, syscall_nr: nr, action: act }, PROBE);
    // The fast path sees the verdict, not the errno the filter chose.
    crate::events::seccomp(cgroup_id, nr, act, -1, PROBE);
    Ok(())
}
