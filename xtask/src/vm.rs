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

/// Debian suites and the kernel each ships.
pub const KERNELS: [(&str, &str); 3] = [("bullseye", "5.10"), ("bookworm", "6.1"), ("trixie", "6.12")];
/// `auto` and `raw_tp` are `--probe-mode`s; `fexit` is `--seccomp-mode fexit` (the fast path).
pub const MODES: [&str; 3] = ["auto", "raw_tp", "fexit"];
/// qemu CPU model (`CGWATCH_VM_CPU` overrides it).
const DEFAULT_CPU: &str = "max";
/// qemu accelerator (`CGWATCH_VM_ACCEL` overrides it): TCG, since nested KVM is broken here.
const DEFAULT_ACCEL: &str = "tcg";
/// Boots per kernel and mode when the kernel panics under emulation.
const MAX_BOOTS: u32 = 5;
/// Integration-test binaries that run inside the VMs (the others need the host's tools).
const TESTS: [&str; 2] = ["seccomp", "exits"];

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

/// The vmlinuz of the suite's cloud kernel, downloaded once.
pub fn fetch_kernel(suite: &str) -> Result<PathBuf> {
    let dir = cache_dir().join("apt").join(suite);
    let boot = cache_dir().join("boot").join(suite);
    if let Some(found) = fs::read_dir(&boot).ok().and_then(|mut d| d.find_map(|e| e.ok().map(|e| e.path()))) {
        return Ok(found);
    }
    fs::create_dir_all(dir.join("lists/partial"))?;
    fs::create_dir_all(dir.join("cache/archives/partial"))?;
    fs::write(
        dir.join("sources.list"),
        format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n"),
    )?;
    let opts = apt_options(&dir);
    eprintln!("xtask: fetching the Debian {suite} cloud kernel (private apt config in {})", dir.display());
    run(Command::new("apt-get").args(&opts).arg("-qq").arg("update"))?;
    let depends = output(Command::new("apt-cache").args(&opts).args(["depends", "linux-image-cloud-amd64"]))?;
    let image = depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("no kernel image behind linux-image-cloud-amd64 in {suite}: {depends}"))?
        .to_string();
    let debs = cache_dir().join("debs");
    fs::create_dir_all(&debs)?;
    run(Command::new("apt-get").args(&opts).args(["-qq", "download", &image]).current_dir(&debs))?;
    let deb = fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{image}_"))))
        .context("downloaded .deb not found")?;
    let unpack = cache_dir().join("unpack").join(suite);
    fs::create_dir_all(&unpack)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
    fs::create_dir_all(&boot)?;
    let vmlinuz = fs::read_dir(unpack.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .context("no vmlinuz in the kernel package")?;
    let dest = boot.join(vmlinuz.file_name().unwrap());
    fs::copy(&vmlinuz, &dest)?;
    let _ = fs::remove_dir_all(&unpack);
    Ok(dest)
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
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
ip link set lo up
mode=$(sed -n 's/.*cgwatch.mode=\([a-z_]*\).*/\1/p' /proc/cmdline)
# mode "fexit" is the fexit fast path for seccomp, the others a --probe-mode.
case "$mode" in fexit) args="--seccomp-mode fexit" ;; *) args="--probe-mode $mode" ;; esac
export CGWATCH_BIN=/bin/cgwatch CGWATCH_WORKLOAD_BIN=/bin/cgwatch-workload CGWATCH_AGENT_ARGS="$args" CGWATCH_VM=1
echo "VMTEST kernel $(uname -r) mode $mode"
cgwatch --listen 127.0.0.1:19120 $args > /tmp/agent.log 2>&1 &
agent=$!
for i in $(seq 1 120); do wget -qO /tmp/m http://127.0.0.1:19120/metrics 2>/dev/null && break; sleep 0.5; done
grep '^cgwatch_probe_attached' /tmp/m | sed 's/^/VMPROBE /'
grep 'probe seccomp_filter' /tmp/agent.log | sed 's/^/VMLOG /'
kill $agent; wait $agent
grep -q . /proc/$agent/status 2>/dev/null && echo "VMTEST agent $agent still running"
# The global OOM runs alone: the kernel may kill more than its victim (an agent of a test
# running beside it was seen killed too).
for t in /tests/*; do
  "$t" --test-threads=2 --skip a_global_oom_is_a_host_limit 2>&1 | sed "s|^|VMOUT $(basename $t) |"
done
/tests/exits --exact a_global_oom_is_a_host_limit 2>&1 | sed "s|^|VMOUT exits |"
dmesg | grep -iE "kill|oom|segfault|traps:" | sed 's/^/VMDMESG /'
echo "VMTEST done"
poweroff -f
"#;

/// Builds an initramfs (uncompressed newc cpio) with the binaries under test.
fn build_initramfs(work: &Path, root_dir: &Path, tests: &BTreeMap<String, PathBuf>) -> Result<PathBuf> {
    let root = work.join("initramfs");
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "tmp", "tests", "lib64", "lib/x86_64-linux-gnu"] {
        fs::create_dir_all(root.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).exists()).context("busybox-static missing")?;
    fs::copy(busybox, root.join("bin/busybox"))?;
    fs::write(root.join("init"), INIT)?;
    run(Command::new("chmod").args(["+x"]).arg(root.join("init")))?;
    install_with_libs(&root, &root_dir.join("target/release/cgwatch"), "/bin/cgwatch")?;
    install_with_libs(&root, &root_dir.join("target/release/cgwatch-workload"), "/bin/cgwatch-workload")?;
    for (name, exe) in tests {
        install_with_libs(&root, exe, &format!("/tests/{name}"))?;
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
fn boot(vmlinuz: &Path, initrd: &Path, mode: &str, log: &Path, timeout: Duration) -> Result<String> {
    let cpu = std::env::var("CGWATCH_VM_CPU").unwrap_or_else(|_| DEFAULT_CPU.into());
    let accel = std::env::var("CGWATCH_VM_ACCEL").unwrap_or_else(|_| DEFAULT_ACCEL.into());
    let (qemu, data) = qemu()?;
    let mut child = Command::new(&qemu)
        .args(data.iter().flat_map(|d| [Path::new("-L"), d.as_path()]))
        .args(["-accel", &accel, "-cpu", &cpu, "-smp", "2", "-m", "2048", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        // Warnings reach the console (a soft lockup's stacks, on every CPU), and a lockup or a hung
        // task panics, which ends the boot at once instead of at the timeout.
        .arg(format!(
            "console=ttyS0 panic=-1 loglevel=4 softlockup_panic=1 softlockup_all_cpu_backtrace=1 \
             hung_task_panic=1 cgwatch.mode={mode}"
        ))
        .stdin(Stdio::null())
        .stdout(fs::File::create(log)?)
        .stderr(Stdio::null())
        .spawn()
        .context("qemu-system-x86_64 missing (apt-get install qemu-system-x86)")?;
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

/// The qemu binary and its firmware directories: `$CGWATCH_VM_QEMU` (with `-L` directories in
/// `$CGWATCH_VM_QEMU_DATA`, colon-separated), else the system's.
fn qemu() -> Result<(PathBuf, Vec<PathBuf>)> {
    match std::env::var_os("CGWATCH_VM_QEMU") {
        Some(q) => Ok((
            PathBuf::from(q),
            std::env::var("CGWATCH_VM_QEMU_DATA").unwrap_or_default().split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect(),
        )),
        None => Ok((PathBuf::from("qemu-system-x86_64"), Vec::new())),
    }
}

/// Test binaries by name, built by `cargo test --no-run`.
fn test_binaries(root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let json = output(
        Command::new("cargo")
            .current_dir(root)
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
                o.tests.insert(format!("{bin}::{name}"), result.trim().to_string());
            }
        }
    }
    o
}

pub fn vm_test(root: &Path, only_suite: Option<&str>, only_mode: Option<&str>) -> Result<()> {
    let tests = test_binaries(root)?;
    let work = root.join("target/vm");
    fs::create_dir_all(&work)?;
    let initrd = build_initramfs(&work, root, &tests)?;
    let mut rows = Vec::new();
    let mut failed = 0;
    for (suite, version) in KERNELS.iter().filter(|(s, v)| only_suite.is_none_or(|o| o == *s || o == *v)) {
        let vmlinuz = fetch_kernel(suite)?;
        for mode in MODES.iter().filter(|m| only_mode.is_none_or(|o| o == **m)) {
            let log = work.join(format!("{suite}-{mode}.log"));
            // This qemu's TCG sometimes crashes the 6.12 kernel (double faults in kmalloc, even
            // at boot before any userspace runs): a run whose kernel panicked or hung is repeated, at
            // most MAX_BOOTS times, and the attempts are reported. A failing test is never retried.
            let mut attempts = 0;
            let o = loop {
                attempts += 1;
                eprintln!("xtask: booting {} ({suite}), --probe-mode {mode}, attempt {attempts}", vmlinuz.display());
                let text = boot(&vmlinuz, &initrd, mode, &log, Duration::from_secs(240))?;
                // A healthy run takes well under a minute under TCG: a hang is a crash too.
                let crashed = text.contains("Kernel panic") || !text.contains("VMTEST done");
                if crashed {
                    let _ = fs::copy(&log, work.join(format!("{suite}-{mode}.panic{attempts}.log")));
                }
                if !crashed || attempts == MAX_BOOTS {
                    break parse(&text);
                }
            };
            let passed = o.tests.values().filter(|r| *r == "ok").count();
            let total = o.tests.len();
            if !o.finished || total == 0 || passed != total {
                failed += 1;
                let _ = fs::copy(&log, work.join(format!("{suite}-{mode}.failed.log")));
            }
            println!(
                "\n## {version} ({}) --probe-mode {mode}: {passed}/{total} passed{}, {attempts} boot(s)",
                o.kernel,
                if o.finished { "" } else { ", VM did not finish" }
            );
            println!("probes: {}", o.probes.iter().map(|p| p.replace("cgwatch_probe_attached", "")).collect::<Vec<_>>().join(" "));
            for (name, result) in &o.tests {
                println!("| {name} | {result} |");
            }
            rows.push((version.to_string(), mode.to_string(), passed, total, o.finished, attempts));
        }
    }
    println!("\n| kernel | mode | passed | finished | boots |\n| --- | --- | --- | --- | --- |");
    for (k, m, p, t, f, a) in &rows {
        println!("| {k} | {m} | {p}/{t} | {f} | {a} |");
    }
    println!("\n{} passed, {} failed", rows.len() - failed, failed);
    if failed > 0 {
        bail!("{failed} kernel/mode combinations failed; serial logs in {}", work.display());
    }
    Ok(())
}
