//! Per-cgroup CPU and memory: `cgwatch_cgroup_cpu_usage_seconds_total`,
//! `cgwatch_cgroup_memory_usage_bytes`, `cgwatch_cgroup_memory_limit_bytes`.
//!
//! A cgroupfs read costs tens of microseconds (cpuacct sums every CPU), so with thousands of
//! cgroups the files are read by `crate::tasks::resource_sampler` every `--sample-interval`
//! and the collector encodes the latest snapshot.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, RwLock},
};

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};

use super::{Labels, counter_family, gauge_family};
use crate::cgroups::{Layout, Registry, Resources};

/// One sampling pass: (cgroup path, its readings).
pub type Readings = Vec<(Arc<str>, Resources)>;

/// The latest CPU and memory reading of every shown, live cgroup.
#[derive(Debug, Default)]
pub struct ResourceSnapshot {
    latest: RwLock<Arc<Readings>>,
}

impl ResourceSnapshot {
    /// Reads the files of every shown, live cgroup (slow: call it off the scrape path).
    pub fn refresh(&self, layout: &Layout, registry: &Registry) {
        let fresh: Readings =
            registry.shown_live().into_iter().map(|cg| (cg.path.clone(), layout.resources(&cg.path))).collect();
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
    }

    pub fn get(&self) -> Arc<Readings> {
        self.latest.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Debug)]
pub struct CgroupResourceCollector {
    pub snapshot: Arc<ResourceSnapshot>,
}

impl Collector for CgroupResourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut cpu: BTreeMap<Labels, f64> = BTreeMap::new();
        let mut mem: BTreeMap<Labels, i64> = BTreeMap::new();
        let mut limit: BTreeMap<Labels, i64> = BTreeMap::new();
        for (path, r) in self.snapshot.get().iter() {
            let labels = vec![("cgroup", path.to_string())];
            if let Some(v) = r.cpu_seconds {
                cpu.insert(labels.clone(), v);
            }
            if let Some(v) = r.memory_bytes {
                mem.insert(labels.clone(), i64::try_from(v).unwrap_or(i64::MAX));
            }
            if let Some(v) = r.memory_limit_bytes {
                limit.insert(labels, i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
        counter_family(
            &mut encoder,
            "cgwatch_cgroup_cpu_usage_seconds",
            "CPU time used by the cgroup and its descendants.",
            &cpu,
        )?;
        gauge_family(
            &mut encoder,
            "cgwatch_cgroup_memory_usage_bytes",
            "Memory charged to the cgroup (v2 memory.current, v1 memory.usage_in_bytes).",
            &mem,
        )?;
        gauge_family(
            &mut encoder,
            "cgwatch_cgroup_memory_limit_bytes",
            "Memory limit of the cgroup; absent when unlimited.",
            &limit,
        )
    }
}
