//! Real Prometheus and Alertmanager servers (Debian's packages) on loopback, killed on drop, and
//! their HTTP APIs.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{free_port, which};

/// A server process and its data directory, killed and removed on drop.
struct Server {
    child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(bin: &str, dir: tempfile::TempDir, args: Vec<String>, port: u16) -> Server {
        let path = which(bin).unwrap_or_else(|| panic!("{bin} is needed (cargo xtask test installs it)"));
        let log = dir.path().join("server.log");
        let child = Command::new(path)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let server = Server { child, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !super::http_get(&format!("http://127.0.0.1:{port}/-/ready"), &[]).is_ok_and(|r| r.status == 200) {
            assert!(Instant::now() < deadline, "{bin} did not get ready:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get_json(url: &str, query: &[(&str, &str)]) -> Value {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(30))).build().into();
    let mut req = agent.get(url);
    for (k, v) in query {
        req = req.query(*k, *v);
    }
    let body = req.call().and_then(|mut r| r.body_mut().read_to_string()).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

/// A Prometheus scraping `targets` every second, evaluating `rule_files` every second and
/// sending alerts to `alertmanager`.
pub struct Prometheus {
    pub port: u16,
    server: Server,
}

impl Prometheus {
    pub fn start(targets: &[u16], rule_files: &[&Path], alertmanager: Option<u16>) -> Prometheus {
        Self::start_with_job(targets, rule_files, alertmanager, "")
    }

    /// Like `start`, with `job` (YAML lines at the level of `static_configs`, e.g. `scheme:
    /// https`, `tls_config:` and `basic_auth:`) added to the cgwatch scrape job.
    pub fn start_with_job(targets: &[u16], rule_files: &[&Path], alertmanager: Option<u16>, job: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n");
        if !rule_files.is_empty() {
            config.push_str("rule_files:\n");
            for f in rule_files {
                config.push_str(&format!("  - '{}'\n", f.display()));
            }
        }
        if let Some(am) = alertmanager {
            config.push_str(&format!(
                "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am}']\n"
            ));
        }
        config.push_str("scrape_configs:\n  - job_name: cgwatch\n");
        for line in job.lines() {
            config.push_str(&format!("    {line}\n"));
        }
        config.push_str("    static_configs:\n      - targets: [");
        config.push_str(&targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect::<Vec<_>>().join(", "));
        config.push_str("]\n");
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let port = free_port();
        let args = vec![
            format!("--config.file={}", file.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        Prometheus { port, server: Server::start("prometheus", dir, args, port) }
    }

    pub fn log(&self) -> String {
        self.server.log()
    }

    fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let v = get_json(&format!("http://127.0.0.1:{}{path}", self.port), query);
        assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
        v["data"].clone()
    }

    /// `/api/v1/query`: the result vector (or matrix).
    pub fn query(&self, promql: &str) -> Vec<Value> {
        self.api("/api/v1/query", &[("query", promql)])["result"].as_array().cloned().unwrap_or_default()
    }

    /// `/api/v1/query` evaluated at `time` (seconds since the epoch, as Prometheus prints it).
    pub fn query_at(&self, promql: &str, time: &str) -> Vec<Value> {
        self.api("/api/v1/query", &[("query", promql), ("time", time)])["result"].as_array().cloned().unwrap_or_default()
    }

    /// `/api/v1/query` without asserting success: the raw answer (status, error).
    pub fn try_query(&self, promql: &str) -> Value {
        get_json(&format!("http://127.0.0.1:{}/api/v1/query", self.port), &[("query", promql)])
    }

    /// `increase(selector)` over exactly the span from the last scrape that saw `before` to the
    /// first that saw `after` (no extrapolation: both ends are samples), at the latter's time.
    pub fn increase_between(&self, selector: &str, before: f64, after: f64) -> f64 {
        let samples = self.query(&format!("{selector}[10m]"));
        assert_eq!(samples.len(), 1, "{selector}: {samples:?}");
        let points: Vec<(f64, f64)> = samples[0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().parse().unwrap()))
            .collect();
        let t0 = points.iter().rev().find(|(_, v)| *v == before).unwrap_or_else(|| panic!("no {before} in {points:?}")).0;
        let t1 = points.iter().find(|(_, v)| *v == after).unwrap_or_else(|| panic!("no {after} in {points:?}")).0;
        let span_ms = ((t1 - t0) * 1000.0).round() as u64;
        let r = self.query_at(&format!("increase({selector}[{span_ms}ms])"), &format!("{t1:.3}"));
        assert_eq!(r.len(), 1, "{r:?}");
        r[0]["value"][1].as_str().unwrap().parse().unwrap()
    }

    /// The value of a one-series instant query.
    pub fn value(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        assert!(r.len() <= 1, "{promql}: {r:?}");
        r.first().and_then(|s| s["value"][1].as_str()).and_then(|v| v.parse().ok())
    }

    /// `/api/v1/alerts`: active (pending or firing) alerts.
    pub fn alerts(&self) -> Vec<Value> {
        self.api("/api/v1/alerts", &[])["alerts"].as_array().cloned().unwrap_or_default()
    }
}

/// An Alertmanager (no cluster peers) whose one route goes to a receiver without integrations.
pub struct Alertmanager {
    pub port: u16,
    _server: Server,
}

impl Alertmanager {
    pub fn start() -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alertmanager.yml");
        std::fs::write(
            &file,
            "route:\n  receiver: 'null'\n  group_by: ['alertname']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: 'null'\n",
        )
        .unwrap();
        let port = free_port();
        let args = vec![
            format!("--config.file={}", file.display()),
            format!("--storage.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=".to_string(),
        ];
        Alertmanager { port, _server: Server::start("prometheus-alertmanager", dir, args, port) }
    }

    /// `/api/v2/alerts`: the alerts it holds.
    pub fn alerts(&self) -> Vec<Value> {
        get_json(&format!("http://127.0.0.1:{}/api/v2/alerts", self.port), &[]).as_array().cloned().unwrap_or_default()
    }
}

/// Whether an alert's labels include all of `want`.
pub fn has_labels(alert: &Value, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| alert["labels"][*k].as_str() == Some(*v))
}
