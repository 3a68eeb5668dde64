//! Cluster mode drives both data paths end to end: the real `ingress`
//! binary with `--kubeconfig` pointing at the API server double
//! (tests/support/apiserver.rs) and the eBPF programs attached to the
//! ingress node's uplink. A client, the ingress node and a worker share one
//! bridged segment, with pods behind the node and on the worker (the L4
//! testbed of `e2e_nodeport.rs`). The double listens on loopback inside the
//! node's namespace, where the agent runs.
//!
//! Services, EndpointSlices and Ingresses are added, changed and deleted
//! through the double, and both the NodePort (answered in XDP, no iptables
//! rule) and HTTP through the proxy follow: which pods answer fresh
//! connections is asserted at every step, with bounded waits.

mod support;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use support::{
    Agent, TempDir,
    apiserver::ApiServer,
    in_netns, manifests,
    nodeport::{TwoNodes, assert_no_packet_filter_rules, noop_on_bridge_port, two_node_testbed},
    sh, start_agent, wait_until,
};
use xtask::testbed::traffic::{http_echo_server, http_get_from};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A pod: its address, the node it runs on, and the name its HTTP echo
/// server answers with.
#[derive(Clone, Copy)]
struct Pod {
    ip: &'static str,
    node: &'static str,
    name: &'static str,
}

/// Behind the ingress node (the testbed's pod namespace).
const EDGE_A: Pod = Pod {
    ip: "198.18.3.2",
    node: "edge-1",
    name: "edge-a",
};
const EDGE_B: Pod = Pod {
    ip: "198.18.3.3",
    node: "edge-1",
    name: "edge-b",
};
/// On the worker, on the shared segment.
const WORKER_A: Pod = Pod {
    ip: "198.18.0.3",
    node: "worker-1",
    name: "worker-a",
};
const WORKER_B: Pod = Pod {
    ip: "198.18.0.4",
    node: "worker-1",
    name: "worker-b",
};

/// The pods listen on this port (port `http` of the Service)...
const POD_PORT: u16 = 8080;
/// ... and on this one (port `alt`), answering with their name and `-alt`.
const ALT_PORT: u16 = 8081;
/// The agent's proxy, on the node's uplink address.
const PROXY: &str = "198.18.0.1:80";
/// The Ingress's host.
const HOST: &str = "shop.example";

/// The two Nodes (the agent's own and the worker) and an Ingress sending
/// everything for `HOST` to the Service `shop/web`.
const NODES_AND_INGRESS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: edge-1}
status:
  addresses: [{type: InternalIP, address: 198.18.0.1}]
---
apiVersion: v1
kind: Node
metadata: {name: worker-1}
status:
  addresses: [{type: InternalIP, address: 198.18.0.3}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  rules:
  - host: shop.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}
"#;

/// The NodePort Service `shop/web` (port 80 to the pods' 8080) on
/// `node_port`.
fn service(node_port: u16) -> String {
    service_of("NodePort", &[http_port(Some(node_port))])
}

/// Port `http` of the Service (80 to the pods' 8080), with `node_port`.
fn http_port(node_port: Option<u16>) -> String {
    let node_port = node_port.map_or(String::new(), |p| format!(", nodePort: {p}"));
    format!("{{name: http, port: 80, targetPort: {POD_PORT}{node_port}}}")
}

/// The Service `shop/web` of type `kind` with `ports` (YAML flow mappings).
fn service_of(kind: &str, ports: &[String]) -> String {
    let ports: String = ports.iter().map(|p| format!("  - {p}\n")).collect();
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  type: {kind}
  ports:
{ports}"#
    )
}

/// The EndpointSlice of `shop/web` holding `pods`, each ready.
fn slice(pods: &[Pod]) -> String {
    let endpoints: String = pods
        .iter()
        .map(|p| {
            format!(
                "- {{addresses: [\"{}\"], nodeName: {}, conditions: {{ready: true}}}}\n",
                p.ip, p.node
            )
        })
        .collect();
    format!(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: {POD_PORT}, protocol: TCP}}, {{name: alt, port: {ALT_PORT}, protocol: TCP}}]
endpoints:
{endpoints}"#
    )
}

