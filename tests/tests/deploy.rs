//! The files under `deploy/`, checked by the tools that consume them: kubectl's kustomize and the
//! Kubernetes API schema (kubernetes-validate), promtool, systemd-analyze, podman. Running the
//! DaemonSet's pod is `kubernetes.rs`; the rules and dashboard against a live Prometheus and
//! Alertmanager are `alerting.rs`.

use std::{collections::BTreeSet, process::Command};

use cgwatch_tests::{
    deploy::{self, Yaml},
    podman, which,
};

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{said}");
    said
}

#[test]
fn kustomize_renders_every_variant_and_the_kubernetes_schema_accepts_it() {
    let validate = deploy::kubernetes_validate();
    for (dir, want) in [
        ("deploy/kubernetes", &["ConfigMap", "DaemonSet", "Namespace", "PodMonitor", "PrometheusRule", "Service", "ServiceAccount"][..]),
        ("deploy/kubernetes/base", &["DaemonSet", "Namespace", "Service", "ServiceAccount"][..]),
        ("deploy/kubernetes/privileged", &["DaemonSet", "Namespace", "Service", "ServiceAccount"][..]),
    ] {
        let docs = deploy::kustomize(dir);
        let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, want.iter().copied().collect(), "{dir}");
        for d in &docs {
            if d["kind"] != "Namespace" {
                assert_eq!(d["metadata"]["namespace"], "cgwatch", "{dir}: {:?}", d["metadata"]["name"]);
            }
        }
        // Offline schema validation of every built-in kind; unknown fields are errors.
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), deploy::render(dir)).unwrap();
        let said = run_ok(Command::new(&validate).arg("--strict").arg(file.path()));
        for kind in want.iter().filter(|k| !["PodMonitor", "PrometheusRule"].contains(k)) {
            assert!(said.contains(&format!("passed for resource {}/", kind.to_lowercase())), "{dir} {kind}:\n{said}");
        }
        assert!(!said.contains("ERROR") && !said.contains("failed"), "{dir}:\n{said}");
    }
}

#[test]
fn the_daemonset_runs_on_every_node_with_the_least_it_needs() {
    let ds = deploy::daemonset("deploy/kubernetes");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert!(spec["tolerations"].as_sequence().unwrap().iter().any(|t| t["operator"] == "Exists" && t.get("key").is_none()));
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"].as_str().is_some());
    let c = &spec["containers"][0];
    assert_eq!(c["image"], format!("localhost/cgwatch:{}", env!("CARGO_PKG_VERSION")).as_str());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    let added: BTreeSet<&str> = sc["capabilities"]["add"].as_sequence().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "PERFMON", "SYS_RESOURCE"]));
    for r in ["requests", "limits"] {
        assert!(c["resources"][r]["memory"].as_str().is_some(), "{r}");
    }
    // Host paths are read-only, but for the BPF filesystem (pinned maps) and tracefs (the
    // kretprobe with room for every waiting thread).
    for m in c["volumeMounts"].as_sequence().unwrap() {
        let writable = ["/sys/fs/bpf", "/sys/kernel/tracing"].contains(&m["mountPath"].as_str().unwrap());
        assert_eq!(m["readOnly"].as_bool().unwrap_or(false), !writable, "{m:?}");
    }
    // The privileged variant differs only in that.
    let p = deploy::daemonset("deploy/kubernetes/privileged");
    assert_eq!(p["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"], true);
}

#[test]
fn the_podmonitor_and_service_select_the_daemonset_pods_by_their_port() {
    let docs = deploy::kustomize("deploy/kubernetes");
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let ports: Vec<&str> = ds["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let pm = docs.iter().find(|d| d["kind"] == "PodMonitor").unwrap();
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&pod_labels[k.as_str().unwrap()], v, "PodMonitor selects {k:?}");
    }
    for ep in pm["spec"]["podMetricsEndpoints"].as_sequence().unwrap() {
        assert!(ports.contains(&ep["port"].as_str().unwrap()), "{ep:?}");
    }
    let svc = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    assert_eq!(svc["spec"]["clusterIP"], "None", "headless");
    for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&pod_labels[k.as_str().unwrap()], v);
    }
    // The dashboard ConfigMap carries the dashboard file, for Grafana's sidecar.
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped = std::fs::read_to_string(deploy::repo("deploy/grafana/cgwatch.json")).unwrap();
    assert_eq!(cm["data"]["cgwatch.json"].as_str().unwrap(), shipped);
}

