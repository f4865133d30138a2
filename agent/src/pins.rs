//! bpffs pinning: the maps and links that outlive the agent, so that counters survive a restart
//! and the probes keep counting while the agent is down.
//!
//! Layout below `--pin-path` (default `/sys/fs/bpf/cgwatch`):
//! `layout-<N>/maps/<MAP>` and `layout-<N>/links/<probe>-<fingerprint>`. `N` is [`LAYOUT`], the
//! version of the maps' key and value layouts: an agent finding pins of another layout removes
//! them and starts its counters at zero, saying so. A pinned map whose size differs (a new
//! `--max-cgroups`) is migrated: a new map is made and the old one's counts are copied into it
//! once the old programs are detached. A link's fingerprint covers its program, the kernel
//! layout handed to it and the map sizes: a restarted agent whose programs are the same keeps
//! the running links (not a single event missed); a different one attaches its own, then
//! detaches the old ones.

use std::{
    collections::hash_map::DefaultHasher,
    fs, io,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapInfo},
    programs::links::PinnedLink,
};
use log::{info, warn};

/// Version of the pinned maps' layout: bump it when a pinned map's key or value type, or its
/// meaning, changes.
pub const LAYOUT: u32 = 1;

/// Every map of the object but `.rodata` (the kernel layout and log level, set per load):
/// counters, lost events, the cgroup event ring, the per-task state the programs share between
/// hooks, and the diagnostics.
pub const PINNED_MAPS: [&str; 23] = [
    "SECCOMP_COUNTS",
    "EXIT_COUNTS",
    "OOM_COUNTS",
    "LOST",
    "EVENTS",
    "TASKS",
    "SECCOMP_SYSCALL",
    "SECCOMP_KILLED",
    "SECCOMP_TRACING",
    "RECENT_KILLS",
    "LAST_OOM",
    "OOM_PENDING",
    "EXIT_DEDUP",
    // The container lifecycle: its counts, the state of every cgroup instance made while the
    // probes ran, the tasks already counted, the tasks that started containers, and the start and
    // exit records waiting for the agent.
    "LIFECYCLE_COUNTS",
    "CGROUP_STATE",
    "EXEC_SEEN",
    "STARTERS",
    "LIFECYCLE_EVENTS",
    // The kernel-side diagnostics (aya-log's ring, the rate limiter), so that the programs of
    // pinned links keep logging to whichever agent runs.
    "AYA_LOGS",
    "DIAG_LAST",
    // The event stream: its ring (events while the agent is down wait there), its token
    // buckets and its suppression counts.
    "EVENT_RING",
    "EVENT_BUCKETS",
    "EVENTS_SUPPRESSED",
];