/// The names `pods` answer with on `POD_PORT` (`suffix` ""), or on
/// `ALT_PORT` (`suffix` "-alt").
fn names(pods: &[Pod], suffix: &str) -> BTreeSet<String> {
    pods.iter().map(|p| format!("{}{suffix}", p.name)).collect()
}

/// Fresh connections from the client for each look at who answers: enough
/// that Maglev (and the proxy's balancing) reach every one of up to three
/// pods with high odds, and the waits below poll again when not.
const TRIES: usize = 16;

/// `GET /` with `Host: HOST` from the client to `addr`, `tries` times on
/// fresh connections: the pods that answered, or what went wrong first.
fn answers(client: &str, addr: SocketAddr, tries: usize) -> Result<BTreeSet<String>, String> {
    let mut seen = BTreeSet::new();
    for i in 0..tries {
        let (status, body) = http_get_from(client, addr, HOST, "/")
            .map_err(|e| format!("GET {i} to {addr}: {e}"))?;
        if status != 200 {
            return Err(format!("GET {i} to {addr}: {status} {body:?}"));
        }
        let pod = body
            .split("pod=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .ok_or_else(|| format!("GET {i} to {addr}: no pod in {body:?}"))?;
        seen.insert(pod.to_string());
    }
    Ok(seen)
}

/// Waits (bounded) until fresh connections to `addr` all succeed and are
/// answered by exactly `want`; then checks that another round goes only
/// to `want` (no connection to a pod that left, none failing).
fn wait_for_pods(client: &str, addr: SocketAddr, want: &[Pod], step: &str) {
    wait_for_names(client, addr, names(want, ""), step);
}

/// `wait_for_pods` by the names the pods answer with.
fn wait_for_names(client: &str, addr: SocketAddr, want: BTreeSet<String>, step: &str) {
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || match answers(client, addr, TRIES) {
            Ok(got) if got == want => Ok(()),
            Ok(got) => Err(format!("{step}: {addr} answered by {got:?}, want {want:?}")),
            Err(e) => Err(format!("{step}: {e}")),
        },
    );
    let again = answers(client, addr, TRIES)
        .unwrap_or_else(|e| panic!("{step}: after the change was seen: {e}"));
    assert!(
        again.is_subset(&want),
        "{step}: {addr} answered by {again:?} after it was {want:?}"
    );
}

/// Whether a connection from the client to `addr` is refused (an RST to
/// the SYN): Ok when it is, Err saying what happened instead.
fn refused(client: &str, addr: SocketAddr) -> Result<(), String> {
    in_netns(client, move || {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(format!("{addr}: {e}")),
            Ok(_) => Err(format!("{addr} still accepts connections")),
        }
    })
}

/// Waits (bounded) until connections to `addr` are refused.
fn wait_refused(client: &str, addr: SocketAddr, step: &str) {
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        refused(client, addr).map_err(|e| format!("{step}: {e}"))
    });
}

/// Waits (bounded) until `GET /` for `HOST` through the proxy answers
/// `status`.
fn wait_for_proxy_status(client: &str, status: u16, step: &str) {
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || match http_get_from(client, sa(PROXY), HOST, "/") {
            Ok((s, _)) if s == status => Ok(()),
            Ok((s, body)) => Err(format!(
                "{step}: proxy answered {s} {body:?}, want {status}"
            )),
            Err(e) => Err(format!("{step}: proxy: {e}")),
        },
    );
}

