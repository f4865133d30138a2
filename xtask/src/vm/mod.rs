//! `cargo xtask vm-test`: the integration tests on distribution kernels, each booted under
//! qemu (`-accel tcg`: nested KVM is broken here) from an initramfs that holds busybox, the
//! agent, the workload and the real integration-test binaries.
//!
//! Kernels are Debian's cloud kernels, fetched with `apt-get download` through a private apt
//! configuration (the host's apt sources and state are not touched) and cached in
//! `$CGWATCH_VM_CACHE` (default `~/.cache/cgwatch-vm`), outside the repository.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{output, run};

pub mod arch;
pub use arch::Arch;

// Debian suites and the kernel each ships (`Arch::kernels`): a release's kernel version, or, for
// `sid` (unstable), the label `sid`: its kernel moves with every upload, so each run prints the
// release it booted (`uname -r`) and the package version.
/// Suites whose kernel moves: looked up on every run (`fetch_kernel`), the cached kernel replaced
/// when the suite has a newer one.
const ROLLING: [&str; 1] = ["sid"];
// Agent configurations (`Arch::modes`): `auto` (the seccomp fast path, fexit, on the x86_64
// kernels), `tracepoint` (`--seccomp-mode tracepoint`: the syscall tracepoints, tp_btf), `raw_tp`
// (the same with `--probe-mode raw_tp`: every tracepoint probe raw) and `kprobe`
// (`--seccomp-mode kprobe`: the kprobe / kretprobe fast path).
/// The modes a rolling suite runs in the whole matrix (`cargo xtask test`, or `vm-test` without
/// `--kernel`): `auto` (which takes the kprobe pair on sid's preemptible kernel) and `tracepoint`;
/// `--kernel sid` runs all four. The other two cost about 6 minutes of CI's 90.
const ROLLING_MODES: [&str; 2] = ["auto", "tracepoint"];
// qemu CPU model: `Arch::cpu` (`CGWATCH_VM_CPU` overrides it).
/// qemu accelerator (`CGWATCH_VM_ACCEL` overrides it): TCG, since nested KVM is broken here.
const DEFAULT_ACCEL: &str = "tcg";
/// Boots per kernel and mode when the kernel panics under emulation.
const MAX_BOOTS: u32 = 5;
/// Integration-test binaries that run inside the VMs (the others need the host's tools;
/// `lifecycle_vm` makes its containers with the workload's own runtime, without podman).
const TESTS: [&str; 4] = ["seccomp", "exits", "events", "lifecycle_vm"];

fn cache_dir() -> PathBuf {
    std::env::var_os("CGWATCH_VM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/cgwatch-vm")
    })
}

/// apt options for a private configuration of one suite.
fn apt_options(dir: &Path) -> Vec<String> {
    let d = dir.display();
    vec![
        format!("-oDir::Etc::SourceList={d}/sources.list"),
        "-oDir::Etc::SourceParts=/nonexistent".into(),
        format!("-oDir::State::Lists={d}/lists"),
        format!("-oDir::Cache={d}/cache"),
        "-oDebug::NoLocking=1".into(),
        "-oAPT::Sandbox::User=root".into(),
    ]
}

/// A private apt configuration for one Debian suite (`bookworm-backports`, `trixie`, ...) in the
/// cache, with its package lists updated: the options every apt command on it takes. The host's
/// apt sources and state are not touched.
fn private_apt(suite: &str, arch: &Arch) -> Result<Vec<String>> {
    let dir = cache_dir().join("apt").join(arch.suite_dir(suite));
    fs::create_dir_all(dir.join("lists/partial"))?;
    fs::create_dir_all(dir.join("cache/archives/partial"))?;
    fs::write(
        dir.join("sources.list"),
        format!(
            "deb [arch={} signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n",
            arch.debian
        ),
    )?;
    let mut opts = apt_options(&dir);
    if !arch.is_host() {
        // Another architecture's packages, without `dpkg --add-architecture` on the host.
        opts.push(format!("-oAPT::Architecture={}", arch.debian));
        opts.push(format!("-oAPT::Architectures::={}", arch.debian));
    }
    run(Command::new("apt-get").args(&opts).arg("-qq").arg("update"))?;
    Ok(opts)
}

