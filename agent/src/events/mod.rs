//! The JSON event stream (`--events`): kernel records of seccomp verdicts, OOM kills, noteworthy
//! exits, container starts and exec sessions, named with their cgroup and container, one JSON
//! object a line.

pub mod record;
pub mod schema;
pub mod sink;

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use log::warn;
use tokio::{io::unix::AsyncFd, sync::Notify};

pub use record::Record;
pub use sink::{Destination, Sink, Stats};

use crate::cgroups::Registry;

/// How long a record may wait for its container's names (a new container's first event often
/// comes before the runtime's state is read).
pub const HOLD_FOR_NAMES: Duration = Duration::from_secs(2);
/// Most records held for names at once; beyond, the oldest go out as they are.
const MAX_HELD: usize = 4096;

/// What the reader needs besides the ring.
#[derive(Debug)]
pub struct Reader {
    pub registry: Arc<Registry>,
    pub memory_v1: Option<PathBuf>,
    pub sink: Sink,
}

impl Reader {
    /// Reads the ring until `stop` is notified, holding each record until its cgroup is named
    /// (at most `HOLD_FOR_NAMES`), in order. On `stop`, reads what the ring still holds and hands
    /// every record over at once, then drops the sink (see `sink::finish`).
    pub async fn run(self, ring: RingBuf<MapData>, stop: Arc<Notify>) {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for as long as it
        // lives, and the AsyncFd owns the RingBuf.
        let mut fd = match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                warn!("events off: cannot poll the event ring buffer ({})", e.into_parts().1);
                return;
            }
        };
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
        let mut held: VecDeque<(Record, Instant)> = VecDeque::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            let mut stopping = false;
            tokio::select! {
                _ = stop.notified() => {
                    let ring = fd.get_mut();
                    let now = Instant::now();
                    while let Some(item) = ring.next() {
                        if let Some(e) = Record::decode(&item) {
                            held.push_back((e, now));
                        }
                    }
                    stopping = true;
                }
                guard = fd.readable_mut() => {
                    let mut guard = match guard {
                        Ok(g) => g,
                        Err(e) => {
                            warn!("events off: event ring buffer: {e}");
                            return;
                        }
                    };
                    let now = Instant::now();
                    let ring = guard.get_inner_mut();
                    while let Some(item) = ring.next() {
                        if let Some(e) = Record::decode(&item) {
                            held.push_back((e, now));
                        }
                    }
                    guard.clear_ready();
                }
                _ = tick.tick(), if !held.is_empty() => {}
            }
            let ctx = record::Context {
                registry: &self.registry,
                memory_v1: self.memory_v1.as_deref(),
                page_size,
                realtime_offset_ns: record::realtime_offset_ns(),
            };
            while let Some((e, at)) = held.front() {
                let named = self.registry.describe(e.event.cgroup_id).is_some_and(|(_, id)| !id.pending());
                if !named && !stopping && at.elapsed() < HOLD_FOR_NAMES && held.len() <= MAX_HELD {
                    break;
                }
                if let Some((t, line)) = record::encode(&ctx, e) {
                    self.sink.send(t, line);
                }
                held.pop_front();
            }
            if stopping {
                return;
            }
        }
    }
}
