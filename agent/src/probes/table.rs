//! The probe table: every probe, the ways it can attach (one row per mode or program variant,
//! tried in order) and when it must stay off.

use std::fmt;

use agent_common::{KernelConfig, config_flags};

use crate::config::{ProbeMode, SeccompMode};

/// How a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// BTF-enabled tracepoint (`tp_btf`), kernel >= 5.5.
    TpBtf,
    /// Raw tracepoint (`raw_tp`), kernel >= 4.17.
    RawTp,
    /// fexit on a kernel function (BPF trampoline), kernel >= 5.5 with BTF for the function.
    Fexit,
    /// kprobe on a kernel function (`CONFIG_KPROBES`).
    Kprobe,
    /// kprobe on a kernel function's entry (`program`) and kretprobe on its return (the
    /// program named by `KRETPROBE_OF`).
    KprobePair,
}

/// The kretprobe of a `Mode::KprobePair` row is the entry program's name with this suffix
/// replacing `_kprobe`.
pub(super) const KRETPROBE_OF: (&str, &str) = ("_kprobe", "_kretprobe");

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::TpBtf => "tp_btf",
            Mode::RawTp => "raw_tp",
            Mode::Fexit => "fexit",
            Mode::Kprobe | Mode::KprobePair => "kprobe",
        }
    }

    /// Runs through `trace_call_bpf` (kprobes), not a trampoline or a raw tracepoint.
    pub fn is_kprobe(self) -> bool {
        matches!(self, Mode::Kprobe | Mode::KprobePair)
    }
}

/// What the `disable_if` predicates look at.
#[derive(Debug, Clone, Copy)]
pub struct ProbeContext {
    pub kernel: KernelConfig,
    pub kernel_version: (u32, u32),
    pub seccomp_mode: SeccompMode,
    pub probe_mode: ProbeMode,
    /// The kernel preempts running programs (`crate::preemption`) and has kprobes: in
    /// `--seccomp-mode auto` the function probes take their kprobe rows, not fexit.
    pub prefer_kprobes: bool,
}

/// One way to attach one probe. Rows of the same probe are tried in order until one attaches.
#[derive(Clone, Copy)]
pub struct ProbeSpec {
    /// The `probe` label.
    pub probe: &'static str,
    /// Tracepoint name.
    pub hook: &'static str,
    pub mode: Mode,
    /// Program name in the eBPF object.
    pub program: &'static str,
    /// Oldest kernel (major, minor) this row works on.
    pub min_kernel: (u32, u32),
    /// Returns why the probe must not be attached in this configuration, if so.
    pub disable_if: fn(&ProbeContext) -> Option<&'static str>,
    /// Probes that must be attached first: without them this one would count wrongly (a
    /// `sys_exit` without `sys_enter` would see every syscall as skipped).
    pub needs: &'static [&'static str],
    /// Whether this row fits this kernel (a program variant for one tracepoint signature).
    pub fits: fn(&ProbeContext) -> bool,
    /// Probes that do this one's work when attached: then this one stays off, so that nothing
    /// is counted twice (the fexit fast path replaces the syscall tracepoints).
    pub unless_attached: &'static [&'static str],
}

impl fmt::Debug for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({}, {})", self.probe, self.hook, self.mode.as_str())
    }
}

fn never(_: &ProbeContext) -> Option<&'static str> {
    None
}

fn always(_: &ProbeContext) -> bool {
    true
}

fn exit_has_group_dead(c: &ProbeContext) -> bool {
    c.kernel.flags & config_flags::EXIT_HAS_GROUP_DEAD != 0
}

fn exit_lacks_group_dead(c: &ProbeContext) -> bool {
    !exit_has_group_dead(c)
}

fn unless_syscall_tracking(c: &ProbeContext) -> Option<&'static str> {
    match c.seccomp_mode {
        SeccompMode::Auto | SeccompMode::Tracepoint => None,
        SeccompMode::Signals => Some("--seccomp-mode=signals counts no ERRNO verdicts"),
        SeccompMode::Off => Some("--seccomp-mode=off"),
        SeccompMode::Fexit => Some("--seccomp-mode=fexit"),
        SeccompMode::Kprobe => Some("--seccomp-mode=kprobe"),
    }
}

fn unless_seccomp(c: &ProbeContext) -> Option<&'static str> {
    (c.seccomp_mode == SeccompMode::Off).then_some("--seccomp-mode=off")
}