/// A kernel of the matrix: its vmlinuz and the version of the Debian package it came from.
pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub package: String,
}

/// The release (`uname -r`) a cached `vmlinuz-RELEASE` boots.
fn release_of(vmlinuz: &Path) -> String {
    vmlinuz.file_name().map(|n| n.to_string_lossy().trim_start_matches("vmlinuz-").to_string()).unwrap_or_default()
}

/// The suite's cached vmlinuz, if any.
fn cached_kernel(boot: &Path) -> Option<PathBuf> {
    fs::read_dir(boot)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
}

/// The cached .deb files of a kernel release (`linux-image-RELEASE_VERSION_amd64.deb`, and
/// `linux-binary-RELEASE_...` where the image package is split).
fn debs_of(release: &str) -> Vec<PathBuf> {
    fs::read_dir(cache_dir().join("debs"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(&format!("-{release}_"))))
                .collect()
        })
        .unwrap_or_default()
}

/// A cached kernel, with its package version read from the name of its .deb.
fn cached(vmlinuz: PathBuf) -> Kernel {
    let package = debs_of(&release_of(&vmlinuz))
        .first()
        .and_then(|d| d.file_name()?.to_string_lossy().split('_').nth(1).map(str::to_string))
        .unwrap_or_else(|| "?".into());
    Kernel { vmlinuz, package }
}

/// The versioned image package behind the suite's `linux-image-cloud-<arch>`. It is not always
/// the first dependency: sid's metapackage depends on `linux-base-cloud-amd64` first.
fn cloud_image(opts: &[String], suite: &str, arch: &Arch) -> Result<String> {
    let meta = format!("linux-image-cloud-{}", arch.debian);
    let depends = output(Command::new("apt-cache").args(opts).args(["depends", &meta]))?;
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .with_context(|| format!("no kernel image behind {meta} in {suite}: {depends}"))
}

