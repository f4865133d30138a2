//! A real Prometheus (Debian's package) scrapes the agent and answers the operator's question
//! "which cgroup was just denied which syscall" with one PromQL query.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cgwatch_tests::{Agent, TestCgroup, free_port, which};

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query(port: u16, promql: &str) -> String {
    ureq::get(&format!("http://127.0.0.1:{port}/api/v1/query"))
        .query("query", promql)
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .unwrap_or_default()
}

#[test]
fn prometheus_scrapes_and_answers_which_cgroup_was_denied_which_syscall() {
    let prometheus = which("prometheus").expect("prometheus is needed: apt-get install prometheus (.ci/run does)");
    let agent = Agent::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: cgwatch\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            agent.port
        ),
    )
    .unwrap();
    let port = free_port();
    let _prom = Prometheus(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let cg = TestCgroup::new("prom");
    assert!(cg.run(&["seccomp", "--action", "errno", "--count", "42"]).success());

    let promql = format!(
        "sum by (cgroup, syscall, action) (cgwatch_seccomp_violations_total{{cgroup=\"{}\"}})",
        cg.rel
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = query(port, &promql);
        if last.contains("\"value\":[") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(last.contains("\"syscall\":\"getppid\""), "{last}");
    assert!(last.contains("\"action\":\"errno\""), "{last}");
    assert!(last.contains(",\"42\"]"), "{last}");
    let up = query(port, "up{job=\"cgwatch\"}");
    assert!(up.contains(",\"1\"]"), "{up}");
}
