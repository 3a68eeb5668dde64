//! The L7 data path: a hyper server on the HTTP listener that routes each
//! request by the current snapshot straight to a pod endpoint.
//!
//! - `server`: listeners, HTTP/1.1 + h2c on one port, graceful drain.
//! - `handler`: one request, from limits and routing to the answer.
//! - `upstream`: per-endpoint connection pools over hyper's client
//!   connection API, connect with timeout.
//! - `balancer`: round robin, or power of two choices by peak EWMA.
//! - `headers`: hop-by-hop removal and the X-Forwarded-* family.
//! - `body`: request pre-buffering with the size limit, and the response
//!   wrapper that writes the access log.
//! - `responses`: the proxy's own short answers (404, 502, ...).

pub mod balancer;
pub mod body;
pub mod h2guard;
pub mod handler;
pub mod headers;
pub mod listen;
pub mod responses;
pub mod server;
pub mod tls;
pub mod upstream;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use arc_swap::ArcSwap;

use crate::{metrics::ProxyMetrics, model::Snapshot};

/// How backends are chosen among a Service's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadBalance {
    RoundRobin,
    /// Power of two choices by peak-EWMA latency times outstanding requests.
    Ewma,
}

/// Limits and timeouts of the proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response head.
    pub read_timeout: Duration,
    /// How long an idle upstream connection is kept for reuse, and how long
    /// an idle client connection may wait for its next request head.
    pub idle_timeout: Duration,
    /// Request bodies larger than this get 413 (ingress-nginx's
    /// proxy-body-size).
    pub max_body_bytes: u64,
    /// Request bodies up to this size are read whole before an upstream is
    /// chosen: malformed chunking gets 400 without reaching a backend, and
    /// a failed connect can be retried with the body in hand.
    pub prebuffer_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    /// Extra endpoints tried when connecting fails (before any byte is sent).
    pub retries: usize,
    pub load_balance: LoadBalance,
    pub max_idle_per_endpoint: usize,
    /// The port of the HTTPS listener, for redirects (omitted when 443).
    pub https_port: Option<u16>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_body_bytes: 1024 * 1024,
            prebuffer_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            retries: 2,
            load_balance: LoadBalance::RoundRobin,
            max_idle_per_endpoint: 128,
            https_port: None,
        }
    }
}

/// What every worker shares: the configuration snapshot, limits, metrics.
/// Upstream pools are per worker (a worker is one thread with its own
/// runtime and listener), so connections never hop threads.
pub struct Proxy {
    pub config: ProxyConfig,
    snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<ProxyMetrics>,
    pools: RwLock<Vec<Arc<upstream::Upstreams>>>,
    pub labels: FixedLabels,
}

/// Label values every request may need, made once.
pub struct FixedLabels {
    /// A host no rule names.
    pub other: Arc<str>,
    /// No backend (the proxy's own answers).
    pub none: Arc<str>,
}

impl Proxy {
    pub fn new(config: ProxyConfig, metrics: Arc<ProxyMetrics>) -> Arc<Self> {
        Arc::new(Proxy {
            config,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            metrics,
            pools: RwLock::new(Vec::new()),
            labels: FixedLabels {
                other: Arc::from("other"),
                none: Arc::from("none"),
            },
        })
    }

    /// The snapshot requests route by now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// A new upstream pool for one worker, kept in step with snapshots.
    pub fn new_pool(&self) -> Arc<upstream::Upstreams> {
        let pool = Arc::new(upstream::Upstreams::new(
            self.config.connect_timeout,
            self.config.idle_timeout,
            self.config.max_idle_per_endpoint,
        ));
        self.pools
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(pool.clone());
        pool
    }

    /// Swaps in a whole new snapshot; pools forget endpoints it no longer has.
    pub fn apply(&self, snapshot: Snapshot) {
        let live: HashSet<SocketAddr> = snapshot
            .backends
            .iter()
            .flat_map(|b| b.endpoints.iter().map(|e| e.addr))
            .collect();
        self.snapshot.store(Arc::new(snapshot));
        for pool in self.pools.read().unwrap_or_else(|p| p.into_inner()).iter() {
            pool.retain(&live);
        }
    }
}
