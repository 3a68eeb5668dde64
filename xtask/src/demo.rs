//! `cargo xtask demo`: builds the agent and brings up a small cluster in
//! network namespaces:
//!
//! ```text
//!   client 198.18.0.2 --+
//!                       +-- bridge (lan) --+-- eth0 198.18.0.1 [edge-1: ingress agent] eth1 198.18.1.1 -- pods 198.18.1.2, .3
//!   worker 198.18.0.3 --+  (worker-1: pod web-3)
//! ```
//!
//! The agent attaches XDP and TC egress to the ingress node's uplink (eth0)
//! and serves the embedded manifests (`xtask/demo/*.yaml`) on
//! 198.18.0.1:80. The demo sends real TCP and UDP across the uplink and
//! shows the eBPF counters moving, sends HTTP through the proxy to the
//! pods, answers NodePort 30080 from pods on both nodes in XDP (the worker
//! could answer the client directly on the shared segment: its replies
//! only arrive because SNAT and the reverse translation are right), changes
//! the Ingress live and times how fast traffic follows, then stops the
//! agent and shows nothing stays attached.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    cmd,
    testbed::{
        Namespaces,
        agent::Agent,
        sh,
        traffic::{
            http_echo_server, http_get_from, tcp_echo_server, tcp_round_trips, udp_echo_server,
            udp_round_trips,
        },
    },
};

const ROUNDS: usize = 2;
/// Requests to the NodePort: enough for Maglev to use pods on both nodes.
const NODEPORT_REQUESTS: usize = 12;
const PER_ROUND: usize = 10;
const MANIFESTS: &str = include_str!("../demo/manifests.yaml");
const INGRESS: &str = include_str!("../demo/ingress.yaml");

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

