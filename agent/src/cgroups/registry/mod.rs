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
    /// When its mkdir event arrived (`None`: found by a scan): a young cgroup is watched for its
    /// first process (`unpopulated_young`).
    born: Option<Instant>,
}

impl Entry {
    fn new(path: Arc<str>, seen_at: Instant) -> Self {
        let identity = Arc::new(parse_path(&path));
        let rendered = render(&Label::Path(path.clone()), &identity);
        Entry {
            path,
            identity,
            rendered,
            populated: false,
            removed_at: None,
            shown: false,
            has_events: false,
            seen_at,
            born: None,
        }
    }

    fn set_identity(&mut self, identity: Arc<Identity>) {
        self.rendered = render(&Label::Path(self.path.clone()), &identity);
        self.identity = identity;
    }

    fn shown_cgroup(&self, id: u64) -> ShownCgroup {
        ShownCgroup { id, path: self.path.clone(), identity: self.identity.clone(), rendered: self.rendered.clone() }
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

/// Bound of `State::unsampled`.
const MAX_UNSAMPLED: usize = 1 << 16;

#[derive(Debug, Default)]
struct State {
    entries: HashMap<u64, Entry>,
    shown: usize,
    /// Cgroups shown, or renamed while shown, since the last `take_unsampled`: the sampler reads
    /// them at once instead of at its next pass.
    unsampled: Vec<u64>,
}

impl State {
    /// Shows a cgroup (the caller checked there is room).
    fn show(&mut self, id: u64) {
        if let Some(e) = self.entries.get_mut(&id)
            && !e.shown
        {
            e.shown = true;
            self.shown += 1;
            // Bounded for a registry nobody drains (the next full sampling pass reads them all).
            if self.unsampled.len() < MAX_UNSAMPLED {
                self.unsampled.push(id);
            }
        }
    }
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
    pub id: u64,
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
            st.show(id);
        }
    }

    /// Live cgroups made less than `window` ago (their mkdir event was seen) that have not been
    /// seen populated and have no series: the ones to watch for a first process. The newest
    /// `max` of them, with their paths.
    pub fn unpopulated_young(&self, now: Instant, window: Duration, max: usize) -> Vec<(u64, Arc<str>)> {
        let st = self.lock();
        let mut young: Vec<(Instant, u64, Arc<str>)> = st
            .entries
            .iter()
            .filter(|(_, e)| !e.populated && !e.shown && e.removed_at.is_none())
            .filter_map(|(id, e)| e.born.filter(|b| now.saturating_duration_since(*b) < window).map(|b| (b, *id, e.path.clone())))
            .collect();
        if young.len() > max {
            young.sort_unstable_by_key(|y| std::cmp::Reverse(y.0));
            young.truncate(max);
        }
        young.into_iter().map(|(_, id, path)| (id, path)).collect()
    }

    /// Cgroups found populated between scans: admitted as a scan would admit them.
    pub fn mark_populated(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let mut st = self.lock();
        for id in ids {
            if let Some(e) = st.entries.get_mut(id) {
                e.populated = true;
            }
        }
        self.admit_populated(&mut st);
    }

    /// The cgroups shown (or renamed while shown) since the last call that are live and named:
    /// the ones whose resources the sampler has not read yet. A cgroup still waiting for its names
    /// comes back when `set_identity` records them.
    pub fn take_unsampled(&self) -> Vec<ShownCgroup> {
        let mut st = self.lock();
        let ids = std::mem::take(&mut st.unsampled);
        let mut out: Vec<ShownCgroup> = ids
            .into_iter()
            .filter_map(|id| st.entries.get(&id).filter(|e| e.shown && e.removed_at.is_none() && !e.identity.pending()).map(|e| e.shown_cgroup(id)))
            .collect();
        out.sort_unstable_by_key(|c| c.id);
        out.dedup_by_key(|c| c.id);
        out
    }

    /// A mkdir event. Returns true when the new cgroup's names need a lookup.
    pub fn cgroup_created(&self, id: u64, raw_path: &[u8], now: Instant) -> bool {
        let mut st = self.lock();
        let path = sanitize_path(raw_path);
        let e = st.entries.entry(id).or_insert_with(|| Entry::new(path.clone(), now));
        e.set_path(path);
        e.removed_at = None;
        e.seen_at = e.seen_at.max(now);
        e.born.get_or_insert(now);
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
        st.show(id);
        match st.entries.get(&id) {
            Some(e) => e.series(),
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

    /// Whether a live container or pod cgroup made less than `window` ago still has no names
    /// (its runtime may not have written them yet when the lookup ran).
    pub fn young_unnamed(&self, now: Instant, window: Duration) -> bool {
        let st = self.lock();
        st.entries.values().any(|e| {
            e.identity.needs_names()
                && e.removed_at.is_none()
                && e.born.is_some_and(|b| now.saturating_duration_since(b) < window)
        })
    }

    /// Records the names the resolver found for a cgroup (unless it changed path meanwhile).
    pub fn set_identity(&self, id: u64, identity: Identity) {
        let mut st = self.lock();
        if let Some(e) = st.entries.get_mut(&id)
            && e.identity.container_id == identity.container_id
            && e.identity.pod_uid == identity.pod_uid
        {
            e.set_identity(Arc::new(identity));
            if e.shown && st.unsampled.len() < MAX_UNSAMPLED {
                // Its labels changed (or it was waiting for them): sample it under them now.
                st.unsampled.push(id);
            }
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
            .iter()
            .filter(|(_, e)| e.shown && e.removed_at.is_none() && !e.identity.pending())
            .map(|(id, e)| e.shown_cgroup(*id))
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
