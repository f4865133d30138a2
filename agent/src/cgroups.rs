//! cgroup layout discovery, the id -> path registry (with the `--max-cgroups` bound and the
//! `--retain` window), and per-cgroup CPU / memory files.
//!
//! The eBPF programs identify a cgroup by its v2 id, which is the inode number of its directory
//! in the cgroup2 mount. The registry learns ids from a walk of that mount and from the
//! `cgroup_mkdir` / `cgroup_rmdir` probes, so that short-lived cgroups are still named.

use std::{
    collections::HashMap,
    fs,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::containers::{Identity, Selection, parse_path};

/// Longest cgroup path exported as a label value; longer ones are cut at a char boundary.
pub const MAX_PATH_LABEL: usize = 1024;
/// Deepest directory level walked below the cgroup2 mount.
const MAX_DEPTH: usize = 64;
/// A v1 `memory.limit_in_bytes` at or above this is "no limit" (the kernel reports
/// PAGE_COUNTER_MAX pages, just under 2^63 bytes).
const V1_UNLIMITED: u64 = 1 << 62;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy at {0}/fs/cgroup or {0}/fs/cgroup/unified (cgwatch needs cgroup v2, \
         alone or in hybrid mode)"
    )]
    NoCgroup2(String),
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the cgroup hierarchies are mounted.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The cgroup2 mount (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid).
    pub v2: PathBuf,
    /// v1 memory controller mount, on hybrid / legacy hosts.
    pub memory_v1: Option<PathBuf>,
    /// v1 cpuacct controller mount, on hybrid / legacy hosts.
    pub cpuacct_v1: Option<PathBuf>,
    /// v1 cpu controller mount (CFS throttling), on hybrid / legacy hosts.
    pub cpu_v1: Option<PathBuf>,
}

impl Layout {
    pub fn detect(sysfs: &Path) -> Result<Self, CgroupError> {
        let base = sysfs.join("fs/cgroup");
        let v2 = if base.join("cgroup.controllers").exists() {
            base.clone()
        } else if base.join("unified/cgroup.controllers").exists() {
            base.join("unified")
        } else {
            return Err(CgroupError::NoCgroup2(sysfs.display().to_string()));
        };
        let mut layout = Layout { v2, memory_v1: None, cpuacct_v1: None, cpu_v1: None };
        if layout.v2 != base
            && let Ok(entries) = fs::read_dir(&base)
        {
            // v1 controllers may be co-mounted ("cpu,cpuacct"): recognise them by their files.
            for entry in entries.flatten() {
                let dir = entry.path();
                if dir == layout.v2 || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if layout.memory_v1.is_none() && dir.join("memory.usage_in_bytes").exists() {
                    layout.memory_v1 = Some(dir.clone());
                }
                if layout.cpu_v1.is_none() && dir.join("cpu.cfs_quota_us").exists() {
                    layout.cpu_v1 = Some(dir.clone());
                }
                if layout.cpuacct_v1.is_none() && dir.join("cpuacct.usage").exists() {
                    layout.cpuacct_v1 = Some(dir);
                }
            }
        }
        Ok(layout)
    }

    fn v2_dir(&self, rel: &str) -> PathBuf {
        join_rel(&self.v2, rel)
    }

    /// The controllers enabled for this cgroup in v2 (its `cgroup.controllers`).
    fn v2_controllers(&self, rel: &str) -> String {
        fs::read_to_string(self.v2_dir(rel).join("cgroup.controllers")).unwrap_or_default()
    }

