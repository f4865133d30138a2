//! `cgwatch_process_exits_total` and `cgwatch_container_exits_total{cgroup,reason,signal}`.

use std::{borrow::Cow, sync::Arc};

use agent_common::{exit_scope, reason};

use super::{Collector, EventSeries, event_family, lifecycle};
use crate::{catalog, cgroups::Registry, encoding::Encoder, maps::KernelMaps, names::signal_name};

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
    fn encode(&self, encoder: &mut Encoder<'_>) {
        let mut processes: Vec<(EventSeries<2>, u64)> = Vec::new();
        let mut containers: Vec<(EventSeries<2>, u64)> = Vec::new();
        let counts = self.maps.exits();
        let series = self.registry.event_labels_many(counts.iter().map(|(k, _)| k.cgroup_id));
        for ((key, count), cgroup) in counts.into_iter().zip(series) {
            // A container whose names are being looked up: its series wait (counts stay in the kernel).
            let Some(cgroup) = cgroup else { continue };
            // A starter's exit is a container exit only in a container's own cgroup (a systemd
            // unit's main process can look like a start to the kernel: exit_scope::STARTER).
            if key.container == exit_scope::STARTER
                && !self.registry.describe(key.cgroup_id).is_some_and(|(path, id)| lifecycle::counted(&path, &id))
            {
                continue;
            }
            // `signal` names the signal only for reason="signal", so that the other reasons
            // have one series each.
            let signal = if key.reason == reason::SIGNAL { signal_name(key.signal) } else { Cow::Borrowed("") };
            let target = if key.container != 0 { &mut containers } else { &mut processes };
            target.push(((cgroup, [Cow::Borrowed(reason_name(key.reason)), signal]), count));
        }
        let names = ["reason", "signal"];
        event_family(encoder, &catalog::PROCESS_EXITS, names, processes);
        event_family(encoder, &catalog::CONTAINER_EXITS, names, containers);
    }
}
