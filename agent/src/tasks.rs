//! Background work, off the scrape path: cgroup events from the ring buffer, periodic rescans
//! and purges of the cgroup registry, and the host CPU sampler.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::{CgroupEvent, LifecycleRecord, cgroup_event};
use aya::maps::{MapData, RingBuf};
use aya_log::EbpfLogger;
use log::{debug, warn};
use tokio::{io::unix::AsyncFd, sync::Notify};

use crate::{
    cgroups::{Layout, Registry},
    containers::metadata::Resolver,
    collectors::{
        cgroup_resources::ResourceSnapshot,
        host::HostSampler,
        lifecycle::{self, StartLatency},
    },
    maps::KernelMaps,
};

/// Applies one `CgroupEvent` record to the registry. Returns true when it created a cgroup
/// whose names need a lookup (a container or a pod).
pub fn apply_cgroup_event(registry: &Registry, bytes: &[u8], now: Instant) -> bool {
    if bytes.len() < size_of::<CgroupEvent>() {
        warn!("short cgroup event record ({} bytes)", bytes.len());
        return false;
    }
    // SAFETY: the record is a `CgroupEvent` written by the probe; read unaligned from the ring.
    let ev: CgroupEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let len = (ev.path_len as usize).min(ev.path.len());
    let path = ev.path[..len].split(|&b| b == 0).next().unwrap_or_default();
    match ev.kind {
        cgroup_event::MKDIR if path.is_empty() => {
            debug!("cgroup {} created, path unreadable; the next scan names it", ev.id);
            false
        }
        cgroup_event::MKDIR => registry.cgroup_created(ev.id, path, now),
        cgroup_event::RMDIR | cgroup_event::RMDIR_NOT_STARTED => {
            registry.cgroup_removed(ev.id, path, now);
            false
        }
        other => {
            warn!("unknown cgroup event kind {other}");
            false
        }
    }
}

/// The cgroup of a `RMDIR_NOT_STARTED` record: made while the probes ran, removed before anything
/// started in it.
pub fn removed_unstarted(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < size_of::<CgroupEvent>() {
        return None;
    }
    // SAFETY: as in `apply_cgroup_event`.
    let ev: CgroupEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    (ev.kind == cgroup_event::RMDIR_NOT_STARTED).then_some(ev.id)
}

/// Forwards the programs' debug log (aya-log records: a full map, a failed kernel read) to the
/// agent's log as they arrive.
pub async fn kernel_log(log: EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's fd and keeps it open, unchanged, for as long as
    // it lives, and the AsyncFd owns the logger.
    let mut fd = match unsafe { AsyncFd::register_with_interest(log, tokio::io::Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("cannot poll the kernel-side diagnostics ({}); they are not logged", e.into_parts().1);
            return;
        }
    };
    loop {
        match fd.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(e) => {
                warn!("kernel-side diagnostics: {e}; they are no longer logged");
                return;
            }
        }
    }
}

/// A periodic tick that does not try to catch up after a slow round.
fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Polls a kernel ring buffer and hands it to `drain` (with the time) each time records arrive,
/// until polling fails; `what` names the ring and `otherwise` what happens without it, in the
/// log.
async fn follow_ring(ring: RingBuf<MapData>, what: &str, otherwise: &str, mut drain: impl FnMut(&mut RingBuf<MapData>, Instant)) {
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for as long as it lives,
    // and the AsyncFd owns the RingBuf.
    let mut fd = match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("cannot poll the {what} ({}); {otherwise}", e.into_parts().1);
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!("{what}: {e}; {otherwise}");
                return;
            }
        };
        drain(guard.get_inner_mut(), Instant::now());
        guard.clear_ready();
    }
}

/// Reads cgroup mkdir / rmdir records as they arrive; a new container cgroup wakes the name
/// resolver, so that a short-lived container is named while its runtime state still exists; a
/// container cgroup removed before anything started in it is a start failure.
pub async fn cgroup_events(ring: RingBuf<MapData>, registry: Arc<Registry>, resolve: Arc<Notify>, maps: Option<Arc<KernelMaps>>) {
    follow_ring(ring, "cgroup event ring buffer", "cgroups are named by rescans only", |ring, now| {
        let mut new_container = false;
        while let Some(item) = ring.next() {
            new_container |= apply_cgroup_event(&registry, &item, now);
            if let (Some(maps), Some(id)) = (&maps, removed_unstarted(&item)) {
                lifecycle::start_failed(maps, &registry, id);
            }
        }
        if new_container {
            resolve.notify_one();
        }
    })
    .await
}

/// Reads container start and exit records as they arrive into the start latency and lifetime
/// histograms.
pub async fn start_events(ring: RingBuf<MapData>, registry: Arc<Registry>, latency: Arc<StartLatency>) {
    let otherwise = "start latencies and lifetimes are not observed";
    follow_ring(ring, "container lifecycle ring buffer", otherwise, |ring, now| {
        while let Some(item) = ring.next() {
            if item.len() < size_of::<LifecycleRecord>() {
                warn!("short container lifecycle record ({} bytes)", item.len());
                continue;
            }
            // SAFETY: a `LifecycleRecord` written by the probes; read unaligned from the ring.
            latency.record(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) }, now);
        }
        latency.settle(&registry, now);
    })
    .await
}

