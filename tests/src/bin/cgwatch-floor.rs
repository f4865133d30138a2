//! Attaches only the empty `floor_*` programs of the agent's eBPF object to sys_enter and
//! sys_exit (`tp_btf`, default, or `raw_tp`), the two that only keep the per-thread mark of a
//! filtered task (`state`), or the agent's own two syscall programs alone (`agent`), then waits
//! until stdin closes: the cost floor for the syscall-overhead benchmark.

use std::io::Read as _;

use anyhow::{Context as _, Result};
use aya::{
    EbpfLoader,
    programs::{BtfTracePoint, RawTracePoint},
};

fn main() -> Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "tp_btf".into());
    let btf = aya::Btf::from_sys_fs().context("kernel BTF")?;
    let mut kernel = cgwatch::btf::KernelBtf::from_sysfs(std::path::Path::new("/sys"))?.kernel_config()?;
    // As the agent loads it: task storage where the kernel has it, else the patched object.
    if cgwatch::probes::task_state::supported(cgwatch::probes::kernel_version()) && std::env::var_os("CGWATCH_FLOOR_HASH").is_none() {
        kernel.flags |= agent_common::config_flags::HAS_TASK_STORAGE;
    }
    let object = cgwatch::probes::task_state::LoadObject::for_flags(cgwatch::probes::EBPF_OBJECT, kernel.flags)?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .allow_unsupported_maps()
        .override_global("KCONFIG", &kernel, true)
        .load(object.bytes())?;
    for hook in ["sys_enter", "sys_exit"] {
        if mode == "agent" {
            // The agent's own syscall programs alone, without the rest of the agent.
            let p: &mut BtfTracePoint = ebpf.program_mut(&format!("{hook}_btf")).context("program")?.try_into()?;
            p.load(hook, &btf)?;
            p.attach()?;
        } else if mode == "state" {
            // Empty but for the per-thread mark an exact tracepoint method needs.
            let p: &mut BtfTracePoint =
                ebpf.program_mut(&format!("floor_state_{hook}_btf")).context("program")?.try_into()?;
            p.load(hook, &btf)?;
            p.attach()?;
        } else if mode == "raw_tp" {
            let p: &mut RawTracePoint =
                ebpf.program_mut(&format!("floor_{hook}_raw")).context("program")?.try_into()?;
            p.load()?;
            p.attach(hook)?;
        } else {
            let p: &mut BtfTracePoint =
                ebpf.program_mut(&format!("floor_{hook}_btf")).context("program")?.try_into()?;
            p.load(hook, &btf)?;
            p.attach()?;
        }
    }
    println!("ready");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}
