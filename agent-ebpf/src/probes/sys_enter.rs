//! `raw_syscalls:sys_enter`: remember that a filtered thread entered its syscall, so that
//! `sys_exit` can tell a syscall seccomp skipped (no `sys_enter`) from one that ran.

use agent_common::{TaskState, lost};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::{kernel, maps};

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "seccomp_sys_enter";

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_btf(_ctx: BtfTracePointContext) -> i32 {
    crate::diag::report(PROBE, try_sys_enter(kernel::current_seccomp_mode_btf()));
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_raw(_ctx: RawTracePointContext) -> i32 {
    if let Ok(mode) = kernel::seccomp_mode(kernel::current_task()) {
        crate::diag::report(PROBE, try_sys_enter(mode));
    }
    0
}

#[inline(always)]
fn try_sys_enter(mode: i32) -> Result<(), i64> {
    // Tasks without a filter return here and pay only the tracepoint itself.
    if !kernel::is_filtered(mode) {
        return Ok(());
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    match maps::TASKS.get_ptr_mut(tid) {
        Some(state) => unsafe { (*state).in_syscall = 1 },
        None => {
            let state = TaskState { in_syscall: 1, trap_pending: 0 };
            if maps::TASKS.insert(tid, state, 0).is_err() {
                maps::count_lost(lost::TASK_MAP, 0, PROBE);
            }
        }
    }
    Ok(())
}