/// Rescans the hierarchy and purges cgroups past the retain window, with their counters.
pub fn housekeeping(layout: &Layout, registry: &Registry, maps: Option<&KernelMaps>) {
    let started = Instant::now();
    match layout.scan() {
        Ok(scanned) => registry.apply_scan(scanned, started),
        Err(e) => warn!("cgroup scan failed: {e}"),
    }
    let now = Instant::now();
    let expired: HashMap<u64, Option<u64>> = registry.purge_expired(now).into_iter().collect();
    if let Some(maps) = maps {
        if !expired.is_empty() {
            let deleted = maps.forget_cgroups(&expired);
            debug!("purged {} cgroups past the retain window ({deleted} counters)", expired.len());
        }
        maps.count_entries();
    }
    if expired.len() >= 16 {
        // What the purged cgroups' names and series took goes back to the kernel.
        crate::memory::release_free_heap();
    }
}

pub async fn housekeeping_loop(
    layout: Arc<Layout>,
    registry: Arc<Registry>,
    maps: Option<Arc<KernelMaps>>,
    every: Duration,
) {
    let mut tick = ticker(every);
    loop {
        tick.tick().await;
        let (l, r, m) = (layout.clone(), registry.clone(), maps.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || housekeeping(&l, &r, m.as_deref())).await {
            warn!("housekeeping task failed: {e}");
        }
    }
}

/// Samples host CPU (for the usage ratio) and the CPU and memory files of every shown cgroup.
pub async fn sampler(
    procfs: PathBuf,
    host: Arc<HostSampler>,
    layout: Arc<Layout>,
    registry: Arc<Registry>,
    resources: Arc<ResourceSnapshot>,
    every: Duration,
) {
    let mut tick = ticker(every);
    loop {
        tick.tick().await;
        host.sample(&procfs);
        let (l, r, s) = (layout.clone(), registry.clone(), resources.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || s.refresh(&l, &r)).await {
            warn!("cgroup resource sampling failed: {e}");
        }
    }
}

/// How often young cgroups are checked for a first process and new cgroups sampled.
pub const FRESH_EVERY: Duration = Duration::from_millis(500);
/// How long after its mkdir a cgroup is checked for a first process; later, the rescans find it.
const FRESH_WINDOW: Duration = Duration::from_secs(30);
/// Most young cgroups checked in one round (in a churn of thousands, the newest).
const FRESH_MAX: usize = 256;

/// One round of `fresh_cgroups`.
pub fn fresh_round(layout: &Layout, registry: &Registry, resources: &ResourceSnapshot) {
    let young = registry.unpopulated_young(Instant::now(), FRESH_WINDOW, FRESH_MAX);
    let populated: Vec<u64> = young.into_iter().filter(|(_, path)| layout.is_populated(path)).map(|(id, _)| id).collect();
    registry.mark_populated(&populated);
    resources.add(layout, registry.take_unsampled());
}

/// Gives a new cgroup its series within a second of its first process instead of at the next
/// rescan and sampling pass: cgroups made less than `FRESH_WINDOW` ago are checked for processes
/// every `FRESH_EVERY`, and every cgroup newly shown (populated, with a first event, or just
/// named) is sampled at once.
pub async fn fresh_cgroups(layout: Arc<Layout>, registry: Arc<Registry>, resources: Arc<ResourceSnapshot>) {
    let mut tick = ticker(FRESH_EVERY);
    loop {
        tick.tick().await;
        let (l, r, s) = (layout.clone(), registry.clone(), resources.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || fresh_round(&l, &r, &s)).await {
            warn!("new cgroup check failed: {e}");
        }
    }
}

/// One round of name lookups for the container and pod cgroups that have none yet.
pub fn resolve_names(resolver: &mut Resolver, registry: &Registry) {
    for (id, identity) in registry.needs_names() {
        let named = resolver.resolve(&identity);
        if named.resolved {
            debug!("cgroup {id}: container {:?} pod {:?}/{:?}", named.container, named.namespace, named.pod);
        }
        registry.set_identity(id, named);
    }
}

/// How long after its mkdir a container's names are retried every `NAMES_RETRY`.
const NAMES_RETRY_WINDOW: Duration = Duration::from_secs(10);
const NAMES_RETRY: Duration = Duration::from_millis(250);

/// Looks names up (below `rootfs`, docker's state under `docker_data_root`) after every rescan
/// period and whenever a container cgroup appears; a miss (the runtime has not written its state
/// yet) is retried on the next round.
pub async fn name_resolver(
    rootfs: PathBuf,
    docker_data_root: PathBuf,
    registry: Arc<Registry>,
    wake: Arc<Notify>,
    every: Duration,
) {
    let mut resolver = Resolver::new(&rootfs, &docker_data_root);
    let mut tick = ticker(every);
    loop {
        // A container made seconds ago whose runtime had not written its names yet is looked up
        // again soon, not at the next period.
        let retry_soon = registry.young_unnamed(Instant::now(), NAMES_RETRY_WINDOW);
        tokio::select! {
            _ = tick.tick() => {}
            _ = wake.notified() => {
                // The runtime writes its state around the cgroup's creation: give it a moment.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = tokio::time::sleep(NAMES_RETRY), if retry_soon => {}
        }
        let reg = registry.clone();
        resolver = match tokio::task::spawn_blocking(move || {
            resolve_names(&mut resolver, &reg);
            resolver
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                warn!("container name lookup failed ({e}); starting over with empty caches");
                Resolver::new(&rootfs, &docker_data_root)
            }
        };
    }
}
