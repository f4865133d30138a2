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
    for args in [&["--listen", "nowhere"][..], &["--max-cgroups", "0"], &["--retain", "soon"], &["--seccomp-mode", "x"]] {
        let (code, err) = run_agent_expecting_exit(args, None);
        assert_eq!(code, Some(2), "{args:?}");
        let line = one_line(&err);
        assert!(line.contains(args[1]), "{args:?}: {line}");
    }
}

#[test]
fn help_works() {
    let out = std::process::Command::new(cgwatch_tests::cgwatch_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--listen", "--path.procfs", "--path.sysfs", "--max-cgroups", "--retain", "--seccomp-mode", "CGWATCH_LISTEN"] {
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
fn no_btf() {
    let sysfs = tempfile::tempdir().unwrap();
    let (code, err) = run_agent_expecting_exit(&["--path.sysfs", sysfs.path().to_str().unwrap(), "--listen", "127.0.0.1:0"], None);
    assert_eq!(code, Some(1));
    let line = one_line(&err);
    assert!(line.contains("kernel BTF not found") && line.contains("CONFIG_DEBUG_INFO_BTF"), "{line}");
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
