use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds `agent-ebpf` for the BPF target with the nightly toolchain and bpf-linker, and leaves
/// the object in `OUT_DIR/agent`, where `src/probes.rs` embeds it. `AYA_BUILD_SKIP=1` skips it
/// (for `cargo check` or clippy without the BPF toolchain): the object is then empty and the
/// agent refuses to start with a message saying so.
fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        let out = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?).join("agent");
        std::fs::write(&out, []).with_context(|| format!("writing {}", out.display()))?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("agent has no parent directory"))?
        .join("agent-ebpf");
    let root_dir = root_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    aya_build::build_ebpf(
        [Package { name: "agent-ebpf", root_dir, ..Default::default() }],
        Toolchain::default(),
    )
}
