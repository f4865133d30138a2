//! Loading the eBPF object and attaching every probe of the table it can, with graceful
//! degradation: a probe that cannot attach is reported (log and `cgwatch_probe_attached 0`) and
//! the rest keep working.

use std::{fs::File, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::links::PinnedLink,
};
use aya_log::EbpfLogger;
use log::{debug, info, warn};

use agent_common::EventsConfig;

use super::{EBPF_OBJECT, PROBES, ProbeContext, attacher::Attacher, skipped::SkippedRuns};
use crate::{
    maps::KernelMaps,
    pins::{self, MapShape, PINNED_MAPS, Pins},
};

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
    #[error("cannot read the eBPF object's maps: {0}")]
    Object(String),
    #[error("pinning")]
    Pins(#[from] pins::PinError),
    #[error(transparent)]
    TaskState(#[from] super::task_state::PatchError),
}

/// Map sizes, derived from `--max-cgroups`.
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    pub seccomp: u32,
    pub exits: u32,
    pub oom: u32,
    /// The container lifecycle counters (`LIFECYCLE_COUNTS`).
    pub lifecycle: u32,
    /// Cgroup instances whose start is awaited or known (`CGROUP_STATE`): every live cgroup; and
    /// as many tasks that started a container (`STARTERS`).
    pub cgroup_state: u32,
}

impl MapSizes {
    pub fn for_max_cgroups(max_cgroups: u32) -> Self {
        // A cgroup usually has a handful of (syscall, action) and (reason, signal) pairs; leave
        // room for cgroups kept in the retain window too.
        let base = max_cgroups.clamp(256, 100_000);
        Self { seccomp: base * 4, exits: base * 4, oom: base, lifecycle: base * 2, cgroup_state: base * 2 }
    }
}

