//! kprobe on the entry of `seccomp_do_user_notification` (often a compiler clone such as
//! `.isra.0`, absent from BTF: the loader resolves the exact symbol): a USER_NOTIF verdict marks
//! the thread, and the return of `__seccomp_filter` decides, as the kernel does: -1 (the syscall
//! is skipped: the supervisor answered with an error or a value of its own, or no listener was
//! there) counts `user_notif` instead of `errno`, 0 (a CONTINUE reply: the syscall runs, no
//! denial) counts nothing. An entry probe, not a kretprobe: a kretprobe holds one of a few
//! instances per waiting thread, and a supervisor can keep many threads waiting.

use agent_common::TaskState;
use aya_ebpf::{macros::kprobe, programs::ProbeContext};

use crate::maps;

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "seccomp_user_notif";

#[kprobe]
pub fn user_notification_kprobe(_ctx: ProbeContext) -> u32 {
    crate::diag::report(PROBE, try_user_notification());
    0
}

#[inline(always)]
fn try_user_notification() -> Result<(), i64> {
    let state = maps::task_state();
    // Inside the recheck after a tracer the syscall stays a TRACE.
    if !state.is_null() && unsafe { (*state).verdict } != 0 {
        return Ok(());
    }
    maps::mark(state, TaskState::USER_NOTIF_PENDING, PROBE);
    Ok(())
}
