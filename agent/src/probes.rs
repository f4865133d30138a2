//! The probe table, and loading / attaching the eBPF programs with graceful degradation: a probe
//! that cannot attach is reported (log and `cgwatch_probe_attached 0`) and the rest keep working.

use std::{
    collections::HashSet,
    fmt,
    path::Path,
    sync::{Mutex, MutexGuard},
};

use agent_common::{ExitKey, KernelConfig, OomKey, SeccompKey, config_flags, lost};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, FExit, KProbe, RawTracePoint},
};

use crate::config::{ProbeMode, SeccompMode};

/// The eBPF object built by `build.rs` from `agent-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

/// How a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// BTF-enabled tracepoint (`tp_btf`), kernel >= 5.5.
    TpBtf,
    /// Raw tracepoint (`raw_tp`), kernel >= 4.17.
    RawTp,
    /// fexit on a kernel function (BPF trampoline), kernel >= 5.5 with BTF for the function.
    Fexit,
    /// kprobe on a kernel function (`CONFIG_KPROBES`).
    Kprobe,
    /// kprobe on a kernel function's entry (`program`) and kretprobe on its return (the
    /// program named by `KRETPROBE_OF`).
    KprobePair,
}

/// The kretprobe of a `Mode::KprobePair` row is the entry program's name with this suffix
/// replacing `_kprobe`.
const KRETPROBE_OF: (&str, &str) = ("_kprobe", "_kretprobe");

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::TpBtf => "tp_btf",
            Mode::RawTp => "raw_tp",
            Mode::Fexit => "fexit",
            Mode::Kprobe | Mode::KprobePair => "kprobe",
        }
    }
}

/// What the `disable_if` predicates look at.
#[derive(Debug, Clone, Copy)]
pub struct ProbeContext {
    pub kernel: KernelConfig,
    pub kernel_version: (u32, u32),
    pub seccomp_mode: SeccompMode,
    pub probe_mode: ProbeMode,
}

/// One way to attach one probe. Rows of the same probe are tried in order until one attaches.
#[derive(Clone, Copy)]
pub struct ProbeSpec {
    /// The `probe` label.
    pub probe: &'static str,
    /// Tracepoint name.
    pub hook: &'static str,
    pub mode: Mode,
    /// Program name in the eBPF object.
    pub program: &'static str,
    /// Oldest kernel (major, minor) this row works on.
    pub min_kernel: (u32, u32),
    /// Returns why the probe must not be attached in this configuration, if so.
    pub disable_if: fn(&ProbeContext) -> Option<&'static str>,
    /// Probes that must be attached first: without them this one would count wrongly (a
    /// `sys_exit` without `sys_enter` would see every syscall as skipped).
    pub needs: &'static [&'static str],
    /// Whether this row fits this kernel (a program variant for one tracepoint signature).
    pub fits: fn(&ProbeContext) -> bool,
    /// Probes that do this one's work when attached: then this one stays off, so that nothing
    /// is counted twice (the fexit fast path replaces the syscall tracepoints).
    pub unless_attached: &'static [&'static str],
}

impl fmt::Debug for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({}, {})", self.probe, self.hook, self.mode.as_str())
    }
}

fn never(_: &ProbeContext) -> Option<&'static str> {
    None
}

fn always(_: &ProbeContext) -> bool {
    true
}

fn exit_has_group_dead(c: &ProbeContext) -> bool {
    c.kernel.flags & config_flags::EXIT_HAS_GROUP_DEAD != 0
}

fn exit_lacks_group_dead(c: &ProbeContext) -> bool {
    !exit_has_group_dead(c)
}

fn unless_syscall_tracking(c: &ProbeContext) -> Option<&'static str> {
    match c.seccomp_mode {
        SeccompMode::Auto | SeccompMode::Tracepoint => None,
        SeccompMode::Signals => Some("--seccomp-mode=signals counts no ERRNO verdicts"),
        SeccompMode::Off => Some("--seccomp-mode=off"),
        SeccompMode::Fexit => Some("--seccomp-mode=fexit"),
        SeccompMode::Kprobe => Some("--seccomp-mode=kprobe"),
    }
}

