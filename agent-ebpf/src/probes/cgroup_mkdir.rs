//! `cgroup:cgroup_mkdir`: sends the id and path of each new cgroup v2 directory to userspace, so
//! that a cgroup that lives for less than a rescan interval is still named.

use agent_common::cgroup_event;
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::probes::cgroup_rmdir::send_cgroup_event;

#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = send_cgroup_event(cgroup_event::MKDIR, ctx.arg(0), ctx.arg(1));
    0
}

#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_mkdir_raw(ctx: RawTracePointContext) -> i32 {
    let _ = send_cgroup_event(cgroup_event::MKDIR, ctx.arg(0), ctx.arg(1));
    0
}
