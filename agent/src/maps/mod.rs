//! The kernel's counter maps, read at scrape time (values summed over CPUs, a batch of entries
//! per syscall: `batch`), and the counts of removed cgroups whose path a newer cgroup took over.
//!
//! A container restarted by its runtime (docker and podman restart policies, systemd's
//! `Restart=`) gets a new cgroup at the same path: the same series. While both cgroups are
//! known, the series sums them; when the old one leaves the retain window its counts are carried
//! over to the new one instead of deleted, so the series never goes down (Prometheus would read
//! a drop as a counter reset and count the new cgroup's events twice).

use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    sync::{Mutex, MutexGuard},
};

mod batch;

use std::os::fd::AsFd as _;

use agent_common::{EventKey, ExitKey, LifecycleKey, OomKey, SeccompKey, lifecycle, lost};
use aya::maps::{IterableMap as _, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use log::debug;

/// A counter key: which cgroup it counts for.
pub trait CgroupKey: aya::Pod + Eq + Hash {
    fn cgroup_id(&self) -> u64;
    fn with_cgroup_id(self, id: u64) -> Self;
}

macro_rules! cgroup_key {
    ($($t:ty),*) => {$(
        impl CgroupKey for $t {
            fn cgroup_id(&self) -> u64 {
                self.cgroup_id
            }
            fn with_cgroup_id(self, cgroup_id: u64) -> Self {
                Self { cgroup_id, ..self }
            }
        }
    )*};
}
cgroup_key!(SeccompKey, ExitKey, OomKey, EventKey, LifecycleKey);

/// One per-CPU counter map and the counts carried over from removed cgroups.
struct Counter<K: CgroupKey> {
    map: PerCpuHashMap<MapData, K, u64>,
    /// Counts of purged cgroups, keyed by the cgroup that took their path.
    carried: HashMap<K, u64>,
    /// Possible CPUs (the number of per-CPU slots of a value).
    cpus: usize,
    /// The kernel reads this map in batches (false before Linux 5.6: key by key).
    batched: bool,
}

impl<K: CgroupKey> Counter<K> {
    fn new(map: PerCpuHashMap<MapData, K, u64>) -> Self {
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        Counter { map, carried: HashMap::new(), cpus, batched: true }
    }

    /// Every kernel entry with its count summed over CPUs (zero counts included). Wrapping: a
    /// probe may take a count back on another CPU than the one that added it (`uncount_exit`),
    /// leaving that CPU's slot below zero.
    fn entries(&mut self) -> Vec<(K, u64)> {
        if self.batched {
            match batch::per_cpu_sums(self.map.map().fd().as_fd(), self.cpus) {
                Ok(entries) => return entries,
                Err(e) if batch::unsupported(&e) => {
                    debug!("counter maps: no batch lookup on this kernel ({e}); reading key by key");
                    self.batched = false;
                }
                Err(e) => debug!("counter maps: batch lookup failed ({e}); reading key by key"),
            }
        }
        // An entry deleted while iterating yields an error for that key only: skip it.
        self.map
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| (k, per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v))))
            .collect()
    }

    /// Every key's count (a key may appear twice: from the kernel and carried over).
    fn totals(&mut self) -> Vec<(K, u64)> {
        let mut out = self.entries();
        out.retain(|(_, total)| *total != 0);
        out.extend(self.carried.iter().map(|(k, v)| (*k, *v)));
        out
    }

    /// Deletes the counters of `expired` cgroups; those with a successor (a cgroup now at the
    /// same path) carry their counts over to it. Returns how many kernel entries went.
    fn forget(&mut self, expired: &HashMap<u64, Option<u64>>) -> usize {
        let gone: Vec<(K, u64)> = self.entries().into_iter().filter(|(k, _)| expired.contains_key(&k.cgroup_id())).collect();
        let mut deleted = 0;
        for (k, total) in gone {
            // A removed cgroup has no tasks: nothing counts into it between this read and the
            // delete.
            if let Some(Some(to)) = expired.get(&k.cgroup_id())
                && total != 0
            {
                *self.carried.entry(k.with_cgroup_id(*to)).or_default() += total;
            }
            deleted += usize::from(self.map.remove(&k).is_ok());
        }
        let moved: Vec<(K, u64)> = self.carried.iter().filter(|(k, _)| expired.contains_key(&k.cgroup_id())).map(|(k, v)| (*k, *v)).collect();
        for (k, v) in moved {
            self.carried.remove(&k);
            if let Some(Some(to)) = expired.get(&k.cgroup_id()) {
                *self.carried.entry(k.with_cgroup_id(*to)).or_default() += v;
            }
        }
        deleted
    }
}

