//! Where the cgroup hierarchies are mounted, the walk of the cgroup2 tree, and the per-cgroup
//! CPU / memory / pressure files (v2, or the v1 controllers at the same path on hybrid hosts).

use std::{
    fs,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Deepest directory level walked below the cgroup2 mount.
const MAX_DEPTH: usize = 64;
/// A v1 `memory.limit_in_bytes` at or above this is "no limit" (the kernel reports
/// PAGE_COUNTER_MAX pages, just under 2^63 bytes).
const V1_UNLIMITED: u64 = 1 << 62;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy at {0}/fs/cgroup or {0}/fs/cgroup/unified (cgwatch needs cgroup v2, \
         alone or in hybrid mode)"
    )]
    NoCgroup2(String),
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the cgroup hierarchies are mounted.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The cgroup2 mount (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid).
    pub v2: PathBuf,
    /// v1 memory controller mount, on hybrid / legacy hosts.
    pub memory_v1: Option<PathBuf>,
    /// v1 cpuacct controller mount, on hybrid / legacy hosts.
    pub cpuacct_v1: Option<PathBuf>,
    /// v1 cpu controller mount (CFS throttling), on hybrid / legacy hosts.
    pub cpu_v1: Option<PathBuf>,
}

impl Layout {
    pub fn detect(sysfs: &Path) -> Result<Self, CgroupError> {
        let base = sysfs.join("fs/cgroup");
        let v2 = if base.join("cgroup.controllers").exists() {
            base.clone()
        } else if base.join("unified/cgroup.controllers").exists() {
            base.join("unified")
        } else {
            return Err(CgroupError::NoCgroup2(sysfs.display().to_string()));
        };
        let mut layout = Layout { v2, memory_v1: None, cpuacct_v1: None, cpu_v1: None };
        if layout.v2 != base
            && let Ok(entries) = fs::read_dir(&base)
        {
            // v1 controllers may be co-mounted ("cpu,cpuacct"): recognise them by their files.
            for entry in entries.flatten() {
                let dir = entry.path();
                if dir == layout.v2 || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if layout.memory_v1.is_none() && dir.join("memory.usage_in_bytes").exists() {
                    layout.memory_v1 = Some(dir.clone());
                }
                if layout.cpu_v1.is_none() && dir.join("cpu.cfs_quota_us").exists() {
                    layout.cpu_v1 = Some(dir.clone());
                }
                if layout.cpuacct_v1.is_none() && dir.join("cpuacct.usage").exists() {
                    layout.cpuacct_v1 = Some(dir);
                }
            }
        }
        Ok(layout)
    }

    fn v2_dir(&self, rel: &str) -> PathBuf {
        join_rel(&self.v2, rel)
    }

    /// The controllers enabled for this cgroup in v2 (its `cgroup.controllers`).
    fn v2_controllers(&self, rel: &str) -> String {
        read_file(&self.v2_dir(rel).join("cgroup.controllers")).unwrap_or_default()
    }

    /// Whether a cgroup below the v2 root may have controllers: the root enables some for its
    /// children (`cgroup.subtree_control`). Not on a hybrid host, where they are all on v1: the
    /// sampler then skips each cgroup's `cgroup.controllers` (a file read per cgroup less).
    pub fn v2_delegates(&self) -> bool {
        read_file(&self.v2.join("cgroup.subtree_control")).is_none_or(|c| !c.trim().is_empty())
    }

    /// CPU, memory and pressure of the cgroup at `rel` (a path relative to the mount, starting
    /// with `/`): from v2 where the controller is enabled there, else from v1 at the same path.
    pub fn resources(&self, rel: &str) -> Resources {
        self.resources_in(rel, true)
    }

