//! Developer tasks: `cargo xtask build-ebpf | build | run -- ARGS | image | install | bench |
//! vm-test | fuzz | test`.
//!
//! Every task first makes sure the eBPF toolchain is there (nightly with rust-src, bpf-linker
//! built against the nightly toolchain's own LLVM) and says what it installs.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod fuzz;
mod ship;
mod vm;

#[derive(Parser)]
#[command(name = "xtask", about = "cgwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Compile the eBPF programs (agent-ebpf) with the same aya-build path the agent uses.
    BuildEbpf,
    /// Build everything in release mode: target/release/cgwatch with the programs embedded
    /// (with `--target aarch64-unknown-linux-gnu`: cross-built for arm64, in
    /// target/aarch64-unknown-linux-gnu/release, installing the cross toolchain when missing).
    Build {
        #[arg(long)]
        target: Option<String>,
    },
    /// Build, then run target/release/cgwatch with ARGS.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build the static agent and the container image localhost/cgwatch:<version> with podman
    /// (deploy/image/Containerfile, FROM scratch: nothing is pulled); prints its size. With
    /// `--arch arm64`: localhost/cgwatch:<version>-arm64, for linux/arm64 (cross-built).
    Image {
        /// Extra tags for the image (e.g. registry.example.com/cgwatch:0.1.0, to push).
        #[arg(long)]
        tag: Vec<String>,
        /// x86_64 or arm64.
        #[arg(long, default_value = "x86_64")]
        arch: String,
    },
    /// Build, then install the binary (/usr/local/bin/cgwatch), the hardened systemd unit and
    /// its environment file (kept when it exists); on a live systemd host, enable and start it.
    Install {
        /// Install below this directory instead of / (packaging, tests).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Build, then measure the agent's costs (needs root); the report goes to stdout and to
    /// target/bench-report.md, for BENCHMARKS.md.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build, then run the seccomp and exit integration tests on Debian's 5.10, 6.1 and 6.12
    /// cloud kernels and sid's (unstable: the newest Debian ships, looked up on every run) under
    /// qemu (TCG), in each agent mode (sid in auto and tracepoint only, unless `--kernel sid`);
    /// prints a kernel x mode x scenario table and the release each run booted.
    VmTest {
        /// The architecture to boot: x86_64 (the default) or arm64 (cross-built, under
        /// qemu-system-aarch64; Debian's 5.10 and 6.1 arm64 kernels, in auto, tracepoint and kprobe).
        #[arg(long, default_value = "x86_64")]
        arch: String,
        /// Only this kernel (suite or version: bullseye / 5.10, bookworm / 6.1, trixie / 6.12,
        /// sid).
        #[arg(long)]
        kernel: Option<String>,
        /// Only this mode: auto, tracepoint, raw_tp or kprobe (see vm::arch: arm64 has no raw_tp runs).
        #[arg(long)]
        mode: Option<String>,
        /// Only these tests, as TEST_BINARY[:FILTER] (e.g. `seccomp:parallel_threads`), to chase
        /// a flaky scenario; a test failing in any repetition is reported FAILED.
        #[arg(long)]
        only: Option<String>,
        /// Run the `--only` tests this many times in each boot.
        #[arg(long, default_value_t = 1, requires = "only")]
        repeat: u32,
        /// Test the image's agent (the static musl binary `cargo xtask image --arch ARCH` puts in
        /// it; built first) instead of the glibc build.
        #[arg(long)]
        image_agent: bool,
    },
    /// Run the cargo-fuzz targets in fuzz/ (every parser of outside text), each for SECONDS,
    /// from the checked-in corpus and regression inputs; fails on any crash, naming the input.
    /// Installs cargo-fuzz when missing; needs no BPF toolchain.
    Fuzz {
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
        /// Only these targets (default: all of fuzz/fuzz_targets/).
        targets: Vec<String>,
    },
    /// Build, then run every test: unit and integration tests on this kernel (needs root and a
    /// BTF kernel), the fuzz targets (`fuzz`, fuzz::DEFAULT_SECONDS each), then the VM matrix
    /// (`vm-test`: 5.10, 6.1, 6.12, sid x the modes of vm::arch::X86_64).
    Test {
        /// Skip the VM matrix (also skipped when a test filter is given).
        #[arg(long)]
        no_vm: bool,
        /// Skip the fuzz targets (also skipped when a test filter is given).
        #[arg(long)]
        no_fuzz: bool,
        /// Seconds per fuzz target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        fuzz_seconds: u64,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nightly toolchain (the eBPF crate needs -Z build-std, cargo-fuzz its sanitizer flags),
/// installed when missing.
fn ensure_nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed for the nightly toolchain")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain");
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    Ok(())
}

