//! One kernel record (`agent_common::Event`) as one JSON line of the schema in `schema.rs`.

use std::time::{Duration, SystemTime};

use agent_common::{EVENT_UNKNOWN, Event, event_kind};
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
        _ => None,
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

/// The JSON line of `e` (without the newline) and its type's index in `schema::TYPES`; `None`
/// for a kind this agent does not know.
pub fn encode(ctx: &Context, e: &Event) -> Option<(usize, String)> {
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
        _ => {
            l.field("reason", reason_name(e.reason));
            l.field("exit_code", (e.exit_code >= 0).then_some(e.exit_code));
            l.field("signal", (e.signal != 0).then(|| signal_name(e.signal)));
            l.field("scope", if e.container != 0 { "container" } else { "process" });
            l.field("lifetime_seconds", known(e.lifetime_ns).map(|ns| ns as f64 / 1e9));
        }
    }
    l.0.push('}');
    Some((type_index, l.0))
}
