//! The metric catalog: every metric's name, type, labels and help text. Collectors encode from
//! it, and `docs/metrics.md` is generated from it (a test fails when the two differ).

use std::fmt::Write as _;

/// The labels every per-cgroup series may carry: `cgroup`, then the identity labels that are
/// known (`crate::containers::Identity::known_labels`).
pub const CGROUP_LABELS: [&str; 6] = ["cgroup", "container_id", "container", "pod", "namespace", "runtime"];

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Samples `<name>_bucket{le}` (cumulative), `<name>_sum` and `<name>_count`.
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The family name; a counter's samples add `_total`.
    pub name: &'static str,
    pub kind: Kind,
    /// Carries `CGROUP_LABELS` before `labels`.
    pub per_cgroup: bool,
    pub labels: &'static [&'static str],
    /// The HELP text (plain: no quotes, backslashes or newlines, so that it needs no escaping in
    /// either exposition format).
    pub help: &'static str,
}

impl Metric {
    /// The name of its samples: `<name>_total` for a counter; a histogram's `<name>_count`.
    pub fn sample_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            Kind::Gauge => self.name.to_string(),
            Kind::Histogram => format!("{}_count", self.name),
        }
    }

    /// Every label name a series may carry.
    pub fn all_labels(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = if self.per_cgroup { CGROUP_LABELS.to_vec() } else { Vec::new() };
        v.extend_from_slice(self.labels);
        if self.kind == Kind::Histogram {
            v.push("le");
        }
        v
    }
}

const fn counter(name: &'static str, per_cgroup: bool, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: Kind::Counter, per_cgroup, labels, help }
}

const fn histogram(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: Kind::Histogram, per_cgroup: false, labels, help }
}

const fn gauge(name: &'static str, per_cgroup: bool, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: Kind::Gauge, per_cgroup, labels, help }
}

// Kernel events, per cgroup.
pub const SECCOMP_VIOLATIONS: Metric = counter(
    "cgwatch_seccomp_violations",
    true,
    &["syscall", "action"],
    "Syscalls denied by a seccomp filter, by cgroup, syscall (name in the host architecture's table, x86_64 or arm64; syscall_NR when unknown) and action (errno, trap, kill_process, kill_thread, log: a LOG verdict of complain mode, the syscall ran; trace: a TRACE verdict that stopped at a tracer; user_notif: a USER_NOTIF verdict the syscall did not run after; see cgwatch_seccomp_action_observable for which actions this kernel lets cgwatch tell apart).",
);
pub const OOM_KILLS: Metric = counter(
    "cgwatch_oom_kills",
    true,
    &["limit", "limit_cgroup"],
    "Processes killed by the OOM killer, by the victim's cgroup and the limit that fired: own (the victim's cgroup), ancestor (limit_cgroup names the pod or slice), host (a global OOM) or unknown (kernels that do not tell).",
);
pub const PROCESS_EXITS: Metric = counter(
    "cgwatch_process_exits",
    true,
    &["reason", "signal"],
    "Process (thread group) exits, by cgroup and reason (success, error, signal, oom_kill, seccomp_kill); signal names the signal for reason signal and is empty otherwise. An OOM kill is oom_kill, never signal SIGKILL; seccomp_kill is a seccomp kill verdict or the SIGSYS of a trap verdict that the process did not handle; signal SIGSYS is one sent by a process (kill(2)).",
);
pub const CONTAINER_EXITS: Metric = counter(
    "cgwatch_container_exits",
    true,
    &["reason", "signal"],
    "Container exits, by cgroup and reason, as for cgwatch_process_exits_total: the exit of the task that started the container (its entrypoint; also with --pid=host), so that starts and exits pair; for a container started before the agent, the exit of its PID namespace's init.",
);
pub const CONTAINER_STARTS: Metric = counter(
    "cgwatch_container_starts",
    true,
    &[],
    "Container starts seen by the kernel: the first exec in a new instance of a container cgroup by a task whose parent is outside it (the runtime's init exec'ing the entrypoint); a restart is a new start. Not counted for containers started before the agent, nor for Kubernetes sandboxes. See docs/lifecycle.md.",
);
pub const CONTAINER_EXEC_SESSIONS: Metric = counter(
    "cgwatch_container_exec_sessions",
    true,
    &[],
    "Processes entering a running container from outside after its start (docker exec, podman exec, kubectl exec, exec probes): a later first exec in the container cgroup by a task whose parent is outside it.",
);
pub const CONTAINER_START_FAILURES: Metric = counter(
    "cgwatch_container_start_failures",
    true,
    &[],
    "Container cgroups removed before any start in them (an entrypoint that does not exist, a failed hook).",
);
pub const CONTAINER_START_DURATION: Metric = histogram(
    "cgwatch_container_start_duration_seconds",
    &["runtime"],
    "Time from a container cgroup's creation to its entrypoint's exec, for every start counted in cgwatch_container_starts_total, by runtime.",
);
pub const CONTAINER_LIFETIME: Metric = histogram(
    "cgwatch_container_lifetime_seconds",
    &["runtime", "reason"],
    "Time from a container's start to its exit (of the task that started it), for every container whose start was counted, by runtime and exit reason.",
);

