//! Which addresses Ingress status shows, as ingress-nginx chooses them, in
//! precedence: `--publish-status-address`, then the load balancer addresses
//! of `--publish-service`, else the addresses of the ingress nodes (the
//! nodes where an agent of this class runs now, known from their presence
//! Leases, see `lease`). Pure: the status writer calls it with what the
//! watchers hold.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Node, Service},
    networking::v1::IngressLoadBalancerIngress,
};

use crate::model::ObjectKey;

/// Where the status addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--publish-status-address`: these, as given.
    Static(Vec<String>),
    /// `--publish-service NS/NAME`: that Service's load balancer addresses.
    Service(ObjectKey),
    /// The addresses of the nodes where an agent of the class runs.
    Nodes,
}

impl Source {
    /// The source the flags choose.
    pub fn from_flags(status_addresses: &[String], service: Option<&ObjectKey>) -> Source {
        match (status_addresses, service) {
            ([_, ..], _) => Source::Static(status_addresses.to_vec()),
            ([], Some(key)) => Source::Service(key.clone()),
            ([], None) => Source::Nodes,
        }
    }
}

/// `address` as a load balancer entry: `ip` when it parses as one, else
/// `hostname`.
pub fn entry(address: &str) -> IngressLoadBalancerIngress {
    if address.parse::<std::net::IpAddr>().is_ok() {
        IngressLoadBalancerIngress {
            ip: Some(address.to_string()),
            ..Default::default()
        }
    } else {
        IngressLoadBalancerIngress {
            hostname: Some(address.to_string()),
            ..Default::default()
        }
    }
}

/// A node's public addresses as ingress-nginx reports them: its ExternalIP
/// addresses when it has any, else its InternalIP ones (every family: a
/// dual-stack node gives one of each).
pub fn node_addresses(node: &Node) -> Vec<String> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let of = |kind: &str| -> Vec<String> {
        addresses
            .iter()
            .filter(|a| a.type_ == kind && !a.address.is_empty())
            .map(|a| a.address.clone())
            .collect()
    };
    let external = of("ExternalIP");
    if external.is_empty() {
        of("InternalIP")
    } else {
        external
    }
}

/// A Service's load balancer addresses as ingress-nginx publishes them:
/// `status.loadBalancer.ingress` (`ip`, else `hostname`), then
/// `spec.externalIPs` not already listed.
pub fn service_addresses(service: &Service) -> Vec<String> {
    let mut out: Vec<String> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| {
            i.ip.clone()
                .filter(|ip| !ip.is_empty())
                .or_else(|| i.hostname.clone().filter(|h| !h.is_empty()))
        })
        .collect();
    for ip in service
        .spec
        .as_ref()
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
    {
        if !out.contains(ip) {
            out.push(ip.clone());
        }
    }
    out
}

/// What the watchers know that the address sources need: each node's
/// addresses by name, and the published Service's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    pub nodes: BTreeMap<String, Vec<String>>,
    /// The `--publish-service` Service's addresses (empty when it does not
    /// exist or has none).
    pub service: Vec<String>,
}

/// The status entries to publish, sorted (host names, then IPs, as
/// ingress-nginx orders them) and without duplicates. `ingress_nodes` are
/// the node names with a live presence Lease; a node the Node watch does
/// not know contributes nothing.
pub fn desired(
    source: &Source,
    known: &Known,
    ingress_nodes: &[String],
) -> Vec<IngressLoadBalancerIngress> {
    let addresses: Vec<String> = match source {
        Source::Static(list) => list.clone(),
        Source::Service(_) => known.service.clone(),
        Source::Nodes => ingress_nodes
            .iter()
            .filter_map(|n| known.nodes.get(n))
            .flatten()
            .cloned()
            .collect(),
    };
    let mut out: Vec<IngressLoadBalancerIngress> = addresses.iter().map(|a| entry(a)).collect();
    sort(&mut out);
    out.dedup();
    out
}

