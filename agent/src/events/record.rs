//! One kernel record (`agent_common::Event`, or `ExecEvent` for an exec session) as one JSON line
//! of the schema in `schema.rs`.

use std::time::{Duration, SystemTime};

use agent_common::{EVENT_UNKNOWN, Event, ExecEvent, event_kind};
use serde::Serialize;

use crate::{
    cgroups::{Label, Registry},
    collectors::{exits::reason_name, oom, seccomp::action_name},
    containers::Identity,
    names::{signal_name, syscall_name},
};

/// What turns kernel records into lines: the names of cgroups, and the clocks.
#[derive(Debug)]
pub struct Context<'a> {
    pub registry: &'a Registry,
    /// The v1 memory hierarchy on a hybrid host (OOM limit cgroups are named from it).
    pub memory_v1: Option<&'a std::path::Path>,
    /// Bytes in a page (OOM RSS comes in pages).
    pub page_size: u64,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds, read for this batch.
    pub realtime_offset_ns: i128,
}

/// The `type` field of a kind.
pub fn type_name(kind: u32) -> Option<&'static str> {
    match kind {
        event_kind::SECCOMP => Some("seccomp"),
        event_kind::OOM_KILL => Some("oom_kill"),
        event_kind::EXIT => Some("exit"),
        event_kind::CONTAINER_START => Some("container_start"),
        event_kind::EXEC_SESSION => Some("exec_session"),
        _ => None,
    }
}

/// A record of the event ring: the event, and the exec'd path of an exec session.
#[derive(Debug, Clone)]
pub struct Record {
    pub event: Event,
    pub path: Option<ExecPath>,
}

/// The file an exec session exec'd, as the kernel passed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPath {
    /// `None` when the probe could not read it.
    pub path: Option<String>,
    /// The path was longer than a record holds and is cut (`agent_common::EXEC_PATH_MAX`).
    pub truncated: bool,
}

