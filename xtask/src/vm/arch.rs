//! The architectures the VM matrix boots: what differs between x86_64 and arm64 (Debian's name,
//! the Rust target, qemu and its machine, the console, the kernels and modes, the initramfs's
//! busybox and shared libraries).

use std::{path::PathBuf, time::Duration};

pub struct Arch {
    /// As `--arch` takes it.
    pub name: &'static str,
    /// Debian's architecture (`linux-image-cloud-<debian>`).
    pub debian: &'static str,
    /// The Rust target to cross-build for; `None`: the host's (x86_64).
    pub triple: Option<&'static str>,
    /// The qemu binary, and the bookworm-backports packages that bring it (and the firmware).
    pub qemu: &'static str,
    pub qemu_packages: &'static [&'static str],
    /// Firmware directories of those packages (`-L`).
    pub qemu_data: &'static [&'static str],
    /// Machine options before `-kernel`.
    pub machine: &'static [&'static str],
    pub cpu: &'static str,
    pub console: &'static str,
    /// Debian suites and the label of each one's kernel.
    pub kernels: &'static [(&'static str, &'static str)],
    /// The agent configurations it runs in.
    pub modes: &'static [&'static str],
    /// How long one boot may take.
    pub timeout: Duration,
    /// Where the cross libc's shared libraries are (the host's `ldd` cannot read the binaries);
    /// `None`: ask `ldd`.
    pub cross_libs: Option<&'static str>,
    /// The dynamic loader the binaries name (PT_INTERP) and the libraries they need, in
    /// `cross_libs`.
    pub cross_loader: &'static str,
    pub cross_needed: &'static [&'static str],
}

pub const X86_64: Arch = Arch {
    name: "x86_64",
    debian: "amd64",
    triple: None,
    qemu: "qemu-system-x86_64",
    qemu_packages: &["qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios"],
    qemu_data: &["usr/share/qemu", "usr/share/seabios"],
    machine: &[],
    cpu: "max",
    console: "ttyS0",
    kernels: &[("bullseye", "5.10"), ("bookworm", "6.1"), ("trixie", "6.12"), ("sid", "sid")],
    modes: &["auto", "tracepoint", "raw_tp", "kprobe"],
    // With the four test binaries a healthy 5.10 run powered off at
    // 167 s of guest time on a 2-CPU host shared with other VMs and builds, and the boot before it,
    // under heavier load, was still in its last binary at the former 240 s bound; a kernel that locks
    // up or hangs panics at once (`softlockup_panic`, `hung_task_panic`), so this bounds only a
    // silent hang. At 420 s, with three more seccomp tests (2026-12-03) and a load average of 6 on
    // the 2-CPU host, a healthy 6.12 run timed out twice in its last binary.
    timeout: Duration::from_secs(600),
    cross_libs: None,
    cross_loader: "",
    cross_needed: &[],
};

/// Debian's arm64 cloud kernels under `qemu-system-aarch64 -M virt` (TCG): neither has fexit on
/// kernel functions (arm64 needs 6.4 for ftrace direct calls), so `auto` is the kprobe pair, as
/// `kprobe`; `raw_tp` adds nothing arm64-specific over `tracepoint`. PAuth's QARMA cipher is slow
/// to emulate: `pauth-impdef` takes qemu's own. No NIC: the default one wants a ROM, and the
/// tests use `lo` only.
pub const ARM64: Arch = Arch {
    name: "arm64",
    debian: "arm64",
    triple: Some("aarch64-unknown-linux-gnu"),
    qemu: "qemu-system-aarch64",
    qemu_packages: &["qemu-system-arm", "qemu-system-common", "qemu-system-data"],
    qemu_data: &["usr/share/qemu"],
    machine: &["-M", "virt", "-nic", "none"],
    cpu: "max,pauth-impdef=on",
    console: "ttyAMA0",
    kernels: &[("bullseye", "5.10"), ("bookworm", "6.1")],
    modes: &["auto", "tracepoint", "kprobe"],
    timeout: Duration::from_secs(1200),
    cross_libs: Some("/usr/aarch64-linux-gnu/lib"),
    cross_loader: "ld-linux-aarch64.so.1",
    cross_needed: &["libc.so.6", "libm.so.6", "libgcc_s.so.1"],
};

pub fn by_name(name: &str) -> Option<&'static Arch> {
    [&X86_64, &ARM64].into_iter().find(|a| a.name == name || a.debian == name || a.triple == Some(name))
}

impl Arch {
    pub fn is_host(&self) -> bool {
        self.triple.is_none()
    }

    /// Where cargo puts this architecture's release binaries.
    pub fn release_dir(&self, root: &std::path::Path) -> PathBuf {
        match self.triple {
            Some(t) => root.join("target").join(t).join("release"),
            None => root.join("target/release"),
        }
    }

    /// A kernel's label in the printed tables: its version, with the architecture unless x86_64.
    pub fn label(&self, version: &str) -> String {
        if self.is_host() { version.to_string() } else { format!("{version} {}", self.name) }
    }

    /// The cache key of a suite's kernels and apt configuration.
    pub fn suite_dir(&self, suite: &str) -> String {
        if self.is_host() { suite.to_string() } else { format!("{suite}-{}", self.debian) }
    }
}