    /// CPU, memory and pressure of the cgroup at `rel` (a path relative to the mount, starting
    /// with `/`): from v2 where the controller is enabled there, else from v1 at the same path.
    pub fn resources(&self, rel: &str) -> Resources {
        let controllers = self.v2_controllers(rel);
        let has = |name: &str| controllers.split_whitespace().any(|c| c == name);
        let v2 = self.v2_dir(rel);
        let mut r = Resources::default();

        let v1_cpu = self.cpuacct_v1.as_ref().map(|m| join_rel(m, rel).join("cpuacct.usage"));
        r.cpu_seconds = if !has("cpu")
            && let Some(ns) = v1_cpu.as_ref().and_then(|p| read_u64(p))
        {
            Some(ns as f64 / 1e9)
        } else {
            // cpu.stat's usage_usec is a core v2 file, there even without the cpu controller.
            read_keyed(&v2.join("cpu.stat"), "usage_usec").map(|us| us as f64 / 1e6)
        };
        r.cpu_throttled_seconds = if has("cpu") {
            read_keyed(&v2.join("cpu.stat"), "throttled_usec").map(|us| us as f64 / 1e6)
        } else {
            let stat = self.cpu_v1.as_ref().map(|m| join_rel(m, rel).join("cpu.stat"));
            stat.and_then(|p| read_keyed(&p, "throttled_time")).map(|ns| ns as f64 / 1e9)
        };

        if has("memory") {
            r.memory_bytes = read_u64(&v2.join("memory.current"));
            r.memory_limit_bytes = read_u64(&v2.join("memory.max")); // "max" does not parse: no limit
            let inactive = read_keyed(&v2.join("memory.stat"), "inactive_file");
            r.memory_working_set_bytes = working_set(r.memory_bytes, inactive);
            if let Ok(text) = fs::read_to_string(v2.join("memory.events")) {
                r.memory_events = MEMORY_EVENTS
                    .iter()
                    .filter_map(|&ev| keyed(&text, ev).map(|v| (ev, v)))
                    .collect();
            }
        } else if let Some(m) = &self.memory_v1 {
            let dir = join_rel(m, rel);
            r.memory_bytes = read_u64(&dir.join("memory.usage_in_bytes"));
            r.memory_limit_bytes = read_u64(&dir.join("memory.limit_in_bytes")).filter(|&l| l < V1_UNLIMITED);
            let inactive = read_keyed(&dir.join("memory.stat"), "total_inactive_file");
            r.memory_working_set_bytes = working_set(r.memory_bytes, inactive);
            // v1 counts only OOM kills (kernel >= 4.13), in memory.oom_control.
            if let Some(v) = read_keyed(&dir.join("memory.oom_control"), "oom_kill") {
                r.memory_events.push(("oom_kill", v));
            }
        }
        // PSI files are core cgroup2 files: there without the controllers (hybrid hosts too).
        for resource in PRESSURE_RESOURCES {
            for (kind, seconds) in read_pressure(&v2.join(format!("{resource}.pressure"))) {
                r.pressure.push((resource, kind, seconds));
            }
        }
        r
    }

    /// Walks the cgroup2 mount. Errors below the root (a cgroup removed during the walk) are
    /// skipped; an unreadable root is an error.
    pub fn scan(&self) -> Result<Vec<ScannedCgroup>, CgroupError> {
        let root_meta = fs::metadata(&self.v2)
            .map_err(|source| CgroupError::Io { path: self.v2.clone(), source })?;
        let mut out = vec![ScannedCgroup { id: root_meta.ino(), path: "/".into(), populated: true }];
        let mut stack = vec![(self.v2.clone(), String::new(), 0usize)];
        while let Some((dir, rel, depth)) = stack.pop() {
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                // file_type() does not follow symlinks: only real cgroup directories.
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let child_rel = format!("{rel}/{}", entry.file_name().to_string_lossy());
                let path = entry.path();
                let populated = fs::read_to_string(path.join("cgroup.events"))
                    .is_ok_and(|s| s.lines().any(|l| l.trim() == "populated 1"));
                out.push(ScannedCgroup { id: meta.ino(), path: child_rel.clone(), populated });
                stack.push((path, child_rel, depth + 1));
            }
        }
        Ok(out)
    }
}

