//! Per-cgroup CPU, memory and pressure: `cgwatch_cgroup_cpu_usage_seconds_total`,
//! `cgwatch_cgroup_cpu_throttled_seconds_total`, `cgwatch_cgroup_memory_usage_bytes`,
//! `cgwatch_cgroup_memory_working_set_bytes`, `cgwatch_cgroup_memory_limit_bytes`,
//! `cgwatch_cgroup_memory_events_total{event}`, `cgwatch_cgroup_pressure_seconds_total{resource,kind}`.
//!
//! A cgroupfs read costs tens of microseconds (cpuacct sums every CPU), so with thousands of
//! cgroups the files are read by `crate::tasks::resource_sampler` every `--sample-interval`
//! and the collector encodes the latest snapshot.
//!
//! Counters that are still zero (throttling, memory events, pressure) have no series: an idle
//! cgroup has none of them, which halves the series of a host with thousands of cgroups, and a
//! series appears with its first non-zero value (counted from zero, as the event counters are).
//! The gauges (usage, working set, limit) are there whatever their value.

use std::sync::{Arc, Mutex, RwLock};

use super::Collector;
use crate::{
    catalog::{self, Metric},
    cgroups::{Layout, Registry, Resources, ShownCgroup},
    encoding::{Encoder, Value},
};

/// One sampling pass: (the cgroup's id, its rendered labels, its readings).
pub type Readings = Vec<(u64, Arc<str>, Resources)>;

/// The latest CPU and memory reading of every shown, live cgroup.
#[derive(Debug, Default)]
pub struct ResourceSnapshot {
    latest: RwLock<Arc<Readings>>,
    /// Held by a pass from the registry's list to the swap, so that a full pass and a pass over
    /// new cgroups never undo each other.
    writer: Mutex<()>,
}

