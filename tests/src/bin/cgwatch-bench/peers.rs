//! Section 6: peers measured in the same run.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use cgwatch_tests::{Agent, free_port};

use crate::common::{ProcStats, scrape_latencies};

pub fn node_exporter_compare(scrapes: usize) -> Result<Vec<String>> {
    let ne = ["/usr/bin/prometheus-node-exporter", "/usr/bin/node_exporter"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .context("install prometheus-node-exporter")?;
    let port = free_port();
    let mut child = Command::new(ne)
        .args([
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--collector.disable-defaults",
            "--collector.cpu",
            "--collector.meminfo",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let ne_url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ureq::get(&ne_url).call().is_err() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("node_exporter did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let agent = Agent::start(&[]);
    let agent_url = format!("http://127.0.0.1:{}/metrics", agent.port);
    let ne_stats = ProcStats { pid: child.id() };
    let ag_stats = ProcStats { pid: agent.pid() };
    let mut lines = vec![
        "| exporter | scrapes | p50 | p99 | size | RSS after |".into(),
        "| --- | --- | --- | --- | --- | --- |".into(),
    ];
    for (name, url, stats) in [
        ("node_exporter (cpu + meminfo collectors)", &ne_url, &ne_stats),
        ("cgwatch (everything)", &agent_url, &ag_stats),
    ] {
        let (p50, p99, size) = scrape_latencies(url, scrapes)?;
        lines.push(format!(
            "| {name} | {scrapes} | {p50:.2} ms | {p99:.2} ms | {} KiB | {:.1} MiB |",
            size / 1024,
            stats.status_kib("VmRSS:") / 1024.0
        ));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(lines)
}
