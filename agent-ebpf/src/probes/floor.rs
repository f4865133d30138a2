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
