//! Access to kernel structures through the offsets the loader read from BTF.

use agent_common::{ExitDedupKey, KernelConfig, OomKey, config_flags, kabi, oom_limit};
use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel, generated::bpf_get_current_task_btf,
};

/// Set by the loader (`EbpfLoader::set_global`) before the programs load; it lives in `.rodata`,
/// so the verifier sees the offsets as constants.
#[unsafe(no_mangle)]
pub(crate) static KCONFIG: KernelConfig = KernelConfig {
    task_seccomp_mode: 0,
    task_exit_code: 0,
    task_signal: 0,
    task_thread_pid: 0,
    task_cgroups: 0,
    task_group_leader: 0,
    task_start_time: 0,
    signal_live: 0,
    signal_oom_mm: 0,
    signal_group_exit_code: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_size: 0,
    upid_nr: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    cgroup_root: 0,
    cgroup_root_hierarchy_id: 0,
    kernfs_node_id: 0,
    pt_regs_syscall_nr: 0,
    siginfo_code: 0,
    siginfo_syscall: 0,
    css_set_memcg: 0,
    css_parent: 0,
    css_cgroup: 0,
    memcg_css: 0,
    memcg_memory_usage: 0,
    memcg_memory_max: 0,
    memcg_memsw_usage: 0,
    memcg_memsw_max: 0,
    seccomp_filter_args: 0,
    seccomp_filter_recheck_arg: 0,
    seccomp_recheck_reg: 0,
    oom_control_chosen: 0,
    oom_control_memcg: 0,
    task_comm: 0,
    task_real_parent: 0,
    task_pid: 0,
    task_tgid: 0,
    task_mm: 0,
    mm_rss_stat: 0,
    mm_rss_stride: 0,
    mm_rss_count: 0,
    task_nsproxy: 0,
    nsproxy_mnt_ns: 0,
    task_sighand: 0,
    task_blocked: 0,
    sighand_action: 0,
    k_sigaction_size: 0,
    k_sigaction_handler: 0,
    binprm_filename: 0,
    flags: 0,
};

/// Reads one field of `KCONFIG` without letting the compiler fold the zero initialiser.
macro_rules! kconfig {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::kernel::KCONFIG.$field) }
    };
}
pub(crate) use kconfig;

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Result<T, i64> {
    if base == 0 {
        return Err(-1);
    }
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.map_err(i64::from)
}

#[inline(always)]
pub fn current_task() -> u64 {
    unsafe { bpf_get_current_task() }
}

/// `task->seccomp.mode`.
#[inline(always)]
pub fn seccomp_mode(task: u64) -> Result<i32, i64> {
    read::<i32>(task, kconfig!(task_seccomp_mode))
}

/// `current->seccomp.mode` through the BTF-typed task pointer: a plain load that the verifier
/// checks against `task_struct`, no helper call. tp_btf programs only.
#[inline(always)]
pub fn current_seccomp_mode_btf() -> i32 {
    let offset = kconfig!(task_seccomp_mode) as usize;
    unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        core::ptr::read_volatile(task.add(offset).cast::<i32>())
    }
}

/// True when the SIGSYS that a seccomp TRAP forces on `task` kills it instead of reaching a
/// handler: SIGSYS is blocked, ignored or has its default action (a core dump).
/// `force_sig_info_to_task` resets a blocked or ignored SIGSYS to SIG_DFL (and unblocks it)
/// before the signal is generated, so a probe on `signal_generate` normally sees SIG_DFL; the
/// other two are tested as well, so that the answer does not rest on that order.
#[inline(always)]
pub fn sigsys_is_fatal(task: u64) -> Result<bool, i64> {
    let blocked = read::<u64>(task, kconfig!(task_blocked))?;
    if blocked & (1 << (kabi::SIGSYS - 1)) != 0 {
        return Ok(true);
    }
    let sighand = read::<u64>(task, kconfig!(task_sighand))?;
    let action = kconfig!(sighand_action) + (kabi::SIGSYS - 1) * kconfig!(k_sigaction_size);
    let handler = read::<u64>(sighand, action + kconfig!(k_sigaction_handler))?;
    Ok(handler == kabi::SIG_DFL || handler == kabi::SIG_IGN)
}

#[inline(always)]
pub fn is_filtered(mode: i32) -> bool {
    mode == kabi::SECCOMP_MODE_FILTER
}

/// cgroup v2 id of `task`: `task->cgroups->dfl_cgrp->kn->id`.
#[inline(always)]
pub fn task_cgroup_id(task: u64) -> Result<u64, i64> {
    let css_set = read::<u64>(task, kconfig!(task_cgroups))?;
    let cgrp = read::<u64>(css_set, kconfig!(css_set_dfl_cgrp))?;
    cgroup_id(cgrp)
}

