//! The kernel's preemption model, and whether it preempts a running BPF program.
//!
//! A tracing program preempted mid-run keeps its per-CPU guard, and the kernel skips every other
//! run of it on that CPU until the preempted task resumes (`cgwatch_probe_skipped_runs_total`).
//! `none` and `voluntary` never preempt kernel code there; `full`, `lazy` and `rt` do. Kprobe
//! programs run with preemption off (they skip only while a preempted bpf() map operation holds
//! the CPU's `bpf_prog_active`), so `--seccomp-mode auto` prefers them where the model
//! preempts.

use std::{fmt, path::Path};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    None,
    Voluntary,
    Full,
    Lazy,
    Rt,
}

impl Model {
    pub fn as_str(self) -> &'static str {
        match self {
            Model::None => "none",
            Model::Voluntary => "voluntary",
            Model::Full => "full",
            Model::Lazy => "lazy",
            Model::Rt => "rt",
        }
    }

    /// Whether the kernel can preempt a BPF program while it runs.
    pub fn preempts_programs(self) -> bool {
        matches!(self, Model::Full | Model::Lazy | Model::Rt)
    }

    fn parse(s: &str) -> Option<Model> {
        Some(match s {
            "none" => Model::None,
            "voluntary" => Model::Voluntary,
            "full" => Model::Full,
            "lazy" => Model::Lazy,
            "rt" => Model::Rt,
            _ => return None,
        })
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The model, and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub model: Model,
    pub source: String,
}

/// The running kernel's model: debugfs's `sched/preempt` (the running one), else the
/// `preempt=` boot parameter of a `PREEMPT_DYNAMIC` kernel, else the model the kernel was built
/// with (`<rootfs>/boot/config-<release>`). `None` when none of these is readable.
pub fn detect(sysfs: &Path, procfs: &Path, rootfs: &Path, release: &str) -> Option<Detected> {
    let debugfs = sysfs.join("kernel/debug/sched/preempt");
    if let Some(model) = std::fs::read_to_string(&debugfs).ok().and_then(|s| from_debugfs(&s)) {
        return Some(Detected { model, source: debugfs.display().to_string() });
    }
    let config_path = rootfs.join("boot").join(format!("config-{release}"));
    let config = std::fs::read_to_string(&config_path).ok().map(|s| from_config(&s));
    let dynamic = config.as_ref().is_none_or(|c| c.dynamic);
    let cmdline = procfs.join("cmdline");
    if dynamic && let Some(model) = std::fs::read_to_string(&cmdline).ok().and_then(|s| from_cmdline(&s)) {
        return Some(Detected { model, source: format!("preempt= in {}", cmdline.display()) });
    }
    config.and_then(|c| c.model).map(|model| Detected { model, source: config_path.display().to_string() })
}

/// `none voluntary (full) lazy`: the running model is in parentheses.
fn from_debugfs(s: &str) -> Option<Model> {
    s.split_whitespace().find_map(|w| w.strip_prefix('(').and_then(|w| w.strip_suffix(')'))).and_then(Model::parse)
}

/// The last `preempt=` on the kernel command line.
fn from_cmdline(s: &str) -> Option<Model> {
    s.split_whitespace().rev().find_map(|w| w.strip_prefix("preempt=")).and_then(Model::parse)
}

struct Config {
    dynamic: bool,
    model: Option<Model>,
}

fn from_config(s: &str) -> Config {
    let set = |name: &str| s.lines().any(|l| l.trim() == format!("{name}=y"));
    let model = if set("CONFIG_PREEMPT_RT") {
        Some(Model::Rt)
    } else if set("CONFIG_PREEMPT_LAZY") {
        Some(Model::Lazy)
    } else if set("CONFIG_PREEMPT") {
        Some(Model::Full)
    } else if set("CONFIG_PREEMPT_VOLUNTARY") {
        Some(Model::Voluntary)
    } else if set("CONFIG_PREEMPT_NONE") {
        Some(Model::None)
    } else {
        None
    };
    Config { dynamic: set("CONFIG_PREEMPT_DYNAMIC"), model }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_model_is_read_from_each_source() {
        assert_eq!(from_debugfs("none voluntary (full) lazy \n"), Some(Model::Full));
        assert_eq!(from_debugfs("(lazy) full\n"), Some(Model::Lazy));
        assert_eq!(from_debugfs("none voluntary full lazy\n"), None);
        assert_eq!(from_cmdline("root=/dev/vda preempt=full quiet preempt=lazy\n"), Some(Model::Lazy));
        assert_eq!(from_cmdline("root=/dev/vda quiet\n"), None);
        assert_eq!(from_cmdline("preempt=sometimes\n"), None);
        let debian_6_12 = "CONFIG_PREEMPT_BUILD=y\n# CONFIG_PREEMPT_NONE is not set\nCONFIG_PREEMPT_VOLUNTARY=y\n\
                           # CONFIG_PREEMPT is not set\nCONFIG_PREEMPT_DYNAMIC=y\nCONFIG_PREEMPT_RCU=y\n";
        let c = from_config(debian_6_12);
        assert_eq!((c.dynamic, c.model), (true, Some(Model::Voluntary)));
        let c = from_config("CONFIG_PREEMPT=y\nCONFIG_PREEMPT_RT=y\n");
        assert_eq!((c.dynamic, c.model), (false, Some(Model::Rt)));
    }

    #[test]
    fn a_static_model_ignores_the_boot_parameter() {
        let dir = std::env::temp_dir().join(format!("cgwatch-preempt-{}", std::process::id()));
        let (sys, proc_, root) = (dir.join("sys"), dir.join("proc"), dir.join("root"));
        for d in [&sys, &proc_, &root.join("boot")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(proc_.join("cmdline"), "quiet preempt=full\n").unwrap();
        // Nothing but the command line: it is taken.
        let d = detect(&sys, &proc_, &root, "9.9.9").unwrap();
        assert_eq!(d.model, Model::Full);
        // A kernel built with one model only: the parameter does nothing.
        std::fs::write(root.join("boot/config-9.9.9"), "CONFIG_PREEMPT_VOLUNTARY=y\n").unwrap();
        assert_eq!(detect(&sys, &proc_, &root, "9.9.9").unwrap().model, Model::Voluntary);
        // debugfs says what runs.
        std::fs::create_dir_all(sys.join("kernel/debug/sched")).unwrap();
        std::fs::write(sys.join("kernel/debug/sched/preempt"), "none voluntary full (lazy)\n").unwrap();
        let d = detect(&sys, &proc_, &root, "9.9.9").unwrap();
        assert_eq!((d.model, d.model.preempts_programs()), (Model::Lazy, true));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(detect(&sys, &proc_, &root, "9.9.9"), None);
    }
}
