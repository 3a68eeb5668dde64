//! `healthCheckNodePort` for Services with `externalTrafficPolicy: Local`:
//! the external load balancer asks each node, and the node answers 200 with
//! its local endpoint count, or 503 when it has none (so the balancer stops
//! sending it traffic it would have to drop). As kube-proxy does, the body
//! is JSON with the Service and the count.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::model::{ObjectKey, l4::L4Table};

/// What one health-check port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub service: ObjectKey,
    pub local_endpoints: usize,
}

/// The health-check ports a table asks for, with what each reports.
pub fn from_table(table: &L4Table) -> BTreeMap<u16, Health> {
    let mut out = BTreeMap::new();
    for svc in table.services.values() {
        if let (true, Some(port)) = (svc.local_policy, svc.health_check_node_port) {
            let local = svc
                .backends
                .iter()
                .filter(|b| b.local && !b.terminating)
                .count();
            out.entry(port)
                .and_modify(|h: &mut Health| h.local_endpoints = h.local_endpoints.max(local))
                .or_insert(Health {
                    service: svc.service.clone(),
                    local_endpoints: local,
                });
        }
    }
    out
}

/// The answer for one health check.
pub fn answer(h: Option<&Health>) -> (StatusCode, String) {
    match h {
        Some(h) => {
            let body = serde_json::json!({
                "service": {"namespace": h.service.namespace, "name": h.service.name},
                "localEndpoints": h.local_endpoints,
            })
            .to_string();
            let status = if h.local_endpoints > 0 {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, body)
        }
        None => (StatusCode::NOT_FOUND, "{}".to_string()),
    }
}

/// Keeps one listener per health-check port, in step with snapshots.
pub struct HealthChecks {
    bind_ip: std::net::IpAddr,
    current: Arc<ArcSwap<BTreeMap<u16, Health>>>,
    listeners: HashMap<u16, JoinHandle<()>>,
}

impl HealthChecks {
    /// Health checks listen on `bind_ip` (the unspecified address: every
    /// node address, as kube-proxy does).
    pub fn new(bind_ip: std::net::IpAddr) -> Self {
        HealthChecks {
            bind_ip,
            current: Arc::new(ArcSwap::from_pointee(BTreeMap::new())),
            listeners: HashMap::new(),
        }
    }

    /// Applies a new table: new ports get a listener, gone ones lose it.
    /// Must run inside a tokio runtime.
    pub fn apply(&mut self, table: &L4Table) {
        let wanted = from_table(table);
        self.listeners.retain(|port, task| {
            let keep = wanted.contains_key(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for port in wanted.keys() {
            if self.listeners.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::new(self.bind_ip, *port);
            let std_listener = match std::net::TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(%addr, error = %e, "binding a healthCheckNodePort");
                    continue;
                }
            };
            let Ok(listener) = TcpListener::from_std(std_listener) else {
                continue;
            };
            let (current, port) = (self.current.clone(), *port);
            self.listeners
                .insert(port, tokio::spawn(serve(listener, current, port)));
        }
        self.current.store(Arc::new(wanted));
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, current: Arc<ArcSwap<BTreeMap<u16, Health>>>, port: u16) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let current = current.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let (status, body) = answer(current.load().get(&port));
                let resp = Response::builder()
                    .status(status)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default();
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::l4::{L4Backend, L4Service, Proto};

    fn svc(local_policy: bool, port: Option<u16>, backends: &[(bool, bool)]) -> L4Service {
        L4Service {
            service: ObjectKey::new("shop", "web"),
            port: "http".into(),
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, (local, terminating))| L4Backend {
                    addr: SocketAddr::from(([198, 18, 1, i as u8 + 1], 80)),
                    local: *local,
                    terminating: *terminating,
                })
                .collect(),
            local_policy,
            affinity_timeout: None,
            source_ranges: Vec::new(),
            health_check_node_port: port,
        }
    }

    fn table(s: L4Service) -> L4Table {
        let mut t = L4Table::default();
        t.services
            .insert((SocketAddr::from(([198, 18, 0, 1], 30080)), Proto::Tcp), s);
        t
    }

    #[test]
    fn local_endpoints_are_counted_and_none_is_503() {
        let t = table(svc(
            true,
            Some(32000),
            &[(true, false), (true, true), (true, false)],
        ));
        let h = from_table(&t);
        assert_eq!(
            h[&32000].local_endpoints, 2,
            "terminating endpoints do not count"
        );
        let (status, body) = answer(h.get(&32000));
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains(r#""localEndpoints":2"#), "{body}");
        let none = from_table(&table(svc(true, Some(32000), &[])));
        assert_eq!(answer(none.get(&32000)).0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn only_local_policy_services_with_a_port_get_one() {
        assert!(from_table(&table(svc(false, Some(32000), &[(true, false)]))).is_empty());
        assert!(from_table(&table(svc(true, None, &[(true, false)]))).is_empty());
    }
}
