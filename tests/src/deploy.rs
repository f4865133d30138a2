//! The deploy files as data: rendered manifests, rules, dashboard queries, the image.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub use serde_yaml_ng::Value as Yaml;

/// The alerting and recording rules.
pub const RULES: &str = "deploy/prometheus/cgwatch.rules.yml";

/// A path in the repository.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join(rel)
}

/// `kubectl kustomize DIR` (a directory of the repository).
pub fn render(dir: &str) -> String {
    let kubectl = super::which("kubectl").expect("kubectl is needed (cargo xtask test installs kubernetes-client)");
    let out = Command::new(kubectl).arg("kustomize").arg(repo(dir)).output().expect("kubectl kustomize");
    assert!(out.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

/// The rendered documents of a kustomization.
pub fn kustomize(dir: &str) -> Vec<Yaml> {
    let text = render(dir);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML"))
        .filter(|d: &Yaml| !d.is_null())
        .collect()
}

/// The rendered DaemonSet of a kustomization.
pub fn daemonset(dir: &str) -> Yaml {
    kustomize(dir).into_iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet")
}

/// The `kubernetes-validate` command that `cargo xtask test` installed (or `$CGWATCH_KUBERNETES_VALIDATE`).
pub fn kubernetes_validate() -> PathBuf {
    let p = std::env::var_os("CGWATCH_KUBERNETES_VALIDATE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/cgwatch-tools/venv/bin/kubernetes-validate")
    });
    assert!(p.exists(), "{} missing: run the tests with `cargo xtask test`, which installs it", p.display());
    p
}

/// The PrometheusRule that carries `rules` (the rule file's `groups`), as committed in
/// deploy/kubernetes/prometheusrule.yaml.
pub fn prometheus_rule(rules: &Yaml) -> String {
    let body = serde_yaml_ng::to_string(rules).expect("rules as YAML");
    let mut out = String::from(
        "# Generated from deploy/prometheus/cgwatch.rules.yml by the `the_prometheusrule_carries_the_rule_file`\n\
         # test (CGWATCH_BLESS=1 cargo xtask test -- the_prometheusrule): edit the rule file, not this.\n\
         apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: cgwatch\n  labels:\n    app.kubernetes.io/name: cgwatch\n    app.kubernetes.io/part-of: cgwatch\nspec:\n",
    );
    for line in body.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every alerting rule of the rule file.
pub fn alerts() -> Vec<Yaml> {
    let rules: Yaml = serde_yaml_ng::from_str(&std::fs::read_to_string(repo(RULES)).unwrap()).unwrap();
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .filter(|r| r.get("alert").is_some())
        .cloned()
        .collect()
}

/// Every query of the dashboard, as (panel title, PromQL) with the variables as "All" selects
/// them and Grafana's intervals as a 1 h range would set them; a variable's `label_values(Q,
/// label)` gives its selector Q.
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let substitute = |q: &str| {
        q.replace("$__rate_interval", "1m")
            .replace("$__interval", "30s")
            .replace("$__range", "1h")
            .replace("${namespace}", ".*")
            .replace("$namespace", ".*")
            .replace("${pod}", ".*")
            .replace("$pod", ".*")
            .replace("${container}", ".*")
            .replace("$container", ".*")
            .replace("${instance}", ".*")
            .replace("$instance", ".*")
    };
    let mut out = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    // Panels inside collapsed rows.
    let nested: Vec<&serde_json::Value> = panels.iter().filter_map(|p| p["panels"].as_array()).flatten().collect();
    panels.extend(nested);
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((p["title"].as_str().unwrap_or_default().to_string(), substitute(expr)));
            }
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        let q = v["query"].as_str().or_else(|| v["query"]["query"].as_str()).unwrap_or_default();
        if let Some(inner) = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
            let selector = inner.rsplit_once(',').map_or(inner, |(s, _)| s);
            out.push((format!("variable {}", v["name"]), substitute(selector)));
        }
    }
    out
}

/// The image `cargo xtask image` built (asserted to exist).
pub fn image() -> String {
    image_named(&format!("localhost/cgwatch:{}", env!("CARGO_PKG_VERSION")))
}

/// `image`, asserted to exist (`cargo xtask test` builds them: for x86_64 and `--arch arm64`).
pub fn image_named(image: &str) -> String {
    let ok = Command::new("podman").args(["image", "exists", image]).status().expect("podman");
    assert!(ok.success(), "{image} is not built: run `cargo xtask image` (cargo xtask test does)");
    image.to_string()
}

/// A Pod with the DaemonSet's pod template, for `podman kube play`: podman 4.3 ignores
/// `securityContext.seccompProfile`, so the same setting goes in as the annotation it reads.
pub fn pod_from_daemonset(ds: &Yaml, name: &str) -> Yaml {
    let template = &ds["spec"]["template"];
    let spec = &template["spec"];
    let seccomp = spec["containers"][0]["securityContext"]["seccompProfile"]["type"].as_str().map(str::to_lowercase);
    let mut annotations = template["metadata"]["annotations"].clone();
    if let (Some(profile), Some(map)) = (seccomp, annotations.as_mapping_mut()) {
        map.insert("seccomp.security.alpha.kubernetes.io/pod".into(), profile.into());
    }
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": serde_json::to_value(&template["metadata"]["labels"]).unwrap(),
                     "annotations": serde_json::to_value(&annotations).unwrap()},
        "spec": serde_json::to_value(spec).unwrap(),
    });
    serde_json::from_value(pod).unwrap()
}