/// v2 `memory.events` keys exported (a fixed set, so the label's cardinality is bounded).
pub const MEMORY_EVENTS: [&str; 6] = ["low", "high", "max", "oom", "oom_kill", "oom_group_kill"];
/// PSI resources of a cgroup (the host also has irq).
pub const PRESSURE_RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

/// CPU, memory and pressure of one cgroup; `None` / empty where the file is missing or
/// unreadable (an old kernel, a controller that is not enabled).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub cpu_seconds: Option<f64>,
    pub cpu_throttled_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// Usage minus inactive file pages, as the kubelet computes it for eviction.
    pub memory_working_set_bytes: Option<u64>,
    /// `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// (event, count) from memory.events (v2) or memory.oom_control (v1).
    pub memory_events: Vec<(&'static str, u64)>,
    /// (resource, some|full, total stall seconds) from PSI.
    pub pressure: Vec<(&'static str, &'static str, f64)>,
}

fn working_set(usage: Option<u64>, inactive_file: Option<u64>) -> Option<u64> {
    usage.map(|u| u.saturating_sub(inactive_file.unwrap_or(0)))
}

/// Total stall time of each line of a PSI file (`<procfs>/pressure/*`, `<cgroup>/*.pressure`):
/// (some|full, seconds). Lines the kernel does not have (cpu "full" before 5.13) are absent.
pub fn read_pressure(path: &Path) -> Vec<(&'static str, f64)> {
    let Ok(text) = fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .filter_map(|line| {
            let kind = match line.split_whitespace().next()? {
                "some" => "some",
                "full" => "full",
                _ => return None,
            };
            let record = procfs::parse_pressure_record(line).ok()?;
            Some((kind, record.total as f64 / 1e6))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedCgroup {
    pub id: u64,
    pub path: String,
    pub populated: bool,
}

fn join_rel(base: &Path, rel: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() { base.to_path_buf() } else { base.join(rel) }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    keyed(&fs::read_to_string(path).ok()?, key)
}

/// The value of `key` in a "key value" per line file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key { v.trim().parse().ok() } else { None }
    })
}

/// Makes an untrusted cgroup path safe as a label value: valid UTF-8, bounded length. The
/// exposition encoder escapes quotes, backslashes and newlines.
pub fn sanitize_path(raw: &[u8]) -> Arc<str> {
    let s = String::from_utf8_lossy(raw);
    let s = if s.is_empty() { "/" } else { &s };
    if s.len() <= MAX_PATH_LABEL {
        return Arc::from(s);
    }
    let mut end = MAX_PATH_LABEL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Arc::from(&s[..end])
}

/// What a per-cgroup series is labelled with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Label {
    Path(Arc<str>),
    /// Over `--max-cgroups`: summed into one series so that no count is lost.
    Overflow,
    /// Not chosen by `--cgroups`: summed into one series so that no count is lost.
    Unselected,
    /// An id the agent never saw created (its mkdir event was lost and it is gone).
    Unknown(u64),
}

impl Label {
    pub fn as_value(&self) -> String {
        match self {
            Label::Path(p) => p.to_string(),
            Label::Overflow => "(overflow)".to_string(),
            Label::Unselected => "(other)".to_string(),
            Label::Unknown(id) => format!("(unknown id {id})"),
        }
    }
}

/// The labels of one cgroup's series: its path (or a fold) and its container identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub label: Label,
    pub identity: Arc<Identity>,
}

impl Series {
    fn folded(label: Label) -> Self {
        Series { label, identity: Arc::default() }
    }

    /// The names of this container are being looked up: its series wait for them (the
    /// counters are kept in the kernel meanwhile, nothing is lost).
    pub fn pending(&self) -> bool {
        self.identity.pending()
    }

    /// `cgroup`, then the known ones of `container_id`, `container`, `pod`, `namespace`,
    /// `runtime` (`Identity::known_labels`).
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(8);
        out.push(("cgroup", self.label.as_value()));
        out.extend(self.identity.known_labels().map(|(k, v)| (k, v.to_string())));
        out
    }
}

