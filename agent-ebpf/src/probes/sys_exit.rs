//! `raw_syscalls:sys_exit`: a filtered thread that reaches `sys_exit` without `sys_enter` had its
//! syscall skipped by seccomp: an ERRNO (or USER_NOTIF) verdict, unless a TRAP was just counted
//! for it by `signal_generate`.

use agent_common::{SeccompKey, TaskState, action, lost};
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
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
    let mode = kernel::current_seccomp_mode_btf();
    if kernel::is_filtered(mode) {
        crate::diag::report(PROBE, try_sys_exit(ctx.arg::<u64>(0), || ctx.arg::<i64>(1)));
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_raw(ctx: RawTracePointContext) -> i32 {
    if kernel::seccomp_mode(kernel::current_task()).is_ok_and(kernel::is_filtered) {
        crate::diag::report(PROBE, try_sys_exit(ctx.arg::<u64>(0), || ctx.arg::<i64>(1)));
    }
    0
}

/// For a task under a seccomp filter (the callers check `seccomp.mode` first, so that tasks
/// without a filter pay only the tracepoint itself).
#[inline(always)]
fn try_sys_exit(regs: u64, ret: impl FnOnce() -> i64) -> Result<(), i64> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(state) = maps::TASKS.get_ptr_mut(tid) else {
        // First time this thread is seen under a filter: the return of the fork that created it,
        // of the seccomp()/prctl() that installed the filter (or a TSYNC from another thread), or
        // a syscall that was already running when the probes attached. None of these is a
        // violation; from now on the thread is tracked.
        let state = TaskState { in_syscall: 0, trap_pending: 0 };
        if maps::TASKS.insert(tid, state, 0).is_err() {
            maps::count_lost(lost::TASK_MAP, 0, PROBE);
        }
        return Ok(());
    };
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
    let nr = kernel::read::<u64>(regs, kconfig!(pt_regs_orig_ax))? as i32;
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    maps::count_seccomp(&SeccompKey { cgroup_id, syscall_nr: nr, action: action::ERRNO }, PROBE);
    // Only with the stream on (a constant: with it off, the verifier drops all of this): the
    // syscall returned -errno (a USER_NOTIF reply may return 0 or a value: no errno then).
    if crate::events::enabled() {
        let ret = ret();
        let errno = if (-4095..0).contains(&ret) { -ret as i32 } else { -1 };
        crate::events::seccomp(cgroup_id, nr, action::ERRNO, errno, PROBE);
    }
    Ok(())
}
