//! What the sections share: percentiles, the null-syscall workload, probe setups (the floor,
//! the agent, the bpftrace script of tests/bench/seccomp-denials.bt), a process's CPU and
//! memory, scrape latencies, the violation storm.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use cgwatch_tests::{Agent, TestCgroup, bin, which, workload_bin};

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
    // Held for its lifetime: dropping it stops bpftrace.
    Bpftrace(#[allow(dead_code)] Bpftrace),
}

impl Setup {
    pub fn start(kind: &str) -> Result<Setup> {
        Ok(match kind {
            "none" => Setup::None,
            "floor" | "state" => {
                let mut child = Command::new(bin("cgwatch-floor"))
                    .arg(if kind == "floor" { "tp_btf" } else { "state" })
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
            // The periods users run with (the tests' 500 ms would add background work).
            "events" => Setup::Agent(Agent::start(&["--scan-interval", "15s", "--sample-interval", "5s", "--events", "/dev/null"])),
            "bpftrace" => Setup::Bpftrace(Bpftrace::start()?),
            _ => Setup::Agent(Agent::start(&["--scan-interval", "15s", "--sample-interval", "5s"])),
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


/// 4 threads x 1,000,000 denied getppid (ERRNO) in a new cgroup: the cgroup, the wall time and
/// the CPU seconds `observer` spent during it.
pub fn violation_storm(name: &str, observer: &ProcStats) -> Result<(TestCgroup, f64, f64)> {
    let cg = TestCgroup::new(name);
    let c0 = observer.cpu_seconds();
    let t = Instant::now();
    let status = cg.run(&["seccomp", "--action", "errno", "--threads", "4", "--count", "1000000"]);
    let wall = t.elapsed().as_secs_f64();
    if !status.success() {
        bail!("storm workload failed: {status}");
    }
    Ok((cg, wall, observer.cpu_seconds() - c0))
}

/// The bpftrace script a user would write instead of cgwatch to count seccomp denials per
/// cgroup (tracepoints only), relative to the workspace root.
pub const BPFTRACE_SCRIPT: &str = "tests/bench/seccomp-denials.bt";

pub fn bpftrace_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join(BPFTRACE_SCRIPT)
}

/// bpftrace running tests/bench/seccomp-denials.bt, its probes attached; stopped (SIGINT, so
/// that it prints its maps) by `stop` or on drop.
pub struct Bpftrace {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<Vec<String>>>,
    /// Whether tracefs had to be mounted in a mount namespace of bpftrace's own.
    pub private_tracefs: bool,
}

/// What bpftrace printed when it stopped.
pub struct BpftraceOutput {
    /// `@denied[CGROUP_ID, SYSCALL_NR]: COUNT` lines, parsed.
    pub denied: Vec<(u64, i64, u64)>,
    /// Events bpftrace said it lost ("Lost N events"), summed.
    pub lost: u64,
}

impl Bpftrace {
    pub fn start() -> Result<Bpftrace> {
        let bpftrace = which("bpftrace").context("bpftrace is not installed (cargo xtask bench installs it)")?;
        let script = bpftrace_script();
        if !script.exists() {
            bail!("{} is missing", script.display());
        }
        // bpftrace reads tracepoint formats from tracefs (debugfs's tracing/ if that exists).
        // Where nothing mounted it, mount it for bpftrace alone, in a mount namespace of its own:
        // the host's mounts stay as they were. unshare and sh exec, so the child is bpftrace.
        let tracefs_root =
            if Path::new("/sys/kernel/debug/tracing").exists() { "/sys/kernel/debug/tracing" } else { "/sys/kernel/tracing" };
        let private_tracefs = !Path::new(tracefs_root).join("events/raw_syscalls").exists();
        let mut cmd = if private_tracefs {
            let mut c = Command::new(which("unshare").context("tracefs is not mounted and unshare is missing")?);
            c.args(["-m", "sh", "-c", "mount -t tracefs nodev /sys/kernel/tracing && exec \"$0\" \"$@\""]).arg(&bpftrace);
            c
        } else {
            Command::new(&bpftrace)
        };
        // bpftrace 0.17 prints "Attaching N probes..." before it attaches them; with this
        // variable (its own test framework's) it prints this line on stderr once every probe is
        // attached.
        const ATTACHED: &str = "__BPFTRACE_NOTIFY_PROBES_ATTACHED";
        let mut child = cmd
            .arg(&script)
            .env(ATTACHED, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bpftrace.display()))?;
        let mut out = child.stdout.take().expect("piped");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                lines.push(line);
            }
            lines
        });
        let mut bt = Bpftrace { child, stdout: Some(stdout), stderr: Some(stderr), private_tracefs };
        // Compiling the script with LLVM takes seconds, more on a busy machine.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.trim() == ATTACHED => return Ok(bt),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = bt.child.wait()?;
                    let said = bt.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
                    let said: Vec<String> = said.into_iter().filter(|l| l.contains("ERROR")).collect();
                    bail!("bpftrace exited ({status}) before attaching: {}", said.join("; "));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => bail!("bpftrace did not attach within 120 s"),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, then what bpftrace printed at exit.
    pub fn stop(mut self) -> Result<BpftraceOutput> {
        self.interrupt()?;
        let stdout = self.stdout.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        Ok(parse_bpftrace(&stdout, &stderr))
    }

    /// SIGINT and wait for bpftrace to print its maps and exit (SIGKILL after 60 s).
    fn interrupt(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("bpftrace did not exit on SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        let _ = self.interrupt();
    }
}

/// The `@denied[CGROUP_ID, SYSCALL_NR]: COUNT` lines and the "Lost N events" lines of
/// bpftrace's text output.
fn parse_bpftrace(stdout: &str, stderr: &[String]) -> BpftraceOutput {
    let mut denied = Vec::new();
    let mut lost = 0;
    for line in stdout.lines().chain(stderr.iter().map(String::as_str)) {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("Lost ").and_then(|r| r.strip_suffix(" events")) {
            lost += n.trim().parse::<u64>().unwrap_or(0);
        }
        let Some((key, count)) = line.strip_prefix("@denied[").and_then(|r| r.split_once("]: ")) else { continue };
        let mut key = key.split(',').map(str::trim);
        if let (Some(Ok(cgroup)), Some(Ok(nr)), Ok(count)) =
            (key.next().map(str::parse), key.next().map(str::parse), count.trim().parse())
        {
            denied.push((cgroup, nr, count));
        }
    }
    BpftraceOutput { denied, lost }
}

/// An agent from another cgwatch binary (`--baseline`), with the same flags as `Agent::start`.
pub fn start_baseline(bin: &Path, args: &[&str]) -> Result<Agent> {
    // `sh` replaces itself with the baseline binary (same pid), dropping the built one's path.
    let bin = bin.to_str().context("baseline path")?;
    let wrap = ["sh", "-c", "shift; exec \"$0\" \"$@\"", bin];
    Ok(Agent::start_wrapped(&wrap, args))
}