/// The loaded object, what attached, and the maps userspace reads.
pub struct LoadedProbes {
    /// Owns the programs and their unpinned links: dropping it detaches those.
    pub ebpf: Ebpf,
    pub status: Vec<ProbeStatus>,
    pub maps: KernelMaps,
    pub events: RingBuf<MapData>,
    /// The event stream's records (`--events`; empty while it is off).
    pub event_ring: RingBuf<MapData>,
    /// Container start and exit records (`LifecycleRecord`), for the start latency and lifetime
    /// histograms.
    pub starts: RingBuf<MapData>,
    /// The programs' debug log (aya-log), forwarded to the agent's log.
    pub kernel_log: Option<EbpfLogger<&'static dyn log::Log>>,
    /// Links pinned below `--pin-path` (they stay attached when the agent stops).
    pub pinned_links: Vec<PinnedLink>,
    /// Probes whose running pinned links were kept as they were.
    pub reused: usize,
    /// The attached programs, to read the runs the kernel skipped.
    pub skipped: SkippedRuns,
    /// Kretprobes made in tracefs: they detach when dropped, unless pinned.
    pub kretprobes: Vec<super::kretprobe::Kretprobe>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::NoMap(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

/// Every probe reported not attached, in its preferred mode, for `reason` (the probes could not
/// be loaded at all).
pub fn all_failed(reason: &str) -> Vec<ProbeStatus> {
    PROBES
        .iter()
        .map(|rows| ProbeStatus { probe: rows[0].probe, mode: rows[0].mode.as_str(), attached: false, detail: reason.to_string() })
        .collect()
}

/// Entries of `TASKS` where per-thread state lives in task storage: the map is never used there,
/// but every map of the object is created.
const TASKS_UNUSED: u32 = 1;

/// The maps this agent loads with another size than the object's: the counter maps at the sizes
/// `--max-cgroups` asks for, and `TASKS` shrunk where task storage replaces it. The loader and
/// the pin check both use this list.
fn resized_maps(sizes: MapSizes, flags: u32) -> Vec<(&'static str, u32)> {
    let mut resized = vec![
        ("SECCOMP_COUNTS", sizes.seccomp),
        ("EXIT_COUNTS", sizes.exits),
        ("OOM_COUNTS", sizes.oom),
        ("LIFECYCLE_COUNTS", sizes.lifecycle),
        ("CGROUP_STATE", sizes.cgroup_state),
        ("STARTERS", sizes.cgroup_state),
    ];
    if flags & agent_common::config_flags::HAS_TASK_STORAGE != 0 {
        resized.push(("TASKS", TASKS_UNUSED));
    }
    resized
}

/// The shape of each pinned map as this agent loads it: the object's definition with
/// `resized_maps`' sizes.
fn map_shapes(sizes: MapSizes, flags: u32) -> Result<Vec<(&'static str, MapShape)>, ProbeError> {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| ProbeError::Object(e.to_string()))?;
    let resized = resized_maps(sizes, flags);
    let mut shapes = Vec::with_capacity(PINNED_MAPS.len());
    for name in PINNED_MAPS {
        let m = obj.maps.get(name).ok_or(ProbeError::NoMap(name))?;
        let max_entries =
            resized.iter().find(|(n, _)| *n == name).map_or_else(|| m.max_entries(), |(_, entries)| *entries);
        shapes.push((name, MapShape { key_size: m.key_size(), value_size: m.value_size(), max_entries }));
    }
    Ok(shapes)
}

/// A loader without its kernel BTF yet. aya's `EbpfLoader::new()` parses /sys/kernel/btf/vmlinux
/// by itself and keeps it until given another (aya-rs/aya#1172; lazy upstream after 0.14), some
/// 19 MiB at its peak on top of what the agent holds then: the agent makes its loader early in
/// start-up and drops that parse at once. `load` gives it the BTF of `--path.sysfs`.
pub fn loader() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    crate::memory::release_free_heap();
    loader
}

/// The kernel BTF for aya, parsed from the file mapped where the kernel lets sysfs BTF be mapped
/// (6.16 and later, private and read-only: its pages stay the kernel's), else from a copy read
/// into the heap (5.5 MB).
fn kernel_btf(path: &Path) -> Result<aya::Btf, ProbeError> {
    // SAFETY: kernel BTF never changes, and nothing writes a copy of it (--path.sysfs elsewhere)
    // while it is parsed.
    let mapped =
        File::open(path).ok().and_then(|f| unsafe { memmap2::MmapOptions::new().map_copy_read_only(&f) }.ok());
    Ok(match mapped {
        Some(bytes) => aya::Btf::parse(&bytes, aya::Endianness::default())?,
        None => aya::Btf::parse_file(path, aya::Endianness::default())?,
    })
}

/// Loads the object with the kernel layout in `KCONFIG` and attaches every probe it can. With
/// `pins`, the maps are opened from (or pinned at) the pin directory and every link is pinned,
/// so that a restart continues the counts and the probes count while the agent is down.
pub fn load(
    loader: EbpfLoader<'static>,
    btf_file: &Path,
    ctx: &ProbeContext,
    sizes: MapSizes,
    events: EventsConfig,
    pins: Option<&Pins>,
) -> Result<LoadedProbes, ProbeError> {
    // The kernel-side diagnostics log at debug level: on when the agent logs debug (or trace).
    let log_level: u8 = match log::max_level() {
        log::LevelFilter::Trace => aya_log_common::Level::Trace as u8,
        log::LevelFilter::Debug => aya_log_common::Level::Debug as u8,
        _ => 0,
    };
    if EBPF_OBJECT.is_empty() {
        return Err(ProbeError::EmptyObject);
    }
    let btf = kernel_btf(btf_file)?;
    // (The loader's lifetime shortened to this function's, to borrow the BTF.)
    let mut loader: EbpfLoader<'_> = loader;
    let migrations = match pins {
        Some(p) => p.check_maps(&map_shapes(sizes, ctx.kernel.flags)?)?,
        None => Vec::new(),
    };
    let map_paths: Vec<(&str, std::path::PathBuf)> =
        pins.map(|p| PINNED_MAPS.iter().map(|m| (*m, p.map_path(m))).collect()).unwrap_or_default();
    loader
        .btf(Some(&btf))
        // TASK_STATE (task storage) has no aya userspace type; userspace never reads it.
        .allow_unsupported_maps()
        .override_global("KCONFIG", &ctx.kernel, true)
        .override_global("AYA_LOG_LEVEL", &log_level, true)
        .override_global("EVENTS_CONFIG", &events, true);
    for (name, entries) in resized_maps(sizes, ctx.kernel.flags) {
        loader.map_max_entries(name, entries);
    }
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    // Kernels without task storage for tracing programs keep per-thread state in `TASKS`, and
    // cannot create the task-storage map: they load an object where it is a hash map.
    let mut ebpf = loader.load(super::task_state::LoadObject::for_flags(EBPF_OBJECT, ctx.kernel.flags)?.bytes())?;
    drop(loader);

    let kernel_bytes = bytemuck_bytes(&ctx.kernel);
    let mut attacher = Attacher {
        btf: &btf,
        pins,
        context: pins::fingerprint(&(kernel_bytes, log_level, events.rate, events.burst, sizes.seccomp, sizes.exits, sizes.oom, sizes.lifecycle, sizes.cgroup_state)),
        pinned_links: Vec::new(),
        reused: 0,
        skipped: SkippedRuns::default(),
        kretprobes: Vec::new(),
        // Pins of another layout (kretprobe links among them, perhaps) went when opened.
        retired: pins.map_or(0, Pins::removed_at_open),
    };
    let mut status: Vec<ProbeStatus> = Vec::with_capacity(PROBES.len());
    for rows in &PROBES {
        let st = attacher.attach_one(&mut ebpf, rows, ctx, &status);
        if !st.attached
            && let Some(p) = pins
        {
            // Not wanted (or failing) now: a link an earlier agent pinned for it goes.
            for name in link_names(rows[0].probe) {
                let n = p.detach_others(&name, None);
                if is_return(&name) {
                    attacher.retired += n;
                }
            }
        }
        status.push(st);
    }
    fast_path_fell_back(&mut status);
    verdict_hooks_unavailable(&mut status, ctx.seccomp_mode);
    let Attacher { pinned_links, reused, skipped, kretprobes, retired, .. } = attacher;
    // Kretprobe events of earlier agents whose links are gone, and of those retired just now
    // (released by the kernel a moment later, after an RCU grace period: usually milliseconds,
    // but one took over 200 ms in a loaded VM; waited for only then, up to 2 s; a link kept
    // running keeps its event).
    let wait = if retired > 0 { std::time::Duration::from_secs(2) } else { std::time::Duration::ZERO };
    let swept = super::kretprobe::sweep_waiting(wait);
    if swept > 0 {
        debug!("removed {swept} kretprobe event(s) of earlier agents from tracefs");
    }
    let kretprobes = kretprobes.into_iter().map(|(_, k)| k).collect();
    // Attached: the BTF is freed before the ring buffers are mapped, so that the two do not add
    // up.
    drop(btf);

    let maps = KernelMaps::new(
        take(&mut ebpf, "SECCOMP_COUNTS")?,
        take(&mut ebpf, "EXIT_COUNTS")?,
        take(&mut ebpf, "OOM_COUNTS")?,
        take(&mut ebpf, "EVENTS_SUPPRESSED")?,
        take(&mut ebpf, "LIFECYCLE_COUNTS")?,
        take(&mut ebpf, "LOST")?,
        [sizes.seccomp, sizes.exits, sizes.oom],
    );
    // The old programs are detached now: move the resized maps' counts into the new ones.
    for m in migrations {
        match maps.absorb(m.map, m.old) {
            Ok(n) => info!("pins: {n} counters of {} carried into the resized map", m.map),
            Err(e) => warn!("pins: the counts of the resized {} are lost: {e}", m.map),
        }
    }
    let cgroup_events = take(&mut ebpf, "EVENTS")?;
    let event_ring = take(&mut ebpf, "EVENT_RING")?;
    let starts = take(&mut ebpf, "LIFECYCLE_EVENTS")?;
    let kernel_log = match EbpfLogger::init(&mut ebpf) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!("kernel-side diagnostics off: {e}");
            None
        }
    };
    Ok(LoadedProbes { ebpf, status, maps, events: cgroup_events, event_ring, starts, kernel_log, pinned_links, reused, skipped, kretprobes })
}

