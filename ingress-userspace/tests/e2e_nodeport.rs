//! A NodePort served by the XDP/TC path end to end, with no iptables or
//! nftables rule anywhere: a client, the ingress node (the agent on its
//! uplink), and a pod behind the node. Real TCP and UDP to node:nodePort
//! reach the pod and the replies come back from node:nodePort (a TCP
//! handshake only completes when the reverse translation is right).

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use support::{
    Namespaces, TempDir, attached_programs, in_netns, ingress_bin,
    nodeport::{TwoNodes, assert_no_packet_filter_rules, noop_on_bridge_port, two_node_testbed},
    run_to_exit, sh, start_agent, tc_filters,
};
use xtask::testbed::traffic::{
    http_echo_server, tcp_echo_server, tcp_round_trips, udp_echo_server, udp_round_trips,
};

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
    start_edge_agent_with(node, mode, dir, &[])
}

fn start_edge_agent_with(node: &str, mode: &str, dir: &TempDir, extra: &[&str]) -> support::Agent {
    let manifests = dir.path().display().to_string();
    let mut args = vec![
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
    ];
    args.extend_from_slice(extra);
    start_agent(node, &args, sa("127.0.0.1:9100"))
}

/// A client and the ingress node "edge-1" on one veth pair (198.18.0.2 and
/// 198.18.0.1), and a pod namespace behind the node (198.18.3.1) holding
/// `pod_addrs`; returns the namespaces and the names of node, client, pod.
fn node_with_pods(pod_addrs: &[&str]) -> (Namespaces, String, String, String) {
    let ns = Namespaces::new(&["node", "client", "pod"]);
    ns.link(
        "node",
        "eth0",
        &["198.18.0.1/24"],
        "client",
        "eth0",
        &["198.18.0.2/24"],
    );
    ns.link("node", "eth1", &["198.18.3.1/24"], "pod", "eth0", pod_addrs);
    ns.route_via("node", "pod", "198.18.3.1");
    let name = |r: &str| ns.name(r).to_string();
    let (node, client, pod) = (name("node"), name("client"), name("pod"));
    (ns, node, client, pod)
}