impl Record {
    /// The record in `item` (one entry of the ring), if it is one: an `Event`, or an `ExecEvent`
    /// for `event_kind::EXEC_SESSION`.
    pub fn decode(item: &[u8]) -> Option<Record> {
        if item.len() < size_of::<Event>() {
            return None;
        }
        // SAFETY: the probes submit whole `Event`s, or `ExecEvent`s that begin with one (checked
        // by length); read unaligned.
        let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
        if event.kind != event_kind::EXEC_SESSION {
            return Some(Record { event, path: None });
        }
        if item.len() < size_of::<ExecEvent>() {
            return None;
        }
        // SAFETY: as above, an `ExecEvent` (checked by kind and length).
        let exec = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ExecEvent>()) };
        let len = (exec.path_len as usize).min(exec.path.len());
        let path = (len > 0).then(|| String::from_utf8_lossy(&exec.path[..len]).into_owned());
        Some(Record { event, path: Some(ExecPath { path, truncated: exec.path_truncated != 0 }) })
    }
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC now, in nanoseconds (the probes stamp records with the
/// monotonic clock).
pub fn realtime_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid clock id and a valid out pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

/// An object written field by field, in the schema's order.
struct Line(String);

impl Line {
    fn field(&mut self, name: &str, value: impl Serialize) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        self.0.push('"');
        self.0.push_str(name);
        self.0.push_str("\":");
        // Serializing plain values into a String cannot fail.
        self.0.push_str(&serde_json::to_string(&value).unwrap_or_else(|_| "null".into()));
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn known(v: u64) -> Option<u64> {
    (v != EVENT_UNKNOWN).then_some(v)
}

fn text(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// A kernel command name: up to the first NUL, invalid UTF-8 replaced.
fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// The JSON line of `r` (without the newline) and its type's index in `schema::TYPES`; `None`
/// for a kind this agent does not know.
pub fn encode(ctx: &Context, r: &Record) -> Option<(usize, String)> {
    let e = &r.event;
    let kind = type_name(e.kind)?;
    let type_index = super::schema::TYPES.iter().position(|t| *t == kind)?;
    let (path, identity) = match ctx.registry.describe(e.cgroup_id) {
        Some((path, identity)) => (path.to_string(), identity),
        None => (Label::Unknown(e.cgroup_id).as_value(), Default::default()),
    };
    let identity: &Identity = &identity;
    let realtime = i128::from(e.time_ns) + ctx.realtime_offset_ns;
    let time = SystemTime::UNIX_EPOCH + Duration::from_nanos(realtime.clamp(0, u64::MAX as i128) as u64);

    let mut l = Line(String::with_capacity(512));
    l.field("time", humantime::format_rfc3339_nanos(time).to_string());
    l.field("type", kind);
    l.field("cgroup", &path);
    for (name, value) in identity.labels() {
        l.field(name, text(value));
    }
    l.field("image", text(&identity.image));
    l.field("pid", e.pid);
    l.field("tid", e.tid);
    l.field("comm", comm(&e.comm));
    l.field("parent_comm", (e.parent_comm[0] != 0).then(|| comm(&e.parent_comm)));
    l.field("suppressed", e.suppressed);
    match e.kind {
        event_kind::SECCOMP => {
            l.field("syscall", syscall_name(e.syscall_nr));
            l.field("syscall_nr", (e.syscall_nr >= 0).then_some(e.syscall_nr));
            l.field("action", action_name(e.action));
            l.field("errno", (e.errno >= 0).then_some(e.errno));
        }
        event_kind::OOM_KILL => {
            let bytes = |pages: u64| known(pages).map(|p| p.saturating_mul(ctx.page_size));
            l.field("rss_anon_bytes", bytes(e.rss_anon));
            l.field("rss_file_bytes", bytes(e.rss_file));
            l.field("rss_shmem_bytes", bytes(e.rss_shmem));
            l.field("limit", oom::limit_name(e.limit));
            let key = agent_common::OomKey {
                cgroup_id: e.cgroup_id,
                limit: e.limit,
                levels_up: e.levels_up,
                limit_cgroup_id: e.limit_cgroup_id,
            };
            let victim = Label::Path(path.as_str().into());
            let limit_cgroup = oom::limit_cgroup(ctx.registry, ctx.memory_v1, &key, &victim);
            l.field("limit_cgroup", text(&limit_cgroup));
        }
        event_kind::CONTAINER_START => {
            l.field("start_latency_seconds", seconds(e.duration_ns));
        }
        event_kind::EXEC_SESSION => {
            let path = r.path.as_ref();
            l.field("path", path.and_then(|p| p.path.as_deref()));
            l.field("path_truncated", path.is_some_and(|p| p.truncated));
        }
        _ => {
            l.field("reason", reason_name(e.reason));
            l.field("exit_code", (e.exit_code >= 0).then_some(e.exit_code));
            l.field("signal", (e.signal != 0).then(|| signal_name(e.signal)));
            // A starter's exit is a container's only in a container's own cgroup (as the metric).
            let container = match e.container {
                agent_common::exit_scope::PROCESS => false,
                agent_common::exit_scope::STARTER => crate::collectors::lifecycle::counted(&path, identity),
                _ => true,
            };
            l.field("scope", if container { "container" } else { "process" });
            l.field("lifetime_seconds", known(e.duration_ns).map(seconds));
        }
    }
    l.0.push('}');
    Some((type_index, l.0))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use agent_common::EXEC_PATH_MAX;
    use serde_json::Value;

    use super::*;
    use crate::{cgroups::ScannedCgroup, events::schema};

    const CGROUP: u64 = 7;

    fn registry() -> Registry {
        let r = Registry::new(10, Duration::from_secs(60));
        r.apply_scan(vec![ScannedCgroup { id: CGROUP, path: "/job".into(), populated: true }], Instant::now());
        r
    }

    fn comm16(s: &str) -> [u8; 16] {
        let mut c = [0; 16];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    /// An event of `kind` as the probes start one (`header` in agent-ebpf/src/events.rs).
    fn event(kind: u32) -> Event {
        Event {
            time_ns: 1_000_000_000,
            cgroup_id: CGROUP,
            limit_cgroup_id: 0,
            duration_ns: EVENT_UNKNOWN,
            rss_anon: EVENT_UNKNOWN,
            rss_file: EVENT_UNKNOWN,
            rss_shmem: EVENT_UNKNOWN,
            suppressed: 0,
            kind,
            pid: 4242,
            tid: 4242,
            syscall_nr: -1,
            action: 0,
            errno: -1,
            reason: 0,
            exit_code: -1,
            signal: 0,
            container: 0,
            limit: 0,
            levels_up: 0,
            comm: comm16("sh"),
            parent_comm: comm16("runc"),
        }
    }

    /// The ring's bytes of an exec session that exec'd `path` (`truncated` as the probe says).
    fn exec_item(path: &[u8], truncated: bool) -> Vec<u8> {
        let mut rec = ExecEvent { event: event(event_kind::EXEC_SESSION), path_len: 0, path_truncated: 0, path: [0; EXEC_PATH_MAX] };
        let len = path.len().min(EXEC_PATH_MAX - 1);
        rec.path[..len].copy_from_slice(&path[..len]);
        rec.path_len = len as u32;
        rec.path_truncated = u32::from(truncated);
        // SAFETY: a plain `repr(C)` record of integers, read as its bytes.
        unsafe { std::slice::from_raw_parts((&raw const rec).cast::<u8>(), size_of::<ExecEvent>()) }.to_vec()
    }

    /// The line of `r`, parsed and checked against the schema.
    fn line(r: &Record) -> Value {
        let registry = registry();
        let ctx = Context { registry: &registry, memory_v1: None, page_size: 4096, realtime_offset_ns: 0 };
        let (t, line) = encode(&ctx, r).expect("a known kind");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(schema::check(&v), Ok(()), "{line}");
        assert_eq!(schema::TYPES[t], v["type"], "{line}");
        v
    }

    #[test]
    fn a_container_start_carries_its_latency() {
        let mut e = event(event_kind::CONTAINER_START);
        e.comm = comm16("sleep");
        e.duration_ns = 250_000_000;
        let v = line(&Record { event: e, path: None });
        assert_eq!((&v["type"], &v["cgroup"], &v["pid"], &v["comm"]), (&"container_start".into(), &"/job".into(), &4242.into(), &"sleep".into()));
        assert_eq!((&v["parent_comm"], &v["start_latency_seconds"]), (&"runc".into(), &0.25.into()));
    }

    #[test]
    fn an_exec_session_carries_the_path_from_its_ring_record() {
        let r = Record::decode(&exec_item(b"/bin/sh", false)).expect("an exec session record");
        assert_eq!(r.path, Some(ExecPath { path: Some("/bin/sh".into()), truncated: false }));
        let v = line(&r);
        assert_eq!((&v["type"], &v["pid"], &v["comm"]), (&"exec_session".into(), &4242.into(), &"sh".into()));
        assert_eq!((&v["path"], &v["path_truncated"]), (&"/bin/sh".into(), &false.into()));

        // A path longer than the record holds: its first 255 bytes, marked.
        let long = format!("/{}", "d/".repeat(200));
        let v = line(&Record::decode(&exec_item(long.as_bytes(), true)).unwrap());
        assert_eq!((v["path"].as_str().map(str::len), &v["path_truncated"]), (Some(EXEC_PATH_MAX - 1), &true.into()));
        assert!(long.starts_with(v["path"].as_str().unwrap()));

        // Not read: null; not UTF-8: replaced, not dropped.
        let v = line(&Record::decode(&exec_item(b"", false)).unwrap());
        assert_eq!((&v["path"], &v["path_truncated"]), (&Value::Null, &false.into()));
        let v = line(&Record::decode(&exec_item(b"/bin/\xffx", false)).unwrap());
        assert_eq!(v["path"], "/bin/\u{fffd}x");
    }

    #[test]
    fn ring_records_are_told_apart_by_kind_and_length() {
        let exec = exec_item(b"/bin/sh", false);
        assert!(Record::decode(&exec[..size_of::<Event>()]).is_none(), "an exec session without its path");
        assert!(Record::decode(&exec[..size_of::<Event>() - 1]).is_none());
        // Every other kind is a bare `Event` (the ring may pad it).
        let mut start = exec.clone();
        start[std::mem::offset_of!(Event, kind)..][..4].copy_from_slice(&event_kind::CONTAINER_START.to_ne_bytes());
        let r = Record::decode(&start[..size_of::<Event>()]).unwrap();
        assert_eq!((r.event.kind, r.path), (event_kind::CONTAINER_START, None));
    }
}