#[derive(Debug)]
struct Entry {
    path: Arc<str>,
    /// What the path says, then the names the resolver found.
    identity: Arc<Identity>,
    populated: bool,
    removed_at: Option<Instant>,
    /// Has series of its own (admitted under `--max-cgroups`).
    shown: bool,
    /// Has kernel events: such a cgroup is never evicted for a merely populated one.
    has_events: bool,
    /// Last time a scan or a mkdir event saw it.
    seen_at: Instant,
}

impl Entry {
    fn new(path: Arc<str>, seen_at: Instant) -> Self {
        let identity = Arc::new(parse_path(&path));
        Entry { path, identity, populated: false, removed_at: None, shown: false, has_events: false, seen_at }
    }

    /// Renames (a cgroup id never changes path in practice, but a lost event can leave a
    /// stale one); a new path means a new identity.
    fn set_path(&mut self, path: Arc<str>) {
        if self.path != path {
            self.identity = Arc::new(parse_path(&path));
            self.path = path;
        }
    }
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<u64, Entry>,
    shown: usize,
}

/// Known cgroups, shared by the collectors (scrape) and the background tasks.
#[derive(Debug)]
pub struct Registry {
    state: Mutex<State>,
    max_shown: usize,
    retain: Duration,
    selection: Selection,
}

/// A live cgroup whose resources are exported.
#[derive(Debug, Clone)]
pub struct ShownCgroup {
    pub path: Arc<str>,
    pub identity: Arc<Identity>,
}

impl Registry {
    pub fn new(max_shown: usize, retain: Duration) -> Self {
        Self::with_selection(max_shown, retain, Selection::All)
    }