    /// `resources`, where `v2_delegates` (once per pass) says whether to look for v2
    /// controllers below the root.
    pub fn resources_in(&self, rel: &str, v2_delegates: bool) -> Resources {
        let root = rel.trim_start_matches('/').is_empty();
        let controllers = if v2_delegates || root { self.v2_controllers(rel) } else { String::new() };
        let has = |name: &str| controllers.split_whitespace().any(|c| c == name);
        let v2 = self.v2_dir(rel);
        let mut r = Resources::default();

        let v1_cpu = self.cpuacct_v1.as_ref().map(|m| join_rel(m, rel).join("cpuacct.usage"));
        r.cpu_seconds = if !has("cpu")
            && let Some(ns) = v1_cpu.as_ref().and_then(|p| read_u64(p))
        {
            Some(ns as f64 / 1e9)
        } else {
            // cpu.stat's usage_usec is a core v2 file, there even without the cpu controller.
            read_keyed(&v2.join("cpu.stat"), "usage_usec").map(|us| us as f64 / 1e6)
        };
        r.cpu_throttled_seconds = if has("cpu") {
            read_keyed(&v2.join("cpu.stat"), "throttled_usec").map(|us| us as f64 / 1e6)
        } else {
            let stat = self.cpu_v1.as_ref().map(|m| join_rel(m, rel).join("cpu.stat"));
            stat.and_then(|p| read_keyed(&p, "throttled_time")).map(|ns| ns as f64 / 1e9)
        };

        if has("memory") {
            r.memory_bytes = read_u64(&v2.join("memory.current"));
            r.memory_limit_bytes = read_u64(&v2.join("memory.max")); // "max" does not parse: no limit
            let inactive = read_keyed(&v2.join("memory.stat"), "inactive_file");
            r.memory_working_set_bytes = working_set(r.memory_bytes, inactive);
            if let Some(text) = read_file(&v2.join("memory.events")) {
                r.memory_events = parse_memory_events(&text);
            }
        } else if let Some(m) = &self.memory_v1 {
            let dir = join_rel(m, rel);
            r.memory_bytes = read_u64(&dir.join("memory.usage_in_bytes"));
            r.memory_limit_bytes = read_file(&dir.join("memory.limit_in_bytes")).and_then(|t| parse_v1_limit(&t));
            let inactive = read_keyed(&dir.join("memory.stat"), "total_inactive_file");
            r.memory_working_set_bytes = working_set(r.memory_bytes, inactive);
            // v1 counts only OOM kills (kernel >= 4.13), in memory.oom_control.
            if let Some(v) = read_keyed(&dir.join("memory.oom_control"), "oom_kill") {
                r.memory_events.push(("oom_kill", v));
            }
        }
        // PSI files are core cgroup2 files: there without the controllers (hybrid hosts too).
        for resource in PRESSURE_RESOURCES {
            for (kind, seconds) in read_pressure(&v2.join(format!("{resource}.pressure"))) {
                r.pressure.push((resource, kind, seconds));
            }
        }
        r
    }

    /// Whether the cgroup at `rel` has processes (`cgroup.events`); false when it is gone.
    pub fn is_populated(&self, rel: &str) -> bool {
        read_file(&self.v2_dir(rel).join("cgroup.events")).is_some_and(|s| parse_populated(&s))
    }

    /// Walks the cgroup2 mount. Errors below the root (a cgroup removed during the walk) are
    /// skipped; an unreadable root is an error.
    pub fn scan(&self) -> Result<Vec<ScannedCgroup>, CgroupError> {
        let root_meta = fs::metadata(&self.v2)
            .map_err(|source| CgroupError::Io { path: self.v2.clone(), source })?;
        let mut out = vec![ScannedCgroup { id: root_meta.ino(), path: "/".into(), populated: true }];
        let mut stack = vec![(self.v2.clone(), String::new(), 0usize)];
        while let Some((dir, rel, depth)) = stack.pop() {
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                // file_type() does not follow symlinks: only real cgroup directories.
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let child_rel = format!("{rel}/{}", entry.file_name().to_string_lossy());
                let path = entry.path();
                let populated = read_file(&path.join("cgroup.events")).is_some_and(|s| parse_populated(&s));
                out.push(ScannedCgroup { id: meta.ino(), path: child_rel.clone(), populated });
                stack.push((path, child_rel, depth + 1));
            }
        }
        Ok(out)
    }
}

/// v2 `memory.events` keys exported (a fixed set, so the label's cardinality is bounded).
pub const MEMORY_EVENTS: [&str; 6] = ["low", "high", "max", "oom", "oom_kill", "oom_group_kill"];
/// PSI resources of a cgroup (the host also has irq).
pub const PRESSURE_RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

/// CPU, memory and pressure of one cgroup; `None` / empty where the file is missing or
/// unreadable (an old kernel, a controller that is not enabled).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub cpu_seconds: Option<f64>,
    pub cpu_throttled_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// Usage minus inactive file pages, as the kubelet computes it for eviction.
    pub memory_working_set_bytes: Option<u64>,
    /// `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// (event, count) from memory.events (v2) or memory.oom_control (v1).
    pub memory_events: Vec<(&'static str, u64)>,
    /// (resource, some|full, total stall seconds) from PSI.
    pub pressure: Vec<(&'static str, &'static str, f64)>,
}

fn working_set(usage: Option<u64>, inactive_file: Option<u64>) -> Option<u64> {
    usage.map(|u| u.saturating_sub(inactive_file.unwrap_or(0)))
}