fn unless_mark_victim_has_task(c: &ProbeContext) -> Option<&'static str> {
    (c.kernel.flags & config_flags::MARK_VICTIM_HAS_TASK == 0)
        .then_some("mark_victim carries only a pid on this kernel; OOM kills are counted at the victim's exit")
}

macro_rules! probe_rows {
    ($probe:literal, $hook:literal, $btf:literal, $raw:literal, $disable:expr) => {
        probe_rows!($probe, $hook, $btf, $raw, $disable, [], always)
    };
    ($probe:literal, $hook:literal, $btf:literal, $raw:literal, $disable:expr, $needs:expr) => {
        probe_rows!($probe, $hook, $btf, $raw, $disable, $needs, always)
    };
    ($probe:literal, $hook:literal, $btf:literal, $raw:literal, $disable:expr, $needs:expr, $fits:expr) => {
        [
            ProbeSpec {
                probe: $probe,
                hook: $hook,
                mode: Mode::TpBtf,
                program: $btf,
                min_kernel: (5, 5),
                disable_if: $disable,
                needs: &$needs,
                fits: $fits,
                unless_attached: &[],
            },
            ProbeSpec {
                probe: $probe,
                hook: $hook,
                mode: Mode::RawTp,
                program: $raw,
                min_kernel: (4, 17),
                disable_if: $disable,
                needs: &$needs,
                fits: $fits,
                unless_attached: &[],
            },
        ]
    };
}

/// The same rows, kept off while any of `probes` is attached.
const fn unless_attached(mut rows: [ProbeSpec; 2], probes: &'static [&'static str]) -> [ProbeSpec; 2] {
    rows[0].unless_attached = probes;
    rows[1].unless_attached = probes;
    rows
}

fn unless_fast_path(c: &ProbeContext) -> Option<&'static str> {
    match c.seccomp_mode {
        SeccompMode::Auto | SeccompMode::Fexit | SeccompMode::Kprobe => None,
        SeccompMode::Tracepoint => Some("--seccomp-mode=tracepoint"),
        SeccompMode::Signals => Some("--seccomp-mode=signals counts no ERRNO verdicts"),
        SeccompMode::Off => Some("--seccomp-mode=off"),
    }
}

/// `__seccomp_filter(this_syscall, recheck_after_trace)` (6.15 on): the program reads the flag
/// as its second argument, so BTF must name it there (or not at all: TRACE stops uncounted).
fn seccomp_filter_args_2(c: &ProbeContext) -> bool {
    c.kernel.seccomp_filter_args == 2 && matches!(c.kernel.seccomp_filter_recheck_arg, 0 | 1) && unless_kprobe_mode(c)
}

/// `__seccomp_filter(this_syscall, sd, recheck_after_trace)` (before 6.15): the flag third.
fn seccomp_filter_args_3(c: &ProbeContext) -> bool {
    c.kernel.seccomp_filter_args == 3 && matches!(c.kernel.seccomp_filter_recheck_arg, 0 | 2) && unless_kprobe_mode(c)
}

/// fexit rows of function probes: not in `--seccomp-mode kprobe`, which asks for the kprobes,
/// nor in `auto` on a kernel that preempts running programs (a preempted fexit program makes the
/// kernel skip its other runs on that CPU; kprobes run with preemption off).
fn unless_kprobe_mode(c: &ProbeContext) -> bool {
    match c.seccomp_mode {
        SeccompMode::Kprobe => false,
        SeccompMode::Auto => !c.prefer_kprobes,
        _ => true,
    }
}

/// Oldest kernel with fexit on a kernel function: BPF trampolines came in 5.5 on x86_64; arm64
/// got them in 6.0, but attaching one to a kernel function also needs ftrace direct calls,
/// which arm64 has since 6.4 (Debian's arm64 6.1 answers ENOTSUPP).
#[cfg(not(target_arch = "aarch64"))]
const FEXIT_MIN_KERNEL: (u32, u32) = (5, 5);
#[cfg(target_arch = "aarch64")]
const FEXIT_MIN_KERNEL: (u32, u32) = (6, 4);

/// The fast path for ERRNO verdicts: fexit on `__seccomp_filter`, one program per parameter
/// count (the return value's slot follows the parameters), else a kprobe / kretprobe pair on it
/// (no BPF trampolines, or BTF without the function).
const SECCOMP_FAST_PATH: [ProbeSpec; 3] = [
    fexit_row("seccomp_filter_fexit3", seccomp_filter_args_3),
    fexit_row("seccomp_filter_fexit2", seccomp_filter_args_2),
    ProbeSpec {
        probe: "seccomp_filter",
        hook: "__seccomp_filter",
        mode: Mode::KprobePair,
        program: "seccomp_filter_kprobe",
        min_kernel: (4, 17),
        disable_if: unless_fast_path,
        needs: &[],
        fits: always,
        unless_attached: &[],
    },
];

