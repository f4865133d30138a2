//! Runs of the attached programs that the kernel skipped: each program's `recursion_misses`.
//!
//! The kernel runs a tracing program at most once at a time per CPU. Where it can preempt a
//! running program (`preempt=full` or `lazy`, the only model of some kernels since 7.x), the
//! guard stays taken while the preempted task waits, and every run of that program on that CPU
//! meanwhile is skipped: a denial, an exit or an OOM kill not counted. The kernel counts those
//! skips per program (5.12+ for trampolines, 6.7+ for kprobes; raw tracepoints have the guard
//! only since 6.1 and read 0 before); the agent
//! reads them at scrape time, so that a short count is said, not silent.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use aya_obj::generated::bpf_prog_info;
use log::warn;

use super::sys::{BPF_OBJ_GET_INFO_BY_FD, BPF_PROG_GET_FD_BY_ID, bpf, open_pinned, owned};

/// The programs of the attached probes, by probe.
#[derive(Debug, Default)]
pub struct SkippedRuns {
    programs: Vec<(&'static str, OwnedFd)>,
    /// Probes whose (reused) programs the agent could not open.
    unreadable: Vec<&'static str>,
    /// Probes whose skipped runs this kernel does not count.
    uncounted: Vec<&'static str>,
}

/// The first kernel that counts a program's skipped runs: 5.12 for trampolines (raw
/// tracepoints: 6.1 brought the guard, and its count; before, 0 is right), 6.7 for kprobes
/// (`trace_call_bpf`).
fn counted_since(kprobe: bool) -> (u32, u32) {
    if kprobe { (6, 7) } else { (5, 12) }
}

impl SkippedRuns {
    /// Adds a program this agent loaded (a kprobe or kretprobe when `kprobe`).
    pub fn add(&mut self, probe: &'static str, kprobe: bool, fd: OwnedFd) {
        if self.counts(probe, kprobe) {
            self.programs.push((probe, fd));
        }
    }

    fn counts(&mut self, probe: &'static str, kprobe: bool) -> bool {
        if super::kernel_version() >= counted_since(kprobe) {
            return true;
        }
        if !self.uncounted.contains(&probe) {
            self.uncounted.push(probe);
        }
        false
    }

    /// Adds the running program an earlier agent pinned at `path` beside its link (opening a pin
    /// needs no CAP_SYS_ADMIN). False when there is none to open.
    pub fn add_pinned(&mut self, probe: &'static str, kprobe: bool, path: &Path) -> bool {
        if !self.counts(probe, kprobe) {
            return true;
        }
        match open_pinned(path) {
            Ok(fd) => {
                self.programs.push((probe, fd));
                true
            }
            Err(_) => false,
        }
    }

    /// Adds the running program of a link an earlier agent pinned without its program, by the
    /// link's program id (needs CAP_SYS_ADMIN; without it that probe's skips are not read, said
    /// once here).
    pub fn add_by_id(&mut self, probe: &'static str, kprobe: bool, id: u32) {
        if !self.counts(probe, kprobe) {
            return;
        }
        match fd_by_id(id) {
            Ok(fd) => self.programs.push((probe, fd)),
            Err(e) => {
                warn!("probe {probe}: cannot open its running program {id} ({e}): its skipped runs are not reported");
                self.unreadable.push(probe);
            }
        }
    }

    /// Skipped runs per probe (summed over its programs), every probe with a readable program.
    /// A probe one of whose programs cannot be read has no entry (no series, rather than a
    /// short one).
    pub fn read(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, Option<u64>)> = Vec::new();
        for (probe, fd) in &self.programs {
            let n = misses(fd).ok();
            match out.iter_mut().find(|(p, _)| p == probe) {
                Some((_, sum)) => *sum = sum.zip(n).map(|(a, b)| a + b),
                None => out.push((probe, n)),
            }
        }
        out.into_iter().filter_map(|(p, n)| n.map(|n| (p, n))).collect()
    }

    pub fn unreadable(&self) -> &[&'static str] {
        &self.unreadable
    }

    /// Probes whose skipped runs the kernel does not count (it is older than `counted_since`).
    pub fn uncounted(&self) -> &[&'static str] {
        &self.uncounted
    }
}

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
struct GetFdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct GetInfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdById { id, ..Default::default() };
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned)
}

/// The program's `recursion_misses` (0 on kernels before 5.12, which do not count them).
fn misses(fd: &OwnedFd) -> io::Result<u64> {
    // SAFETY: bpf_prog_info is plain integers; all zeroes is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = GetInfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: (&mut info as *mut bpf_prog_info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info.recursion_misses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_id_that_does_not_exist_is_unreadable_and_said() {
        let mut s = SkippedRuns::default();
        // Ids count up from 1; this one is never reached on a test host.
        s.add_by_id("seccomp_filter", false, u32::MAX);
        assert_eq!(s.unreadable(), ["seccomp_filter"]);
        assert!(s.read().is_empty());
    }
}