// Cgroup resources, sampled every --sample-interval.
pub const CGROUP_CPU_USAGE: Metric = counter(
    "cgwatch_cgroup_cpu_usage_seconds",
    true,
    &[],
    "CPU time used by the cgroup and its descendants (v2 cpu.stat usage_usec, or v1 cpuacct.usage on hybrid hosts).",
);
pub const CGROUP_CPU_THROTTLED: Metric = counter(
    "cgwatch_cgroup_cpu_throttled_seconds",
    true,
    &[],
    "Time the cgroup's tasks were throttled by its CPU quota (v2 cpu.stat throttled_usec, v1 throttled_time); absent until the cgroup is first throttled.",
);
pub const CGROUP_MEMORY_USAGE: Metric = gauge(
    "cgwatch_cgroup_memory_usage_bytes",
    true,
    &[],
    "Memory charged to the cgroup (v2 memory.current, v1 memory.usage_in_bytes).",
);
pub const CGROUP_MEMORY_WORKING_SET: Metric = gauge(
    "cgwatch_cgroup_memory_working_set_bytes",
    true,
    &[],
    "Memory usage minus inactive file pages, as the kubelet computes it for eviction.",
);
pub const CGROUP_MEMORY_LIMIT: Metric = gauge(
    "cgwatch_cgroup_memory_limit_bytes",
    true,
    &[],
    "Memory limit of the cgroup; absent when unlimited.",
);
pub const CGROUP_MEMORY_EVENTS: Metric = counter(
    "cgwatch_cgroup_memory_events",
    true,
    &["event"],
    "Memory events of the cgroup and its descendants: v2 memory.events (low, high, max, oom, oom_kill, oom_group_kill); v1 oom_kill only. An event's series appears with its first occurrence (absent while zero).",
);
pub const CGROUP_PRESSURE: Metric = counter(
    "cgwatch_cgroup_pressure_seconds",
    true,
    &["resource", "kind"],
    "PSI total stall time of the cgroup, by resource (cpu, memory, io) and kind (some, full), where the kernel has PSI; absent while zero (an idle cgroup has none).",
);

// Containers.
pub const CONTAINER_INFO: Metric = gauge(
    "cgwatch_container_info",
    false,
    &["container_id", "container", "pod", "namespace", "runtime", "image"],
    "1 for each live container, with its names and image; join on container_id.",
);
pub const CONTAINERS: Metric = gauge("cgwatch_containers", false, &["runtime"], "Live containers, by runtime.");

// Host.
pub const HOST_CPU_SECONDS: Metric = counter(
    "cgwatch_host_cpu_seconds",
    false,
    &["mode"],
    "Host CPU time by mode (user, nice, system, idle, iowait, irq, softirq, steal), all CPUs.",
);
pub const HOST_CPU_USAGE_RATIO: Metric = gauge(
    "cgwatch_host_cpu_usage_ratio",
    false,
    &[],
    "Share of host CPU time not idle or in iowait over the last sampling interval (0 to 1).",
);
pub const HOST_PRESSURE: Metric = counter(
    "cgwatch_host_pressure_seconds",
    false,
    &["resource", "kind"],
    "PSI total stall time of the host, by resource (cpu, memory, io, irq) and kind (some, full).",
);
pub const HOST_MEMORY_TOTAL: Metric =
    gauge("cgwatch_host_memory_total_bytes", false, &[], "Host usable RAM (MemTotal).");
pub const HOST_MEMORY_AVAILABLE: Metric = gauge(
    "cgwatch_host_memory_available_bytes",
    false,
    &[],
    "Host memory available for new work without swapping (MemAvailable).",
);
pub const HOST_MEMORY_USAGE_RATIO: Metric = gauge(
    "cgwatch_host_memory_usage_ratio",
    false,
    &[],
    "1 - MemAvailable / MemTotal (0 to 1).",
);

