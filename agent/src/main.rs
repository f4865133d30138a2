//! `cgwatch`: start-up, wiring and shutdown. The work is in the library modules.

use std::{process::ExitCode, sync::Arc};

use agent_common::config_flags;
use anyhow::{Context as _, Result};
use cgwatch::{
    btf::KernelBtf,
    cgroups::{Layout, Registry},
    collectors::{
        agent::AgentCollector,
        cgroup_resources::{CgroupResourceCollector, ResourceSnapshot},
        containers::ContainerCollector,
        exits::ExitCollector,
        host::{HostCollector, HostSampler},
        oom::OomCollector, seccomp::SeccompCollector,
    },
    config::Config,
    containers::metadata::Resolver,
    privileges,
    probes::{self, MapSizes, ProbeContext},
    signals, tasks,
    web::{self, Exporter},
};
use clap::{Parser as _, error::ErrorKind};
use log::{info, warn};
use tokio::sync::Notify;

fn main() -> ExitCode {
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
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cgwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<()> {
    privileges::check()?;
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
    // Serve from the start: /healthz answers while the probes load, /readyz and /metrics once
    // they are attached.
    let listener = web::bind(config.listen).await?;
    let scheme = security.current().scheme();
    let exporter = Arc::new(Exporter::default());
    let mut server =
        tokio::spawn(web::serve(listener, exporter.clone(), security, config.web_limits(), shutdown_signal()));
    let cfg = config.clone();
    let started = tokio::task::spawn_blocking(move || load_probes(&cfg));
    let loaded = tokio::select! {
        loaded = started => loaded.context("loading the probes")??,
        served = &mut server => {
            // Stopped (or failed) before the probes were loaded.
            served.context("HTTP server")?;
            return Ok(());
        }
    };
    let (loaded, layout) = loaded;
    let probes::LoadedProbes { ebpf: _ebpf, status, maps, events } = loaded;
    let maps = Arc::new(maps);

    let registry = Arc::new(Registry::with_selection(config.max_cgroups as usize, config.retain, config.cgroups));
    tasks::housekeeping(&layout, &registry, &maps);
    let mut resolver = Resolver::new(&config.rootfs);
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

    let probe_summary = status.iter().map(|s| format!("{} {} {}\n", s.probe, s.mode, u8::from(s.attached))).collect();
    let mut metrics = prometheus_client::registry::Registry::default();
    metrics.register_collector(Box::new(SeccompCollector { maps: maps.clone(), registry: registry.clone() }));
    metrics.register_collector(Box::new(OomCollector {
        maps: maps.clone(),
        registry: registry.clone(),
        memory_v1: layout.memory_v1.clone(),
    }));
    metrics.register_collector(Box::new(ExitCollector { maps: maps.clone(), registry: registry.clone() }));
    metrics.register_collector(Box::new(CgroupResourceCollector { snapshot: resources.clone() }));
    metrics.register_collector(Box::new(ContainerCollector { registry: registry.clone() }));
    metrics.register_collector(Box::new(HostCollector { procfs: config.procfs.clone(), sampler: sampler.clone() }));
    metrics.register_collector(Box::new(AgentCollector {
        maps: maps.clone(),
        registry: registry.clone(),
        probes: status,
        kernel_release: probes::kernel_release(),
    }));

    let wake_resolver = Arc::new(Notify::new());
    tokio::spawn(tasks::cgroup_events(events, registry.clone(), wake_resolver.clone()));
    tokio::spawn(tasks::name_resolver(config.rootfs.clone(), registry.clone(), wake_resolver, config.scan_interval));
    tokio::spawn(tasks::housekeeping_loop(layout.clone(), registry.clone(), maps, config.scan_interval));
    tokio::spawn(tasks::sampler(config.procfs.clone(), sampler, layout, registry, resources, config.sample_interval));

    exporter.set_ready(Arc::new(metrics), probe_summary);
    info!("serving metrics on {scheme}://{}/metrics", config.listen);
    server.await.context("HTTP server")?;
    info!("shutting down");
    Ok(())
}

/// Reads the kernel layout from BTF and loads and attaches the probes (slow: a blocking task).
fn load_probes(config: &Config) -> Result<(probes::LoadedProbes, Arc<Layout>)> {
    let btf = KernelBtf::from_sysfs(&config.sysfs)?;
    let mut kernel = btf.kernel_config().context("reading the kernel layout from BTF")?;
    drop(btf);
    let layout = Arc::new(Layout::detect(&config.sysfs)?);
    if layout.memory_v1.is_some() {
        kernel.flags |= config_flags::MEMCG_V1;
    }
    let ctx = ProbeContext {
        kernel,
        kernel_version: probes::kernel_version(),
        seccomp_mode: config.seccomp_mode,
        probe_mode: config.probe_mode,
    };
    let loaded = probes::load(
        &config.sysfs.join("kernel/btf/vmlinux"),
        &ctx,
        MapSizes::for_max_cgroups(config.max_cgroups),
    )?;
    for s in &loaded.status {
        match (s.attached, s.mode) {
            (true, mode) => info!("probe {}: attached ({mode})", s.probe),
            (false, "off") => info!("probe {}: off: {}", s.probe, s.detail),
            (false, _) => warn!("probe {}: NOT attached, its metrics stay empty: {}", s.probe, s.detail),
        }
    }
    if loaded.status.iter().all(|s| !s.attached) {
        warn!("no probe attached: serving cgroup and host CPU / memory only");
    }
    release_startup_memory();
    Ok((loaded, layout))
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

/// Parsing kernel BTF (twice: once for the offsets, once in the loader) peaks at tens of MiB of
/// small allocations that are all freed once the programs are loaded; hand the freed pages back
/// so the steady-state RSS is the agent's own.
fn release_startup_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory; no pointer is invalidated.
    unsafe {
        libc::malloc_trim(0);
    }
}