/// The vmlinuz of the suite's cloud kernel, downloaded once. A rolling suite (`ROLLING`) is looked
/// up on every run and its cached kernel replaced when the suite has a newer one; when the lookup
/// or the download fails, the cached kernel is used, with a warning (apt-get update itself only
/// warns when the archive cannot be reached, and the lists it had are used).
pub fn fetch_kernel(suite: &str, arch: &Arch) -> Result<Kernel> {
    let boot = cache_dir().join("boot").join(arch.suite_dir(suite));
    let old = cached_kernel(&boot);
    let rolling = ROLLING.contains(&suite);
    if let Some(found) = &old
        && !rolling
    {
        return Ok(cached(found.clone()));
    }
    let fetched = private_apt(suite, arch)
        .and_then(|opts| cloud_image(&opts, suite, arch).map(|image| (opts, image)))
        .and_then(|(opts, image)| download_kernel(suite, &opts, &image, &boot));
    let dest = match (fetched, old.clone()) {
        (Ok(dest), _) => dest,
        (Err(e), Some(old)) => {
            eprintln!("xtask: warning: cannot fetch {suite}'s current kernel ({e:#}); using the cached {}", old.display());
            return Ok(cached(old));
        }
        (Err(e), None) => return Err(e),
    };
    // The kernel this one replaces, and its .debs unless another suite boots the same release.
    if let Some(old) = old.filter(|o| *o != dest) {
        let old_release = release_of(&old);
        eprintln!("xtask: {suite} moved from {old_release} to {}: removing the old kernel from the cache", release_of(&dest));
        let _ = fs::remove_file(&old);
        let elsewhere = fs::read_dir(cache_dir().join("boot"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .any(|d| cached_kernel(&d).is_some_and(|k| release_of(&k) == old_release));
        if !elsewhere {
            for deb in debs_of(&old_release) {
                let _ = fs::remove_file(deb);
            }
        }
    }
    Ok(cached(dest))
}

/// `boot/vmlinuz-RELEASE` of the versioned kernel package `image` (`linux-image-RELEASE`),
/// downloaded and unpacked unless it is there already.
fn download_kernel(suite: &str, opts: &[String], image: &str, boot: &Path) -> Result<PathBuf> {
    let release = image.trim_start_matches("linux-image-").to_string();
    let dest = boot.join(format!("vmlinuz-{release}"));
    if dest.exists() {
        return Ok(dest);
    }
    eprintln!("xtask: fetching the Debian {suite} cloud kernel {release} (private apt config in {})", cache_dir().join("apt").display());
    // From Debian's 6.19 packaging on (sid), the image package only depends on the kernel: the
    // vmlinuz is in linux-binary-RELEASE, at /usr/lib/modules/RELEASE/vmlinuz (before, in the image
    // package itself, at /boot/vmlinuz-RELEASE).
    let image_depends = output(Command::new("apt-cache").args(opts).args(["depends", image]))?;
    let mut packages = vec![image.to_string()];
    packages.extend(
        image_depends
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("linux-binary-"))
            .map(str::to_string),
    );
    let debs = cache_dir().join("debs");
    fs::create_dir_all(&debs)?;
    run(Command::new("apt-get").args(opts).args(["-qq", "download"]).args(&packages).current_dir(&debs))?;
    let unpack = cache_dir().join("unpack").join(suite);
    let _ = fs::remove_dir_all(&unpack);
    fs::create_dir_all(&unpack)?;
    for package in &packages {
        let deb = fs::read_dir(&debs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_"))))
            .with_context(|| format!("downloaded .deb of {package} not found"))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
    }
    let vmlinuz = [unpack.join("boot").join(format!("vmlinuz-{release}")), unpack.join("usr/lib/modules").join(&release).join("vmlinuz")]
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| format!("no vmlinuz in {}", packages.join(", ")))?;
    fs::create_dir_all(boot)?;
    // Copied under a name `cached_kernel` does not take, then renamed: an interrupted copy is
    // never booted.
    let part = boot.join(format!(".vmlinuz-{release}.part"));
    fs::copy(&vmlinuz, &part)?;
    fs::rename(&part, &dest)?;
    let _ = fs::remove_dir_all(&unpack);
    Ok(dest)
}

/// A static busybox for the VM: the host's for x86_64, else Debian's `busybox-static` of that
/// architecture (bookworm's, downloaded once into the cache).
fn busybox(arch: &Arch) -> Result<PathBuf> {
    if arch.is_host() {
        return ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("busybox-static missing");
    }
    let dir = cache_dir().join("busybox").join(arch.debian);
    let bin = dir.join("bin/busybox");
    if bin.exists() {
        return Ok(bin);
    }
    let opts = private_apt("bookworm", arch)?;
    unpack_packages(&opts, &["busybox-static"], &dir)?;
    Ok(bin)
}

/// Downloads `packages` with the private apt options `opts` and unpacks them all into `dest`
/// (replaced as a whole: an interrupted unpack leaves no half tree there).
fn unpack_packages(opts: &[String], packages: &[&str], dest: &Path) -> Result<()> {
    let name = dest.file_name().context("unpack destination without a name")?.to_string_lossy().into_owned();
    let debs = cache_dir().join("apt-debs").join(&name);
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs)?;
    run(Command::new("apt-get").args(opts).args(["-qq", "download"]).args(packages).current_dir(&debs))?;
    let tmp = dest.with_file_name(format!("{name}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    for deb in fs::read_dir(&debs)? {
        run(Command::new("dpkg-deb").arg("-x").arg(deb?.path()).arg(&tmp))?;
    }
    let _ = fs::remove_dir_all(dest);
    fs::rename(&tmp, dest)?;
    Ok(())
}

/// Copies a cross-built `bin` and the cross libc's libraries it may need (a fixed set: the
/// host's `ldd` cannot read it) into the initramfs tree, the loader where PT_INTERP names it.
fn install_cross(root: &Path, bin: &Path, dest: &str, libs: &Path, arch: &Arch) -> Result<()> {
    fs::copy(bin, root.join(dest.trim_start_matches('/'))).with_context(|| format!("copy {}", bin.display()))?;
    let triple_dir = root.join("lib").join(format!("{}-linux-gnu", arch.triple.and_then(|t| t.split('-').next()).unwrap_or("")));
    let loader = root.join("lib").join(arch.cross_loader);
    if !loader.exists() {
        fs::copy(libs.join(arch.cross_loader), &loader).with_context(|| format!("copy {}", arch.cross_loader))?;
        for lib in arch.cross_needed {
            fs::copy(libs.join(lib), triple_dir.join(lib)).with_context(|| format!("copy {lib} from {}", libs.display()))?;
        }
    }
    Ok(())
}

/// Copies `bin` and the shared libraries it needs into the initramfs tree.
fn install_with_libs(root: &Path, bin: &Path, dest: &str) -> Result<()> {
    fs::copy(bin, root.join(dest.trim_start_matches('/'))).with_context(|| format!("copy {}", bin.display()))?;
    let ldd = output(Command::new("ldd").arg(bin)).unwrap_or_default();
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let target = root.join(lib.trim_start_matches('/'));
        if !target.exists() {
            fs::create_dir_all(target.parent().unwrap())?;
            fs::copy(lib, &target).with_context(|| format!("copy {lib}"))?;
        }
    }
    Ok(())
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+memory +cpu +pids" > /sys/fs/cgroup/cgroup.subtree_control
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
# As systemd does on a host: sched/preempt tells the agent the preemption model.
mount -t debugfs nodev /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
# The kernel prints audit records (seccomp's type=1326) through printk_ratelimit, 10 per 5 s;
# since 6.17 a raised burst counts only from the next interval, so it is raised before any test.
echo 100000 > /proc/sys/kernel/printk_ratelimit_burst
ip link set lo up
mode=$(sed -n 's/.*cgwatch.mode=\([a-z_]*\).*/\1/p' /proc/cmdline)
only=$(sed -n 's/.*cgwatch.only=\([a-z_]*\).*/\1/p' /proc/cmdline)
filter=$(sed -n 's/.*cgwatch.filter=\([a-z_0-9]*\).*/\1/p' /proc/cmdline)
repeat=$(sed -n 's/.*cgwatch.repeat=\([0-9]*\).*/\1/p' /proc/cmdline)
case "$mode" in
  auto) args="" ;;
  tracepoint) args="--seccomp-mode tracepoint" ;;
  raw_tp) args="--seccomp-mode tracepoint --probe-mode raw_tp" ;;
  kprobe) args="--seccomp-mode kprobe" ;;