/// deploy/kubernetes/prometheusrule.yaml is generated from deploy/prometheus/cgwatch.rules.yml
/// (`CGWATCH_BLESS=1` rewrites it): the operator gets exactly the rules promtool tests.
#[test]
fn the_prometheusrule_carries_the_rule_file() {
    let rules: Yaml = serde_yaml_ng::from_str(&std::fs::read_to_string(deploy::repo(deploy::RULES)).unwrap()).unwrap();
    let path = deploy::repo("deploy/kubernetes/prometheusrule.yaml");
    let current: Option<Yaml> = std::fs::read_to_string(&path).ok().and_then(|s| serde_yaml_ng::from_str(&s).ok());
    if current.as_ref().map(|c| &c["spec"]) != Some(&rules) {
        if std::env::var_os("CGWATCH_BLESS").is_some() {
            std::fs::write(&path, deploy::prometheus_rule(&rules)).unwrap();
            return;
        }
        panic!("{} differs from {}: rerun with CGWATCH_BLESS=1 to regenerate it", path.display(), deploy::RULES);
    }
    let current = current.unwrap();
    assert_eq!(current["kind"], "PrometheusRule");
    assert_eq!(current["apiVersion"], "monitoring.coreos.com/v1");
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let promtool = which("promtool").expect("promtool");
    let said = run_ok(Command::new(&promtool).args(["check", "rules"]).arg(deploy::repo(deploy::RULES)));
    assert!(said.contains("SUCCESS"), "{said}");
    let dir = deploy::repo("deploy/prometheus");
    let said = run_ok(Command::new(&promtool).current_dir(&dir).args(["test", "rules", "cgwatch.rules.test.yml"]));
    assert!(said.contains("SUCCESS"), "{said}");
}

/// Every alert has a severity, a summary, a description and a runbook that exists; every runbook
/// section answers an alert; every alert has a promtool unit test.
#[test]
fn every_alert_has_its_annotations_runbook_and_unit_test() {
    let alerts = deploy::alerts();
    assert!(alerts.len() >= 12, "{} alerts", alerts.len());
    let runbooks = std::fs::read_to_string(deploy::repo("docs/runbooks.md")).unwrap();
    let headings: BTreeSet<String> =
        runbooks.lines().filter_map(|l| l.strip_prefix("## ")).map(|h| h.trim().to_lowercase()).collect();
    let tests = std::fs::read_to_string(deploy::repo("deploy/prometheus/cgwatch.rules.test.yml")).unwrap();
    let mut names = BTreeSet::new();
    for a in &alerts {
        let name = a["alert"].as_str().unwrap();
        names.insert(name.to_lowercase());
        assert!(["info", "warning", "critical"].contains(&a["labels"]["severity"].as_str().unwrap_or("")), "{name}");
        for k in ["summary", "description"] {
            assert!(a["annotations"][k].as_str().is_some_and(|s| !s.is_empty()), "{name}: {k}");
        }
        let url = a["annotations"]["runbook_url"].as_str().unwrap();
        let (file, anchor) = url.split_once('#').unwrap();
        assert_eq!(file, "docs/runbooks.md", "{name}");
        assert!(headings.contains(anchor), "{name}: no runbook section #{anchor}");
        assert!(tests.contains(&format!("alertname: {name}")), "{name} has no promtool unit test");
    }
    assert_eq!(headings.intersection(&names).count(), names.len());
}

#[test]
fn the_dashboard_has_its_variables_and_a_datasource_on_every_panel() {
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy::repo("deploy/grafana/cgwatch.json")).unwrap()).unwrap();
    let vars: BTreeSet<&str> =
        d["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    for v in ["datasource", "namespace", "pod", "container"] {
        assert!(vars.contains(v), "variable {v}");
    }
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id {} twice", p["id"]);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    let rows: Vec<&str> = panels.iter().filter(|p| p["type"] == "row").map(|p| p["title"].as_str().unwrap()).collect();
    assert_eq!(
        rows,
        ["Security", "Seccomp", "OOM kills", "Container lifecycle", "Exits and crashes", "Container resources", "Host", "Agent health"]
    );
    assert!(deploy::dashboard_queries(&d).len() >= 30);
}

