//! The L4 side of a snapshot: which (address, port, protocol) frontends the
//! XDP program answers and which pod endpoints stand behind each. Pure, like
//! the L7 compile; `datapath` turns it into map writes.
//!
//! Frontends: every NodePort on each of the node's addresses (for Services
//! of type NodePort and LoadBalancer), each LoadBalancer ingress IP, and
//! each externalIP, for TCP and UDP ports.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::core::v1::Service;

use super::{ClusterState, Diagnostic, ObjectKey, endpoints};

/// The default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct L4Backend {
    pub addr: SocketAddr,
    /// The pod runs on this node.
    pub local: bool,
    /// Serving but not ready: keeps existing flows, gets no new ones.
    pub terminating: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Service {
    pub service: ObjectKey,
    /// The Service port's name (or its number when unnamed).
    pub port: String,
    /// Sorted by address; with Local policy only this node's endpoints.
    pub backends: Vec<L4Backend>,
    /// `externalTrafficPolicy: Local`: no SNAT, client address kept.
    pub local_policy: bool,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `loadBalancerSourceRanges` as (network, prefix length).
    pub source_ranges: Vec<(IpAddr, u8)>,
    /// The port the agent answers with the local endpoint count (Local
    /// policy on LoadBalancer Services).
    pub health_check_node_port: Option<u16>,
}

impl L4Service {
    /// Backends new flows may get: not terminating.
    pub fn eligible(&self) -> impl Iterator<Item = &L4Backend> {
        self.backends.iter().filter(|b| !b.terminating)
    }
}

/// Every frontend the node answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L4Table {
    pub services: BTreeMap<(SocketAddr, Proto), L4Service>,
}

#[derive(Clone, Debug, Default)]
pub struct L4Options {
    pub node_name: String,
    /// The addresses NodePorts answer on (`--node-ip`).
    pub node_ips: Vec<IpAddr>,
}

/// Parses `a.b.c.d/n` or `v6/n`.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.trim().split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

/// Whether `svc` has L4 frontends: a NodePort or LoadBalancer Service, or
/// one with externalIPs (what [`compile_l4`] reads its endpoints for).
pub fn has_frontends(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|spec| {
        matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"))
            || spec
                .external_ips
                .as_ref()
                .is_some_and(|ips| !ips.is_empty())
    })
}

pub fn compile_l4(state: &ClusterState, opts: &L4Options, diags: &mut Vec<Diagnostic>) -> L4Table {
    let mut table = L4Table::default();
    let slices = endpoints::SliceIndex::new(state);
    for (key, svc) in &state.services {
        add_service(&mut table, &slices, opts, key, svc, diags);
    }
    table
}

fn add_service(
    table: &mut L4Table,
    slices: &endpoints::SliceIndex,
    opts: &L4Options,
    key: &ObjectKey,
    svc: &Service,
    diags: &mut Vec<Diagnostic>,
) {
    let object = format!("Service {key}");
    let Some(spec) = &svc.spec else { return };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    let node_ports = matches!(kind, "NodePort" | "LoadBalancer");
    let lb_ips: Vec<IpAddr> = if kind == "LoadBalancer" {
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect()
    } else {
        Vec::new()
    };
    let mut external: Vec<IpAddr> = Vec::new();
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        match ip.parse() {
            Ok(a) => external.push(a),
            Err(_) => diags.push(Diagnostic::error(
                &object,
                format!("spec.externalIPs[{i}]"),
                format!("'{ip}' is not an IP address"),
            )),
        }
    }
    if !node_ports && lb_ips.is_empty() && external.is_empty() {
        return;
    }
    let local_policy = spec.external_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let mut source_ranges = Vec::new();
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        match parse_cidr(r) {
            Some(c) => source_ranges.push(c),
            None => diags.push(Diagnostic::error(
                &object,
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!(
                    "'{r}' is not a CIDR; the Service is skipped rather than opened to everyone"
                ),
            )),
        }
    }
    if source_ranges.len()
        != spec
            .load_balancer_source_ranges
            .as_ref()
            .map_or(0, Vec::len)
    {
        return;
    }
    let health_check_node_port = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok());

    for (pi, sp) in spec.ports.iter().flatten().enumerate() {
        let proto = match sp.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Proto::Tcp,
            "UDP" => Proto::Udp,
            other => {
                diags.push(Diagnostic::warning(
                    &object,
                    format!("spec.ports[{pi}].protocol"),
                    format!("{other} is not served by the L4 path"),
                ));
                continue;
            }
        };
        let mut backends: Vec<L4Backend> = endpoints::of_service_port(slices, key, sp)
            .into_iter()
            .map(|e| L4Backend {
                addr: e.addr,
                local: e.node_name.as_deref() == Some(opts.node_name.as_str()),
                terminating: !e.ready,
            })
            .filter(|b| !local_policy || b.local)
            .collect();
        backends.sort();
        let service = L4Service {
            service: key.clone(),
            port: sp.name.clone().unwrap_or_else(|| sp.port.to_string()),
            backends,
            local_policy,
            affinity_timeout,
            source_ranges: source_ranges.clone(),
            health_check_node_port,
        };
        let Ok(port) = u16::try_from(sp.port) else {
            continue;
        };
        let mut frontends: Vec<SocketAddr> = Vec::new();
        if node_ports && let Some(np) = sp.node_port.and_then(|p| u16::try_from(p).ok()) {
            frontends.extend(opts.node_ips.iter().map(|ip| SocketAddr::new(*ip, np)));
        }
        frontends.extend(
            lb_ips
                .iter()
                .chain(external.iter())
                .map(|ip| SocketAddr::new(*ip, port)),
        );
        for fe in frontends {
            match table.services.get(&(fe, proto)) {
                Some(existing) if existing.service != *key => diags.push(Diagnostic::warning(
                    &object,
                    format!("spec.ports[{pi}]"),
                    format!(
                        "{fe}/{proto:?} is already served for Service {}; ignored here",
                        existing.service
                    ),
                )),
                Some(_) => {}
                None => {
                    // A frontend is answered by the endpoints of its own
                    // family (a dual-stack Service has a slice per family);
                    // there is no NAT between IPv4 and IPv6.
                    let mut same_family = service.clone();
                    same_family
                        .backends
                        .retain(|b| b.addr.is_ipv4() == fe.is_ipv4());
                    table.services.insert((fe, proto), same_family);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
