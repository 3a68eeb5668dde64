use super::*;

use crate::source::manifest::parse_clean as state;

fn opts() -> L4Options {
    L4Options {
        node_name: "edge-1".into(),
        node_ips: vec!["198.18.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const SLICE: &str = r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: ["198.18.1.2"], nodeName: edge-1, conditions: {ready: true}}
- {addresses: ["198.18.2.2"], nodeName: worker-1, conditions: {ready: true}}
- {addresses: ["198.18.2.3"], nodeName: worker-1, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: ["198.18.2.4"], nodeName: worker-1, conditions: {ready: false, serving: false}}
"#;

fn service(spec: &str, status: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n{spec}\n{status}{SLICE}"
    )
}

const PORTS: &str = "  ports:\n  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}\n";

#[test]
fn node_ports_answer_on_every_node_address_for_tcp_and_udp() {
    let mut d = Vec::new();
    let t = compile_l4(
        &state(&service(&format!("  type: NodePort\n{PORTS}"), "")),
        &opts(),
        &mut d,
    );
    assert!(d.is_empty(), "{d:?}");
    let keys: Vec<_> = t.services.keys().cloned().collect();
    assert_eq!(
        keys,
        [
            (sa("198.18.0.1:30053"), Proto::Udp),
            (sa("198.18.0.1:30080"), Proto::Tcp),
            (sa("[fd00::1]:30053"), Proto::Udp),
            (sa("[fd00::1]:30080"), Proto::Tcp),
        ]
    );
    let web = &t.services[&(sa("198.18.0.1:30080"), Proto::Tcp)];
    assert_eq!(web.port, "http");
    // Ready and terminating endpoints; the one neither ready nor serving is gone.
    let addrs: Vec<_> = web
        .backends
        .iter()
        .map(|b| (b.addr, b.local, b.terminating))
        .collect();
    assert_eq!(
        addrs,
        [
            (sa("198.18.1.2:8080"), true, false),
            (sa("198.18.2.2:8080"), false, false),
            (sa("198.18.2.3:8080"), false, true),
        ]
    );
    assert_eq!(
        web.eligible().count(),
        2,
        "terminating endpoints get no new flows"
    );
    let dns = &t.services[&(sa("198.18.0.1:30053"), Proto::Udp)];
    assert_eq!(dns.backends[0].addr.port(), 5353);
}

#[test]
fn cluster_ip_services_have_no_frontend() {
    let mut d = Vec::new();
    let t = compile_l4(&state(&service(PORTS, "")), &opts(), &mut d);
    assert!(t.services.is_empty());
}

#[test]
fn load_balancer_ips_and_external_ips_use_the_service_port() {
    let spec = format!("  type: LoadBalancer\n  externalIPs: [198.18.9.9]\n{PORTS}");
    let status = "status: {loadBalancer: {ingress: [{ip: 198.18.8.8}]}}\n";
    let mut d = Vec::new();
    let t = compile_l4(&state(&service(&spec, status)), &opts(), &mut d);
    for fe in ["198.18.8.8:80", "198.18.9.9:80", "198.18.0.1:30080"] {
        assert!(
            t.services.contains_key(&(sa(fe), Proto::Tcp)),
            "{fe} missing: {:?}",
            t.services.keys()
        );
    }
    assert!(t.services.contains_key(&(sa("198.18.8.8:53"), Proto::Udp)));
}

#[test]
fn local_policy_keeps_only_this_nodes_endpoints() {
    let spec = format!(
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n{PORTS}"
    );
    let mut d = Vec::new();
    let t = compile_l4(&state(&service(&spec, "")), &opts(), &mut d);
    let web = &t.services[&(sa("198.18.0.1:30080"), Proto::Tcp)];
    assert!(web.local_policy);
    assert_eq!(web.backends.len(), 1);
    assert!(web.backends[0].local);
    assert_eq!(web.health_check_node_port, Some(32000));
}

#[test]
fn affinity_and_source_ranges() {
    let spec = format!(
        "  type: NodePort\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 60}}}}\n  loadBalancerSourceRanges: [198.18.0.0/24, \"fd00::/8\"]\n{PORTS}"
    );
    let mut d = Vec::new();
    let t = compile_l4(&state(&service(&spec, "")), &opts(), &mut d);
    let web = &t.services[&(sa("198.18.0.1:30080"), Proto::Tcp)];
    assert_eq!(web.affinity_timeout, Some(60));
    assert_eq!(
        web.source_ranges,
        [
            ("198.18.0.0".parse().unwrap(), 24),
            ("fd00::".parse().unwrap(), 8)
        ]
    );
    let spec = format!("  type: NodePort\n  sessionAffinity: ClientIP\n{PORTS}");
    let t = compile_l4(&state(&service(&spec, "")), &opts(), &mut d);
    assert_eq!(
        t.services.values().next().unwrap().affinity_timeout,
        Some(DEFAULT_AFFINITY_TIMEOUT)
    );
}

#[test]
fn a_bad_source_range_skips_the_service_instead_of_opening_it() {
    let spec = format!("  type: NodePort\n  loadBalancerSourceRanges: [not-a-cidr]\n{PORTS}");
    let mut d = Vec::new();
    let t = compile_l4(&state(&service(&spec, "")), &opts(), &mut d);
    assert!(t.services.is_empty());
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].field, "spec.loadBalancerSourceRanges[0]");
}

#[test]
fn unsupported_protocols_and_bad_external_ips_are_reported() {
    let spec = "  type: NodePort\n  externalIPs: [nope]\n  ports:\n  - {name: s, port: 9, protocol: SCTP, nodePort: 30009}\n";
    let mut d = Vec::new();
    let t = compile_l4(&state(&service(spec, "")), &opts(), &mut d);
    assert!(t.services.is_empty());
    let fields: Vec<_> = d.iter().map(|x| x.field.as_str()).collect();
    assert_eq!(fields, ["spec.externalIPs[0]", "spec.ports[0].protocol"]);
}

#[test]
fn cidrs() {
    assert_eq!(parse_cidr("10.0.0.0/8").map(|c| c.1), Some(8));
    assert_eq!(parse_cidr("fd00::/129"), None);
    assert_eq!(parse_cidr("1.2.3.4"), None);
}

#[test]
fn each_frontend_gets_the_endpoints_of_its_own_family() {
    let v6_slice = r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-2, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["fd00::1:2"], nodeName: edge-1, conditions: {ready: true}}
"#;
    let yaml = service(&format!("  type: NodePort\n{PORTS}"), "") + v6_slice;
    let mut d = Vec::new();
    let t = compile_l4(&state(&yaml), &opts(), &mut d);
    let v4: Vec<_> = t.services[&(sa("198.18.0.1:30080"), Proto::Tcp)]
        .backends
        .iter()
        .map(|b| b.addr)
        .collect();
    assert_eq!(v4.len(), 3);
    assert!(v4.iter().all(SocketAddr::is_ipv4), "{v4:?}");
    let v6: Vec<_> = t.services[&(sa("[fd00::1]:30080"), Proto::Tcp)]
        .backends
        .iter()
        .map(|b| (b.addr, b.local))
        .collect();
    assert_eq!(v6, [(sa("[fd00::1:2]:8080"), true)]);
    // The UDP port has no IPv6 endpoint: its IPv6 frontend has none.
    assert!(
        t.services[&(sa("[fd00::1]:30053"), Proto::Udp)]
            .backends
            .is_empty()
    );
}
