//! `cgwatch_seccomp_violations_total{cgroup,syscall,action}`.

use std::{borrow::Cow, sync::Arc};

use agent_common::action;

use super::{Collector, EventSeries, event_family};
use crate::{catalog, cgroups::Registry, encoding::Encoder, maps::KernelMaps, names::syscall_name};

pub fn action_name(a: u32) -> &'static str {
    match a {
        action::ERRNO => "errno",
        action::TRAP => "trap",
        action::KILL_PROCESS => "kill_process",
        action::KILL_THREAD => "kill_thread",
        action::LOG => "log",
        action::TRACE => "trace",
        action::USER_NOTIF => "user_notif",
        _ => "unknown",
    }
}

#[derive(Debug)]
pub struct SeccompCollector {
    pub maps: Arc<KernelMaps>,
    pub registry: Arc<Registry>,
}

impl Collector for SeccompCollector {
    fn encode(&self, encoder: &mut Encoder<'_>) {
        let mut series: Vec<(EventSeries<2>, u64)> = Vec::with_capacity(1024);
        let counts = self.maps.seccomp();
        let cgroups = self.registry.event_labels_many(counts.iter().map(|(k, _)| k.cgroup_id));
        for ((key, count), cgroup) in counts.into_iter().zip(cgroups) {
            // A container whose names are being looked up: its series wait (counts stay in the kernel).
            let Some(cgroup) = cgroup else { continue };
            let labels = [syscall_name(key.syscall_nr), Cow::Borrowed(action_name(key.action))];
            series.push(((cgroup, labels), count));
        }
        event_family(encoder, &catalog::SECCOMP_VIOLATIONS, ["syscall", "action"], series);
    }
}
