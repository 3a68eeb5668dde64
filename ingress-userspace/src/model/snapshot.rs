//! The immutable result of a compile: what the proxy routes by.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicUsize},
};

use super::{Diagnostic, ObjectKey, Router};

/// Index into [`Snapshot::backends`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendId(pub usize);

/// One pod endpoint of a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The node the pod runs on (kept for the L4 path's Local policy).
    pub node_name: Option<String>,
    /// `ready`, or only `serving` (terminating, still draining).
    pub ready: bool,
}

/// How the proxy talks to the pods of a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 in clear (the default).
    #[default]
    Http1,
    /// HTTP/2 in clear with prior knowledge (gRPC, `kubernetes.io/h2c`).
    H2c,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 over TLS (gRPC with TLS).
    H2s,
}

impl UpstreamProtocol {
    pub fn is_h2(self) -> bool {
        matches!(self, UpstreamProtocol::H2c | UpstreamProtocol::H2s)
    }

    pub fn is_tls(self) -> bool {
        matches!(self, UpstreamProtocol::Https | UpstreamProtocol::H2s)
    }
}

/// A Service port an Ingress path points at, resolved to pod endpoints.
#[derive(Debug)]
pub struct Backend {
    pub service: ObjectKey,
    /// The Service port as the Ingress named it (`8080` or `http`).
    pub port: String,
    /// Usable endpoints: the ready ones, or when none is ready the serving
    /// ones. Empty means 503.
    pub endpoints: Arc<[Endpoint]>,
    /// Why this backend cannot serve (missing Service or port), for the 503
    /// answer and the logs.
    pub problem: Option<String>,
    /// Round-robin position.
    pub cursor: AtomicUsize,
    /// `ns/name:port`, made once for logs and metric labels.
    pub label: Arc<str>,
    /// What the annotations of the Ingress behind it ask (redirects).
    pub policy: super::compile::PathPolicy,
    /// From the `backend-protocol` annotation, else the Service port's
    /// appProtocol, else HTTP/1.1.
    pub protocol: UpstreamProtocol,
}

impl Backend {
    /// `ns/name:port`, the label used in logs and metrics.
    pub fn label(&self) -> Arc<str> {
        self.label.clone()
    }
}

impl PartialEq for Backend {
    fn eq(&self, other: &Self) -> bool {
        self.service == other.service
            && self.port == other.port
            && self.endpoints == other.endpoints
            && self.problem == other.problem
            && self.policy == other.policy
            && self.protocol == other.protocol
    }
}

/// An Ingress this agent serves, and the status it should show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedIngress {
    pub key: ObjectKey,
    pub hosts: Vec<String>,
}

/// Everything the data paths need, swapped whole.
///
/// Every part is behind an `Arc` so that a snapshot made from the previous
/// one (`refresh::refresh_endpoints`, after an EndpointSlice change) shares
/// what did not change instead of copying it: with 10,000 Ingresses a copy
/// of the routing table alone costs milliseconds. Backends are shared one
/// by one (an unchanged backend is the same `Arc`, round-robin cursor
/// included), so the proxy can tell which endpoints may have gone by
/// pointer comparison.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub router: Arc<Router>,
    pub backends: Vec<Arc<Backend>>,
    /// The L4 frontends (NodePorts, LoadBalancer IPs, externalIPs).
    pub l4: Arc<super::l4::L4Table>,
    /// Certificates by SNI name.
    pub tls: Arc<super::tls::TlsTable>,
    pub served: Arc<Vec<ServedIngress>>,
    pub diagnostics: Arc<Vec<Diagnostic>>,
    /// This node's name (`--node-name`), for the L4 path.
    pub node_name: String,
    /// Metric label values for the hosts rules name (lowercase).
    pub host_labels: Arc<std::collections::HashMap<String, Arc<str>>>,
}

impl Snapshot {
    pub fn backend(&self, id: BackendId) -> Option<&Backend> {
        self.backends.get(id.0).map(|b| &**b)
    }
}
