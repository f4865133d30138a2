//! One module per kernel hook. Each exposes a `tp_btf` entry point (preferred: BTF-typed
//! arguments, lower overhead) and a `raw_tp` one (fallback) that share the same `try_*` body.
//! Pointer arguments are read with `bpf_probe_read_kernel` so that both program types accept them.
//! `seccomp_filter` is an fexit program on a kernel function instead (the fast path), and
//! `oom_kill_process` a kprobe (where `mark_victim` lacks the victim task), and `audit_seccomp`
//! fexit or a kprobe (LOG verdicts), `ptrace_notify` fexit or a kprobe (TRACE stops) and
//! `user_notification` a kretprobe (USER_NOTIF replies).

mod audit_seccomp;
mod cgroup_mkdir;
mod floor;
mod cgroup_rmdir;
mod mark_victim;
mod oom_kill_process;
mod ptrace_notify;
mod sched_process_exec;
mod sched_process_exit;
mod seccomp_filter;
mod signal_generate;
mod sys_enter;
mod sys_exit;
mod user_notification;