pub fn run() -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("cargo xtask demo needs root (network namespaces, eBPF)");
    }
    println!("demo: building the agent and its eBPF programs (cargo build --release)");
    let bin = cmd::build_agent_release()?;
    let peer_bin = cmd::build_example_release("xdp_peer")?;

    let ns = Namespaces::new(&["lan", "node", "client", "worker", "pods"]);
    ns.link("node", "eth0", &["198.18.0.1/24"], "lan", "p-node", &[]);
    ns.link("client", "eth0", &["198.18.0.2/24"], "lan", "p-client", &[]);
    ns.link("worker", "eth0", &["198.18.0.3/24"], "lan", "p-worker", &[]);
    let lan = ns.name("lan").to_string();
    sh(&["ip", "-n", &lan, "link", "add", "br0", "type", "bridge"]);
    for port in ["p-node", "p-client", "p-worker"] {
        sh(&["ip", "-n", &lan, "link", "set", port, "master", "br0"]);
    }
    sh(&["ip", "-n", &lan, "link", "set", "br0", "up"]);
    ns.link(
        "node",
        "eth1",
        &["198.18.1.1/24"],
        "pods",
        "eth0",
        &["198.18.1.2/24", "198.18.1.3/24"],
    );
    let (node, client, worker, pods) = (
        ns.name("node").to_string(),
        ns.name("client").to_string(),
        ns.name("worker").to_string(),
        ns.name("pods").to_string(),
    );
    // The node forwards to the pods behind it; the pods answer through it.
    ns.route_via("node", "pods", "198.18.1.1");
    // The neighbour entries the XDP program's FIB lookups need.
    for (from, to) in [
        (&node, "198.18.0.2"),
        (&node, "198.18.0.3"),
        (&client, "198.18.0.1"),
        (&worker, "198.18.0.1"),
    ] {
        sh(&[
            "ip", "netns", "exec", from, "ping", "-c", "1", "-W", "2", to,
        ]);
    }
    // Native XDP_TX on a veth reaches the peer promptly only when the peer
    // runs XDP itself: the bridge port facing the node gets the do-nothing
    // program for the demo's lifetime (a physical NIC needs nothing).
    let _peer = XdpPeer::attach(&peer_bin, &lan, "p-node")?;
    println!(
        "demo: client 198.18.0.2 and worker-1 198.18.0.3 share a bridge with eth0 198.18.0.1 [edge-1]; eth1 198.18.1.1 <-> pods 198.18.1.2, 198.18.1.3"
    );

    let lifetime = Duration::from_secs(60);
    let _pods = [
        http_echo_server(&pods, sa("198.18.1.2:8080"), "web-1", lifetime),
        http_echo_server(&pods, sa("198.18.1.3:8080"), "web-2", lifetime),
        http_echo_server(&pods, sa("198.18.1.3:9090"), "api-1", lifetime),
        http_echo_server(&worker, sa("198.18.0.3:8080"), "web-3", lifetime),
    ];
    let dir = ManifestDir::new()?;
    dir.write("cluster.yaml", MANIFESTS)?;
    dir.write("ingress.yaml", INGRESS)?;

    let admin = sa("127.0.0.1:9100");
    let manifests = dir.0.display().to_string();
    let agent = Agent::start(
        &bin,
        &node,
        &[
            "--interface",
            "eth0",
            "--xdp-mode",
            "native",
            "--manifests",
            &manifests,
            "--http-listen",
            "198.18.0.1:80",
            "--node-name",
            "edge-1",
            "--node-ip",
            "198.18.0.1",
            "--on-exit",
            "detach",
        ],
        admin,
    );
    println!(
        "demo: agent in the node: XDP (native) + TC egress on eth0, HTTP on 198.18.0.1:80, admin on {admin}\n"
    );

    println!("== L4 path: real TCP and UDP across the uplink, counted by XDP and TC ==");
    let baseline = counters(&agent);
    let mut before = baseline.clone();
    for round in 1..=ROUNDS {
        let tcp = tcp_echo_server(&node, sa("198.18.0.1:8080"), PER_ROUND);
        let udp = udp_echo_server(&node, sa("198.18.0.1:8081"), PER_ROUND);
        let t = tcp_round_trips(&client, sa("198.18.0.1:8080"), PER_ROUND);
        let u = udp_round_trips(
            &client,
            sa("198.18.0.2:0"),
            sa("198.18.0.1:8081"),
            PER_ROUND,
        );
        let _ = tcp.join();
        let _ = udp.join();
        let now = counters(&agent);
        println!(
            "\nround {round}: {t}/{PER_ROUND} TCP connections and {u}/{PER_ROUND} UDP datagrams echoed"
        );
        print_table(&before, &now);
        before = now;
    }

    println!("\n== L7 path: HTTP through the proxy to the pods ==");
    let proxy = sa("198.18.0.1:80");
    let mut http_ok = 0;
    for (host, path) in [
        ("demo.local", "/"),
        ("demo.local", "/"),
        ("demo.local", "/index.html"),
        ("demo.local", "/api/users"),
        ("demo.local", "/apiary"),
        ("unknown.local", "/"),
    ] {
        match http_get_from(&client, proxy, host, path) {
            Ok((status, body)) => {
                let pod = body
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("pod=");
                println!(
                    "  GET http://{host}{path:<14} -> {status} {}",
                    if status == 200 { pod } else { body.trim() }
                );
                if status == 200 || (host == "unknown.local" && status == 404) {
                    http_ok += 1;
                }
            }
            Err(e) => println!("  GET http://{host}{path:<14} -> failed: {e}"),
        }
    }

    println!(
        "\n== L4 path: NodePort 30080 of Service web, pods on two nodes, answered in XDP and TC =="
    );
    let before_np = counters(&agent);
    let mut by_pod: BTreeMap<String, usize> = BTreeMap::new();
    let mut nodeport_ok = 0;
    for _ in 0..NODEPORT_REQUESTS {
        match http_get_from(&client, sa("198.18.0.1:30080"), "anything", "/") {
            Ok((200, body)) => {
                let pod = body
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("pod=")
                    .to_string();
                *by_pod.entry(pod).or_default() += 1;
                nodeport_ok += 1;
            }
            Ok((status, _)) => println!("  GET http://198.18.0.1:30080/ -> {status}"),
            Err(e) => println!("  GET http://198.18.0.1:30080/ -> failed: {e}"),
        }
    }
    println!(
        "  {nodeport_ok}/{NODEPORT_REQUESTS} GET http://198.18.0.1:30080/ answered, straight by the pods (no proxy), by Maglev:"
    );
    for (pod, n) in &by_pod {
        let place = if pod == "web-3" {
            "worker-1: DNAT + SNAT, XDP_TX; reply translated back in XDP"
        } else {
            "edge-1: DNAT, stack delivers; reply translated back in TC"
        };
        println!("    {pod:<6} {n:>3}  ({place})");
    }
    let after_np = counters(&agent);
    let delta = |e: &str| {
        let k = format!("ingress_datapath_l4_events_total{{hook=\"xdp\",event=\"{e}\"}}");
        after_np.get(&k).copied().unwrap_or(0.0) - before_np.get(&k).copied().unwrap_or(0.0)
    };
    println!(
        "  XDP events: {} new flows, {} local DNAT, {} remote DNAT+SNAT, {} remote replies, {} forwarded by XDP",
        delta("l4_new_flow"),
        delta("l4_dnat_local"),
        delta("l4_dnat_remote"),
        delta("l4_reply_remote"),
        delta("l4_forwarded"),
    );
    let rules = sh(&["ip", "netns", "exec", &node, "iptables-save"]);
    let rule_count = String::from_utf8_lossy(&rules.stdout)
        .lines()
        .filter(|l| l.starts_with("-A"))
        .count();
    let nft = sh(&["ip", "netns", "exec", &node, "nft", "list", "ruleset"]);
    let nft_empty = String::from_utf8_lossy(&nft.stdout).trim().is_empty();
    println!(
        "  on the ingress node: {rule_count} iptables rules, nftables ruleset {}",
        if nft_empty { "empty" } else { "NOT EMPTY" }
    );
    let both_nodes = by_pod.contains_key("web-3") && by_pod.keys().any(|p| p != "web-3");

    println!(
        "\n== live change: /api moves from Service api to Service web (atomic file rename) =="
    );
    let changed = INGRESS.replace(
        "name: api, port: {name: http}",
        "name: web, port: {number: 80}",
    );
    let t0 = Instant::now();
    dir.write("ingress.yaml", &changed)?;
    let mut moved_after = None;
    while t0.elapsed() < Duration::from_secs(5) {
        if let Ok((200, body)) = http_get_from(&client, proxy, "demo.local", "/api/users")
            && body.contains("pod=web-")
        {
            moved_after = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    match moved_after {
        Some(d) => println!(
            "  /api/users served by web after {:.1} ms, no restart, no reload",
            d.as_secs_f64() * 1e3
        ),
        None => println!("  /api/users did not move within 5 s"),
    }
    let m = agent.metrics();
    let requests: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("ingress_http_requests_total"))
        .map(|(_, v)| v)
        .sum();
    println!(
        "  agent metrics: {requests} HTTP requests, snapshot generation {}",
        m.get("ingress_snapshot_generation").copied().unwrap_or(0.0)
    );

    println!("\n== counters over the whole demo ==");
    print_table(&baseline, &counters(&agent));

    let (status, _log) = agent.stop(libc::SIGINT);
    let link = sh(&["ip", "-n", &node, "-j", "-d", "link", "show", "dev", "eth0"]);
    let still_attached = String::from_utf8_lossy(&link.stdout).contains("\"xdp\"");
    println!(
        "\ndemo: SIGINT -> agent exited with {status}; XDP on eth0 after exit: {}",
        if still_attached {
            "STILL ATTACHED"
        } else {
            "none"
        }
    );
    if !status.success()
        || still_attached
        || http_ok < 6
        || moved_after.is_none()
        || nodeport_ok < NODEPORT_REQUESTS
        || !both_nodes
        || rule_count > 0
        || !nft_empty
    {
        bail!("the demo did not go as expected");
    }
    println!("demo: done; namespaces removed");
    Ok(())
}

