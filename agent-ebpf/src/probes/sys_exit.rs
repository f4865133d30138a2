//! `raw_syscalls:sys_exit`: a filtered thread that reaches `sys_exit` without `sys_enter` had its
//! syscall skipped by seccomp: an ERRNO (or USER_NOTIF) verdict, unless a TRAP was just counted
//! for it by `signal_generate`.

use agent_common::{SeccompKey, TaskState, action};
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
const PROBE: &str = "seccomp_sys_exit";

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_btf(ctx: BtfTracePointContext) -> i32 {
    // Tasks without a filter return here, as in sys_enter.
    if kernel::is_filtered(kernel::current_seccomp_mode_btf()) {
        exited(ctx.arg::<u64>(0), ctx.arg::<i64>(1));
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_raw(ctx: RawTracePointContext) -> i32 {
    if kernel::seccomp_mode(kernel::current_task()).is_ok_and(kernel::is_filtered) {
        exited(ctx.arg::<u64>(0), ctx.arg::<i64>(1));
    }
    0
}

/// A filtered thread leaves a syscall (`regs`, its return value `ret`). Out of line, like
/// sys_enter's.
#[inline(never)]
fn exited(regs: u64, ret: i64) {
    crate::diag::report(PROBE, try_sys_exit(regs, ret));
}

#[inline(always)]
fn try_sys_exit(regs: u64, ret: i64) -> Result<(), i64> {
    let state = maps::task_state();
    if state.is_null() {
        // First time this thread is seen under a filter: the return of the fork that created it,
        // of the seccomp()/prctl() that installed the filter (or a TSYNC from another thread), or
        // a syscall that was already running when the probes attached. None of these is a
        // violation; from now on the thread is tracked.
        maps::new_task_state(TaskState { in_syscall: 0, trap_pending: 0, verdict: 0 }, PROBE);
        return Ok(());
    }
    unsafe {
        if (*state).in_syscall != 0 {
            (*state).in_syscall = 0;
            return Ok(());
        }
        if (*state).trap_pending != 0 {
            // Counted as a TRAP by signal_generate: never also as ERRNO.
            (*state).trap_pending = 0;
            return Ok(());
        }
    }
    let nr = kernel::read::<u64>(regs, kconfig!(pt_regs_syscall_nr))? as i32;
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    maps::count_seccomp(&SeccompKey { cgroup_id, syscall_nr: nr, action: action::ERRNO }, PROBE);
    // Only with the stream on (a constant: with it off, the verifier drops all of this): the
    // syscall returned -errno (a USER_NOTIF reply may return 0 or a value: no errno then).
    if crate::events::enabled() {
        let errno = if (-4095..0).contains(&ret) { -ret as i32 } else { -1 };
        crate::events::seccomp(cgroup_id, nr, action::ERRNO, errno, PROBE);
    }
    Ok(())
}
