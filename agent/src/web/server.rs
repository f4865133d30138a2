//! The accept loop and each connection: TLS when configured, HTTP/1.1 by hyper, and the checks
//! every request passes before the router (GET or HEAD, no body, basic auth).

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    http::{HeaderValue, Method, Request, Response, StatusCode, header},
};
use http_body::{Frame, SizeHint};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use log::{debug, warn};
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service as _;

use super::{
    config::WebSecurity,
    limits::{Conn, ConnGuard, Connections, Limits, MAX_HEADER_BYTES, RequestGuard, Tracked},
    reload::Live,
};

/// Paths answered without basic auth (still behind TLS and its client certificate policy):
/// kubelet probes cannot send credentials, and these say only whether the agent is up.
pub const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

struct App {
    router: Router,
    security: Arc<Live>,
}

/// Accepts connections until `shutdown`, then waits briefly for requests being answered.
pub async fn run(
    listener: TcpListener,
    router: Router,
    security: Arc<Live>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let conns = Connections::new(limits);
    let reaper = tokio::spawn(conns.clone().reap());
    let app = Arc::new(App { router, security });
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let app = app.clone();
                conns.admit(move |conn, guard| serve_connection(stream, peer, app, conn, guard));
            }
            Err(e) => accept_failed(&e, &conns).await,
        }
    }
    reaper.abort();
    conns.close_all(Duration::from_secs(2)).await;
}

/// Out of descriptors: close the stalest connection and retry shortly; anything else (a client
/// that reset before its accept) is the client's problem.
async fn accept_failed(e: &std::io::Error, conns: &Connections) {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            let freed = conns.evict_one();
            warn!("web: cannot accept a connection: {e} ({} open{})", conns.open(), if freed { ", closed the stalest" } else { "" });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        _ => debug!("web: accept failed: {e}"),
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, app: Arc<App>, conn: Arc<Conn>, _guard: ConnGuard) {
    conn.serving();
    let _ = stream.set_nodelay(true);
    // TLS as configured when the connection came; a reload applies to the next ones.
    let tls = app.security.current().tls.clone();
    match tls {
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls) => http(tls, peer, app, conn).await,
            Err(e) => debug!("web: TLS handshake with {peer} failed: {e}"),
        },
        None => http(stream, peer, app, conn).await,
    }
}

async fn http<IO>(io: IO, peer: SocketAddr, app: Arc<App>, conn: Arc<Conn>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Tracked::new(io, conn.clone()));
    let service = service_fn(move |req| handle(req, app.clone(), conn.clone()));
    let served = http1::Builder::new()
        // The reaper enforces the timeouts (hyper's own header timeout needs a timer and would
        // not cover the TLS handshake).
        .header_read_timeout(None)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true)
        .serve_connection(io, service)
        .await;
    if let Err(e) = served {
        debug!("web: connection from {peer}: {e}");
    }
}

async fn handle(req: Request<Incoming>, app: Arc<App>, conn: Arc<Conn>) -> Result<Response<TrackedBody>, Infallible> {
    let request = conn.request_started();
    let security = app.security.current();
    let mut response = match refuse(&req, &security).await {
        Some(r) => r,
        None => app.router.clone().call(req).await.unwrap_or_else(|never| match never {}),
    };
    for (name, value) in &security.headers {
        response.headers_mut().insert(name, value.clone());
    }
    Ok(response.map(|body| TrackedBody { body, _request: request }))
}

/// The answer for a request that does not reach the router: a method other than GET and HEAD
/// (405), a body (413), missing or wrong credentials where basic auth is on (401).
async fn refuse<B: http_body::Body>(req: &Request<B>, security: &WebSecurity) -> Option<Response<Body>> {
    let has_body = !req.body().is_end_stream();
    let status = if req.method() != Method::GET && req.method() != Method::HEAD {
        StatusCode::METHOD_NOT_ALLOWED
    } else if has_body {
        StatusCode::PAYLOAD_TOO_LARGE
    } else if let Some(auth) = &security.auth
        && !OPEN_PATHS.contains(&req.uri().path())
        && !auth.allows(req.headers().get(header::AUTHORIZATION)).await
    {
        StatusCode::UNAUTHORIZED
    } else {
        return None;
    };
    let text = match status {
        StatusCode::METHOD_NOT_ALLOWED => "only GET and HEAD\n",
        StatusCode::PAYLOAD_TOO_LARGE => "requests carry no body here\n",
        _ => "unauthorized\n",
    };
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"cgwatch\", charset=\"UTF-8\""));
        }
        _ => {}
    }
    // The body was not read: the connection cannot carry another request.
    if has_body {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Some(response)
}

/// A response body that marks its request done when hyper has taken all of it (or dropped it).
pub struct TrackedBody {
    body: Body,
    _request: RequestGuard,
}


impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
