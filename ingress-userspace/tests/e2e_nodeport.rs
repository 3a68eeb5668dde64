//! A NodePort served by the XDP/TC path end to end, with no iptables or
//! nftables rule anywhere: a client, the ingress node (the agent on its
//! uplink), and a pod behind the node. Real TCP and UDP to node:nodePort
//! reach the pod and the replies come back from node:nodePort (a TCP
//! handshake only completes when the reverse translation is right).

mod support;

use std::net::SocketAddr;

use support::{Namespaces, TempDir, sh, start_agent};
use xtask::testbed::traffic::{tcp_echo_server, tcp_round_trips, udp_echo_server, udp_round_trips};

const CONNECTIONS: usize = 25;
const DATAGRAMS: usize = 20;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: ["198.18.3.2"], nodeName: edge-1, conditions: {ready: true}}
"#;

fn run(mode: &str) {
    let ns = Namespaces::new(&["node", "client", "pod"]);
    ns.link(
        "node",
        "eth0",
        &["198.18.0.1/24"],
        "client",
        "eth0",
        &["198.18.0.2/24"],
    );
    ns.link(
        "node",
        "eth1",
        &["198.18.3.1/24"],
        "pod",
        "eth0",
        &["198.18.3.2/24"],
    );
    let (node, client, pod) = (
        ns.name("node").to_string(),
        ns.name("client").to_string(),
        ns.name("pod").to_string(),
    );
    sh(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    sh(&[
        "ip",
        "-n",
        &pod,
        "route",
        "add",
        "default",
        "via",
        "198.18.3.1",
    ]);
    let dir = TempDir::new("nodeport");
    dir.write("web.yaml", MANIFESTS);
    let manifests = dir.path().display().to_string();
    let agent = start_agent(
        &node,
        &[
            "--interface",
            "eth0",
            "--xdp-mode",
            mode,
            "--node-ip",
            "198.18.0.1",
            "--node-name",
            "edge-1",
            "--manifests",
            &manifests,
            "--http-listen",
            "198.18.0.1:80",
        ],
        sa("127.0.0.1:9100"),
    );

    let tcp = tcp_echo_server(&pod, sa("198.18.3.2:8080"), CONNECTIONS);
    let udp = udp_echo_server(&pod, sa("198.18.3.2:5353"), DATAGRAMS);
    assert_eq!(
        tcp_round_trips(&client, sa("198.18.0.1:30080"), CONNECTIONS),
        CONNECTIONS,
        "{mode}: TCP through the NodePort"
    );
    assert_eq!(
        udp_round_trips(
            &client,
            sa("198.18.0.2:0"),
            sa("198.18.0.1:30053"),
            DATAGRAMS
        ),
        DATAGRAMS,
        "{mode}: UDP through the NodePort"
    );
    tcp.join().unwrap();
    udp.join().unwrap();

    let m = agent.metrics();
    let event = |hook: &str, e: &str| {
        m.get(&format!(
            "ingress_datapath_l4_events_total{{hook=\"{hook}\",event=\"{e}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert!(
        event("xdp", "l4_new_flow") >= (CONNECTIONS + 1) as f64,
        "{mode}: {m:?}"
    );
    assert!(event("xdp", "l4_dnat_local") >= (3 * CONNECTIONS) as f64);
    assert!(event("tc_egress", "l4_revnat") >= (2 * CONNECTIONS + DATAGRAMS) as f64);

    // No packet filter rule on the node: the eBPF path did all of it.
    let ipt = sh(&["ip", "netns", "exec", &node, "iptables-save"]);
    let rules: Vec<String> = String::from_utf8_lossy(&ipt.stdout)
        .lines()
        .filter(|l| l.starts_with("-A"))
        .map(String::from)
        .collect();
    assert!(rules.is_empty(), "iptables rules on the node: {rules:?}");
    let nft = sh(&["ip", "netns", "exec", &node, "nft", "list", "ruleset"]);
    assert!(
        String::from_utf8_lossy(&nft.stdout).trim().is_empty(),
        "nftables rules on the node"
    );

    let (status, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
}

#[test]
fn nodeport_to_a_local_pod_native() {
    run("native");
}

#[test]
fn nodeport_to_a_local_pod_skb() {
    run("skb");
}
