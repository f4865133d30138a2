//! Limits against hostile clients: request header and idle timeouts, the connection limit and
//! whom it closes (the connection that has gone longest without progress), kept by one table
//! of connections and a reaper over it.

use std::{
    collections::HashMap,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use log::{info, warn};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    task::AbortHandle,
};

/// Request headers (with the request line) larger than this are answered 431. Prometheus
/// sends about 400 bytes, with basic auth about 500.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How often the open connections are counted and their reasons for closing logged, at most.
const REPORT_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A new connection must deliver its first request's headers (TLS handshake included)
    /// within this; on a kept-alive connection, a request's headers are due this long after
    /// its first byte.
    pub read_header_timeout: Duration,
    /// A kept-alive connection may wait this long for its next request; a response may take
    /// this long to be read.
    pub idle_timeout: Duration,
    /// Most open connections.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { read_header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(120), max_connections: 512 }
    }
}

/// One connection's progress, in milliseconds since the table's epoch (0: never).
#[derive(Debug)]
pub struct Conn {
    epoch: Instant,
    accepted: u64,
    /// Accepted, a request's headers complete, or a response written: whichever came last.
    progress: AtomicU64,
    /// The first byte of the next request, when it came before its headers were complete.
    first_byte: AtomicU64,
    in_flight: AtomicU32,
    completed: AtomicU64,
    /// Its task has run: the server has had a chance to read it.
    served: AtomicBool,
}

fn millis(epoch: Instant) -> u64 {
    // +1: 0 means "not yet".
    epoch.elapsed().as_millis() as u64 + 1
}

impl Conn {
    fn new(epoch: Instant) -> Conn {
        let now = millis(epoch);
        Conn {
            epoch,
            accepted: now,
            progress: AtomicU64::new(now),
            first_byte: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            completed: AtomicU64::new(0),
            served: AtomicBool::new(false),
        }
    }

    /// The connection's task runs: from now on, slowness is the client's.
    pub fn serving(&self) {
        self.served.store(true, Ordering::Relaxed);
    }

    /// A request's headers are in: until the guard drops (its response is written or
    /// abandoned), the connection is busy.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.first_byte.store(0, Ordering::Relaxed);
        self.progress.store(millis(self.epoch), Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    fn saw_bytes(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 && self.first_byte.load(Ordering::Relaxed) == 0 {
            self.first_byte.store(millis(self.epoch), Ordering::Relaxed);
        }
    }

    /// When the connection last moved: its last progress or the first byte of a request.
    fn last_moved(&self) -> u64 {
        self.progress.load(Ordering::Relaxed).max(self.first_byte.load(Ordering::Relaxed))
    }



    /// Why the connection must close now, if it must.
    fn expired(&self, now: u64, limits: &Limits) -> Option<Closed> {
        let header = limits.read_header_timeout.as_millis() as u64;
        let idle = limits.idle_timeout.as_millis() as u64;
        let since = |t: u64| now.saturating_sub(t);
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return (since(self.progress.load(Ordering::Relaxed)) > idle).then_some(Closed::Unread);
        }
        if self.completed.load(Ordering::Relaxed) == 0 {
            return (since(self.accepted) > header).then_some(Closed::HeaderTimeout);
        }
        let first = self.first_byte.load(Ordering::Relaxed);
        if first != 0 {
            return (since(first) > header).then_some(Closed::HeaderTimeout);
        }
        (since(self.progress.load(Ordering::Relaxed)) > idle).then_some(Closed::Idle)
    }

    /// Whether the limit may close it for a newcomer: not before the server has read from it
    /// (a busy server must not close the scrapes queued behind the ones it answers), and not
    /// while a request it sent in time is being answered.
    fn evictable(&self, now: u64, limits: &Limits) -> bool {
        self.served.load(Ordering::Relaxed)
            && (self.in_flight.load(Ordering::Relaxed) == 0
                || now.saturating_sub(self.progress.load(Ordering::Relaxed)) > limits.read_header_timeout.as_millis() as u64)
    }
}

/// A request being answered; dropping it (response written, or the connection gone) marks
/// progress.
#[derive(Debug)]
pub struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let c = &self.0;
        c.progress.store(millis(c.epoch), Ordering::Relaxed);
        c.first_byte.store(0, Ordering::Relaxed);
        c.completed.fetch_add(1, Ordering::Relaxed);
        c.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy)]
