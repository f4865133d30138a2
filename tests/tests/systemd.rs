//! The systemd unit: `cargo xtask install` lays out the binary, the unit and the environment
//! file; `systemd-analyze security` scores the unit; and a real systemd (PID 1 of a podman
//! container on a minimal Debian root, `cargo xtask test` makes it with debootstrap) verifies it,
//! runs the agent under every hardening setting, restarts it when it is killed and stops it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cgwatch_tests::{Metrics, PinDir, TestCgroup, free_port, http_get, podman};

const UNIT: &str = "etc/systemd/system/cgwatch.service";
const ENV: &str = "etc/default/cgwatch";
const BINARY: &str = "usr/local/bin/cgwatch";
const SYSUSERS: &str = "etc/sysusers.d/cgwatch.conf";

fn repo(rel: &str) -> PathBuf {
    cgwatch_tests::deploy::repo(rel)
}

/// `cargo xtask install --root DIR` into a fresh directory whose environment file already sets
/// the listen address (install must keep it).
fn install(port: u16) -> tempfile::TempDir {
    let stage = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(stage.path().join("etc/default")).unwrap();
    std::fs::write(stage.path().join(ENV), format!("CGWATCH_LISTEN=127.0.0.1:{port}\n")).unwrap();
    let out = Command::new(env!("CARGO"))
        .current_dir(repo(""))
        .args(["xtask", "install", "--root"])
        .arg(stage.path())
        .output()
        .expect("cargo xtask install");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo xtask install:\n{said}");
    stage
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn install_lays_out_the_files_and_the_unit_scores_at_most_3() {
    let stage = install(19121);
    let root = stage.path();
    assert_eq!(std::fs::read(root.join(BINARY)).unwrap(), std::fs::read(repo("target/release/cgwatch")).unwrap());
    assert_eq!(mode(&root.join(BINARY)), 0o755);
    assert_eq!(std::fs::read(root.join(UNIT)).unwrap(), std::fs::read(repo("deploy/systemd/cgwatch.service")).unwrap());
    assert_eq!(mode(&root.join(UNIT)), 0o644);
    assert_eq!(std::fs::read(root.join(SYSUSERS)).unwrap(), std::fs::read(repo("deploy/systemd/cgwatch.sysusers")).unwrap());
    assert_eq!(std::fs::read_to_string(root.join(ENV)).unwrap(), "CGWATCH_LISTEN=127.0.0.1:19121\n", "kept");
    // Every variable of the shipped environment file is one the agent reads.
    let shipped = std::fs::read_to_string(repo("deploy/systemd/cgwatch.env")).unwrap();
    let help = Command::new(repo("target/release/cgwatch")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for var in shipped.lines().map(|l| l.trim_start_matches(['#', ' '])).filter_map(|l| l.split_once('=')).map(|(k, _)| k) {
        if var.starts_with("CGWATCH_") && !var.contains(' ') {
            assert!(help.contains(&format!("[env: {var}=")), "{var} is not a flag's variable");
        }
    }

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=30"])
        .arg(root.join(UNIT))
        .output()
        .expect("systemd-analyze");
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let score: f64 = said
        .lines()
        .find_map(|l| l.split("Overall exposure level for cgwatch.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level:\n{said}"));
    assert!(score <= 3.0, "exposure {score}:\n{said}");
    assert!(out.status.success(), "over the threshold:\n{said}");
}

/// A systemd container, removed on drop.
struct SystemdContainer(String);

impl SystemdContainer {
    fn exec(&self, args: &[&str]) -> (bool, String) {
        let out = podman::command().arg("exec").arg(&self.0).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    }

    fn show(&self, property: &str) -> String {
        self.exec(&["systemctl", "show", "-p", property, "--value", "cgwatch.service"]).1.trim().to_string()
    }
}

impl Drop for SystemdContainer {
    fn drop(&mut self) {
        let _ = podman::command().args(["rm", "-f", "-t", "0", &self.0]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

fn wait_ready(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_get(&format!("http://127.0.0.1:{port}/readyz"), &[]).is_ok_and(|r| r.status == 200) {
        assert!(Instant::now() < deadline, "{what}: not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status_field(status: &str, field: &str) -> String {
    status.lines().find_map(|l| l.strip_prefix(field)).map(|v| v.trim().to_string()).unwrap_or_default()
}

#[test]
fn a_real_systemd_runs_the_hardened_unit_and_restarts_it() {
    let rootfs = std::env::var_os("CGWATCH_SYSTEMD_ROOTFS")
        .map(PathBuf::from)
        .filter(|p| p.join("sbin/init").exists())
        .expect("CGWATCH_SYSTEMD_ROOTFS: a root with systemd (cargo xtask test makes it with debootstrap)");
    let port = free_port();
    let stage = install(port);
    let root = stage.path();
    let mut mounts = vec![
        (root.join(BINARY), format!("/{BINARY}")),
        (root.join(UNIT), format!("/{UNIT}")),
        (root.join(ENV), format!("/{ENV}")),
        (root.join(SYSUSERS), format!("/{SYSUSERS}")),
        // Container names: podman's state, 0700 root (the unit's CAP_DAC_READ_SEARCH reads it).
        (PathBuf::from("/var/lib/containers/storage"), "/var/lib/containers/storage".into()),
    ];
    // The host's BPF filesystem (a directory of it), as systemd mounts one at /sys/fs/bpf on a
    // host; the container's own /sys has none.
    let bpffs = PinDir::new("systemd");
    // This development host has no CAP_SYS_RESOURCE, so systemd cannot raise RLIMIT_MEMLOCK to
    // the unit's infinity; the drop-in lowers it to what the host allows.
    let bounding = std::fs::read_to_string("/proc/self/status").unwrap();
    let caps = u64::from_str_radix(&status_field(&bounding, "CapBnd:"), 16).unwrap();
    let dropin = root.join("memlock.conf");
    if caps & (1 << 24) == 0 {
        std::fs::write(&dropin, "[Service]\nLimitMEMLOCK=8M\n").unwrap();
        mounts.push((dropin.clone(), "/etc/systemd/system/cgwatch.service.d/memlock.conf".into()));
    }
    let name = format!("cgwatch-systemd-{}", std::process::id());
    let mut run = podman::command();
    run.args(["run", "-d", "--name", &name, "--privileged", "--systemd=always", "--cgroupns=host", "--network", "host"])
        .args(podman::ULIMITS);
    for (src, dest) in &mounts {
        run.arg("-v").arg(format!("{}:{dest}:ro", src.display()));
    }
    run.arg("-v").arg(format!("{}:/sys/fs/bpf", bpffs.arg()));
    // :O: an overlay, so the cached root stays as debootstrap made it.
    let out = run.arg("--rootfs").arg(format!("{}:O", rootfs.display())).arg("/sbin/init").output().unwrap();
    assert!(out.status.success(), "podman run: {}", String::from_utf8_lossy(&out.stderr));
    let sd = SystemdContainer(name);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sd.exec(&["systemctl", "is-system-running"]).1.trim().starts_with("running") {
        assert!(Instant::now() < deadline, "systemd did not come up: {}", sd.exec(&["systemctl", "--failed"]).1);
        std::thread::sleep(Duration::from_millis(200));
    }

    let (ok, said) = sd.exec(&["systemd-analyze", "verify", "cgwatch.service"]);
    assert!(ok && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    // What `cargo xtask install` does next on a live host.
    for cmd in [&["systemd-sysusers"][..], &["systemctl", "daemon-reload"], &["systemctl", "enable", "--now", "cgwatch.service"]] {
        let (ok, said) = sd.exec(cmd);
        assert!(ok, "{cmd:?}: {said}");
    }
    wait_ready(port, "under systemd");

    // The hardening, as the kernel sees the running agent.
    let pid = sd.show("MainPID");
    let status = sd.exec(&["cat", &format!("/proc/{pid}/status")]).1;
    let uid = sd.exec(&["id", "-u", "cgwatch"]).1.trim().to_string();
    assert_eq!(status_field(&status, "Uid:").split_whitespace().next(), Some(uid.as_str()), "the cgwatch user");
    assert_ne!(uid, "0");
    // The unit grants CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH; once attached the agent
    // keeps only the last (container names).
    assert_eq!(status_field(&status, "CapBnd:"), "000000c000000004", "the unit's bounding set");
    assert_eq!(status_field(&status, "CapEff:"), "0000000000000004", "CAP_DAC_READ_SEARCH only, after attaching");
    assert_eq!(status_field(&status, "CapPrm:"), "0000000000000004");
    assert_eq!(status_field(&status, "CapAmb:"), "0000000000000000");
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    assert_eq!(status_field(&status, "Seccomp:"), "2", "SystemCallFilter= applies");

    // It counts a host cgroup's denials exactly, and names a podman container through the
    // runtime state only CAP_DAC_READ_SEARCH can read.
    let cg = TestCgroup::new("systemd");
    assert!(cg.run(&["seccomp", "--action", "errno", "--count", "9"]).success());
    let c = podman::Container::start("cgwatch-systemd-named", &[], &["/cgwatch-workload", "acct", "--count", "4"]);
    assert_eq!(c.wait(), 0);
    let scrape = || Metrics::parse(&http_get(&format!("http://127.0.0.1:{port}/metrics"), &[]).unwrap().text());
    let named = [("container", c.name.as_str()), ("runtime", "podman"), ("syscall", "acct")];
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = scrape();
        let done = m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]) == Some(9.0)
            && m.get("cgwatch_seccomp_violations_total", &named) == Some(4.0);
        if done || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]), Some(9.0));
    assert_eq!(m.get("cgwatch_seccomp_violations_total", &named), Some(4.0));
    assert!(m.get("cgwatch_host_memory_total_bytes", &[]).is_some(), "ProtectProc= still shows /proc/meminfo");
    // The pin directory ExecStartPre= makes is the agent's: counters and links are pinned.
    assert_eq!(m.get("cgwatch_pinned", &[]), Some(1.0), "{}", sd.exec(&["journalctl", "-u", "cgwatch", "--no-pager"]).1);

    // Killed: systemd starts it again (Restart=on-failure).
    let (ok, said) = sd.exec(&["systemctl", "kill", "--signal=SIGKILL", "cgwatch.service"]);
    assert!(ok, "{said}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while sd.show("NRestarts") != "1" {
        assert!(Instant::now() < deadline, "not restarted: {}", sd.exec(&["systemctl", "status", "cgwatch"]).1);
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_ready(port, "after the restart");
    // The restarted agent kept the running probes and their counts.
    let m = scrape();
    assert_eq!(m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]), Some(9.0), "counts survive the restart");
    let journal = sd.exec(&["journalctl", "-u", "cgwatch", "--no-pager"]).1;
    assert!(journal.contains("probes kept running from before this start"), "{journal}");
    // Stopped: a clean exit.
    let (ok, said) = sd.exec(&["systemctl", "stop", "cgwatch.service"]);
    assert!(ok, "{said}");
    assert_eq!(sd.show("ActiveState"), "inactive");
    assert_eq!(sd.show("ExecMainStatus"), "0", "{}", sd.exec(&["journalctl", "-u", "cgwatch", "--no-pager"]).1);
}
