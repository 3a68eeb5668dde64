//! Choosing an endpoint of a backend.

use std::{net::SocketAddr, sync::atomic::Ordering};

use super::{LoadBalance, upstream::Upstreams};
use crate::model::Backend;

/// Picks an endpoint of `backend` not in `tried`, or `None` when all were.
pub fn pick(
    policy: LoadBalance,
    backend: &Backend,
    upstreams: &Upstreams,
    tried: &[SocketAddr],
) -> Option<SocketAddr> {
    let eps = &backend.endpoints;
    let n = eps.len();
    if n == 0 || tried.len() >= n {
        return None;
    }
    match policy {
        LoadBalance::RoundRobin => {
            let start = backend.cursor.fetch_add(1, Ordering::Relaxed);
            (0..n)
                .map(|i| eps[(start + i) % n].addr)
                .find(|a| !tried.contains(a))
        }
        LoadBalance::Ewma => {
            let candidates: Vec<SocketAddr> = eps
                .iter()
                .map(|e| e.addr)
                .filter(|a| !tried.contains(a))
                .collect();
            if candidates.len() == 1 {
                return Some(candidates[0]);
            }
            let a = candidates[fastrand::usize(..candidates.len())];
            let mut b = candidates[fastrand::usize(..candidates.len() - 1)];
            if b == a {
                b = candidates[candidates.len() - 1];
            }
            let cost = |addr: SocketAddr| {
                let e = upstreams.endpoint(addr);
                let ewma = e.ewma_ns.load(Ordering::Relaxed).max(1) as f64;
                ewma * (e.inflight.load(Ordering::Relaxed) as f64 + 1.0)
            };
            Some(if cost(a) <= cost(b) { a } else { b })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::model::{Endpoint, ObjectKey};

    fn backend(n: u8) -> Backend {
        let eps: Vec<Endpoint> = (1..=n)
            .map(|i| Endpoint {
                addr: SocketAddr::from(([127, 0, 0, i], 80)),
                node_name: None,
                ready: true,
            })
            .collect();
        Backend {
            label: Arc::from("ns/svc:80"),
            service: ObjectKey::new("ns", "svc"),
            port: "80".into(),
            endpoints: Arc::from(eps),
            problem: None,
            cursor: Default::default(),
            policy: Default::default(),
            protocol: Default::default(),
        }
    }

    fn upstreams() -> Upstreams {
        Upstreams::new(Duration::from_secs(1), Duration::from_secs(1), 1)
    }

    #[test]
    fn round_robin_cycles_and_skips_tried() {
        let (b, u) = (backend(3), upstreams());
        let picks: Vec<_> = (0..6)
            .map(|_| pick(LoadBalance::RoundRobin, &b, &u, &[]).unwrap().ip())
            .collect();
        assert_eq!(picks[..3], picks[3..]);
        let mut distinct = picks[..3].to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3);
        let tried = [b.endpoints[0].addr, b.endpoints[1].addr];
        for _ in 0..5 {
            assert_eq!(
                pick(LoadBalance::RoundRobin, &b, &u, &tried),
                Some(b.endpoints[2].addr)
            );
        }
        let all: Vec<_> = b.endpoints.iter().map(|e| e.addr).collect();
        assert_eq!(pick(LoadBalance::RoundRobin, &b, &u, &all), None);
        assert_eq!(pick(LoadBalance::RoundRobin, &backend(0), &u, &[]), None);
    }

    #[test]
    fn ewma_prefers_the_faster_endpoint() {
        let (b, u) = (backend(2), upstreams());
        let slow = u.endpoint(b.endpoints[0].addr);
        let fast = u.endpoint(b.endpoints[1].addr);
        u.observe_latency(&slow, Duration::from_millis(50));
        u.observe_latency(&fast, Duration::from_millis(1));
        for _ in 0..20 {
            assert_eq!(pick(LoadBalance::Ewma, &b, &u, &[]), Some(fast.addr));
        }
        // Outstanding requests raise the cost.
        fast.inflight.store(100, Ordering::Relaxed);
        assert_eq!(pick(LoadBalance::Ewma, &b, &u, &[]), Some(slow.addr));
    }

    #[test]
    fn peak_ewma_takes_slow_samples_at_once() {
        let u = upstreams();
        let e = u.endpoint(SocketAddr::from(([127, 0, 0, 1], 1)));
        u.observe_latency(&e, Duration::from_millis(1));
        u.observe_latency(&e, Duration::from_millis(40));
        assert_eq!(e.ewma_ns.load(Ordering::Relaxed), 40_000_000);
        u.observe_latency(&e, Duration::from_millis(1));
        assert!(
            e.ewma_ns.load(Ordering::Relaxed) > 1_000_000,
            "decays, not drops"
        );
    }
}
