//! HTTP: `/metrics` (OpenMetrics or the text format, gzip when asked), `/healthz` (liveness),
//! `/readyz` (readiness: the probes are loaded and attached) and a landing page. The server runs
//! from start-up, so that liveness answers while the probes load.

pub mod exposition;

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
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use exposition::Format;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })
}

/// What the handlers serve: nothing until start-up has loaded the probes, then the metrics.
#[derive(Debug, Default)]
pub struct Exporter {
    metrics: OnceLock<Ready>,
}

#[derive(Debug)]
struct Ready {
    registry: Arc<Registry>,
    /// The probe summary `/readyz` answers with.
    probes: String,
}

impl Exporter {
    /// Start-up is done: serve `registry`, and say `probes` on `/readyz`.
    pub fn set_ready(&self, registry: Arc<Registry>, probes: String) {
        let _ = self.metrics.set(Ready { registry, probes });
    }
}

const STARTING: &str = "cgwatch is starting: the probes are not loaded yet\n";

async fn metrics(State(exporter): State<Arc<Exporter>>, headers: HeaderMap) -> Response {
    let Some(ready) = exporter.metrics.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, STARTING).into_response();
    };
    let registry = ready.registry.clone();
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let format = exposition::negotiate(header(header::ACCEPT));
    let gzip = exposition::accepts_gzip(header(header::ACCEPT_ENCODING));
    // Collectors read maps and small files: keep that off the async workers.
    let encoded = tokio::task::spawn_blocking(move || encode(&registry, format, gzip)).await;
    match encoded {
        Ok(Ok((body, gzipped))) => {
            let mut response = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
            if gzipped {
                response.headers_mut().insert(header::CONTENT_ENCODING, header::HeaderValue::from_static("gzip"));
            }
            response
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding failed: {e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("scrape failed: {e}\n")).into_response(),
    }
}

/// Encodes the registry in `format`; returns the body and whether it is gzipped.
fn encode(registry: &Registry, format: Format, gzip: bool) -> Result<(Vec<u8>, bool), String> {
    let mut body = String::with_capacity(64 * 1024);
    prometheus_client::encoding::text::encode(&mut body, registry).map_err(|e| e.to_string())?;
    if format == Format::Text {
        body = exposition::to_text_format(&body);
    }
    if gzip {
        return exposition::gzip(body.as_bytes()).map(|b| (b, true)).map_err(|e| e.to_string());
    }
    Ok((body.into_bytes(), false))
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

pub async fn serve(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    axum::serve(listener, router(exporter))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServerError::Serve)
}
