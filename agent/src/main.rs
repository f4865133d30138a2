//! `cgwatch`: start-up, wiring and shutdown. The work is in the library modules.

use std::{process::ExitCode, sync::Arc};

use agent_common::config_flags;
use anyhow::{Context as _, Result};
use aya::EbpfLoader;
use cgwatch::{
    btf::KernelBtf,
    cgroups::{Layout, Registry},
    collectors::{
        Collectors,
        agent::AgentCollector,
        cgroup_resources::{CgroupResourceCollector, ResourceSnapshot},
        containers::ContainerCollector,
        events::EventsCollector,
        exits::ExitCollector,
        host::{HostCollector, HostSampler},
        lifecycle::{LifecycleCollector, StartLatency},
        oom::OomCollector, seccomp::SeccompCollector, seccomp_observable::SeccompObservableCollector,
    },
    config::Config,
    containers::metadata::Resolver,
    events::{self, Sink},
    memory,
    pins::{self, Pins},
    preemption,
    privileges,
    probes::{self, MapSizes, ProbeContext},
    signals, tasks,
    web::{self, Exporter},
};
use clap::{Parser as _, error::ErrorKind};
use log::{info, warn};
use tokio::sync::Notify;

fn main() -> ExitCode {
    memory::tune_allocator();
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            // One line, not clap's multi-line usage block.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
            eprintln!("cgwatch: {first} (see --help)");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::new()
        .filter_level(config.log_level)
        .parse_env("RUST_LOG")
        .format_target(false)
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cgwatch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(config));
    // Every task is dropped here (the event stream's last sink with them); then the writer gets
    // a moment to write what it still holds.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if !events::sink::finish(std::time::Duration::from_secs(3)) {
        warn!("events: the writer did not finish in 3 s; lines still queued are lost");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cgwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<()> {
    if config.unpin {
        let n = pins::unpin(&config.pin_path).context("removing the pins")?;
        eprintln!("cgwatch: removed {n} pins below {}", config.pin_path.display());
        // The kretprobes' tracefs events go once the kernel has released their links.
        let events = probes::kretprobe::sweep_waiting(std::time::Duration::from_secs(2));
        if events > 0 {
            eprintln!("cgwatch: removed {events} kretprobe events from tracefs");
        }
        return Ok(());
    }
    privileges::check()?;
    // Early, while the agent holds the least: making it parses kernel BTF (see probes::loader).
    let loader = probes::loader();
    if let Err(e) = privileges::raise_memlock() {
        info!("RLIMIT_MEMLOCK not raised ({e}); fine on kernels >= 5.11, which charge BPF memory to the memory cgroup");
    }
    match privileges::raise_nofile() {
        Ok(n) if n < u64::from(config.web_max_connections) + 64 => {
            warn!("RLIMIT_NOFILE is {n}: too low for --web.max-connections={}", config.web_max_connections);
        }
        Ok(_) => {}
        Err(e) => info!("RLIMIT_NOFILE not raised ({e})"),
    }
    // One SIGHUP stream for the whole agent; each part that reloads subscribes to it.
    let hangups = signals::hangups().context("cannot watch SIGHUP")?;
    let security = web::reload::start(config.web_config_file.as_deref(), hangups.clone())?;
    // The event file is opened before anything else can fail on it.
    let event_stats = Arc::new(events::Stats::default());
    let sink = Sink::start(&config.events, hangups.clone(), event_stats.clone()).context("--events")?;
    // Serve from the start: /healthz answers while the probes load, /readyz and /metrics once
    // they are attached.
    let listener = web::bind(config.listen).await?;
    let scheme = security.current().scheme();
    let exporter = Arc::new(Exporter::default());
    let mut server =
        tokio::spawn(web::serve(listener, exporter.clone(), security, config.web_limits(), shutdown_signal()));
    let cfg = config.clone();
    let started = tokio::task::spawn_blocking(move || load_probes(&cfg, loader));
    let loaded = tokio::select! {
        loaded = started => loaded.context("loading the probes")??,
        served = &mut server => {
            // Stopped (or failed) before the probes were loaded.
            served.context("HTTP server")?;
            return Ok(());
        }
    };
    let Started { probes: loaded, layout, pinned, preemption } = loaded;
    let readable = || loaded.as_ref().map_or(true, |l| l.maps.readable());
    match privileges::drop_after_attach(readable) {
        Ok(kept) => info!("start-up done: capabilities dropped, kept {kept:?}"),
        Err(e) => warn!("cannot drop capabilities after attaching ({e}): the agent keeps them"),
    }
    let (status, maps, cgroup_events, event_ring, starts, _kept, skipped) = match loaded {
        Ok(probes::LoadedProbes { ebpf, status, maps, events, event_ring, starts, kernel_log, pinned_links, reused, skipped, kretprobes }) => {
            if reused > 0 {
                info!("{reused} probes kept running from before this start: no event was missed");
            }
            if !skipped.uncounted().is_empty() {
                info!("this kernel does not count the runs it skips (5.12+, kprobes 6.7+): none reported for {}", skipped.uncounted().join(", "));
            }
            if let Some(log) = kernel_log {
                tokio::spawn(tasks::kernel_log(log));
            }
            (status, Some(Arc::new(maps)), Some(events), Some(event_ring), Some(starts), Some((ebpf, pinned_links, kretprobes)), skipped)
        }
        Err(failed) => (failed, None, None, None, None, None, probes::SkippedRuns::default()),
    };

    let registry = Arc::new(Registry::with_selection(config.max_cgroups as usize, config.retain, config.cgroups));
    tasks::housekeeping(&layout, &registry, maps.as_deref());
    let mut resolver = Resolver::new(&config.rootfs, &config.docker_data_root);
    tasks::resolve_names(&mut resolver, &registry);
    info!(
        "{} cgroups known under {}, {} containers",
        registry.len(),
        layout.v2.display(),
        registry.live_containers().len()
    );

    let sampler = Arc::new(HostSampler::default());
    sampler.sample(&config.procfs);
    let resources = Arc::new(ResourceSnapshot::default());
    resources.refresh(&layout, &registry);

    let latency = Arc::new(StartLatency::default());
    // Start failures only where the exec probe runs: without it nothing ever starts.
    let exec_attached = status.iter().any(|s| s.probe == "process_exec" && s.attached);
    let probe_summary = status.iter().map(|s| format!("{} {} {}\n", s.probe, s.mode, u8::from(s.attached))).collect();
    let mut metrics = Collectors::default();
    if let Some(maps) = &maps {
        metrics.register(SeccompCollector { maps: maps.clone(), registry: registry.clone() });
        metrics.register(OomCollector {
            maps: maps.clone(),
            registry: registry.clone(),
            memory_v1: layout.memory_v1.clone(),
        });
        metrics.register(ExitCollector { maps: maps.clone(), registry: registry.clone() });
        metrics.register(LifecycleCollector { maps: maps.clone(), registry: registry.clone(), latency: latency.clone() });
        if sink.is_some() {
            metrics.register(EventsCollector {
                maps: maps.clone(),
                registry: registry.clone(),
                stats: event_stats.clone(),
            });
        }
    }
    metrics.register(CgroupResourceCollector { snapshot: resources.clone() });
    metrics.register(ContainerCollector { registry: registry.clone() });
    metrics.register(HostCollector { procfs: config.procfs.clone(), sampler: sampler.clone() });
    metrics.register(SeccompObservableCollector::new(status.clone(), &config.procfs));
    metrics.register(AgentCollector {
        maps: maps.clone(),
        registry: registry.clone(),
        probes: status,
        kernel_release: probes::kernel_release(),
        pinned,
        skipped,
        preemption,
    });

    let wake_resolver = Arc::new(Notify::new());
    if let Some(ring) = cgroup_events {
        let failures = maps.clone().filter(|_| exec_attached);
        tokio::spawn(tasks::cgroup_events(ring, registry.clone(), wake_resolver.clone(), failures));
    }
    if let Some(ring) = starts {
        tokio::spawn(tasks::start_events(ring, registry.clone(), latency.clone()));
    }
    let stop_events = Arc::new(Notify::new());
    let mut event_reader = None;
    match (sink, event_ring) {
        (Some(sink), Some(ring)) => {
            let reader = events::Reader { registry: registry.clone(), memory_v1: layout.memory_v1.clone(), sink };
            event_reader = Some(tokio::spawn(reader.run(ring, stop_events.clone())));
            info!("event stream to {}: at most {} events a second per cgroup and type, bursts of {}", config.events, config.events_rate, config.events_burst);
        }
        (Some(_), None) => warn!("event stream off: the probes are not loaded"),
        _ => {}
    }
    tokio::spawn(tasks::name_resolver(
        config.rootfs.clone(),
        config.docker_data_root.clone(),
        registry.clone(),
        wake_resolver,
        config.scan_interval,
    ));
    tokio::spawn(tasks::housekeeping_loop(layout.clone(), registry.clone(), maps, config.scan_interval));
    tokio::spawn(tasks::fresh_cgroups(layout.clone(), registry.clone(), resources.clone()));
    tokio::spawn(tasks::sampler(config.procfs.clone(), sampler, layout, registry, resources, config.sample_interval));

    exporter.set_ready(Arc::new(metrics), probe_summary);
    info!("serving metrics on {scheme}://{}/metrics", config.listen);
    let served = server.await;
    info!("shutting down");
    // The events still in the ring, or waiting for names, are written before the agent exits.
    if let Some(reader) = event_reader {
        stop_events.notify_one();
        if tokio::time::timeout(std::time::Duration::from_secs(3), reader).await.is_err() {
            warn!("events: the reader did not finish in 3 s");
        }
    }
    served.context("HTTP server")?;
    Ok(())
}