impl<K: CgroupKey> Counter<K> {
    /// Adds `n` to `key`'s count (on the first CPU's slot), for counts the agent makes itself.
    fn add(&mut self, key: K, n: u64) -> Result<(), MapError> {
        let mut values = vec![0u64; self.cpus];
        if let Ok(now) = self.map.get(&key, 0) {
            for (s, v) in values.iter_mut().zip(now.iter()) {
                *s = *v;
            }
        }
        values[0] = values[0].wrapping_add(n);
        self.map.insert(key, PerCpuValues::try_from(values)?, 0)
    }

    /// Adds every count of `old` (a map of the same key type) to this map, per CPU.
    fn absorb(&mut self, old: MapData) -> Result<usize, MapError> {
        let old: PerCpuHashMap<MapData, K, u64> = PerCpuHashMap::try_from(Map::PerCpuHashMap(old))?;
        let mut n = 0;
        for entry in old.iter() {
            let (k, values) = entry?;
            let mut sum: Vec<u64> = values.to_vec();
            if let Ok(now) = self.map.get(&k, 0) {
                for (s, v) in sum.iter_mut().zip(now.iter()) {
                    *s = s.wrapping_add(*v);
                }
            }
            self.map.insert(k, PerCpuValues::try_from(sum)?, 0)?;
            n += 1;
        }
        Ok(n)
    }
}

/// Names of the `agent_common::lost` indexes, as `cgwatch_events_lost_total{reason}` says them.
pub const LOST_REASONS: [&str; lost::COUNT as usize] =
    ["ring_buffer", "seccomp_map", "exit_map", "oom_map", "task_map", "event_ring", "lifecycle_map", "lifecycle_ring"];

/// The counter maps' names, as `cgwatch_map_entries{map}` says them.
pub const COUNTER_MAPS: [&str; 3] = ["seccomp", "exits", "oom"];

/// The counter maps, read at scrape time (values summed over CPUs).
pub struct KernelMaps {
    seccomp: Mutex<Counter<SeccompKey>>,
    exits: Mutex<Counter<ExitKey>>,
    oom: Mutex<Counter<OomKey>>,
    suppressed: Mutex<Counter<EventKey>>,
    /// Container starts, exec sessions and start failures.
    lifecycle: Mutex<Counter<LifecycleKey>>,
    lost: Mutex<PerCpuArray<MapData, u64>>,
    /// Capacity of each counter map (`COUNTER_MAPS` order).
    capacity: [u32; 3],
    /// Entries of each counter map at the last count (`count_entries`).
    entries: Mutex<[usize; 3]>,
}