    pub fn with_selection(max_shown: usize, retain: Duration, selection: Selection) -> Self {
        Self { state: Mutex::new(State::default()), max_shown, retain, selection }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map inconsistent (no multi-step
        // invariants), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a full walk of the hierarchy that started at `started`. A cgroup it did not find
    /// is marked removed only if nothing saw it after the walk began (a mkdir event can race
    /// with the walk).
    pub fn apply_scan(&self, scanned: Vec<ScannedCgroup>, started: Instant) {
        let now = Instant::now().max(started);
        let mut st = self.lock();
        let mut seen = std::collections::HashSet::with_capacity(scanned.len());
        for c in scanned {
            seen.insert(c.id);
            let path = sanitize_path(c.path.as_bytes());
            let e = st.entries.entry(c.id).or_insert_with(|| Entry::new(path.clone(), started));
            e.set_path(path);
            e.populated = c.populated;
            e.removed_at = None;
            e.seen_at = e.seen_at.max(started);
        }
        for (id, e) in st.entries.iter_mut() {
            if !seen.contains(id) && e.removed_at.is_none() && e.seen_at < started {
                e.removed_at = Some(now);
            }
        }
        self.admit_populated(&mut st);
    }

    /// Admits populated cgroups while there is room (cgroups with events were admitted first).
    fn admit_populated(&self, st: &mut State) {
        if st.shown >= self.max_shown {
            return;
        }
        let selection = self.selection;
        let mut candidates: Vec<(u64, usize)> = st
            .entries
            .iter()
            .filter(|(_, e)| !e.shown && e.populated && e.removed_at.is_none() && selection.selects(e.identity.kind))
            .map(|(id, e)| (*id, e.path.len()))
            .collect();
        // Shallow paths first: slices before the containers inside them.
        candidates.sort_by_key(|&(id, len)| (len, id));
        for (id, _) in candidates {
            if st.shown >= self.max_shown {
                break;
            }
            if let Some(e) = st.entries.get_mut(&id) {
                e.shown = true;
                st.shown += 1;
            }
        }
    }

    /// A mkdir event. Returns true when the new cgroup's names need a lookup.
    pub fn cgroup_created(&self, id: u64, raw_path: &[u8], now: Instant) -> bool {
        let mut st = self.lock();
        let path = sanitize_path(raw_path);
        let e = st.entries.entry(id).or_insert_with(|| Entry::new(path.clone(), now));
        e.set_path(path);
        e.removed_at = None;
        e.seen_at = e.seen_at.max(now);
        e.identity.needs_names()
    }

    pub fn cgroup_removed(&self, id: u64, now: Instant) {
        if let Some(e) = self.lock().entries.get_mut(&id) {
            e.removed_at.get_or_insert(now);
        }
    }

    /// The label for a cgroup that has kernel events; admits it when there is room, evicting a
    /// cgroup that is only populated if needed.
    pub fn event_label(&self, id: u64) -> Label {
        self.event_series(id).label
    }

    /// The labels for a cgroup that has kernel events; admits it when there is room, evicting a
    /// cgroup that is only populated if needed.
    pub fn event_series(&self, id: u64) -> Series {
        let mut st = self.lock();
        let max = self.max_shown;
        let Some(e) = st.entries.get_mut(&id) else { return Series::folded(Label::Unknown(id)) };
        e.has_events = true;
        if !self.selection.selects(e.identity.kind) {
            return Series::folded(Label::Unselected);
        }
        if e.shown {
            return Series { label: Label::Path(e.path.clone()), identity: e.identity.clone() };
        }
        if st.shown >= max {
            let victim = st
                .entries
                .iter()
                .filter(|(vid, v)| v.shown && !v.has_events && **vid != id)
                .max_by_key(|(vid, v)| (v.path.len(), **vid))
                .map(|(vid, _)| *vid);
            match victim {
                Some(v) => {
                    if let Some(ve) = st.entries.get_mut(&v) {
                        ve.shown = false;
                    }
                    st.shown -= 1;
                }
                None => return Series::folded(Label::Overflow),
            }
        }
        st.shown += 1;
        match st.entries.get_mut(&id) {
            Some(e) => {
                e.shown = true;
                Series { label: Label::Path(e.path.clone()), identity: e.identity.clone() }
            }
            None => Series::folded(Label::Unknown(id)),
        }
    }

    /// The path of a known cgroup (live or retained), without admitting it.
    pub fn path_of(&self, id: u64) -> Option<Arc<str>> {
        self.lock().entries.get(&id).map(|e| e.path.clone())
    }

    /// Container and pod cgroups whose names are not known yet: live ones, and removed ones
    /// never looked up.
    pub fn needs_names(&self) -> Vec<(u64, Arc<Identity>)> {
        let st = self.lock();
        st.entries
            .iter()
            // A container removed before its first lookup still gets one (its series wait for it).
            .filter(|(_, e)| e.identity.needs_names() && (e.removed_at.is_none() || !e.identity.attempted))
            .map(|(id, e)| (*id, e.identity.clone()))
            .collect()
    }

    /// Records the names the resolver found for a cgroup (unless it changed path meanwhile).
    pub fn set_identity(&self, id: u64, identity: Identity) {
        if let Some(e) = self.lock().entries.get_mut(&id)
            && e.identity.container_id == identity.container_id
            && e.identity.pod_uid == identity.pod_uid
        {
            e.identity = Arc::new(identity);
        }
    }

    /// The identity of every live container, one per container id (a container's nested
    /// cgroups share it).
    pub fn live_containers(&self) -> Vec<Arc<Identity>> {
        let st = self.lock();
        let mut out: Vec<Arc<Identity>> = st
            .entries
            .values()
            .filter(|e| e.removed_at.is_none() && e.identity.is_container())
            .map(|e| e.identity.clone())
            .collect();
        // The outermost cgroup of a container sorts first and is the one kept.
        out.sort_by(|a, b| a.container_id.cmp(&b.container_id).then(b.resolved.cmp(&a.resolved)));
        out.dedup_by(|a, b| a.container_id == b.container_id);
        out
    }

    /// Live, shown cgroups: the ones whose CPU and memory are exported.
    pub fn shown_live(&self) -> Vec<ShownCgroup> {
        let st = self.lock();
        let mut out: Vec<ShownCgroup> = st
            .entries
            .values()
            .filter(|e| e.shown && e.removed_at.is_none() && !e.identity.pending())
            .map(|e| ShownCgroup { path: e.path.clone(), identity: e.identity.clone() })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Live cgroups chosen by `--cgroups` (populated or with events) that have no series of
    /// their own because of `--max-cgroups`.
    pub fn not_shown(&self) -> usize {
        let st = self.lock();
        st.entries
            .values()
            .filter(|e| {
                !e.shown
                    && e.removed_at.is_none()
                    && (e.populated || e.has_events)
                    && self.selection.selects(e.identity.kind)
            })
            .count()
    }

    /// Forgets cgroups removed more than `--retain` ago and returns their ids, so that their
    /// kernel counters can be deleted.
    pub fn purge_expired(&self, now: Instant) -> Vec<u64> {
        let mut st = self.lock();
        let retain = self.retain;
        let expired: Vec<u64> = st
            .entries
            .iter()
            .filter(|(_, e)| e.removed_at.is_some_and(|t| now.duration_since(t) >= retain))
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            if let Some(e) = st.entries.remove(id)
                && e.shown
            {
                st.shown -= 1;
            }
        }
        if !expired.is_empty() {
            self.admit_populated(&mut st);
        }
        expired
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(id: u64, path: &str, populated: bool) -> ScannedCgroup {
        ScannedCgroup { id, path: path.into(), populated }
    }

    #[test]
    fn hybrid_fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("fs/cgroup");
        fs::create_dir_all(cg.join("unified/app")).unwrap();
        fs::write(cg.join("unified/cgroup.controllers"), "").unwrap();
        fs::write(cg.join("unified/app/cgroup.controllers"), "").unwrap();
        fs::write(cg.join("unified/app/cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        fs::write(cg.join("unified/app/cpu.stat"), "usage_usec 2500000\nuser_usec 1\n").unwrap();
        fs::create_dir_all(cg.join("memory/app")).unwrap();
        fs::write(cg.join("memory/memory.usage_in_bytes"), "1").unwrap();
        fs::write(cg.join("memory/app/memory.usage_in_bytes"), "4096\n").unwrap();
        fs::write(cg.join("memory/app/memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        fs::write(cg.join("memory/app/memory.stat"), "cache 0\ntotal_inactive_file 1024\n").unwrap();
        fs::write(cg.join("memory/app/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        fs::create_dir_all(cg.join("cpu,cpuacct/app")).unwrap();
        fs::write(cg.join("cpu,cpuacct/cpuacct.usage"), "1").unwrap();
        fs::write(cg.join("cpu,cpuacct/app/cpuacct.usage"), "3000000000\n").unwrap();
        fs::write(cg.join("cpu,cpuacct/cpu.cfs_quota_us"), "-1").unwrap();
        fs::write(cg.join("cpu,cpuacct/app/cpu.stat"), "nr_periods 4\nnr_throttled 2\nthrottled_time 500000000\n").unwrap();

        let layout = Layout::detect(dir.path()).unwrap();
        assert_eq!(layout.v2, cg.join("unified"));
        assert_eq!(layout.memory_v1, Some(cg.join("memory")));
        assert_eq!(layout.cpuacct_v1, Some(cg.join("cpu,cpuacct")));
        assert_eq!(layout.cpu_v1, Some(cg.join("cpu,cpuacct")));
        let r = layout.resources("/app");
        assert_eq!(r.cpu_seconds, Some(3.0));
        assert_eq!(r.memory_bytes, Some(4096));
        assert_eq!(r.memory_limit_bytes, None, "v1 'unlimited' is no limit");
        assert_eq!(r.memory_working_set_bytes, Some(4096 - 1024));
        assert_eq!(r.memory_events, vec![("oom_kill", 2)]);
        assert_eq!(r.cpu_throttled_seconds, Some(0.5));

        let scan = layout.scan().unwrap();
        assert_eq!(scan.len(), 2);
        assert_eq!(scan[0].path, "/");
        assert_eq!(scan[1].path, "/app");
        assert!(scan[1].populated);
    }

    #[test]
    fn unified_fixture_tree_uses_v2_controllers() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("fs/cgroup");
        fs::create_dir_all(cg.join("svc")).unwrap();
        fs::write(cg.join("cgroup.controllers"), "cpu memory").unwrap();
        fs::write(cg.join("svc/cgroup.controllers"), "cpu memory").unwrap();
        fs::write(cg.join("svc/cpu.stat"), "usage_usec 1500000\n").unwrap();
        fs::write(cg.join("svc/memory.current"), "8192\n").unwrap();
        fs::write(cg.join("svc/memory.max"), "max\n").unwrap();
        fs::write(cg.join("svc/memory.stat"), "anon 4096\ninactive_file 3072\nactive_file 1024\n").unwrap();
        fs::write(cg.join("svc/memory.events"), "low 0\nhigh 2\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n").unwrap();
        fs::write(cg.join("svc/cpu.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=2500000\n").unwrap();
        fs::write(
            cg.join("svc/memory.pressure"),
            "some avg10=1.00 avg60=0.00 avg300=0.00 total=10\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=4\n",
        )
        .unwrap();
        let layout = Layout::detect(dir.path()).unwrap();
        let r = layout.resources("/svc");
        assert_eq!(r.cpu_seconds, Some(1.5));
        assert_eq!(r.cpu_throttled_seconds, None, "no throttled_usec in this cpu.stat");
        assert_eq!((r.memory_bytes, r.memory_limit_bytes), (Some(8192), None));
        assert_eq!(r.memory_working_set_bytes, Some(8192 - 3072));
        assert_eq!(
            r.memory_events,
            vec![("low", 0), ("high", 2), ("max", 5), ("oom", 1), ("oom_kill", 1), ("oom_group_kill", 0)]
        );
        // A kernel without cpu "full" (before 5.13) just has no such series.
        assert_eq!(r.pressure, vec![("cpu", "some", 2.5), ("memory", "some", 1e-5), ("memory", "full", 4e-6)]);
        fs::write(cg.join("svc/cpu.stat"), "usage_usec 1500000\nthrottled_usec 250000\n").unwrap();
        assert_eq!(layout.resources("/svc").cpu_throttled_seconds, Some(0.25));
        fs::write(cg.join("svc/memory.max"), "1048576\n").unwrap();
        assert_eq!(layout.resources("/svc").memory_limit_bytes, Some(1048576));
    }

    #[test]
    fn no_cgroup2_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Layout::detect(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no cgroup v2 hierarchy"), "{err}");
    }

    #[test]
    fn hostile_paths_are_bounded_and_valid_utf8() {
        let p = sanitize_path(b"/a\xff\"b\nc");
        assert_eq!(&*p, "/a\u{fffd}\"b\nc");
        let long = "é".repeat(2000);
        let p = sanitize_path(long.as_bytes());
        assert!(p.len() <= MAX_PATH_LABEL && p.chars().all(|c| c == 'é'));
    }

    #[test]
    fn max_cgroups_prefers_event_cgroups_and_folds_overflow() {
        let now = Instant::now();
        let r = Registry::new(2, Duration::from_secs(60));
        r.apply_scan(
            vec![scanned(1, "/", true), scanned(2, "/a", true), scanned(3, "/b", false), scanned(4, "/c", false)],
            now,
        );
        assert_eq!(r.shown_live().len(), 2);
        // An event cgroup evicts a merely populated one.
        assert_eq!(r.event_label(3), Label::Path("/b".into()));
        assert_eq!(r.event_label(4), Label::Path("/c".into()));
        // Now both shown cgroups have events: a third one is folded, never dropped.
        assert_eq!(r.event_label(2), Label::Overflow);
        assert_eq!(r.event_label(99), Label::Unknown(99));
        assert_eq!(r.not_shown(), 2, "/ and /a are live but not shown");
    }

    #[test]
    fn removed_cgroups_are_kept_for_the_retain_window() {
        let t0 = Instant::now();
        let r = Registry::new(10, Duration::from_secs(60));
        r.apply_scan(vec![scanned(1, "/", true), scanned(2, "/x", true)], t0);
        assert_eq!(r.event_label(2), Label::Path("/x".into()));
        r.cgroup_removed(2, t0);
        assert_eq!(r.event_label(2), Label::Path("/x".into()), "still labelled while retained");
        assert!(r.purge_expired(t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(r.purge_expired(t0 + Duration::from_secs(60)), vec![2]);
        assert_eq!(r.event_label(2), Label::Unknown(2));
    }

    #[test]
    fn a_scan_racing_with_mkdir_does_not_remove_the_new_cgroup() {
        let t0 = Instant::now();
        let r = Registry::new(10, Duration::from_secs(60));
        r.apply_scan(vec![scanned(1, "/", true)], t0);
        let scan_started = t0 + Duration::from_millis(10);
        // The mkdir event arrives while the walk (which missed the new directory) runs.
        r.cgroup_created(5, b"/new", scan_started + Duration::from_millis(1));
        r.apply_scan(vec![scanned(1, "/", true)], scan_started);
        assert_eq!(r.event_label(5), Label::Path("/new".into()));
        assert_eq!(r.shown_live().iter().filter(|c| &*c.path == "/new").count(), 1);
        // A later walk that still does not find it does remove it.
        r.apply_scan(vec![scanned(1, "/", true)], scan_started + Duration::from_secs(1));
        assert!(r.shown_live().iter().all(|c| &*c.path != "/new"));
    }

    #[test]
    fn container_series_wait_for_the_first_name_lookup() {
        let id = "ab".repeat(32);
        let t0 = Instant::now();
        let r = Registry::new(10, Duration::from_secs(60));
        assert!(r.cgroup_created(3, format!("/docker/{id}").as_bytes(), t0), "a container wakes the resolver");
        assert!(!r.cgroup_created(4, b"/plain", t0));
        assert!(r.event_series(3).pending());
        assert!(!r.event_series(4).pending());
        // Removed before any lookup: still looked up once, so its counts are not held forever.
        r.cgroup_removed(3, t0);
        let todo = r.needs_names();
        assert_eq!(todo.len(), 1);
        let mut named = (*todo[0].1).clone();
        named.attempted = true;
        r.set_identity(3, named);
        assert!(!r.event_series(3).pending());
        assert!(r.needs_names().is_empty(), "a removed container is not retried");
        assert_eq!(r.event_series(3).labels()[1], ("container_id", id));
        assert_eq!(r.event_series(4).labels(), vec![("cgroup", "/plain".to_string())], "unknown identity: no empty labels");
    }

    #[test]
    fn mkdir_events_name_short_lived_cgroups() {
        let t0 = Instant::now();
        let r = Registry::new(10, Duration::from_secs(60));
        r.cgroup_created(7, b"/job/short", t0);
        r.cgroup_removed(7, t0);
        assert_eq!(r.event_label(7), Label::Path("/job/short".into()));
        // A later scan that no longer finds it keeps the first removal time.
        r.apply_scan(vec![scanned(1, "/", true)], t0 + Duration::from_secs(30));
        assert_eq!(r.purge_expired(t0 + Duration::from_secs(60)), vec![7]);
    }
}
