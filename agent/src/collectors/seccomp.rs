//! `cgwatch_seccomp_violations_total{cgroup,syscall,action}`.

use std::{collections::BTreeMap, fmt, sync::Arc};

use agent_common::action;
use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};

use super::{Labels, counter_family};
use crate::{catalog, cgroups::Registry, names::syscall_name, maps::KernelMaps};

pub fn action_name(a: u32) -> &'static str {
    match a {
        action::ERRNO => "errno",
        action::TRAP => "trap",
        action::KILL_PROCESS => "kill_process",
        action::KILL_THREAD => "kill_thread",
        _ => "unknown",
    }
}

#[derive(Debug)]
pub struct SeccompCollector {
    pub maps: Arc<KernelMaps>,
    pub registry: Arc<Registry>,
}

impl Collector for SeccompCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut series: BTreeMap<Labels, u64> = BTreeMap::new();
        for (key, count) in self.maps.seccomp() {
            let cgroup = self.registry.event_series(key.cgroup_id);
            if cgroup.pending() {
                continue;
            }
            let mut labels = cgroup.labels();
            labels.push(("syscall", syscall_name(key.syscall_nr).into_owned()));
            labels.push(("action", action_name(key.action).to_string()));
            *series.entry(labels).or_default() += count;
        }
        counter_family(&mut encoder, &catalog::SECCOMP_VIOLATIONS, &series)
    }
}
