//! `signal:signal_generate`: seccomp's SIGSYS (si_code SYS_SECCOMP) for a TRAP or a KILL action.
//! The kernel sets `seccomp.mode` to SECCOMP_MODE_DEAD before a kill action's signal, which tells
//! a kill from a trap. A kill, or a TRAP whose SIGSYS the process does not handle, marks the
//! process in `SECCOMP_KILLED` so that its exit is reported as `seccomp_kill`.

use agent_common::{SeccompKey, TaskState, action, kabi};
use aya_ebpf::{
    helpers::bpf_get_current_cgroup_id,
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::{
    kernel::{self, kconfig},
    maps,
};

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "seccomp_signal";

#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate_btf(ctx: BtfTracePointContext) -> i32 {
    crate::diag::report(PROBE, try_signal_generate(ctx.arg::<u64>(0) as i32, ctx.arg(1), ctx.arg(2)));
    0
}

#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate_raw(ctx: RawTracePointContext) -> i32 {
    crate::diag::report(PROBE, try_signal_generate(ctx.arg::<u64>(0) as i32, ctx.arg(1), ctx.arg(2)));
    0
}

#[inline(always)]
fn try_signal_generate(sig: i32, info: u64, target: u64) -> Result<(), i64> {
    // SEND_SIG_NOINFO (0) and SEND_SIG_PRIV (1) are not pointers.
    if sig as u32 != kabi::SIGSYS || info <= 1 {
        return Ok(());
    }
    if kernel::read::<i32>(info, kconfig!(siginfo_code))? != kabi::SYS_SECCOMP {
        return Ok(());
    }
    // Seccomp signals the current task itself.
    let task = kernel::current_task();
    if target != task {
        return Ok(());
    }
    let mode = kernel::seccomp_mode(task)?;
    let act = if mode == kabi::SECCOMP_MODE_DEAD {
        // Remembered so that the exit is reported as `seccomp_kill` and not as a KILL_THREAD.
        // By thread group, not pid: an entry left behind (a second killed thread marking after
        // the group exit was counted) can then never label a later process that got the pid.
        let _ = maps::SECCOMP_KILLED.insert(kernel::group_key(task)?, 1u32, 0);
        // And in the thread itself: the group exit takes the SECCOMP_KILLED entry, and another
        // thread may count it before this one reaches the exit tracepoint, whose test for a kill
        // that raised no signal must still see that this one did.
        let state = maps::task_state();
        if state.is_null() {
            maps::new_task_state(TaskState { in_syscall: 0, trap_pending: TaskState::KILL_COUNTED, verdict: 0 }, PROBE);
        } else {
            unsafe { (*state).trap_pending = TaskState::KILL_COUNTED };
        }
        action::KILL_PROCESS
    } else if kernel::is_filtered(mode) {
        let state = maps::task_state();
        if state.is_null() {
            maps::new_task_state(TaskState { in_syscall: 0, trap_pending: 1, verdict: 0 }, PROBE);
        } else {
            unsafe {
                // A SIGSYS with SYS_SECCOMP raised from inside a syscall body is a forgery
                // (rt_sigqueueinfo to itself), not seccomp, which runs before sys_enter.
                if (*state).in_syscall != 0 {
                    return Ok(());
                }
                (*state).trap_pending = 1;
            }
        }
        action::TRAP
    } else {
        return Ok(());
    };
    let nr = kernel::read::<i32>(info, kconfig!(siginfo_syscall))?;
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    maps::count_seccomp(&SeccompKey { cgroup_id, syscall_nr: nr, action: act }, PROBE);
    crate::events::seccomp(cgroup_id, nr, act, -1, PROBE);
    // A TRAP whose SIGSYS the process does not handle kills it: seccomp killed it, and its exit
    // is a `seccomp_kill` (the verdict stays counted as a TRAP).
    if act == action::TRAP && kernel::sigsys_is_fatal(task)? {
        let _ = maps::SECCOMP_KILLED.insert(kernel::group_key(task)?, 1u32, 0);
    }
    Ok(())
}
