//! `cgwatch_oom_kills_total{cgroup}`: by the victim's cgroup.

use std::{collections::BTreeMap, fmt, sync::Arc};

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};

use super::{Labels, counter_family};
use crate::{cgroups::Registry, probes::KernelMaps};

#[derive(Debug)]
pub struct OomCollector {
    pub maps: Arc<KernelMaps>,
    pub registry: Arc<Registry>,
}

impl Collector for OomCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut series: BTreeMap<Labels, u64> = BTreeMap::new();
        for (cgroup_id, count) in self.maps.oom() {
            let labels = self.registry.event_series(cgroup_id).labels();
            *series.entry(labels).or_default() += count;
        }
        counter_family(
            &mut encoder,
            "cgwatch_oom_kills",
            "Processes killed by the OOM killer, by the victim's cgroup.",
            &series,
        )
    }
}
