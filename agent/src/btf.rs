//! Kernel structure layouts from the running kernel's BTF (`/sys/kernel/btf/vmlinux`), handed to
//! the eBPF programs as the `KCONFIG` global: the programs never hard-code an offset.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use agent_common::{KernelConfig, config_flags};
use btf_rs::{Backend, Btf, Type};
use nix::sys::memfd::{MFdFlags, memfd_create};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF not found at {}: cgwatch needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error("cannot read kernel BTF at {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF: offset of {0} is not byte-aligned or too large")]
    BadOffset(String),
    #[error("kernel BTF lookup failed")]
    Lookup(#[from] btf_rs::Error),
}

/// The kernel BTF, read where it lies: btf-rs's mmap backend indexes the types of the mapped
/// file and looks each up when asked, where its default backend parses every type and name into
/// the heap (40 MiB for 5.5 MB of BTF, the agent's start-up peak).
pub struct KernelBtf {
    btf: Btf,
}

/// The field of `struct pt_regs` that holds the syscall number at the syscall tracepoints (and
/// after a seccomp verdict changed it): `orig_ax` (unsigned long) on x86_64, `syscallno` (s32,
/// before a u32 of padding) on arm64. The probes read a u64 there and keep its low 32 bits,
/// which is the number on both (little-endian).
#[cfg(not(target_arch = "aarch64"))]
const PT_REGS_SYSCALL_NR: &str = "orig_ax";
#[cfg(target_arch = "aarch64")]
const PT_REGS_SYSCALL_NR: &str = "syscallno";

impl KernelBtf {
    /// Maps `<sysfs>/kernel/btf/vmlinux`. Kernels before 6.16 cannot map it: there a copy in
    /// memory (a memfd) is mapped instead, and failing that the file is parsed into the heap.
    pub fn from_sysfs(sysfs: &Path) -> Result<Self, BtfError> {
        let path = sysfs.join("kernel/btf/vmlinux");
        if !path.exists() {
            return Err(BtfError::Missing { path });
        }
        let btf = Btf::from_file_with_backend(&path, Backend::Mmap)
            .or_else(|_| Self::map_copy(&path))
            .or_else(|_| Btf::from_file(&path))
            .map_err(|source| BtfError::Parse { path, source })?;
        Ok(Self { btf })
    }

    /// The file copied into a memfd, mapped through /proc/self/fd (btf-rs maps paths only).
    fn map_copy(path: &Path) -> Result<Btf, btf_rs::Error> {
        let memfd = memfd_create(c"cgwatch-btf", MFdFlags::MFD_CLOEXEC).map_err(io::Error::from)?;
        let mut copy = File::from(memfd);
        io::copy(&mut File::open(path)?, &mut copy)?;
        // The mapping keeps the memfd's pages; they go when the returned Btf is dropped.
        Btf::from_file_with_backend(format!("/proc/self/fd/{}", copy.as_raw_fd()), Backend::Mmap)
    }

