//! fexit (else a kprobe) on `ptrace_notify(exit_code, ...)`: a seccomp TRACE verdict whose
//! thread stops at its tracer (`PTRACE_EVENT_SECCOMP`). The thread is marked; the return of the
//! outer `__seccomp_filter` then counts one TRACE, whether the tracer let the syscall run (a
//! return of 0 that would count nothing) or skipped it (a -1 that would count an ERRNO), and the
//! nested recheck call after the tracer counts nothing. A TRACE with no tracer attached never
//! gets here: the kernel answers it ENOSYS, as an ERRNO(ENOSYS) rule, and it counts as `errno`.

use agent_common::{TaskState, kabi};
use aya_ebpf::{
    macros::{fexit, kprobe},
    programs::{FExitContext, ProbeContext},
};

use crate::{kernel, maps};

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "seccomp_trace";

#[fexit(function = "ptrace_notify")]
pub fn ptrace_notify_fexit(ctx: FExitContext) -> i32 {
    crate::diag::report(PROBE, try_ptrace_notify(ctx.arg::<i32>(0)));
    0
}

#[kprobe]
pub fn ptrace_notify_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(code) = ctx.arg::<i32>(0) {
        crate::diag::report(PROBE, try_ptrace_notify(code));
    }
    0
}

#[inline(always)]
fn try_ptrace_notify(exit_code: i32) -> Result<(), i64> {
    if exit_code != kabi::PTRACE_SECCOMP_STOP || !kernel::is_filtered(kernel::seccomp_mode(kernel::current_task())?) {
        return Ok(());
    }
    let state = maps::task_state();
    // (Inside a USER_NOTIF wait no tracer stop happens: the mark becomes the TRACE's.)
    maps::mark(state, TaskState::TRACE_STOPPED, PROBE);
    Ok(())
}
