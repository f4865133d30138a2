//! Command line and environment.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

use crate::{
    containers::{Selection, metadata::DOCKER_DATA_ROOT},
    events::Destination,
};

/// Default listen port: outside the 9100-9999 range that the Prometheus exporter port registry
/// has fully allocated, and not used by any well-known exporter.
pub const DEFAULT_PORT: u16 = 19120;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompMode {
    /// The fast path where it attaches (fexit on `__seccomp_filter`, else a kprobe / kretprobe
    /// pair on it: only tasks with a filter pay), else the syscall tracepoints. On a kernel that
    /// preempts running programs (preempt=full, lazy, rt) the kprobe pair first.
    Auto,
    /// The fast path only (fexit, else the kprobe pair), no tracepoint fallback.
    Fexit,
    /// The kprobe / kretprobe pair only (where fexit is unavailable or unwanted).
    Kprobe,
    /// `raw_syscalls` enter/exit plus `signal_generate`: all actions, every syscall of the host
    /// pays for the tracepoints.
    Tracepoint,
    /// `signal_generate` and exits only: TRAP and KILL actions, no ERRNO, no per-syscall cost.
    Signals,
    /// No seccomp probes.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeMode {
    /// tp_btf where it loads, else raw_tp, per probe.
    Auto,
    /// BTF-enabled tracepoints only.
    #[value(name = "tp_btf")]
    TpBtf,
    /// Raw tracepoints only.
    #[value(name = "raw_tp")]
    RawTp,
}

/// cgwatch: per-cgroup seccomp violations, OOM kills and exits from eBPF probes, with cgroup and
/// host CPU and memory, as Prometheus metrics.
#[derive(Debug, Clone, Parser)]
#[command(name = "cgwatch", version, about, long_about = None, args_override_self = true)]
pub struct Config {
    /// Address to serve /metrics on.
    #[arg(long, env = "CGWATCH_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    pub listen: SocketAddr,

    /// procfs mount point (e.g. /host/proc in a container).
    #[arg(long = "path.procfs", env = "CGWATCH_PATH_PROCFS", default_value = "/proc")]
    pub procfs: PathBuf,

    /// sysfs mount point; cgroups are read below <sysfs>/fs/cgroup, BTF at <sysfs>/kernel/btf.
    #[arg(long = "path.sysfs", env = "CGWATCH_PATH_SYSFS", default_value = "/sys")]
    pub sysfs: PathBuf,

    /// Host root filesystem (e.g. /host in a DaemonSet): runtime state and kubelet logs are read
    /// below it (docker's data root, var/lib/containers, run/containerd, var/log/pods).
    #[arg(long = "path.rootfs", env = "CGWATCH_PATH_ROOTFS", default_value = "/")]
    pub rootfs: PathBuf,

    /// dockerd's data root as the host names it (its --data-root, daemon.json "data-root"),
    /// read below --path.rootfs: container names, images and labels come from
    /// <data root>/containers/<id>/config.v2.json.
    #[arg(long = "docker.data-root", env = "CGWATCH_DOCKER_DATA_ROOT", value_name = "PATH",
          default_value = DOCKER_DATA_ROOT, value_parser = parse_host_path)]
    pub docker_data_root: PathBuf,

    /// Which cgroups get series of their own; events of the others are summed under
    /// cgroup="(other)".
    #[arg(long, env = "CGWATCH_CGROUPS", value_enum, default_value_t = Selection::All)]
    pub cgroups: Selection,

    /// Most cgroups to export series for; the rest are folded into cgroup="(overflow)".
    #[arg(long, env = "CGWATCH_MAX_CGROUPS", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_cgroups: u32,

    /// How long a removed cgroup keeps its series, so Prometheus sees the final value.
    #[arg(long, env = "CGWATCH_RETAIN", default_value = "10m", value_parser = humantime::parse_duration)]
    pub retain: Duration,

    /// How often the cgroup tree is rescanned (missed events; cgroups populated long after they
    /// were made: a new one is checked for a first process every 500 ms for 30 s).
    #[arg(long, env = "CGWATCH_SCAN_INTERVAL", default_value = "15s", value_parser = parse_interval)]
    pub scan_interval: Duration,

    /// How often cgroup CPU / memory files and host CPU are sampled (the host CPU usage ratio
    /// covers this interval).
    #[arg(long, env = "CGWATCH_SAMPLE_INTERVAL", default_value = "5s", value_parser = parse_interval)]
    pub sample_interval: Duration,

    /// How seccomp violations are observed.
    #[arg(long, env = "CGWATCH_SECCOMP_MODE", value_enum, default_value_t = SeccompMode::Auto)]
    pub seccomp_mode: SeccompMode,

    /// How probes attach: auto tries tp_btf, then raw_tp.
    #[arg(long, env = "CGWATCH_PROBE_MODE", value_enum, default_value_t = ProbeMode::Auto)]
    pub probe_mode: ProbeMode,

    /// BPF filesystem directory where counters and probe links are pinned, so that counts
    /// survive a restart and the probes keep counting while the agent is down.
    #[arg(long = "pin-path", env = "CGWATCH_PIN_PATH", default_value = "/sys/fs/bpf/cgwatch")]
    pub pin_path: PathBuf,

    /// Pin nothing: counters start at zero at every start and the probes stop with the agent.
    #[arg(long = "no-pin", env = "CGWATCH_NO_PIN")]
    pub no_pin: bool,

    /// Remove everything pinned below --pin-path (detaching the probes) and exit.
    #[arg(long)]
    pub unpin: bool,

    /// Web config file (the exporter-toolkit format Prometheus exporters share): TLS, basic
    /// auth, response headers. Reloaded when it or a file it names changes, and on SIGHUP.
    #[arg(long = "web.config.file", env = "CGWATCH_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Longest a client may take to send a request's headers: from connecting (TLS handshake
    /// included), or from the first byte of a later request on a kept-alive connection.
    #[arg(long = "web.read-header-timeout", env = "CGWATCH_WEB_READ_HEADER_TIMEOUT", default_value = "10s",
          value_parser = parse_timeout)]
    pub web_read_header_timeout: Duration,

    /// Longest a kept-alive connection waits for its next request, and a response for its
    /// reader.
    #[arg(long = "web.idle-timeout", env = "CGWATCH_WEB_IDLE_TIMEOUT", default_value = "2m", value_parser = parse_timeout)]
    pub web_idle_timeout: Duration,

    /// Most open HTTP connections; at the limit, the connection that has gone longest without
    /// sending a request or being answered is closed for the newcomer.
    #[arg(long = "web.max-connections", env = "CGWATCH_WEB_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub web_max_connections: u32,

    /// The JSON event stream: off, stdout, or a file (appended to, reopened on SIGHUP). One
    /// line per seccomp verdict, OOM kill, failed process, container exit, container start and
    /// exec session (docs/events.md).
    #[arg(long, env = "CGWATCH_EVENTS", default_value = "off", value_parser = Destination::parse)]
    pub events: Destination,

    /// Events a second each cgroup may write, per event type; the rest are counted in
    /// cgwatch_events_suppressed_total (the counters stay exact).
    #[arg(long = "events-rate", env = "CGWATCH_EVENTS_RATE", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub events_rate: u32,

    /// Events a cgroup may write at once, per event type, before --events-rate applies.
    #[arg(long = "events-burst", env = "CGWATCH_EVENTS_BURST", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub events_burst: u32,

    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, env = "CGWATCH_LOG_LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(d)
}

