//! Upstream connections: one pool of idle HTTP/1.1 connections per pod
//! endpoint, built on hyper's client connection API so that the proxy
//! decides when to connect, reuse and retry.

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
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
    #[error("HTTP/1.1 handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

struct Idle {
    sender: http1::SendRequest<UpBody>,
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
    pub sender: http1::SendRequest<UpBody>,
    pub endpoint: Arc<EndpointState>,
    /// Whether it came from the pool (then a failure before sending means
    /// the peer closed it while idle, and a fresh connection may retry).
    pub reused: bool,
}

pub struct Upstreams {
    endpoints: RwLock<HashMap<SocketAddr, Arc<EndpointState>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    pub epoch: Instant,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Self {
        Upstreams {
            endpoints: RwLock::new(HashMap::new()),
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

    /// Forgets endpoints that are in no backend any more (their idle
    /// connections close as they drop).
    pub fn retain(&self, live: &std::collections::HashSet<SocketAddr>) {
        self.endpoints
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|a, _| live.contains(a));
    }

    /// A ready pooled connection to `addr` if there is one, else a new one.
    ///
    /// The pool holds connections from the moment their response head came
    /// back: one still carrying its response body is not ready yet and is
    /// passed over (and kept); one the peer closed, or idle too long, is
    /// dropped. This way returning a connection costs no task and no wakeup.
    pub async fn checkout(&self, addr: SocketAddr) -> Result<PooledConn, ConnectError> {
        let endpoint = self.endpoint(addr);
        let reused = {
            let mut idle = endpoint.idle.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            idle.retain(|c| {
                !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout
            });
            idle.iter()
                .rposition(|c| c.sender.is_ready())
                .map(|i| idle.swap_remove(i).sender)
        };
        if let Some(sender) = reused {
            return Ok(PooledConn {
                sender,
                endpoint,
                reused: true,
            });
        }
        let sender = self.connect(addr).await?;
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
    ) -> Result<http1::SendRequest<UpBody>, ConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout(addr))?
            .map_err(|e| ConnectError::Io(addr, e))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Puts a connection whose response head has arrived back in the pool;
    /// it becomes usable once its response body is done (see `checkout`).
    pub fn release(&self, sender: http1::SendRequest<UpBody>, endpoint: &EndpointState) {
        let mut idle = endpoint.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
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
