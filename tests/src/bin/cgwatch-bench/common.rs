//! What the sections share: percentiles, the null-syscall workload, probe setups, a process's
//! CPU and memory, scrape latencies.

use std::{
    fs,
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use cgwatch_tests::{Agent, bin, workload_bin};

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Best of three runs of `count` raw getpid calls, ns per call.
pub fn nullsys(count: u64, filter: bool) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut cmd = Command::new(workload_bin());
        cmd.args(["nullsys", "--count", &count.to_string()]);
        if filter {
            cmd.arg("--filter");
        }
        let out = cmd.output()?;
        let ns: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("nullsys output")?;
        best = best.min(ns);
    }
    Ok(best)
}

/// A process that holds probes while it lives.
pub enum Setup {
    None,
    Floor(Child),
    // Held for its lifetime: dropping it stops the agent.
    Agent(#[allow(dead_code)] Agent),
}

impl Setup {
    pub fn start(kind: &str) -> Result<Setup> {
        Ok(match kind {
            "none" => Setup::None,
            "floor" => {
                let mut child = Command::new(bin("cgwatch-floor"))
                    .arg("tp_btf")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()?;
                let mut line = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line)?;
                if line.trim() != "ready" {
                    bail!("cgwatch-floor did not attach");
                }
                Setup::Floor(child)
            }
            "events" => Setup::Agent(Agent::start(&["--events", "/dev/null"])),
            _ => Setup::Agent(Agent::start(&[])),
        })
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Setup::Floor(child) = self {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

pub struct ProcStats {
    pub pid: u32,
}

impl ProcStats {
    pub fn cpu_seconds(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15; after the ")" they are at 11 and 12.
        (ticks(11) + ticks(12)) / procfs_ticks()
    }

    pub fn status_kib(&self, key: &str) -> f64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

pub fn procfs_ticks() -> f64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}


pub fn scrape_latencies(url: &str, n: usize) -> Result<(f64, f64, usize)> {
    let mut lat = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let body = ureq::get(url).call()?.body_mut().read_to_string()?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        size = body.len();
    }
    Ok((percentile(&mut lat.clone(), 0.5), percentile(&mut lat, 0.99), size))
}

