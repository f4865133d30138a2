//! Kretprobes with room for every call in flight: made in tracefs with `maxactive`
//! (`r4096:cgwatch/...` in kprobe_events) rather than through the kprobe PMU, which takes the
//! kernel's default: as many instances as CPUs on a kernel without CONFIG_PREEMPTION (Debian's
//! 5.10), max(10, 2 x CPUs) elsewhere. Each thread inside the probed function holds one until it
//! returns, and threads wait inside `__seccomp_filter` (for a USER_NOTIF supervisor, a tracer, or
//! preempted): once they hold them all, every other return is missed, a verdict not counted.

use std::{
    fs,
    io::{self, Write as _},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use super::sys;

/// Instances of each kretprobe: the kernel's bound (KRETPROBE_MAXACTIVE_MAX), a few dozen bytes
/// of kernel memory each.
pub const MAXACTIVE: u32 = 4096;
/// The tracefs group of the agent's events.
const GROUP: &str = "cgwatch";

#[derive(Debug, thiserror::Error)]
pub enum KretprobeError {
    #[error("no tracefs with kprobe_events at /sys/kernel/tracing or /sys/kernel/debug/tracing")]
    NoTracefs,
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: io::Error },
    #[error("{call}: {source}")]
    Sys { call: &'static str, source: io::Error },
}

/// A kretprobe event made in tracefs and what keeps a program on it: a BPF link (pinnable) or,
/// before 5.15, the perf event itself. Dropping it detaches the program (unless the link is
/// pinned) and removes the event once nothing uses it.
#[derive(Debug)]
pub struct Kretprobe {
    attached: Option<OwnedFd>,
    tracefs: PathBuf,
    event: String,
    is_link: bool,
}

impl Kretprobe {
    /// The BPF link, where the kernel made one (it can be pinned).
    pub fn link(&self) -> Option<BorrowedFd<'_>> {
        self.attached.as_ref().filter(|_| self.is_link).map(AsFd::as_fd)
    }

    /// The event's name in tracefs (`cgwatch/<name>`).
    pub fn event(&self) -> String {
        format!("{GROUP}/{}", self.event)
    }
}

impl Drop for Kretprobe {
    fn drop(&mut self) {
        drop(self.attached.take());
        // A pinned link still uses the event (EBUSY): it stays, for a later agent to reuse or
        // sweep.
        let _ = remove_event(&self.tracefs, &self.event);
    }
}

/// The tracefs directory with kprobe_events, where one is mounted.
pub fn tracefs() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("kprobe_events").exists())
}

/// Makes a kretprobe on `function` with MAXACTIVE instances and attaches `prog` (a loaded
/// kretprobe program) to it; with a BPF link where `link` (the kernel has perf links).
pub fn attach(prog: BorrowedFd<'_>, function: &str, link: bool) -> Result<Kretprobe, KretprobeError> {
    let tracefs = tracefs().ok_or(KretprobeError::NoTracefs)?;
    let event = event_name(function);
    let events = tracefs.join("kprobe_events");
    append(&events, &format!("r{MAXACTIVE}:{GROUP}/{event} {function}\n"))
        .map_err(|source| KretprobeError::File { path: events, source })?;
    // From here on, dropping it removes the event.
    let mut probe = Kretprobe { attached: None, tracefs, event, is_link: false };
    let id_path = probe.tracefs.join("events").join(GROUP).join(&probe.event).join("id");
    let id = fs::read_to_string(&id_path)
        .and_then(|s| s.trim().parse::<u64>().map_err(io::Error::other))
        .map_err(|source| KretprobeError::File { path: id_path, source })?;
    let perf = sys::perf_event_open_tracepoint(id).map_err(|source| KretprobeError::Sys { call: "perf_event_open", source })?;
    let (fd, is_link) = sys::attach_perf_event(prog, perf, link)
        .map_err(|source| KretprobeError::Sys { call: if link { "bpf(BPF_LINK_CREATE)" } else { "ioctl(PERF_EVENT_IOC_SET_BPF)" }, source })?;
    probe.attached = Some(fd);
    probe.is_link = is_link;
    Ok(probe)
}

/// Removes the events of agents that are gone, where nothing uses them any more (a pinned link
/// does: the kernel refuses, EBUSY, and the event stays). A running agent's are left alone, even
/// in the instant between making one and attaching to it. Tried again for up to `wait` while
/// some are still busy: a link whose pin was just removed is released by the kernel a little
/// later (in a worker since 6.5), and its event with it. Returns how many went.
pub fn sweep_waiting(wait: std::time::Duration) -> usize {
    let deadline = std::time::Instant::now() + wait;
    let mut removed = 0;
    loop {
        let (n, busy) = sweep_once();
        removed += n;
        if busy == 0 || std::time::Instant::now() >= deadline {
            return removed;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// How many events of gone agents went, and how many are still in use.
fn sweep_once() -> (usize, usize) {
    let Some(tracefs) = tracefs() else { return (0, 0) };
    let Ok(text) = fs::read_to_string(tracefs.join("kprobe_events")) else { return (0, 0) };
    let gone: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.split_once(&format!(":{GROUP}/")).map(|(_, name)| name))
        .filter(|name| maker(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()))
        .collect();
    let removed = gone.iter().filter(|name| remove_event(&tracefs, name).is_ok()).count();
    (removed, gone.len() - removed)
}

/// The pid of the agent that made an event (`event_name`).
fn maker(event: &str) -> Option<u32> {
    let mut parts = event.rsplitn(3, '_');
    parts.next()?;
    parts.next()?.parse().ok()
}

fn remove_event(tracefs: &Path, event: &str) -> io::Result<()> {
    append(&tracefs.join("kprobe_events"), &format!("-:{GROUP}/{event}\n"))
}

fn append(path: &Path, line: &str) -> io::Result<()> {
    fs::OpenOptions::new().append(true).open(path)?.write_all(line.as_bytes())
}

/// `<function>_<pid>_<n>`: unique on the host among running agents, within tracefs' name rules
/// (letters, digits and `_`; at most 64 characters).
fn event_name(function: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let f: String = function.chars().take(40).map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{f}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_follow_tracefs_rules_and_differ() {
        let a = event_name("seccomp_do_user_notification.isra.0");
        let b = event_name("seccomp_do_user_notification.isra.0");
        assert_ne!(a, b);
        assert!(a.len() <= 64 && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{a}");
        let long = event_name(&"x".repeat(200));
        assert!(long.len() <= 64, "{long}");
        assert_eq!(maker(&a), Some(std::process::id()));
        assert_eq!(maker("__seccomp_filter"), None);
    }
}
