//! Concurrent scrapes share encodings: one encoding of the registry runs at a time, and every
//! scrape that arrives meanwhile waits for the next one, which starts after it arrived (so no
//! scrape is answered with data older than itself) and serves them all. 500 simultaneous
//! scrapes cost two encodings, not 500.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use axum::body::Bytes;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::exposition::{self, Format};

/// Longest a scrape waits for its encoding: Prometheus's default scrape timeout. Past it (a
/// collector stuck on a hung file system), the scraper hears so and retries later.
pub const WAIT_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("the metrics were not encoded within {}s; retry later", WAIT_MAX.as_secs())]
    Busy,
    #[error("{0}")]
    Failed(String),
}

/// What a scraper asked for: a format, gzipped or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub format: Format,
    pub gzip: bool,
}

impl Variant {
    fn index(self) -> usize {
        usize::from(self.format == Format::Text) * 2 + usize::from(self.gzip)
    }

    fn all() -> [Variant; 4] {
        [
            Variant { format: Format::OpenMetrics, gzip: false },
            Variant { format: Format::OpenMetrics, gzip: true },
            Variant { format: Format::Text, gzip: false },
            Variant { format: Format::Text, gzip: true },
        ]
    }
}

type Encoded = [Option<Result<Bytes, String>>; 4];

/// The scrapes waiting for the next encoding, and which variants they want.
struct Batch {
    wanted: AtomicU8,
    done: watch::Sender<Option<Arc<Encoded>>>,
}

#[derive(Default)]
struct State {
    encoding: bool,
    next: Option<Arc<Batch>>,
}

#[derive(Default)]
pub struct Scrapes {
    state: Mutex<State>,
}

impl std::fmt::Debug for Scrapes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrapes")
    }
}

impl Scrapes {
    /// The registry encoded as `variant`, from an encoding that started after this call.
    pub async fn scrape(self: &Arc<Self>, registry: &Arc<Registry>, variant: Variant) -> Result<Bytes, ScrapeError> {
        let mut done = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let batch = state
                .next
                .get_or_insert_with(|| Arc::new(Batch { wanted: AtomicU8::new(0), done: watch::Sender::new(None) }))
                .clone();
            batch.wanted.fetch_or(1 << variant.index(), Ordering::Relaxed);
            if !state.encoding {
                state.encoding = true;
                tokio::spawn(self.clone().encoder(registry.clone()));
            }
            batch.done.subscribe()
        };
        let encoded = tokio::time::timeout(WAIT_MAX, done.wait_for(Option::is_some))
            .await
            .map_err(|_| ScrapeError::Busy)?
            .map_err(|_| ScrapeError::Failed("the encoder stopped".into()))?
            .clone();
        encoded
            .and_then(|e| e[variant.index()].clone())
            .unwrap_or_else(|| Err("the encoder left this format out".to_string()))
            .map_err(ScrapeError::Failed)
    }

    /// Encodes batch after batch until none waits. Runs on its own task, so that a scraper
    /// that goes away leaves the others served.
    async fn encoder(self: Arc<Self>, registry: Arc<Registry>) {
        loop {
            let batch = {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                match state.next.take() {
                    Some(b) => b,
                    None => {
                        state.encoding = false;
                        return;
                    }
                }
            };
            // Joined under the lock, which the take above held: the set is complete.
            let wanted = batch.wanted.load(Ordering::Relaxed);
            let reg = registry.clone();
            // Collectors read maps and small files: keep that off the async workers.
            let encoded = tokio::task::spawn_blocking(move || encode(&reg, wanted)).await.unwrap_or_else(|e| {
                let failed = Err(format!("scrape failed: {e}"));
                [Some(failed.clone()), Some(failed.clone()), Some(failed.clone()), Some(failed)]
            });
            batch.done.send_replace(Some(Arc::new(encoded)));
        }
    }
}

/// Encodes the registry once and derives each wanted variant from it.
fn encode(registry: &Registry, wanted: u8) -> Encoded {
    let mut out: Encoded = Default::default();
    let mut om = String::with_capacity(64 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut om, registry) {
        let failed = Err(format!("encoding failed: {e}"));
        return [Some(failed.clone()), Some(failed.clone()), Some(failed.clone()), Some(failed)];
    }
    let text = (wanted & 0b1100 != 0).then(|| exposition::to_text_format(&om));
    for v in Variant::all() {
        if wanted & (1 << v.index()) == 0 {
            continue;
        }
        let body = match v.format {
            Format::OpenMetrics => om.as_bytes(),
            Format::Text => text.as_deref().unwrap_or_default().as_bytes(),
        };
        out[v.index()] = Some(if v.gzip {
            exposition::gzip(body).map(Bytes::from).map_err(|e| format!("gzip failed: {e}"))
        } else {
            Ok(Bytes::copy_from_slice(body))
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[tokio::test]
    async fn concurrent_scrapes_share_encodings_and_see_their_own_time() {
        let mut registry = Registry::default();
        let c: Counter = Counter::default();
        registry.register("x", "An x.", c.clone());
        let registry = Arc::new(registry);
        let scrapes = Arc::new(Scrapes::default());
        let text = Variant { format: Format::Text, gzip: false };
        let om = Variant { format: Format::OpenMetrics, gzip: true };
        let mut tasks = Vec::new();
        for i in 0..50 {
            let (s, r) = (scrapes.clone(), registry.clone());
            tasks.push(tokio::spawn(async move { s.scrape(&r, if i % 2 == 0 { text } else { om }).await }));
        }
        for t in tasks {
            let body = t.await.unwrap().unwrap();
            assert!(!body.is_empty());
        }
        c.inc();
        let body = scrapes.scrape(&registry, text).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("x_total 1"), "{body:?}");
    }
}