fn unless_seccomp(c: &ProbeContext) -> Option<&'static str> {
    (c.seccomp_mode == SeccompMode::Off).then_some("--seccomp-mode=off")
}

fn unless_mark_victim_has_task(c: &ProbeContext) -> Option<&'static str> {
    (c.kernel.flags & config_flags::MARK_VICTIM_HAS_TASK == 0)
        .then_some("mark_victim carries only a pid on this kernel; OOM kills are counted at the victim's exit")
}

macro_rules! probe_rows {
    ($probe:literal, $hook:literal, $btf:literal, $raw:literal, $disable:expr) => {
        probe_rows!($probe, $hook, $btf, $raw, $disable, [], always)
    };
    ($probe:literal, $hook:literal, $btf:literal, $raw:literal, $disable:expr, $needs:expr) => {
        probe_rows!($probe, $hook, $btf, $raw, $disable, $needs, always)
    };
    ($probe:literal, $hook:literal, $btf:literal, $raw:literal, $disable:expr, $needs:expr, $fits:expr) => {
        [
            ProbeSpec {
                probe: $probe,
                hook: $hook,
                mode: Mode::TpBtf,
                program: $btf,
                min_kernel: (5, 5),
                disable_if: $disable,
                needs: &$needs,
                fits: $fits,
                unless_attached: &[],
            },
            ProbeSpec {
                probe: $probe,
                hook: $hook,
                mode: Mode::RawTp,
                program: $raw,
                min_kernel: (4, 17),
                disable_if: $disable,
                needs: &$needs,
                fits: $fits,
                unless_attached: &[],
            },
        ]
    };
}

/// The same rows, kept off while any of `probes` is attached.
const fn unless_attached(mut rows: [ProbeSpec; 2], probes: &'static [&'static str]) -> [ProbeSpec; 2] {
    rows[0].unless_attached = probes;
    rows[1].unless_attached = probes;
    rows
}

fn unless_fast_path(c: &ProbeContext) -> Option<&'static str> {
    match c.seccomp_mode {
        SeccompMode::Auto | SeccompMode::Fexit | SeccompMode::Kprobe => None,
        SeccompMode::Tracepoint => Some("--seccomp-mode=tracepoint"),
        SeccompMode::Signals => Some("--seccomp-mode=signals counts no ERRNO verdicts"),
        SeccompMode::Off => Some("--seccomp-mode=off"),
    }
}

fn seccomp_filter_args_2(c: &ProbeContext) -> bool {
    c.kernel.seccomp_filter_args == 2 && c.seccomp_mode != SeccompMode::Kprobe
}

fn seccomp_filter_args_3(c: &ProbeContext) -> bool {
    c.kernel.seccomp_filter_args == 3 && c.seccomp_mode != SeccompMode::Kprobe
}

/// Oldest kernel with fexit (BPF trampolines).
const FEXIT_MIN_KERNEL: (u32, u32) = (5, 5);

/// The fast path for ERRNO verdicts: fexit on `__seccomp_filter`, one program per parameter
/// count (the return value's slot follows the parameters), else a kprobe / kretprobe pair on it
/// (no BPF trampolines, or BTF without the function).
const SECCOMP_FAST_PATH: [ProbeSpec; 3] = [
    fexit_row("seccomp_filter_fexit3", seccomp_filter_args_3),
    fexit_row("seccomp_filter_fexit2", seccomp_filter_args_2),
    ProbeSpec {
        probe: "seccomp_filter",
        hook: "__seccomp_filter",
        mode: Mode::KprobePair,
        program: "seccomp_filter_kprobe",
        min_kernel: (4, 17),
        disable_if: unless_fast_path,
        needs: &[],
        fits: always,
        unless_attached: &[],
    },
];

const fn fexit_row(program: &'static str, fits: fn(&ProbeContext) -> bool) -> ProbeSpec {
    ProbeSpec {
        probe: "seccomp_filter",
        hook: "__seccomp_filter",
        mode: Mode::Fexit,
        program,
        min_kernel: FEXIT_MIN_KERNEL,
        disable_if: unless_fast_path,
        needs: &[],
        fits,
        unless_attached: &[],
    }
}

