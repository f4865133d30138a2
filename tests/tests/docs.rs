//! The documentation's commands, run as written against a real agent (host only: the VM matrix
//! has neither jq nor the docs).

use std::{process::Stdio, time::Duration};

use cgwatch_tests::{Agent, TestCgroup, events::EventLog};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn the_readme_jq_one_liners_answer_from_a_real_stream() {
    let log = EventLog::default();
    let _agent = Agent::start(&log.flag());
    let cg = TestCgroup::new("doc-oom");
    cg.set_memory_limit(32 << 20);
    let child = cg.workload(&["alloc", "--mb", "256"]).stdout(Stdio::null()).spawn().unwrap();
    let pid = child.id();
    assert!(!child.wait_with_output().unwrap().status.success());
    log.wait_for(&cg.rel, WAIT, |e| e.iter().any(|e| e["type"] == "oom_kill"));
    // Run as written, reading the file in place of the journal (and, with no Kubernetes here,
    // the namespace filter pointed at a test cgroup).
    let denied = TestCgroup::new("ev-jq");
    assert!(denied.run(&["seccomp", "--action", "errno", "--count", "3"]).success());
    log.wait_for(&denied.rel, WAIT, |e| e.len() == 3);
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let answers: Vec<String> = readme
        .lines()
        .filter(|l| l.starts_with("journalctl -u cgwatch -o cat") && l.contains("| jq"))
        .map(|l| {
            let pipeline = l.split_once("| ").unwrap().1.replace(r#".namespace=="shop""#, &format!(r#".cgroup=="{}""#, denied.rel));
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("cat {} | {pipeline}", log.path.display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "{pipeline}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    assert_eq!(answers.len(), 2, "the README's jq one-liners");
    assert_eq!(answers[0].split_whitespace().collect::<Vec<_>>(), ["3", "getppid"], "{}", answers[0]);
    let victim = answers[1].lines().find(|l| l.contains(&format!(r#""pid":{pid},"#))).unwrap_or_else(|| panic!("{}", answers[1]));
    assert!(victim.contains(r#""comm":"cgwatch-workloa""#) && victim.contains(r#""limit":"#), "{victim}");
}