/// What start-up loaded: the probes (or, when none could load, their statuses), the cgroup
/// layout, and whether the maps and links are pinned.
struct Started {
    probes: Result<probes::LoadedProbes, Vec<probes::ProbeStatus>>,
    layout: Arc<Layout>,
    pinned: bool,
    preemption: Option<preemption::Detected>,
}

/// Finds the cgroup hierarchies (without them there is nothing to report: an error), then reads
/// the kernel layout from BTF and loads and attaches the probes (slow: a blocking task). Probes
/// that cannot load at all (no or broken kernel BTF, a refused map) leave the agent serving
/// cgroup and host metrics, with every probe reported not attached and the reason logged.
fn load_probes(config: &Config, loader: EbpfLoader<'static>) -> Result<Started> {
    let layout = Arc::new(Layout::detect(&config.sysfs)?);
    let pins = if config.no_pin {
        None
    } else {
        match Pins::open(&config.pin_path) {
            Ok(p) => Some(p),
            Err(e) => {
                warn!(
                    "pinning off ({e:#}): counts start at zero when the agent restarts and the probes stop while it is down"
                );
                None
            }
        }
    };
    let preemption = preemption::detect(&config.sysfs, &config.procfs, &config.rootfs, &probes::kernel_release());
    let loaded = attach_probes(config, &layout, pins.as_ref(), loader, preemption.as_ref());
    // (When none could load, attach_probes said why once.)
    for s in loaded.as_ref().map(|l| l.status.as_slice()).unwrap_or_default() {
        match (s.attached, s.mode) {
            (true, mode) => info!("probe {}: attached ({mode})", s.probe),
            (false, "off") => info!("probe {}: off: {}", s.probe, s.detail),
            (false, _) => warn!("probe {}: NOT attached, its metrics stay empty: {}", s.probe, s.detail),
        }
    }
    if loaded.as_ref().map(|l| &l.status).unwrap_or_else(|s| s).iter().all(|s| !s.attached) {
        warn!("no probe attached: serving cgroup and host CPU / memory only");
    }
    // aya's two parses of kernel BTF (one after the other, see probes::load) leave megabytes of
    // freed small allocations in the heap: handed back here.
    memory::release_free_heap();
    let pinned = pins.is_some() && loaded.is_ok();
    Ok(Started { probes: loaded, layout, pinned, preemption })
}

