//! Concurrent scrapes share encodings: one encoding of the collectors runs at a time, and every
//! scrape that arrives meanwhile waits for the next one, which starts after it arrived (so no
//! scrape is answered with data older than itself) and serves them all. 500 simultaneous
//! scrapes cost two encodings, not 500.
//!
//! An encoding writes each wanted format once, straight into the response body: a plain body
//! is handed to the server as it is (no copy), a gzipped one is compressed as it is written
//! and never held whole.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use axum::body::Bytes;
use tokio::sync::watch;

use super::exposition::{self, Format};
use crate::{collectors::Collectors, encoding::Encoder};

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

    #[cfg(test)]
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
    pub async fn scrape(self: &Arc<Self>, registry: &Arc<Collectors>, variant: Variant) -> Result<Bytes, ScrapeError> {
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
    async fn encoder(self: Arc<Self>, registry: Arc<Collectors>) {
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

/// Encodes each wanted format once and derives its wanted variants from it.
fn encode(collectors: &Collectors, wanted: u8) -> Encoded {
    let mut out: Encoded = Default::default();
    for format in [Format::OpenMetrics, Format::Text] {
        let plain = Variant { format, gzip: false };
        let gzip = Variant { format, gzip: true };
        let (want_plain, want_gzip) = (wanted & (1 << plain.index()) != 0, wanted & (1 << gzip.index()) != 0);
        if want_plain {
            let mut encoder = Encoder::new(format, 256 * 1024);
            collectors.encode(&mut encoder);
            match encoder.finish() {
                Ok(body) => {
                    if want_gzip {
                        out[gzip.index()] =
                            Some(exposition::gzip(&body).map(Bytes::from).map_err(|e| format!("gzip failed: {e}")));
                    }
                    out[plain.index()] = Some(Ok(Bytes::from(body)));
                }
                Err(e) => {
                    let failed = Err(format!("encoding failed: {e}"));
                    out[plain.index()] = Some(failed.clone());
                    out[gzip.index()] = want_gzip.then_some(failed);
                }
            }
        } else if want_gzip {
            let mut stream = exposition::gzip_stream(64 * 1024);
            let mut encoder = Encoder::streaming(format, &mut stream);
            collectors.encode(&mut encoder);
            let body = encoder.finish().and_then(|_| stream.finish());
            out[gzip.index()] = Some(body.map(Bytes::from).map_err(|e| format!("gzip failed: {e}")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, sync::atomic::AtomicU64};

    use super::*;
    use crate::{catalog, collectors::Collector};

    #[derive(Debug, Default)]
    struct Count(Arc<AtomicU64>);

    impl Collector for Count {
        fn encode(&self, encoder: &mut Encoder<'_>) {
            encoder.family(&catalog::PINNED).sample(&[], self.0.load(Ordering::Relaxed) as i64);
        }
    }

    #[tokio::test]
    async fn concurrent_scrapes_share_encodings_and_see_their_own_time() {
        let c = Arc::new(AtomicU64::new(0));
        let mut registry = Collectors::default();
        registry.register(Count(c.clone()));
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
        c.fetch_add(1, Ordering::Relaxed);
        let body = scrapes.scrape(&registry, text).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("cgwatch_pinned 1\n"), "{body:?}");
    }

    /// Every variant of one encoding says the same, plain or gzipped, and only OpenMetrics
    /// ends with `# EOF`.
    #[test]
    fn variants_of_one_encoding_agree() {
        let mut registry = Collectors::default();
        registry.register(Count(Arc::new(AtomicU64::new(7))));
        for wanted in [0b1111, 0b0010, 0b1000, 0b0101] {
            let out = encode(&registry, wanted);
            for v in Variant::all() {
                let Some(body) = &out[v.index()] else {
                    assert_eq!(wanted & (1 << v.index()), 0);
                    continue;
                };
                let body = body.clone().unwrap();
                let mut text = String::new();
                if v.gzip {
                    flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut text).unwrap();
                } else {
                    text = String::from_utf8(body.to_vec()).unwrap();
                }
                assert!(text.contains("cgwatch_pinned 7\n"), "{text}");
                assert_eq!(text.ends_with("# EOF\n"), v.format == Format::OpenMetrics, "{text}");
            }
        }
    }
}
