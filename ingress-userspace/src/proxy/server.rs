//! The listeners of one worker: HTTP (HTTP/1.1 and h2c with prior
//! knowledge) and HTTPS (TLS, then HTTP/1.1 or HTTP/2 as ALPN chose) served
//! by the same handler, connection accounting, and graceful drain on
//! shutdown.

use std::{
    convert::Infallible, future::poll_fn, net::SocketAddr, sync::Arc, task::Poll, time::Duration,
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;

use super::{
    Proxy,
    h2guard::{self, Guarded},
    handler::{ConnInfo, handle},
    tls,
};

/// One listening socket of a worker; with `tls`, connections start with a
/// TLS handshake.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

/// HTTP/2 limits, the same on h2c and on TLS.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
const H2_STREAM_WINDOW: u32 = 1024 * 1024;
const H2_CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
const H2_MAX_FRAME_SIZE: u32 = 64 * 1024;
const H2_MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Streams a client may reset before being answered (rapid-reset guard):
/// one more and the connection gets GOAWAY `ENHANCE_YOUR_CALM`.
const H2_MAX_PENDING_RESETS: usize = 64;
/// Streams the proxy may reset because of the client's protocol errors
/// before the connection gets GOAWAY `ENHANCE_YOUR_CALM`.
const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;
/// SETTINGS frames (not ACKs) a client may send per `h2guard::FLOOD_WINDOW`.
const H2_MAX_SETTINGS: u32 = 100;
/// PING frames (not ACKs) a client may send per `h2guard::FLOOD_WINDOW`;
/// generous, as gRPC clients ping to estimate bandwidth.
const H2_MAX_PINGS: u32 = 10_000;

fn builder(proxy: &Proxy) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(proxy.config.idle_timeout)
        .max_buf_size(proxy.config.max_header_bytes.max(8192) + proxy.config.max_uri_bytes + 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(
            proxy.config.max_header_bytes as u32 + proxy.config.max_uri_bytes as u32,
        )
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME_SIZE)
        .max_send_buf_size(H2_MAX_SEND_BUFFER)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// The next connection on any of `listeners`, with the index of its
/// listener. Polling starts at `start`, which the caller rotates so that a
/// busy listener cannot starve the others.
async fn accept_any(
    listeners: &[Listener],
    start: usize,
) -> (usize, std::io::Result<(TcpStream, SocketAddr)>) {
    let n = listeners.len();
    poll_fn(|cx| {
        for k in 0..n {
            let i = (start + k) % n;
            if let Poll::Ready(r) = listeners[i].tcp.poll_accept(cx) {
                return Poll::Ready((i, r));
            }
        }
        Poll::Pending
    })
    .await
}

/// Accepts and serves until `shutdown` turns true, then stops accepting and
/// lets in-flight requests finish for up to `drain`.
pub async fn serve(
    listeners: Vec<Listener>,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let builder = Arc::new(builder(&proxy));
    let limits = h2guard::Limits {
        settings: H2_MAX_SETTINGS,
        pings: H2_MAX_PINGS,
        header_list: proxy.config.max_header_bytes + proxy.config.max_uri_bytes,
    };
    let graceful = GracefulShutdown::new();
    let pool = proxy.new_pool();
    let locals: Vec<Option<SocketAddr>> =
        listeners.iter().map(|l| l.tcp.local_addr().ok()).collect();
    let mut turn = 0usize;
    loop {
        turn = turn.wrapping_add(1);
        let (index, accepted) = tokio::select! {
            a = accept_any(&listeners, turn) => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = listeners[index].tls.clone();
        let info = ConnInfo {
            peer,
            local: stream.local_addr().ok().or(locals[index]).unwrap_or(peer),
            scheme: if tls.is_some() { "https" } else { "http" },
        };
        let (p, u) = (proxy.clone(), pool.clone());
        let svc = service_fn(move |req| {
            let (p, u) = (p.clone(), u.clone());
            async move { Ok::<_, Infallible>(handle(p, u, info, req).await) }
        });
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let proxy = proxy.clone();
        // Serves HTTP on the (plain or TLS) stream until the connection ends.
        macro_rules! serve_http {
            ($stream:expr) => {{
                let io = Guarded::new($stream, limits, proxy.metrics.clone());
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(io), svc)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    if let Some(reason) = h2guard::connection_error_reason(&*e) {
                        proxy.metrics.observe_http2_connection_error(reason);
                    }
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
            }};
        }
        tokio::spawn(async move {
            let metrics = proxy.metrics.clone();
            metrics.open_connections.inc();
            match tls {
                None => serve_http!(stream),
                Some(acceptor) => {
                    if let Some(stream) = tls::handshake(&acceptor, stream, &proxy).await {
                        serve_http!(stream);
                    }
                }
            }
            metrics.open_connections.dec();
        });
    }
    drop(listeners);
    tracing::info!(
        drain_seconds = drain.as_secs(),
        "listeners closed; draining connections"
    );
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain period over; closing the remaining connections");
    }
}
