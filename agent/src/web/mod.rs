//! HTTP: `/metrics` (OpenMetrics or the text format, gzip when asked), `/healthz` (liveness),
//! `/readyz` (readiness: the probes are loaded and attached) and a landing page. The server runs
//! from start-up, so that liveness answers while the probes load. TLS, basic auth and response
//! headers come from the web config file (`config`, reloaded by `reload`); `limits` keeps
//! hostile clients from holding the server, `scrape` lets concurrent scrapes share encodings.

pub mod auth;
pub mod config;
pub mod exposition;
pub mod limits;
pub mod reload;
pub mod scrape;
pub mod server;
pub mod tls;

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use tokio::net::{TcpListener, TcpSocket};

pub use limits::Limits;
use scrape::{ScrapeError, Scrapes, Variant};

use crate::collectors::Collectors;

/// Pending connections the kernel queues for the accept loop: a burst of clients must not
/// fill the queue, or a scraper's SYN waits for a retransmission (a second or more).
const BACKLOG: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let listen = || {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen().map_err(|source| ServerError::Bind { addr, source })
}

/// What the handlers serve: nothing until start-up has loaded the probes, then the metrics.
#[derive(Debug, Default)]
pub struct Exporter {
    metrics: OnceLock<Ready>,
    scrapes: Arc<Scrapes>,
}

#[derive(Debug)]
struct Ready {
    registry: Arc<Collectors>,
    /// The probe summary `/readyz` answers with.
    probes: String,
}

impl Exporter {
    /// Start-up is done: serve `registry`, and say `probes` on `/readyz`.
    pub fn set_ready(&self, registry: Arc<Collectors>, probes: String) {
        let _ = self.metrics.set(Ready { registry, probes });
    }
}

const STARTING: &str = "cgwatch is starting: the probes are not loaded yet\n";

async fn metrics(State(exporter): State<Arc<Exporter>>, headers: HeaderMap) -> Response {
    let Some(ready) = exporter.metrics.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, STARTING).into_response();
    };
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let format = exposition::negotiate(header(header::ACCEPT));
    let gzip = exposition::accepts_gzip(header(header::ACCEPT_ENCODING));
    match exporter.scrapes.scrape(&ready.registry, Variant { format, gzip }).await {
        Ok(body) => {
            let mut response = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
            if gzip {
                response.headers_mut().insert(header::CONTENT_ENCODING, header::HeaderValue::from_static("gzip"));
            }
            response
        }
        Err(e @ ScrapeError::Busy) => {
            (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn readyz(State(exporter): State<Arc<Exporter>>) -> Response {
    match exporter.metrics.get() {
        Some(ready) => (StatusCode::OK, format!("ready\n{}", ready.probes)).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, STARTING).into_response(),
    }
}

async fn index() -> Html<&'static str> {
    Html(
        "<html><head><title>cgwatch</title></head><body><h1>cgwatch</h1>\
         <p><a href=\"/metrics\">Metrics</a> <a href=\"/readyz\">Readiness</a></p></body></html>",
    )
}

pub fn router(exporter: Arc<Exporter>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/", get(index))
        .with_state(exporter)
}

/// Serves until `shutdown`, with the web config `security` holds and the connection `limits`.
pub async fn serve(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    security: Arc<reload::Live>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    server::run(listener, router(exporter), security, limits, shutdown).await;
}
