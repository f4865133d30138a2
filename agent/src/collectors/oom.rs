//! `cgwatch_oom_kills_total{cgroup,...,limit,limit_cgroup}`: by the victim's cgroup, and the
//! memory limit that fired: `own` (the victim's cgroup), `ancestor` (a pod or slice above it,
//! named by `limit_cgroup`), `host` (a global OOM), or `unknown` (kernels whose tracepoint gives
//! no victim task).

use std::{
    borrow::Cow,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use agent_common::{OomKey, oom_limit};

use super::{Collector, EventSeries, event_family};
use crate::{
    catalog,
    cgroups::{Label, Registry},
    encoding::Encoder,
    maps::KernelMaps,
};

pub fn limit_name(l: u32) -> &'static str {
    match l {
        oom_limit::OWN => "own",
        oom_limit::ANCESTOR => "ancestor",
        oom_limit::HOST => "host",
        _ => "unknown",
    }
}

#[derive(Debug)]
pub struct OomCollector {
    pub maps: Arc<KernelMaps>,
    pub registry: Arc<Registry>,
    /// The v1 memory controller mount on hybrid hosts, whose cgroup ids the probe reports for
    /// the limit; `None` when memory is on cgroup v2 (ids are v2 ids then).
    pub memory_v1: Option<PathBuf>,
}

/// The cgroup path of the memory cgroup whose limit fired, for an OOM key of a victim labelled
/// `victim` (also used by the event stream).
pub fn limit_cgroup(registry: &Registry, memory_v1: Option<&Path>, key: &OomKey, victim: &Label) -> String {
    match key.limit {
        oom_limit::OWN => victim.as_value(),
        oom_limit::ANCESTOR => match memory_v1 {
            None => registry.path_of(key.limit_cgroup_id).map(|p| p.to_string()).unwrap_or_default(),
            // v1 and v2 paths of a cgroup coincide wherever a runtime or systemd created it;
            // the v1 directory's inode confirms it (a stat, only for OOM series).
            Some(mount) => {
                let Label::Path(path) = victim else { return String::new() };
                let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
                let Some(keep) = parts.len().checked_sub(key.levels_up as usize) else { return String::new() };
                let candidate = format!("/{}", parts[..keep].join("/"));
                let ino = std::fs::metadata(mount.join(candidate.trim_start_matches('/'))).map(|m| m.ino());
                if ino.is_ok_and(|i| i == key.limit_cgroup_id) {
                    candidate
                } else {
                    format!("(v1 memory cgroup {})", key.limit_cgroup_id)
                }
            }
        },
        _ => String::new(),
    }
}

impl Collector for OomCollector {
    fn encode(&self, encoder: &mut Encoder<'_>) {
        let mut series: Vec<(EventSeries<2>, u64)> = Vec::new();
        let counts = self.maps.oom();
        let victims = self.registry.event_series_many(counts.iter().map(|(k, _)| k.cgroup_id));
        for ((key, count), victim) in counts.into_iter().zip(victims) {
            if victim.pending() {
                continue;
            }
            let labels = [
                Cow::Borrowed(limit_name(key.limit)),
                Cow::Owned(limit_cgroup(&self.registry, self.memory_v1.as_deref(), &key, &victim.label)),
            ];
            series.push(((victim.rendered, labels), count));
        }
        event_family(encoder, &catalog::OOM_KILLS, ["limit", "limit_cgroup"], series);
    }
}
