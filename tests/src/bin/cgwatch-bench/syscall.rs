//! Section 1: the null syscall's cost with no probes, the floor and the agent.

use anyhow::Result;

use crate::{
    Args, Out,
    common::{Setup, median, nullsys},
};

pub fn syscall_overhead(args: &Args, report: &mut String, out: Out) -> Result<()> {
    // 1. Syscall overhead, interleaved rounds so that drift hits every setup alike.
    out(report, "### 1. Null syscall (raw getpid), ns per call\n".into());
    let kinds = ["none", "floor", "agent", "events"];
    let mut samples: Vec<[Vec<f64>; 2]> = kinds.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for round in 0..args.rounds {
        for k in 0..kinds.len() {
            let kind = kinds[(k + round) % kinds.len()];
            let idx = kinds.iter().position(|x| *x == kind).unwrap();
            let _setup = Setup::start(kind)?;
            samples[idx][0].push(nullsys(args.calls, false)?);
            samples[idx][1].push(nullsys(args.calls, true)?);
        }
    }
    let med: Vec<[f64; 2]> = samples.iter_mut().map(|[a, b]| [median(a), median(b)]).collect();
    out(report, "| task | no probes | floor (empty tp_btf on sys_enter+sys_exit) | agent | floor adds | agent adds | agent / floor |".into());
    out(report, "| --- | --- | --- | --- | --- | --- | --- |".into());
    for (i, task) in ["without a seccomp filter", "with a seccomp filter"].iter().enumerate() {
        for (agent, which) in [(2, ""), (3, ", agent with --events on")] {
            let (n, f, a) = (med[0][i], med[1][i], med[agent][i]);
            out(
                report,
                format!(
                    "| {task}{which} | {n:.1} | {f:.1} | {a:.1} | {:.1} | {:.1} | {:.2}x |",
                    f - n,
                    a - n,
                    (a - n) / (f - n)
                ),
            );
        }
    }
    out(report, format!("\nMedians of {} interleaved rounds, each the best of 3 runs of {} calls.\n", args.rounds, args.calls));
    Ok(())
}
