//! The event stream (`--events`): one record per seccomp verdict, OOM kill, noteworthy exit,
//! container start and exec session, rate-limited in the kernel per cgroup and kind by a token bucket, so that a storm costs no
//! more than the counters do and cannot flood the log. Off unless the agent sets
//! `EVENTS_CONFIG.rate` at load: the global lives in frozen `.rodata`, so the verifier knows the
//! value and drops the code behind a 0.

use agent_common::{EXEC_PATH_MAX, Event, EventBucket, EventKey, EventsConfig, ExecEvent, config_flags, event_kind, kabi, lost};
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::map,
    maps::{LruHashMap, PerCpuHashMap, RingBuf, ring_buf::RingBufEntry},
};

use crate::{
    kernel::{self, kconfig},
    maps,
};

/// Set by the loader; `rate` 0: no events.
#[unsafe(no_mangle)]
static EVENTS_CONFIG: EventsConfig = EventsConfig { rate: 0, burst: 0 };

/// The records, read by the agent's event task.
#[map]
pub static EVENT_RING: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// One token bucket per cgroup and kind.
#[map]
static EVENT_BUCKETS: LruHashMap<EventKey, EventBucket> = LruHashMap::with_max_entries(16384, 0);

/// Events the rate limit suppressed, per cgroup and kind (`cgwatch_events_suppressed_total`).
#[map]
pub static EVENTS_SUPPRESSED: PerCpuHashMap<EventKey, u64> = PerCpuHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn config() -> EventsConfig {
    unsafe { core::ptr::read_volatile(&raw const EVENTS_CONFIG) }
}

/// Whether the stream is on (a constant to the verifier).
#[inline(always)]
pub fn enabled() -> bool {
    config().rate != 0
}

/// Takes a token from the bucket of `key`; false when the event is to be suppressed (and then
/// counted as such).
#[inline(always)]
fn admit(key: &EventKey, now: u64, suppressed_before: &mut u64) -> bool {
    let cfg = config();
    let cap = cfg.burst as u64 * 1000;
    let bucket = match EVENT_BUCKETS.get_ptr_mut(key) {
        Some(b) => b,
        None => {
            let fresh = EventBucket { tokens_milli: cap, last_ns: now, suppressed: 0 };
            let _ = EVENT_BUCKETS.insert(key, &fresh, 0);
            match EVENT_BUCKETS.get_ptr_mut(key) {
                Some(b) => b,
                // No bucket to be had (the map is busy): let the event through.
                None => return true,
            }
        }
    };
    // Races between CPUs can let a few more events through than the bucket holds; the counts
    // stay exact (every event is written, suppressed or lost, and each is counted).
    unsafe {
        let elapsed_ms = now.saturating_sub((*bucket).last_ns) / 1_000_000;
        if elapsed_ms > 0 {
            // rate a second is rate milli-tokens a millisecond.
            // Clamped below 2^32 ms (49 days: a full bucket) so that the product fits in 64 bits
            // (no 128-bit multiply in BPF).
            let refill = core::cmp::min(elapsed_ms, u32::MAX as u64) * cfg.rate as u64;
            (*bucket).tokens_milli = core::cmp::min(cap, (*bucket).tokens_milli.saturating_add(refill));
            (*bucket).last_ns = (*bucket).last_ns.saturating_add(elapsed_ms * 1_000_000);
        }
        if (*bucket).tokens_milli < 1000 {
            (*bucket).suppressed += 1;
            maps::add_suppressed(key);
            return false;
        }
        (*bucket).tokens_milli -= 1000;
        *suppressed_before = (*bucket).suppressed;
        (*bucket).suppressed = 0;
    }
    true
}