const fn fexit_row(program: &'static str, fits: fn(&ProbeContext) -> bool) -> ProbeSpec {
    ProbeSpec {
        probe: "seccomp_filter",
        hook: "__seccomp_filter",
        mode: Mode::Fexit,
        program,
        min_kernel: FEXIT_MIN_KERNEL,
        disable_if: unless_fast_path,
        needs: &[],
        fits,
        unless_attached: &[],
    }
}

/// LOG verdicts (complain mode): `audit_seccomp`, fexit else a kprobe. In `--seccomp-mode
/// kprobe` the kprobe, as for the fast path.
const SECCOMP_LOG: [ProbeSpec; 2] = [
    ProbeSpec {
        probe: "seccomp_log",
        hook: "audit_seccomp",
        mode: Mode::Fexit,
        program: "audit_seccomp_fexit",
        min_kernel: FEXIT_MIN_KERNEL,
        disable_if: unless_seccomp,
        needs: &[],
        fits: unless_kprobe_mode,
        unless_attached: &[],
    },
    ProbeSpec {
        probe: "seccomp_log",
        hook: "audit_seccomp",
        mode: Mode::Kprobe,
        program: "audit_seccomp_kprobe",
        min_kernel: (4, 18),
        disable_if: unless_seccomp,
        needs: &[],
        fits: always,
        unless_attached: &[],
    },
];

/// TRACE verdicts that stop at a tracer: `ptrace_notify`, fexit else a kprobe. Only beside the
/// fast path, whose return counts them (the marks would be left to no one), and only where BTF
/// names the recheck parameter (without it the recheck's return would count a second verdict).
const SECCOMP_TRACE: [ProbeSpec; 2] = [
    ProbeSpec {
        probe: "seccomp_trace",
        hook: "ptrace_notify",
        mode: Mode::Fexit,
        program: "ptrace_notify_fexit",
        min_kernel: FEXIT_MIN_KERNEL,
        disable_if: unless_recheck_is_named,
        needs: &["seccomp_filter"],
        fits: unless_kprobe_mode,
        unless_attached: &[],
    },
    ProbeSpec {
        probe: "seccomp_trace",
        hook: "ptrace_notify",
        mode: Mode::Kprobe,
        program: "ptrace_notify_kprobe",
        min_kernel: (4, 17),
        disable_if: unless_recheck_is_named,
        needs: &["seccomp_filter"],
        fits: always,
        unless_attached: &[],
    },
];

fn unless_recheck_is_named(c: &ProbeContext) -> Option<&'static str> {
    unless_fast_path(c).or_else(|| {
        (c.kernel.seccomp_filter_recheck_arg == 0 || c.kernel.seccomp_recheck_reg == 0)
            .then_some("kernel BTF names no recheck_after_trace parameter of __seccomp_filter; traced TRACE verdicts count as errno")
    })
}

/// USER_NOTIF verdicts the syscall does not run after: a kprobe on the entry of
/// `seccomp_do_user_notification` (a compiler clone in most kernels, absent from BTF: no fentry),
/// beside the fast path, whose return decides and counts them (CONTINUE, the syscall run, since
/// 5.5).
const SECCOMP_USER_NOTIF: [ProbeSpec; 1] = [ProbeSpec {
    probe: "seccomp_user_notif",
    hook: "seccomp_do_user_notification",
    mode: Mode::Kprobe,
    program: "user_notification_kprobe",
    min_kernel: (5, 5),
    disable_if: unless_fast_path,
    needs: &["seccomp_filter"],
    fits: always,
    unless_attached: &[],
}];

fn unless_oom_kill_process_needed(c: &ProbeContext) -> Option<&'static str> {
    if c.kernel.flags & config_flags::MARK_VICTIM_HAS_TASK != 0 {
        Some("not needed: mark_victim carries the victim and tells the limit that fired")
    } else if c.kernel.flags & config_flags::HAS_OOM_CONTROL == 0 {
        Some("kernel BTF has no struct oom_control; OOM kills are counted with limit=\"unknown\"")
    } else {
        None
    }
}

/// Where `mark_victim` carries only a pid: the OOM killer's decision, for the limit that fired.
const OOM_KILL_PROCESS: [ProbeSpec; 1] = [ProbeSpec {
    probe: "oom_kill_process",
    hook: "oom_kill_process",
    mode: Mode::Kprobe,
    program: "oom_kill_process_kprobe",
    min_kernel: (4, 17),
    disable_if: unless_oom_kill_process_needed,
    needs: &[],
    fits: always,
    unless_attached: &[],
}];

