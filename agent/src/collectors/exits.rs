//! `cgwatch_process_exits_total` and `cgwatch_container_exits_total{cgroup,reason,signal}`.

use std::{collections::BTreeMap, fmt, sync::Arc};

use agent_common::reason;
use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};

use super::{Labels, counter_family};
use crate::{catalog, cgroups::Registry, names::signal_name, maps::KernelMaps};

pub fn reason_name(r: u32) -> &'static str {
    match r {
        reason::SUCCESS => "success",
        reason::ERROR => "error",
        reason::SIGNAL => "signal",
        reason::OOM_KILL => "oom_kill",
        reason::SECCOMP_KILL => "seccomp_kill",
        _ => "unknown",
    }
}

#[derive(Debug)]
pub struct ExitCollector {
    pub maps: Arc<KernelMaps>,
    pub registry: Arc<Registry>,
}

impl Collector for ExitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut processes: BTreeMap<Labels, u64> = BTreeMap::new();
        let mut containers: BTreeMap<Labels, u64> = BTreeMap::new();
        for (key, count) in self.maps.exits() {
            // `signal` names the signal only for reason="signal", so that the other reasons
            // have one series each.
            let signal = if key.reason == reason::SIGNAL {
                signal_name(key.signal).into_owned()
            } else {
                String::new()
            };
            let cgroup = self.registry.event_series(key.cgroup_id);
            if cgroup.pending() {
                continue;
            }
            let mut labels = cgroup.labels();
            labels.push(("reason", reason_name(key.reason).to_string()));
            labels.push(("signal", signal));
            let target = if key.container != 0 { &mut containers } else { &mut processes };
            *target.entry(labels).or_default() += count;
        }
        counter_family(&mut encoder, &catalog::PROCESS_EXITS, &processes)?;
        counter_family(&mut encoder, &catalog::CONTAINER_EXITS, &containers)
    }
}