/// Orders load balancer entries by hostname, then IP (ingress-nginx's
/// order), so that equal sets compare equal.
pub fn sort(entries: &mut [IngressLoadBalancerIngress]) {
    entries.sort_by(|a, b| (&a.hostname, &a.ip).cmp(&(&b.hostname, &b.ip)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addresses: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "status": {"addresses": addresses.iter()
                .map(|(t, a)| serde_json::json!({"type": t, "address": a}))
                .collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    fn ips(entries: &[IngressLoadBalancerIngress]) -> Vec<String> {
        entries
            .iter()
            .map(|e| e.ip.clone().or(e.hostname.clone()).unwrap_or_default())
            .collect()
    }

    #[test]
    fn flags_choose_the_source_in_ingress_nginx_precedence() {
        let key = ObjectKey::new("ingress", "edge");
        assert_eq!(
            Source::from_flags(&["198.18.0.1".into()], Some(&key)),
            Source::Static(vec!["198.18.0.1".into()])
        );
        assert_eq!(Source::from_flags(&[], Some(&key)), Source::Service(key));
        assert_eq!(Source::from_flags(&[], None), Source::Nodes);
    }

    #[test]
    fn external_addresses_first_else_internal_both_families() {
        let n = node(&[
            ("Hostname", "n1"),
            ("InternalIP", "198.18.5.1"),
            ("ExternalIP", "198.19.5.1"),
            ("ExternalIP", "fd00::5:1"),
            ("InternalIP", "fd00::1:1"),
        ]);
        assert_eq!(node_addresses(&n), ["198.19.5.1", "fd00::5:1"]);
        let n = node(&[
            ("Hostname", "n2"),
            ("InternalIP", "198.18.5.2"),
            ("InternalIP", "fd00::1:2"),
        ]);
        assert_eq!(node_addresses(&n), ["198.18.5.2", "fd00::1:2"]);
        assert!(node_addresses(&node(&[("Hostname", "n3")])).is_empty());
        assert!(node_addresses(&Node::default()).is_empty());
    }

    #[test]
    fn service_load_balancer_then_external_ips() {
        let s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "edge", "namespace": "ingress"},
            "spec": {"type": "LoadBalancer", "externalIPs": ["198.18.9.9", "198.18.9.1"]},
            "status": {"loadBalancer": {"ingress": [
                {"ip": "198.18.9.1"}, {"hostname": "lb.example"}, {}
            ]}},
        }))
        .unwrap();
        assert_eq!(
            service_addresses(&s),
            ["198.18.9.1", "lb.example", "198.18.9.9"]
        );
        assert!(service_addresses(&Service::default()).is_empty());
    }

    #[test]
    fn desired_per_source_sorted_and_deduplicated() {
        let known = Known {
            nodes: BTreeMap::from([
                ("n1".into(), vec!["198.18.5.1".into(), "fd00::5:1".into()]),
                ("n2".into(), vec!["198.18.5.2".into()]),
                ("n3".into(), vec!["198.18.5.3".into()]),
            ]),
            service: vec!["198.18.9.1".into(), "lb.example".into()],
        };
        let nodes = ["n2".to_string(), "n1".to_string(), "unknown".to_string()];
        assert_eq!(
            ips(&desired(&Source::Nodes, &known, &nodes)),
            ["198.18.5.1", "198.18.5.2", "fd00::5:1"]
        );
        assert!(desired(&Source::Nodes, &known, &[]).is_empty());
        assert_eq!(
            ips(&desired(
                &Source::Service(ObjectKey::new("a", "b")),
                &known,
                &nodes
            )),
            ["198.18.9.1", "lb.example"]
        );
        let d = desired(
            &Source::Static(vec![
                "lb.example".into(),
                "198.18.0.1".into(),
                "198.18.0.1".into(),
            ]),
            &known,
            &nodes,
        );
        assert_eq!(ips(&d), ["198.18.0.1", "lb.example"]);
        assert_eq!(d[1].hostname.as_deref(), Some("lb.example"));
        assert_eq!(entry("fd00::1").ip.as_deref(), Some("fd00::1"));
    }
}
