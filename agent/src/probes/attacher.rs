//! Attaching one probe: the rows of the table tried in order, each program loaded, attached
//! and its link pinned (or an earlier agent's running link kept), kprobes on compiler clones.

use std::{os::fd::AsFd, path::Path};

use aya::{
    Ebpf,
    programs::{
        BtfTracePoint, FExit, KProbe, ProbeKind, RawTracePoint,
        links::{FdLink, PinnedLink},
    },
};
use log::{debug, info, warn};

use super::{
    Mode, ProbeContext, ProbeSpec,
    attach::{ProbeStatus, is_return, link_names},
    kretprobe::{self, Kretprobe},
    skipped::SkippedRuns,
    sys,
    table::KRETPROBE_OF,
};
use crate::{config::ProbeMode, pins::{self, Pins}};

/// Attaches probes, pinning their links when there is a pin directory.
pub(super) struct Attacher<'a> {
    pub(super) btf: &'a aya::Btf,
    pub(super) pins: Option<&'a Pins>,
    /// Hash of what every program gets besides its instructions: the kernel layout and the map
    /// sizes.
    pub(super) context: u64,
    pub(super) pinned_links: Vec<PinnedLink>,
    pub(super) reused: usize,
    pub(super) skipped: SkippedRuns,
    /// Kretprobes made in tracefs (`kretprobe`), by link name.
    pub(super) kretprobes: Vec<(String, Kretprobe)>,
    /// Pinned kretprobe links of earlier agents this start detached: their tracefs events are
    /// released a moment later (other links hold none).
    pub(super) retired: usize,
}