fn unless_oom_kill_process_needed(c: &ProbeContext) -> Option<&'static str> {
    if c.kernel.flags & config_flags::MARK_VICTIM_HAS_TASK != 0 {
        Some("not needed: mark_victim carries the victim and tells the limit that fired")
    } else if c.kernel.flags & config_flags::HAS_OOM_CONTROL == 0 {
        Some("kernel BTF has no struct oom_control; OOM kills are counted with limit=\"unknown\"")
    } else {
        None
    }
}

/// Where `mark_victim` carries only a pid: the OOM killer's decision, for the limit that fired.
const OOM_KILL_PROCESS: [ProbeSpec; 1] = [ProbeSpec {
    probe: "oom_kill_process",
    hook: "oom_kill_process",
    mode: Mode::Kprobe,
    program: "oom_kill_process_kprobe",
    min_kernel: (4, 17),
    disable_if: unless_oom_kill_process_needed,
    needs: &[],
    fits: always,
    unless_attached: &[],
}];

const EXIT_GD: [ProbeSpec; 2] = probe_rows!(
    "process_exit",
    "sched_process_exit",
    "sched_process_exit_gd_btf",
    "sched_process_exit_gd_raw",
    never,
    [],
    exit_has_group_dead
);
const EXIT_NO_GD: [ProbeSpec; 2] = probe_rows!(
    "process_exit",
    "sched_process_exit",
    "sched_process_exit_btf",
    "sched_process_exit_raw",
    never,
    [],
    exit_lacks_group_dead
);

/// Every probe, in attach order, each with its rows in order of preference.
pub static PROBES: [&[ProbeSpec]; 9] = [
    &probe_rows!("cgroup_mkdir", "cgroup_mkdir", "cgroup_mkdir_btf", "cgroup_mkdir_raw", never),
    &probe_rows!("cgroup_rmdir", "cgroup_rmdir", "cgroup_rmdir_btf", "cgroup_rmdir_raw", never),
    // With group_dead (>= 6.16) or without it, tp_btf before raw_tp.
    &[EXIT_GD[0], EXIT_NO_GD[0], EXIT_GD[1], EXIT_NO_GD[1]],
    &probe_rows!("oom_mark_victim", "mark_victim", "mark_victim_btf", "mark_victim_raw", unless_mark_victim_has_task),
    &OOM_KILL_PROCESS,
    &probe_rows!("seccomp_signal", "signal_generate", "signal_generate_btf", "signal_generate_raw", unless_seccomp),
    &SECCOMP_FAST_PATH,
    &unless_attached(
        probe_rows!("seccomp_sys_enter", "sys_enter", "sys_enter_btf", "sys_enter_raw", unless_syscall_tracking),
        &["seccomp_filter"],
    ),
    &unless_attached(
        probe_rows!(
            "seccomp_sys_exit",
            "sys_exit",
            "sys_exit_btf",
            "sys_exit_raw",
            unless_syscall_tracking,
            ["seccomp_sys_enter"]
        ),
        &["seccomp_filter"],
    ),
];

