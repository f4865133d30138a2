//! Per-cgroup CPU and memory: `cgwatch_cgroup_cpu_usage_seconds_total`,
//! `cgwatch_cgroup_memory_usage_bytes`, `cgwatch_cgroup_memory_limit_bytes`.
//! Reads a few small cgroupfs files per shown cgroup (kernel-generated, never blocking on I/O).

use std::{collections::BTreeMap, fmt, sync::Arc};

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};

use super::{Labels, counter_family, gauge_family};
use crate::cgroups::{Layout, Registry};

#[derive(Debug)]
pub struct CgroupResourceCollector {
    pub layout: Arc<Layout>,
    pub registry: Arc<Registry>,
}

impl Collector for CgroupResourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut cpu: BTreeMap<Labels, f64> = BTreeMap::new();
        let mut mem: BTreeMap<Labels, i64> = BTreeMap::new();
        let mut limit: BTreeMap<Labels, i64> = BTreeMap::new();
        for cg in self.registry.shown_live() {
            let r = self.layout.resources(&cg.path);
            let labels = vec![("cgroup", cg.path.to_string())];
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