/// The bytes of the kernel layout handed to the programs (part of their links' fingerprint).
fn bytemuck_bytes(k: &agent_common::KernelConfig) -> Vec<u8> {
    // SAFETY: KernelConfig is #[repr(C)] plain integers with explicit padding (aya::Pod).
    unsafe { std::slice::from_raw_parts((k as *const agent_common::KernelConfig).cast::<u8>(), size_of_val(k)) }.to_vec()
}

/// In `--seccomp-mode auto` a fast path that could not attach is not a blind spot when the
/// syscall tracepoints took over: it is reported `off` (as not wanted here), with the reason.
fn fast_path_fell_back(status: &mut [ProbeStatus]) {
    if status.iter().any(|s| s.probe == "seccomp_sys_exit" && s.attached) {
        report_off(status, "seccomp_filter", "unavailable here, the syscall tracepoints count ERRNO verdicts");
    }
}

/// The LOG, TRACE and USER_NOTIF hooks are extras, not a fallback chain: where they cannot
/// attach (and the user did not ask for fexit or kprobes with `--seccomp-mode`), they are reported
/// `off`, and `cgwatch_seccomp_action_observable` says how those verdicts are counted here.
fn verdict_hooks_unavailable(status: &mut [ProbeStatus], mode: crate::config::SeccompMode) {
    use crate::config::SeccompMode;
    if !matches!(mode, SeccompMode::Fexit | SeccompMode::Kprobe) {
        report_off(status, "seccomp_log", "unavailable here, LOG verdicts are not counted");
        report_off(status, "seccomp_trace", "unavailable here, traced TRACE verdicts count as errno");
        report_off(status, "seccomp_user_notif", "unavailable here, USER_NOTIF verdicts count as errno");
    }
}

/// Reports a probe that failed to attach as `off` (not wanted here) with `why` before the
/// failure, so that `cgwatch_probe_attached{mode!="off"} == 0` does not call it a blind spot.
fn report_off(status: &mut [ProbeStatus], probe: &str, why: &str) {
    if let Some(s) = status.iter_mut().find(|s| s.probe == probe && !s.attached && s.mode != "off") {
        s.detail = format!("{why} ({})", s.detail);
        s.mode = "off";
    }
}

/// The link pin names of a probe: the probe's own, and its kretprobe's for a kprobe pair.
pub(super) fn link_names(probe: &str) -> [String; 2] {
    [probe.to_string(), format!("{probe}_ret")]
}

/// Whether a link name is a kprobe pair's return side (the second of `link_names`).
pub(super) fn is_return(link_name: &str) -> bool {
    link_name.ends_with("_ret")
}
