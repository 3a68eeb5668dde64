//! The L4 testbed shared by the NodePort end-to-end tests (standalone and
//! cluster mode): a client, an ingress node and a worker on one bridged
//! segment with a pod behind the node, and the checks made on the node.

use super::{Namespaces, in_netns, sh};

/// No iptables or nftables rule in `ns`: the eBPF path did all of it.
pub fn assert_no_packet_filter_rules(ns: &str) {
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

/// Client (198.18.0.2), ingress node (198.18.0.1) and worker (198.18.0.3)
/// on one bridged segment (so the worker could answer the client directly:
/// replies only arrive if SNAT and the reverse translation are right), plus
/// a pod behind the ingress node (198.18.3.2); dual-stack (198.18.0.0/24
/// and fd00::/64 on the segment, 198.18.3.0/24 and fd00:3::/64 behind the
/// node). Roles: lan (the bridge), node, client, worker, pod.
pub fn two_node_testbed() -> TwoNodes {
    let ns = Namespaces::new(&["lan", "node", "client", "worker", "pod"]);
    ns.link(
        "node",
        "eth0",
        &["198.18.0.1/24", "fd00::1/64"],
        "lan",
        "p-node",
        &[],
    );
    ns.link(
        "client",
        "eth0",
        &["198.18.0.2/24", "fd00::2/64"],
        "lan",
        "p-client",
        &[],
    );
    ns.link(
        "worker",
        "eth0",
        &["198.18.0.3/24", "fd00::3/64"],
        "lan",
        "p-worker",
        &[],
    );
    ns.link(
        "node",
        "eth1",
        &["198.18.3.1/24", "fd00:3::1/64"],
        "pod",
        "eth0",
        &["198.18.3.2/24", "fd00:3::2/64"],
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
    ns.route_via("node", "pod", "fd00:3::1");
    // Warm the neighbour entries the FIB lookups need.
    for (from, to) in [
        (&node, "198.18.0.3"),
        (&node, "198.18.0.2"),
        (&client, "198.18.0.1"),
        (&worker, "198.18.0.1"),
        (&node, "fd00::3"),
        (&node, "fd00::2"),
        (&client, "fd00::1"),
        (&worker, "fd00::1"),
    ] {
        sh(&[
            "ip", "netns", "exec", from, "ping", "-c", "1", "-W", "2", to,
        ]);
    }
    TwoNodes {
        ns,
        lan,
        node,
        client,
        worker,
        pod,
    }
}

/// [`two_node_testbed`]'s namespaces, and the name of each role's; the
/// namespaces go when this drops.
pub struct TwoNodes {
    pub ns: Namespaces,
    pub lan: String,
    pub node: String,
    pub client: String,
    pub worker: String,
    pub pod: String,
}

/// Native XDP_TX on a veth is delivered promptly only to a peer that runs
/// XDP itself (with GRO alone the frames wait for later traffic): gives the
/// node's bridge port the do-nothing program, attached while the returned
/// programs live. A physical NIC needs nothing of the kind.
pub fn noop_on_bridge_port(lan: &str) -> ingress_userspace::datapath::LoadedPrograms {
    in_netns(lan, || {
        let mut programs = ingress_userspace::datapath::LoadedPrograms::load().expect("loading");
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
}
