//! The event stream's own accounting: `cgwatch_events_suppressed_total{cgroup,type}` (the
//! kernel's rate limit), `cgwatch_events_written_total{type}` and
//! `cgwatch_events_dropped_total{reason}` (the agent's writer).

use std::{collections::BTreeMap, fmt, sync::Arc, sync::atomic::Ordering};

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};

use super::{Labels, counter_family};
use crate::{
    catalog,
    cgroups::Registry,
    events::{Stats, record::type_name, schema::TYPES},
    maps::KernelMaps,
};

#[derive(Debug)]
pub struct EventsCollector {
    pub maps: Arc<KernelMaps>,
    pub registry: Arc<Registry>,
    pub stats: Arc<Stats>,
}

impl Collector for EventsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut suppressed: BTreeMap<Labels, u64> = BTreeMap::new();
        for (key, count) in self.maps.suppressed() {
            let cgroup = self.registry.event_series(key.cgroup_id);
            if cgroup.pending() {
                continue;
            }
            let mut labels = cgroup.labels();
            labels.push(("type", type_name(key.kind).unwrap_or("unknown").to_string()));
            *suppressed.entry(labels).or_default() += count;
        }
        counter_family(&mut encoder, &catalog::EVENTS_SUPPRESSED, &suppressed)?;
        let written: BTreeMap<Labels, u64> = TYPES
            .iter()
            .zip(&self.stats.written)
            .map(|(t, n)| (vec![("type", t.to_string())], n.load(Ordering::Relaxed)))
            .collect();
        counter_family(&mut encoder, &catalog::EVENTS_WRITTEN, &written)?;
        let dropped: BTreeMap<Labels, u64> = [
            ("queue_full", &self.stats.dropped_queue_full),
            ("write_error", &self.stats.dropped_write_error),
        ]
        .into_iter()
        .map(|(r, n)| (vec![("reason", r.to_string())], n.load(Ordering::Relaxed)))
        .collect();
        counter_family(&mut encoder, &catalog::EVENTS_DROPPED, &dropped)
    }
}