/// `cgrp->kn->id`.
#[inline(always)]
pub fn cgroup_id(cgrp: u64) -> Result<u64, i64> {
    let kn = read::<u64>(cgrp, kconfig!(cgroup_kn))?;
    read::<u64>(kn, kconfig!(kernfs_node_id))
}

/// True when `cgrp` belongs to the cgroup v2 (default) hierarchy, whose id is 0.
#[inline(always)]
pub fn is_v2_cgroup(cgrp: u64) -> Result<bool, i64> {
    let root = read::<u64>(cgrp, kconfig!(cgroup_root))?;
    Ok(read::<i32>(root, kconfig!(cgroup_root_hierarchy_id))? == 0)
}

/// True when `task`'s thread group leader is PID 1 of a non-root PID namespace.
#[inline(always)]
pub fn is_pidns_init(task: u64) -> Result<bool, i64> {
    let leader = read::<u64>(task, kconfig!(task_group_leader))?;
    let pid = read::<u64>(leader, kconfig!(task_thread_pid))?;
    let level = read::<u32>(pid, kconfig!(pid_level))?;
    if level == 0 || level > 32 {
        return Ok(false);
    }
    let upid = kconfig!(pid_numbers) + level * kconfig!(upid_size);
    Ok(read::<i32>(pid, upid + kconfig!(upid_nr))? == 1)
}

/// Deepest memory cgroup nesting walked when looking for the limit that fired.
const MAX_MEMCG_LEVELS: u32 = 16;
/// A page counter at or above this many pages is unlimited (`PAGE_COUNTER_MAX` is
/// `LONG_MAX / PAGE_SIZE`, 2^51 with 4 KiB pages).
const PAGE_COUNTER_UNLIMITED: u64 = 1 << 50;
/// A charge that fails is at most a PMD-sized folio (512 pages); the OOM killer runs only once
/// reclaim left less room than that. Concurrent uncharges of a big cgroup add 1/128 of slack.
const CHARGE_SLACK_PAGES: u64 = 512;

/// True when the page counter at `memcg + usage_off / max_off` is limited and full to within
/// one failed charge.
#[inline(always)]
fn at_limit(memcg: u64, usage_off: u32, max_off: u32) -> Result<bool, i64> {
    let max = read::<u64>(memcg, max_off)?;
    if max == 0 || max >= PAGE_COUNTER_UNLIMITED {
        return Ok(false);
    }
    let usage = read::<u64>(memcg, usage_off)?;
    Ok(usage > 0 && usage.saturating_add(CHARGE_SLACK_PAGES + (max >> 7)) >= max)
}

/// How long a memory cgroup OOM decision is reused for further victims under the same cgroup
/// (`memory.oom.group` kills the whole group one by one, and the reaper may have freed the first
/// victim's memory before the last one is marked).
const OOM_DECISION_NS: u64 = 1_000_000_000;

/// The nearest memory cgroup at or above `task`'s for which `hit` holds, as
/// (`cgroup_subsys_state *`, levels above the task's); `None` when the walk reaches the root.
#[inline(always)]
fn find_memcg(task: u64, hit: impl Fn(u64) -> bool) -> Result<Option<(u64, u32)>, i64> {
    let css_set = read::<u64>(task, kconfig!(task_cgroups))?;
    let mut css = read::<u64>(css_set, kconfig!(css_set_memcg))?;
    for level in 0..MAX_MEMCG_LEVELS {
        if css == 0 {
            return Ok(None);
        }
        if hit(css) {
            return Ok(Some((css, level)));
        }
        css = read::<u64>(css, kconfig!(css_parent))?;
    }
    Ok(None)
}

/// The OOM counter key of a victim whose limit fired in the memory cgroup `css`, `level` levels
/// above the victim's (`None`: the walk reached the root, a global OOM).
#[inline(always)]
fn limit_key(victim_cgroup: u64, found: Option<(u64, u32)>) -> OomKey {
    let mut key = OomKey { cgroup_id: victim_cgroup, limit_cgroup_id: 0, limit: oom_limit::HOST, levels_up: 0 };
    if let Some((css, level)) = found {
        key.limit = if level == 0 { oom_limit::OWN } else { oom_limit::ANCESTOR };
        key.levels_up = level;
        key.limit_cgroup_id = read::<u64>(css, kconfig!(css_cgroup)).and_then(cgroup_id).unwrap_or(0);
    }
    key
}

#[inline(always)]
fn unknown_key(victim_cgroup: u64) -> OomKey {
    OomKey { cgroup_id: victim_cgroup, limit_cgroup_id: 0, limit: oom_limit::UNKNOWN, levels_up: 0 }
}

