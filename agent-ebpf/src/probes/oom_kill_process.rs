//! kprobe on `oom_kill_process(struct oom_control *oc, const char *message)`: the OOM killer's
//! decision, with the victim (`oc->chosen`) and the memory cgroup whose limit fired
//! (`oc->memcg`, NULL for a global OOM). Attached only where `oom:mark_victim` carries just a
//! pid (kernels before the task pointer was added): the victim's exit then counts the kill with
//! the limit recorded here.

use aya_ebpf::{macros::kprobe, programs::ProbeContext};

use crate::{
    kernel::{self, kconfig},
    maps,
};

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "oom_kill_process";

#[kprobe]
pub fn oom_kill_process_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(oc) = ctx.arg::<u64>(0) {
        crate::diag::report(PROBE, try_oom_kill_process(oc));
    }
    0
}

#[inline(always)]
fn try_oom_kill_process(oc: u64) -> Result<(), i64> {
    let victim = kernel::read::<u64>(oc, kconfig!(oom_control_chosen))?;
    let memcg = kernel::read::<u64>(oc, kconfig!(oom_control_memcg))?;
    let css = kernel::memcg_to_css(memcg);
    let key = kernel::oom_key_for_limit(victim, kernel::task_cgroup_id(victim)?, css);
    let _ = maps::OOM_PENDING.insert(&kernel::group_key(victim)?, &key, 0);
    // memory.oom.group: the other members are killed by this same decision, unnamed here.
    kernel::remember_decision(css);
    Ok(())
}
