//! The capabilities the agent needs: checked at start, dropped once the probes are attached.

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

/// The capabilities the agent keeps once its probes are attached: reading the runtimes' state
/// for container names (0700 / 0600 root files) when it runs as another user. Map reads and
/// deletes, the ring buffer and the HTTP server work on descriptors it already holds.
const KEPT: [Capability; 1] = [Capability::CAP_DAC_READ_SEARCH];

/// Drops every capability but [`KEPT`] (from the effective, permitted, inheritable, ambient and,
/// where allowed, bounding sets), so that a compromise of the running agent cannot load programs,
/// read kernel memory or regain what it gave up. `maps_readable` tells, with the smaller
/// effective set already in force, whether the agent can still read its maps: kernels before
/// 5.16 with `kernel.unprivileged_bpf_disabled` set (Debian's 5.10 sets 2) refuse every bpf()
/// call, map reads on held descriptors included, without CAP_BPF, which is then kept. Returns
/// the capabilities it still holds.
pub fn drop_after_attach(maps_readable: impl Fn() -> bool) -> Result<Vec<Capability>, caps::errors::CapsError> {
    let effective = caps::read(None, CapSet::Effective)?;
    let mut keep: caps::CapsHashSet = KEPT.iter().copied().filter(|c| effective.contains(c)).collect();
    // The effective set first: the permitted one still allows raising CAP_BPF again.
    caps::set(None, CapSet::Effective, &keep)?;
    if !maps_readable() {
        let gate = [Capability::CAP_BPF, Capability::CAP_SYS_ADMIN].into_iter().find(|c| effective.contains(c));
        keep.extend(gate);
        caps::set(None, CapSet::Effective, &keep)?;
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::set(None, CapSet::Inheritable, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    // Needs CAP_SETPCAP, which only root has here; the permitted set above is what matters.
    for c in caps::read(None, CapSet::Bounding)? {
        if !keep.contains(&c) {
            let _ = caps::drop(None, CapSet::Bounding, c);
        }
    }
    let mut kept: Vec<Capability> = keep.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(kept)
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
