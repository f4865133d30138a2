//! fexit (else a kprobe) on `audit_seccomp(syscall, signr, code)`: the one place a seccomp LOG
//! verdict (complain mode) is visible, since the syscall then runs as if allowed. The kernel
//! calls it from `seccomp_log()` for every verdict listed in `kernel.seccomp.actions_logged`
//! (LOG by default), whether or not auditd runs; only `code == SECCOMP_RET_LOG` is counted
//! here, every other verdict is counted where it is today.

use agent_common::{SeccompKey, action, kabi};
use aya_ebpf::{
    helpers::bpf_get_current_cgroup_id,
    macros::{fexit, kprobe},
    programs::{FExitContext, ProbeContext},
};

use crate::maps;

/// The `probe` label of this hook, in diagnostics.
const PROBE: &str = "seccomp_log";

#[fexit(function = "audit_seccomp")]
pub fn audit_seccomp_fexit(ctx: FExitContext) -> i32 {
    crate::diag::report(PROBE, try_audit_seccomp(ctx.arg::<u64>(0), ctx.arg::<i32>(2)));
    0
}

#[kprobe]
pub fn audit_seccomp_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(nr), Some(code)) = (ctx.arg::<u64>(0), ctx.arg::<i32>(2)) {
        crate::diag::report(PROBE, try_audit_seccomp(nr, code));
    }
    0
}

#[inline(always)]
fn try_audit_seccomp(nr: u64, code: i32) -> Result<(), i64> {
    if code as u32 != kabi::SECCOMP_RET_LOG {
        return Ok(());
    }
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let key = SeccompKey { cgroup_id, syscall_nr: nr as i32, action: action::LOG };
    maps::count_seccomp(&key, PROBE);
    crate::events::seccomp(cgroup_id, nr as i32, action::LOG, -1, PROBE);
    Ok(())
}
