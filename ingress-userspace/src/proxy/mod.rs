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
        let new = Arc::new(snapshot);
        let old = self.snapshot.swap(new.clone());
        let pools = self.pools.read().unwrap_or_else(|p| p.into_inner());
        let gone = gone_endpoints(&old, &new, |a| pools.iter().any(|p| p.holds(a)));
        if gone.is_empty() {
            return;
        }
        for pool in pools.iter() {
            pool.forget(&gone);
        }
    }
}

/// The endpoints of `old` that are in no backend of `new` and for which
/// `held` is true (the pools keep state for them). A backend `new` shares
/// with `old` (the same `Arc` at the same index, as after an endpoints-only
/// refresh) has the same endpoints, so only the others are compared; the
/// whole of `new` is looked through only when a held endpoint may have
/// gone. An endpoint moving thus costs the endpoints of the backends it
/// touched, not the 50,000 of a large cluster.
fn gone_endpoints(
    old: &Snapshot,
    new: &Snapshot,
    held: impl Fn(SocketAddr) -> bool,
) -> HashSet<SocketAddr> {
    let shared = |i: usize| matches!((old.backends.get(i), new.backends.get(i)), (Some(o), Some(n)) if Arc::ptr_eq(o, n));
    let mut gone: HashSet<SocketAddr> = old
        .backends
        .iter()
        .enumerate()
        .filter(|(i, _)| !shared(*i))
        .flat_map(|(_, b)| b.endpoints.iter().map(|e| e.addr))
        .collect();
    for (_, b) in new.backends.iter().enumerate().filter(|(i, _)| !shared(*i)) {
        for e in b.endpoints.iter() {
            gone.remove(&e.addr);
        }
    }
    gone.retain(|a| held(*a));
    if gone.is_empty() {
        return gone;
    }
    // The same address may be an endpoint of an unchanged backend too.
    for b in &new.backends {
        for e in b.endpoints.iter() {
            gone.remove(&e.addr);
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, Endpoint, ObjectKey};

    fn backend(service: &str, ips: &[u8]) -> Arc<Backend> {
        Arc::new(Backend {
            label: Arc::from(format!("ns/{service}:80")),
            service: ObjectKey::new("ns", service),
            port: "80".into(),
            endpoints: ips
                .iter()
                .map(|i| Endpoint {
                    addr: SocketAddr::from(([127, 0, 0, *i], 80)),
                    node_name: None,
                    ready: true,
                })
                .collect(),
            problem: None,
            cursor: Default::default(),
            policy: Default::default(),
            protocol: Default::default(),
        })
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 80))
    }

    #[test]
    fn gone_endpoints_are_those_no_backend_has_any_more() {
        let (a, b) = (backend("a", &[1, 2]), backend("b", &[3, 4]));
        let old = Snapshot {
            backends: vec![a.clone(), b.clone()],
            ..Default::default()
        };
        // Backend a moves from 1,2 to 2,5; b is shared; a new backend c
        // has 4, which b has too.
        let new = Snapshot {
            backends: vec![backend("a", &[2, 5]), b.clone(), backend("c", &[4])],
            ..Default::default()
        };
        let all = |_| true;
        assert_eq!(gone_endpoints(&old, &new, all), HashSet::from([addr(1)]));
        // Only what the pools hold is reported.
        assert!(gone_endpoints(&old, &new, |a| a != addr(1)).is_empty());
        // An endpoint still in a shared backend has not gone.
        let new = Snapshot {
            backends: vec![backend("a", &[5]), b.clone()],
            ..Default::default()
        };
        let old = Snapshot {
            backends: vec![backend("a", &[3, 1]), b],
            ..Default::default()
        };
        assert_eq!(gone_endpoints(&old, &new, all), HashSet::from([addr(1)]));
        // A full compile: nothing shared.
        let fresh = Snapshot {
            backends: vec![backend("x", &[9])],
            ..Default::default()
        };
        assert_eq!(
            gone_endpoints(&new, &fresh, all),
            HashSet::from([addr(3), addr(4), addr(5)])
        );
    }
}