const EXIT_GD: [ProbeSpec; 2] = probe_rows!(
    "process_exit",
    "sched_process_exit",
    "sched_process_exit_gd_btf",
    "sched_process_exit_gd_raw",
    never,
    [],
    exit_has_group_dead
);
const EXIT_NO_GD: [ProbeSpec; 2] = probe_rows!(
    "process_exit",
    "sched_process_exit",
    "sched_process_exit_btf",
    "sched_process_exit_raw",
    never,
    [],
    exit_lacks_group_dead
);

/// Kprobe hooks whose arguments the programs do not read: where the kernel has only a compiler
/// clone of the function (`.isra.0`, whose parameters may differ), the clone serves as well.
pub const CLONE_OK: [&str; 1] = ["seccomp_do_user_notification"];

/// Every probe, in attach order, each with its rows in order of preference.
pub static PROBES: [&[ProbeSpec]; 13] = [
    &probe_rows!("cgroup_mkdir", "cgroup_mkdir", "cgroup_mkdir_btf", "cgroup_mkdir_raw", never),
    &probe_rows!("cgroup_rmdir", "cgroup_rmdir", "cgroup_rmdir_btf", "cgroup_rmdir_raw", never),
    // With group_dead (>= 6.16) or without it, tp_btf before raw_tp.
    &[EXIT_GD[0], EXIT_NO_GD[0], EXIT_GD[1], EXIT_NO_GD[1]],
    // Container starts and exec sessions (docs/lifecycle.md).
    &probe_rows!("process_exec", "sched_process_exec", "sched_process_exec_btf", "sched_process_exec_raw", never),
    &probe_rows!("oom_mark_victim", "mark_victim", "mark_victim_btf", "mark_victim_raw", unless_mark_victim_has_task),
    &OOM_KILL_PROCESS,
    &probe_rows!("seccomp_signal", "signal_generate", "signal_generate_btf", "signal_generate_raw", unless_seccomp),
    &SECCOMP_FAST_PATH,
    &SECCOMP_LOG,
    &SECCOMP_TRACE,
    &SECCOMP_USER_NOTIF,
    &unless_attached(
        probe_rows!("seccomp_sys_enter", "sys_enter", "sys_enter_btf", "sys_enter_raw", unless_syscall_tracking),
        &["seccomp_filter"],
    ),
    &unless_attached(
        probe_rows!(
            "seccomp_sys_exit",
            "sys_exit",
            "sys_exit_btf",
            "sys_exit_raw",
            unless_syscall_tracking,
            ["seccomp_sys_enter"]
        ),
        &["seccomp_filter"],
    ),
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn probe_table_is_consistent() {
        let mut names = HashSet::new();
        for rows in PROBES {
            assert!(names.insert(rows[0].probe), "duplicate probe {}", rows[0].probe);
            assert!(rows.iter().all(|r| r.probe == rows[0].probe && r.hook == rows[0].hook));
            if matches!(rows[0].mode, Mode::Fexit | Mode::Kprobe) {
                // Function probes: fexit rows first, then kprobes; never a tracepoint.
                assert!(rows.iter().all(|r| matches!(r.mode, Mode::Fexit | Mode::Kprobe | Mode::KprobePair)));
                assert!(rows.windows(2).all(|w| w[0].mode == Mode::Fexit || w[1].mode != Mode::Fexit));
            } else {
                assert_eq!(rows[0].mode, Mode::TpBtf, "tp_btf is preferred");
            }
            for need in rows[0].needs {
                assert!(names.contains(need), "{} needs {need}, which must come before it", rows[0].probe);
            }
        }
    }

    #[test]
    fn seccomp_modes_disable_the_right_probes() {
        let mut ctx = ProbeContext {
            kernel: KernelConfig::default(),
            kernel_version: (6, 18),
            seccomp_mode: SeccompMode::Signals,
            probe_mode: ProbeMode::Auto,
            prefer_kprobes: false,
        };
        let disabled = |ctx: &ProbeContext| -> Vec<&str> {
            PROBES.iter().filter(|r| (r[0].disable_if)(ctx).is_some()).map(|r| r[0].probe).collect()
        };
        let no_fast_path = ["seccomp_filter", "seccomp_trace", "seccomp_user_notif", "seccomp_sys_enter", "seccomp_sys_exit"];
        assert_eq!(disabled(&ctx), [&["oom_mark_victim", "oom_kill_process"][..], &no_fast_path].concat());
        // mark_victim with only a pid: the oom_kill_process kprobe tells the limit instead.
        ctx.kernel.flags = config_flags::HAS_OOM_CONTROL;
        assert_eq!(disabled(&ctx), [&["oom_mark_victim"][..], &no_fast_path].concat());
        ctx.seccomp_mode = SeccompMode::Off;
        ctx.kernel.flags = config_flags::MARK_VICTIM_HAS_TASK | config_flags::HAS_OOM_CONTROL;
        assert_eq!(
            disabled(&ctx),
            [
                "oom_kill_process",
                "seccomp_signal",
                "seccomp_filter",
                "seccomp_log",
                "seccomp_trace",
                "seccomp_user_notif",
                "seccomp_sys_enter",
                "seccomp_sys_exit"
            ]
        );
        // fexit: the fast path only, the tracepoints stay off (no fallback).
        ctx.seccomp_mode = SeccompMode::Fexit;
        ctx.kernel.seccomp_filter_args = 3;
        // TRACE stops only where BTF names the recheck parameter.
        assert_eq!(disabled(&ctx), ["oom_kill_process", "seccomp_trace", "seccomp_sys_enter", "seccomp_sys_exit"]);
        ctx.kernel.seccomp_filter_recheck_arg = 2;
        ctx.kernel.seccomp_recheck_reg = 96;
        assert_eq!(disabled(&ctx), ["oom_kill_process", "seccomp_sys_enter", "seccomp_sys_exit"]);
        // auto: the fast path, and the tracepoints unless it attaches.
        ctx.seccomp_mode = SeccompMode::Auto;
        assert_eq!(disabled(&ctx), ["oom_kill_process"]);
        // Which rows of the fast path may be tried: the fexit program for the kernel's parameter
        // count, then the kprobe pair; only the pair in kprobe mode or where BTF lacks the function.
        let fast = PROBES.iter().find(|r| r[0].probe == "seccomp_filter").unwrap();
        let fitting = |ctx: &ProbeContext| fast.iter().filter(|r| (r.fits)(ctx)).map(|r| r.program).collect::<Vec<_>>();
        assert_eq!(fitting(&ctx), ["seccomp_filter_fexit3", "seccomp_filter_kprobe"]);
        ctx.kernel.seccomp_filter_args = 2;
        // Each fexit program reads the recheck flag at the one position its layout has it.
        assert_eq!(fitting(&ctx), ["seccomp_filter_kprobe"]);
        ctx.kernel.seccomp_filter_recheck_arg = 1;
        assert_eq!(fitting(&ctx), ["seccomp_filter_fexit2", "seccomp_filter_kprobe"]);
        ctx.kernel.seccomp_filter_recheck_arg = 2;
        ctx.kernel.seccomp_filter_args = 0;
        assert_eq!(fitting(&ctx), ["seccomp_filter_kprobe"]);
        ctx.kernel.seccomp_filter_args = 3;
        // auto on a kernel that preempts running programs: the kprobes.
        ctx.prefer_kprobes = true;
        assert_eq!(fitting(&ctx), ["seccomp_filter_kprobe"]);
        ctx.seccomp_mode = SeccompMode::Fexit;
        assert_eq!(fitting(&ctx), ["seccomp_filter_fexit3", "seccomp_filter_kprobe"]);
        ctx.prefer_kprobes = false;
        ctx.seccomp_mode = SeccompMode::Kprobe;
        assert_eq!(fitting(&ctx), ["seccomp_filter_kprobe"]);
        assert_eq!(disabled(&ctx), ["oom_kill_process", "seccomp_sys_enter", "seccomp_sys_exit"]);
        // LOG verdicts: the kprobe only in kprobe mode, fexit first otherwise.
        let log = PROBES.iter().find(|r| r[0].probe == "seccomp_log").unwrap();
        let fitting = |ctx: &ProbeContext| log.iter().filter(|r| (r.fits)(ctx)).map(|r| r.program).collect::<Vec<_>>();
        assert_eq!(fitting(&ctx), ["audit_seccomp_kprobe"]);
        ctx.seccomp_mode = SeccompMode::Tracepoint;
        assert_eq!(fitting(&ctx), ["audit_seccomp_fexit", "audit_seccomp_kprobe"]);
        let enter = PROBES.iter().find(|r| r[0].probe == "seccomp_sys_enter").unwrap();
        assert_eq!(enter[0].unless_attached, ["seccomp_filter"]);
    }
}
