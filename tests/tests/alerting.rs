//! The shipped rules and dashboard against a real Prometheus and Alertmanager (Debian's
//! packages): real containers (podman + runc, the default seccomp profile) are denied a syscall,
//! OOM-killed, crash-loop and fail to start; Prometheus's `increase()` of each counter is exact,
//! the alerts fire with the container's labels and reach Alertmanager, and every dashboard query
//! evaluates.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use cgwatch_tests::{
    Agent, deploy,
    podman::{self, Container},
    prom::{Alertmanager, Prometheus, has_labels},
};
use serde_json::Value;

/// Polls `f` until it returns `Some`, or panics with `what` after `secs`.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs a command in a container (it joins the container's cgroup and seccomp filter).
fn exec(c: &Container, args: &[&str]) -> i32 {
    let out = podman::command().arg("exec").arg(&c.name).args(args).output().expect("podman exec");
    out.status.code().unwrap_or(-1)
}

/// Causes `first` events, waits until Prometheus holds the series at that value, causes
/// `more`, waits for the total, then checks that `increase()` over exactly the span between
/// the last scrape before and the first scrape after is `more`: no count lost or invented
/// between the kernel and Prometheus.
fn check_increase(prom: &Prometheus, selector: &str, first: f64, more: f64, cause_more: impl FnOnce()) {
    wait_for(60, &format!("{selector} = {first}"), || (prom.value(selector) == Some(first)).then_some(()));
    cause_more();
    let total = first + more;
    wait_for(60, &format!("{selector} = {total}"), || (prom.value(selector) == Some(total)).then_some(()));
    assert_eq!(prom.increase_between(selector, first, total), more, "increase({selector})");
}

/// A container whose entrypoint does not exist: `podman run` fails after runc made its cgroup
/// (one start failure); `start` tries it again (one more).
fn container_that_fails_to_start(name_prefix: &str) -> Container {
    let name = format!("{name_prefix}-{}", std::process::id());
    let out = podman::command()
        .args(["run", "-d", "--network", "none"])
        .args(podman::ULIMITS)
        .args(["--name", &name])
        .arg(podman::image())
        .arg("/no-such-entrypoint")
        .stdin(Stdio::null())
        .output()
        .expect("podman run");
    assert!(!out.status.success(), "the container started: {}", String::from_utf8_lossy(&out.stdout));
    let out = podman::command().args(["inspect", "--format", "{{.Id}}", &name]).output().expect("podman inspect");
    assert!(out.status.success(), "podman inspect: {}", String::from_utf8_lossy(&out.stderr));
    Container { name, id: String::from_utf8_lossy(&out.stdout).trim().to_string() }
}

fn start(c: &Container) -> bool {
    podman::command().args(["start", &c.name]).stdin(Stdio::null()).output().expect("podman start").status.success()
}

fn alert_state(alerts: &[Value], want: &[(&str, &str)]) -> Option<String> {
    alerts.iter().find(|a| has_labels(a, want)).map(|a| a["state"].as_str().unwrap_or_default().to_string())
}