impl fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KernelMaps")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KernelMaps {
    pub fn new(
        seccomp: PerCpuHashMap<MapData, SeccompKey, u64>,
        exits: PerCpuHashMap<MapData, ExitKey, u64>,
        oom: PerCpuHashMap<MapData, OomKey, u64>,
        suppressed: PerCpuHashMap<MapData, EventKey, u64>,
        lifecycle: PerCpuHashMap<MapData, LifecycleKey, u64>,
        lost: PerCpuArray<MapData, u64>,
        capacity: [u32; 3],
    ) -> Self {
        KernelMaps {
            seccomp: Mutex::new(Counter::new(seccomp)),
            exits: Mutex::new(Counter::new(exits)),
            oom: Mutex::new(Counter::new(oom)),
            suppressed: Mutex::new(Counter::new(suppressed)),
            lifecycle: Mutex::new(Counter::new(lifecycle)),
            lost: Mutex::new(lost),
            capacity,
            entries: Mutex::new([0; 3]),
        }
    }

    /// Counts the entries of each counter map (off the scrape path).
    pub fn count_entries(&self) {
        let n = [
            lock(&self.seccomp).entries().len(),
            lock(&self.exits).entries().len(),
            lock(&self.oom).entries().len(),
        ];
        *lock(&self.entries) = n;
    }

    /// (map, entries at the last count, capacity), in `COUNTER_MAPS` order.
    pub fn fill(&self) -> [(&'static str, usize, u32); 3] {
        let n = *lock(&self.entries);
        [0, 1, 2].map(|i| (COUNTER_MAPS[i], n[i], self.capacity[i]))
    }

    pub fn seccomp(&self) -> Vec<(SeccompKey, u64)> {
        lock(&self.seccomp).totals()
    }

    pub fn exits(&self) -> Vec<(ExitKey, u64)> {
        lock(&self.exits).totals()
    }

    pub fn oom(&self) -> Vec<(OomKey, u64)> {
        lock(&self.oom).totals()
    }

    /// Container starts, exec sessions and start failures, by cgroup.
    pub fn lifecycle(&self) -> Vec<(LifecycleKey, u64)> {
        lock(&self.lifecycle).totals()
    }

    /// Counts a container start failure (the kernel cannot tell a container's cgroup: the agent
    /// decides from the cgroup's removal record), in the kernel map, so that it is kept across
    /// restarts like the others.
    pub fn count_start_failure(&self, cgroup_id: u64) -> Result<(), MapError> {
        lock(&self.lifecycle).add(LifecycleKey { cgroup_id, kind: lifecycle::START_FAILURE, _pad: 0 }, 1)
    }

    /// Events the stream's rate limit suppressed, by cgroup and kind.
    pub fn suppressed(&self) -> Vec<(EventKey, u64)> {
        lock(&self.suppressed).totals()
    }

    /// Whether the maps can be read (a lookup in the lost-event array succeeds).
    pub fn readable(&self) -> bool {
        lock(&self.lost).get(&0, 0).is_ok()
    }

    /// Events lost so far, by `agent_common::lost` index.
    pub fn lost(&self) -> [u64; lost::COUNT as usize] {
        let map = lock(&self.lost);
        let mut out = [0u64; lost::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(v) = map.get(&(i as u32), 0) {
                *slot = v.iter().sum();
            }
        }
        out
    }

    /// Adds the counts of a pinned map that was set aside (resized) into the live map of the
    /// same name. Returns how many keys it had.
    pub fn absorb(&self, map: &str, data: MapData) -> Result<usize, MapError> {
        match map {
            "SECCOMP_COUNTS" => lock(&self.seccomp).absorb(data),
            "EXIT_COUNTS" => lock(&self.exits).absorb(data),
            "OOM_COUNTS" => lock(&self.oom).absorb(data),
            "LIFECYCLE_COUNTS" => lock(&self.lifecycle).absorb(data),
            _ => Ok(0),
        }
    }

    /// Deletes the counters of cgroups that left the retain window (expired id -> the cgroup
    /// that now has its path, which keeps its counts).
    pub fn forget_cgroups(&self, expired: &HashMap<u64, Option<u64>>) -> usize {
        lock(&self.seccomp).forget(expired)
            + lock(&self.exits).forget(expired)
            + lock(&self.oom).forget(expired)
            + lock(&self.suppressed).forget(expired)
            + lock(&self.lifecycle).forget(expired)
    }
}
