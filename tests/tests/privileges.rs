//! Least privilege: the agent drops every capability but CAP_DAC_READ_SEARCH once its probes are
//! attached, and runs as a non-root user with ambient capabilities, counting and naming as root
//! does.

use std::time::Duration;

use cgwatch_tests::{Agent, TestCgroup, podman::Container, proc_caps, proc_status};

const CAP_DAC_READ_SEARCH: u64 = 1 << 2;

/// The agent's capabilities once it serves /metrics, and a denial in a fresh cgroup counted
/// exactly and a podman container named after the drop.
fn keeps_working_after_the_drop(agent: &Agent) {
    let pid = agent.pid();
    let caps = (proc_caps(pid, "CapEff:"), proc_caps(pid, "CapPrm:"), proc_caps(pid, "CapAmb:"));
    assert_eq!(caps, (CAP_DAC_READ_SEARCH, CAP_DAC_READ_SEARCH, 0), "{}", agent.log());
    assert!(agent.log().contains("capabilities dropped"), "{}", agent.log());
    let cg = TestCgroup::new("privs");
    assert!(cg.run(&["seccomp", "--action", "errno", "--count", "11"]).success());
    let c = Container::start("cgwatch-privs", &[], &["/cgwatch-workload", "acct", "--count", "3"]);
    assert_eq!(c.wait(), 0);
    let named = [("container", c.name.as_str()), ("runtime", "podman"), ("syscall", "acct")];
    let m = agent.scrape_until(Duration::from_secs(15), |m| {
        m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]) == Some(11.0)
            && m.get("cgwatch_seccomp_violations_total", &named) == Some(3.0)
    });
    assert_eq!(m.get("cgwatch_seccomp_violations_total", &[("cgroup", &cg.rel)]), Some(11.0));
    assert_eq!(m.get("cgwatch_seccomp_violations_total", &named), Some(3.0), "{}", agent.log());
    assert!(!agent.log().contains("WARN"), "{}", agent.log());
}

#[test]
fn a_root_agent_keeps_only_cap_dac_read_search_once_attached() {
    let agent = Agent::start(&[]);
    keeps_working_after_the_drop(&agent);
}

/// The systemd unit's set, as ambient capabilities of an unprivileged uid.
#[test]
fn a_non_root_agent_with_ambient_capabilities_counts_and_names_containers() {
    let set = "-all,+bpf,+perfmon,+dac_read_search";
    let (inh, amb, bnd) = (format!("--inh-caps={set}"), format!("--ambient-caps={set}"), format!("--bounding-set={set}"));
    let wrap = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", &inh, &amb, &bnd];
    let agent = Agent::start_wrapped(&wrap, &[]);
    let uid = proc_status(agent.pid(), "Uid:");
    assert!(uid.starts_with("65534"), "{uid}");
    keeps_working_after_the_drop(&agent);
}