/// A path on the host, as its own programs name it (read below --path.rootfs): absolute.
fn parse_host_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if !p.is_absolute() {
        return Err("must be an absolute path, as the host names it (it is read below --path.rootfs)".into());
    }
    Ok(p)
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(24 * 3600) {
        return Err("must be between 100ms and 24h".into());
    }
    Ok(d)
}

impl Config {
    /// The event stream's settings for the probes (rate 0: off).
    pub fn events_config(&self) -> agent_common::EventsConfig {
        match self.events {
            Destination::Off => agent_common::EventsConfig::default(),
            _ => agent_common::EventsConfig { rate: self.events_rate, burst: self.events_burst },
        }
    }

    /// The web server's connection limits.
    pub fn web_limits(&self) -> crate::web::Limits {
        crate::web::Limits {
            read_header_timeout: self.web_read_header_timeout,
            idle_timeout: self.web_idle_timeout,
            max_connections: self.web_max_connections as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::try_parse_from(["cgwatch"]).unwrap();
        assert_eq!(c.listen.port(), DEFAULT_PORT);
        assert_eq!(c.max_cgroups, 2000);
        assert_eq!(c.retain, Duration::from_secs(600));
        assert_eq!(c.seccomp_mode, SeccompMode::Auto);
        assert_eq!(c.cgroups, Selection::All);
        assert_eq!(c.web_config_file, None);
        assert_eq!(c.web_read_header_timeout, Duration::from_secs(10));
        assert_eq!(c.web_idle_timeout, Duration::from_secs(120));
        assert_eq!(c.web_max_connections, 512);
        assert_eq!(c.events, Destination::Off);
        assert_eq!(c.docker_data_root, PathBuf::from("/var/lib/docker"));
        let c = Config::try_parse_from(["cgwatch", "--docker.data-root", "/data/docker"]).unwrap();
        assert_eq!(c.docker_data_root, PathBuf::from("/data/docker"));
        assert_eq!(c.events_config().rate, 0, "no events unless asked for");
        let c = Config::try_parse_from(["cgwatch", "--events", "/var/log/cgwatch.json", "--events-rate", "5"]).unwrap();
        assert_eq!(c.events, Destination::File("/var/log/cgwatch.json".into()));
        assert_eq!(c.events_config(), agent_common::EventsConfig { rate: 5, burst: 1000 });
        let c = Config::try_parse_from(["cgwatch", "--cgroups", "containers-and-services"]).unwrap();
        assert_eq!(c.cgroups, Selection::ContainersAndServices);
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Config::try_parse_from(["cgwatch", "--listen", "nope"]).is_err());
        assert!(Config::try_parse_from(["cgwatch", "--max-cgroups", "0"]).is_err());
        assert!(Config::try_parse_from(["cgwatch", "--retain", "soon"]).is_err());
        assert!(Config::try_parse_from(["cgwatch", "--scan-interval", "1ms"]).is_err());
        assert!(Config::try_parse_from(["cgwatch", "--frobnicate"]).is_err());
        assert!(Config::try_parse_from(["cgwatch", "--cgroups", "pods"]).is_err());
        assert!(Config::try_parse_from(["cgwatch", "--web.max-connections", "0"]).is_err());
        assert!(Config::try_parse_from(["cgwatch", "--web.read-header-timeout", "0s"]).is_err());
        assert!(Config::try_parse_from(["cgwatch", "--web.idle-timeout", "forever"]).is_err());
        assert!(Config::try_parse_from(["cgwatch", "--events", ""]).is_err());
        assert!(Config::try_parse_from(["cgwatch", "--events-rate", "0"]).is_err());
        assert!(Config::try_parse_from(["cgwatch", "--events-burst", "-1"]).is_err());
        assert!(Config::try_parse_from(["cgwatch", "--docker.data-root", "data/docker"]).is_err());
        assert!(Config::try_parse_from(["cgwatch", "--docker.data-root", ""]).is_err());
    }
}