/// What happened to one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeStatus {
    pub probe: &'static str,
    /// The mode it attached with, or the preferred one when it did not attach.
    pub mode: &'static str,
    pub attached: bool,
    /// Why it is not attached (empty when attached).
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot load the eBPF object")]
    Load(#[from] aya::EbpfError),
    #[error("cannot read kernel BTF for the loader")]
    Btf(#[from] aya::BtfError),
    #[error("the eBPF object has no map {0}")]
    NoMap(&'static str),
    #[error("cannot use map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("the embedded eBPF object is empty: build with `cargo xtask build` (AYA_BUILD_SKIP was set)")]
    EmptyObject,
}

/// Map sizes, derived from `--max-cgroups`.
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    pub seccomp: u32,
    pub exits: u32,
    pub oom: u32,
}

impl MapSizes {
    pub fn for_max_cgroups(max_cgroups: u32) -> Self {
        // A cgroup usually has a handful of (syscall, action) and (reason, signal) pairs; leave
        // room for cgroups kept in the retain window too.
        let base = max_cgroups.clamp(256, 100_000);
        Self { seccomp: base * 4, exits: base * 4, oom: base }
    }
}

/// The loaded object, what attached, and the maps userspace reads.
pub struct LoadedProbes {
    /// Owns the programs and their links: dropping it detaches everything.
    pub ebpf: Ebpf,
    pub status: Vec<ProbeStatus>,
    pub maps: KernelMaps,
    pub events: RingBuf<MapData>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::NoMap(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

/// Loads the object with the kernel layout in `KCONFIG` and attaches every probe it can.
pub fn load(
    btf_file: &Path,
    ctx: &ProbeContext,
    sizes: MapSizes,
) -> Result<LoadedProbes, ProbeError> {
    if EBPF_OBJECT.is_empty() {
        return Err(ProbeError::EmptyObject);
    }
    let btf = aya::Btf::parse_file(btf_file, aya::Endianness::default())?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("KCONFIG", &ctx.kernel, true)
        .map_max_entries("SECCOMP_COUNTS", sizes.seccomp)
        .map_max_entries("EXIT_COUNTS", sizes.exits)
        .map_max_entries("OOM_COUNTS", sizes.oom)
        .load(EBPF_OBJECT)?;

    let mut status: Vec<ProbeStatus> = Vec::with_capacity(PROBES.len());
    for rows in &PROBES {
        let st = attach_one(&mut ebpf, &btf, rows, ctx, &status);
        status.push(st);
    }
    fast_path_fell_back(&mut status);

    let maps = KernelMaps {
        seccomp: Mutex::new(take(&mut ebpf, "SECCOMP_COUNTS")?),
        exits: Mutex::new(take(&mut ebpf, "EXIT_COUNTS")?),
        oom: Mutex::new(take(&mut ebpf, "OOM_COUNTS")?),
        lost: Mutex::new(take(&mut ebpf, "LOST")?),
    };
    let events = take(&mut ebpf, "EVENTS")?;
    Ok(LoadedProbes { ebpf, status, maps, events })
}

/// In `--seccomp-mode auto` a fast path that could not attach is not a blind spot when the
/// syscall tracepoints took over: it is reported `off` (as not wanted here), with the reason.
fn fast_path_fell_back(status: &mut [ProbeStatus]) {
    let tracepoints = status.iter().any(|s| s.probe == "seccomp_sys_exit" && s.attached);
    if let Some(fast) = status.iter_mut().find(|s| s.probe == "seccomp_filter" && !s.attached && s.mode != "off")
        && tracepoints
    {
        fast.detail = format!("unavailable here, the syscall tracepoints count ERRNO verdicts ({})", fast.detail);
        fast.mode = "off";
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    rows: &[ProbeSpec],
    ctx: &ProbeContext,
    earlier: &[ProbeStatus],
) -> ProbeStatus {
    let first = &rows[0];
    if let Some(why) = (first.disable_if)(ctx) {
        return ProbeStatus { probe: first.probe, mode: "off", attached: false, detail: why.into() };
    }
    if let Some(by) = first.unless_attached.iter().find(|p| earlier.iter().any(|s| s.probe == **p && s.attached)) {
        return ProbeStatus {
            probe: first.probe,
            mode: "off",
            attached: false,
            detail: format!("{by} counts these verdicts (fast path)"),
        };
    }
    if let Some(need) = first.needs.iter().find(|n| !earlier.iter().any(|s| s.probe == **n && s.attached)) {
        return ProbeStatus {
            probe: first.probe,
            mode: first.mode.as_str(),
            attached: false,
            detail: format!("not attached because {need} is not"),
        };
    }
    let mut errors = Vec::new();
    let allowed = |row: &ProbeSpec| {
        (row.fits)(ctx)
            && match ctx.probe_mode {
                // --probe-mode picks between the two tracepoint kinds only.
                _ if matches!(row.mode, Mode::Fexit | Mode::Kprobe | Mode::KprobePair) => true,
                ProbeMode::Auto => true,
                ProbeMode::TpBtf => row.mode == Mode::TpBtf,
                ProbeMode::RawTp => row.mode == Mode::RawTp,
            }
    };
    for row in rows.iter().filter(|r| allowed(r)) {
        if ctx.kernel_version < row.min_kernel {
            errors.push(format!(
                "{}: needs kernel {}.{}",
                row.mode.as_str(),
                row.min_kernel.0,
                row.min_kernel.1
            ));
            continue;
        }
        match attach_row(ebpf, btf, row) {
            Ok(()) => {
                return ProbeStatus { probe: row.probe, mode: row.mode.as_str(), attached: true, detail: String::new() };
            }
            Err(e) => errors.push(format!("{}: {e}", row.mode.as_str())),
        }
    }
    let mode = rows.iter().find(|r| allowed(r)).unwrap_or(first).mode.as_str();
    ProbeStatus { probe: first.probe, mode, attached: false, detail: errors.join("; ") }
}

fn attach_row(ebpf: &mut Ebpf, btf: &aya::Btf, row: &ProbeSpec) -> Result<(), String> {
    if row.mode == Mode::KprobePair {
        return attach_kprobe_pair(ebpf, row);
    }
    let program = ebpf
        .program_mut(row.program)
        .ok_or_else(|| format!("program {} missing from the object", row.program))?;
    match row.mode {
        Mode::TpBtf => {
            let p: &mut BtfTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
            p.load(row.hook, btf).map_err(|e| format!("load: {}", error_chain(&e)))?;
            p.attach().map_err(|e| format!("attach: {}", error_chain(&e)))?;
        }
        Mode::Fexit => {
            let p: &mut FExit = program.try_into().map_err(|e| format!("{e}"))?;
            p.load(row.hook, btf).map_err(|e| format!("load: {}", error_chain(&e)))?;
            p.attach().map_err(|e| format!("attach: {}", error_chain(&e)))?;
        }
        Mode::Kprobe | Mode::KprobePair => attach_kprobe(program, row.hook)?,
        Mode::RawTp => {
            let p: &mut RawTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
            p.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
            p.attach(row.hook).map_err(|e| format!("attach: {}", error_chain(&e)))?;
        }
    }
    Ok(())
}

/// A kretprobe, then the kprobe on the same function; neither stays attached if the other fails.
fn attach_kprobe_pair(ebpf: &mut Ebpf, row: &ProbeSpec) -> Result<(), String> {
    let ret = row.program.replace(KRETPROBE_OF.0, KRETPROBE_OF.1);
    let missing = |name: &str| format!("program {name} missing from the object");
    // The return side first: an entry probe alone would only fill its map.
    attach_kprobe(ebpf.program_mut(&ret).ok_or_else(|| missing(&ret))?, row.hook)?;
    let entry = ebpf.program_mut(row.program).ok_or_else(|| missing(row.program))?;
    if let Err(e) = attach_kprobe(entry, row.hook) {
        if let Some(p) = ebpf.program_mut(&ret).and_then(|p| <&mut KProbe>::try_from(p).ok()) {
            let _ = p.unload();
        }
        return Err(e);
    }
    Ok(())
}

fn attach_kprobe(program: &mut aya::programs::Program, function: &str) -> Result<(), String> {
    let p: &mut KProbe = program.try_into().map_err(|e| format!("{e}"))?;
    p.load().map_err(|e| format!("load: {}", error_chain(&e)))?;
    p.attach(function, 0).map_err(|e| format!("attach: {}", error_chain(&e)))?;
    Ok(())
}

/// `e` and its sources on one line (verifier logs are cut to their last three lines, where the
/// verdict is).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        let mut tail: Vec<&str> = text.lines().rev().map(str::trim).filter(|l| !l.is_empty()).take(3).collect();
        tail.reverse();
        out.push_str(": ");
        out.push_str(&tail.join(" | "));
        cur = s.source();
    }
    out
}

/// The counter maps, read at scrape time (values summed over CPUs).
pub struct KernelMaps {
    seccomp: Mutex<PerCpuHashMap<MapData, SeccompKey, u64>>,
    exits: Mutex<PerCpuHashMap<MapData, ExitKey, u64>>,
    oom: Mutex<PerCpuHashMap<MapData, OomKey, u64>>,
    lost: Mutex<PerCpuArray<MapData, u64>>,
}

impl fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KernelMaps")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sum_all<K: aya::Pod + Eq + std::hash::Hash>(map: &PerCpuHashMap<MapData, K, u64>) -> Vec<(K, u64)> {
    // An entry deleted while iterating yields an error for that key only: skip it.
    // Wrapping: a probe may take a count back on another CPU than the one that added it
    // (`uncount_exit`), leaving that CPU's slot below zero.
    map.iter()
        .filter_map(Result::ok)
        .map(|(k, per_cpu)| (k, per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v))))
        .filter(|(_, total)| *total != 0)
        .collect()
}