/// nightly + rust-src + bpf-linker, installed when missing.
fn ensure_toolchain() -> Result<()> {
    ensure_nightly()?;
    let components = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: installing rust-src for nightly");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    if which::which("bpf-linker").is_err() {
        install_bpf_linker()?;
    }
    Ok(())
}

/// Builds bpf-linker against the LLVM shipped inside the nightly toolchain, so that no system
/// LLVM is needed and the two always match.
fn install_bpf_linker() -> Result<()> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let dylib = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so") && n.contains("-rust-"))
        .with_context(|| format!("no libLLVM-*-rust-*.so in {}", lib.display()))?;
    let name = dylib.trim_start_matches("lib").trim_end_matches(".so").to_string();
    let major = name
        .trim_start_matches("LLVM-")
        .split('-')
        .next()
        .filter(|m| m.chars().all(|c| c.is_ascii_digit()))
        .with_context(|| format!("cannot read the LLVM version from {dylib}"))?
        .to_string();
    eprintln!("xtask: installing bpf-linker against the nightly toolchain's LLVM {major} ({dylib})");
    let rustflags = format!("-L {0} -l dylib={name} -C link-arg=-Wl,-rpath,{0}", lib.display());
    let install = |locked: bool| {
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "install", "bpf-linker", "--no-default-features", "--features"])
            .arg(format!("llvm-{major},no-llvm-linking"))
            .env("RUSTFLAGS", &rustflags);
        if locked {
            cmd.arg("--locked");
        }
        run(&mut cmd)
    };
    // --locked can fail when the published lockfile predates the toolchain.
    install(true).or_else(|_| install(false))
}

/// Installs the Debian packages whose commands are missing, saying so.
fn ensure_apt_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools.iter().filter(|(cmd, _)| which::which(cmd).is_err()).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let apt = || {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(apt().args(["-qq", "update"]))?;
    run(apt().args(["install", "-y", "-qq", "--no-install-recommends"]).args(&missing))
}

fn cargo(root: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root).env_remove("AYA_BUILD_SKIP");
    c
}

fn build(root: &Path) -> Result<()> {
    ensure_toolchain()?;
    run(cargo(root).args(["build", "--release", "--bins"]))
}

/// Cargo for `triple` (the host's when `None`): the cross linker and `--target` after the
/// subcommand are the caller's; the linker is named here.
pub fn cargo_for(root: &Path, triple: Option<&str>) -> CargoFor {
    CargoFor { cmd: cargo(root), triple: triple.map(str::to_string) }
}

/// A cargo command that puts `--target` after its subcommand.
pub struct CargoFor {
    cmd: Command,
    triple: Option<String>,
}

impl CargoFor {
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, args: I) -> Command {
        self.cmd.args(args);
        if let Some(t) = &self.triple {
            let linker = format!("CARGO_TARGET_{}_LINKER", t.to_uppercase().replace('-', "_"));
            let gcc = format!("{}-gcc", cross_prefix(t));
            self.cmd.arg("--target").arg(t).env(linker, gcc);
        }
        self.cmd
    }
}

/// The GNU triple of Debian's cross tools for a Rust target (`aarch64-linux-gnu`).
fn cross_prefix(triple: &str) -> String {
    triple.replace("-unknown-", "-")
}

