//! `cargo xtask bench`: the agent's costs, measured on this kernel, printed as a markdown report.
//! One module per section (`--only N` runs some):
//!
//! 1. null-syscall cost: no probes, empty programs on the same hooks (the floor), the agent,
//!    the bpftrace script a user would write instead; for a task without and with a seccomp
//!    filter (`syscall`);
//! 2. violation storm: 4 threads x 1,000,000 denied syscalls (`storms`);
//! 3. exit storm: short processes at 20,000/s for 10 s (`storms`);
//! 4. scrape latency, size and agent RSS with 2,000 and 10,000 cgroups with events, plain and
//!    gzipped (`scrape`);
//! 5. agent RSS and CPU, idle and under the storms (`storms`);
//! 6. node_exporter side by side on the host metrics both serve, and the bpftrace script beside
//!    the agent's seccomp counts in a violation storm (`peers`);
//! 7. kernel memory of the agent's maps (`map_memory`).
//! 8. start-up memory: peak RSS (VmHWM) and RSS once the agent is ready (`startup`).
//! 9. freshness: how soon a new cgroup's and a new container's series appear (`freshness`).
//! 10. a storm of container starts, counted exactly, and the agent's CPU (`starts`).

mod common;
mod freshness;
mod map_memory;
mod peers;
mod scrape;
mod startup;
mod starts;
mod storms;
mod syscall;

use std::{fs, io::Write as _};

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
pub struct Args {
    /// Rounds of the interleaved syscall benchmark.
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
    /// Syscalls per measurement.
    #[arg(long, default_value_t = 2_000_000)]
    pub calls: u64,
    /// Scrapes for the latency benchmark.
    #[arg(long, default_value_t = 200)]
    pub scrapes: usize,
    /// Rounds of scrapes (one plain, one gzipped) per agent and cgroup count in section 4.
    #[arg(long, default_value_t = 100)]
    pub scale_scrapes: usize,
    /// New cgroups and new containers timed in section 9 (each).
    #[arg(long, default_value_t = 10)]
    pub fresh_rounds: usize,
    /// Containers started in section 10.
    #[arg(long, default_value_t = 500)]
    pub starts: usize,
    /// Run only these sections (e.g. 1,4); all when empty.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<u32>,
    /// Sections 4 and 9 also run this cgwatch binary beside the built one, over the same cgroups
    /// (section 4: its scrapes alternating with the built one's): a before/after within one run.
    #[arg(long)]
    pub baseline: Option<std::path::PathBuf>,
    /// Write the report here as well as to stdout.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut report = String::new();
    let kernel = cgwatch::probes::kernel_release();
    let out: Out = |report: &mut String, line: String| {
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
    };
    out(&mut report, format!("Kernel {kernel}, {} CPUs.\n", std::thread::available_parallelism().map_or(0, |n| n.get())));

    let want = |n: u32| args.only.is_empty() || args.only.contains(&n);
    if want(1) {
        syscall::syscall_overhead(&args, &mut report, out)?;
    }
    if want(2) || want(3) || want(5) {
        storms::storms(&mut report, out, args.scrapes)?;
    }
    if want(4) {
        scrape::scrape_at_scale(&mut report, out, args.scale_scrapes, args.baseline.as_deref())?;
    }
    if want(6) {
        out(&mut report, "### 6. Side by side with node_exporter (host CPU and memory only)\n".into());
        match peers::node_exporter_compare(args.scrapes) {
            Ok(lines) => lines.into_iter().for_each(|l| out(&mut report, l)),
            Err(e) => out(&mut report, format!("node_exporter not measured: {e:#}")),
        }
        out(&mut report, "\n### 6b. bpftrace, the script a user would write (seccomp ERRNO denials per cgroup)\n".into());
        match peers::bpftrace_compare() {
            Ok(lines) => lines.into_iter().for_each(|l| out(&mut report, l)),
            Err(e) => out(&mut report, format!("bpftrace not measured: {e:#}")),
        }
    }
    if want(7) {
        map_memory::map_memory(&mut report, out)?;
    }
    if want(8) {
        startup::startup_memory(&mut report, out)?;
    }
    if want(9) {
        freshness::freshness(&mut report, out, args.fresh_rounds, args.baseline.as_deref())?;
    }
    if want(10) {
        starts::start_storm(&mut report, out, args.starts)?;
    }
    if let Some(path) = args.out {
        fs::File::create(&path)?.write_all(report.as_bytes())?;
    }
    Ok(())
}

/// Prints a report line and keeps it for `--out`.
pub type Out = fn(&mut String, String);
