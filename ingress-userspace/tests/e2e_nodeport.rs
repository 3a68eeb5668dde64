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

/// The agent on the ingress node "edge-1" (198.18.0.1), attached to eth0 in
/// `mode`, serving the manifests in `dir`.
fn start_edge_agent(node: &str, mode: &str, dir: &TempDir) -> support::Agent {
    let manifests = dir.path().display().to_string();
    start_agent(
        node,
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
    )
}

/// No iptables or nftables rule in `ns`: the eBPF path did all of it.
fn assert_no_packet_filter_rules(ns: &str) {
    let ipt = sh(&["ip", "netns", "exec", ns, "iptables-save"]);
    let rules: Vec<String> = String::from_utf8_lossy(&ipt.stdout)
        .lines()
        .filter(|l| l.starts_with("-A"))
        .map(String::from)
        .collect();
    assert!(rules.is_empty(), "iptables rules on the node: {rules:?}");
    let nft = sh(&["ip", "netns", "exec", ns, "nft", "list", "ruleset"]);
    assert!(
        String::from_utf8_lossy(&nft.stdout).trim().is_empty(),
        "nftables rules on the node"
    );
}

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
    ns.route_via("node", "pod", "198.18.3.1");
    let dir = TempDir::new("nodeport");
    dir.write("web.yaml", MANIFESTS);
    let agent = start_edge_agent(&node, mode, &dir);

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

    assert_no_packet_filter_rules(&node);

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

const TWO_NODES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["198.18.3.2"], nodeName: edge-1, conditions: {ready: true}}
- {addresses: ["198.18.0.3"], nodeName: worker-1, conditions: {ready: true}}
"#;

/// Client, ingress node and worker on one bridged segment (so the worker
/// could answer the client directly: replies only arrive if SNAT and the
/// reverse translation are right), plus a pod behind the ingress node.
fn run_two_nodes(mode: &str) {
    let ns = Namespaces::new(&["lan", "node", "client", "worker", "pod"]);
    ns.link("node", "eth0", &["198.18.0.1/24"], "lan", "p-node", &[]);
    ns.link("client", "eth0", &["198.18.0.2/24"], "lan", "p-client", &[]);
    ns.link("worker", "eth0", &["198.18.0.3/24"], "lan", "p-worker", &[]);
    ns.link(
        "node",
        "eth1",
        &["198.18.3.1/24"],
        "pod",
        "eth0",
        &["198.18.3.2/24"],
    );
    let name = |r: &str| ns.name(r).to_string();
    let (lan, node, client, worker, pod) = (
        name("lan"),
        name("node"),
        name("client"),
        name("worker"),
        name("pod"),
    );
    sh(&["ip", "-n", &lan, "link", "add", "br0", "type", "bridge"]);
    for port in ["p-node", "p-client", "p-worker"] {
        sh(&["ip", "-n", &lan, "link", "set", port, "master", "br0"]);
    }
    sh(&["ip", "-n", &lan, "link", "set", "br0", "up"]);
    ns.route_via("node", "pod", "198.18.3.1");
    // Warm the neighbour entries the FIB lookups need.
    for (from, to) in [
        (&node, "198.18.0.3"),
        (&node, "198.18.0.2"),
        (&client, "198.18.0.1"),
        (&worker, "198.18.0.1"),
    ] {
        sh(&[
            "ip", "netns", "exec", from, "ping", "-c", "1", "-W", "2", to,
        ]);
    }
    let dir = TempDir::new("nodeport2");
    dir.write("web.yaml", TWO_NODES);
    // Native XDP_TX on a veth is delivered promptly only to a peer that
    // runs XDP itself (with GRO alone the frames wait for later traffic):
    // give the node's bridge port the do-nothing program. A physical NIC
    // needs nothing of the kind.
    let _peer = (mode == "native").then(|| {
        support::in_netns(&lan, || {
            let mut programs =
                ingress_userspace::datapath::LoadedPrograms::load().expect("loading");
            let noop: &mut aya::programs::Xdp = programs
                .ebpf
                .program_mut(ingress_common::maps::XDP_NOOP_PROGRAM)
                .unwrap()
                .try_into()
                .unwrap();
            noop.load().unwrap();
            noop.attach("p-node", aya::programs::XdpMode::Driver)
                .expect("attaching to p-node");
            programs
        })
    });
    let agent = start_edge_agent(&node, mode, &dir);
    let local = tcp_echo_server(&pod, sa("198.18.3.2:8080"), CONNECTIONS);
    let remote = tcp_echo_server(&worker, sa("198.18.0.3:8080"), CONNECTIONS);
    // Flows spread over both pods by Maglev; every one must complete.
    let mut done = 0;
    let mut rounds = 0;
    let m_before = agent.metrics();
    while done < CONNECTIONS && rounds < 8 {
        done += tcp_round_trips(&client, sa("198.18.0.1:30080"), 5);
        rounds += 1;
        let m = agent.metrics();
        let ev = |e: &str| {
            m.get(&format!(
                "ingress_datapath_l4_events_total{{hook=\"xdp\",event=\"{e}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
        };
        if ev("l4_dnat_remote") > 0.0 && ev("l4_dnat_local") > 0.0 && done >= 10 {
            break;
        }
    }
    let m_now = agent.metrics();
    let dbg: Vec<_> = m_now
        .iter()
        .filter(|(k, v)| k.contains("l4_events") && **v > 0.0)
        .collect();
    assert_eq!(
        done,
        rounds * 5,
        "{mode}: every connection through the NodePort completed: {dbg:?}"
    );
    let m = agent.metrics();
    let ev = |e: &str| {
        let k = format!("ingress_datapath_l4_events_total{{hook=\"xdp\",event=\"{e}\"}}");
        m.get(&k).copied().unwrap_or(0.0) - m_before.get(&k).copied().unwrap_or(0.0)
    };
    assert!(
        ev("l4_dnat_remote") > 0.0,
        "{mode}: some flows went to the worker: {m:?}"
    );
    assert!(
        ev("l4_reply_remote") > 0.0,
        "{mode}: the worker's replies were translated back"
    );
    assert!(
        ev("l4_dnat_local") > 0.0,
        "{mode}: some flows went to the local pod"
    );
    assert!(
        ev("l4_forwarded") > 0.0,
        "{mode}: XDP forwarded frames itself"
    );
    assert_no_packet_filter_rules(&node);
    drop(local);
    drop(remote);
    let (status, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
}

#[test]
fn nodeport_to_pods_on_two_nodes_native() {
    run_two_nodes("native");
}

#[test]
fn nodeport_to_pods_on_two_nodes_skb() {
    run_two_nodes("skb");
}
