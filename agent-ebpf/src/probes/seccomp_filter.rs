//! fexit on `__seccomp_filter`, the kernel function that runs a task's filters: only syscalls of
//! tasks with a filter pay anything, where the tracepoint pair costs every syscall of the host.
//! A return of -1 means the syscall was skipped: an ERRNO (or USER_NOTIF / TRACE) verdict, or a
//! TRAP (already counted by `signal_generate`, which marks the thread), or a KILL (the task is
//! `SECCOMP_MODE_DEAD` by then; counted from the signal or the exit, as in the tracepoint path).
//! A KILL_THREAD of a non-last thread never returns. Where fexit cannot attach, a kprobe /
//! kretprobe pair on the same function does the same work.

use agent_common::{SeccompKey, action, lost};
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};

use crate::{kernel, maps};

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "seccomp_filter";

// The return value follows the arguments, whose number differs between kernel versions:
// (this_syscall, sd, recheck_after_trace) before 6.x, (this_syscall, sd) after. The verifier
// checks every context offset against the function's BTF, so each count is its own program and
// the loader picks the one that fits.

#[fexit(function = "__seccomp_filter")]
pub fn seccomp_filter_fexit3(ctx: FExitContext) -> i32 {
    crate::diag::report(PROBE, try_seccomp_filter(ctx.arg::<i64>(3), || Some(ctx.arg::<i32>(0))));
    0
}

#[fexit(function = "__seccomp_filter")]
pub fn seccomp_filter_fexit2(ctx: FExitContext) -> i32 {
    crate::diag::report(PROBE, try_seccomp_filter(ctx.arg::<i64>(2), || Some(ctx.arg::<i32>(0))));
    0
}

// Where fexit cannot attach (no BPF trampoline, or BTF without the function): a kprobe on entry
// keeps the syscall number for the thread, and a kretprobe reads the verdict. The filter may
// sleep in between (USER_NOTIF, a ptrace stop), hence a map by thread and not per CPU.

#[kprobe]
pub fn seccomp_filter_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(nr) = ctx.arg::<u64>(0) {
        let tid = bpf_get_current_pid_tgid() as u32;
        if maps::SECCOMP_SYSCALL.insert(tid, nr as i32, 0).is_err() {
            maps::count_lost(lost::TASK_MAP, 0, PROBE);
        }
    }
    0
}

#[kretprobe]
pub fn seccomp_filter_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret = ctx.ret::<u64>();
    let tid = bpf_get_current_pid_tgid() as u32;
    crate::diag::report(PROBE, try_seccomp_filter(ret as i64, || unsafe { maps::SECCOMP_SYSCALL.get(tid) }.copied()));
    0
}

/// `ret` is `__seccomp_filter`'s return value; `nr` gives the syscall number, read only for a
/// skipped syscall.
#[inline(always)]
fn try_seccomp_filter(ret: i64, nr: impl FnOnce() -> Option<i32>) -> Result<(), i64> {
    if ret as i32 == 0 {
        return Ok(());
    }
    // Read with a helper rather than through the BTF task pointer: bpf_get_current_task_btf
    // needs 5.11, fexit only 5.5. Only tasks with a filter get here.
    if !kernel::is_filtered(kernel::seccomp_mode(kernel::current_task())?) {
        // SECCOMP_MODE_DEAD: a KILL verdict, counted from its SIGSYS or the exit.
        return Ok(());
    }
    let state = maps::task_state();
    if !state.is_null() {
        unsafe {
            if (*state).trap_pending != 0 {
                // Counted as a TRAP by signal_generate: never also as ERRNO.
                (*state).trap_pending = 0;
                return Ok(());
            }
        }
    }
    let (cgroup_id, nr) = (unsafe { bpf_get_current_cgroup_id() }, nr().unwrap_or(-1));
    maps::count_seccomp(&SeccompKey { cgroup_id, syscall_nr: nr, action: action::ERRNO }, PROBE);
    // The fast path sees the verdict, not the errno the filter chose.
    crate::events::seccomp(cgroup_id, nr, action::ERRNO, -1, PROBE);
    Ok(())
}
