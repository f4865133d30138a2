//! fexit on `__seccomp_filter`, the kernel function that runs a task's filters: only syscalls of
//! tasks with a filter pay anything, where the tracepoint pair costs every syscall of the host.
//! A return of -1 means the syscall was skipped: an ERRNO (or USER_NOTIF / TRACE) verdict, or a
//! TRAP (already counted by `signal_generate`, which marks the thread), or a KILL (the task is
//! `SECCOMP_MODE_DEAD` by then; counted from the signal or the exit, as in the tracepoint path).
//! A KILL_THREAD of a non-last thread never returns.

use agent_common::{SeccompKey, action};
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::fexit,
    programs::FExitContext,
};

use crate::{kernel, maps};

// The return value follows the arguments, whose number differs between kernel versions:
// (this_syscall, sd, recheck_after_trace) before 6.x, (this_syscall, sd) after. The verifier
// checks every context offset against the function's BTF, so each count is its own program and
// the loader picks the one that fits.

#[fexit(function = "__seccomp_filter")]
pub fn seccomp_filter_fexit3(ctx: FExitContext) -> i32 {
    let _ = try_seccomp_filter(&ctx, ctx.arg::<i64>(3));
    0
}

#[fexit(function = "__seccomp_filter")]
pub fn seccomp_filter_fexit2(ctx: FExitContext) -> i32 {
    let _ = try_seccomp_filter(&ctx, ctx.arg::<i64>(2));
    0
}

#[inline(always)]
fn try_seccomp_filter(ctx: &FExitContext, ret: i64) -> Result<(), i64> {
    if ret as i32 == 0 {
        return Ok(());
    }
    // Read with a helper rather than through the BTF task pointer: bpf_get_current_task_btf
    // needs 5.11, fexit only 5.5. Only tasks with a filter get here.
    if !kernel::is_filtered(kernel::seccomp_mode(kernel::current_task())?) {
        // SECCOMP_MODE_DEAD: a KILL verdict, counted from its SIGSYS or the exit.
        return Ok(());
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(state) = maps::TASKS.get_ptr_mut(tid) {
        unsafe {
            if (*state).trap_pending != 0 {
                // Counted as a TRAP by signal_generate: never also as ERRNO.
                (*state).trap_pending = 0;
                return Ok(());
            }
        }
    }
    let nr: i32 = ctx.arg(0);
    maps::count_seccomp(&SeccompKey {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        syscall_nr: nr,
        action: action::ERRNO,
    });
    Ok(())
}
