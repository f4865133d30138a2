//! The event stream's own accounting: `cgwatch_events_suppressed_total{cgroup,type}` (the
//! kernel's rate limit), `cgwatch_events_written_total{type}` and
//! `cgwatch_events_dropped_total{reason}` (the agent's writer).

use std::{borrow::Cow, collections::BTreeMap, sync::Arc, sync::atomic::Ordering};

use super::{Collector, EventSeries, Labels, counter_family, event_family};
use crate::{
    catalog,
    cgroups::Registry,
    encoding::Encoder,
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
    fn encode(&self, encoder: &mut Encoder<'_>) {
        let mut suppressed: Vec<(EventSeries<1>, u64)> = Vec::new();
        let counts = self.maps.suppressed();
        let cgroups = self.registry.event_labels_many(counts.iter().map(|(k, _)| k.cgroup_id));
        for ((key, count), cgroup) in counts.into_iter().zip(cgroups) {
            // A container whose names are being looked up: its series wait (counts stay in the kernel).
            let Some(cgroup) = cgroup else { continue };
            suppressed.push(((cgroup, [Cow::Borrowed(type_name(key.kind).unwrap_or("unknown"))]), count));
        }
        event_family(encoder, &catalog::EVENTS_SUPPRESSED, ["type"], suppressed);
        let written: BTreeMap<Labels, u64> = TYPES
            .iter()
            .zip(&self.stats.written)
            .map(|(t, n)| (vec![("type", t.to_string())], n.load(Ordering::Relaxed)))
            .collect();
        counter_family(encoder, &catalog::EVENTS_WRITTEN, &written);
        let dropped: BTreeMap<Labels, u64> = [
            ("queue_full", &self.stats.dropped_queue_full),
            ("write_error", &self.stats.dropped_write_error),
        ]
        .into_iter()
        .map(|(r, n)| (vec![("reason", r.to_string())], n.load(Ordering::Relaxed)))
        .collect();
        counter_family(encoder, &catalog::EVENTS_DROPPED, &dropped);
    }
}
