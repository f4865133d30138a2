//! Per-cgroup CPU, memory and pressure: `cgwatch_cgroup_cpu_usage_seconds_total`,
//! `cgwatch_cgroup_cpu_throttled_seconds_total`, `cgwatch_cgroup_memory_usage_bytes`,
//! `cgwatch_cgroup_memory_working_set_bytes`, `cgwatch_cgroup_memory_limit_bytes`,
//! `cgwatch_cgroup_memory_events_total{event}`, `cgwatch_cgroup_pressure_seconds_total{resource,kind}`.
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
use crate::cgroups::{Label, Layout, Registry, Resources, Series};

/// One sampling pass: (the cgroup's series labels, its readings).
pub type Readings = Vec<(Series, Resources)>;

/// The latest CPU and memory reading of every shown, live cgroup.
#[derive(Debug, Default)]
pub struct ResourceSnapshot {
    latest: RwLock<Arc<Readings>>,
}

impl ResourceSnapshot {
    /// Reads the files of every shown, live cgroup (slow: call it off the scrape path).
    pub fn refresh(&self, layout: &Layout, registry: &Registry) {
        let fresh: Readings = registry
            .shown_live()
            .into_iter()
            .map(|cg| {
                let r = layout.resources(&cg.path);
                (Series { label: Label::Path(cg.path), identity: cg.identity }, r)
            })
            .collect();
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
        let mut throttled: BTreeMap<Labels, f64> = BTreeMap::new();
        let mut mem: BTreeMap<Labels, i64> = BTreeMap::new();
        let mut working_set: BTreeMap<Labels, i64> = BTreeMap::new();
        let mut limit: BTreeMap<Labels, i64> = BTreeMap::new();
        let mut events: BTreeMap<Labels, u64> = BTreeMap::new();
        let mut pressure: BTreeMap<Labels, f64> = BTreeMap::new();
        let bytes = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (series, r) in self.snapshot.get().iter() {
            let labels = series.labels();
            let with = |extra: &[(&'static str, &str)]| {
                let mut l = labels.clone();
                l.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
                l
            };
            if let Some(v) = r.cpu_seconds {
                cpu.insert(labels.clone(), v);
            }
            if let Some(v) = r.cpu_throttled_seconds {
                throttled.insert(labels.clone(), v);
            }
            if let Some(v) = r.memory_bytes {
                mem.insert(labels.clone(), bytes(v));
            }
            if let Some(v) = r.memory_working_set_bytes {
                working_set.insert(labels.clone(), bytes(v));
            }
            if let Some(v) = r.memory_limit_bytes {
                limit.insert(labels.clone(), bytes(v));
            }
            for (event, v) in &r.memory_events {
                events.insert(with(&[("event", event)]), *v);
            }
            for (resource, kind, v) in &r.pressure {
                pressure.insert(with(&[("resource", resource), ("kind", kind)]), *v);
            }
        }
        counter_family(
            &mut encoder,
            "cgwatch_cgroup_cpu_usage_seconds",
            "CPU time used by the cgroup and its descendants.",
            &cpu,
        )?;
        counter_family(
            &mut encoder,
            "cgwatch_cgroup_cpu_throttled_seconds",
            "Time the cgroup's tasks were throttled by its CPU quota (v2 cpu.stat throttled_usec, v1 throttled_time).",
            &throttled,
        )?;
        gauge_family(
            &mut encoder,
            "cgwatch_cgroup_memory_usage_bytes",
            "Memory charged to the cgroup (v2 memory.current, v1 memory.usage_in_bytes).",
            &mem,
        )?;
        gauge_family(
            &mut encoder,
            "cgwatch_cgroup_memory_working_set_bytes",
            "Memory usage minus inactive file pages, as the kubelet computes it for eviction.",
            &working_set,
        )?;
        gauge_family(
            &mut encoder,
            "cgwatch_cgroup_memory_limit_bytes",
            "Memory limit of the cgroup; absent when unlimited.",
            &limit,
        )?;
        counter_family(
            &mut encoder,
            "cgwatch_cgroup_memory_events",
            "Memory events of the cgroup and its descendants: v2 memory.events (low, high, max, oom, oom_kill, oom_group_kill); v1 oom_kill only.",
            &events,
        )?;
        counter_family(
            &mut encoder,
            "cgwatch_cgroup_pressure_seconds",
            "PSI total stall time of the cgroup, by resource (cpu, memory, io) and kind (some, full).",
            &pressure,
        )
    }
}
