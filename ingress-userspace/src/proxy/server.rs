//! The HTTP listener: HTTP/1.1 and h2c (prior knowledge) on the same port,
//! connection accounting, and graceful drain on shutdown.

use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::watch};

use super::{
    Proxy,
    handler::{ConnInfo, handle},
};

/// Accepts and serves until `shutdown` turns true, then stops accepting and
/// lets in-flight requests finish for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(proxy.config.idle_timeout)
        .max_buf_size(proxy.config.max_header_bytes.max(8192) + proxy.config.max_uri_bytes + 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(
            proxy.config.max_header_bytes as u32 + proxy.config.max_uri_bytes as u32,
        )
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = GracefulShutdown::new();
    let pool = proxy.new_pool();
    let local = listener.local_addr().ok();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            peer,
            local: stream.local_addr().ok().or(local).unwrap_or(peer),
            scheme: "http",
        };
        let (p, u) = (proxy.clone(), pool.clone());
        let svc = service_fn(move |req| {
            let (p, u) = (p.clone(), u.clone());
            async move { Ok::<_, Infallible>(handle(p, u, info, req).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        let metrics = proxy.metrics.clone();
        metrics.open_connections.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            metrics.open_connections.dec();
        });
    }
    drop(listener);
    tracing::info!(
        drain_seconds = drain.as_secs(),
        "HTTP listener closed; draining connections"
    );
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain period over; closing the remaining connections");
    }
}
