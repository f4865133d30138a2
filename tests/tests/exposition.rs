//! The HTTP contract: format negotiation (OpenMetrics for Prometheus, the text format 0.0.4 for
//! everyone else), gzip when asked, readiness, and the metric catalog as what is exposed.

use std::{collections::BTreeSet, io::Read as _, time::Duration};

use cgwatch::catalog;
use cgwatch_tests::{Agent, Metrics, TestCgroup, promtool_check_metrics};

/// Prometheus 2.42's scrape `Accept` header.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// An agent with one cgroup that has seccomp, exit and resource series.
fn agent_with_events() -> (Agent, TestCgroup) {
    // The event stream on, with a burst of one: the three denials below write one event and
    // suppress two, so the stream's families have series too.
    let agent = Agent::start(&["--events", "/dev/null", "--events-rate", "1", "--events-burst", "1"]);
    let cg = TestCgroup::new("expo");
    assert!(cg.run(&["seccomp", "--action", "errno", "--count", "3"]).success());
    assert_eq!(cg.run(&["exit", "2"]).code(), Some(2));
    let m = agent.scrape_until(Duration::from_secs(10), |m| {
        m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]) == Some(3.0)
            && m.get("cgwatch_host_cpu_usage_ratio", &[]).is_some()
    });
    assert_eq!(m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]), Some(3.0));
    (agent, cg)
}

#[test]
fn the_text_format_by_default_passes_promtool_without_a_lint_problem() {
    let (agent, _cg) = agent_with_events();
    let r = agent.get("/metrics", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = r.text();
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "OpenMetrics-only lines in the text format");
    // Counters are typed under their sample names in the text format.
    assert!(text.contains("# TYPE cgwatch_seccomp_violations_total counter\n"), "{text}");
    assert!(text.contains("# HELP cgwatch_seccomp_violations_total Syscalls denied"), "{text}");
    let (ok, said) = promtool_check_metrics(&text);
    assert!(ok && said.trim().is_empty(), "promtool check metrics:\n{said}");
    // curl's `*/*` gets the same.
    assert_eq!(agent.get("/metrics", &[("Accept", "*/*")]).header("content-type"), r.header("content-type"));
}

#[test]
fn prometheus_gets_openmetrics_and_gzip_when_it_asks() {
    let (agent, cg) = agent_with_events();
    // The same series, in the same order, either way (values of CPU and the like may move).
    // Other activity on the host (the other tests of this file, containers of an earlier test
    // binary going away) can add or drop a series between two scrapes: a pair that differs is
    // taken again, a few times; a real difference between the encodings differs every time.
    let names = |m: &Metrics| m.samples.iter().map(|s| (s.name.clone(), s.labels.clone())).collect::<Vec<_>>();
    let mut tries = 0;
    let (om_text, unzipped) = loop {
        let om = agent.get("/metrics", &[("Accept", PROMETHEUS_ACCEPT)]);
        assert_eq!(om.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
        assert_eq!(om.header("content-encoding"), None, "no gzip unless asked");
        let om_text = om.text();
        assert!(om_text.ends_with("# EOF\n"));
        assert!(om_text.contains("# TYPE cgwatch_seccomp_violations counter\n"));

        let gz = agent.get("/metrics", &[("Accept", PROMETHEUS_ACCEPT), ("Accept-Encoding", "gzip")]);
        assert_eq!(gz.header("content-encoding"), Some("gzip"));
        let mut unzipped = String::new();
        flate2::read::GzDecoder::new(&gz.body[..]).read_to_string(&mut unzipped).expect("a gzip body");
        // (Prometheus text compresses 5-10x when large; a small scrape, as on an idle host, less.)
        assert!(gz.body.len() * 2 < unzipped.len(), "compressed {} of {}", gz.body.len(), unzipped.len());
        tries += 1;
        let (a, b) = (Metrics::parse(&om_text), Metrics::parse(&unzipped));
        if tries == 5 || names(&a) == names(&b) {
            break (om_text, unzipped);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let (a, b) = (Metrics::parse(&om_text), Metrics::parse(&unzipped));
    let counted = |m: &Metrics| m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]);
    assert_eq!((counted(&a), counted(&b)), (Some(3.0), Some(3.0)));
    assert_eq!(names(&a), names(&b));
    assert!(unzipped.ends_with("# EOF\n"));

    let text_gz = agent.get("/metrics", &[("Accept-Encoding", "gzip;q=0")]);
    assert_eq!(text_gz.header("content-encoding"), None);
}

/// Every exposed family is in the catalog (docs/metrics.md) with its type and labels, and the
/// catalog's always-present families are exposed: the docs cannot drift from the code.
#[test]
fn every_exposed_metric_is_in_the_catalog_with_its_type_and_labels() {
    let (agent, _cg) = agent_with_events();
    let om = agent.get("/metrics", &[("Accept", "application/openmetrics-text")]).text();
    let mut families = BTreeSet::new();
    for line in om.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').unwrap();
        let m = catalog::ALL.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name} is not in the catalog"));
        assert_eq!(m.kind.as_str(), kind, "{name}");
        families.insert(name.to_string());
    }
    for s in Metrics::parse(&om).samples {
        let m = catalog::by_sample_name(&s.name).unwrap_or_else(|| panic!("sample {} is not in the catalog", s.name));
        let allowed = m.all_labels();
        for label in s.labels.keys() {
            assert!(allowed.contains(&label.as_str()), "{}: label {label} is not in the catalog", s.name);
        }
        // The metric's own labels are always there; the identity labels only where known.
        for label in m.labels {
            assert!(s.labels.contains_key(*label), "{}: no {label}", s.name);
        }
        if m.per_cgroup {
            assert!(s.labels.contains_key("cgroup"), "{}: no cgroup", s.name);
        }
    }
    // Families with series on any host once a cgroup had a denial and an exit. The OOM and
    // container families appear with their first event; memory limit and PSI where the kernel
    // has them.
    let conditional = [
        &catalog::OOM_KILLS,
        &catalog::CONTAINER_EXITS,
        &catalog::CONTAINER_STARTS,
        &catalog::CONTAINER_EXEC_SESSIONS,
        &catalog::CONTAINER_START_FAILURES,
        &catalog::CONTAINER_START_DURATION,
        &catalog::CONTAINER_LIFETIME,
        &catalog::CONTAINER_INFO,
        &catalog::CONTAINERS,
        &catalog::CGROUP_MEMORY_LIMIT,
        &catalog::CGROUP_PRESSURE,
        &catalog::HOST_PRESSURE,
        &catalog::CGROUP_CPU_THROTTLED,
        &catalog::CGROUP_MEMORY_EVENTS,
    ];
    let m = Metrics::parse(&om);
    for c in catalog::ALL.iter().filter(|c| !conditional.contains(c)) {
        assert!(families.contains(c.name), "{} is not exposed", c.name);
        assert!(!m.find(&c.sample_name(), &[]).is_empty(), "{} has no series", c.name);
    }
}

#[test]
fn readiness_and_liveness() {
    let agent = Agent::start(&[]);
    let live = agent.get("/healthz", &[]);
    assert_eq!((live.status, live.text().as_str()), (200, "ok\n"));
    let ready = agent.get("/readyz", &[]);
    assert_eq!(ready.status, 200);
    let text = ready.text();
    // One line per probe: name, mode, attached.
    assert!(text.starts_with("ready\n"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("process_exit ") && l.ends_with(" 1")), "{text}");
    assert_eq!(text.lines().count(), 1 + cgwatch::probes::PROBES.len(), "{text}");
}