    fn strukt(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        self.btf
            .resolve_types_by_name(name)
            .unwrap_or_default()
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))
    }

    /// Follows typedefs and qualifiers to a struct or union.
    fn resolve_aggregate(&self, member: &btf_rs::Member) -> Option<btf_rs::Struct> {
        let mut t = self.btf.resolve_chained_type(member).ok()?;
        loop {
            t = match t {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(x) => self.btf.resolve_chained_type(&x).ok()?,
                Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => {
                    self.btf.resolve_chained_type(&x).ok()?
                }
                Type::TypeTag(x) => self.btf.resolve_chained_type(&x).ok()?,
                _ => return None,
            }
        }
    }

    /// Bit offset of member `name` in `s`, looking through anonymous structs and unions.
    fn find_member(&self, s: &btf_rs::Struct, name: &str) -> Option<(u32, btf_rs::Member)> {
        for m in &s.members {
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            if mname == name {
                return Some((m.bit_offset(), m.clone()));
            }
            if mname.is_empty()
                && let Some(inner) = self.resolve_aggregate(m)
                && let Some((off, found)) = self.find_member(&inner, name)
            {
                return Some((m.bit_offset() + off, found));
            }
        }
        None
    }

    /// Byte offset of `path` (e.g. `["seccomp", "mode"]`) inside struct `strukt`.
    pub fn offset(&self, strukt: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut current = self.strukt(strukt)?;
        let mut bits = 0u32;
        for (i, name) in path.iter().enumerate() {
            let (off, member) =
                self.find_member(&current, name).ok_or_else(|| BtfError::NoMember {
                    strukt: strukt.to_string(),
                    member: path[..=i].join("."),
                })?;
            bits += off;
            if i + 1 < path.len() {
                current = self.resolve_aggregate(&member).ok_or_else(|| BtfError::NoMember {
                    strukt: strukt.to_string(),
                    member: path[..=i + 1].join("."),
                })?;
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::BadOffset(format!("{strukt}.{}", path.join("."))));
        }
        Ok(bits / 8)
    }

    pub fn size_of(&self, strukt: &str) -> Result<u32, BtfError> {
        let s = self.strukt(strukt)?;
        u32::try_from(s.size()).map_err(|_| BtfError::BadOffset(strukt.to_string()))
    }

    /// The arguments of a tracepoint as BTF sees them (`btf_trace_<name>`, whose first parameter
    /// is the context and is left out). `None` when the kernel has no such tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Option<Vec<Type>> {
        let typedef = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Typedef(t) => Some(t),
                _ => None,
            })?;
        let Type::Ptr(ptr) = self.btf.resolve_chained_type(&typedef).ok()? else {
            return None;
        };
        let Type::FuncProto(proto) = self.btf.resolve_chained_type(&ptr).ok()? else {
            return None;
        };
        Some(
            proto
                .parameters
                .iter()
                .skip(1)
                .filter_map(|p| self.btf.resolve_chained_type(p).ok())
                .collect(),
        )
    }

    /// True when the kernel has the function `name` (fentry/kprobe targets).
    /// The value of enumerator `name` of enum `enum_name` (e.g. `cgroup_subsys_id`,
    /// `memory_cgrp_id`).
    pub fn enum_value(&self, enum_name: &str, name: &str) -> Option<u32> {
        let types = self.btf.resolve_types_by_name(enum_name).ok()?;
        types.into_iter().find_map(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == name))
                .map(|m| m.val()),
            _ => None,
        })
    }

    /// Offsets of the memory cgroup fields the OOM probe reads, or `None` where the kernel has
    /// no memory controller (or a layout this version does not know).
    fn memcg_offsets(&self) -> Option<[u32; 8]> {
        let memcg_id = self.enum_value("cgroup_subsys_id", "memory_cgrp_id")?;
        let subsys = self.offset("css_set", &["subsys"]).ok()?;
        let usage = self.offset("page_counter", &["usage"]).ok()?;
        let max = self.offset("page_counter", &["max"]).ok()?;
        let memory = self.offset("mem_cgroup", &["memory"]).ok()?;
        let memsw = self.offset("mem_cgroup", &["memsw"]).or_else(|_| self.offset("mem_cgroup", &["swap"])).ok()?;
        Some([
            subsys + memcg_id * 8,
            self.offset("cgroup_subsys_state", &["parent"]).ok()?,
            self.offset("cgroup_subsys_state", &["cgroup"]).ok()?,
            self.offset("mem_cgroup", &["css"]).ok()?,
            memory + usage,
            memory + max,
            memsw + usage,
            memsw + max,
        ])
    }

    /// The parameters of kernel function `name`, if BTF has it.
    fn function_proto(&self, name: &str) -> Option<btf_rs::FuncProto> {
        let func = self.btf.resolve_types_by_name(name).ok()?.into_iter().find_map(|t| match t {
            Type::Func(f) => Some(f),
            _ => None,
        })?;
        match self.btf.resolve_chained_type(&func).ok()? {
            Type::FuncProto(proto) => Some(proto),
            _ => None,
        }
    }

    /// Number of parameters of kernel function `name`, if BTF has it.
    pub fn function_params(&self, name: &str) -> Option<u32> {
        u32::try_from(self.function_proto(name)?.parameters.len()).ok()
    }

    /// Position of kernel function `name`'s parameter called `param`, if BTF names it.
    pub fn function_param_index(&self, name: &str, param: &str) -> Option<u32> {
        let proto = self.function_proto(name)?;
        let i = proto.parameters.iter().position(|p| self.btf.resolve_name(p).is_ok_and(|n| n == param))?;
        u32::try_from(i).ok()
    }

    /// Offset in `struct pt_regs` of the register that passes a function's parameter `index` at
    /// its entry (the kernel's calling convention for this architecture).
    pub fn pt_regs_arg(&self, index: u32) -> Option<u32> {
        #[cfg(target_arch = "x86_64")]
        {
            let field = ["di", "si", "dx", "cx", "r8", "r9"].get(usize::try_from(index).ok()?)?;
            self.offset("pt_regs", &[field]).ok()
        }
        #[cfg(target_arch = "aarch64")]
        {
            // `regs[0..8]` carry the first eight parameters.
            (index < 8).then_some(())?;
            self.offset("pt_regs", &["regs"]).ok().map(|base| base + 8 * index)
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            let _ = index;
            None
        }
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .map(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
            .unwrap_or(false)
    }

    /// Everything the programs need, or the first thing this kernel lacks.
    pub fn kernel_config(&self) -> Result<KernelConfig, BtfError> {
        let mut flags = 0;
        if let Some(args) = self.tracepoint_args("mark_victim")
            && matches!(args.first(), Some(Type::Ptr(_)))
        {
            flags |= config_flags::MARK_VICTIM_HAS_TASK;
        }
        if self.tracepoint_args("sched_process_exit").is_some_and(|args| args.len() >= 2) {
            flags |= config_flags::EXIT_HAS_GROUP_DEAD;
        }
        let recheck = self.function_param_index("__seccomp_filter", "recheck_after_trace");
        let memcg = self.memcg_offsets();
        if memcg.is_some() {
            flags |= config_flags::HAS_MEMCG;
        }
        let chosen = self.offset("oom_control", &["chosen"]);
        let oc_memcg = self.offset("oom_control", &["memcg"]);
        if chosen.is_ok() && oc_memcg.is_ok() {
            flags |= config_flags::HAS_OOM_CONTROL;
        }
        // The resident-memory counters: `percpu_counter rss_stat[]` from 6.2, before that
        // `struct mm_rss_stat { atomic_long_t count[]; }`.
        let rss = match self.offset("mm_struct", &["rss_stat"]) {
            Ok(base) if self.strukt("mm_rss_stat").is_ok() => {
                self.offset("mm_rss_stat", &["count"]).ok().map(|count| (base + count, 8, 0))
            }
            Ok(base) => match (self.size_of("percpu_counter"), self.offset("percpu_counter", &["count"])) {
                (Ok(stride), Ok(count)) => Some((base, stride, count)),
                _ => None,
            },
            Err(_) => None,
        };
        let task_mm = self.offset("task_struct", &["mm"]);
        if rss.is_some() && task_mm.is_ok() {
            flags |= config_flags::HAS_RSS;
        }
        let (mm_rss_stat, mm_rss_stride, mm_rss_count) = rss.unwrap_or_default();
        let [css_set_memcg, css_parent, css_cgroup, memcg_css, mem_usage, mem_max, memsw_usage, memsw_max] =
            memcg.unwrap_or_default();
        Ok(KernelConfig {
            css_set_memcg,
            css_parent,
            css_cgroup,
            memcg_css,
            memcg_memory_usage: mem_usage,
            memcg_memory_max: mem_max,
            memcg_memsw_usage: memsw_usage,
            memcg_memsw_max: memsw_max,
            seccomp_filter_args: self.function_params("__seccomp_filter").unwrap_or(0),
            seccomp_filter_recheck_arg: recheck.unwrap_or(0),
            seccomp_recheck_reg: recheck.and_then(|i| self.pt_regs_arg(i)).unwrap_or(0),
            oom_control_chosen: chosen.unwrap_or(0),
            oom_control_memcg: oc_memcg.unwrap_or(0),
            task_comm: self.offset("task_struct", &["comm"])?,
            task_real_parent: self.offset("task_struct", &["real_parent"])?,
            task_pid: self.offset("task_struct", &["pid"])?,
            task_tgid: self.offset("task_struct", &["tgid"])?,
            task_mm: task_mm.unwrap_or(0),
            mm_rss_stat,
            mm_rss_stride,
            mm_rss_count,
            task_nsproxy: self.offset("task_struct", &["nsproxy"])?,
            nsproxy_mnt_ns: self.offset("nsproxy", &["mnt_ns"])?,
            task_seccomp_mode: self.offset("task_struct", &["seccomp", "mode"])?,
            task_exit_code: self.offset("task_struct", &["exit_code"])?,
            task_signal: self.offset("task_struct", &["signal"])?,
            task_thread_pid: self.offset("task_struct", &["thread_pid"])?,
            task_cgroups: self.offset("task_struct", &["cgroups"])?,
            task_group_leader: self.offset("task_struct", &["group_leader"])?,
            task_start_time: self.offset("task_struct", &["start_time"])?,
            signal_live: self.offset("signal_struct", &["live"])?,
            signal_oom_mm: self.offset("signal_struct", &["oom_mm"])?,
            signal_group_exit_code: self.offset("signal_struct", &["group_exit_code"])?,
            pid_level: self.offset("pid", &["level"])?,
            pid_numbers: self.offset("pid", &["numbers"])?,
            upid_size: self.size_of("upid")?,
            upid_nr: self.offset("upid", &["nr"])?,
            css_set_dfl_cgrp: self.offset("css_set", &["dfl_cgrp"])?,
            cgroup_kn: self.offset("cgroup", &["kn"])?,
            cgroup_root: self.offset("cgroup", &["root"])?,
            cgroup_root_hierarchy_id: self.offset("cgroup_root", &["hierarchy_id"])?,
            kernfs_node_id: self.offset("kernfs_node", &["id"])?,
            pt_regs_syscall_nr: self.offset("pt_regs", &[PT_REGS_SYSCALL_NR])?,
            siginfo_code: self.offset("kernel_siginfo", &["si_code"])?,
            siginfo_syscall: self.offset("kernel_siginfo", &["_sifields", "_sigsys", "_syscall"])?,
            task_sighand: self.offset("task_struct", &["sighand"])?,
            task_blocked: self.offset("task_struct", &["blocked"])?,
            sighand_action: self.offset("sighand_struct", &["action"])?,
            k_sigaction_size: self.size_of("k_sigaction")?,
            k_sigaction_handler: self.offset("k_sigaction", &["sa", "sa_handler"])?,
            binprm_filename: self.offset("linux_binprm", &["filename"])?,
            flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the running kernel's BTF; the expected values are fixed by the kernel ABI
    /// (uapi siginfo layout, x86_64 pt_regs) and so hold on every x86_64 kernel.
    #[test]
    fn offsets_from_running_kernel() {
        let Ok(btf) = KernelBtf::from_sysfs(Path::new("/sys")) else {
            eprintln!("no kernel BTF here; skipping");
            return;
        };
        let cfg = btf.kernel_config().expect("kernel config");
        assert_eq!(cfg.siginfo_code, 8);
        assert_eq!(cfg.siginfo_syscall, 24);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(cfg.pt_regs_syscall_nr, 120);
        // arm64: struct pt_regs { regs[31], sp, pc, pstate, orig_x0 272, syscallno 280, … }.
        #[cfg(target_arch = "aarch64")]
        assert_eq!(cfg.pt_regs_syscall_nr, 280);
        assert_eq!(cfg.upid_size, 16);
        // struct k_sigaction { struct sigaction sa { sa_handler, sa_flags, sa_restorer, sa_mask } }
        // on x86_64, sigset_t one word: the handler first, four words per signal.
        #[cfg(target_arch = "x86_64")]
        assert_eq!((cfg.k_sigaction_handler, cfg.k_sigaction_size), (0, 32));
        assert!(cfg.task_sighand > 0 && cfg.task_blocked > 0 && cfg.sighand_action > 0);
        // struct linux_binprm { ... struct file *file; ... const char *filename; ... }: never first.
        assert!(cfg.binprm_filename > 0);
        assert!(cfg.task_seccomp_mode > 0 && cfg.task_exit_code > 0);
        assert!(cfg.flags & config_flags::HAS_MEMCG != 0, "memory cgroup offsets");
        // __seccomp_filter(int this_syscall, const struct seccomp_data *sd, const bool
        // recheck_after_trace) before 6.15, (int this_syscall, const bool recheck_after_trace)
        // since: the flag is always the last parameter, found by its name.
        assert!(matches!(cfg.seccomp_filter_args, 2 | 3), "{}", cfg.seccomp_filter_args);
        assert_eq!(cfg.seccomp_filter_recheck_arg, cfg.seccomp_filter_args - 1);
        // x86_64: struct pt_regs { r15 … r8 at 0..64, ax 80, cx 88, dx 96, si 104, di 112, … }.
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!((btf.pt_regs_arg(0), btf.pt_regs_arg(1), btf.pt_regs_arg(2)), (Some(112), Some(104), Some(96)));
            assert_eq!(cfg.seccomp_recheck_reg, btf.pt_regs_arg(cfg.seccomp_filter_recheck_arg).unwrap());
        }
        assert_eq!(btf.function_param_index("__seccomp_filter", "this_syscall"), Some(0));
        assert_eq!(btf.function_param_index("__seccomp_filter", "no_such_parameter"), None);
        assert!(cfg.css_set_memcg > 0 && cfg.memcg_memory_max > cfg.memcg_memory_usage);
        // struct oom_control { zonelist, nodemask, memcg, ... chosen, ... }: two pointers first.
        assert!(cfg.flags & config_flags::HAS_OOM_CONTROL != 0);
        assert_eq!(cfg.oom_control_memcg, 16);
        assert!(cfg.oom_control_chosen > cfg.oom_control_memcg);
    }

    /// The file mapped (kernels >= 6.16), a mapped copy (older kernels) and btf-rs's parse into
    /// the heap (what the agent used before) give the same layout, every field of it.
    #[test]
    fn every_way_of_reading_gives_the_same_layout() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        let Ok(chosen) = KernelBtf::from_sysfs(Path::new("/sys")) else {
            eprintln!("no kernel BTF here; skipping");
            return;
        };
        let chosen = chosen.kernel_config().expect("kernel config");
        let copy = KernelBtf { btf: KernelBtf::map_copy(path).expect("mapped copy") };
        assert_eq!(copy.kernel_config().expect("kernel config from the copy"), chosen);
        let parsed = KernelBtf { btf: Btf::from_file(path).expect("parsed") };
        assert_eq!(parsed.kernel_config().expect("kernel config from the parse"), chosen);
    }

    #[test]
    fn missing_btf_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = KernelBtf::from_sysfs(dir.path()).err().expect("must fail");
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }
}