/// How one program is to be attached once loaded.
enum Hook<'h> {
    TpBtf,
    Fexit,
    RawTp(&'h str),
    Kprobe(&'h str),
}

impl Attacher<'_> {
    pub(super) fn attach_one(&mut self, ebpf: &mut Ebpf, rows: &[ProbeSpec], ctx: &ProbeContext, earlier: &[ProbeStatus]) -> ProbeStatus {
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
                errors.push(format!("{}: needs kernel {}.{}", row.mode.as_str(), row.min_kernel.0, row.min_kernel.1));
                continue;
            }
            match self.attach_row(ebpf, row) {
                Ok(()) => {
                    return ProbeStatus { probe: row.probe, mode: row.mode.as_str(), attached: true, detail: String::new() };
                }
                Err(e) => errors.push(format!("{}: {e}", row.mode.as_str())),
            }
        }
        let mode = rows.iter().find(|r| allowed(r)).unwrap_or(first).mode.as_str();
        ProbeStatus { probe: first.probe, mode, attached: false, detail: errors.join("; ") }
    }

    fn attach_row(&mut self, ebpf: &mut Ebpf, row: &ProbeSpec) -> Result<(), String> {
        let hook = match row.mode {
            Mode::TpBtf => Hook::TpBtf,
            Mode::Fexit => Hook::Fexit,
            Mode::RawTp => Hook::RawTp(row.hook),
            Mode::Kprobe => Hook::Kprobe(row.hook),
            Mode::KprobePair => return self.attach_kprobe_pair(ebpf, row),
        };
        let tag = self.load(ebpf, row.program, row, &hook)?;
        let fp = self.fingerprint(row, &[tag]);
        if self.reuse(row, fp, &[row.probe]) {
            unload(ebpf, row.program);
            return Ok(());
        }
        self.attach(ebpf, row.program, &hook, row.probe, fp)?;
        self.keep_program(ebpf, row, row.program);
        self.retire_others(row.probe, &[(row.probe.to_string(), fp)]);
        Ok(())
    }

    /// A kretprobe, then the kprobe on the same function; neither stays attached if the other
    /// fails.
    fn attach_kprobe_pair(&mut self, ebpf: &mut Ebpf, row: &ProbeSpec) -> Result<(), String> {
        let ret = row.program.replace(KRETPROBE_OF.0, KRETPROBE_OF.1);
        let hook = Hook::Kprobe(row.hook);
        let ret_tag = self.load(ebpf, &ret, row, &hook)?;
        let entry_tag = self.load(ebpf, row.program, row, &hook)?;
        // How the kretprobe is made is part of what runs: an earlier agent's, made with the
        // kernel's default instances, is replaced rather than kept.
        let made = u64::from(kretprobe::MAXACTIVE) << 1 | u64::from(kretprobe::tracefs().is_some());
        let fp = self.fingerprint(row, &[entry_tag, ret_tag, made]);
        let [entry_name, ret_name] = link_names(row.probe);
        if self.reuse(row, fp, &[&entry_name, &ret_name]) {
            unload(ebpf, row.program);
            unload(ebpf, &ret);
            return Ok(());
        }
        // The return side first: an entry probe alone would only fill its map.
        let pinned = self.pinned_links.len();
        self.attach(ebpf, &ret, &hook, &ret_name, fp)?;
        if let Err(e) = self.attach(ebpf, row.program, &hook, &entry_name, fp) {
            if let Some(p) = self.pins {
                let _ = std::fs::remove_file(p.link_path(&ret_name, fp));
                let _ = std::fs::remove_file(p.program_path(&ret_name, fp));
            }
            // Every handle on the return side's link goes, so that it detaches.
            self.pinned_links.truncate(pinned);
            self.kretprobes.retain(|(n, _)| *n != ret_name);
            unload(ebpf, &ret);
            return Err(e);
        }
        self.keep_program(ebpf, row, row.program);
        self.keep_program(ebpf, row, &ret);
        self.retire_others(row.probe, &[(entry_name, fp), (ret_name, fp)]);
        Ok(())
    }

    /// Loads a program; returns its tag (a hash of its instructions).
    fn load(&self, ebpf: &mut Ebpf, name: &str, row: &ProbeSpec, hook: &Hook<'_>) -> Result<u64, String> {
        let program = ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing from the object"))?;
        let load_err = |e: &dyn std::error::Error| format!("load: {}", error_chain(e));
        match hook {
            Hook::TpBtf => {
                let p: &mut BtfTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
                p.load(row.hook, self.btf).map_err(|e| load_err(&e))?;
            }
            Hook::Fexit => {
                let p: &mut FExit = program.try_into().map_err(|e| format!("{e}"))?;
                p.load(row.hook, self.btf).map_err(|e| load_err(&e))?;
            }
            Hook::RawTp(_) => {
                let p: &mut RawTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
                p.load().map_err(|e| load_err(&e))?;
            }
            Hook::Kprobe(_) => {
                let p: &mut KProbe = program.try_into().map_err(|e| format!("{e}"))?;
                p.load().map_err(|e| load_err(&e))?;
            }
        }
        // Without a pin directory the tag is not needed.
        if self.pins.is_none() {
            return Ok(0);
        }
        let program = ebpf.program(name).ok_or_else(|| format!("program {name} missing from the object"))?;
        program.info().map(|i| i.tag()).map_err(|e| format!("program info: {e}"))
    }

    fn fingerprint(&self, row: &ProbeSpec, tags: &[u64]) -> u64 {
        pins::fingerprint(&(row.probe, row.program, row.mode.as_str(), row.hook, tags, self.context))
    }

    /// Keeps the running pinned links of an earlier agent whose programs are these: nothing is
    /// detached, not an event is missed.
    fn reuse(&mut self, row: &ProbeSpec, fp: u64, names: &[&str]) -> bool {
        let probe = row.probe;
        let Some(pins) = self.pins else { return false };
        let links: Vec<PinnedLink> = names.iter().filter_map(|n| pins.existing_link(n, fp)).collect();
        if links.len() != names.len() {
            return false;
        }
        // The running programs are the earlier agent's: opened through their pins beside the
        // links (an agent before those pins: by id, through a second handle on each link).
        for n in names {
            if self.skipped.add_pinned(probe, row.mode.is_kprobe(), &pins.program_path(n, fp)) {
                continue;
            }
            match pins.existing_link(n, fp).map(|l| FdLink::from(l).info()) {
                Some(Ok(info)) => self.skipped.add_by_id(probe, row.mode.is_kprobe(), info.program_id()),
                _ => warn!("probe {probe}: cannot read its running link {n}: its skipped runs are not reported"),
            }
        }
        debug!("probe {probe}: kept the pinned link of an earlier agent");
        self.pinned_links.extend(links);
        self.reused += 1;
        true
    }

    /// Attaches a loaded program and pins its link (where the link can be pinned).
    fn attach(&mut self, ebpf: &mut Ebpf, name: &str, hook: &Hook<'_>, link_name: &str, fp: u64) -> Result<(), String> {
        let program = ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing from the object"))?;
        let attach_err = |e: &dyn std::error::Error| format!("attach: {}", error_chain(e));
        let link: Option<FdLink> = match hook {
            Hook::TpBtf => {
                let p: &mut BtfTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
                let id = p.attach().map_err(|e| attach_err(&e))?;
                self.pins.and_then(|_| p.take_link(id).ok()).map(FdLink::from)
            }
            Hook::Fexit => {
                let p: &mut FExit = program.try_into().map_err(|e| format!("{e}"))?;
                let id = p.attach().map_err(|e| attach_err(&e))?;
                self.pins.and_then(|_| p.take_link(id).ok()).map(FdLink::from)
            }
            Hook::RawTp(tp) => {
                let p: &mut RawTracePoint = program.try_into().map_err(|e| format!("{e}"))?;
                let id = p.attach(tp).map_err(|e| attach_err(&e))?;
                self.pins.and_then(|_| p.take_link(id).ok()).map(FdLink::from)
            }
            Hook::Kprobe(function) => {
                let p: &mut KProbe = program.try_into().map_err(|e| format!("{e}"))?;
                if matches!(p.kind(), ProbeKind::Return) && self.attach_kretprobe(p, function, link_name)? {
                    return self.pin_kretprobe(ebpf, name, link_name, fp);
                }
                let p: &mut KProbe = ebpf.program_mut(name).ok_or("program missing")?.try_into().map_err(|e| format!("{e}"))?;
                let id = match p.attach(function, 0) {
                    Ok(id) => id,
                    // A static function the compiler cloned is listed only as the clone.
                    Err(e) => match kprobe_clone(function) {
                        Ok(Some(clone)) => {
                            let id = p.attach(clone.as_str(), 0).map_err(|e| attach_err(&e))?;
                            info!("probe {link_name}: {function} is the compiler clone {clone} in this kernel");
                            id
                        }
                        Ok(None) => return Err(attach_err(&e)),
                        Err(why) => return Err(format!("{}; {why}", attach_err(&e))),
                    },
                };
                // A kprobe's link is a BPF link (pinnable) only where the kernel has perf links
                // (5.15); elsewhere it stays with the agent and detaches when it stops.
                if self.pins.is_some() && aya::features().bpf_perf_link() {
                    p.take_link(id).ok().and_then(|l| FdLink::try_from(l).ok())
                } else {
                    None
                }
            }
        };
        if let (Some(pins), Some(link)) = (self.pins, link) {
            let path = pins.link_path(link_name, fp);
            self.retired += usize::from(std::fs::remove_file(&path).is_ok() && is_return(link_name));
            match link.pin(&path) {
                Ok(pinned) => {
                    self.pinned_links.push(pinned);
                    pin_program(ebpf, pins, name, link_name, fp);
                }
                Err(e) => {
                    // The link was dropped with the failed pin: attach again, unpinned.
                    warn!("probe {link_name}: cannot pin its link at {} ({e}); it detaches when the agent stops", path.display());
                    return self.attach_unpinned(ebpf, name, hook);
                }
            }
        }
        Ok(())
    }

    /// A kretprobe made in tracefs with room for every call in flight (`kretprobe`); false where
    /// it cannot be (no tracefs: then aya's, with the kernel's default instances, said).
    fn attach_kretprobe(&mut self, p: &KProbe, function: &str, link_name: &str) -> Result<bool, String> {
        let prog = p.fd().map_err(|e| format!("{e}"))?.as_fd().try_clone_to_owned().map_err(|e| format!("{e}"))?;
        let perf_link = aya::features().bpf_perf_link();
        let made = kretprobe::attach(prog.as_fd(), function, perf_link).or_else(|e| match kprobe_clone(function) {
            Ok(Some(clone)) => kretprobe::attach(prog.as_fd(), &clone, perf_link),
            _ => Err(e),
        });
        match made {
            Ok(k) => {
                debug!("probe {link_name}: kretprobe {} with {} instances", k.event(), kretprobe::MAXACTIVE);
                self.kretprobes.push((link_name.to_string(), k));
                Ok(true)
            }
            // Where the kernel has no kprobes at all, the fallback fails too, and says why.
            Err(e) if !Path::new("/sys/bus/event_source/devices/kprobe").exists() => {
                debug!("probe {link_name}: no kretprobe in tracefs: {e}");
                Ok(false)
            }
            Err(e) => {
                warn!(
                    "probe {link_name}: cannot make its kretprobe in tracefs ({e}): made with the kernel's default instances \
                     (the CPU count, or max(10, 2 x CPUs) on a preemptible kernel), so threads waiting in {function} beyond those hide the \
                     returns of the others"
                );
                Ok(false)
            }
        }
    }

    /// Pins the link of the kretprobe just made, where there is a pin directory and a link.
    fn pin_kretprobe(&mut self, ebpf: &mut Ebpf, name: &str, link_name: &str, fp: u64) -> Result<(), String> {
        let Some(pins) = self.pins else { return Ok(()) };
        let Some(link) = self.kretprobes.last().and_then(|(_, k)| k.link()) else { return Ok(()) };
        let path = pins.link_path(link_name, fp);
        self.retired += usize::from(std::fs::remove_file(&path).is_ok());
        match sys::pin(link, &path).map_err(|e| e.to_string()).and_then(|()| PinnedLink::from_pin(&path).map_err(|e| e.to_string())) {
            Ok(pinned) => {
                self.pinned_links.push(pinned);
                pin_program(ebpf, pins, name, link_name, fp);
            }
            Err(e) => warn!("probe {link_name}: cannot pin its link at {} ({e}); it detaches when the agent stops", path.display()),
        }
        Ok(())
    }

    /// Keeps a handle on an attached program, to read its skipped runs.
    fn keep_program(&mut self, ebpf: &Ebpf, row: &ProbeSpec, name: &str) {
        match ebpf.program(name).map(|p| p.fd().map(|fd| fd.as_fd().try_clone_to_owned())) {
            Some(Ok(Ok(fd))) => self.skipped.add(row.probe, row.mode.is_kprobe(), fd),
            _ => warn!("probe {}: no handle on its program {name}: its skipped runs are not reported", row.probe),
        }
    }

    fn attach_unpinned(&mut self, ebpf: &mut Ebpf, name: &str, hook: &Hook<'_>) -> Result<(), String> {
        let pins = self.pins.take();
        let result = self.attach(ebpf, name, hook, "", 0);
        self.pins = pins;
        result
    }

    /// Detaches every link earlier agents pinned for `probe` (under each of its link names)
    /// other than `keep`'s: a kretprobe the kprobe pair left must go when a single program
    /// (fexit) takes the probe over, or it would go on counting beside it.
    fn retire_others(&mut self, probe: &str, keep: &[(String, u64)]) {
        let Some(pins) = self.pins else { return };
        for name in link_names(probe) {
            let kept = keep.iter().find(|(n, _)| *n == name).map(|(n, fp)| pins.link_path(n, *fp));
            let n = pins.detach_others(&name, kept.as_deref());
            if is_return(&name) {
                self.retired += n;
            }
            if n > 0 {
                info!("probe {name}: replaced {n} pinned link(s) of an earlier agent");
            }
        }
    }
}

