//! Section 1: the null syscall's cost with no probes, the floor, the agent and the bpftrace
//! script a user would write instead (tests/bench/seccomp-denials.bt).

use anyhow::Result;

use crate::{
    Args, Out,
    common::{Setup, median, nullsys},
};

pub fn syscall_overhead(args: &Args, report: &mut String, out: Out) -> Result<()> {
    // 1. Syscall overhead, interleaved rounds so that drift hits every setup alike.
    out(report, "### 1. Null syscall (raw getpid), ns per call\n".into());
    // "state": the floor plus what any exact method needs on these hooks (test whether the task
    // has a filter; for one that has, a mark in the task at sys_enter read and cleared at sys_exit).
    let mut kinds = vec!["none", "floor", "agent", "events", "state", "bpftrace"];
    // bpftrace joins the rounds only if it can attach here.
    let bpftrace_missing = match Setup::start("bpftrace") {
        Ok(_) => None,
        Err(e) => {
            kinds.pop();
            Some(format!("bpftrace not measured: {e:#}"))
        }
    };
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
    // The ratio of each round (its own no-probes and floor runs, minutes apart at most), then
    // their median: drift between rounds cancels out.
    let ratio = |setup: usize, task: usize| {
        let mut r: Vec<f64> = (0..args.rounds)
            .map(|round| {
                let (n, f, a) = (samples[0][task][round], samples[1][task][round], samples[setup][task][round]);
                (a - n) / (f - n)
            })
            .collect();
        median(&mut r)
    };
    let ratios: Vec<[f64; 2]> = (0..kinds.len()).map(|setup| [ratio(setup, 0), ratio(setup, 1)]).collect();
    let med: Vec<[f64; 2]> = samples.iter_mut().map(|[a, b]| [median(a), median(b)]).collect();
    out(report, "| task | setup | no probes | floor (empty tp_btf on sys_enter+sys_exit) | with the setup | floor adds | setup adds | setup / floor |".into());
    out(report, "| --- | --- | --- | --- | --- | --- | --- | --- |".into());
    let setups = [
        (4, "least exact method: filter test + per-thread mark"),
        (2, "agent"),
        (3, "agent with --events on"),
        (5, "bpftrace script (tracepoints)"),
    ];
    for (i, task) in ["without a seccomp filter", "with a seccomp filter"].iter().enumerate() {
        for &(setup, which) in setups.iter().filter(|(s, _)| *s < kinds.len()) {
            let (n, f, a) = (med[0][i], med[1][i], med[setup][i]);
            out(
                report,
                format!(
                    "| {task} | {which} | {n:.1} | {f:.1} | {a:.1} | {:.1} | {:.1} | {:.2}x |",
                    f - n,
                    a - n,
                    ratios[setup][i]
                ),
            );
        }
    }
    if let Some(line) = bpftrace_missing {
        out(report, format!("\n{line}"));
    }
    out(
        report,
        format!(
            "\nMedians of {} interleaved rounds, each the best of 3 runs of {} calls; \"setup / floor\" is the \
             median of each round's ratio. The agents run with the default periods (--scan-interval 15s \
             --sample-interval 5s).\n",
            args.rounds, args.calls
        ),
    );
    Ok(())
}
