//! Endpoints of a Service port, from its EndpointSlices: what both the L7
//! backends and the L4 services are built from.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::{
    api::{core::v1::ServicePort, discovery::v1::EndpointSlice},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{ClusterState, Endpoint, ObjectKey, compile::SERVICE_NAME_LABEL};

/// The EndpointSlices of each Service (by namespace and the
/// `kubernetes.io/service-name` label), built once per compile so that
/// finding a Service's slices is a lookup, not a scan of every slice (with
/// 10,000 Services a scan per Service port is 10^8 steps).
pub struct SliceIndex<'a> {
    /// namespace -> service name -> slices.
    by_service: HashMap<&'a str, HashMap<&'a str, Vec<&'a EndpointSlice>>>,
}

impl<'a> SliceIndex<'a> {
    pub fn new(state: &'a ClusterState) -> Self {
        let mut by_service: HashMap<&str, HashMap<&str, Vec<&EndpointSlice>>> = HashMap::new();
        for s in state.endpoint_slices.values() {
            let Some(service) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let namespace = s.metadata.namespace.as_deref().unwrap_or("default");
            by_service
                .entry(namespace)
                .or_default()
                .entry(service.as_str())
                .or_default()
                .push(s);
        }
        SliceIndex { by_service }
    }

    fn of(&self, key: &ObjectKey) -> &[&'a EndpointSlice] {
        self.by_service
            .get(key.namespace.as_str())
            .and_then(|services| services.get(key.name.as_str()))
            .map_or(&[], Vec::as_slice)
    }
}

/// The endpoints a backend uses of `all`: the ready ones, or the serving
/// ones (terminating pods still draining) when none is ready.
pub fn usable(all: Vec<Endpoint>) -> Vec<Endpoint> {
    if all.iter().any(|e| e.ready) {
        all.into_iter().filter(|e| e.ready).collect()
    } else {
        all
    }
}

/// Every endpoint of Service `key`'s port `sp` that is ready or at least
/// serving, once per address, sorted. The port is the slice port named like
/// the Service port; a slice without ports uses a numeric `targetPort` (or
/// the port itself when there is no targetPort).
pub fn of_service_port(slices: &SliceIndex, key: &ObjectKey, sp: &ServicePort) -> Vec<Endpoint> {
    let port_name = sp.name.as_deref().unwrap_or("");
    let fallback_port = match &sp.target_port {
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(_)) => None,
        None => Some(sp.port),
    };
    let mut found: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    for slice in slices.of(key) {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let port = match &slice.ports {
            Some(ports) if !ports.is_empty() => ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                .and_then(|p| p.port),
            _ => fallback_port,
        };
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in &slice.endpoints {
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            if !ready && !serving {
                continue;
            }
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                let addr = SocketAddr::new(ip, port);
                let e = found.entry(addr).or_insert(Endpoint {
                    addr,
                    node_name: ep.node_name.clone(),
                    ready,
                });
                e.ready |= ready;
            }
        }
    }
    found.into_values().collect()
}
