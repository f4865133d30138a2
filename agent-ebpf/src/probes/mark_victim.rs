//! `oom:mark_victim`: an OOM kill, counted in the victim's cgroup (not the cgroup of the task
//! that ran the OOM killer), with the memory cgroup whose limit fired. Attached only where the tracepoint passes the victim's
//! `task_struct *` (kernels >= 6.8); elsewhere `sched_process_exit` counts OOM kills.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use agent_common::{kabi, reason};

use crate::{kernel, maps};

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "oom_mark_victim";

#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim_btf(ctx: BtfTracePointContext) -> i32 {
    crate::diag::report(PROBE, try_mark_victim(ctx.arg(0)));
    0
}

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn mark_victim_raw(ctx: RawTracePointContext) -> i32 {
    crate::diag::report(PROBE, try_mark_victim(ctx.arg(0)));
    0
}

#[inline(always)]
fn try_mark_victim(victim: u64) -> Result<(), i64> {
    let cgroup_id = kernel::task_cgroup_id(victim)?;
    let key = kernel::oom_key(victim, cgroup_id);
    maps::count_oom(&key, PROBE);
    crate::events::oom_kill(victim, &key, false, PROBE);
    // The kill's SIGKILL goes out before this tracepoint: a victim that was asleep may already
    // have exited and been counted as a plain SIGKILL. Move that exit to oom_kill.
    maps::reclassify_exit(&kernel::group_key(victim)?, kabi::SIGKILL, reason::OOM_KILL, PROBE);
    Ok(())
}