enum Closed {
    HeaderTimeout,
    Idle,
    /// A response not read within the idle timeout.
    Unread,
}

#[derive(Debug, Default)]
struct Counts {
    evicted: u64,
    refused: u64,
    header_timeout: u64,
    idle: u64,
    unread: u64,
}

struct Entry {
    conn: Arc<Conn>,
    abort: AbortHandle,
}

struct Table {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    counts: Counts,
    peak: usize,
}

/// The open connections.
pub struct Connections {
    limits: Limits,
    epoch: Instant,
    table: Mutex<Table>,
}

/// Removes its connection from the table when the connection's task ends, however it ends.
pub struct ConnGuard {
    conns: Arc<Connections>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.conns.table().entries.remove(&self.id);
    }
}

impl Connections {
    pub fn new(limits: Limits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            epoch: Instant::now(),
            table: Mutex::new(Table { next_id: 0, entries: HashMap::new(), counts: Counts::default(), peak: 0 }),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.table().entries.len()
    }

    /// Starts serving a new connection on its own task, `serve(conn, guard)`. At the limit, the
    /// connection that has gone longest without progress makes room: a client that connects
    /// and sends nothing, or trickles its headers, loses its place to every newcomer, while a
    /// scraper sends its request at once and is being answered. Neither a connection answering
    /// a request it sent in time nor one the server has not read yet (queued while it is busy)
    /// is closed: when every connection is such, the newcomer is closed instead (`serve` is
    /// dropped), as a full listen queue would.
    pub fn admit<F>(self: &Arc<Self>, serve: impl FnOnce(Arc<Conn>, ConnGuard) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let conn = Arc::new(Conn::new(self.epoch));
        let now = conn.accepted;
        let evicted = {
            let mut table = self.table();
            let evicted = if table.entries.len() >= self.limits.max_connections {
                let victim = table
                    .entries
                    .iter()
                    .filter(|(_, e)| e.conn.evictable(now, &self.limits))
                    .min_by_key(|(_, e)| e.conn.last_moved())
                    .map(|(id, _)| *id);
                let Some(id) = victim else {
                    table.counts.refused += 1;
                    return;
                };
                table.counts.evicted += 1;
                table.entries.remove(&id).map(|e| e.abort)
            } else {
                None
            };
            let id = table.next_id;
            table.next_id += 1;
            let guard = ConnGuard { conns: self.clone(), id };
            // Spawned with the table locked: the task's guard can only remove its entry after
            // it is in.
            let task = tokio::spawn(serve(conn.clone(), guard));
            table.entries.insert(id, Entry { conn, abort: task.abort_handle() });
            table.peak = table.peak.max(table.entries.len());
            evicted
        };
        // Outside the lock: the aborted task's guard takes it.
        if let Some(abort) = evicted {
            abort.abort();
        }
    }

    /// Closes the connection that has gone longest without progress, if any may be closed
    /// (when the process is out of file descriptors).
    pub fn evict_one(&self) -> bool {
        let now = millis(self.epoch);
        let abort = {
            let mut table = self.table();
            let victim = table
                .entries
                .iter()
                .filter(|(_, e)| e.conn.evictable(now, &self.limits))
                .min_by_key(|(_, e)| e.conn.last_moved())
                .map(|(id, _)| *id);
            let abort = victim.and_then(|id| table.entries.remove(&id)).map(|e| e.abort);
            if abort.is_some() {
                table.counts.evicted += 1;
            }
            abort
        };
        abort.map(|a| a.abort()).is_some()
    }

    /// Closes the connections past their timeouts, every quarter of the shorter timeout (50 ms
    /// to 1 s), and logs once a minute what it and the limit closed.
    pub async fn reap(self: Arc<Self>) {
        let shortest = self.limits.read_header_timeout.min(self.limits.idle_timeout);
        let every = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = Instant::now();
        loop {
            tick.tick().await;
            let now = millis(self.epoch);
            let mut expired = Vec::new();
            {
                let mut table = self.table();
                let Table { entries, counts, .. } = &mut *table;
                entries.retain(|_, e| match e.conn.expired(now, &self.limits) {
                    None => true,
                    Some(why) => {
                        match why {
                            Closed::HeaderTimeout => counts.header_timeout += 1,
                            Closed::Idle => counts.idle += 1,
                            Closed::Unread => counts.unread += 1,
                        }
                        expired.push(e.abort.clone());
                        false
                    }
                });
                if reported.elapsed() >= REPORT_EVERY {
                    reported = Instant::now();
                    self.report(&mut table);
                }
            }
            for abort in expired {
                abort.abort();
            }
        }
    }