/// A temporary directory for the manifests, removed on drop.
struct ManifestDir(PathBuf);

impl ManifestDir {
    fn new() -> anyhow::Result<Self> {
        let p = std::env::temp_dir().join(format!("ingress-demo-{}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(ManifestDir(p))
    }

    /// Writes atomically: a temp file renamed over the target.
    fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.0.join(name)).with_context(|| format!("renaming into {name}"))
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The data-path counters from /metrics, keyed by metric and labels.
fn counters(agent: &Agent) -> BTreeMap<String, f64> {
    agent
        .metrics()
        .into_iter()
        .filter(|(k, _)| k.starts_with("ingress_datapath_"))
        .collect()
}

fn print_table(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) {
    println!("  {:<56} {:>8} {:>8}", "counter", "total", "+since");
    for (k, v) in after {
        let delta = v - before.get(k).copied().unwrap_or(0.0);
        if *v > 0.0 {
            let name = k
                .trim_start_matches("ingress_datapath_")
                .replace("_total{", "{");
            println!("  {name:<56} {v:>8} {delta:>+8}");
        }
    }
}

/// The do-nothing XDP program on an interface, held by the `xdp_peer`
/// example running in the interface's namespace; detached when dropped.
struct XdpPeer(std::process::Child);

impl XdpPeer {
    fn attach(bin: &std::path::Path, ns: &str, iface: &str) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            .args([iface, "300"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting xdp_peer")?;
        let out = child.stdout.take().context("xdp_peer stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        if !line.starts_with("attached") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("xdp_peer did not attach to {iface}");
        }
        Ok(XdpPeer(child))
    }
}

impl Drop for XdpPeer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
