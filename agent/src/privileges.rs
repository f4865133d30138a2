//! Startup checks for what loading probes needs.

use caps::{CapSet, Capability};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "missing {0}: cgwatch loads eBPF programs and needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); \
         run it as root or grant those capabilities"
    )]
    Missing(&'static str),
}

fn has(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// CAP_SYS_ADMIN covers both; kernels before 5.8 know only CAP_SYS_ADMIN.
pub fn check() -> Result<(), PrivilegeError> {
    if has(Capability::CAP_SYS_ADMIN) {
        return Ok(());
    }
    if !has(Capability::CAP_BPF) {
        return Err(PrivilegeError::Missing("CAP_BPF"));
    }
    if !has(Capability::CAP_PERFMON) {
        return Err(PrivilegeError::Missing("CAP_PERFMON"));
    }
    Ok(())
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF maps to it (< 5.11). Failure is not
/// fatal: newer kernels charge BPF memory to the memory cgroup instead.
pub fn raise_memlock() -> Result<(), nix::Error> {
    use nix::sys::resource::{Resource, RLIM_INFINITY, setrlimit};
    setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY)
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit (every HTTP connection holds a
/// descriptor); returns the soft limit now in force.
pub fn raise_nofile() -> Result<u64, nix::Error> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}
