//! cgwatch: per-cgroup seccomp violations, OOM kills and exits counted by eBPF probes, joined
//! with cgroup and host CPU / memory, served as Prometheus metrics.

pub mod btf;
pub mod catalog;
pub mod cgroups;
pub mod collectors;
pub mod config;
pub mod containers;
pub mod encoding;
pub mod events;
pub mod maps;
pub mod memory;
pub mod names;
pub mod pins;
pub mod preemption;
pub mod privileges;
pub mod probes;
pub mod signals;
pub mod tasks;
pub mod web;