fn forget<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut PerCpuHashMap<MapData, K, u64>,
    dead: impl Fn(&K) -> bool,
) -> usize {
    let keys: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| dead(k)).collect();
    keys.iter().filter(|k| map.remove(k).is_ok()).count()
}

impl KernelMaps {
    pub fn seccomp(&self) -> Vec<(SeccompKey, u64)> {
        sum_all(&lock(&self.seccomp))
    }

    pub fn exits(&self) -> Vec<(ExitKey, u64)> {
        sum_all(&lock(&self.exits))
    }

    pub fn oom(&self) -> Vec<(OomKey, u64)> {
        sum_all(&lock(&self.oom))
    }

    /// Events lost so far, by `agent_common::lost` index.
    pub fn lost(&self) -> [u64; lost::COUNT as usize] {
        let map = lock(&self.lost);
        let mut out = [0u64; lost::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(v) = map.get(&(i as u32), 0) {
                *slot = v.iter().sum();
            }
        }
        out
    }

    /// Deletes the counters of cgroups that left the retain window.
    pub fn forget_cgroups(&self, ids: &HashSet<u64>) -> usize {
        forget(&mut lock(&self.seccomp), |k| ids.contains(&k.cgroup_id))
            + forget(&mut lock(&self.exits), |k| ids.contains(&k.cgroup_id))
            + forget(&mut lock(&self.oom), |k| ids.contains(&k.cgroup_id))
    }
}

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

    #[test]
    fn probe_table_is_consistent() {
        let mut names = HashSet::new();
        for rows in PROBES {
            assert!(names.insert(rows[0].probe), "duplicate probe {}", rows[0].probe);
            assert!(rows.iter().all(|r| r.probe == rows[0].probe && r.hook == rows[0].hook));
            if matches!(rows[0].mode, Mode::Fexit | Mode::Kprobe) {
                // Function probes: fexit rows first, then kprobes; never a tracepoint.
                assert!(rows.iter().all(|r| matches!(r.mode, Mode::Fexit | Mode::Kprobe | Mode::KprobePair)));
                assert!(rows.windows(2).all(|w| w[0].mode == Mode::Fexit || w[1].mode != Mode::Fexit));
            } else {
                assert_eq!(rows[0].mode, Mode::TpBtf, "tp_btf is preferred");
            }
            for need in rows[0].needs {
                assert!(names.contains(need), "{} needs {need}, which must come before it", rows[0].probe);
            }
        }
    }

    /// A hook the kernel does not have: both modes fail, the probe is reported with both
    /// reasons, and loading the rest is unaffected. Needs root and kernel BTF.
    #[test]
    fn a_probe_that_cannot_attach_is_reported_not_fatal() {
        let btf_path = Path::new("/sys/kernel/btf/vmlinux");
        if !btf_path.exists() || unsafe { libc::geteuid() } != 0 {
            eprintln!("needs root and kernel BTF; skipping");
            return;
        }
        let kernel = crate::btf::KernelBtf::from_sysfs(Path::new("/sys")).unwrap().kernel_config().unwrap();
        let ctx = ProbeContext {
            kernel,
            kernel_version: kernel_version(),
            seccomp_mode: SeccompMode::Auto,
            probe_mode: ProbeMode::Auto,
        };
        let btf = aya::Btf::parse_file(btf_path, aya::Endianness::default()).unwrap();
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("KCONFIG", &ctx.kernel, true)
            .load(EBPF_OBJECT)
            .unwrap();
        let bogus: Vec<ProbeSpec> =
            PROBES[0].iter().map(|row| ProbeSpec { hook: "cgwatch_no_such_tracepoint", ..*row }).collect();
        let status = attach_one(&mut ebpf, &btf, &bogus, &ctx, &[]);
        assert!(!status.attached);
        assert_eq!(status.mode, "tp_btf");
        assert!(status.detail.contains("tp_btf: ") && status.detail.contains("raw_tp: "), "{}", status.detail);
        // The real hook still attaches from the same object.
        let rmdir = attach_one(&mut ebpf, &btf, PROBES[1], &ctx, &[]);
        assert!(rmdir.attached, "{}", rmdir.detail);
        // sys_exit without sys_enter would count every syscall of a filtered task: refused.
        let exit_rows = PROBES.iter().find(|r| r[0].probe == "seccomp_sys_exit").unwrap();
        let exit = attach_one(&mut ebpf, &btf, exit_rows, &ctx, &[status]);
        assert!(!exit.attached);
        assert_eq!(exit.detail, "not attached because seccomp_sys_enter is not");
    }

    #[test]
    fn seccomp_modes_disable_the_right_probes() {
        let mut ctx = ProbeContext {
            kernel: KernelConfig::default(),
            kernel_version: (6, 18),
            seccomp_mode: SeccompMode::Signals,
            probe_mode: ProbeMode::Auto,
        };
        let disabled = |ctx: &ProbeContext| -> Vec<&str> {
            PROBES.iter().filter(|r| (r[0].disable_if)(ctx).is_some()).map(|r| r[0].probe).collect()
        };
        assert_eq!(
            disabled(&ctx),
            ["oom_mark_victim", "oom_kill_process", "seccomp_filter", "seccomp_sys_enter", "seccomp_sys_exit"]
        );
        // mark_victim with only a pid: the oom_kill_process kprobe tells the limit instead.
        ctx.kernel.flags = config_flags::HAS_OOM_CONTROL;
        assert_eq!(disabled(&ctx), ["oom_mark_victim", "seccomp_filter", "seccomp_sys_enter", "seccomp_sys_exit"]);
        ctx.seccomp_mode = SeccompMode::Off;
        ctx.kernel.flags = config_flags::MARK_VICTIM_HAS_TASK | config_flags::HAS_OOM_CONTROL;
        assert_eq!(
            disabled(&ctx),
            ["oom_kill_process", "seccomp_signal", "seccomp_filter", "seccomp_sys_enter", "seccomp_sys_exit"]
        );
        // fexit: the fast path only, the tracepoints stay off (no fallback).
        ctx.seccomp_mode = SeccompMode::Fexit;
        ctx.kernel.seccomp_filter_args = 3;
        assert_eq!(disabled(&ctx), ["oom_kill_process", "seccomp_sys_enter", "seccomp_sys_exit"]);
        // auto: the fast path, and the tracepoints unless it attaches.
        ctx.seccomp_mode = SeccompMode::Auto;
        assert_eq!(disabled(&ctx), ["oom_kill_process"]);
        // Which rows of the fast path may be tried: the fexit program for the kernel's parameter
        // count, then the kprobe pair; only the pair in kprobe mode or where BTF lacks the function.
        let fast = PROBES.iter().find(|r| r[0].probe == "seccomp_filter").unwrap();
        let fitting = |ctx: &ProbeContext| fast.iter().filter(|r| (r.fits)(ctx)).map(|r| r.program).collect::<Vec<_>>();
        assert_eq!(fitting(&ctx), ["seccomp_filter_fexit3", "seccomp_filter_kprobe"]);
        ctx.kernel.seccomp_filter_args = 2;
        assert_eq!(fitting(&ctx), ["seccomp_filter_fexit2", "seccomp_filter_kprobe"]);
        ctx.kernel.seccomp_filter_args = 0;
        assert_eq!(fitting(&ctx), ["seccomp_filter_kprobe"]);
        ctx.kernel.seccomp_filter_args = 3;
        ctx.seccomp_mode = SeccompMode::Kprobe;
        assert_eq!(fitting(&ctx), ["seccomp_filter_kprobe"]);
        assert_eq!(disabled(&ctx), ["oom_kill_process", "seccomp_sys_enter", "seccomp_sys_exit"]);
        let enter = PROBES.iter().find(|r| r[0].probe == "seccomp_sys_enter").unwrap();
        assert_eq!(enter[0].unless_attached, ["seccomp_filter"]);
    }
}
