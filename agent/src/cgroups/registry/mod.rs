//! The id -> path registry of cgroups, with the `--max-cgroups` bound and the `--retain`
//! window; the labels of each cgroup's series are in `super::series`.
//!
//! The eBPF programs identify a cgroup by its v2 id, which is the inode number of its directory
//! in the cgroup2 mount. The registry learns ids from a walk of that mount and from the
//! `cgroup_mkdir` / `cgroup_rmdir` probes, so that short-lived cgroups are still named.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::{
    ScannedCgroup,
    series::{Label, Series, render, sanitize_path},
};
use crate::containers::{Identity, Selection, parse_path};

#[derive(Debug)]
struct Entry {
    path: Arc<str>,
    /// What the path says, then the names the resolver found.
    identity: Arc<Identity>,
    /// Path and identity rendered as labels (`Series::rendered`).
    rendered: Arc<str>,
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
        let rendered = render(&Label::Path(path.clone()), &identity);
        Entry { path, identity, rendered, populated: false, removed_at: None, shown: false, has_events: false, seen_at }
    }

    fn set_identity(&mut self, identity: Arc<Identity>) {
        self.rendered = render(&Label::Path(self.path.clone()), &identity);
        self.identity = identity;
    }

    fn series(&self) -> Series {
        Series { label: Label::Path(self.path.clone()), identity: self.identity.clone(), rendered: self.rendered.clone() }
    }

    /// Renames (a cgroup id never changes path in practice, but a lost event can leave a
    /// stale one); a new path means a new identity.
    fn set_path(&mut self, path: Arc<str>) {
        if self.path != path {
            self.path = path;
            self.set_identity(Arc::new(parse_path(&self.path)));
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
    /// Its labels, rendered (`Series::rendered`).
    pub rendered: Arc<str>,
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

    /// An rmdir event, which carries the path: a cgroup the registry never saw (made and
    /// removed while the agent was down, its mkdir event lost) is named by it.
    pub fn cgroup_removed(&self, id: u64, raw_path: &[u8], now: Instant) {
        let mut st = self.lock();
        if let Some(e) = st.entries.get_mut(&id) {
            e.removed_at.get_or_insert(now);
        } else if !raw_path.is_empty() {
            let mut e = Entry::new(sanitize_path(raw_path), now);
            e.removed_at = Some(now);
            st.entries.insert(id, e);
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
        self.event_series_locked(&mut self.lock(), id)
    }

    /// `event_series` of every id, in order, under one lock (a scrape's thousands of keys).
    pub fn event_series_many(&self, ids: impl IntoIterator<Item = u64>) -> Vec<Series> {
        let mut st = self.lock();
        ids.into_iter().map(|id| self.event_series_locked(&mut st, id)).collect()
    }

    /// The rendered labels (`Series::rendered`) of every id's series, in order, under one lock;
    /// `None` while its names are looked up (`Series::pending`). What the event collectors
    /// need: a shown cgroup costs a lookup and one reference count, not a whole `Series`.
    pub fn event_labels_many(&self, ids: impl IntoIterator<Item = u64>) -> Vec<Option<Arc<str>>> {
        let mut st = self.lock();
        ids.into_iter()
            .map(|id| match st.entries.get_mut(&id) {
                Some(e) if e.shown && self.selection.selects(e.identity.kind) => {
                    e.has_events = true;
                    (!e.identity.pending()).then(|| e.rendered.clone())
                }
                _ => {
                    let series = self.event_series_locked(&mut st, id);
                    (!series.pending()).then_some(series.rendered)
                }
            })
            .collect()
    }

    fn event_series_locked(&self, st: &mut State, id: u64) -> Series {
        let max = self.max_shown;
        // Counts of a cgroup the registry does not know (gone before this agent started, or its
        // events lost): kept as "(unknown id N)" for the retain window, then purged with them.
        let e = st.entries.entry(id).or_insert_with(|| {
            let now = Instant::now();
            let mut e = Entry::new(Arc::from(Label::Unknown(id).as_value().as_str()), now);
            e.removed_at = Some(now);
            e
        });
        e.has_events = true;
        if !self.selection.selects(e.identity.kind) {
            return Series::folded(Label::Unselected);
        }
        if e.shown {
            return e.series();
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
                e.series()
            }
            None => Series::folded(Label::Unknown(id)),
        }
    }

    /// The path and identity of a known cgroup (live or retained), without admitting it.
    pub fn describe(&self, id: u64) -> Option<(Arc<str>, Arc<Identity>)> {
        self.lock().entries.get(&id).map(|e| (e.path.clone(), e.identity.clone()))
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
            e.set_identity(Arc::new(identity));
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
            .map(|e| ShownCgroup { path: e.path.clone(), identity: e.identity.clone(), rendered: e.rendered.clone() })
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

    /// Forgets cgroups removed more than `--retain` ago. Returns each one's id with its
    /// successor: the cgroup now at the same path (live first, else the last removed), which
    /// carries the forgotten counters on, so that the path's series never goes down.
    pub fn purge_expired(&self, now: Instant) -> Vec<(u64, Option<u64>)> {
        let mut st = self.lock();
        let retain = self.retain;
        let expired: Vec<u64> = st
            .entries
            .iter()
            .filter(|(_, e)| e.removed_at.is_some_and(|t| now.duration_since(t) >= retain))
            .map(|(id, _)| *id)
            .collect();
        let mut paths = Vec::with_capacity(expired.len());
        for id in &expired {
            if let Some(e) = st.entries.remove(id) {
                if e.shown {
                    st.shown -= 1;
                }
                paths.push((*id, e.path));
            }
        }
        if paths.is_empty() {
            return Vec::new();
        }
        // After a churn the map keeps its peak capacity: give most of it back.
        if st.entries.capacity() > 64 && st.entries.len() * 4 < st.entries.capacity() {
            st.entries.shrink_to_fit();
        }
        self.admit_populated(&mut st);
        // The latest holder of each expired path: live (no removal time) ranks above any removed.
        let wanted: HashMap<&str, ()> = paths.iter().map(|(_, p)| (&**p, ())).collect();
        let mut holder: HashMap<&str, (u64, Option<Instant>)> = HashMap::new();
        for (id, e) in st.entries.iter().filter(|(_, e)| wanted.contains_key(&*e.path)) {
            let rank = |r: Option<Instant>| (r.is_none(), r);
            let better = holder.get(&*e.path).is_none_or(|(_, r)| rank(e.removed_at) > rank(*r));
            if better {
                holder.insert(&e.path, (*id, e.removed_at));
            }
        }
        paths.iter().map(|(id, p)| (*id, holder.get(&**p).map(|(h, _)| *h))).collect()
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
