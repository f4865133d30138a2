//! Access to kernel structures through the offsets the loader read from BTF.

use agent_common::{KernelConfig, kabi};
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, generated::bpf_get_current_task_btf};

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
    pt_regs_orig_ax: 0,
    siginfo_code: 0,
    siginfo_syscall: 0,
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
