//! `cargo xtask fuzz [--seconds N] [TARGET...]`: the cargo-fuzz targets in `fuzz/`, one per
//! parser of outside text, each for N seconds.
//!
//! Each run starts from the checked-in seed corpus (`fuzz/corpus/<target>`) and replays every
//! regression input (`fuzz/regressions/<target>`, inputs that once crashed) before fuzzing;
//! libFuzzer writes what it learns to `fuzz/target/corpus/<target>`, kept between local runs, never
//! to the checked-in directories. A crash, a leak or a timeout fails the task with the input's
//! path under `fuzz/artifacts/<target>/`. The targets build with the nightly toolchain (cargo-fuzz
//! needs its sanitizer flags) and `AYA_BUILD_SKIP=1`: no BPF toolchain is needed.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{ensure_nightly, run};

/// Seconds per target when not told otherwise; also what `cargo xtask test` gives each.
pub const DEFAULT_SECONDS: u64 = 60;
/// An input that runs longer than this is a failure (a hang), not just slow.
const TIMEOUT_SECONDS: u64 = 10;

/// What one target's run did.
struct Outcome {
    target: String,
    runs: Option<u64>,
    execs_per_sec: Option<u64>,
    /// Inputs libFuzzer saved as failing (crash-*, leak-*, timeout-*, oom-*).
    failing: Vec<PathBuf>,
    log: PathBuf,
    succeeded: bool,
}

/// The fuzz targets: `fuzz/fuzz_targets/*.rs`.
pub fn targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

fn cargo_fuzz(root: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root).args(["+nightly", "fuzz"]).env("AYA_BUILD_SKIP", "1");
    c
}

fn ensure_cargo_fuzz(root: &Path) -> Result<()> {
    let present = cargo_fuzz(root).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if present.is_ok_and(|s| s.success()) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// Inputs libFuzzer saved as failures in `dir`.
fn failing_inputs(dir: &Path) -> BTreeSet<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return BTreeSet::new() };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| ["crash-", "leak-", "timeout-", "oom-"].iter().any(|k| n.starts_with(k)))
        })
        .collect()
}

/// `stat::<name>: <value>` from libFuzzer's final statistics (-print_final_stats=1).
fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines().find_map(|l| l.strip_prefix(&format!("stat::{name}:"))?.trim().parse().ok())
}

fn run_target(root: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let fuzz = root.join("fuzz");
    let work = fuzz.join("target/corpus").join(target);
    let logs = fuzz.join("target/logs");
    let artifacts = fuzz.join("artifacts").join(target);
    for d in [&work, &logs, &artifacts] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let before = failing_inputs(&artifacts);
    let log = logs.join(format!("{target}.log"));
    let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;

    // The first corpus directory is where libFuzzer writes; the others are only read (and every
    // input in them is run first: the regressions replay).
    let mut cmd = cargo_fuzz(root);
    cmd.args(["run", "--fuzz-dir"]).arg(&fuzz).arg(target).arg(&work);
    for dir in [fuzz.join("corpus").join(target), fuzz.join("regressions").join(target)] {
        if dir.is_dir() {
            cmd.arg(dir);
        }
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={TIMEOUT_SECONDS}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1");
    let dict = fuzz.join("dicts").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    let status = cmd
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;

    let text = fs::read_to_string(&log).unwrap_or_default();
    let failing: Vec<PathBuf> = failing_inputs(&artifacts).difference(&before).cloned().collect();
    Ok(Outcome {
        target: target.to_string(),
        runs: stat(&text, "number_of_executed_units"),
        execs_per_sec: stat(&text, "average_exec_per_sec"),
        succeeded: status.success() && failing.is_empty(),
        failing,
        log,
    })
}

/// The lines of a failed run's log worth showing: from the first report of the failure on.
fn failure_excerpt(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("panicked at") || l.starts_with("==") || l.contains("ERROR: libFuzzer"))
        .unwrap_or(lines.len().saturating_sub(30));
    lines[start..].iter().take(40).copied().collect::<Vec<_>>().join("\n")
}

/// Builds every target, then runs the chosen ones (all when `only` is empty) for `seconds` each.
/// Fails when any of them finds a crash, naming the inputs.
pub fn fuzz(root: &Path, seconds: u64, only: &[String]) -> Result<()> {
    let all = targets(root)?;
    if let Some(unknown) = only.iter().find(|t| !all.contains(t)) {
        bail!("no fuzz target {unknown} (there are: {})", all.join(", "));
    }
    let chosen: &[String] = if only.is_empty() { &all } else { only };
    ensure_nightly()?;
    ensure_cargo_fuzz(root)?;
    let started = Instant::now();
    eprintln!("xtask: building the fuzz targets (nightly, AYA_BUILD_SKIP=1)");
    run(cargo_fuzz(root).args(["build", "--fuzz-dir"]).arg(root.join("fuzz")))?;
    let built = started.elapsed().as_secs();

    let mut outcomes = Vec::new();
    for target in chosen {
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        let o = run_target(root, target, seconds)?;
        let rate = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
        eprintln!(
            "xtask: fuzz {target}: {} runs, {} exec/s, {}",
            rate(o.runs),
            rate(o.execs_per_sec),
            if o.succeeded { "no crash" } else { "FAILED" }
        );
        if !o.succeeded {
            eprintln!("{}", failure_excerpt(&o.log));
            for input in &o.failing {
                eprintln!("xtask: fuzz {target}: failing input {}", input.display());
            }
            eprintln!(
                "xtask: fuzz {target}: full log {}; replay with `cargo +nightly fuzz run {target} <input>` (AYA_BUILD_SKIP=1)",
                o.log.display()
            );
        }
        outcomes.push(o);
    }

    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.succeeded).collect();
    let runs: u64 = outcomes.iter().filter_map(|o| o.runs).sum();
    let total = started.elapsed().as_secs();
    if failed.is_empty() {
        println!("fuzz: {} targets x {seconds} s, {runs} runs, no crash ({total} s, build {built} s)", outcomes.len());
        return Ok(());
    }
    let names: Vec<String> = failed
        .iter()
        .map(|o| {
            let inputs: Vec<String> = o.failing.iter().map(|p| p.display().to_string()).collect();
            if inputs.is_empty() { format!("{} (see {})", o.target, o.log.display()) } else { format!("{} ({})", o.target, inputs.join(", ")) }
        })
        .collect();
    println!("fuzz: {} of {} targets failed: {}", failed.len(), outcomes.len(), names.join("; "));
    bail!("fuzzing found crashes: {}", names.join("; "))
}
