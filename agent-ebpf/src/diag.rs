//! Kernel-side diagnostics through aya-log: the rare places where a probe cannot record (a full
//! counter map or ring buffer, a kernel read that failed) log which map, probe and cgroup at
//! debug level, at most once a second per CPU and site. With debug logging off (the agent sets
//! `AYA_LOG_LEVEL` from `--log-level` at load) a site costs one load and one branch, and only on
//! those rare paths: nothing runs on the counting path.

use agent_common::lost;
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
};

/// Rate-limited sites: one per `lost::*` reason, then failed kernel reads.
const READ_FAILED: u32 = lost::COUNT;
const SITES: u32 = lost::COUNT + 1;
const EVERY_NS: u64 = 1_000_000_000;

/// When each site last logged on this CPU (ns since boot).
#[map]
static DIAG_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(SITES, 0);

/// Debug logging is on and this site has not logged on this CPU in the last second.
#[inline(always)]
fn due(site: u32) -> bool {
    if !level_enabled(Level::Debug) {
        return false;
    }
    let Some(last) = DIAG_LAST.get_ptr_mut(site) else {
        return false;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < EVERY_NS {
            return false;
        }
        *last = now;
    }
    true
}

#[inline(always)]
fn lost_name(index: u32) -> &'static str {
    match index {
        lost::RINGBUF => "the cgroup event ring buffer",
        lost::SECCOMP_MAP => "the seccomp counter map",
        lost::EXIT_MAP => "the exit counter map",
        lost::OOM_MAP => "the OOM counter map",
        lost::LIFECYCLE_MAP => "the container lifecycle counter map",
        lost::LIFECYCLE_RING => "the container lifecycle ring buffer",
        _ => "the per-thread state map",
    }
}

/// An event `probe` could not record, with the map that refused it.
#[inline(always)]
pub fn lost(index: u32, cgroup_id: u64, probe: &'static str) {
    if due(index) {
        debug!(
            &(),
            "probe {}: an event of cgroup {} was not recorded: {} is full",
            probe,
            cgroup_id,
            lost_name(index)
        );
    }
}

/// The result of a probe's body: a failed kernel read (an unexpected kernel value) is logged.
#[inline(always)]
pub fn report(probe: &'static str, result: Result<(), i64>) {
    if let Err(e) = result
        && due(READ_FAILED)
    {
        debug!(
            &(),
            "probe {}: a kernel read failed ({}), the event was skipped", probe, e
        );
    }
}