// The agent itself.
pub const PROBE_ATTACHED: Metric = gauge(
    "cgwatch_probe_attached",
    false,
    &["probe", "mode"],
    "1 when the probe is attached (mode tp_btf, raw_tp, fexit or kprobe); 0 with mode off when not wanted here (turned off by a flag, not needed on this kernel, or replaced by another probe); 0 with another mode when it failed to attach.",
);
pub const SECCOMP_ACTION_OBSERVABLE: Metric = gauge(
    "cgwatch_seccomp_action_observable",
    false,
    &["action", "mode"],
    "1 when seccomp verdicts of this action are counted under their own action label, with the attach mode of the probe that counts them; 0 when not all of them are: log without the audit_seccomp hook (fexit or kprobe) or with kernel.seccomp.actions_logged lacking log; user_notif without its seccomp_do_user_notification hook beside the fast path (then counted as errno); trace always, since a TRACE without a tracer is answered ENOSYS like an ERRNO rule and counted as errno (those that stop at a tracer are counted as trace where the ptrace_notify hook is attached, its mode shown).",
);
pub const PROBE_SKIPPED_RUNS: Metric = counter(
    "cgwatch_probe_skipped_runs",
    false,
    &["probe"],
    "Runs of the probe's programs that the kernel skipped because the same program was already running on that CPU (the programs' recursion_misses): each may be an event (a denial, an exit, an OOM kill) not counted, in any cgroup. 0 where the kernel does not preempt a running program; on kernels that do (preempt=full, lazy or rt) counts can be short by up to this many. Not counted by kernels before 5.12 (6.7 for kprobes; no series then). A kretprobe's own misses (its instances ran out) are not program runs and not in this counter.",
);
pub const EVENTS_LOST: Metric = counter(
    "cgwatch_events_lost",
    false,
    &["reason"],
    "Kernel events that could not be recorded, by reason: ring_buffer (the cgroup event ring was full), seccomp_map, exit_map, oom_map, lifecycle_map (a counter map was full: raise --max-cgroups), task_map (per-thread state refused), event_ring (the event stream's ring was full), lifecycle_ring (a container start's latency or a container's lifetime was not observed: its ring was full).",
);
pub const EVENTS_SUPPRESSED: Metric = counter(
    "cgwatch_events_suppressed",
    true,
    &["type"],
    "Events of the JSON stream (--events) that the per-cgroup rate limit held back, by cgroup and type (seccomp, oom_kill, exit, container_start, exec_session); the counters above count them all.",
);
pub const EVENTS_WRITTEN: Metric = counter(
    "cgwatch_events_written",
    false,
    &["type"],
    "Lines of the JSON event stream (--events) written, by type (seccomp, oom_kill, exit, container_start, exec_session).",
);
pub const EVENTS_DROPPED: Metric = counter(
    "cgwatch_events_dropped",
    false,
    &["reason"],
    "Lines of the JSON event stream lost in the agent, by reason: queue_full (the destination was too slow), write_error (writing failed, e.g. a full disk).",
);
pub const MAP_ENTRIES: Metric = gauge(
    "cgwatch_map_entries",
    false,
    &["map"],
    "Entries in each kernel counter map (seccomp, exits, oom), counted at every rescan; compare with cgwatch_map_capacity.",
);
pub const MAP_CAPACITY: Metric = gauge(
    "cgwatch_map_capacity",
    false,
    &["map"],
    "Most entries each kernel counter map holds (from --max-cgroups); a full map loses new keys, counted in cgwatch_events_lost_total.",
);
pub const CGROUPS_NOT_SHOWN: Metric = gauge(
    "cgwatch_cgroups_not_shown",
    false,
    &[],
    "Live cgroups over --max-cgroups: their event counts are summed under the cgroup label (overflow).",
);
pub const PINNED: Metric = gauge(
    "cgwatch_pinned",
    false,
    &[],
    "1 when the counters and probe links are pinned below --pin-path (counts survive a restart and the probes count while the agent is down), 0 when not (no BPF filesystem, no permission, or --no-pin).",
);
pub const KERNEL_PREEMPTION: Metric = gauge(
    "cgwatch_kernel_preemption",
    false,
    &["model"],
    "The running kernel's preemption model (none, voluntary, full, lazy, rt; unknown when neither debugfs's sched/preempt, a preempt= boot parameter nor /boot/config-<release> says); always 1. Under full, lazy and rt the kernel can preempt a running probe and skip its other runs meanwhile (cgwatch_probe_skipped_runs_total), and --seccomp-mode auto counts seccomp verdicts from kprobes, which run with preemption off and skip far less.",
);
pub const BUILD_INFO: Metric =
    gauge("cgwatch_build_info", false, &["version", "kernel"], "cgwatch version and running kernel; always 1.");

