//! Upstream connections: per pod endpoint, a pool of idle HTTP/1.1
//! connections and one shared HTTP/2 connection (h2c or TLS), built on
//! hyper's client connection API so that the proxy decides when to connect,
//! reuse and retry.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::{
    Request, Response,
    body::Incoming,
    client::conn::{TrySendError, http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

pub use crate::model::UpstreamProtocol;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type sent upstream.
pub type UpBody = BoxBody<Bytes, BoxError>;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("HTTP handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
    #[error("TLS handshake with {0}: {1}")]
    Tls(SocketAddr, std::io::Error),
}

/// A connection able to carry requests: HTTP/1.1 (one at a time) or
/// HTTP/2 (shared, multiplexed).
pub enum Sender {
    H1(http1::SendRequest<UpBody>),
    H2(http2::SendRequest<UpBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }

    /// Sends a request; an unsent one comes back in the error.
    pub async fn try_send_request(
        &mut self,
        req: Request<UpBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpBody>>> {
        match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }
}

struct Idle {
    sender: Sender,
    protocol: UpstreamProtocol,
    since: Instant,
}

/// Per-endpoint state: idle connections and load figures.
pub struct EndpointState {
    pub addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    /// Peak-EWMA of the time to response head, in nanoseconds.
    pub ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated, in ns since `epoch`.
    pub ewma_at_ns: AtomicU64,
    pub inflight: AtomicU32,
}

/// A connection checked out for one request.
pub struct PooledConn {
    pub sender: Sender,
    pub endpoint: Arc<EndpointState>,
    /// Whether it came from the pool (then a failure before sending means
    /// the peer closed it while idle, and a fresh connection may retry).
    pub reused: bool,
}

pub struct Upstreams {
    endpoints: RwLock<HashMap<SocketAddr, Arc<EndpointState>>>,
    /// TLS to pods: no verification (as ingress-nginx's default
    /// proxy-ssl-verify off), ALPN per protocol.
    tls_h1: tokio_rustls::TlsConnector,
    tls_h2: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    pub epoch: Instant,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Self {
        Upstreams {
            endpoints: RwLock::new(HashMap::new()),
            tls_h1: super::tls::upstream_connector(b"http/1.1"),
            tls_h2: super::tls::upstream_connector(b"h2"),
            connect_timeout,
            idle_timeout,
            max_idle,
            epoch: Instant::now(),
        }
    }

    /// The state of `addr`, created on first use.
    pub fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointState> {
        if let Some(e) = self
            .endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
        {
            return e.clone();
        }
        let mut w = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        w.entry(addr)
            .or_insert_with(|| {
                Arc::new(EndpointState {
                    addr,
                    idle: Mutex::new(Vec::new()),
                    ewma_ns: AtomicU64::new(0),
                    ewma_at_ns: AtomicU64::new(0),
                    inflight: AtomicU32::new(0),
                })
            })
            .clone()
    }

    /// Whether state (a pool, latency figures) is kept for `addr`.
    pub fn holds(&self, addr: SocketAddr) -> bool {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&addr)
    }

    /// Forgets endpoints that are in no backend any more (their idle
    /// connections close as they drop).
    pub fn forget(&self, gone: &std::collections::HashSet<SocketAddr>) {
        self.endpoints
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|a, _| !gone.contains(a));
    }

    /// A ready pooled connection to `addr` if there is one, else a new one.
    ///
    /// HTTP/1.1: the pool holds connections from the moment their response
    /// head came back: one still carrying its response body is not ready yet
    /// and is passed over (and kept); one the peer closed, or idle too long,
    /// is dropped. This way returning a connection costs no task and no
    /// wakeup. HTTP/2: one connection per endpoint and protocol, shared by
    /// every request (cloned out, never removed while open).
    pub async fn checkout(
        &self,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
    ) -> Result<PooledConn, ConnectError> {
        let endpoint = self.endpoint(addr);
        let reused = {
            let mut idle = endpoint.idle.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            idle.retain(|c| {
                !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout
            });
            if protocol.is_h2() {
                idle.iter_mut()
                    .find(|c| c.protocol == protocol)
                    .and_then(|c| match &c.sender {
                        Sender::H2(s) => {
                            c.since = now;
                            Some(Sender::H2(s.clone()))
                        }
                        Sender::H1(_) => None,
                    })
            } else {
                idle.iter()
                    .rposition(|c| c.protocol == protocol && c.sender.is_ready())
                    .map(|i| idle.swap_remove(i).sender)
            }
        };
        if let Some(sender) = reused {
            return Ok(PooledConn {
                sender,
                endpoint,
                reused: true,
            });
        }
        let sender = self.connect(addr, protocol).await?;
        if let Sender::H2(s) = &sender {
            endpoint
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Idle {
                    sender: Sender::H2(s.clone()),
                    protocol,
                    since: Instant::now(),
                });
        }
        Ok(PooledConn {
            sender,
            endpoint,
            reused: false,
        })
    }

    /// A fresh connection to `addr`, bypassing the pool.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
    ) -> Result<Sender, ConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout(addr))?
            .map_err(|e| ConnectError::Io(addr, e))?;
        let _ = stream.set_nodelay(true);
        if !protocol.is_tls() {
            return handshake(addr, protocol, stream).await;
        }
        let connector = if protocol.is_h2() {
            &self.tls_h2
        } else {
            &self.tls_h1
        };
        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name, stream))
            .await
            .map_err(|_| ConnectError::Timeout(addr))?
            .map_err(|e| ConnectError::Tls(addr, e))?;
        handshake(addr, protocol, tls).await
    }

    /// Puts a connection whose response head has arrived back in the pool;
    /// it becomes usable once its response body is done (see `checkout`).
    /// HTTP/2 connections stay in the pool all along.
    pub fn release(&self, sender: Sender, protocol: UpstreamProtocol, endpoint: &EndpointState) {
        if let Sender::H1(_) = sender {
            let mut idle = endpoint.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < self.max_idle {
                idle.push(Idle {
                    sender,
                    protocol,
                    since: Instant::now(),
                });
            }
        }
    }

    /// Records the time to response head of one request (peak EWMA:
    /// a slower sample takes over at once, faster ones decay in over ~10 s).
    pub fn observe_latency(&self, endpoint: &EndpointState, rtt: Duration) {
        const TAU_NS: f64 = 10e9;
        let now = self.epoch.elapsed().as_nanos() as u64;
        let sample = rtt.as_nanos() as f64;
        let prev = endpoint.ewma_ns.load(Ordering::Relaxed) as f64;
        let last = endpoint.ewma_at_ns.swap(now, Ordering::Relaxed);
        let next = if prev == 0.0 || sample > prev {
            sample
        } else {
            let w = (-((now.saturating_sub(last)) as f64) / TAU_NS).exp();
            prev * w + sample * (1.0 - w)
        };
        endpoint.ewma_ns.store(next as u64, Ordering::Relaxed);
    }
}

/// The HTTP handshake on a connected (maybe TLS) stream; the connection is
/// driven by its own task.
async fn handshake<S>(
    addr: SocketAddr,
    protocol: UpstreamProtocol,
    stream: S,
) -> Result<Sender, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if protocol.is_h2() {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(1024 * 1024)
            .initial_connection_window_size(4 * 1024 * 1024)
            .keep_alive_interval(std::time::Duration::from_secs(30))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        return Ok(Sender::H2(sender));
    }
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError::Handshake(addr, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended");
        }
    });
    Ok(Sender::H1(sender))
}