impl ResourceSnapshot {
    /// Reads the files of every shown, live cgroup (slow: call it off the scrape path).
    pub fn refresh(&self, layout: &Layout, registry: &Registry) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let delegates = layout.v2_delegates();
        // This pass reads every cgroup shown so far: none is left for `add`.
        drop(registry.take_unsampled());
        let fresh: Readings = registry.shown_live().into_iter().map(|cg| read(layout, delegates, cg)).collect();
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
    }

    /// Reads the files of cgroups just shown (or renamed) and adds them to the latest pass,
    /// replacing their earlier reading: a new container's series need not wait for the next pass.
    pub fn add(&self, layout: &Layout, new: Vec<ShownCgroup>) {
        if new.is_empty() {
            return;
        }
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let delegates = layout.v2_delegates();
        let mut added: Readings = new.into_iter().map(|cg| read(layout, delegates, cg)).collect();
        added.sort_unstable_by_key(|r| r.0);
        let latest = self.get();
        let mut next: Readings = Vec::with_capacity(latest.len() + added.len());
        next.extend(latest.iter().filter(|r| added.binary_search_by_key(&r.0, |a| a.0).is_err()).cloned());
        next.extend(added);
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }

    pub fn get(&self) -> Arc<Readings> {
        self.latest.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One cgroup's reading (`delegates`: `Layout::v2_delegates`, once per pass).
fn read(layout: &Layout, delegates: bool, cg: ShownCgroup) -> (u64, Arc<str>, Resources) {
    let resources = layout.resources_in(&cg.path, delegates);
    (cg.id, cg.rendered, resources)
}

#[derive(Debug)]
pub struct CgroupResourceCollector {
    pub snapshot: Arc<ResourceSnapshot>,
}

/// A family with one series per cgroup that has `value`.
fn one_each<V: Value>(encoder: &mut Encoder<'_>, metric: &Metric, readings: &Readings, value: impl Fn(&Resources) -> Option<V>) {
    let mut family = encoder.family(metric);
    for (_, labels, r) in readings {
        if let Some(v) = value(r) {
            family.sample_after(labels, &[], v);
        }
    }
}

fn bytes(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for CgroupResourceCollector {
    fn encode(&self, encoder: &mut Encoder<'_>) {
        let readings = self.snapshot.get();
        one_each(encoder, &catalog::CGROUP_CPU_USAGE, &readings, |r| r.cpu_seconds);
        one_each(encoder, &catalog::CGROUP_CPU_THROTTLED, &readings, |r| r.cpu_throttled_seconds.filter(|s| *s > 0.0));
        one_each(encoder, &catalog::CGROUP_MEMORY_USAGE, &readings, |r| r.memory_bytes.map(bytes));
        one_each(encoder, &catalog::CGROUP_MEMORY_WORKING_SET, &readings, |r| r.memory_working_set_bytes.map(bytes));
        one_each(encoder, &catalog::CGROUP_MEMORY_LIMIT, &readings, |r| r.memory_limit_bytes.map(bytes));
        let mut family = encoder.family(&catalog::CGROUP_MEMORY_EVENTS);
        for (_, labels, r) in readings.iter() {
            for (event, v) in r.memory_events.iter().filter(|(_, v)| *v != 0) {
                family.sample_after(labels, &[("event", event)], *v);
            }
        }
        let mut family = encoder.family(&catalog::CGROUP_PRESSURE);
        for (_, labels, r) in readings.iter() {
            for (resource, kind, v) in r.pressure.iter().filter(|(_, _, v)| *v > 0.0) {
                family.sample_after(labels, &[("resource", resource), ("kind", kind)], *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{Format, render_labels};

    /// An idle cgroup's zero counters have no series; its gauges do, zero or not.
    #[test]
    fn zero_counters_have_no_series() {
        let idle = Resources {
            cpu_seconds: Some(0.5),
            cpu_throttled_seconds: Some(0.0),
            memory_bytes: Some(0),
            memory_working_set_bytes: Some(0),
            memory_limit_bytes: None,
            memory_events: vec![("max", 0), ("oom_kill", 0)],
            pressure: vec![("cpu", "some", 0.25), ("cpu", "full", 0.0), ("io", "some", 0.0)],
        };
        let busy = Resources {
            cpu_throttled_seconds: Some(1.5),
            memory_events: vec![("max", 3), ("oom_kill", 0)],
            pressure: vec![("memory", "full", 0.125)],
            ..idle.clone()
        };
        let snapshot = ResourceSnapshot::default();
        *snapshot.latest.write().unwrap() =
            Arc::new(vec![(1, render_labels([("cgroup", "/idle")]), idle), (2, render_labels([("cgroup", "/busy")]), busy)]);
        let collector = CgroupResourceCollector { snapshot: Arc::new(snapshot) };
        let mut encoder = Encoder::new(Format::Text, 0);
        collector.encode(&mut encoder);
        let text = String::from_utf8(encoder.finish().unwrap()).unwrap();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "cgwatch_cgroup_cpu_usage_seconds_total{cgroup=\"/idle\"} 0.5",
                "cgwatch_cgroup_cpu_usage_seconds_total{cgroup=\"/busy\"} 0.5",
                "cgwatch_cgroup_cpu_throttled_seconds_total{cgroup=\"/busy\"} 1.5",
                "cgwatch_cgroup_memory_usage_bytes{cgroup=\"/idle\"} 0",
                "cgwatch_cgroup_memory_usage_bytes{cgroup=\"/busy\"} 0",
                "cgwatch_cgroup_memory_working_set_bytes{cgroup=\"/idle\"} 0",
                "cgwatch_cgroup_memory_working_set_bytes{cgroup=\"/busy\"} 0",
                "cgwatch_cgroup_memory_events_total{cgroup=\"/busy\",event=\"max\"} 3",
                "cgwatch_cgroup_pressure_seconds_total{cgroup=\"/idle\",resource=\"cpu\",kind=\"some\"} 0.25",
                "cgwatch_cgroup_pressure_seconds_total{cgroup=\"/busy\",resource=\"memory\",kind=\"full\"} 0.125",
            ]
        );
        // Every family still has its HELP and TYPE lines.
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 7);
    }
}
