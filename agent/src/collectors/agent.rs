//! The agent's own health: `cgwatch_probe_attached{probe,mode}`, `cgwatch_probe_skipped_runs_total{probe}`,
//! `cgwatch_events_lost_total{reason}`, `cgwatch_map_entries{map}` / `cgwatch_map_capacity{map}`,
//! `cgwatch_cgroups_not_shown`, `cgwatch_pinned`, `cgwatch_kernel_preemption{model}`,
//! `cgwatch_build_info{version,kernel}`.

use std::{collections::BTreeMap, sync::Arc};

use super::{Collector, Labels, counter_family, gauge_family, single_gauge};
use crate::{
    catalog,
    cgroups::Registry,
    encoding::Encoder,
    maps::{KernelMaps, LOST_REASONS},
    preemption::Detected,
    probes::{ProbeStatus, SkippedRuns},
};

#[derive(Debug)]
pub struct AgentCollector {
    /// The kernel maps (absent when the probes could not be loaded).
    pub maps: Option<Arc<KernelMaps>>,
    pub registry: Arc<Registry>,
    pub probes: Vec<ProbeStatus>,
    pub kernel_release: String,
    /// Counters and links are pinned (they survive a restart).
    pub pinned: bool,
    /// The attached programs, whose skipped runs are read at each scrape.
    pub skipped: SkippedRuns,
    /// The kernel's preemption model, where the agent could tell it.
    pub preemption: Option<Detected>,
}

impl Collector for AgentCollector {
    fn encode(&self, encoder: &mut Encoder<'_>) {
        let attached: BTreeMap<Labels, i64> = self
            .probes
            .iter()
            .map(|p| {
                (vec![("probe", p.probe.to_string()), ("mode", p.mode.to_string())], i64::from(p.attached))
            })
            .collect();
        gauge_family(encoder, &catalog::PROBE_ATTACHED, &attached);
        let skipped: BTreeMap<Labels, u64> =
            self.skipped.read().into_iter().map(|(p, n)| (vec![("probe", p.to_string())], n)).collect();
        counter_family(encoder, &catalog::PROBE_SKIPPED_RUNS, &skipped);
        // Every reason always has a series, so that the first loss is an increase from zero.
        let lost = self.maps.as_ref().map(|m| m.lost()).unwrap_or_default();
        let lost: BTreeMap<Labels, u64> =
            LOST_REASONS.iter().zip(lost).map(|(r, n)| (vec![("reason", r.to_string())], n)).collect();
        counter_family(encoder, &catalog::EVENTS_LOST, &lost);
        if let Some(maps) = &self.maps {
            let fill = maps.fill();
            let entries: BTreeMap<Labels, i64> = fill.iter().map(|(m, n, _)| (vec![("map", m.to_string())], *n as i64)).collect();
            let capacity: BTreeMap<Labels, i64> =
                fill.iter().map(|(m, _, c)| (vec![("map", m.to_string())], i64::from(*c))).collect();
            gauge_family(encoder, &catalog::MAP_ENTRIES, &entries);
            gauge_family(encoder, &catalog::MAP_CAPACITY, &capacity);
        }
        single_gauge(encoder, &catalog::CGROUPS_NOT_SHOWN, self.registry.not_shown() as i64);
        single_gauge(encoder, &catalog::PINNED, i64::from(self.pinned));
        let model = self.preemption.as_ref().map_or("unknown", |p| p.model.as_str());
        gauge_family(encoder, &catalog::KERNEL_PREEMPTION, &BTreeMap::from([(vec![("model", model.to_string())], 1i64)]));
        let build = BTreeMap::from([(
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("kernel", self.kernel_release.clone()),
            ],
            1i64,
        )]);
        gauge_family(encoder, &catalog::BUILD_INFO, &build);
    }
}