/// `GET /` for `HOST` on an open connection, kept open: the pod that
/// answered.
fn get_kept(s: &mut TcpStream) -> Result<String, String> {
    write!(s, "GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| format!("no content-length in {text:?}"))?;
            if buf.len() >= end + 4 + length {
                let body = &text[end + 4..end + 4 + length];
                return body
                    .split("pod=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_string)
                    .ok_or_else(|| format!("no pod in {body:?}"));
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("closed after {text:?}")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// A connection from the client through `addr` that `pod` answered, kept
/// open (Maglev spreads fresh connections: tries up to 32).
fn connection_to(client: &str, addr: SocketAddr, pod: Pod) -> TcpStream {
    for _ in 0..32 {
        let mut s = in_netns(client, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        })
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match get_kept(&mut s) {
            Ok(p) if p == pod.name => return s,
            Ok(_) => {}
            Err(e) => panic!("GET on a new connection to {addr}: {e}"),
        }
    }
    panic!("no connection to {addr} reached {}", pod.name)
}

/// An XDP L4 event counter of the agent.
fn xdp_event(agent: &Agent, event: &str) -> f64 {
    agent
        .metrics()
        .get(&format!(
            "ingress_datapath_l4_events_total{{hook=\"xdp\",event=\"{event}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
}

#[test]
fn nodeport_and_ingress_follow_the_api_skb() {
    follow_the_api("skb");
}

#[test]
fn nodeport_and_ingress_follow_the_api_native() {
    follow_the_api("native");
}

fn follow_the_api(mode: &str) {
    let TwoNodes {
        ns: _ns,
        lan,
        node,
        client,
        worker,
        pod,
    } = two_node_testbed();
    // The second pod of each node: one more address on each pod link.
    for (ns, addr) in [(&pod, "198.18.3.3/24"), (&worker, "198.18.0.4/24")] {
        sh(&["ip", "-n", ns, "addr", "add", addr, "dev", "eth0"]);
    }
    for (from, to) in [(&node, "198.18.0.4"), (&node, "198.18.3.3")] {
        sh(&[
            "ip", "netns", "exec", from, "ping", "-c", "1", "-W", "2", to,
        ]);
    }
    let lifetime = Duration::from_secs(180);
    let _pods = [
        (&pod, EDGE_A),
        (&pod, EDGE_B),
        (&worker, WORKER_A),
        (&worker, WORKER_B),
    ]
    .map(|(ns, p)| {
        let ip = p.ip.parse().unwrap();
        [
            http_echo_server(ns, SocketAddr::new(ip, POD_PORT), p.name, lifetime),
            http_echo_server(
                ns,
                SocketAddr::new(ip, ALT_PORT),
                &format!("{}-alt", p.name),
                lifetime,
            ),
        ]
    });
    // See `noop_on_bridge_port`: native XDP_TX on a veth needs it.
    let _peer = (mode == "native").then(|| noop_on_bridge_port(&lan));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = ApiServer::start_in_netns(&rt, &node);
    api.apply_yaml(&manifests::class());
    api.apply_yaml(NODES_AND_INGRESS);
    api.apply_yaml(&service(30080));
    api.apply_yaml(&slice(&[EDGE_A, WORKER_A]));
    let dir = TempDir::new("cluster-nodeport");
    let kubeconfig = api.kubeconfig(dir.path()).display().to_string();
    let mut agent = start_agent(
        &node,
        &[
            "--kubeconfig",
            &kubeconfig,
            "--interface",
            "eth0",
            "--xdp-mode",
            mode,
            "--node-ip",
            "198.18.0.1",
            "--node-name",
            "edge-1",
            "--http-listen",
            PROXY,
        ],
        sa("127.0.0.1:9100"),
    );
    let node_port = |port: u16| sa(&format!("198.18.0.1:{port}"));

    // 1. What the API held at start: the NodePort reaches the pod behind
    // the node (DNAT) and the one on the worker (DNAT + SNAT, forwarded by
    // XDP), and so does the Ingress through the proxy.
    let local = xdp_event(&agent, "l4_dnat_local");
    let remote = xdp_event(&agent, "l4_dnat_remote");
    wait_for_pods(&client, node_port(30080), &[EDGE_A, WORKER_A], "at start");
    assert!(
        xdp_event(&agent, "l4_dnat_local") > local,
        "{mode}: XDP translated the flows to the local pod"
    );
    assert!(
        xdp_event(&agent, "l4_dnat_remote") > remote,
        "{mode}: XDP translated the flows to the worker's pod"
    );
    wait_for_pods(&client, sa(PROXY), &[EDGE_A, WORKER_A], "proxy at start");
    // A connection to the pod behind the node, kept open through the
    // endpoint changes below.
    let mut kept = connection_to(&client, node_port(30080), EDGE_A);

    // 2. The EndpointSlice changes: the worker's pod leaves...
    api.apply_yaml(&slice(&[EDGE_A]));
    wait_for_pods(&client, node_port(30080), &[EDGE_A], "worker-a removed");
    wait_for_pods(&client, sa(PROXY), &[EDGE_A], "proxy, worker-a removed");
    // ... and a pod on each node comes.
    let pods = [EDGE_A, EDGE_B, WORKER_B];
    api.apply_yaml(&slice(&pods));
    wait_for_pods(&client, node_port(30080), &pods, "edge-b, worker-b added");
    wait_for_pods(&client, sa(PROXY), &pods, "proxy, edge-b, worker-b added");
    // The open connection kept its pod: its flow outlived both changes.
    assert_eq!(
        get_kept(&mut kept),
        Ok(EDGE_A.name.to_string()),
        "{mode}: the open connection after the endpoint changes"
    );
    drop(kept);

    // 3. The Service changes its nodePort: the new one answers, the old
    // one is refused (no frontend in XDP, nothing listening on the node).
    api.apply_yaml(&service(30081));
    wait_for_pods(&client, node_port(30081), &pods, "nodePort 30081");
    wait_refused(&client, node_port(30080), "old nodePort 30080");

    // 4. The Service gains a port (alt, to the pods' 8081, nodePort 30082):
    // it answers from the pods' other port, and the first one goes on.
    let alt = "{name: alt, port: 81, targetPort: 8081, nodePort: 30082}".to_string();
    api.apply_yaml(&service_of("NodePort", &[http_port(Some(30081)), alt]));
    wait_for_names(
        &client,
        node_port(30082),
        names(&pods, "-alt"),
        "port alt added",
    );
    wait_for_pods(&client, node_port(30081), &pods, "port http, alt added");

    // 5. The Service turns ClusterIP: no nodePort answers any more, the
    // Ingress still reaches the pods.
    api.apply_yaml(&service_of("ClusterIP", &[http_port(None)]));
    wait_refused(&client, node_port(30081), "ClusterIP, port http");
    wait_refused(&client, node_port(30082), "ClusterIP, port alt");
    wait_for_pods(&client, sa(PROXY), &pods, "proxy, ClusterIP");
    // Its endpoints change while it has no L4 frontend (the agent takes
    // the endpoints-only path), and then it is a NodePort again: the L4
    // table is made from the endpoints of now.
    let pods = [EDGE_A, WORKER_A];
    api.apply_yaml(&slice(&pods));
    wait_for_pods(&client, sa(PROXY), &pods, "proxy, ClusterIP, slice changed");
    api.apply_yaml(&service(30081));
    wait_for_pods(&client, node_port(30081), &pods, "NodePort again");

    // 6. The Service is deleted: its nodePort is refused, the Ingress has
    // no backend (503).
    assert!(api.delete("Service", "shop", "web"));
    wait_refused(&client, node_port(30081), "Service deleted");
    wait_for_proxy_status(&client, 503, "Service deleted");

    // 7. It comes back (added while the agent runs) on 30080.
    api.apply_yaml(&service(30080));
    wait_for_pods(&client, node_port(30080), &pods, "Service added again");
    wait_for_pods(&client, sa(PROXY), &pods, "proxy, Service added again");

    // 8. The EndpointSlice is deleted: XDP answers the SYN with an RST (a
    // frontend without endpoints), the proxy 503.
    let no_backend = xdp_event(&agent, "l4_no_backend");
    assert!(api.delete("EndpointSlice", "shop", "web-1"));
    wait_refused(&client, node_port(30080), "EndpointSlice deleted");
    assert!(
        xdp_event(&agent, "l4_no_backend") > no_backend,
        "{mode}: XDP refused the connection to a Service without endpoints"
    );
    wait_for_proxy_status(&client, 503, "EndpointSlice deleted");

    // 9. The Ingress is deleted: no rule (404).
    assert!(api.delete("Ingress", "shop", "shop"));
    wait_for_proxy_status(&client, 404, "Ingress deleted");

    assert_no_packet_filter_rules(&node);
    let log = agent.take_output();
    for bad in ["L4 service skipped", "writing the L4 maps", "panicked"] {
        assert!(!log.contains(bad), "{mode}: {bad}: {log}");
    }
    let (status, log) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{mode}: {status}: {log}");
}
