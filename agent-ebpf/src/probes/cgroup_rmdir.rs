//! `cgroup:cgroup_rmdir`: tells userspace when a cgroup v2 directory goes away, which starts its
//! retain window; forgets the instance's lifecycle state, telling the agent when nothing started
//! in it (a container's start failure).

use agent_common::{CgroupEvent, lost};
use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes,
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::{kernel, maps};

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "cgroup_rmdir";

#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir_btf(ctx: BtfTracePointContext) -> i32 {
    crate::diag::report(PROBE, removed(ctx.arg(0), ctx.arg(1)));
    0
}

#[raw_tracepoint(tracepoint = "cgroup_rmdir")]
pub fn cgroup_rmdir_raw(ctx: RawTracePointContext) -> i32 {
    crate::diag::report(PROBE, removed(ctx.arg(0), ctx.arg(1)));
    0
}

#[inline(always)]
fn removed(cgrp: u64, path: u64) -> Result<(), i64> {
    let kind = crate::probes::sched_process_exec::cgroup_removed(cgrp)?;
    send_cgroup_event(kind, cgrp, path, PROBE)
}

#[inline(always)]
pub fn send_cgroup_event(kind: u32, cgrp: u64, path: u64, probe: &'static str) -> Result<(), i64> {
    if !kernel::is_v2_cgroup(cgrp)? {
        return Ok(());
    }
    let id = kernel::cgroup_id(cgrp)?;
    let Some(mut entry) = maps::EVENTS.reserve::<CgroupEvent>(0) else {
        maps::count_lost(lost::RINGBUF, id, probe);
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).id = id;
        (*event).kind = kind;
        (*event).path_len = match bpf_probe_read_kernel_str_bytes(path as *const u8, &mut (*event).path) {
            Ok(bytes) => bytes.len() as u32,
            Err(_) => 0,
        };
    }
    entry.submit(0);
    Ok(())
}
