//! Per-cgroup CPU, memory and pressure: `cgwatch_cgroup_cpu_usage_seconds_total`,
//! `cgwatch_cgroup_cpu_throttled_seconds_total`, `cgwatch_cgroup_memory_usage_bytes`,
//! `cgwatch_cgroup_memory_working_set_bytes`, `cgwatch_cgroup_memory_limit_bytes`,
//! `cgwatch_cgroup_memory_events_total{event}`, `cgwatch_cgroup_pressure_seconds_total{resource,kind}`.
//!
//! A cgroupfs read costs tens of microseconds (cpuacct sums every CPU), so with thousands of
//! cgroups the files are read by `crate::tasks::resource_sampler` every `--sample-interval`
//! and the collector encodes the latest snapshot.

use std::{
    fmt,
    sync::{Arc, RwLock},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::descriptor;
use crate::{
    catalog::{self, Metric},
    cgroups::{Label, Layout, Registry, Resources, Series},
};

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
                (
                    Series {
                        label: Label::Path(cg.path),
                        identity: cg.identity,
                    },
                    r,
                )
            })
            .collect();
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
    }

    pub fn get(&self) -> Arc<Readings> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[derive(Debug)]
pub struct CgroupResourceCollector {
    pub snapshot: Arc<ResourceSnapshot>,
}

/// Emits one series of the current family: the extra labels after the cgroup's own, and the value.
type Emit<'e> = dyn FnMut(&[(&'static str, &'static str)], &dyn EncodeMetric) -> fmt::Result + 'e;

/// Encodes one family with a series per cgroup (or several, with extra labels), borrowing the
/// label values from the snapshot: with thousands of cgroups, building owned label sets for
/// every series cost more than the rest of the scrape.
fn per_cgroup(
    encoder: &mut DescriptorEncoder,
    metric: &Metric,
    readings: &Readings,
    mut values: impl FnMut(&Resources, &mut Emit<'_>) -> fmt::Result,
) -> fmt::Result {
    let mut family = descriptor(encoder, metric)?;
    for (series, r) in readings.iter() {
        let Label::Path(path) = &series.label else {
            continue;
        };
        let mut base: [(&'static str, &str); 6] = [("cgroup", path); 6];
        let mut n = 1;
        for label in series.identity.known_labels() {
            base[n] = label;
            n += 1;
        }
        let base = &base[..n];
        let mut emit =
            |extra: &[(&'static str, &'static str)], metric: &dyn EncodeMetric| -> fmt::Result {
                metric.encode(family.encode_family(&(base, extra))?)
            };
        values(r, &mut emit)?;
    }
    Ok(())
}

fn bytes(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for CgroupResourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let readings = self.snapshot.get();
        let e = &mut encoder;
        per_cgroup(
            e,
            &catalog::CGROUP_CPU_USAGE,
            &readings,
            |r, emit| {
                r.cpu_seconds
                    .map_or(Ok(()), |v| emit(&[], &ConstCounter::new(v)))
            },
        )?;
        per_cgroup(
            e,
            &catalog::CGROUP_CPU_THROTTLED,
            &readings,
            |r, emit| {
                r.cpu_throttled_seconds
                    .map_or(Ok(()), |v| emit(&[], &ConstCounter::new(v)))
            },
        )?;
        per_cgroup(
            e,
            &catalog::CGROUP_MEMORY_USAGE,
            &readings,
            |r, emit| r.memory_bytes.map_or(Ok(()), |v| emit(&[], &bytes(v))),
        )?;
        per_cgroup(
            e,
            &catalog::CGROUP_MEMORY_WORKING_SET,
            &readings,
            |r, emit| {
                r.memory_working_set_bytes
                    .map_or(Ok(()), |v| emit(&[], &bytes(v)))
            },
        )?;
        per_cgroup(
            e,
            &catalog::CGROUP_MEMORY_LIMIT,
            &readings,
            |r, emit| {
                r.memory_limit_bytes
                    .map_or(Ok(()), |v| emit(&[], &bytes(v)))
            },
        )?;
        per_cgroup(
            e,
            &catalog::CGROUP_MEMORY_EVENTS,
            &readings,
            |r, emit| {
                for (event, v) in &r.memory_events {
                    emit(&[("event", event)], &ConstCounter::new(*v))?;
                }
                Ok(())
            },
        )?;
        per_cgroup(
            e,
            &catalog::CGROUP_PRESSURE,
            &readings,
            |r, emit| {
                for (resource, kind, v) in &r.pressure {
                    emit(
                        &[("resource", resource), ("kind", kind)],
                        &ConstCounter::new(*v),
                    )?;
                }
                Ok(())
            },
        )
    }
}