    fn report(&self, table: &mut Table) {
        let c = std::mem::take(&mut table.counts);
        let peak = std::mem::replace(&mut table.peak, table.entries.len());
        if c.evicted + c.refused > 0 {
            warn!(
                "web: the connection limit ({}) was reached in the last minute (peak {peak}): {} connections closed to make room, {} refused; \
                 {} closed by the header timeout, {} idle, {} with a response unread",
                self.limits.max_connections, c.evicted, c.refused, c.header_timeout, c.idle, c.unread
            );
        } else if c.header_timeout + c.unread > 0 {
            info!(
                "web: in the last minute, {} connections closed by the header timeout, {} with a response unread (peak {peak} open)",
                c.header_timeout, c.unread
            );
        }
    }

    /// Shutdown: waits up to `grace` for the requests being answered, then closes everything.
    pub async fn close_all(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && self.table().entries.values().any(|e| e.conn.in_flight.load(Ordering::Relaxed) > 0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let aborts: Vec<AbortHandle> = self.table().entries.drain().map(|(_, e)| e.abort).collect();
        for a in aborts {
            a.abort();
        }
    }
}

/// A connection's byte stream, noting when the next request's first byte arrives (for the
/// header timeout of kept-alive connections).
pub struct Tracked<IO> {
    io: IO,
    conn: Arc<Conn>,
}

impl<IO> Tracked<IO> {
    pub fn new(io: IO, conn: Arc<Conn>) -> Self {
        Tracked { io, conn }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.saw_bytes();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> Limits {
        Limits { read_header_timeout: Duration::from_millis(200), idle_timeout: Duration::from_millis(400), max_connections: max }
    }

    #[test]
    fn timeouts_by_state() {
        let l = limits(10);
        let epoch = Instant::now();
        let c = Arc::new(Conn::new(epoch));
        let t0 = c.accepted;
        // First request: the header timeout runs from the accept, bytes or not.
        assert!(c.expired(t0 + 150, &l).is_none());
        assert!(matches!(c.expired(t0 + 250, &l), Some(Closed::HeaderTimeout)));
        // A request in flight: only a response unread for the idle timeout closes it.
        let g = c.request_started();
        assert!(c.expired(t0 + 300, &l).is_none());
        assert!(matches!(c.expired(t0 + 1000, &l), Some(Closed::Unread)));
        drop(g);
        // Kept alive: the idle timeout until a byte comes, then the header timeout from it.
        let done = c.progress.load(Ordering::Relaxed);
        assert!(c.expired(done + 300, &l).is_none());
        assert!(matches!(c.expired(done + 500, &l), Some(Closed::Idle)));
        c.first_byte.store(done + 100, Ordering::Relaxed);
        assert!(c.expired(done + 250, &l).is_none());
        assert!(matches!(c.expired(done + 350, &l), Some(Closed::HeaderTimeout)));
    }

    #[tokio::test]
    async fn the_limit_closes_the_stalest_and_spares_requests_in_flight() {
        let conns = Connections::new(limits(3));
        let (tx, rx) = tokio::sync::watch::channel(());
        let mut states = Vec::new();
        for _ in 0..3 {
            let mut rx = rx.clone();
            conns.admit(|conn, guard| {
                conn.serving();
                states.push(conn);
                async move {
                    let _guard = guard;
                    let _ = rx.changed().await;
                }
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(conns.open(), 3);
        // The oldest is answering a request: the second (then the third) makes room.
        let busy = states[0].request_started();
        let mut rx2 = rx.clone();
        conns.admit(|_, guard| async move {
            let _guard = guard;
            let _ = rx2.changed().await;
        });
        tokio::task::yield_now().await;
        assert_eq!(conns.open(), 3);
        assert!(Arc::strong_count(&states[1]) == 1, "the stalest idle connection was not closed");
        assert!(Arc::strong_count(&states[0]) > 1);
        drop(busy);
        drop(tx);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(conns.open(), 0);
    }
}
