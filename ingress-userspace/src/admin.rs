//! The admin listener: `/healthz`, `/readyz`, `/metrics` and
//! `/status/ingresses`.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};

use crate::{cluster::status::Entry, model::ObjectKey};

/// What `/status/ingresses` shows: the Ingresses the applied snapshot
/// serves, with their hosts and load balancer addresses.
#[derive(Debug, Default)]
pub struct IngressStatus {
    /// (Ingress, hosts) served, from the applied snapshot.
    pub served: Vec<(ObjectKey, Vec<String>)>,
    /// Standalone mode: the addresses every served Ingress shows.
    pub addresses: Vec<Entry>,
    /// Cluster mode: what the API shows on each Ingress (its
    /// `status.loadBalancer.ingress`, as the leader wrote it), in place of
    /// `addresses`.
    pub shown: Option<BTreeMap<ObjectKey, Vec<Entry>>>,
}

impl IngressStatus {
    /// The JSON document: `{"items": [{namespace, name, hosts,
    /// loadBalancer: {ingress: [...]}}]}`.
    pub fn render(&self) -> String {
        let items: Vec<serde_json::Value> = self
            .served
            .iter()
            .map(|(key, hosts)| {
                let entries = match &self.shown {
                    Some(shown) => shown.get(key).map(Vec::as_slice).unwrap_or_default(),
                    None => self.addresses.as_slice(),
                };
                serde_json::json!({
                    "namespace": key.namespace,
                    "name": key.name,
                    "hosts": hosts,
                    "loadBalancer": {"ingress": entries},
                })
            })
            .collect();
        serde_json::json!({ "items": items }).to_string()
    }
}

/// What the admin endpoints report.
#[derive(Debug)]
pub struct AdminState {
    ready: AtomicBool,
    registry: Registry,
    /// The served Ingresses and their status addresses.
    status: std::sync::Mutex<IngressStatus>,
}

impl AdminState {
    pub fn new(registry: Registry) -> Arc<Self> {
        Arc::new(AdminState {
            ready: AtomicBool::new(false),
            registry,
            status: std::sync::Mutex::default(),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Changes what `/status/ingresses` shows.
    pub fn update_status(&self, f: impl FnOnce(&mut IngressStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn status_json(&self) -> String {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .render()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let plain = |status: StatusCode, body: &'static str| {
            Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap_or_default()
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match req.uri().path() {
            "/healthz" => plain(StatusCode::OK, "ok\n"),
            "/readyz" if self.is_ready() => plain(StatusCode::OK, "ready\n"),
            "/readyz" => plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            "/status/ingresses" => Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(self.status_json())))
                .unwrap_or_default(),
            "/metrics" => {
                let mut text = String::new();
                if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry)
                {
                    tracing::warn!(error = %e, "encoding metrics");
                    return plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "metrics encoding failed\n",
                    );
                }
                Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(text)))
                    .unwrap_or_default()
            }
            _ => plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// Binds the admin listener (so a taken port fails start-up at once).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the admin listener on {addr}: {e}"))
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(state.respond(&req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::status::entry;

    #[test]
    fn status_shows_the_static_addresses_or_what_the_api_shows() {
        let web = ObjectKey::new("a", "web");
        let new = ObjectKey::new("a", "new");
        let mut s = IngressStatus {
            served: vec![
                (web.clone(), vec!["web.test".into()]),
                (new.clone(), vec![]),
            ],
            addresses: vec![entry("198.18.0.1")],
            shown: None,
        };
        let doc: serde_json::Value = serde_json::from_str(&s.render()).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"items": [
                {"namespace": "a", "name": "web", "hosts": ["web.test"],
                 "loadBalancer": {"ingress": [{"ip": "198.18.0.1"}]}},
                {"namespace": "a", "name": "new", "hosts": [],
                 "loadBalancer": {"ingress": [{"ip": "198.18.0.1"}]}},
            ]})
        );
        // Cluster mode: per Ingress, what the API shows (nothing yet for
        // one the leader has not written).
        s.shown = Some(BTreeMap::from([(web, vec![entry("lb.test")])]));
        let doc: serde_json::Value = serde_json::from_str(&s.render()).unwrap();
        assert_eq!(
            doc["items"][0]["loadBalancer"],
            serde_json::json!({"ingress": [{"hostname": "lb.test"}]})
        );
        assert_eq!(
            doc["items"][1]["loadBalancer"],
            serde_json::json!({"ingress": []})
        );
    }
}
