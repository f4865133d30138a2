//! kretprobe on `seccomp_do_user_notification` (often a compiler clone such as `.isra.0`, absent
//! from BTF: the loader resolves the exact symbol): a USER_NOTIF verdict after which the syscall
//! does not run (-1: the supervisor replied with an error, or no listener was there) marks the
//! thread, and the return of `__seccomp_filter` counts it as USER_NOTIF instead of ERRNO. A
//! CONTINUE reply (0) lets the syscall run: not a denial, nothing counted.

use agent_common::TaskState;
use aya_ebpf::{macros::kretprobe, programs::RetProbeContext};

use crate::maps;

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "seccomp_user_notif";

#[kretprobe]
pub fn user_notification_kretprobe(ctx: RetProbeContext) -> u32 {
    if ctx.ret::<u64>() as i32 != 0 {
        let state = maps::task_state();
        if state.is_null() {
            maps::new_task_state(TaskState { in_syscall: 0, trap_pending: 0, verdict: TaskState::USER_NOTIF_SKIPPED }, PROBE);
        } else if unsafe { (*state).verdict } == 0 {
            // (Inside the recheck after a tracer the syscall stays a TRACE.)
            unsafe { (*state).verdict = TaskState::USER_NOTIF_SKIPPED };
        }
    }
    0
}