/// Total stall time of each line of a PSI file (`<procfs>/pressure/*`, `<cgroup>/*.pressure`):
/// (some|full, seconds). Lines the kernel does not have (cpu "full" before 5.13) are absent.
pub fn read_pressure(path: &Path) -> Vec<(&'static str, f64)> {
    read_file(path).map(|text| parse_pressure(&text)).unwrap_or_default()
}

/// [`read_pressure`] of the text of a PSI file.
pub fn parse_pressure(text: &str) -> Vec<(&'static str, f64)> {
    text.lines()
        .filter_map(|line| {
            let kind = match line.split_whitespace().next()? {
                "some" => "some",
                "full" => "full",
                _ => return None,
            };
            // procfs's parser slices the line at byte 5 unchecked: a bare "some" (a truncated
            // file) or a multi-byte space after the kind would panic there. Such a line has no
            // record anyway.
            line.get(5..)?;
            let record = procfs::parse_pressure_record(line).ok()?;
            Some((kind, record.total as f64 / 1e6))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedCgroup {
    pub id: u64,
    pub path: String,
    pub populated: bool,
}

fn join_rel(base: &Path, rel: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() { base.to_path_buf() } else { base.join(rel) }
}

/// A cgroup file's text; `None` when it is missing or unreadable. Every file parser below takes
/// what this returns, so that each can be tested (and fuzzed) on text alone.
/// A small file's text. Not `fs::read_to_string`, whose size hint costs a statx and an lseek
/// per file: the sampler reads some ten files per cgroup, thousands of cgroups per pass.
fn read_file(path: &Path) -> Option<String> {
    let mut file = fs::File::open(path).ok()?;
    let mut text = String::with_capacity(512);
    io::Read::read_to_string(&mut io::Read::take(&mut file, 1 << 20), &mut text).ok()?;
    Some(text)
}

fn read_u64(path: &Path) -> Option<u64> {
    parse_u64(&read_file(path)?)
}

fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    keyed(&read_file(path)?, key)
}

/// A single-number file (`memory.current`, `memory.max`, `cpuacct.usage`,
/// `memory.usage_in_bytes`, ...). `None` when it is not a number (`max`: no limit).
pub fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// v1 `memory.limit_in_bytes`: `None` when unlimited.
pub fn parse_v1_limit(text: &str) -> Option<u64> {
    parse_u64(text).filter(|&l| l < V1_UNLIMITED)
}

/// v2 `memory.events`: the exported events ([`MEMORY_EVENTS`]) the file has, in that order.
pub fn parse_memory_events(text: &str) -> Vec<(&'static str, u64)> {
    MEMORY_EVENTS.iter().filter_map(|&ev| keyed(text, ev).map(|v| (ev, v))).collect()
}

/// v2 `cgroup.events`: whether the cgroup has processes (or populated children).
pub fn parse_populated(text: &str) -> bool {
    text.lines().any(|l| l.trim() == "populated 1")
}

/// The value of `key` in a "key value" per line file (`cpu.stat`, `memory.stat`, v1
/// `memory.oom_control`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key { v.trim().parse().ok() } else { None }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("fs/cgroup");
        fs::create_dir_all(cg.join("unified/app")).unwrap();
        fs::write(cg.join("unified/cgroup.controllers"), "").unwrap();
        fs::write(cg.join("unified/app/cgroup.controllers"), "").unwrap();
        fs::write(cg.join("unified/app/cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        fs::write(cg.join("unified/app/cpu.stat"), "usage_usec 2500000\nuser_usec 1\n").unwrap();
        fs::create_dir_all(cg.join("memory/app")).unwrap();
        fs::write(cg.join("memory/memory.usage_in_bytes"), "1").unwrap();
        fs::write(cg.join("memory/app/memory.usage_in_bytes"), "4096\n").unwrap();
        fs::write(cg.join("memory/app/memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        fs::write(cg.join("memory/app/memory.stat"), "cache 0\ntotal_inactive_file 1024\n").unwrap();
        fs::write(cg.join("memory/app/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        fs::create_dir_all(cg.join("cpu,cpuacct/app")).unwrap();
        fs::write(cg.join("cpu,cpuacct/cpuacct.usage"), "1").unwrap();
        fs::write(cg.join("cpu,cpuacct/app/cpuacct.usage"), "3000000000\n").unwrap();
        fs::write(cg.join("cpu,cpuacct/cpu.cfs_quota_us"), "-1").unwrap();
        fs::write(cg.join("cpu,cpuacct/app/cpu.stat"), "nr_periods 4\nnr_throttled 2\nthrottled_time 500000000\n").unwrap();

        let layout = Layout::detect(dir.path()).unwrap();
        assert_eq!(layout.v2, cg.join("unified"));
        assert_eq!(layout.memory_v1, Some(cg.join("memory")));
        assert_eq!(layout.cpuacct_v1, Some(cg.join("cpu,cpuacct")));
        assert_eq!(layout.cpu_v1, Some(cg.join("cpu,cpuacct")));
        let r = layout.resources("/app");
        assert_eq!(r.cpu_seconds, Some(3.0));
        assert_eq!(r.memory_bytes, Some(4096));
        assert_eq!(r.memory_limit_bytes, None, "v1 'unlimited' is no limit");
        assert_eq!(r.memory_working_set_bytes, Some(4096 - 1024));
        assert_eq!(r.memory_events, vec![("oom_kill", 2)]);
        assert_eq!(r.cpu_throttled_seconds, Some(0.5));
        // No subtree_control file (a fixture): assume delegation; an empty one: none.
        assert!(layout.v2_delegates());
        fs::write(cg.join("unified/cgroup.subtree_control"), "\n").unwrap();
        assert!(!layout.v2_delegates());
        assert_eq!(layout.resources_in("/app", false), r);

        let scan = layout.scan().unwrap();
        assert_eq!(scan.len(), 2);
        assert_eq!(scan[0].path, "/");
        assert_eq!(scan[1].path, "/app");
        assert!(scan[1].populated);
    }

    #[test]
    fn unified_fixture_tree_uses_v2_controllers() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("fs/cgroup");
        fs::create_dir_all(cg.join("svc")).unwrap();
        fs::write(cg.join("cgroup.controllers"), "cpu memory").unwrap();
        fs::write(cg.join("svc/cgroup.controllers"), "cpu memory").unwrap();
        fs::write(cg.join("svc/cpu.stat"), "usage_usec 1500000\n").unwrap();
        fs::write(cg.join("svc/memory.current"), "8192\n").unwrap();
        fs::write(cg.join("svc/memory.max"), "max\n").unwrap();
        fs::write(cg.join("svc/memory.stat"), "anon 4096\ninactive_file 3072\nactive_file 1024\n").unwrap();
        fs::write(cg.join("svc/memory.events"), "low 0\nhigh 2\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n").unwrap();
        fs::write(cg.join("svc/cpu.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=2500000\n").unwrap();
        fs::write(
            cg.join("svc/memory.pressure"),
            "some avg10=1.00 avg60=0.00 avg300=0.00 total=10\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=4\n",
        )
        .unwrap();
        let layout = Layout::detect(dir.path()).unwrap();
        fs::write(cg.join("cgroup.subtree_control"), "cpu memory\n").unwrap();
        assert!(layout.v2_delegates());
        let r = layout.resources("/svc");
        assert_eq!(r.cpu_seconds, Some(1.5));
        assert_eq!(r.cpu_throttled_seconds, None, "no throttled_usec in this cpu.stat");
        assert_eq!((r.memory_bytes, r.memory_limit_bytes), (Some(8192), None));
        assert_eq!(r.memory_working_set_bytes, Some(8192 - 3072));
        assert_eq!(
            r.memory_events,
            vec![("low", 0), ("high", 2), ("max", 5), ("oom", 1), ("oom_kill", 1), ("oom_group_kill", 0)]
        );
        // A kernel without cpu "full" (before 5.13) just has no such series.
        assert_eq!(r.pressure, vec![("cpu", "some", 2.5), ("memory", "some", 1e-5), ("memory", "full", 4e-6)]);
        fs::write(cg.join("svc/cpu.stat"), "usage_usec 1500000\nthrottled_usec 250000\n").unwrap();
        assert_eq!(layout.resources("/svc").cpu_throttled_seconds, Some(0.25));
        fs::write(cg.join("svc/memory.max"), "1048576\n").unwrap();
        assert_eq!(layout.resources("/svc").memory_limit_bytes, Some(1048576));
    }

    /// Found by `cargo xtask fuzz` (cgroup_files): a PSI line that is only its kind panicked in
    /// procfs's record parser.
    #[test]
    fn a_pressure_line_without_values_is_skipped() {
        for text in ["some", "full\n", "some\u{2003}total=1", "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\nfull"] {
            let parsed = parse_pressure(text);
            assert!(parsed.iter().all(|&(kind, s)| kind == "some" && s == 7e-6), "{text:?}: {parsed:?}");
        }
        assert_eq!(parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\nfull"), vec![("some", 7e-6)]);
    }

    #[test]
    fn no_cgroup2_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Layout::detect(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no cgroup v2 hierarchy"), "{err}");
    }
}