fn attach_probes(
    config: &Config,
    layout: &Layout,
    pins: Option<&Pins>,
    loader: EbpfLoader<'static>,
    preemption: Option<&preemption::Detected>,
) -> Result<probes::LoadedProbes, Vec<probes::ProbeStatus>> {
    let failed = |e: anyhow::Error| {
        let reason = format!("{e:#}");
        warn!("probes off: {reason}");
        probes::all_failed(&reason)
    };
    let btf = KernelBtf::from_sysfs(&config.sysfs).map_err(|e| failed(e.into()))?;
    let mut kernel = btf.kernel_config().context("reading the kernel layout from BTF").map_err(failed)?;
    drop(btf);
    if layout.memory_v1.is_some() {
        kernel.flags |= config_flags::MEMCG_V1;
    }
    let kernel_version = probes::kernel_version();
    if probes::task_state::supported(kernel_version) {
        kernel.flags |= config_flags::HAS_TASK_STORAGE;
    }
    // A kernel that preempts running programs skips their runs meanwhile; kprobes run with
    // preemption off.
    let kprobes = config.sysfs.join("bus/event_source/devices/kprobe").exists();
    let prefer_kprobes = kprobes && preemption.is_some_and(|p| p.model.preempts_programs());
    match preemption {
        Some(p) if prefer_kprobes => {
            info!("kernel preemption {} (from {}): seccomp verdicts from kprobes where the mode is auto", p.model, p.source)
        }
        Some(p) => info!("kernel preemption {} (from {})", p.model, p.source),
        None => info!(
            "kernel preemption model unknown (no {}, preempt= or /boot/config-<release>): fexit preferred",
            config.sysfs.join("kernel/debug/sched/preempt").display()
        ),
    }
    let ctx = ProbeContext {
        kernel,
        kernel_version,
        seccomp_mode: config.seccomp_mode,
        probe_mode: config.probe_mode,
        prefer_kprobes,
    };
    let sizes = MapSizes::for_max_cgroups(config.max_cgroups);
    probes::load(loader, &config.sysfs.join("kernel/btf/vmlinux"), &ctx, sizes, config.events_config(), pins)
        .map_err(|e| failed(e.into()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot watch SIGTERM ({e}); stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
