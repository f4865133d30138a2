//! `raw_syscalls:sys_enter`: remember that a filtered thread entered its syscall, so that
//! `sys_exit` can tell a syscall seccomp skipped (no `sys_enter`) from one that ran.

use agent_common::TaskState;
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::{kernel, maps};

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "seccomp_sys_enter";

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_btf(_ctx: BtfTracePointContext) -> i32 {
    // Tasks without a filter return here: a helper call, one load and one branch on top of the
    // tracepoint itself.
    if kernel::is_filtered(kernel::current_seccomp_mode_btf()) {
        entered();
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_raw(_ctx: RawTracePointContext) -> i32 {
    if kernel::seccomp_mode(kernel::current_task()).is_ok_and(kernel::is_filtered) {
        entered();
    }
    0
}

/// A filtered thread entered a syscall. Out of line (a BPF-to-BPF call), so that the program
/// every unfiltered syscall runs stays a few instructions with no stack.
#[inline(never)]
fn entered() {
    let state = maps::task_state();
    if state.is_null() {
        maps::new_task_state(TaskState { in_syscall: 1, trap_pending: 0, verdict: 0 }, PROBE);
    } else {
        unsafe { (*state).in_syscall = 1 };
    }
}