/// Counter maps whose counts are carried into a resized map.
pub const MIGRATED_MAPS: [&str; 4] = ["SECCOMP_COUNTS", "EXIT_COUNTS", "OOM_COUNTS", "LIFECYCLE_COUNTS"];

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{} is not on a BPF filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`)", .0.display())]
    NotBpffs(PathBuf),
    #[error("cannot use {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io { path: path.to_path_buf(), source }
}

/// What a map must look like to be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapShape {
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// The pin directory of this layout.
#[derive(Debug, Clone)]
pub struct Pins {
    root: PathBuf,
    dir: PathBuf,
    /// Pins of other layouts removed by `open`.
    removed: usize,
}

/// A pinned map set aside (open, unpinned) to have its counts copied into its resized successor.
pub struct Migration {
    pub map: &'static str,
    pub old: MapData,
}

impl std::fmt::Debug for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Migration({})", self.map)
    }
}

fn is_bpffs(path: &Path) -> bool {
    use nix::sys::statfs::{BPF_FS_MAGIC, statfs};
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// The BPF filesystem's usual place, which systemd mounts at boot.
const BPFFS: &str = "/sys/fs/bpf";

/// Mounts a BPF filesystem at /sys/fs/bpf when `root` is below it and nothing is mounted
/// there (hosts whose init does not mount it); needs CAP_SYS_ADMIN, else the caller says what
/// to do.
fn mount_bpffs(root: &Path) -> bool {
    let bpffs = Path::new(BPFFS);
    if !root.starts_with(bpffs) || !bpffs.is_dir() || is_bpffs(bpffs) {
        return false;
    }
    use nix::mount::{MsFlags, mount};
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match mount(Some("bpf"), bpffs, Some("bpf"), flags, None::<&str>) {
        Ok(()) => {
            info!("pins: mounted a BPF filesystem at {BPFFS}");
            true
        }
        Err(_) => false,
    }
}

/// Removes a pin directory tree (bpffs has no recursive removal of its own).
fn remove_tree(path: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(path)? {
        let p = entry?.path();
        if p.is_dir() {
            removed += remove_tree(&p)?;
        } else {
            fs::remove_file(&p)?;
            removed += 1;
        }
    }
    fs::remove_dir(path)?;
    Ok(removed)
}

/// `cgwatch --unpin`: removes every pin below `root` (the probes detach, the counters go).
pub fn unpin(root: &Path) -> Result<usize, PinError> {
    if !root.exists() {
        return Ok(0);
    }
    remove_tree(root).map_err(io_err(root))
}

impl Pins {
    /// Opens (making it if needed) the pin directory of this layout below `root`, and removes
    /// pins of other layouts.
    pub fn open(root: &Path) -> Result<Pins, PinError> {
        let base = root.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
        if !is_bpffs(base) && !mount_bpffs(root) {
            return Err(PinError::NotBpffs(root.to_path_buf()));
        }
        let dir = root.join(format!("layout-{LAYOUT}"));
        for sub in [dir.join("maps"), dir.join("links"), dir.join("programs")] {
            fs::create_dir_all(&sub).map_err(io_err(&sub))?;
        }
        let mut removed = 0;
        for entry in fs::read_dir(root).map_err(io_err(root))?.flatten() {
            let p = entry.path();
            if p != dir {
                let name = entry.file_name().to_string_lossy().into_owned();
                let n = remove_tree(&p).or_else(|_| fs::remove_file(&p).map(|()| 1)).map_err(io_err(&p))?;
                removed += n;
                warn!("pins: removed {name} ({n} pins) below {}: this agent's map layout is {LAYOUT}, counts start at zero", root.display());
            }
        }
        Ok(Pins { root: root.to_path_buf(), dir, removed })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many pins of other layouts `open` removed (links among them detach a moment later).
    pub fn removed_at_open(&self) -> usize {
        self.removed
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    /// Where the program of a pinned link is pinned, beside it (its skipped runs are read
    /// through it after a restart).
    pub fn program_path(&self, probe: &str, fingerprint: u64) -> PathBuf {
        self.dir.join("programs").join(format!("{probe}-{fingerprint:016x}"))
    }

    /// Checks the pinned maps against the shapes this agent will load: a pin of another size is
    /// set aside for migration (counter maps) or removed, one of another key or value size is
    /// removed. Returns the maps to migrate after loading.
    pub fn check_maps(&self, shapes: &[(&'static str, MapShape)]) -> Result<Vec<Migration>, PinError> {
        let mut migrations = Vec::new();
        for (name, want) in shapes {
            let path = self.map_path(name);
            if !path.exists() {
                continue;
            }
            let have = MapInfo::from_pin(&path).map(|i| MapShape {
                key_size: i.key_size(),
                value_size: i.value_size(),
                max_entries: i.max_entries(),
            });
            match have {
                Ok(have) if have == *want => {}
                Ok(have) if have.key_size == want.key_size && have.value_size == want.value_size && MIGRATED_MAPS.contains(name) => {
                    // Held open and unpinned (bpffs refuses renames): the loader pins a new map of
                    // the wanted size in its place, and the counts are copied over after.
                    let old = MapData::from_pin(&path).map_err(|e| PinError::Io { path: path.clone(), source: io::Error::other(e) })?;
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    info!("pins: {name} holds {} entries, {} wanted: its counts move to a new map", have.max_entries, want.max_entries);
                    migrations.push(Migration { map: name, old });
                }
                other => {
                    warn!("pins: {name} does not fit ({other:?}, want {want:?}): removed, its counts start at zero");
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
        }
        Ok(migrations)
    }

    /// The pin path of a probe's link for a program fingerprint.
    pub fn link_path(&self, probe: &str, fingerprint: u64) -> PathBuf {
        self.links_dir().join(format!("{probe}-{fingerprint:016x}"))
    }

    /// The pinned link of `probe` with this fingerprint, if one is there: its program is still
    /// attached.
    pub fn existing_link(&self, probe: &str, fingerprint: u64) -> Option<PinnedLink> {
        let path = self.link_path(probe, fingerprint);
        path.exists().then(|| PinnedLink::from_pin(&path).ok()).flatten()
    }

    /// Unpins `probe`'s links other than `keep` (their programs detach). Returns how many.
    /// (Their programs' pins go too; the count is of links.)
    pub fn detach_others(&self, probe: &str, keep: Option<&Path>) -> usize {
        let keep = keep.and_then(Path::file_name);
        let _ = self.remove_others(&self.dir.join("programs"), probe, keep);
        self.remove_others(&self.links_dir(), probe, keep)
    }

    fn remove_others(&self, dir: &Path, probe: &str, keep: Option<&std::ffi::OsStr>) -> usize {
        let prefix = format!("{probe}-");
        let Ok(entries) = fs::read_dir(dir) else { return 0 };
        let mut n = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // "<probe>-<16 hex>": another probe's name may start with this one's.
            let is_ours = name.strip_prefix(&prefix).is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if is_ours && Some(e.file_name().as_os_str()) != keep && fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        n
    }
}

/// A fingerprint of what a link runs: the program's tag (a hash of its instructions), its
/// name, the kernel layout it was loaded with and the map sizes. (SipHash with fixed keys: the
/// same for the same agent binary, which is what reuse needs.)
pub fn fingerprint(parts: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}