esac
export CGWATCH_BIN=/bin/cgwatch CGWATCH_WORKLOAD_BIN=/bin/cgwatch-workload CGWATCH_AGENT_ARGS="$args" CGWATCH_VM=1
echo "VMTEST kernel $(uname -r) mode $mode"
cgwatch --no-pin --listen 127.0.0.1:19120 $args > /tmp/agent.log 2>&1 &
agent=$!
for i in $(seq 1 120); do wget -qO /tmp/m http://127.0.0.1:19120/metrics 2>/dev/null && break; sleep 0.5; done
grep -E '^cgwatch_(probe_attached|kernel_preemption)' /tmp/m | sed 's/^/VMPROBE /'
grep 'probe seccomp_filter' /tmp/agent.log | sed 's/^/VMLOG /'
kill $agent; wait $agent
grep -q . /proc/$agent/status 2>/dev/null && echo "VMTEST agent $agent still running"
if [ -n "$only" ]; then
  # `cargo xtask vm-test --only BIN:FILTER --repeat N`: one scenario, again and again.
  for i in $(seq 1 "${repeat:-1}"); do
    echo "VMTEST repetition $i"
    /tests/$only --test-threads=2 $filter 2>&1 | sed "s|^|VMOUT $only |"
  done
else
# The global OOM runs alone: the kernel may kill more than its victim (an agent of a test
# running beside it was seen killed too).
for t in /tests/*; do
  "$t" --test-threads=2 --skip a_global_oom_is_a_host_limit 2>&1 | sed "s|^|VMOUT $(basename $t) |"
done
/tests/exits --exact a_global_oom_is_a_host_limit 2>&1 | sed "s|^|VMOUT exits |"
fi
dmesg | grep -iE "kill|oom|segfault|traps:" | sed 's/^/VMDMESG /'
echo "VMTEST done"
poweroff -f
"#;

/// Builds an initramfs (uncompressed newc cpio) with the binaries under test; `agent`: a static
/// agent (the image's) instead of the build's.
fn build_initramfs(work: &Path, root_dir: &Path, tests: &BTreeMap<String, PathBuf>, arch: &Arch, agent: Option<&Path>) -> Result<PathBuf> {
    let root = work.join("initramfs");
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "tmp", "tests", "lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy(busybox(arch)?, root.join("bin/busybox"))?;
    fs::write(root.join("init"), INIT)?;
    run(Command::new("chmod").args(["+x"]).arg(root.join("init")))?;
    let bins = arch.release_dir(root_dir);
    let install = |bin: &Path, dest: &str| match arch.cross_libs {
        None => install_with_libs(&root, bin, dest),
        Some(libs) => install_cross(&root, bin, dest, Path::new(libs), arch),
    };
    match agent {
        Some(agent) => drop(fs::copy(agent, root.join("bin/cgwatch")).with_context(|| format!("copy {}", agent.display()))?),
        None => install(&bins.join("cgwatch"), "/bin/cgwatch")?,
    }
    install(&bins.join("cgwatch-workload"), "/bin/cgwatch-workload")?;
    for (name, exe) in tests {
        install(exe, &format!("/tests/{name}"))?;
    }
    let cpio = work.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("cd {} && find . | cpio -o -H newc --quiet > {}", root.display(), cpio.display()))
        .status()?;
    if !status.success() {
        bail!("cpio failed");
    }
    Ok(cpio)
}

/// Boots `vmlinuz` with the initramfs and returns the serial console output.
#[allow(clippy::too_many_arguments)]
fn boot(
    qemu: &Qemu,
    arch: &Arch,
    vmlinuz: &Path,
    initrd: &Path,
    mode: &str,
    only: Option<&Only>,
    log: &Path,
    timeout: Duration,
) -> Result<String> {
    let cpu = std::env::var("CGWATCH_VM_CPU").unwrap_or_else(|_| arch.cpu.into());
    let accel = std::env::var("CGWATCH_VM_ACCEL").unwrap_or_else(|_| DEFAULT_ACCEL.into());
    let mut child = Command::new(&qemu.bin)
        .args(qemu.data.iter().flat_map(|d| [Path::new("-L"), d.as_path()]))
        // No sound card: without `-audio none` qemu probes audio drivers and loads the system
        // qemu's modules, which abort a newer qemu unpacked beside it.
        .args(arch.machine)
        .args(["-accel", &accel, "-cpu", &cpu, "-smp", "2", "-m", "2048", "-nographic", "-no-reboot", "-audio", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        // Warnings reach the console (a soft lockup's stacks, on every CPU), and a lockup or a hung
        // task panics, which ends the boot at once instead of at the timeout.
        .arg(format!(
            "console={} panic=-1 loglevel=4 softlockup_panic=1 softlockup_all_cpu_backtrace=1 \
             hung_task_panic=1 cgwatch.mode={mode}{}",
            arch.console,
            only.map(Only::cmdline).unwrap_or_default()
        ))
        .stdin(Stdio::null())
        .stdout(fs::File::create(log)?)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("{} missing", qemu.bin.display()))?;
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("xtask: VM timed out after {timeout:?}");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(String::from_utf8_lossy(&fs::read(log)?).into_owned())
}

/// Oldest qemu whose TCG ran the matrix cleanly. Debian 12's qemu 7.2 soft-locked 5.10 and 6.1
/// guests now and then (both vCPUs spinning on a kernel text site just patched by
/// `text_poke_bp`, which every tracepoint attach does) and crashed 6.12 on about half its boots;
/// qemu 10.0 from bookworm-backports ran the same runs without either.
const MIN_QEMU: (u32, u32) = (8, 0);

fn qemu_version(bin: &Path) -> Option<(u32, u32)> {
    let text = output(Command::new(bin).arg("--version")).ok()?;
    let v = text.split_whitespace().skip_while(|w| *w != "version").nth(1)?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// The qemu binary and its firmware directories (`-L`): `$CGWATCH_VM_QEMU` (with
/// `$CGWATCH_VM_QEMU_DATA`, colon-separated), else the system's if it is at least `MIN_QEMU`,
/// else, on Debian 12, qemu from bookworm-backports unpacked into the cache (private apt
/// configuration; the system's packages are not touched).
pub fn qemu(arch: &Arch) -> Result<Qemu> {
    if let Some(q) = std::env::var_os("CGWATCH_VM_QEMU") {
        let data = std::env::var("CGWATCH_VM_QEMU_DATA").unwrap_or_default();
        return Ok(Qemu { bin: PathBuf::from(q), data: data.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect() });
    }
    let system = Qemu { bin: PathBuf::from(arch.qemu), data: Vec::new() };
    if qemu_version(&system.bin).is_some_and(|v| v >= MIN_QEMU) {
        return Ok(system);
    }
    let bookworm = fs::read_to_string("/etc/debian_version").is_ok_and(|v| v.starts_with("12"));
    if !bookworm {
        // Elsewhere the system's qemu it is (installed when missing: the arm64 one is not by
        // default).
        crate::ensure_apt_tools(&[(arch.qemu, arch.qemu_packages[0])])?;
        if qemu_version(&system.bin).is_none_or(|v| v < MIN_QEMU) {
            eprintln!("xtask: warning: qemu older than {}.{}: its TCG is known to lock up guests", MIN_QEMU.0, MIN_QEMU.1);
        }
        return Ok(system);
    }
    let root = cache_dir().join(if arch.is_host() { "qemu-bpo".to_string() } else { format!("qemu-bpo-{}", arch.debian) });
    let bin = root.join("usr/bin").join(arch.qemu);
    if !bin.exists() {
        eprintln!("xtask: fetching qemu from bookworm-backports (the system's qemu 7.2 TCG locks up guests)");
        let opts = private_apt("bookworm-backports", &arch::X86_64)?;
        unpack_packages(&opts, arch.qemu_packages, &root)?;
    }
    if qemu_version(&bin).is_none() {
        bail!("{} does not run (missing shared libraries? apt-get install {} brings them)", bin.display(), arch.qemu_packages[0]);
    }
    Ok(Qemu { bin, data: arch.qemu_data.iter().map(|d| root.join(d)).collect() })
}

/// A qemu binary and the firmware directories it needs (`-L`).
pub struct Qemu {
    bin: PathBuf,
    data: Vec<PathBuf>,
}

/// Test binaries by name, built by `cargo test --no-run`.
fn test_binaries(root: &Path, arch: &Arch) -> Result<BTreeMap<String, PathBuf>> {
    let json = output(
        &mut crate::cargo_for(root, arch.triple)
            .args(["test", "--release", "-p", "cgwatch-tests", "--no-run", "--message-format=json"]),
    )?;
    let mut out = BTreeMap::new();
    for line in json.lines() {
        for name in TESTS {
            if line.contains("\"reason\":\"compiler-artifact\"")
                && line.contains(&format!("\"name\":\"{name}\",\"src_path\""))
                && let Some(exe) = line.split("\"executable\":\"").nth(1).and_then(|s| s.split('"').next())
            {
                out.insert(name.to_string(), PathBuf::from(exe));
            }
        }
    }
    if out.len() != TESTS.len() {
        bail!("test binaries not found: {:?}", out.keys());
    }
    Ok(out)
}

/// One cell of the matrix.
struct Outcome {
    kernel: String,
    probes: Vec<String>,
    tests: BTreeMap<String, String>,
    finished: bool,
}

fn parse(log: &str) -> Outcome {
    let mut o = Outcome { kernel: "?".into(), probes: Vec::new(), tests: BTreeMap::new(), finished: false };
    for line in log.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(rest) = line.split_once("VMTEST kernel ").map(|(_, r)| r) {
            o.kernel = rest.split_whitespace().next().unwrap_or("?").to_string();
        } else if let Some(p) = line.strip_prefix("VMPROBE ").or_else(|| line.strip_prefix("VMLOG ")) {
            o.probes.push(p.to_string());
        } else if line.starts_with("VMTEST done") {
            o.finished = true;
        } else if let Some(rest) = line.strip_prefix("VMOUT ") {
            let (bin, text) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(t) = text.strip_prefix("test ")
                && let Some((name, result)) = t.split_once(" ... ")
            {
                // Repeated (`--only`): a failure in any repetition stays.
                let r = o.tests.entry(format!("{bin}::{name}")).or_insert_with(|| result.trim().to_string());
                if result.trim() != "ok" {
                    *r = result.trim().to_string();
                }
            }
        }
    }
    o
}

/// One cell of the printed matrix: a kernel (its label in `Arch::kernels`, the release it booted and
/// its package version) in one mode.
struct Row {
    label: String,
    release: String,
    package: String,
    mode: String,
    passed: usize,
    total: usize,
    finished: bool,
    attempts: u32,
    secs: u64,
    tests: BTreeMap<String, String>,
}

/// `--only BIN[:FILTER] --repeat N`: a subset of the tests, repeated in each boot.
pub struct Only {
    binary: String,
    filter: String,
    repeat: u32,
}

impl Only {
    pub fn parse(spec: &str, repeat: u32) -> Result<Only> {
        let (binary, filter) = spec.split_once(':').unwrap_or((spec, ""));
        let word = |s: &str| s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !TESTS.contains(&binary) || !word(filter) {
            bail!("--only {spec}: expected TEST_BINARY[:FILTER], a binary of {TESTS:?} and a filter of [a-z0-9_]");
        }
        Ok(Only { binary: binary.into(), filter: filter.into(), repeat: repeat.max(1) })
    }

    fn cmdline(&self) -> String {
        format!(" cgwatch.only={} cgwatch.filter={} cgwatch.repeat={}", self.binary, self.filter, self.repeat)
    }
}

/// Boots `arch`'s kernels (`only_suite`, else all) in its modes (`only_mode`, else all) and runs
/// the VM tests (`only`, else all) against the agent build, or against `agent` (a static binary:
/// the image's).
pub fn vm_test(
    root: &Path,
    arch: &Arch,
    only_suite: Option<&str>,
    only_mode: Option<&str>,
    only: Option<&Only>,
    agent: Option<&Path>,
) -> Result<()> {
    let tests = test_binaries(root, arch)?;
    let work = root.join(if arch.is_host() { "target/vm".to_string() } else { format!("target/vm-{}", arch.name) });
    fs::create_dir_all(&work)?;
    if let Some(agent) = agent {
        eprintln!("xtask: the agent under test is {}", agent.display());
    }
    let initrd = build_initramfs(&work, root, &tests, arch, agent)?;
    let qemu = qemu(arch)?;
    eprintln!("xtask: {} (version {:?})", qemu.bin.display(), qemu_version(&qemu.bin));
    let mut rows: Vec<Row> = Vec::new();
    let mut failed = 0;
    let matrix_start = Instant::now();
    for (suite, version) in arch.kernels.iter().filter(|(s, v)| only_suite.is_none_or(|o| o == *s || o == *v)) {
        let Kernel { vmlinuz, package } = fetch_kernel(suite, arch)?;
        let version = arch.label(version);
        eprintln!("xtask: {suite}: {} (package version {package})", vmlinuz.display());
        let rolling_subset = only_suite.is_none() && ROLLING.contains(suite);
        for mode in arch
            .modes
            .iter()
            .filter(|m| only_mode.is_none_or(|o| o == **m))
            .filter(|m| !rolling_subset || ROLLING_MODES.contains(m))
        {
            let log = work.join(format!("{suite}-{mode}.log"));
            // This qemu's TCG sometimes crashes the 6.12 kernel (double faults in kmalloc, even
            // at boot before any userspace runs): a run whose kernel panicked or hung is repeated, at
            // most MAX_BOOTS times, and the attempts are reported. A failing test is never retried.
            let mut attempts = 0;
            let start = Instant::now();
            let o = loop {
                attempts += 1;
                eprintln!("xtask: booting {} ({suite}), mode {mode}, attempt {attempts}", vmlinuz.display());
                let text = boot(&qemu, arch, &vmlinuz, &initrd, mode, only, &log, arch.timeout)?;
                // A run that outlasts the timeout hung: a crash too.
                let crashed = text.contains("Kernel panic") || !text.contains("VMTEST done");
                if crashed {
                    let _ = fs::copy(&log, work.join(format!("{suite}-{mode}.panic{attempts}.log")));
                }
                if !crashed || attempts == MAX_BOOTS {
                    break parse(&text);
                }
            };
            let secs = start.elapsed().as_secs();
            let passed = o.tests.values().filter(|r| *r == "ok").count();
            let total = o.tests.len();
            if !o.finished || total == 0 || passed != total {
                failed += 1;
                let _ = fs::copy(&log, work.join(format!("{suite}-{mode}.failed.log")));
            }
            println!(
                "\n## {version} ({}, package {package}) mode {mode}: {passed}/{total} passed{}, {attempts} boot(s), {secs} s",
                o.kernel,
                if o.finished { "" } else { ", VM did not finish" }
            );
            println!("probes: {}", o.probes.iter().map(|p| p.replace("cgwatch_probe_attached", "")).collect::<Vec<_>>().join(" "));
            for (name, result) in &o.tests {
                println!("| {name} | {result} |");
            }
            rows.push(Row {
                label: version.clone(),
                release: o.kernel,
                package: package.clone(),
                mode: mode.to_string(),
                passed,
                total,
                finished: o.finished,
                attempts,
                secs,
                tests: o.tests,
            });
        }
    }
    // kernel x mode x scenario: one row per scenario, one column per kernel and mode.
    let scenarios: std::collections::BTreeSet<&String> = rows.iter().flat_map(|r| r.tests.keys()).collect();
    println!("\n| scenario | {} |", rows.iter().map(|r| format!("{} {}", r.label, r.mode)).collect::<Vec<_>>().join(" | "));
    println!("| --- |{}", " --- |".repeat(rows.len()));
    for name in scenarios {
        let cells: Vec<&str> = rows.iter().map(|r| r.tests.get(name).map_or("-", String::as_str)).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    // The release each run booted (`uname -r`) and its package: what a label like `sid` stood for.
    println!("\n| kernel | uname -r | package | mode | passed | finished | boots | seconds |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {}/{} | {} | {} | {} |",
            r.label, r.release, r.package, r.mode, r.passed, r.total, r.finished, r.attempts, r.secs
        );
    }
    let scenarios_run: usize = rows.iter().map(|r| r.total).sum();
    let scenarios_ok: usize = rows.iter().map(|r| r.passed).sum();
    let elapsed = matrix_start.elapsed().as_secs();
    println!(
        "\nvm matrix: {}: {} of {} kernel x mode runs passed, {} of {} scenarios ok, {} min {} s",
        arch.name,
        rows.len() - failed,
        rows.len(),
        scenarios_ok,
        scenarios_run,
        elapsed / 60,
        elapsed % 60
    );
    if failed > 0 {
        bail!("{failed} kernel/mode combinations failed; serial logs in {}", work.display());
    }
    Ok(())
}
