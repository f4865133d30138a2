//! The agent's own health: `cgwatch_probe_attached{probe,mode}`, `cgwatch_events_lost_total`,
//! `cgwatch_cgroups_not_shown`, `cgwatch_build_info{version,kernel}`.

use std::{collections::BTreeMap, fmt, sync::Arc};

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};

use super::{Labels, gauge_family, single_counter, single_gauge};
use crate::{cgroups::Registry, probes::{KernelMaps, ProbeStatus}};

#[derive(Debug)]
pub struct AgentCollector {
    pub maps: Arc<KernelMaps>,
    pub registry: Arc<Registry>,
    pub probes: Vec<ProbeStatus>,
    pub kernel_release: String,
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let attached: BTreeMap<Labels, i64> = self
            .probes
            .iter()
            .map(|p| {
                (vec![("probe", p.probe.to_string()), ("mode", p.mode.to_string())], i64::from(p.attached))
            })
            .collect();
        gauge_family(
            &mut encoder,
            "cgwatch_probe_attached",
            "1 when the probe is attached (mode: tp_btf, raw_tp, fexit, kprobe), 0 when not: with mode=off when not wanted here (disabled by a flag, not needed on this kernel, or replaced by another probe).",
            &attached,
        )?;
        let lost: u64 = self.maps.lost().iter().sum();
        single_counter(
            &mut encoder,
            "cgwatch_events_lost",
            "Kernel events that could not be recorded (full ring buffer or counter map).",
            lost,
        )?;
        single_gauge(
            &mut encoder,
            "cgwatch_cgroups_not_shown",
            "Live cgroups over --max-cgroups: their event counts are summed under cgroup=\"(overflow)\".",
            self.registry.not_shown() as i64,
        )?;
        let build = BTreeMap::from([(
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("kernel", self.kernel_release.clone()),
            ],
            1i64,
        )]);
        gauge_family(&mut encoder, "cgwatch_build_info", "cgwatch version and running kernel.", &build)
    }
}