/// Every metric, in the order of `docs/metrics.md`.
pub const ALL: &[Metric] = &[
    SECCOMP_VIOLATIONS,
    OOM_KILLS,
    PROCESS_EXITS,
    CONTAINER_EXITS,
    CONTAINER_STARTS,
    CONTAINER_EXEC_SESSIONS,
    CONTAINER_START_FAILURES,
    CONTAINER_START_DURATION,
    CONTAINER_LIFETIME,
    CGROUP_CPU_USAGE,
    CGROUP_CPU_THROTTLED,
    CGROUP_MEMORY_USAGE,
    CGROUP_MEMORY_WORKING_SET,
    CGROUP_MEMORY_LIMIT,
    CGROUP_MEMORY_EVENTS,
    CGROUP_PRESSURE,
    CONTAINER_INFO,
    CONTAINERS,
    HOST_CPU_SECONDS,
    HOST_CPU_USAGE_RATIO,
    HOST_PRESSURE,
    HOST_MEMORY_TOTAL,
    HOST_MEMORY_AVAILABLE,
    HOST_MEMORY_USAGE_RATIO,
    PROBE_ATTACHED,
    PROBE_SKIPPED_RUNS,
    SECCOMP_ACTION_OBSERVABLE,
    EVENTS_LOST,
    EVENTS_SUPPRESSED,
    EVENTS_WRITTEN,
    EVENTS_DROPPED,
    MAP_ENTRIES,
    MAP_CAPACITY,
    CGROUPS_NOT_SHOWN,
    PINNED,
    KERNEL_PREEMPTION,
    BUILD_INFO,
];

/// The catalog entry whose samples are named `sample` (`x_total` finds counter `x`).
pub fn by_sample_name(sample: &str) -> Option<&'static Metric> {
    ALL.iter().find(|m| match m.kind {
        Kind::Counter => sample.strip_suffix("_total") == Some(m.name),
        Kind::Gauge => sample == m.name,
        Kind::Histogram => ["_bucket", "_sum", "_count"].iter().any(|s| sample.strip_suffix(s) == Some(m.name)),
    })
}

/// The metrics reference table of `docs/metrics.md`, generated from [`ALL`].
pub fn markdown_table() -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n| --- | --- | --- | --- |\n");
    for m in ALL {
        let mut labels: Vec<String> = Vec::new();
        if m.per_cgroup {
            labels.push("*cg*".into());
        }
        labels.extend(m.labels.iter().map(|l| format!("`{l}`")));
        let _ = writeln!(out, "| `{}` | {} | {} | {} |", m.sample_name(), m.kind.as_str(), labels.join(", "), m.help);
    }
    out
}

/// Test support: `doc` (relative to the repository root) carries `want` between
/// `<!-- BEGIN GENERATED: <generator> -->` and `<!-- END GENERATED -->`; with `CGWATCH_BLESS`
/// set, a stale section is rewritten instead of failing (`regenerate` says how).
#[cfg(test)]
pub(crate) fn assert_generated_section(doc: &str, generator: &str, want: &str, regenerate: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(doc);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{doc}: {e}"));
    let begin = format!("<!-- BEGIN GENERATED: {generator} -->\n");
    let start = text.find(&begin).unwrap_or_else(|| panic!("{doc}: no generated-section start marker")) + begin.len();
    let end = text[start..].find("<!-- END GENERATED -->").unwrap_or_else(|| panic!("{doc}: no generated-section end marker")) + start;
    if text[start..end] != *want {
        if std::env::var_os("CGWATCH_BLESS").is_some() {
            std::fs::write(&path, format!("{}{want}{}", &text[..start], &text[end..])).unwrap();
            return;
        }
        panic!("{doc} differs from {generator}: run `{regenerate}` to regenerate it");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_unique_and_help_needs_no_escaping() {
        let mut seen = HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.sample_name()), "{} twice", m.name);
            assert!(m.name.starts_with("cgwatch_"), "{}", m.name);
            assert!(!m.name.ends_with("_total"), "{}: the encoder appends _total", m.name);
            assert!(!m.help.contains(['"', '\\', '\n']), "{}: help needs escaping", m.name);
            assert_eq!(by_sample_name(&m.sample_name()), Some(m));
        }
    }

    /// docs/metrics.md carries the generated table; `CGWATCH_BLESS=1 cargo test -p cgwatch
    /// catalog` rewrites it after a change to the catalog.
    #[test]
    fn docs_metrics_md_is_generated_from_the_catalog() {
        assert_generated_section(
            "docs/metrics.md",
            "cgwatch::catalog::markdown_table",
            &markdown_table(),
            "CGWATCH_BLESS=1 cargo test -p cgwatch --lib catalog",
        );
    }
}
