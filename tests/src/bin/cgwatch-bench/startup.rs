//! Section 8: the agent's start-up memory, its peak (VmHWM) and its RSS once ready.

use anyhow::Result;
use cgwatch_tests::Agent;

use crate::{Out, common::ProcStats};

/// Starts the agent three times; for each, once it serves /metrics (probes loaded and
/// attached), the peak RSS so far (VmHWM: start-up's, reading kernel BTF and loading the
/// programs) and the RSS then (VmRSS).
pub fn startup_memory(report: &mut String, out: Out) -> Result<()> {
    out(report, "### 8. Start-up memory\n".into());
    out(report, "| start | peak RSS (VmHWM) | RSS when ready (VmRSS) |".into());
    out(report, "| --- | --- | --- |".into());
    let mut peaks = Vec::new();
    for run in 1..=3 {
        let agent = Agent::start(&[]);
        let stats = ProcStats { pid: agent.pid() };
        let (hwm, rss) = (stats.status_kib("VmHWM:") / 1024.0, stats.status_kib("VmRSS:") / 1024.0);
        drop(agent);
        peaks.push(hwm);
        out(report, format!("| {run} | {hwm:.1} MiB | {rss:.1} MiB |"));
    }
    let max = peaks.iter().copied().fold(0.0, f64::max);
    out(report, format!("\nHighest start-up peak: {max:.1} MiB (`Agent::start(&[])`: no pins, no event stream).\n"));
    Ok(())
}