/// A ring entry of `T` for an event of `kind` in `cgroup_id`, with the event's time and the
/// suppression count before it; `None` when the stream is off, the rate limit suppressed it, or
/// the ring is full (counted).
#[inline(always)]
fn reserve_entry<T: 'static>(kind: u32, cgroup_id: u64, probe: &'static str) -> Option<(RingBufEntry<T>, u64, u64)> {
    if !enabled() {
        return None;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let key = EventKey { cgroup_id, kind, _pad: 0 };
    let mut suppressed = 0;
    if !admit(&key, now, &mut suppressed) {
        return None;
    }
    let Some(entry) = EVENT_RING.reserve::<T>(0) else {
        maps::count_lost(lost::EVENT_RING, cgroup_id, probe);
        return None;
    };
    Some((entry, now, suppressed))
}

/// An `Event` of `kind` with every field "unknown" but its time and suppression count.
#[inline(always)]
fn header(kind: u32, cgroup_id: u64, time_ns: u64, suppressed: u64) -> Event {
    Event {
        time_ns,
        cgroup_id,
        limit_cgroup_id: 0,
        duration_ns: agent_common::EVENT_UNKNOWN,
        rss_anon: agent_common::EVENT_UNKNOWN,
        rss_file: agent_common::EVENT_UNKNOWN,
        rss_shmem: agent_common::EVENT_UNKNOWN,
        suppressed,
        kind,
        pid: 0,
        tid: 0,
        syscall_nr: -1,
        action: 0,
        errno: -1,
        reason: 0,
        exit_code: -1,
        signal: 0,
        container: 0,
        limit: 0,
        levels_up: 0,
        comm: [0; 16],
        parent_comm: [0; 16],
    }
}

/// A record to fill and submit for an event of `kind` in `cgroup_id`, with its time, suppression
/// count and every field "unknown"; `None` when the stream is off, the rate limit suppressed it,
/// or the ring is full (counted).
#[inline(always)]
pub fn reserve(kind: u32, cgroup_id: u64, probe: &'static str) -> Option<RingBufEntry<Event>> {
    let (mut entry, now, suppressed) = reserve_entry::<Event>(kind, cgroup_id, probe)?;
    entry.write(header(kind, cgroup_id, now, suppressed));
    Some(entry)
}

/// Fills pid, tid, comm and the parent's comm from `task` (the current task when `current`).
#[inline(always)]
pub fn fill_task(event: &mut Event, task: u64, current: bool) {
    event.pid = kernel::read::<i32>(task, kconfig!(task_tgid)).unwrap_or(0) as u32;
    event.tid = kernel::read::<i32>(task, kconfig!(task_pid)).unwrap_or(0) as u32;
    if current {
        if let Ok(comm) = bpf_get_current_comm() {
            event.comm = comm;
        }
    } else if let Ok(comm) = kernel::read::<[u8; 16]>(task, kconfig!(task_comm)) {
        event.comm = comm;
    }
    if let Ok(parent) = kernel::read::<u64>(task, kconfig!(task_real_parent))
        && parent != 0
        && let Ok(comm) = kernel::read::<[u8; 16]>(parent, kconfig!(task_comm))
    {
        event.parent_comm = comm;
    }
}

/// The victim's anon / file / shmem RSS in pages, as the kernel's own `mark_victim` reports them
/// (the counters' summed value, without the per-CPU deltas).
#[inline(always)]
fn read_rss(e: &mut Event, task: u64) {
    let Ok(mm) = kernel::read::<u64>(task, kconfig!(task_mm)) else { return };
    let counter = |index: u32| {
        kernel::read::<i64>(mm, kconfig!(mm_rss_stat) + index * kconfig!(mm_rss_stride) + kconfig!(mm_rss_count))
            .map(|v| v.max(0) as u64)
            .unwrap_or(agent_common::EVENT_UNKNOWN)
    };
    // enum { MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES }
    e.rss_file = counter(kabi::MM_FILEPAGES);
    e.rss_anon = counter(kabi::MM_ANONPAGES);
    e.rss_shmem = counter(kabi::MM_SHMEMPAGES);
}

/// A seccomp verdict of the current task.
#[inline(always)]
pub fn seccomp(cgroup_id: u64, syscall_nr: i32, action: u32, errno: i32, probe: &'static str) {
    let Some(mut entry) = reserve(event_kind::SECCOMP, cgroup_id, probe) else { return };
    let e = unsafe { entry.assume_init_mut() };
    fill_task(e, kernel::current_task(), true);
    e.syscall_nr = syscall_nr;
    e.action = action;
    e.errno = errno;
    entry.submit(0);
}

/// An OOM kill of `victim` (the current task when the kill is seen at its exit).
#[inline(always)]
pub fn oom_kill(victim: u64, key: &agent_common::OomKey, current: bool, probe: &'static str) {
    let Some(mut entry) = reserve(event_kind::OOM_KILL, key.cgroup_id, probe) else { return };
    let e = unsafe { entry.assume_init_mut() };
    fill_task(e, victim, current);
    e.limit = key.limit;
    e.levels_up = key.levels_up;
    e.limit_cgroup_id = key.limit_cgroup_id;
    // The victim's memory (its mm is gone by the time it exits).
    if !current && kconfig!(flags) & config_flags::HAS_RSS != 0 {
        read_rss(e, victim);
    }
    entry.submit(0);
}

/// The exit of the thread group of `task` (the current task), with how long its leader ran.
#[inline(always)]
pub fn exit(task: u64, cgroup_id: u64, reason: u32, exit_code: i32, signal: u32, scope: u32, probe: &'static str) {
    let Some(mut entry) = reserve(event_kind::EXIT, cgroup_id, probe) else { return };
    let e = unsafe { entry.assume_init_mut() };
    fill_task(e, task, true);
    e.reason = reason;
    e.exit_code = exit_code;
    e.signal = signal;
    e.container = scope;
    let leader = kernel::read::<u64>(task, kconfig!(task_group_leader)).unwrap_or(0);
    if let Ok(start) = kernel::read::<u64>(leader, kconfig!(task_start_time)) {
        e.duration_ns = e.time_ns.saturating_sub(start);
    }
    entry.submit(0);
}

/// A container start by the current task (`task`): the entrypoint's exec, `latency_ns` after its
/// cgroup's mkdir.
#[inline(always)]
pub fn container_start(task: u64, cgroup_id: u64, latency_ns: u64, probe: &'static str) {
    let Some(mut entry) = reserve(event_kind::CONTAINER_START, cgroup_id, probe) else { return };
    let e = unsafe { entry.assume_init_mut() };
    fill_task(e, task, true);
    e.duration_ns = latency_ns;
    entry.submit(0);
}

/// An exec session: the current task (`task`) exec'd the file of `bprm` (a `linux_binprm *`).
#[inline(always)]
pub fn exec_session(task: u64, cgroup_id: u64, bprm: u64, probe: &'static str) {
    let Some((mut entry, now, suppressed)) = reserve_entry::<ExecEvent>(event_kind::EXEC_SESSION, cgroup_id, probe) else {
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` points to the reserved record, written field by field (the path is not zeroed:
    // `path_len` says how much of it is the path).
    unsafe {
        let e = &raw mut (*r).event;
        e.write(header(event_kind::EXEC_SESSION, cgroup_id, now, suppressed));
        fill_task(&mut *e, task, true);
        let (len, truncated) = read_path(bprm, &mut (*r).path);
        (*r).path_len = len;
        (*r).path_truncated = truncated;
    }
    entry.submit(0);
}

/// `bprm->filename` into `buf`: its length without the NUL (0 when it cannot be read), and 1
/// when the path did not fit (`buf` full, and the kernel's string goes on after it).
#[inline(always)]
fn read_path(bprm: u64, buf: &mut [u8; EXEC_PATH_MAX]) -> (u32, u32) {
    let Ok(filename) = kernel::read::<u64>(bprm, kconfig!(binprm_filename)) else { return (0, 0) };
    if filename == 0 {
        return (0, 0);
    }
    // SAFETY: a kernel string, read with the fault-tolerant helper (cut to fit, NUL-terminated).
    let Ok(len) = (unsafe { bpf_probe_read_kernel_str_bytes(filename as *const u8, buf) }).map(|b| b.len() as u32) else {
        return (0, 0);
    };
    let last = EXEC_PATH_MAX as u32 - 1;
    let truncated = len == last && kernel::read::<u8>(filename, last).is_ok_and(|next| next != 0);
    (len, u32::from(truncated))
}