#[test]
fn containers_denied_oom_killed_and_crash_looping_fire_alerts_that_reach_alertmanager() {
    let agent = Agent::start(&[]);
    let am = Alertmanager::start();
    let prom = Prometheus::start(&[agent.port], &[&deploy::repo(deploy::RULES)], Some(am.port));

    // 1. A container denied acct() by the default profile: once, then 41 times.
    let denied = Container::start("cgwatch-alert-seccomp", &[], &["sleep", "600"]);
    assert_eq!(exec(&denied, &["/cgwatch-workload", "acct", "--count", "1"]), 0);
    let seccomp = format!("cgwatch_seccomp_violations_total{{container=\"{}\",syscall=\"acct\",action=\"errno\"}}", denied.name);
    check_increase(&prom, &seccomp, 1.0, 41.0, || {
        assert_eq!(exec(&denied, &["/cgwatch-workload", "acct", "--count", "41"]), 0);
    });

    // 2. A process of a 64 MiB container allocates 512 MiB: OOM-killed, by the container's own
    // limit; then once more.
    let oom = Container::start("cgwatch-alert-oom", &["--memory", "64m", "--memory-swap", "64m"], &["sleep", "600"]);
    let alloc = ["/cgwatch-workload", "alloc", "--mb", "512"];
    assert_eq!(exec(&oom, &alloc), 137, "killed by SIGKILL");
    let oom_kills = format!("cgwatch_oom_kills_total{{container=\"{}\",limit=\"own\"}}", oom.name);
    check_increase(&prom, &oom_kills, 1.0, 1.0, || assert_eq!(exec(&oom, &alloc), 137));

    // 3. A container that exits 1, restarted 3 times by podman: 4 crashes of one container.
    let looping = Container::start("cgwatch-alert-loop", &["--restart", "on-failure:3"], &["sh", "-c", "sleep 0.5; exit 1"]);
    let exits = format!("cgwatch_container_exits_total{{container=\"{}\",reason=\"error\"}}", looping.name);
    wait_for(90, "4 container exits", || (prom.value(&exits) == Some(4.0)).then_some(()));
    // As many starts, in one series (podman restarts it in place: same cgroup path).
    let starts = format!("cgwatch_container_starts_total{{container=\"{}\"}}", looping.name);
    wait_for(30, "4 container starts", || (prom.value(&starts) == Some(4.0)).then_some(()));

    // 4. A container whose entrypoint does not exist, tried twice: two start failures, no start.
    let failing = container_that_fails_to_start("cgwatch-alert-nostart");
    let failures = format!("cgwatch_container_start_failures_total{{container=\"{}\"}}", failing.name);
    check_increase(&prom, &failures, 1.0, 1.0, || assert!(!start(&failing), "the container started"));
    assert_eq!(prom.value(&format!("cgwatch_container_starts_total{{container=\"{}\"}}", failing.name)), None);

    // The alerts fire in Prometheus with the container's labels...
    let want: [(&str, Vec<(&str, &str)>); 4] = [
        (
            "seccomp",
            vec![("alertname", "CgwatchSeccompDenied"), ("container", &denied.name), ("syscall", "acct"), ("action", "errno")],
        ),
        ("oom", vec![("alertname", "CgwatchOOMKilled"), ("container", &oom.name), ("limit", "own")]),
        ("crash loop", vec![("alertname", "CgwatchContainerCrashLooping"), ("container", &looping.name)]),
        ("start failure", vec![("alertname", "CgwatchContainerStartFailed"), ("container", &failing.name)]),
    ];
    for (what, labels) in &want {
        wait_for(60, &format!("{what} alert firing in Prometheus"), || {
            (alert_state(&prom.alerts(), labels).as_deref() == Some("firing")).then_some(())
        });
    }
    // ...with summary and description naming the container.
    let alerts = prom.alerts();
    let seccomp_alert = alerts.iter().find(|a| has_labels(a, &want[0].1)).unwrap();
    let description = seccomp_alert["annotations"]["description"].as_str().unwrap();
    assert!(description.contains(&denied.name) && description.contains("acct"), "{description}");
    // The crash ratio (4 crashes of the 6 starts of these containers, and whatever else runs on
    // this host) is above 5 %: pending for its 5 minutes. A share of the starts, never above 1.
    wait_for(30, "crash ratio alert pending", || {
        let ratio = alert_state(&prom.alerts(), &[("alertname", "CgwatchContainerCrashRatioHigh")]);
        matches!(ratio.as_deref(), Some("pending" | "firing")).then_some(())
    });
    let ratio = prom.value("cgwatch:container_crash_ratio:rate5m").expect("the crash ratio recorded");
    assert!(ratio > 0.0 && ratio <= 1.0, "crash ratio {ratio}");
    // Nothing in the agent's health is wrong.
    for quiet in ["CgwatchProbeNotAttached", "CgwatchEventsLost", "CgwatchAgentDown"] {
        assert_eq!(alert_state(&alerts, &[("alertname", quiet)]), None, "{quiet}");
    }

    // Alertmanager holds them, labels intact.
    for (what, labels) in &want {
        wait_for(60, &format!("{what} alert in Alertmanager"), || {
            am.alerts().iter().any(|a| want_labels_in_v2(a, labels)).then_some(())
        });
    }

    // Every dashboard query evaluates; the seccomp and OOM panels show these events.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy::repo("deploy/grafana/cgwatch.json")).unwrap()).unwrap();
    let queries = deploy::dashboard_queries(&dashboard);
    for (title, expr) in &queries {
        let r = prom.try_query(expr);
        assert_eq!(r["status"], "success", "panel {title:?}: {expr}\n{r}");
    }
    let panel_value = |title: &str| -> f64 {
        let (_, expr) = queries.iter().find(|(t, _)| t == title).unwrap_or_else(|| panic!("no panel {title:?}"));
        prom.query(expr).iter().filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok()).sum()
    };
    assert!(panel_value("Seccomp violations (range)") >= 42.0);
    assert!(panel_value("OOM kills (range)") >= 2.0);
    assert!(panel_value("Container crashes (range)") >= 4.0);
    let rate = panel_value("Container crash rate (range)");
    assert!(rate > 0.0 && rate <= 1.0, "crash rate {rate}");
    // The lifecycle row: the looping container's 4 starts, the 4 podman exec sessions above, the
    // start latency of these starts.
    assert!(panel_value("Container starts by container (range)") >= 4.0);
    assert!(panel_value("Exec sessions by container (range)") >= 4.0);
    assert!(panel_value("Container start latency P50 / P95") > 0.0);

    // README's one-query answers evaluate, and the seccomp and OOM ones name these containers.
    let readme = std::fs::read_to_string(deploy::repo("README.md")).unwrap();
    let answers: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| ") && l.ends_with("` |"))
        .filter_map(|l| l.trim_end_matches(" |").rsplit(" | ").next())
        .map(|q| q.trim_matches('`'))
        .filter(|q| q.starts_with("sum") || q.starts_with("cgwatch_") || q.starts_with("rate("))
        .collect();
    assert!(answers.len() >= 8, "{answers:?}");
    for q in &answers {
        let r = prom.try_query(q);
        assert_eq!(r["status"], "success", "README: {q}\n{r}");
    }
    let names = |q: &str| -> Vec<String> {
        prom.query(q).iter().filter_map(|s| s["metric"]["container"].as_str().map(str::to_string)).collect()
    };
    assert!(names(answers[0]).contains(&denied.name), "{}", answers[0]);
    assert!(names(answers[1]).contains(&oom.name), "{}", answers[1]);
}

/// Alertmanager's v2 alerts carry `labels` as a flat object.
fn want_labels_in_v2(alert: &Value, want: &[(&str, &str)]) -> bool {
    has_labels(alert, want) && alert["status"]["state"] == "active"
}
