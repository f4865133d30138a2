//! `cgwatch_container_starts_total`, `cgwatch_container_exec_sessions_total`,
//! `cgwatch_container_start_failures_total` (per container cgroup),
//! `cgwatch_container_start_duration_seconds{runtime}` and
//! `cgwatch_container_lifetime_seconds{runtime,reason}` (docs/lifecycle.md).
//!
//! The kernel counts for every cgroup; only a container's own cgroup (not one nested inside it,
//! where the container's processes make cgroups of their own) that is not a Kubernetes sandbox
//! (the pause container) or a podman pod infra container has series.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use agent_common::{LifecycleRecord, lifecycle, lifecycle_record, reason};
use log::{debug, warn};

use super::{Collector, EventSeries, event_family, exits::reason_name};
use crate::{catalog, cgroups::Registry, containers::Identity, encoding::Encoder, maps::KernelMaps};

/// The start latency histogram's upper bounds, in seconds (10 s is the operations guide's SLO).
pub const START_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// The lifetime histogram's upper bounds, in seconds: a crash at start, within a minute, an hour,
/// a day, a week.
pub const LIFETIME_BUCKETS: [f64; 13] =
    [0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0, 604800.0];

/// How long a record waits for its cgroup's names (the runtime writes them around the start);
/// then it is observed under what is known, or dropped if its cgroup is still unknown.
const NAMES_WAIT: Duration = Duration::from_secs(10);
/// How long an exit by a signal waits for a kill learnt after it (an OOM kill or a seccomp kill
/// the kernel tells just after the exit: a `RECLASSIFY` record), before it is observed.
const RECLASSIFY_WAIT: Duration = Duration::from_secs(1);
/// Most records waiting (beyond, the oldest go unobserved).
const MAX_PENDING: usize = 4096;

/// A Kubernetes sandbox (the CRI plugins name its container `POD`) or a podman pod's infra
/// container (`<pod id>-infra`): started by the runtime, but not a workload start.
pub fn is_sandbox(identity: &Identity) -> bool {
    &*identity.container == "POD" || (identity.container.ends_with("-infra") && identity.runtime.as_str() == "podman")
}

/// Whether a cgroup's lifecycle has series: a container's own cgroup (its path's last component
/// names the container), not a sandbox.
pub fn counted(path: &str, identity: &Identity) -> bool {
    let own = path.rsplit('/').next().is_some_and(|last| last.contains(&*identity.container_id));
    identity.is_container() && own && !is_sandbox(identity)
}

#[derive(Debug, Clone, PartialEq)]
struct Histogram {
    /// Per bucket of its bounds, then +Inf (not cumulative).
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Histogram { counts: vec![0; bounds.len() + 1], sum: 0.0 }
    }

    fn observe(&mut self, bounds: &[f64], seconds: f64) {
        let i = bounds.iter().position(|b| seconds <= *b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += seconds;
    }
}

#[derive(Debug, Default)]
struct Histograms {
    /// Records whose cgroup's names are not known yet (or an exit that may be reclassified), with
    /// when they arrived.
    pending: Vec<(LifecycleRecord, Instant)>,
    /// Start latency, by runtime label.
    starts: BTreeMap<&'static str, Histogram>,
    /// Lifetime, by runtime and reason labels.
    lifetimes: BTreeMap<(&'static str, &'static str), Histogram>,
}

/// The start latency and lifetime histograms, fed from the kernel's lifecycle records.
#[derive(Debug, Default)]
pub struct StartLatency(Mutex<Histograms>);

impl StartLatency {
    fn lock(&self) -> MutexGuard<'_, Histograms> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A record from the kernel; observed once its cgroup's names are known. A `RECLASSIFY`
    /// relabels the waiting exit of its container.
    pub fn record(&self, rec: LifecycleRecord, now: Instant) {
        let mut h = self.lock();
        if rec.kind == lifecycle_record::RECLASSIFY {
            let waiting = h.pending.iter_mut().rev().find(|(p, _)| {
                p.kind == lifecycle_record::EXIT && p.cgroup_id == rec.cgroup_id && p.reason == reason::SIGNAL
            });
            match waiting {
                Some((p, _)) => p.reason = rec.reason,
                None => debug!("cgroup {}: a container exit reclassified after its lifetime was observed", rec.cgroup_id),
            }
            return;
        }
        if h.pending.len() >= MAX_PENDING {
            h.pending.remove(0);
        }
        h.pending.push((rec, now));
    }

    /// Observes the waiting records whose cgroups are named (or waited long enough).
    pub fn settle(&self, registry: &Registry, now: Instant) {
        let mut h = self.lock();
        let Histograms { pending, starts, lifetimes } = &mut *h;
        pending.retain(|(rec, arrived)| {
            let waited = now.saturating_duration_since(*arrived);
            if rec.kind == lifecycle_record::EXIT && rec.reason == reason::SIGNAL && waited < RECLASSIFY_WAIT {
                return true;
            }
            let waited = waited >= NAMES_WAIT;
            match registry.describe(rec.cgroup_id) {
                Some((path, id)) if !id.needs_names() || waited => {
                    if counted(&path, &id) {
                        let seconds = rec.duration_ns as f64 / 1e9;
                        let runtime = id.runtime.as_str();
                        if rec.kind == lifecycle_record::START {
                            starts.entry(runtime).or_insert_with(|| Histogram::new(&START_BUCKETS)).observe(&START_BUCKETS, seconds);
                        } else {
                            lifetimes
                                .entry((runtime, reason_name(rec.reason)))
                                .or_insert_with(|| Histogram::new(&LIFETIME_BUCKETS))
                                .observe(&LIFETIME_BUCKETS, seconds);
                        }
                    }
                    false
                }
                _ => !waited,
            }
        });
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
        let h = self.latency.lock();
        let mut family = encoder.family(&catalog::CONTAINER_START_DURATION);
        for (runtime, h) in &h.starts {
            family.histogram(&[("runtime", runtime)], &START_BUCKETS, &h.counts, h.sum);
        }
        let mut family = encoder.family(&catalog::CONTAINER_LIFETIME);
        for ((runtime, reason), h) in &h.lifetimes {
            family.histogram(&[("runtime", runtime), ("reason", reason)], &LIFETIME_BUCKETS, &h.counts, h.sum);
        }
    }
}

/// A container cgroup removed before anything started in it: a start failure, counted where the
/// kernel keeps the other lifecycle counts.
pub fn start_failed(maps: &KernelMaps, registry: &Registry, cgroup_id: u64) {
    if !registry.describe(cgroup_id).is_some_and(|(path, id)| counted(&path, &id)) {
        return;
    }
    if let Err(e) = maps.count_start_failure(cgroup_id) {
        warn!("cgroup {cgroup_id}: a container start failure not counted: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let mut h = Histogram::new(&START_BUCKETS);
        for s in [0.01, 0.05, 0.3, 10.0, 61.0] {
            h.observe(&START_BUCKETS, s);
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