fn run(mode: &str) {
    let (_ns, node, client, pod) = node_with_pods(&["198.18.3.2/24"]);
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

fn run_two_nodes(mode: &str) {
    let TwoNodes {
        ns: _ns,
        lan,
        node,
        client,
        worker,
        pod,
    } = two_node_testbed();
    let dir = TempDir::new("nodeport2");
    dir.write("web.yaml", TWO_NODES);
    // Native XDP_TX on a veth is delivered promptly only to a peer that
    // runs XDP itself (with GRO alone the frames wait for later traffic):
    // give the node's bridge port the do-nothing program. A physical NIC
    // needs nothing of the kind.
    let _peer = (mode == "native").then(|| noop_on_bridge_port(&lan));
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

/// An echo server that keeps its connections: each line read is answered
/// with `TAG line`, until the peer closes or stays silent for 20 s. Serves
/// at most `connections` peers.
fn tagged_echo_server(ns: &str, addr: SocketAddr, tag: &'static str, connections: usize) {
    let listener = in_netns(ns, move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("binding tcp {addr}: {e}"));
    thread::spawn(move || {
        for _ in 0..connections {
            let Ok((s, _)) = listener.accept() else {
                return;
            };
            thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let mut w = match s.try_clone() {
                    Ok(w) => w,
                    Err(_) => return,
                };
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { return };
                    if writeln!(w, "{tag} {line}").is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// One line over an open connection and its echo: the tag of the pod that
/// answered, or the error.
fn exchange(s: &mut TcpStream, line: &str) -> Result<String, String> {
    writeln!(s, "{line}").map_err(|e| format!("write: {e}"))?;
    let mut reply = String::new();
    BufReader::new(s.try_clone().map_err(|e| e.to_string())?)
        .read_line(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    let (tag, echoed) = reply
        .trim_end()
        .split_once(' ')
        .ok_or(format!("bad reply {reply:?}"))?;
    if echoed != line {
        return Err(format!("echo {echoed:?} for {line:?}"));
    }
    Ok(tag.to_string())
}

/// Opens connections from the client to the NodePort until one reaches
/// each pod (Maglev spreads them), keeping those two open.
fn one_connection_per_pod(client: &str) -> (TcpStream, TcpStream) {
    in_netns(client, || {
        let (mut local, mut remote) = (None, None);
        for i in 0..32 {
            let mut s = TcpStream::connect_timeout(&sa("198.18.0.1:30080"), Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connecting to the NodePort: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            match exchange(&mut s, &format!("hello {i}")).as_deref() {
                Ok("edge") if local.is_none() => local = Some(s),
                Ok("worker") if remote.is_none() => remote = Some(s),
                Ok(_) => {}
                Err(e) => panic!("first exchange on connection {i}: {e}"),
            }
            if local.is_some() && remote.is_some() {
                break;
            }
        }
        (
            local.expect("a connection to the pod on the ingress node"),
            remote.expect("a connection to the pod on the worker"),
        )
    })
}

/// Runs `ingress bpf ARGS --bpffs-dir DIR`: (exit code, stdout, stderr).
fn bpf(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(ingress_bin())
        .arg("bpf")
        .args(args)
        .arg("--bpffs-dir")
        .arg(dir)
        .output()
        .expect("running ingress bpf");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A pin directory that is removed (detaching what is pinned) even when
/// the test fails.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The core promise of pinning: established TCP connections through a
/// NodePort, to a pod on the ingress node and to one on another node, keep
/// working while the agent restarts (SIGTERM, then a new agent on the same
/// pin directory), with no packet meeting an interface without programs.
#[test]
fn established_flows_survive_an_agent_restart_skb() {
    restart("skb");
}

#[test]
fn established_flows_survive_an_agent_restart_native() {
    restart("native");
}

/// The same with TC egress as a netlink cls_bpf filter (what kernels
/// without TCX get): the restarted agent replaces the program in the
/// filter it finds at its fixed slot, so exactly one filter stays.
#[test]
fn established_flows_survive_an_agent_restart_netlink() {
    restart_with("skb", "netlink");
}

fn restart(mode: &str) {
    restart_with(mode, "auto");
}

/// What runs on `iface` of `ns`: (XDP programs, TC egress programs), the
/// latter TCX links or, with `tc_attach` netlink, the agent's cls_bpf
/// filters (then no TCX link may be there).
fn attached_with(ns: &str, iface: &str, tc_attach: &str) -> (usize, usize) {
    let (xdp, tcx) = attached_programs(ns, iface);
    if tc_attach != "netlink" {
        return (xdp, tcx);
    }
    assert_eq!(tcx, 0, "a TCX link in netlink mode");
    let filters = tc_filters(ns, iface);
    for f in &filters {
        assert!(
            f.contains("pref 7765")
                && f.contains("handle 0x1e55")
                && f.contains("ingress_tc_egress"),
            "a filter outside the agent's slot: {filters:?}"
        );
    }
    (xdp, filters.len())
}

fn restart_with(mode: &str, tc_attach: &str) {
    let TwoNodes {
        ns: _ns,
        lan,
        node,
        client,
        worker,
        pod,
    } = two_node_testbed();
    let _peer = (mode == "native").then(|| noop_on_bridge_port(&lan));
    let dir = TempDir::new("restart");
    dir.write("web.yaml", TWO_NODES);
    let pins = PinDir(xtask::testbed::agent::bpffs_test_dir());
    let pins_s = pins.0.display().to_string();
    let pin_args = ["--bpffs-dir", pins_s.as_str(), "--tc-attach", tc_attach];

    // Before any agent ran, `ingress bpf` says there is nothing.
    let (code, _, err) = bpf(&pins.0, &["flows"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nothing pinned"), "{err}");

    tagged_echo_server(&pod, sa("198.18.3.2:8080"), "edge", 64);
    tagged_echo_server(&worker, sa("198.18.0.3:8080"), "worker", 64);
    let first = start_edge_agent_with(&node, mode, &dir, &pin_args);
    let (mut local, mut remote) = one_connection_per_pod(&client);
    assert_eq!(exchange(&mut local, "before 1"), Ok("edge".into()));
    assert_eq!(exchange(&mut remote, "before 2"), Ok("worker".into()));

    // The pinned maps, read by `ingress bpf` against the live agent.
    let (code, out, err) = bpf(&pins.0, &["flows", "--output", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let flows: serde_json::Value = serde_json::from_str(&out).expect("flows JSON");
    let backends: Vec<&str> = flows
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["client"]
                .as_str()
                .unwrap_or("")
                .starts_with("198.18.0.2:")
        })
        .filter(|f| f["frontend"] == "198.18.0.1:30080")
        .filter_map(|f| f["backend"].as_str())
        .collect();
    assert!(backends.contains(&"198.18.3.2:8080"), "{out}");
    assert!(backends.contains(&"198.18.0.3:8080"), "{out}");
    let remote_flow = flows
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["backend"] == "198.18.0.3:8080")
        .unwrap();
    assert!(remote_flow["snat_port"].as_u64().is_some(), "{out}");
    assert_eq!(remote_flow["flags"][0], "remote", "{out}");
    let (code, table, _) = bpf(&pins.0, &["flows"]);
    assert_eq!(code, Some(0));
    assert!(table.starts_with("PROTO"), "{table}");
    assert!(
        table.contains("198.18.0.1:30080  ->  198.18.3.2:8080"),
        "{table}"
    );
    let (code, services, _) = bpf(&pins.0, &["services"]);
    assert_eq!(code, Some(0));
    assert!(
        services
            .lines()
            .any(|l| l.starts_with("198.18.0.1:30080") && l.contains(" tcp ")),
        "{services}"
    );
    let (code, out, _) = bpf(&pins.0, &["backends", "--output", "json"]);
    assert_eq!(code, Some(0));
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(b.as_array().unwrap().len(), 2, "{out}");
    let (code, stats, _) = bpf(&pins.0, &["stats"]);
    assert_eq!(code, Some(0));
    let new_flows = stats
        .lines()
        .find(|l| {
            l.starts_with("xdp ")
                && l.contains("ingress_datapath_l4_events_total{event=\"l4_new_flow\"}")
        })
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no l4_new_flow line in {stats}"));
    assert!(new_flows >= 2, "{stats}");

    // SIGTERM: the agent goes, the programs stay and keep translating.
    let stopping = std::time::Instant::now();
    let (status, log) = first.stop(libc::SIGTERM);
    let stopped_in = stopping.elapsed();
    assert!(status.success(), "{status}: {log}");
    assert_eq!(
        attached_with(&node, "eth0", tc_attach),
        (1, 1),
        "left attached"
    );
    assert_eq!(exchange(&mut local, "between 1"), Ok("edge".into()));
    assert_eq!(exchange(&mut remote, "between 2"), Ok("worker".into()));

    // A new agent adopts the flows and replaces the programs in place.
    let starting = std::time::Instant::now();
    let mut second = start_edge_agent_with(&node, mode, &dir, &pin_args);
    // For the record (not asserted): how long the node ran without an agent
    // while its programs kept serving.
    eprintln!(
        "{mode}: agent stopped in {stopped_in:?}; the next one ready (programs replaced) in {:?}",
        starting.elapsed()
    );
    assert_eq!(
        attached_with(&node, "eth0", tc_attach),
        (1, 1),
        "one program per hook"
    );
    assert_eq!(exchange(&mut local, "after 1"), Ok("edge".into()));
    assert_eq!(exchange(&mut remote, "after 2"), Ok("worker".into()));
    let log = second.take_output();
    assert!(log.contains("adopting pinned state maps"), "{log}");
    assert!(log.contains("replaced in the pinned link"), "{log}");
    if tc_attach == "netlink" {
        assert!(log.contains("replaced in the agent's filter"), "{log}");
    }
    // New connections work too.
    let fresh = in_netns(&client, || {
        let mut s = TcpStream::connect_timeout(&sa("198.18.0.1:30080"), Duration::from_secs(3))
            .expect("a new connection after the restart");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        exchange(&mut s, "new")
    });
    assert!(
        fresh.is_ok(),
        "a new connection after the restart: {fresh:?}"
    );
    assert_no_packet_filter_rules(&node);
    drop(local);
    drop(remote);
    let (status, log) = second.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");

    // `ingress bpf detach` removes it all.
    assert_eq!(attached_with(&node, "eth0", tc_attach), (1, 1));
    // In the node's namespace, where the netlink filter is.
    let pins_path = pins.0.clone();
    let (code, out, err) = in_netns(&node, move || bpf(&pins_path, &["detach"]));
    assert_eq!(code, Some(0), "{out}{err}");
    if tc_attach == "netlink" {
        assert!(
            out.contains("removed the TC egress filter of eth0"),
            "{out}"
        );
    }
    assert_eq!(
        attached_with(&node, "eth0", tc_attach),
        (0, 0),
        "nothing attached after ingress bpf detach"
    );
    assert!(!pins.0.exists(), "the pin directory is gone");
}

/// The netlink filter's lifetime follows the pinned links': left on both
/// uplinks by an agent that exits (`--on-exit keep`), removed from the one
/// the next agent is no longer given, replaced by a TCX link when an agent
/// attaches through TCX, and gone with
/// `--on-exit detach`.
#[test]
fn netlink_filters_follow_the_agents_interfaces_and_exit() {
    let (_ns, node, _client, _pod) = node_with_pods(&["198.18.3.2/24"]);
    let dir = TempDir::new("netlink");
    dir.write("web.yaml", MANIFESTS);
    let pins = PinDir(xtask::testbed::agent::bpffs_test_dir());
    let pins_s = pins.0.display().to_string();
    let netlink = ["--bpffs-dir", pins_s.as_str(), "--tc-attach", "netlink"];

    let both = [&netlink[..], &["--interface", "eth1"]].concat();
    let first = start_edge_agent_with(&node, "skb", &dir, &both);
    for iface in ["eth0", "eth1"] {
        assert_eq!(attached_with(&node, iface, "netlink"), (1, 1), "{iface}");
        assert!(pins.0.join(format!("v1/links/tc_netlink@{iface}")).is_dir());
    }
    let (status, log) = first.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("left attached (netlink filter)"), "{log}");
    assert_eq!(attached_with(&node, "eth1", "netlink"), (1, 1), "kept");

    let second = start_edge_agent_with(&node, "skb", &dir, &netlink);
    assert_eq!(attached_with(&node, "eth0", "netlink"), (1, 1));
    assert_eq!(
        attached_with(&node, "eth1", "netlink"),
        (0, 0),
        "eth1 is no longer given"
    );
    assert!(!pins.0.join("v1/links/tc_netlink@eth1").exists());
    let (status, log) = second.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains("removed the TC filter of an interface no longer given"),
        "{log}"
    );

    // TCX now: the filter goes once the link is in.
    let third = start_edge_agent_with(
        &node,
        "skb",
        &dir,
        &[
            "--bpffs-dir",
            &pins_s,
            "--tc-attach",
            "tcx",
            "--on-exit",
            "detach",
        ],
    );
    assert_eq!(attached_programs(&node, "eth0"), (1, 1), "a TCX link");
    assert!(tc_filters(&node, "eth0").is_empty(), "no filter beside it");
    let (status, log) = third.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("TC egress is now a TCX link"), "{log}");
    assert_eq!(attached_programs(&node, "eth0"), (0, 0));
    assert!(!pins.0.exists(), "pins removed: {log}");

    // And a netlink agent with --on-exit detach leaves no filter.
    let fourth = start_edge_agent_with(
        &node,
        "skb",
        &dir,
        &[&netlink[..], &["--on-exit", "detach"]].concat(),
    );
    assert_eq!(attached_with(&node, "eth0", "netlink"), (1, 1));
    let (status, log) = fourth.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
    assert_eq!(attached_with(&node, "eth0", "netlink"), (0, 0));
    assert!(!pins.0.exists(), "pins removed: {log}");
}

/// `--on-exit detach` leaves nothing attached and no pin behind.
#[test]
fn on_exit_detach_removes_links_and_pins() {
    let ns = Namespaces::new(&["node", "client"]);
    ns.link(
        "node",
        "eth0",
        &["198.18.0.1/24"],
        "client",
        "eth0",
        &["198.18.0.2/24"],
    );
    let node = ns.name("node").to_string();
    let dir = TempDir::new("ondetach");
    dir.write("web.yaml", MANIFESTS);
    let pins = PinDir(xtask::testbed::agent::bpffs_test_dir());
    let pins_s = pins.0.display().to_string();
    let agent = start_edge_agent_with(
        &node,
        "skb",
        &dir,
        &["--bpffs-dir", &pins_s, "--on-exit", "detach"],
    );
    assert_eq!(attached_programs(&node, "eth0"), (1, 1));
    assert!(pins.0.join("v1/links").is_dir());
    let (status, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
    assert_eq!(attached_programs(&node, "eth0"), (0, 0));
    assert!(!pins.0.exists(), "pins removed: {log}");
}

#[test]
fn bad_l4_flags_are_one_line_and_exit_1() {
    for (flag, value, needle) in [
        ("--maglev-table-size", "1000", "not prime"),
        ("--snat-port-range", "30000-20000", "port range"),
    ] {
        let (status, stderr) = run_to_exit(Command::new(ingress_bin()).args(["run", flag, value]));
        assert_eq!(status.code(), Some(1), "{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(needle), "{stderr}");
    }
}

const THREE_PODS: &str = r#"
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
- {addresses: ["198.18.3.3"], nodeName: edge-1, conditions: {ready: true}}
- {addresses: ["198.18.3.4"], nodeName: edge-1, conditions: {ready: true}}
"#;

/// One `GET` through the NodePort from a fixed client port, on a fresh
/// connection the pod closes (so the client keeps no TIME_WAIT and the same
/// 5-tuple can come again): which pod answered.
fn pod_for_source_port(client: &str, sport: u16) -> Option<String> {
    in_netns(client, move || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        sock.set_reuse_address(true).ok()?;
        sock.bind(&sa(&format!("198.18.0.2:{sport}")).into()).ok()?;
        sock.connect_timeout(&sa("198.18.0.1:30080").into(), Duration::from_secs(3))
            .ok()?;
        let mut s: std::net::TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let pod = body.split("pod=").nth(1)?.split_whitespace().next()?;
        Some(pod.to_string())
    })
}

/// Removing one of three endpoints moves the flows Maglev gave it and
/// (almost) no other: the same 5-tuples before and after (fixed client
/// ports, closed flows swept in between), every one that went to the
/// removed pod now goes to another, and the others keep their pod (Maglev
/// promises minimal, not zero, disruption; the tuples and the tables are
/// deterministic, so this outcome is too).
#[test]
fn removing_an_endpoint_moves_only_its_flows() {
    let (_ns, node, client, pod) =
        node_with_pods(&["198.18.3.2/24", "198.18.3.3/24", "198.18.3.4/24"]);
    let lifetime = Duration::from_secs(60);
    let _pods = [
        ("198.18.3.2:8080", "a"),
        ("198.18.3.3:8080", "b"),
        ("198.18.3.4:8080", "c"),
    ]
    .map(|(addr, name)| http_echo_server(&pod, sa(addr), name, lifetime));
    let dir = TempDir::new("moves");
    dir.write("web.yaml", THREE_PODS);
    let agent = start_edge_agent_with(&node, "skb", &dir, &["--l4-close-timeout", "0s"]);

    let ports: Vec<u16> = (42000..42045).collect();
    let before: Vec<(u16, String)> = ports
        .iter()
        .map(|&p| (p, pod_for_source_port(&client, p).expect("a pod answers")))
        .collect();
    assert!(
        before.iter().any(|(_, pod)| pod == "c") && before.iter().any(|(_, pod)| pod != "c"),
        "Maglev spread the flows: {before:?}"
    );

    // Pod c leaves the Service; wait for the agent to apply it, and for
    // the closed flows to be swept (timeout 0: any later second).
    let generation = |a: &support::Agent| {
        a.metrics()
            .get("ingress_snapshot_generation")
            .copied()
            .unwrap_or(0.0)
    };
    let applied = generation(&agent);
    dir.write(
        "web.yaml",
        &THREE_PODS.replace(
            "- {addresses: [\"198.18.3.4\"], nodeName: edge-1, conditions: {ready: true}}\n",
            "",
        ),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while generation(&agent) <= applied {
        assert!(
            std::time::Instant::now() < deadline,
            "the change was not applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(2500));

    let mut moved_others = Vec::new();
    for (p, was) in &before {
        let now = pod_for_source_port(&client, *p).expect("a pod answers");
        if was == "c" {
            assert_ne!(now, "c", "port {p}: the removed pod still gets new flows");
        } else if &now != was {
            moved_others.push((*p, was.clone(), now));
        }
    }
    let others = before.iter().filter(|(_, pod)| pod != "c").count();
    assert!(
        moved_others.len() * 10 <= others,
        "flows of the remaining pods moved: {moved_others:?} of {others}"
    );
    assert_no_packet_filter_rules(&node);
    let (status, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
}

const TWO_NODES_V6: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  ipFamilies: [IPv6]
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["fd00:3::2"], nodeName: edge-1, conditions: {ready: true}}
- {addresses: ["fd00::3"], nodeName: worker-1, conditions: {ready: true}}
"#;

/// The two-node NodePort over IPv6: the frontend on the node's IPv6
/// address, a pod behind the node (DNAT, TC reverse translation) and one
/// on the worker (DNAT + SNAT to the node's IPv6 address, XDP_TX, the reply
/// translated back in XDP), with no ip6tables or nftables rule.
#[test]
fn nodeport_over_ipv6_to_pods_on_two_nodes() {
    let TwoNodes {
        ns: _ns,
        lan: _,
        node,
        client,
        worker,
        pod,
    } = two_node_testbed();
    let dir = TempDir::new("nodeport6");
    dir.write("web.yaml", TWO_NODES_V6);
    let agent = start_edge_agent_with(&node, "skb", &dir, &["--node-ip", "fd00::1"]);
    let _local = tcp_echo_server(&pod, sa("[fd00:3::2]:8080"), CONNECTIONS);
    let _remote = tcp_echo_server(&worker, sa("[fd00::3]:8080"), CONNECTIONS);
    let done = tcp_round_trips(&client, sa("[fd00::1]:30080"), 20);
    let m = agent.metrics();
    let ev = |e: &str| {
        m.get(&format!(
            "ingress_datapath_l4_events_total{{hook=\"xdp\",event=\"{e}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    let events: Vec<_> = m
        .iter()
        .filter(|(k, v)| k.contains("l4_events") && **v > 0.0)
        .collect();
    assert_eq!(
        done, 20,
        "every IPv6 connection through the NodePort completed: {events:?}"
    );
    assert!(
        ev("l4_dnat_local") > 0.0,
        "some flows went to the pod on the node: {events:?}"
    );
    assert!(
        ev("l4_dnat_remote") > 0.0,
        "some flows went to the worker: {events:?}"
    );
    assert!(
        ev("l4_reply_remote") > 0.0,
        "the worker's replies were translated back"
    );
    let ip6 = sh(&["ip", "netns", "exec", &node, "ip6tables-save"]);
    assert!(
        !String::from_utf8_lossy(&ip6.stdout)
            .lines()
            .any(|l| l.starts_with("-A")),
        "ip6tables rules on the node"
    );
    assert_no_packet_filter_rules(&node);
    let (status, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
}

/// The NodePort mode of `deploy/overlays/nodeport`: the agent's own Service
/// is a NodePort whose endpoint is the agent itself (hostNetwork, the
/// node's address); XDP answers the nodePort by DNAT to the local proxy,
/// which routes by the Ingress to the pod. No iptables rule anywhere.
const AGENT_AS_NODEPORT: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: ingress-ebpf}
spec: {controller: ingress-ebpf.dev/controller}
---
apiVersion: v1
kind: Service
metadata: {name: ingress-ebpf, namespace: ingress-ebpf}
spec:
  type: NodePort
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ingress-ebpf-1, namespace: ingress-ebpf, labels: {kubernetes.io/service-name: ingress-ebpf}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["198.18.0.1"], nodeName: edge-1, conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["198.18.3.2"], nodeName: edge-1, conditions: {ready: true}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  ingressClassName: ingress-ebpf
  rules:
  - host: shop.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}
"#;

#[test]
fn the_proxy_is_reachable_on_its_own_nodeport_with_no_iptables_rule() {
    let (_ns, node, client, pod) = node_with_pods(&["198.18.3.2/24"]);
    let _web = http_echo_server(
        &pod,
        sa("198.18.3.2:8080"),
        "web-1",
        Duration::from_secs(30),
    );
    let dir = TempDir::new("agent-nodeport");
    dir.write("all.yaml", AGENT_AS_NODEPORT);
    let manifests = dir.path().display().to_string();
    let agent = start_agent(
        &node,
        &[
            "--interface",
            "eth0",
            "--xdp-mode",
            "skb",
            "--node-ip",
            "198.18.0.1",
            "--node-name",
            "edge-1",
            "--manifests",
            &manifests,
            "--http-listen",
            "198.18.0.1:8080",
        ],
        sa("127.0.0.1:9100"),
    );
    for _ in 0..5 {
        let (status, body) = xtask::testbed::traffic::http_get_from(
            &client,
            sa("198.18.0.1:30080"),
            "shop.example",
            "/",
        )
        .unwrap_or_else(|e| {
            let m: Vec<_> = agent
                .metrics()
                .into_iter()
                .filter(|(k, v)| k.contains("datapath") && *v > 0.0)
                .collect();
            panic!("GET through the nodePort: {e}; {m:?}")
        });
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("pod=web-1"), "{body}");
    }
    let m = agent.metrics();
    let ev = |hook: &str, e: &str| {
        m.get(&format!(
            "ingress_datapath_l4_events_total{{hook=\"{hook}\",event=\"{e}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert!(
        ev("xdp", "l4_dnat_local") > 0.0,
        "XDP DNAT to the proxy: {m:?}"
    );
    assert!(
        ev("tc_egress", "l4_revnat") > 0.0,
        "the proxy's replies translated back"
    );
    assert_no_packet_filter_rules(&node);
    let (status, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
}

const PMTU_V6: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: near, namespace: shop}
spec:
  type: NodePort
  ipFamilies: [IPv6]
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: near-1, namespace: shop, labels: {kubernetes.io/service-name: near}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["fd00:3::2"], nodeName: edge-1, conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: far, namespace: shop}
spec:
  type: NodePort
  ipFamilies: [IPv6]
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30081}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: far-1, namespace: shop, labels: {kubernetes.io/service-name: far}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["fd00:4::2"], nodeName: worker-1, conditions: {ready: true}}
"#;

/// Bytes each connection of the path MTU test sends and gets echoed.
const BULK: usize = 16 * 1024;

/// An echo server that reads `BULK` bytes per connection and sends them
/// back, for `connections` peers.
fn bulk_echo_server(ns: &str, addr: SocketAddr, connections: usize) -> thread::JoinHandle<()> {
    let listener = in_netns(ns, move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("binding tcp {addr}: {e}"));
    thread::spawn(move || {
        for _ in 0..connections {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = vec![0u8; BULK];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
            }
        }
    })
}

/// One connection from the client sending `BULK` bytes and reading them
/// back, each direction within 10 s.
fn bulk_round_trip(client: &str, addr: SocketAddr) -> Result<(), String> {
    in_netns(client, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let data: Vec<u8> = (0..BULK).map(|i| (i % 251) as u8).collect();
        s.write_all(&data).map_err(|e| format!("write: {e}"))?;
        let mut back = vec![0u8; BULK];
        s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
        if back != data {
            return Err("echo differs".into());
        }
        Ok(())
    })
}

/// Path MTU discovery through a NodePort over IPv6, with real packet-too-
/// big errors. The client's segments are as large as its 1,500-byte link
/// allows (the pods advertise an MSS of 1,440 through their routes'
/// `advmss`), but the way to each pod is narrower (1,280):
///
/// - to the pod behind the node, the node's own link to the pod: the
///   node's stack answers the DNATed segment with packet too big (quoting
///   client -> pod), which TC egress sends to the tail-called ICMPv6
///   program to come from the frontend and quote client -> frontend;
/// - to the pod on the worker, a router between the node and the worker:
///   its packet too big goes to the node's SNAT address (quoting node:SNAT
///   port -> pod), and XDP's ICMPv6 program sends it on to the client from
///   the frontend.
///
/// Without the translation the client finds no socket for the error and
/// retransmits the large segments forever: the transfer stalls.
#[test]
fn packet_too_big_over_ipv6_reaches_the_client_translated_skb() {
    packet_too_big_over_ipv6("skb");
}

#[test]
fn packet_too_big_over_ipv6_reaches_the_client_translated_native() {
    packet_too_big_over_ipv6("native");
}

fn packet_too_big_over_ipv6(mode: &str) {
    let ns = Namespaces::new(&["lan", "node", "client", "router", "worker", "pod"]);
    let name = |r: &str| ns.name(r).to_string();
    let (lan, node, client, router, worker, pod) = (
        name("lan"),
        name("node"),
        name("client"),
        name("router"),
        name("worker"),
        name("pod"),
    );
    // The IPv4 address is for the agent's own listener.
    ns.link(
        "node",
        "eth0",
        &["198.18.0.1/24", "fd00::1/64"],
        "lan",
        "p-node",
        &[],
    );
    ns.link("client", "eth0", &["fd00::2/64"], "lan", "p-client", &[]);
    ns.link("router", "eth0", &["fd00::9/64"], "lan", "p-router", &[]);
    ns.link(
        "router",
        "eth1",
        &["fd00:4::1/64"],
        "worker",
        "eth0",
        &["fd00:4::2/64"],
    );
    ns.link(
        "node",
        "eth1",
        &["fd00:3::1/64"],
        "pod",
        "eth0",
        &["fd00:3::2/64"],
    );
    sh(&["ip", "-n", &lan, "link", "add", "br0", "type", "bridge"]);
    for port in ["p-node", "p-client", "p-router"] {
        sh(&["ip", "-n", &lan, "link", "set", port, "master", "br0"]);
    }
    sh(&["ip", "-n", &lan, "link", "set", "br0", "up"]);
    // The narrow links, both ends.
    for (n, dev) in [
        (&node, "eth1"),
        (&pod, "eth0"),
        (&router, "eth1"),
        (&worker, "eth0"),
    ] {
        sh(&["ip", "-n", n, "link", "set", dev, "mtu", "1280"]);
    }
    for n in [&node, &router] {
        sh(&[
            "ip",
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.forwarding=1",
        ]);
    }
    // The pods advertise an MSS their own links could not carry, as pods
    // with a wider interface than the path would.
    for (n, gw) in [(&pod, "fd00:3::1"), (&worker, "fd00:4::1")] {
        sh(&[
            "ip", "-6", "-n", n, "route", "add", "default", "via", gw, "advmss", "1440",
        ]);
    }
    sh(&[
        "ip",
        "-6",
        "-n",
        &node,
        "route",
        "add",
        "fd00:4::/64",
        "via",
        "fd00::9",
    ]);
    for (from, to) in [
        (&node, "fd00::9"),
        (&node, "fd00::2"),
        (&client, "fd00::1"),
        (&router, "fd00::1"),
        (&node, "fd00:3::2"),
        (&router, "fd00:4::2"),
    ] {
        sh(&[
            "ip", "netns", "exec", from, "ping", "-c", "1", "-W", "2", to,
        ]);
    }
    let dir = TempDir::new("pmtu6");
    dir.write("web.yaml", PMTU_V6);
    let _peer = (mode == "native").then(|| noop_on_bridge_port(&lan));
    let agent = start_edge_agent_with(&node, mode, &dir, &["--node-ip", "fd00::1"]);
    let _near = bulk_echo_server(&pod, sa("[fd00:3::2]:8080"), 2);
    let _far = bulk_echo_server(&worker, sa("[fd00:4::2]:8080"), 2);
    let translated = |hook: &str| {
        agent
            .metrics()
            .get(&format!(
                "ingress_datapath_l4_events_total{{hook=\"{hook}\",event=\"l4_icmp6_translated\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
    };
    for (port, hook) in [(30080, "tc_egress"), (30081, "xdp")] {
        // Forget what an earlier round taught the client about the path.
        sh(&["ip", "-6", "-n", &client, "route", "flush", "cache"]);
        let before = translated(hook);
        let done = bulk_round_trip(&client, sa(&format!("[fd00::1]:{port}")));
        let m = agent.metrics();
        let events: Vec<_> = m
            .iter()
            .filter(|(k, v)| k.contains("l4_events") && **v > 0.0)
            .collect();
        assert_eq!(
            done,
            Ok(()),
            "{mode}: {BULK} bytes each way through port {port}: {events:?}"
        );
        assert!(
            translated(hook) > before,
            "{mode}, port {port}: a packet too big translated on {hook}: {events:?}"
        );
    }
    let (status, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
}

/// The XDP mode (`ip -d link`'s `xdp.mode`: 1 native, 2 skb) on `iface`
/// in `ns`, or `None` when no XDP program is attached.
fn xdp_mode_of(ns: &str, iface: &str) -> Option<u64> {
    let out = sh(&["ip", "-n", ns, "-j", "-d", "link", "show", "dev", iface]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j JSON");
    v.get(0)?.get("xdp")?.get("mode")?.as_u64()
}

/// A pinned XDP link keeps the mode it was made in: an agent restarted with
/// another `--xdp-mode` finds the mismatch, replaces the link with one in
/// the mode asked for, and the flows stay (the connection table is in the
/// pinned maps): a connection opened under the first agent goes on under
/// the second, as a connection-table hit. Both ways: skb to native and
/// back.
#[test]
fn a_restart_with_another_xdp_mode_replaces_the_link_and_keeps_the_flows() {
    let (_ns, node, client, pod) = node_with_pods(&["198.18.3.2/24"]);
    let dir = TempDir::new("xdpmode");
    dir.write("web.yaml", MANIFESTS);
    let pins = PinDir(xtask::testbed::agent::bpffs_test_dir());
    let pins_s = pins.0.display().to_string();
    let pin_args = ["--bpffs-dir", pins_s.as_str()];
    tagged_echo_server(&pod, sa("198.18.3.2:8080"), "edge", 4);

    let first = start_edge_agent_with(&node, "skb", &dir, &pin_args);
    assert_eq!(xdp_mode_of(&node, "eth0"), Some(2), "skb mode");
    let mut conn = in_netns(&client, || {
        let s = TcpStream::connect_timeout(&sa("198.18.0.1:30080"), Duration::from_secs(3))
            .expect("connecting to the NodePort");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    });
    assert_eq!(exchange(&mut conn, "under skb"), Ok("edge".into()));
    let (status, log) = first.stop(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
    assert_eq!(xdp_mode_of(&node, "eth0"), Some(2), "left attached on exit");

    for (mode, code) in [("native", 1), ("skb", 2)] {
        let agent = start_edge_agent_with(&node, mode, &dir, &pin_args);
        assert_eq!(xdp_mode_of(&node, "eth0"), Some(code), "{mode} mode now");
        let hits = |a: &support::Agent| {
            a.metrics()
                .get("ingress_datapath_l4_events_total{hook=\"xdp\",event=\"l4_flow_hit\"}")
                .copied()
                .unwrap_or(0.0)
        };
        let before = hits(&agent);
        assert_eq!(
            exchange(&mut conn, &format!("under {mode}")),
            Ok("edge".into()),
            "the connection goes on in {mode} mode"
        );
        assert!(
            hits(&agent) > before,
            "{mode}: the flow is known to the new link's program"
        );
        let (status, log) = agent.stop(libc::SIGTERM);
        assert!(status.success(), "{status}: {log}");
        assert!(
            log.contains("the pinned XDP link is in another mode"),
            "{mode}: {log}"
        );
        assert_eq!(
            std::fs::read_dir(pins.0.join("v1/links"))
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("xdp@"))
                .count(),
            1,
            "one pinned XDP link"
        );
    }
    let (code, _, err) = bpf(&pins.0, &["detach"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(xdp_mode_of(&node, "eth0"), None);
}