/// The last OOM decision, if it is younger than `window_ns`: the memory cgroup whose limit
/// fired, 0 for a global OOM (only the `oom_kill_process` kprobe records those).
#[inline(always)]
fn recent_decision(window_ns: u64) -> Option<u64> {
    let last = crate::maps::LAST_OOM.get(0)?;
    let now = unsafe { bpf_ktime_get_ns() };
    (last.time_ns != 0 && now.saturating_sub(last.time_ns) < window_ns).then_some(last.css)
}

/// Records an OOM decision for the victims that follow it (`css` 0: a global OOM).
#[inline(always)]
pub fn remember_decision(css: u64) {
    if let Some(last) = crate::maps::LAST_OOM.get_ptr_mut(0) {
        let time_ns = unsafe { bpf_ktime_get_ns() };
        unsafe { *last = crate::maps::LastOom { css, time_ns } };
    }
}

/// The OOM counter key of a victim: its cgroup, and the memory cgroup whose limit fired, found
/// as the nearest memory cgroup at or above the victim's that is full (or that the OOM decision
/// of the last second named). Called while the victim still holds its memory (from
/// `mark_victim`, before the kill).
#[inline(always)]
pub fn oom_key(victim: u64, victim_cgroup: u64) -> OomKey {
    let flags = kconfig!(flags);
    if flags & config_flags::HAS_MEMCG == 0 {
        return unknown_key(victim_cgroup);
    }
    let v1 = flags & config_flags::MEMCG_V1 != 0;
    let recent = recent_decision(OOM_DECISION_NS).unwrap_or(0);
    let full = |css: u64| {
        let memcg = css - kconfig!(memcg_css) as u64;
        css == recent
            || at_limit(memcg, kconfig!(memcg_memory_usage), kconfig!(memcg_memory_max)).unwrap_or(false)
            || (v1 && at_limit(memcg, kconfig!(memcg_memsw_usage), kconfig!(memcg_memsw_max)).unwrap_or(false))
    };
    match find_memcg(victim, full) {
        Ok(found) => {
            if let Some((css, _)) = found {
                remember_decision(css);
            }
            limit_key(victim_cgroup, found)
        }
        Err(_) => unknown_key(victim_cgroup),
    }
}

/// The OOM counter key of a victim whose limit is known: `limit_css` is the memory cgroup whose
/// limit fired, 0 for a global OOM (the `oom_kill_process` kprobe reads it from `oc->memcg`).
/// `UNKNOWN` when `limit_css` is not the victim's memory cgroup or one of its ancestors.
#[inline(always)]
pub fn oom_key_for_limit(victim: u64, victim_cgroup: u64, limit_css: u64) -> OomKey {
    if limit_css == 0 {
        return limit_key(victim_cgroup, None);
    }
    if kconfig!(flags) & config_flags::HAS_MEMCG == 0 {
        return unknown_key(victim_cgroup);
    }
    match find_memcg(victim, |css| css == limit_css) {
        Ok(found @ Some(_)) => limit_key(victim_cgroup, found),
        _ => unknown_key(victim_cgroup),
    }
}

/// `oc->memcg` as the `cgroup_subsys_state *` the walks compare with (0 for a global OOM).
#[inline(always)]
pub fn memcg_to_css(memcg: u64) -> u64 {
    if memcg == 0 { 0 } else { memcg + kconfig!(memcg_css) as u64 }
}

/// How long after an OOM decision a victim's exit is still matched to it: `memory.oom.group`
/// members are killed by the same decision and exit shortly after.
const OOM_EXIT_WINDOW_NS: u64 = 10_000_000_000;

/// The OOM counter key of an OOM victim at its exit, on kernels whose `mark_victim` carries
/// only a pid: from the last decision the `oom_kill_process` kprobe recorded, if it is recent
/// and covers the victim's memory cgroup; `UNKNOWN` otherwise.
#[inline(always)]
pub fn oom_key_at_exit(task: u64, cgroup_id: u64) -> OomKey {
    match recent_decision(OOM_EXIT_WINDOW_NS) {
        Some(css) => oom_key_for_limit(task, cgroup_id, css),
        None => unknown_key(cgroup_id),
    }
}

/// Identifies `task`'s thread group across probes: the leader's start time and global pid.
#[inline(always)]
pub fn group_key(task: u64) -> Result<ExitDedupKey, i64> {
    let leader = read::<u64>(task, kconfig!(task_group_leader))?;
    let pid = read::<u64>(leader, kconfig!(task_thread_pid))?;
    Ok(ExitDedupKey {
        leader_start_time: read::<u64>(leader, kconfig!(task_start_time))?,
        // numbers[0] is the pid in the initial namespace: the tgid.
        tgid: read::<i32>(pid, kconfig!(pid_numbers) + kconfig!(upid_nr))? as u32,
        _pad: 0,
    })
}
