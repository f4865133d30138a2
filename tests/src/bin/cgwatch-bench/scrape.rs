//! Section 4: scrape latency, size and the agent's memory with many cgroups.

use anyhow::Result;
use cgwatch_tests::{Agent, TestCgroup};

use crate::{
    Out,
    common::{ProcStats, scrape_latencies},
};

pub fn scrape_2000(report: &mut String, out: Out, scrapes: usize) -> Result<()> {
    // 4. Scrape with 2,000 cgroups that have events.
    out(report, "### 4. Scrape with 2,000 cgroups with events\n".into());
    let agent = Agent::start(&["--max-cgroups", "2100"]);
    let stats = ProcStats { pid: agent.pid() };
    let parent = TestCgroup::new("bench-scrape");
    let mut children = Vec::with_capacity(2000);
    for i in 0..2000 {
        let c = parent.child(&format!("c{i}"));
        c.run(&["exit", &(i % 7).to_string()]);
        children.push(c);
    }
    let m = agent.scrape();
    let shown = m.find("cgwatch_process_exits_total", &[]).iter().filter(|s| s.labels["cgroup"].starts_with(&parent.rel)).count();
    let url = format!("http://127.0.0.1:{}/metrics", agent.port);
    let (p50, p99, size) = scrape_latencies(&url, scrapes)?;
    let scrape_rss = stats.status_kib("VmRSS:") / 1024.0;
    out(report, "| cgroups with exit series | scrapes | p50 | p99 | size |".into());
    out(report, "| --- | --- | --- | --- | --- |".into());
    out(report, format!("| {shown} | {scrapes} | {p50:.2} ms | {p99:.2} ms | {} KiB |", size / 1024));
    out(report, format!("\nAgent RSS with 2,000 cgroups after {scrapes} scrapes: {scrape_rss:.1} MiB.\n"));
    drop(children);
    drop(parent);
    drop(agent);
    Ok(())
}
