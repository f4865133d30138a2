//! `cgwatch_seccomp_action_observable{action,mode}`: which seccomp verdicts this agent counts
//! under their own `action` label here, and by which attach mode; 0 where a verdict is not
//! always told apart (the syscall tracepoints see TRACE and USER_NOTIF verdicts as a skipped
//! syscall, counted as `errno`; a TRACE without a tracer is that on every path), or where a LOG
//! verdict cannot be seen (no hook, or `kernel.seccomp.actions_logged` without `log`).

use std::{collections::BTreeMap, path::PathBuf};

use super::{Collector, Labels, gauge_family};
use crate::{catalog, encoding::Encoder, probes::ProbeStatus};

#[derive(Debug)]
pub struct SeccompObservableCollector {
    pub probes: Vec<ProbeStatus>,
    /// `/proc/sys/kernel/seccomp/actions_logged` (below the configured procfs).
    pub actions_logged: PathBuf,
}

impl SeccompObservableCollector {
    /// Says once at start-up when the LOG hook is attached but the sysctl hides LOG verdicts.
    pub fn new(probes: Vec<ProbeStatus>, procfs: &std::path::Path) -> Self {
        let actions_logged = procfs.join("sys/kernel/seccomp/actions_logged");
        if attached_mode(&probes, "seccomp_log").is_some() && let Ok(s) = std::fs::read_to_string(&actions_logged) && !logs_log_verdicts(&s) {
            log::warn!(
                "seccomp LOG verdicts are not counted: {} ({}) leaves out log",
                actions_logged.display(),
                s.trim()
            );
        }
        SeccompObservableCollector { probes, actions_logged }
    }
}

/// Whether `kernel.seccomp.actions_logged` (read at each scrape: an administrator may change
/// it) lets LOG verdicts reach `audit_seccomp`.
pub fn logs_log_verdicts(sysctl: &str) -> bool {
    sysctl.split_whitespace().any(|a| a == "log")
}

/// The mode `probe` attached with, if it did.
fn attached_mode(probes: &[ProbeStatus], probe: &str) -> Option<&'static str> {
    probes.iter().find(|p| p.probe == probe && p.attached).map(|p| p.mode)
}

/// (action, mode, observable) for each action, from the probes' state.
pub fn observable(probes: &[ProbeStatus], log_logged: bool) -> Vec<(&'static str, &'static str, bool)> {
    let probe = |name: &str| attached_mode(probes, name);
    // ERRNO: the fast path where attached, else the syscall tracepoints.
    let errno = probe("seccomp_filter").or_else(|| probe("seccomp_sys_exit"));
    // TRAP and kills: from the SIGSYS seccomp raises; kills that raise none (KILL_THREAD of a
    // non-last thread, every kill before 5.11) at the exit.
    let signal = probe("seccomp_signal");
    let exit = probe("process_exit");
    let kills = signal.and(exit);
    let log = probe("seccomp_log");
    // Both need the fast path attached (the table's `needs`).
    let trace = probe("seccomp_trace");
    let user_notif = probe("seccomp_user_notif");
    let off = "off";
    vec![
        ("errno", errno.unwrap_or(off), errno.is_some()),
        ("trap", signal.unwrap_or(off), signal.is_some()),
        ("kill_process", kills.unwrap_or(off), kills.is_some()),
        ("kill_thread", kills.unwrap_or(off), kills.is_some()),
        ("log", log.unwrap_or(off), log.is_some() && log_logged),
        // A TRACE that stops at a tracer is counted as trace where its hook is attached (beside
        // the fast path), but one without a tracer is answered ENOSYS exactly as an ERRNO(ENOSYS)
        // rule is, and counts as errno on every path: never all of them.
        ("trace", trace.or(errno).unwrap_or(off), false),
        // USER_NOTIF replies the syscall did not run after: their hook beside the fast path.
        ("user_notif", user_notif.or(errno).unwrap_or(off), user_notif.is_some()),
    ]
}

impl Collector for SeccompObservableCollector {
    fn encode(&self, encoder: &mut Encoder<'_>) {
        let logged = std::fs::read_to_string(&self.actions_logged).is_ok_and(|s| logs_log_verdicts(&s));
        let series: BTreeMap<Labels, i64> = observable(&self.probes, logged)
            .into_iter()
            .map(|(a, m, ok)| (vec![("action", a.to_string()), ("mode", m.to_string())], i64::from(ok)))
            .collect();
        gauge_family(encoder, &catalog::SECCOMP_ACTION_OBSERVABLE, &series);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `action` label, in the order of `cgwatch_seccomp_violations_total`'s documentation.
    const ACTIONS: [&str; 7] = ["errno", "trap", "kill_process", "kill_thread", "log", "trace", "user_notif"];

    fn status(probe: &'static str, mode: &'static str, attached: bool) -> ProbeStatus {
        ProbeStatus { probe, mode, attached, detail: String::new() }
    }

    #[test]
    fn each_action_is_observable_only_where_its_hook_is_attached() {
        // This host: the syscall tracepoints, no fexit or kprobes for audit_seccomp.
        let tracepoints = [
            status("seccomp_signal", "tp_btf", true),
            status("process_exit", "tp_btf", true),
            status("seccomp_filter", "fexit", false),
            status("seccomp_sys_exit", "tp_btf", true),
            status("seccomp_log", "fexit", false),
        ];
        let got = observable(&tracepoints, true);
        assert_eq!(got.len(), ACTIONS.len());
        assert!(got.iter().zip(ACTIONS).all(|(g, a)| g.0 == a));
        assert_eq!(got[0], ("errno", "tp_btf", true));
        assert_eq!(got[4], ("log", "off", false));
        assert_eq!(got[5], ("trace", "tp_btf", false));
        // The fast path with the LOG hook; LOG is blind when the sysctl leaves it out.
        let fast = [
            status("seccomp_signal", "raw_tp", true),
            status("process_exit", "raw_tp", true),
            status("seccomp_filter", "kprobe", true),
            status("seccomp_log", "kprobe", true),
        ];
        let got = observable(&fast, true);
        assert_eq!((got[0], got[3], got[4]), (("errno", "kprobe", true), ("kill_thread", "raw_tp", true), ("log", "kprobe", true)));
        assert_eq!(observable(&fast, false)[4], ("log", "kprobe", false));
        // Without their hooks, TRACE and USER_NOTIF fall into errno, on its path.
        assert_eq!((got[5], got[6]), (("trace", "kprobe", false), ("user_notif", "kprobe", false)));
        // With them: USER_NOTIF exact; TRACE never all (without a tracer it is an ENOSYS errno).
        let hooked = [&fast[..], &[status("seccomp_trace", "fexit", true), status("seccomp_user_notif", "kprobe", true)]].concat();
        let got = observable(&hooked, true);
        assert_eq!((got[5], got[6]), (("trace", "fexit", false), ("user_notif", "kprobe", true)));
        assert!(logs_log_verdicts("kill_process kill_thread trap errno user_notif trace log\n"));
        assert!(!logs_log_verdicts("kill_process kill_thread\n"));
    }
}
