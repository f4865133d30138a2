//! Loading the eBPF object and attaching every probe of the table it can, with graceful
//! degradation: a probe that cannot attach is reported (log and `cgwatch_probe_attached 0`) and
//! the rest keep working.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{BtfTracePoint, FExit, KProbe, RawTracePoint},
};

use super::{EBPF_OBJECT, Mode, PROBES, ProbeContext, ProbeSpec, table::KRETPROBE_OF};
use crate::{config::ProbeMode, maps::KernelMaps};

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

    let maps = KernelMaps::new(
        take(&mut ebpf, "SECCOMP_COUNTS")?,
        take(&mut ebpf, "EXIT_COUNTS")?,
        take(&mut ebpf, "OOM_COUNTS")?,
        take(&mut ebpf, "LOST")?,
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::SeccompMode, probes::kernel_version};

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
}
