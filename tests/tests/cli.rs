//! Bad input: one clear line and a non-zero exit, never a panic.

use std::net::TcpListener;

use cgwatch_tests::run_agent_expecting_exit;

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0]
}

#[test]
fn unknown_flag() {
    let (code, err) = run_agent_expecting_exit(&["--frobnicate"], None);
    assert_eq!(code, Some(2));
    let line = one_line(&err);
    assert!(line.starts_with("cgwatch: ") && line.contains("--frobnicate"), "{line}");
}

#[test]
fn bad_values() {
    let bad: [&[&str]; 5] = [
        &["--listen", "nowhere"],
        &["--max-cgroups", "0"],
        &["--retain", "soon"],
        &["--seccomp-mode", "x"],
        &["--docker.data-root", "data/docker"],
    ];
    for args in bad {
        let (code, err) = run_agent_expecting_exit(args, None);
        assert_eq!(code, Some(2), "{args:?}");
        let line = one_line(&err);
        assert!(line.contains(args[1]), "{args:?}: {line}");
    }
}

/// dockerd's data root is a host path, read below --path.rootfs: a relative one is refused, by
/// flag or variable, in one line that says why.
#[test]
fn a_relative_docker_data_root() {
    let (code, err) = run_agent_expecting_exit(&["--docker.data-root", "docker"], None);
    assert_eq!(code, Some(2));
    let line = one_line(&err);
    assert!(line.starts_with("cgwatch: ") && line.contains("--docker.data-root") && line.contains("must be an absolute path"), "{line}");
    let out = std::process::Command::new(cgwatch_tests::cgwatch_bin())
        .env("CGWATCH_DOCKER_DATA_ROOT", "data/docker")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(one_line(&err).contains("must be an absolute path"), "{err}");
}

/// A data root that does not exist (no docker on the node) is no reason not to start.
#[test]
fn a_missing_docker_data_root_is_no_error() {
    let agent = cgwatch_tests::Agent::start(&["--docker.data-root", "/nonexistent/cgwatch-test/docker"]);
    assert_eq!(agent.get("/readyz", &[]).status, 200);
}

#[test]
fn help_works() {
    let out = std::process::Command::new(cgwatch_tests::cgwatch_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let flags = ["--listen", "--path.procfs", "--path.sysfs", "--max-cgroups", "--retain", "--seccomp-mode", "CGWATCH_LISTEN"];
    for flag in flags.into_iter().chain(["--docker.data-root <PATH>", "CGWATCH_DOCKER_DATA_ROOT", "/var/lib/docker"]) {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn env_var_fallback() {
    let out = std::process::Command::new(cgwatch_tests::cgwatch_bin())
        .env("CGWATCH_MAX_CGROUPS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0"));
}

#[test]
fn port_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run_agent_expecting_exit(&["--listen", &addr], None);
    assert_eq!(code, Some(1));
    let line = one_line(&err);
    assert!(line.contains(&format!("cannot listen on {addr}")) && line.contains("in use"), "{line}");
}

#[test]
fn no_cgroup2() {
    let sysfs = tempfile::tempdir().unwrap();
    let (code, err) = run_agent_expecting_exit(&["--path.sysfs", sysfs.path().to_str().unwrap(), "--listen", "127.0.0.1:0"], None);
    assert_eq!(code, Some(1));
    let line = one_line(&err);
    assert!(line.contains("no cgroup v2 hierarchy"), "{line}");
}

/// Without kernel BTF (missing, or cut short) no probe can load: the agent serves cgroup and
/// host metrics, reports every probe not attached, and logs why.
#[test]
fn no_or_broken_btf_degrades_to_cgroup_and_host_metrics() {
    let real = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
    for (what, btf) in [("missing", None), ("truncated", Some(&real[..4096])), ("garbage", Some(&b"not BTF at all"[..]))] {
        let sysfs = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(sysfs.path().join("fs")).unwrap();
        std::os::unix::fs::symlink("/sys/fs/cgroup", sysfs.path().join("fs/cgroup")).unwrap();
        if let Some(bytes) = btf {
            std::fs::create_dir_all(sysfs.path().join("kernel/btf")).unwrap();
            std::fs::write(sysfs.path().join("kernel/btf/vmlinux"), bytes).unwrap();
        }
        let agent = cgwatch_tests::Agent::start(&["--path.sysfs", sysfs.path().to_str().unwrap()]);
        let m = agent.scrape_until(std::time::Duration::from_secs(5), |m| m.get("cgwatch_host_cpu_usage_ratio", &[]).is_some());
        let probes = m.find("cgwatch_probe_attached", &[]);
        assert_eq!(probes.len(), cgwatch::probes::PROBES.len(), "{what}");
        assert!(probes.iter().all(|s| s.value == 0.0 && s.labels["mode"] != "off"), "{what}: {probes:?}");
        assert!(m.get("cgwatch_host_memory_total_bytes", &[]).is_some(), "{what}");
        assert!(!m.find("cgwatch_cgroup_cpu_usage_seconds_total", &[]).is_empty(), "{what}: cgroup metrics");
        assert!(m.find("cgwatch_seccomp_violations_total", &[]).is_empty());
        let log = agent.log();
        assert!(log.contains("probes off: ") && log.contains("serving cgroup and host CPU / memory only"), "{what}: {log}");
        assert_eq!(agent.get("/readyz", &[]).status, 200, "{what}: serving, degraded");
    }
}

#[test]
fn not_root() {
    let (code, err) = run_agent_expecting_exit(
        &["--listen", "127.0.0.1:0"],
        Some(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]),
    );
    assert_eq!(code, Some(1));
    let line = one_line(&err);
    assert!(line.contains("missing CAP_BPF") && line.contains("run it as root"), "{line}");
}
