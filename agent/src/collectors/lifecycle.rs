//! `cgwatch_container_starts_total`, `cgwatch_container_exec_sessions_total`,
//! `cgwatch_container_start_failures_total` (per container cgroup) and
//! `cgwatch_container_start_duration_seconds{runtime}` (docs/lifecycle.md).
//!
//! The kernel counts for every cgroup; only a container's own cgroup (not one nested inside it,
//! where the container's processes make cgroups of their own) that is not a Kubernetes sandbox
//! (the pause container) or a podman pod infra container has series.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use agent_common::{StartRecord, lifecycle};

use super::{Collector, EventSeries, event_family};
use crate::{catalog, cgroups::Registry, containers::Identity, encoding::Encoder, maps::KernelMaps};

/// The start latency histogram's upper bounds, in seconds (10 s is the operations guide's SLO).
pub const START_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// How long a start record waits for its cgroup's names (the runtime writes them around the
/// start); then it is observed under what is known, or dropped if its cgroup is still unknown.
const NAMES_WAIT: Duration = Duration::from_secs(10);
/// Most start records waiting for names (beyond, the oldest go unobserved).
const MAX_PENDING: usize = 4096;

/// A Kubernetes sandbox (the CRI plugins name its container `POD`) or a podman pod's infra
/// container (`<pod id>-infra`): started by the runtime, but not a workload start.
pub fn is_sandbox(identity: &Identity) -> bool {
    &*identity.container == "POD" || (identity.container.ends_with("-infra") && identity.runtime.as_str() == "podman")
}

/// Whether a cgroup's lifecycle has series: a container's own cgroup (its path's last component
/// names the container), not a sandbox.
fn counted(path: &str, identity: &Identity) -> bool {
    let own = path.rsplit('/').next().is_some_and(|last| last.contains(&*identity.container_id));
    identity.is_container() && own && !is_sandbox(identity)
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Histogram {
    /// Per bucket of `START_BUCKETS`, then +Inf (not cumulative).
    counts: [u64; START_BUCKETS.len() + 1],
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let i = START_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(START_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
    }
}

#[derive(Debug, Default)]
struct Latency {
    /// Start records whose cgroup's names are not known yet, with when they arrived.
    pending: Vec<(StartRecord, Instant)>,
    /// By runtime label.
    histograms: BTreeMap<&'static str, Histogram>,
}

/// The start latency histogram, fed from the kernel's start records.
#[derive(Debug, Default)]
pub struct StartLatency(Mutex<Latency>);

impl StartLatency {
    fn lock(&self) -> MutexGuard<'_, Latency> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A start record from the kernel; observed once its cgroup's names are known.
    pub fn record(&self, rec: StartRecord, now: Instant) {
        let mut l = self.lock();
        if l.pending.len() >= MAX_PENDING {
            l.pending.remove(0);
        }
        l.pending.push((rec, now));
    }

    /// Observes the waiting records whose cgroups are named (or waited long enough).
    pub fn settle(&self, registry: &Registry, now: Instant) {
        let mut l = self.lock();
        let Latency { pending, histograms } = &mut *l;
        pending.retain(|(rec, arrived)| {
            let waited = now.saturating_duration_since(*arrived) >= NAMES_WAIT;
            match registry.describe(rec.cgroup_id) {
                Some((path, id)) if !id.needs_names() || waited => {
                    if counted(&path, &id) {
                        histograms.entry(id.runtime.as_str()).or_default().observe(rec.duration_ns as f64 / 1e9);
                    }
                    false
                }
                _ => !waited,
            }
        });
    }

    fn snapshot(&self) -> BTreeMap<&'static str, Histogram> {
        self.lock().histograms.clone()
    }
}

#[derive(Debug)]
pub struct LifecycleCollector {
    pub maps: Arc<KernelMaps>,
    pub registry: Arc<Registry>,
    pub latency: Arc<StartLatency>,
}

impl Collector for LifecycleCollector {
    fn encode(&self, encoder: &mut Encoder<'_>) {
        let counts: Vec<_> = self
            .maps
            .lifecycle()
            .into_iter()
            .filter(|(k, _)| self.registry.describe(k.cgroup_id).is_some_and(|(path, id)| counted(&path, &id)))
            .collect();
        let labels = self.registry.event_labels_many(counts.iter().map(|(k, _)| k.cgroup_id));
        let mut by_kind: [Vec<(EventSeries<0>, u64)>; 3] = Default::default();
        for ((key, count), cgroup) in counts.into_iter().zip(labels) {
            let Some(cgroup) = cgroup else { continue };
            let i = match key.kind {
                lifecycle::START => 0,
                lifecycle::EXEC_SESSION => 1,
                lifecycle::START_FAILURE => 2,
                _ => continue,
            };
            by_kind[i].push(((cgroup, []), count));
        }
        let [starts, execs, failures] = by_kind;
        event_family(encoder, &catalog::CONTAINER_STARTS, [], starts);
        event_family(encoder, &catalog::CONTAINER_EXEC_SESSIONS, [], execs);
        event_family(encoder, &catalog::CONTAINER_START_FAILURES, [], failures);
        self.latency.settle(&self.registry, Instant::now());
        let mut family = encoder.family(&catalog::CONTAINER_START_DURATION);
        for (runtime, h) in self.latency.snapshot() {
            family.histogram(&[("runtime", runtime)], &START_BUCKETS, &h.counts, h.sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let mut h = Histogram::default();
        for s in [0.01, 0.05, 0.3, 10.0, 61.0] {
            h.observe(s);
        }
        assert_eq!(h.counts, [2, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1]);
        assert!((h.sum - 71.36).abs() < 1e-9);
    }

    #[test]
    fn sandboxes_are_not_workload_starts() {
        let id = |container: &str, runtime| Identity {
            kind: crate::containers::Kind::Container,
            runtime,
            container_id: "a".repeat(64).into(),
            container: container.into(),
            ..Identity::default()
        };
        use crate::containers::Runtime;
        let own = format!("/kubepods/pod1/{}", "a".repeat(64));
        assert!(counted(&own, &id("web", Runtime::Containerd)));
        assert!(!counted(&own, &id("POD", Runtime::Containerd)));
        assert!(!counted(&own, &id("0123456789ab-infra", Runtime::Podman)));
        assert!(counted(&own, &id("db-infra", Runtime::Docker)));
        // A cgroup the container's own systemd made inside it: its units are not container starts.
        assert!(!counted(&format!("{own}/system.slice/nginx.service"), &id("web", Runtime::Containerd)));
    }
}