#[test]
fn the_image_is_small_and_runs_the_agent() {
    let image = deploy::image();
    let size: u64 = run_ok(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", &image])).trim().parse().unwrap();
    assert!(size < 20 << 20, "{image} is {size} bytes");
    // A static binary on an empty base: it runs with nothing else in the image.
    let out = podman::command()
        .args(["run", "--rm", "--network", "none"])
        .args(podman::ULIMITS)
        .args([&image, "--version"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("cgwatch {}", env!("CARGO_PKG_VERSION")));
}

/// The arm64 image (`cargo xtask image --arch arm64`): an arm64 platform, and in it a static
/// arm64 agent that runs (here under qemu-user; the arm64 VM run of `cargo xtask test` runs it
/// against an arm64 kernel).
#[test]
fn the_arm64_image_holds_a_static_arm64_agent_that_runs() {
    use object::{Object as _, elf};
    let image = deploy::image_named(&format!("localhost/cgwatch:{}-arm64", env!("CARGO_PKG_VERSION")));
    let platform = run_ok(Command::new("podman").args(["image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", &image]));
    assert_eq!(platform.trim(), "linux/arm64", "{image}");
    let size: u64 = run_ok(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", &image])).trim().parse().unwrap();
    assert!(size < 20 << 20, "{image} is {size} bytes");
    // The binary, out of the image's layers.
    let mounted = run_ok(Command::new("podman").args(["image", "mount", &image]));
    let bin = tempfile::tempdir().unwrap();
    let copy = std::fs::copy(std::path::Path::new(mounted.trim()).join("cgwatch"), bin.path().join("cgwatch"));
    run_ok(Command::new("podman").args(["image", "unmount", &image]));
    copy.unwrap();
    let data = std::fs::read(bin.path().join("cgwatch")).unwrap();
    let file = object::File::parse(&*data).unwrap();
    assert_eq!(file.architecture(), object::Architecture::Aarch64);
    let object::File::Elf64(elf_file) = &file else { panic!("not a 64-bit ELF") };
    use object::read::elf::ProgramHeader as _;
    let endian = elf_file.endian();
    let interp = elf_file.elf_program_headers().iter().any(|p| p.p_type(endian) == elf::PT_INTERP);
    assert!(!interp, "the arm64 agent names a dynamic loader: not static");
    // Both images in one manifest list, as docs/deploy.md makes it for a mixed cluster.
    let list = format!("localhost/cgwatch-test-manifest-{}:{}", std::process::id(), env!("CARGO_PKG_VERSION"));
    run_ok(Command::new("podman").args(["manifest", "create", &list]));
    for i in [deploy::image(), image.clone()] {
        run_ok(Command::new("podman").args(["manifest", "add", &list, &format!("containers-storage:{i}")]));
    }
    let inspect = Command::new("podman").args(["manifest", "inspect", &list]).output().unwrap();
    run_ok(Command::new("podman").args(["manifest", "rm", &list]));
    assert!(inspect.status.success(), "podman manifest inspect: {}", String::from_utf8_lossy(&inspect.stderr));
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let platforms: BTreeSet<String> = inspect["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{}/{}", m["platform"]["os"].as_str().unwrap(), m["platform"]["architecture"].as_str().unwrap()))
        .collect();
    assert_eq!(platforms, BTreeSet::from(["linux/amd64".to_string(), "linux/arm64".to_string()]));
    let qemu = which("qemu-aarch64-static").expect("qemu-aarch64-static: apt-get install qemu-user-static (cargo xtask test does)");
    let said = run_ok(Command::new(qemu).arg(bin.path().join("cgwatch")).arg("--version"));
    assert_eq!(said.trim(), format!("cgwatch {}", env!("CARGO_PKG_VERSION")));
}