/// Builds the agent and the workload for `arch`: the host's as `build`; another one with its
/// rustup target and Debian's cross gcc and libc, installed when missing.
fn cross_build(root: &Path, arch: &vm::Arch) -> Result<()> {
    ensure_toolchain()?;
    let Some(triple) = arch.triple else { return build(root) };
    ensure_rust_target(triple)?;
    ensure_cross_gcc(&cross_prefix(triple), arch.debian)?;
    run(&mut cargo_for(root, Some(triple)).args(["build", "--release", "--bins"]))
}

/// The rustup target `triple` (its standard library), added when missing.
pub fn ensure_rust_target(triple: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == triple) {
        eprintln!("xtask: installing the {triple} target");
        run(Command::new("rustup").args(["target", "add", triple]))?;
    }
    Ok(())
}

/// Debian's cross gcc `<prefix>-gcc` and the cross libc's headers for `debian_arch`, installed
/// when missing: the headers are only a Recommends of the gcc (its runtime, libc.so.6, comes in
/// as a dependency: not enough to compile ring's C, for glibc or musl).
pub fn ensure_cross_gcc(prefix: &str, debian_arch: &str) -> Result<()> {
    let gcc = format!("{prefix}-gcc");
    ensure_apt_tools(&[(gcc.as_str(), format!("gcc-{prefix}").as_str())])?;
    if !Path::new(&format!("/usr/{prefix}/include/stdio.h")).exists() {
        ensure_apt_tools(&[("/nonexistent", format!("libc6-dev-{debian_arch}-cross").as_str())])?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::BuildEbpf => {
            ensure_toolchain()?;
            // The agent's build script is the one place that compiles the programs
            // (aya_build::build_ebpf); building the agent's library runs it.
            run(cargo(&root).args(["build", "--release", "-p", "cgwatch", "--lib"]))?;
            eprintln!("xtask: eBPF object embedded in the cgwatch library (target/release/build/cgwatch-*/out/agent)");
        }
        Task::Build { target: None } => {
            build(&root)?;
            eprintln!("xtask: built {}", root.join("target/release/cgwatch").display());
        }
        Task::Build { target: Some(triple) } => {
            let arch = vm::arch::by_name(&triple).filter(|a| a.triple.is_some()).with_context(|| format!("--target {triple}: only aarch64-unknown-linux-gnu is supported"))?;
            cross_build(&root, arch)?;
            eprintln!("xtask: built {}", root.join("target").join(&triple).join("release/cgwatch").display());
        }
        Task::Run { args } => {
            build(&root)?;
            run(Command::new(root.join("target/release/cgwatch")).args(args))?;
        }
        Task::Image { tag, arch } => {
            let built = ship::image(&root, ship::image_arch(&arch)?, &tag)?;
            eprintln!("xtask: built {built}");
        }
        Task::Install { root: dest } => {
            build(&root)?;
            ship::install(&root, &dest)?;
        }
        Task::Bench { args } => {
            build(&root)?;
            // Benchmark 6 compares with node_exporter, 1 and 6b with a bpftrace script (unshare
            // mounts tracefs for it where the host has none mounted).
            ensure_apt_tools(&[
                ("prometheus-node-exporter", "prometheus-node-exporter"),
                ("bpftrace", "bpftrace"),
                ("unshare", "util-linux"),
            ])?;
            run(Command::new(root.join("target/release/cgwatch-bench"))
                .arg("--out")
                .arg(root.join("target/bench-report.md"))
                .args(args))?;
        }
        Task::VmTest { arch, kernel, mode, only, repeat, image_agent } => {
            let arch = vm::arch::by_name(&arch).with_context(|| format!("--arch {arch}: x86_64 or arm64"))?;
            cross_build(&root, arch)?;
            let agent = if image_agent { Some(ship::image_agent(&root, ship::image_arch(arch.name)?)?) } else { None };
            ensure_apt_tools(&[("qemu-system-x86_64", "qemu-system-x86"), ("busybox", "busybox-static"), ("cpio", "cpio")])?;
            let only = only.as_deref().map(|o| vm::Only::parse(o, repeat)).transpose()?;
            vm::vm_test(&root, arch, kernel.as_deref(), mode.as_deref(), only.as_ref(), agent.as_deref())?;
        }
        Task::Fuzz { seconds, targets } => fuzz::fuzz(&root, seconds, &targets)?,
        Task::Test { no_vm, no_fuzz, fuzz_seconds, args } => {
            build(&root)?;
            // unshare/setpriv run workloads; promtool checks the exposition and prometheus
            // scrapes the agent; podman + runc, and dockerd (the docker tests start their own),
            // run the real-container tests from an image of busybox-static and the test
            // workload.
            ensure_apt_tools(&[
                ("unshare", "util-linux"),
                ("setpriv", "util-linux"),
                ("promtool", "prometheus"),
                ("prometheus-alertmanager", "prometheus-alertmanager"),
                ("podman", "podman"),
                ("runc", "runc"),
                // dockerd, its containerd and the docker CLI.
                ("dockerd", "docker.io"),
                // podman kube play builds its pod's pause image from catatonit.
                ("catatonit", "catatonit"),
                ("busybox", "busybox-static"),
                ("systemd-analyze", "systemd"),
                // kubectl (with kustomize) comes from the Google Cloud CLI packages where they
                // are set up; Debian's kubernetes-client is the fallback.
                ("kubectl", "kubernetes-client"),
                // The TLS and basic auth tests make certificates and bcrypt hashes.
                ("openssl", "openssl"),
                ("htpasswd", "apache2-utils"),
                // The deploy test runs the arm64 image's binary.
                ("qemu-aarch64-static", "qemu-user-static"),
            ])?;
            // The deploy tests run the image (podman kube play) and validate the manifests
            // against the Kubernetes schema offline.
            ship::image(&root, &ship::IMAGE_ARCHES[0], &[])?;
            // And the arm64 image (cross-built; its binary runs under qemu-user in the deploy
            // test, and in the arm64 VM below).
            // A failure here is reported at the end, after everything else ran (the deploy test
            // then says the image is missing).
            let arm64_agent = ship::image_agent(&root, ship::image_arch("arm64")?);
            if let Err(e) = &arm64_agent {
                eprintln!("xtask: the arm64 image failed to build: {e:#}");
            }
            let validate = ship::kubernetes_validate()?;
            let systemd_rootfs = ship::systemd_rootfs()?;
            // --no-fail-fast: one run shows every failing test binary, not only the first.
            let host = run(cargo(&root)
                .args(["test", "--release", "--no-fail-fast"])
                .env("CGWATCH_KUBERNETES_VALIDATE", &validate)
                .env("CGWATCH_SYSTEMD_ROOTFS", &systemd_rootfs)
                .arg("--")
                .args(&args));
            // The fuzz targets and the matrix run even when a host test failed, so that one run
            // shows everything.
            let fuzzed = if no_fuzz || !args.is_empty() { Ok(()) } else { fuzz::fuzz(&root, fuzz_seconds, &[]) };
            let vms = if no_vm || !args.is_empty() {
                Ok(())
            } else {
                ensure_apt_tools(&[("qemu-system-x86_64", "qemu-system-x86"), ("cpio", "cpio")])?;
                let x86 = vm::vm_test(&root, &vm::arch::X86_64, None, None, None, None);
                // One arm64 run, the image's agent on bookworm's 6.1 in `auto` (the kprobe pair:
                // the fast path of arm64 kernels before 6.4); the whole arm64 matrix
                // (`cargo xtask vm-test --arch arm64`, about 25 minutes) does not fit CI's time.
                let arm64 = match &arm64_agent {
                    Ok(agent) => cross_build(&root, &vm::arch::ARM64)
                        .and_then(|()| vm::vm_test(&root, &vm::arch::ARM64, Some("6.1"), Some("auto"), None, Some(agent))),
                    Err(_) => Ok(()),
                };
                match (x86, arm64) {
                    (Err(x), Err(a)) => Err(x.context(format!("and the arm64 run: {a:#}"))),
                    (x, a) => x.and(a),
                }
            };
            host.context("host tests failed")?;
            fuzzed.context("fuzzing failed")?;
            vms.context("VM matrix failed")?;
            arm64_agent.context("the arm64 image")?;
        }
    }
    Ok(())
}