/// Pins an attached program beside its link, so that a restarted agent without CAP_SYS_ADMIN can
/// open it (to read its skipped runs).
fn pin_program(ebpf: &mut Ebpf, pins: &Pins, name: &str, link_name: &str, fp: u64) {
    let path = pins.program_path(link_name, fp);
    let _ = std::fs::remove_file(&path);
    let pinned = ebpf.program_mut(name).map(|p| p.pin(&path));
    if !matches!(pinned, Some(Ok(()))) {
        warn!("probe {link_name}: cannot pin its program at {}: after a restart its skipped runs need CAP_SYS_ADMIN", path.display());
    }
}

/// Where a kprobe on `function` failed: its one compiler clone, if the kernel has kprobes and
/// lists one, and the programs do not read the function's arguments (`table::CLONE_OK`).
fn kprobe_clone(function: &str) -> Result<Option<String>, String> {
    if !super::table::CLONE_OK.contains(&function) || !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        return Ok(None);
    }
    super::symbols::clone_of(Path::new("/proc/kallsyms"), function)
}

fn unload(ebpf: &mut Ebpf, name: &str) {
    if let Some(p) = ebpf.program_mut(name) {
        let _ = match p {
            aya::programs::Program::BtfTracePoint(p) => p.unload(),
            aya::programs::Program::FExit(p) => p.unload(),
            aya::programs::Program::RawTracePoint(p) => p.unload(),
            aya::programs::Program::KProbe(p) => p.unload(),
            _ => Ok(()),
        };
    }
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
    use aya::EbpfLoader;

    use super::*;
    use crate::probes::{EBPF_OBJECT, PROBES};
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
            prefer_kprobes: false,
        };
        let btf = aya::Btf::parse_file(btf_path, aya::Endianness::default()).unwrap();
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .allow_unsupported_maps()
            .override_global("KCONFIG", &ctx.kernel, true)
            .load(EBPF_OBJECT)
            .unwrap();
        let bogus: Vec<ProbeSpec> =
            PROBES[0].iter().map(|row| ProbeSpec { hook: "cgwatch_no_such_tracepoint", ..*row }).collect();
        let mut attacher =
            Attacher { btf: &btf, pins: None, context: 0, pinned_links: Vec::new(), reused: 0, skipped: SkippedRuns::default(), kretprobes: Vec::new(), retired: 0 };
        let status = attacher.attach_one(&mut ebpf, &bogus, &ctx, &[]);
        assert!(!status.attached);
        assert_eq!(status.mode, "tp_btf");
        assert!(status.detail.contains("tp_btf: ") && status.detail.contains("raw_tp: "), "{}", status.detail);
        // The real hook still attaches from the same object.
        let rmdir = attacher.attach_one(&mut ebpf, PROBES[1], &ctx, &[]);
        assert!(rmdir.attached, "{}", rmdir.detail);
        // sys_exit without sys_enter would count every syscall of a filtered task: refused.
        let exit_rows = PROBES.iter().find(|r| r[0].probe == "seccomp_sys_exit").unwrap();
        let exit = attacher.attach_one(&mut ebpf, exit_rows, &ctx, &[status]);
        assert!(!exit.attached);
        assert_eq!(exit.detail, "not attached because seccomp_sys_enter is not");
    }
}
