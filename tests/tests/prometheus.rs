//! A real Prometheus (Debian's package) scrapes the agent and answers the operator's question
//! "which cgroup was just denied which syscall" with one PromQL query.

use std::time::{Duration, Instant};

use cgwatch_tests::{Agent, TestCgroup, prom::Prometheus};

#[test]
fn prometheus_scrapes_and_answers_which_cgroup_was_denied_which_syscall() {
    let agent = Agent::start(&[]);
    let prom = Prometheus::start(&[agent.port], &[], None);

    let cg = TestCgroup::new("prom");
    assert!(cg.run(&["seccomp", "--action", "errno", "--count", "42"]).success());

    let promql = format!(
        "sum by (cgroup, syscall, action) (cgwatch_seccomp_violations_total{{cgroup=\"{}\"}})",
        cg.rel
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = prom.query(&promql);
        if !last.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(last.len(), 1, "{last:?}\n{}", prom.log());
    assert_eq!(last[0]["metric"]["syscall"], "getppid");
    assert_eq!(last[0]["metric"]["action"], "errno");
    assert_eq!(last[0]["value"][1], "42");
    let up = prom.query("up{job=\"cgwatch\"}");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
}
