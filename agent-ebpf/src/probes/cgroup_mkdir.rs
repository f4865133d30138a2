//! `cgroup:cgroup_mkdir`: sends the id and path of each new cgroup v2 directory to userspace, so
//! that a cgroup that lives for less than a rescan interval is still named; and records the new
//! instance for the container lifecycle (`sched_process_exec`).

use agent_common::cgroup_event;
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::probes::cgroup_rmdir::send_cgroup_event;

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "cgroup_mkdir";

#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir_btf(ctx: BtfTracePointContext) -> i32 {
    crate::diag::report(PROBE, send_cgroup_event(cgroup_event::MKDIR, ctx.arg(0), ctx.arg(1), PROBE));
    crate::diag::report(PROBE, crate::probes::sched_process_exec::cgroup_made(ctx.arg(0)));
    0
}

#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_mkdir_raw(ctx: RawTracePointContext) -> i32 {
    crate::diag::report(PROBE, send_cgroup_event(cgroup_event::MKDIR, ctx.arg(0), ctx.arg(1), PROBE));
    crate::diag::report(PROBE, crate::probes::sched_process_exec::cgroup_made(ctx.arg(0)));
    0
}
