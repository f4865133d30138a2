//! The eBPF programs: the probe table (`table`), loading them (`attach`) and attaching each probe (`attacher`), where they
//! keep per-thread state (`task_state`), kprobe symbols (`symbols`), kretprobes with room for every call (`kretprobe`), the runs the kernel skipped (`skipped`), the raw bpf(2) calls aya lacks (`sys`), and the running kernel's version. The maps they count in are read by `crate::maps`.

pub mod attach;
mod attacher;
pub mod kretprobe;
pub mod skipped;
pub mod symbols;
mod sys;
pub mod table;
pub mod task_state;

pub use attach::{LoadedProbes, MapSizes, ProbeError, ProbeStatus, all_failed, load, loader};
pub use skipped::SkippedRuns;
pub use table::{Mode, PROBES, ProbeContext, ProbeSpec};

/// The eBPF object built by `build.rs` from `agent-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

/// Running kernel version (major, minor), from uname.
pub fn kernel_version() -> (u32, u32) {
    parse_kernel_version(&kernel_release())
}

/// The running kernel's release string, from uname.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn parse_kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    let major = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v782"), (6, 18));
        assert_eq!(parse_kernel_version("5.10.0-28-cloud-amd64"), (5, 10));
        assert_eq!(parse_kernel_version("garbage"), (0, 0));
    }
}
