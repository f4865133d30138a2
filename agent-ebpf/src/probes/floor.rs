//! Empty programs on the syscall hooks: the cost floor that `cargo xtask bench` compares the
//! real probes with. Never attached by the agent.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

#[btf_tracepoint(function = "sys_enter")]
pub fn floor_sys_enter_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn floor_sys_exit_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_sys_enter_raw(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_sys_exit_raw(_ctx: RawTracePointContext) -> i32 {
    0
}

/// The least any exact tracepoint method must do for a task under a filter: `sys_enter` leaves a
/// mark in the task and `sys_exit` reads and clears it (a syscall seccomp skipped has no
/// `sys_enter`). The same filter test and per-thread state as the agent's programs, and nothing
/// else: what the agent's filtered path costs beyond it is the agent's own.
#[btf_tracepoint(function = "sys_enter")]
pub fn floor_state_sys_enter_btf(_ctx: BtfTracePointContext) -> i32 {
    if crate::kernel::is_filtered(crate::kernel::current_seccomp_mode_btf()) {
        let state = crate::maps::task_state();
        if state.is_null() {
            crate::maps::new_task_state(agent_common::TaskState { in_syscall: 1, trap_pending: 0, verdict: 0 }, "floor");
        } else {
            unsafe { (*state).in_syscall = 1 };
        }
    }
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn floor_state_sys_exit_btf(_ctx: BtfTracePointContext) -> i32 {
    if crate::kernel::is_filtered(crate::kernel::current_seccomp_mode_btf()) {
        let state = crate::maps::task_state();
        if !state.is_null() {
            unsafe { (*state).in_syscall = 0 };
        }
    }
    0
}
