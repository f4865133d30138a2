//! Where the lines go: stdout or a file, written by a thread of its own behind a bounded queue,
//! so that a slow or full disk never blocks the ring reader, the probes or a scrape. A full queue
//! or a failed write drops lines, counted. A file is reopened on SIGHUP (for logrotate).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, channel, sync_channel},
    },
    time::{Duration, Instant},
};

use log::{info, warn};

use super::schema::TYPES;
use crate::signals::Hangups;

/// Lines waiting for the writer; beyond this, new lines are dropped (and counted).
pub const QUEUE_LINES: usize = 16_384;
/// Lines are written in batches of up to this many bytes.
const BATCH_BYTES: usize = 256 * 1024;

/// Where `--events` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Off,
    Stdout,
    File(PathBuf),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Off => f.write_str("off"),
            Destination::Stdout => f.write_str("stdout"),
            Destination::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Destination {
    /// `off`, `stdout` (or `-`), or a file path.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("empty: say off, stdout or a file path".into()),
            "off" => Ok(Destination::Off),
            "stdout" | "-" => Ok(Destination::Stdout),
            path => Ok(Destination::File(PathBuf::from(path))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open the event file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot start the event writer: {0}")]
    Thread(io::Error),
}

/// What the stream did, for `cgwatch_events_written_total` and `cgwatch_events_dropped_total`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Lines written, by `schema::TYPES` index.
    pub written: [AtomicU64; TYPES.len()],
    /// Lines dropped because the writer's queue was full (the destination is too slow).
    pub dropped_queue_full: AtomicU64,
    /// Lines dropped because writing them failed (disk full, closed pipe).
    pub dropped_write_error: AtomicU64,
}

/// The sending side; lines are handed over without ever waiting.
#[derive(Debug)]
pub struct Sink {
    tx: SyncSender<(usize, String)>,
    stats: Arc<Stats>,
}

enum Out {
    Stdout(io::Stdout),
    File(File),
}

impl Out {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Out::Stdout(s) => {
                let mut lock = s.lock();
                lock.write_all(buf)?;
                lock.flush()
            }
            Out::File(f) => f.write_all(buf),
        }
    }
}

fn open(path: &Path) -> Result<File, SinkError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| SinkError::Open { path: path.to_path_buf(), source })
}

impl Sink {
    /// Opens the destination (an error says why it cannot be written) and starts the writer.
    /// SIGHUPs reopen a file. Must be called inside the runtime. `None` for `Off`.
    pub fn start(dest: &Destination, hangups: Hangups, stats: Arc<Stats>) -> Result<Option<Sink>, SinkError> {
        let out = match dest {
            Destination::Off => return Ok(None),
            Destination::Stdout => Out::Stdout(io::stdout()),
            Destination::File(path) => Out::File(open(path)?),
        };
        let reopen = Arc::new(AtomicBool::new(false));
        if let Destination::File(_) = dest {
            let (reopen, mut hangups) = (reopen.clone(), hangups);
            tokio::spawn(async move {
                while hangups.changed().await.is_ok() {
                    reopen.store(true, Ordering::Relaxed);
                }
            });
        }
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let writer = Writer { out, path: dest.clone(), rx, reopen, stats: stats.clone() };
        let (done_tx, done_rx) = channel();
        std::thread::Builder::new()
            .name("cgwatch-events".into())
            .spawn(move || {
                writer.run();
                let _ = done_tx.send(());
            })
            .map_err(SinkError::Thread)?;
        *WRITER_DONE.lock().unwrap_or_else(|e| e.into_inner()) = Some(done_rx);
        Ok(Some(Sink { tx, stats }))
    }

    /// Queues one line of `type_index` (`schema::TYPES`); drops it, counted, when the queue is
    /// full.
    pub fn send(&self, type_index: usize, line: String) {
        match self.tx.try_send((type_index, line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Said by the writer thread when it has written everything queued and the last `Sink` is gone.
static WRITER_DONE: Mutex<Option<Receiver<()>>> = Mutex::new(None);

/// At shutdown, once every `Sink` is dropped: waits (at most `timeout`) for the writer to write
/// what is still queued. False when it did not finish in time.
pub fn finish(timeout: Duration) -> bool {
    match WRITER_DONE.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(done) => done.recv_timeout(timeout).is_ok(),
        None => true,
    }
}

struct Writer {
    out: Out,
    path: Destination,
    rx: Receiver<(usize, String)>,
    reopen: Arc<AtomicBool>,
    stats: Arc<Stats>,
}

impl Writer {
    fn run(mut self) {
        let mut buf: Vec<u8> = Vec::with_capacity(BATCH_BYTES + 4096);
        let mut counts = [0u64; TYPES.len()];
        let mut last_warning: Option<Instant> = None;
        loop {
            match self.rx.recv_timeout(Duration::from_millis(500)) {
                Ok((t, line)) => {
                    push(&mut buf, &mut counts, t, &line);
                    // Everything queued now goes in this batch.
                    while buf.len() < BATCH_BYTES {
                        match self.rx.try_recv() {
                            Ok((t, line)) => push(&mut buf, &mut counts, t, &line),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if !buf.is_empty() {
                let n: u64 = counts.iter().sum();
                match self.out.write_all(&buf) {
                    Ok(()) => {
                        for (w, c) in self.stats.written.iter().zip(counts) {
                            w.fetch_add(c, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        self.stats.dropped_write_error.fetch_add(n, Ordering::Relaxed);
                        if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                            warn!("events: {n} lines lost, writing failed: {e} (counted in cgwatch_events_dropped_total)");
                            last_warning = Some(Instant::now());
                        }
                    }
                }
                buf.clear();
                counts = [0; TYPES.len()];
            }
            if self.reopen.swap(false, Ordering::Relaxed)
                && let Destination::File(path) = &self.path
            {
                match open(path) {
                    Ok(f) => {
                        self.out = Out::File(f);
                        info!("events: reopened {}", path.display());
                    }
                    Err(e) => warn!("events: {e}; writing on to the file already open"),
                }
            }
        }
    }
}

fn push(buf: &mut Vec<u8>, counts: &mut [u64; TYPES.len()], t: usize, line: &str) {
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    if let Some(c) = counts.get_mut(t) {
        *c += 1;
    }
}
