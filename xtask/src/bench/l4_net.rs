//! The L4 side by side in network namespaces: new TCP connections per
//! second and keep-alive requests per second through a NodePort, answered
//! by the agent's XDP path and then, on the same node with the agent
//! stopped, by iptables DNAT rules written as kube-proxy's iptables mode
//! writes them, at several numbers of Services.
//!
//! ```text
//!                       lan (bridge br0)
//!   client 198.18.0.2 --+-- node eth0 198.18.0.1 [agent XDP + TC | iptables]
//!                       +-- worker 198.18.0.3 (nginx :8080, the pod on a worker)
//!   node eth1 198.18.1.1 -- pod 198.18.1.2 (nginx :8080, the pod on the node)
//! ```
//!
//! Nothing here touches the root namespace: the rules, the agent, nginx and
//! wrk all run inside the bench's own namespaces, which are removed at the
//! end (also on an error).

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{
    nginx,
    process::{Proc, TempDir, check_interrupted, output_bounded, pause},
    services::{Measured, bench_services, kube_proxy_rules, manifests},
    wrk::{Load, WrkResult},
};
use crate::testbed::{Namespaces, in_netns, sh};

/// The topology, as the report shows it.
pub const PICTURE: &str = "                         lan (bridge)
  client 198.18.0.2 --+-- eth0 198.18.0.1 [ingress node] eth1 198.18.1.1 -- pod 198.18.1.2:8080
                      +-- worker 198.18.0.3:8080 (a pod on another node)
";

/// Services on the node in each round (the two measured ones included).
pub const SCALES: [usize; 3] = [2, 1_000, 10_000];
/// Seconds of each measured wrk run, and of the warm-up before it.
pub const SECS: u64 = 3;
pub const WARMUP_SECS: u64 = 1;
/// wrk's connections (one thread).
pub const CONNECTIONS: u32 = 32;
/// wrk runs on this CPU; the two nginx pods on the other.
pub const LOAD_CPU: u32 = 1;
pub const POD_CPU: u32 = 0;
pub const NODE_PORT: u16 = 30080;
pub const XDP_MODE: &str = "native";
const NODE_IP: &str = "198.18.0.1";
const ADMIN: &str = "127.0.0.1:9100";
const HOST: &str = "bench.local";
const CLOSE: &str = "Connection: close";

/// Which of the two contenders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contender {
    Ours,
    Iptables,
    /// No NodePort: the client connects to the pod's own address, routed by
    /// the node with no program and no rule (the control each round).
    Direct,
}

/// Which pod the measured NodePort leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// NodePort 30080: the pod behind the ingress node.
    Local,
    /// NodePort 30081: the pod on the worker, across the uplink.
    Remote,
}

impl Target {
    pub fn port(self) -> u16 {
        match self {
            Target::Local => NODE_PORT,
            Target::Remote => NODE_PORT + 1,
        }
    }
}

/// Both measurements of one contender, one target, one scale.
#[derive(Debug, Clone)]
pub struct Pair {
    /// Each request on a new connection (`Connection: close`).
    pub new_conns: WrkResult,
    /// Keep-alive connections.
    pub keep_alive: WrkResult,
    /// Runs that did not finish (recorded at 0 per second), and why.
    pub stalled: Vec<String>,
}

/// The first line of a message, for the report.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// What one round (one number of Services) gave.
#[derive(Debug, Clone)]
pub struct Round {
    pub services: usize,
    pub results: HashMap<(Contender, Target), Pair>,
    /// Spawn to `/readyz` 200.
    pub agent_ready: Duration,
    /// "L4 service skipped" lines in the agent's log (capacity).
    pub agent_skipped: usize,
    /// L4 events the agent counted during its runs (`tc_egress:` for TC).
    pub xdp_events: HashMap<String, f64>,
    pub iptables_rules: usize,
    pub iptables_restore: Duration,
    /// Packets the KUBE-NODEPORTS rules matched (new connections).
    pub iptables_nodeport_packets: u64,
}

/// Everything the report needs besides the rounds.
pub struct Setup {
    pub agent_args: String,
    pub nginx_version: String,
    pub iptables_version: String,
    pub new_conn_cmd: String,
    pub keep_alive_cmd: String,
}

/// The namespaces and what runs in them; processes stop before the
/// namespaces go (fields drop in order).
pub(super) struct Bed {
    pub(super) pods: Vec<Proc>,
    peer: Option<Proc>,
    ns: Namespaces,
}

impl Bed {
    pub(super) fn name(&self, role: &str) -> String {
        self.ns.name(role).to_string()
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

/// Runs `args` inside namespace `ns` (bounded), returning stdout.
fn in_ns(ns: &str, args: &[&str], log: &Path) -> anyhow::Result<String> {
    output_bounded(
        Command::new("ip").args(["netns", "exec", ns]).args(args),
        Duration::from_secs(120),
        log,
    )
}

/// `GET /` with `Host: bench.local` from namespace `ns`.
fn get_from(ns: &str, addr: SocketAddr) -> std::io::Result<(u16, String)> {
    crate::testbed::traffic::http_get_from(ns, addr, HOST, "/")
}

/// Polls `GET addr` from `ns` until 200, for at most `limit`.
pub(super) fn wait_200(ns: &str, addr: SocketAddr, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let last = match get_from(ns, addr) {
            Ok((200, _)) => return Ok(start.elapsed()),
            Ok((s, body)) => format!("{s} {}", body.trim()),
            Err(e) => e.to_string(),
        };
        if start.elapsed() > limit {
            bail!("GET http://{addr}/ from {ns} not 200 within {limit:?}: last {last}");
        }
        pause(Duration::from_millis(50))?;
    }
}

/// The do-nothing XDP program on `iface` in `ns` (native mode), held by
/// the `xdp_peer` example until the returned process is stopped.
fn noop_xdp(tmp: &TempDir, peer_bin: &Path, ns: &str, iface: &str) -> anyhow::Result<Proc> {
    let log = tmp.path().join(format!("xdp-noop-{ns}-{iface}.log"));
    let mut peer = Proc::spawn(
        "xdp_peer",
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(peer_bin)
            .args([iface, "1800"]),
        &log,
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&format!("attached {iface}"))
    {
        peer.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "xdp_peer did not attach to {iface} within 20 s: {}",
                peer.log_tail()
            );
        }
        pause(Duration::from_millis(20))?;
    }
    Ok(peer)
}

pub(super) fn build_topology(
    tmp: &TempDir,
    nginx_bin: &Path,
    peer_bin: &Path,
) -> anyhow::Result<Bed> {
    let ns = Namespaces::new(&["lan", "node", "client", "worker", "pod"]);
    ns.link("node", "eth0", &["198.18.0.1/24"], "lan", "p-node", &[]);
    ns.link("client", "eth0", &["198.18.0.2/24"], "lan", "p-client", &[]);
    ns.link("worker", "eth0", &["198.18.0.3/24"], "lan", "p-worker", &[]);
    ns.link(
        "node",
        "eth1",
        &["198.18.1.1/24"],
        "pod",
        "eth0",
        &["198.18.1.2/24"],
    );
    let mut bed = Bed {
        pods: Vec::new(),
        peer: None,
        ns,
    };
    let (lan, node, client, worker, pod) = (
        bed.name("lan"),
        bed.name("node"),
        bed.name("client"),
        bed.name("worker"),
        bed.name("pod"),
    );
    sh(&["ip", "-n", &lan, "link", "add", "br0", "type", "bridge"]);
    for port in ["p-node", "p-client", "p-worker"] {
        sh(&["ip", "-n", &lan, "link", "set", port, "master", "br0"]);
    }
    sh(&["ip", "-n", &lan, "link", "set", "br0", "up"]);
    // The node forwards to the pod behind it, and the pod answers through it.
    bed.ns.route_via("node", "pod", "198.18.1.1");
    // The control: the client reaches the pod behind the node directly.
    sh(&[
        "ip",
        "-n",
        &client,
        "route",
        "add",
        "198.18.1.0/24",
        "via",
        "198.18.0.1",
    ]);
    // New connections at a high rate: the client may use most ports.
    sh(&[
        "ip",
        "netns",
        "exec",
        &client,
        "sysctl",
        "-qw",
        "net.ipv4.ip_local_port_range=1024 65000",
    ]);
    for (from, to) in [
        (&node, "198.18.0.3"),
        (&node, "198.18.0.2"),
        (&node, "198.18.1.2"),
        (&client, "198.18.0.1"),
        (&worker, "198.18.0.1"),
    ] {
        sh(&[
            "ip", "netns", "exec", from, "ping", "-c", "1", "-W", "2", to,
        ]);
    }
    // Native XDP_TX on a veth reaches the peer promptly only when the peer
    // runs XDP itself: the do-nothing program on the node's bridge port
    // (there for both contenders, so the path is the same).
    if XDP_MODE == "native" {
        bed.peer = Some(noop_xdp(tmp, peer_bin, &lan, "p-node")?);
    }
    for (role, ns, addr) in [
        ("pod", &pod, sa("198.18.1.2:8080")),
        ("worker", &worker, sa("198.18.0.3:8080")),
    ] {
        let prefix = tmp.subdir(&format!("nginx-{role}"))?;
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, nginx::config(&prefix, &nginx::backend_block(addr)))
            .with_context(|| format!("writing {}", conf.display()))?;
        let proc = Proc::spawn(
            &format!("nginx in {role}"),
            Command::new("ip")
                .args(["netns", "exec", ns, "taskset", "-c", &POD_CPU.to_string()])
                .arg(nginx_bin)
                .arg("-e")
                .arg(prefix.join("error.log"))
                .arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(&conf),
            &prefix.join("stderr.log"),
        )?;
        bed.pods.push(proc);
        wait_200(ns, addr, Duration::from_secs(10))
            .with_context(|| format!("nginx in {role} not answering"))?;
    }
    Ok(bed)
}

/// The agent's `run` arguments for the bench.
fn agent_args(manifests: &Path, max_services: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--interface",
        "eth0",
        "--xdp-mode",
        XDP_MODE,
        "--node-ip",
        NODE_IP,
        "--node-name",
        "edge-1",
        "--http-listen",
        "198.18.0.1:80",
        "--admin-listen",
        ADMIN,
        "--drain-timeout",
        "1s",
        "--manifests",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    a.push(manifests.display().to_string());
    // Room for every Service of the round (the default holds 4,096).
    a.push("--l4-max-services".into());
    a.push(max_services.into());
    a
}

/// The agent's `/metrics` from inside the node.
pub(super) fn agent_metrics(node: &str) -> anyhow::Result<HashMap<String, f64>> {
    let admin = sa(ADMIN);
    let (status, body) = in_netns(node, move || {
        crate::testbed::http::get(admin, "admin", "/metrics")
    })
    .context("GET /metrics from the agent")?;
    if status != 200 {
        bail!("the agent's /metrics answered {status}");
    }
    Ok(super::http::parse_metrics(&body))
}

/// The L4 events by name: `event` for XDP, `tc_egress:event` for TC.
pub(super) fn xdp_events(m: &HashMap<String, f64>) -> HashMap<String, f64> {
    m.iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("ingress_datapath_l4_events_total{hook=\"")?;
            let (hook, event) = rest.split_once("\",event=\"")?;
            let event = event.trim_end_matches("\"}");
            let key = if hook == "xdp" {
                event.to_string()
            } else {
                format!("{hook}:{event}")
            };
            Some((key, *v))
        })
        .collect()
}

/// Fails unless the node has no iptables and no nftables rule at all.
fn ensure_no_rules(node: &str, log: &Path) -> anyhow::Result<()> {
    let ipt = in_ns(node, &["iptables-save"], log)?;
    let n = ipt.lines().filter(|l| l.starts_with("-A")).count();
    let nft = in_ns(node, &["nft", "list", "ruleset"], log)?;
    if n > 0 || !nft.trim().is_empty() {
        bail!("the node still has packet filter rules ({n} iptables rules; nft: {nft})");
    }
    Ok(())
}

/// The measuring: for each target, a warm-up, new connections, keep-alive.
fn measure(
    load: &Load,
    client: &str,
    log: &Path,
    who: &str,
    targets: &[(Target, SocketAddr)],
) -> anyhow::Result<HashMap<Target, Pair>> {
    let mut out = HashMap::new();
    for &(target, addr) in targets {
        check_interrupted()?;
        let url = format!("http://{addr}/");
        wait_200(client, addr, Duration::from_secs(10))
            .with_context(|| format!("{who}: {addr}, to the {target:?} pod"))?;
        let mut stalled = Vec::new();
        // A run that does not finish in time (wrk waiting on connections
        // whose SYNs are dropped) is recorded as stalled, at 0 per second,
        // and the bench goes on; an interruption still ends it.
        let mut run = |what: &str, secs: u64, headers: &[&str]| -> anyhow::Result<WrkResult> {
            match load.run_in(client, secs, &url, headers, log) {
                Ok(r) => Ok(r),
                Err(e) => {
                    check_interrupted()?;
                    println!("bench l4:   {who:<8} {target:?}: {what} run failed: {e:#}");
                    stalled.push(format!("{what}: {}", first_line(&format!("{e:#}"))));
                    Ok(WrkResult {
                        requests_per_sec: 0.0,
                        p50_us: f64::NAN,
                        p99_us: f64::NAN,
                        requests: 0,
                        non_2xx: 0,
                        socket_errors: 0,
                    })
                }
            }
        };
        run("warm-up", WARMUP_SECS, &[CLOSE])?;
        let new_conns = run("new connections", SECS, &[CLOSE])?;
        let keep_alive = run("keep-alive", SECS, &[])?;
        println!(
            "bench l4:   {who:<8} {target:?}: {:.0} new connections/s, {:.0} keep-alive requests/s",
            new_conns.requests_per_sec, keep_alive.requests_per_sec
        );
        out.insert(
            target,
            Pair {
                new_conns,
                keep_alive,
                stalled,
            },
        );
    }
    Ok(out)
}

/// Starts the agent in the node with `services` (`total` of them) and waits
/// for its `/readyz`; returns it with its log's path.
fn start_agent_with(
    tmp: &TempDir,
    tools: &Tools,
    node: &str,
    services: &[super::services::Svc],
    total: usize,
) -> anyhow::Result<(Proc, PathBuf)> {
    let dir = tmp.subdir(&format!("manifests-{total}"))?;
    std::fs::write(dir.join("services.yaml"), manifests(services))
        .context("writing the manifests")?;
    let args = agent_args(&dir, &(total + 16).to_string());
    let agent_log = tmp.path().join(format!("agent-{total}.log"));
    let started = Instant::now();
    let mut agent = Proc::spawn(
        "the agent",
        Command::new("ip")
            .args(["netns", "exec", node])
            .arg(tools.agent)
            .args(&args)
            .env("RUST_LOG", "warn"),
        &agent_log,
    )?;
    let ready_limit = Duration::from_secs(180);
    loop {
        agent.ensure_running()?;
        let admin = sa(ADMIN);
        let ready = in_netns(node, move || {
            crate::testbed::http::get(admin, "admin", "/readyz")
        });
        if matches!(ready, Ok((200, _))) {
            return Ok((agent, agent_log));
        }
        if started.elapsed() > ready_limit {
            bail!(
                "the agent not ready within {ready_limit:?}: {}",
                agent.log_tail()
            );
        }
        pause(Duration::from_millis(50))?;
    }
}

/// The agent with the smallest round's Services (the two measured ones).
pub(super) fn start_agent(tmp: &TempDir, tools: &Tools, node: &str) -> anyhow::Result<Proc> {
    let services = bench_services(2, &measured());
    Ok(start_agent_with(tmp, tools, node, &services, 2)?.0)
}

fn measured() -> Measured {
    Measured {
        node_port: NODE_PORT,
        local_pod: Ipv4Addr::new(198, 18, 1, 2),
        local_node: "edge-1".into(),
        remote_pod: Ipv4Addr::new(198, 18, 0, 3),
        remote_node: "worker-1".into(),
        target_port: 8080,
    }
}

pub struct Tools<'a> {
    pub agent: &'a Path,
    pub peer: &'a Path,
    pub wrk: &'a Path,
    pub nginx: &'a Path,
}

/// Builds the topology, runs every round and returns them with the setup.
pub fn run(tools: &Tools) -> anyhow::Result<(Vec<Round>, Setup)> {
    let tmp = TempDir::new("l4")?;
    let log = tmp.path().join("cmd.log");
    let bed = build_topology(&tmp, tools.nginx, tools.peer)?;
    let (node, client) = (bed.name("node"), bed.name("client"));
    let load = Load {
        wrk: tools.wrk,
        cpu: LOAD_CPU,
        threads: 1,
        connections: CONNECTIONS,
        host: HOST,
        // New connections are asked for per run, as an extra header.
        close: false,
    };
    let measured = measured();
    let nodeports =
        [Target::Local, Target::Remote].map(|t| (t, SocketAddr::from(([198, 18, 0, 1], t.port()))));
    let mut rounds = Vec::new();
    for &total in &SCALES {
        check_interrupted()?;
        println!("bench l4: {total} Services");
        let services = bench_services(total, &measured);
        let mut results = HashMap::new();

        // The control: straight to the pod, nothing on the node.
        // Native XDP puts a veth's receive side in NAPI mode (with GRO):
        // the control and iptables get the do-nothing program on the
        // node's uplink, so that all three see the same receive path.
        ensure_no_rules(&node, &log)?;
        let mut noop = noop_xdp(&tmp, tools.peer, &node, "eth0")?;
        let direct = [(Target::Local, sa("198.18.1.2:8080"))];
        for (t, p) in measure(&load, &client, &log, "direct", &direct)? {
            results.insert((Contender::Direct, t), p);
        }
        noop.stop()?;

        // (a) The agent: XDP on the uplink, TC egress, no rule anywhere.
        let started = Instant::now();
        let (mut agent, agent_log) = start_agent_with(&tmp, tools, &node, &services, total)?;
        let agent_ready = started.elapsed();
        let before = xdp_events(&agent_metrics(&node)?);
        for (t, p) in measure(&load, &client, &log, "ingress", &nodeports)? {
            results.insert((Contender::Ours, t), p);
        }
        let after = xdp_events(&agent_metrics(&node)?);
        let events: HashMap<String, f64> = after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        for e in ["l4_dnat_local", "l4_dnat_remote", "tc_egress:l4_revnat"] {
            if events.get(e).copied().unwrap_or(0.0) <= 0.0 {
                bail!("the agent's XDP/TC path did not count {e} during its runs: {events:?}");
            }
        }
        agent.stop()?;
        let agent_text = std::fs::read_to_string(&agent_log).unwrap_or_default();
        let agent_skipped = agent_text.matches("L4 service skipped").count();
        let link = in_ns(
            &node,
            &["ip", "-j", "-d", "link", "show", "dev", "eth0"],
            &log,
        )?;
        if link.contains("\"xdp\"") {
            bail!("XDP still attached to the node's eth0 after the agent stopped");
        }

        // (b) The same node, the agent stopped, kube-proxy's rules.
        let rules = kube_proxy_rules(&services);
        let iptables_rules = rules.lines().filter(|l| l.starts_with("-A ")).count();
        let rules_path = tmp.path().join(format!("rules-{total}.txt"));
        std::fs::write(&rules_path, &rules).context("writing the rules")?;
        let rules_arg = rules_path.display().to_string();
        let t0 = Instant::now();
        in_ns(&node, &["iptables-restore", &rules_arg], &log)
            .context("iptables-restore in the node")?;
        let iptables_restore = t0.elapsed();
        let mut noop = noop_xdp(&tmp, tools.peer, &node, "eth0")?;
        for (t, p) in measure(&load, &client, &log, "iptables", &nodeports)? {
            results.insert((Contender::Iptables, t), p);
        }
        noop.stop()?;
        let saved = in_ns(&node, &["iptables-save", "-c", "-t", "nat"], &log)?;
        let iptables_nodeport_packets: u64 = saved
            .lines()
            .filter(|l| l.contains("-A KUBE-NODEPORTS"))
            .filter_map(|l| l.strip_prefix('[')?.split(':').next()?.parse::<u64>().ok())
            .sum();
        if iptables_nodeport_packets == 0 {
            bail!("no packet matched the KUBE-NODEPORTS rules: {saved:.2000}");
        }
        // Remove every table (conntrack's hooks go with them), so that the
        // agent's next round runs on a node without rules again.
        in_ns(&node, &["nft", "flush", "ruleset"], &log)?;
        rounds.push(Round {
            services: total,
            results,
            agent_ready,
            agent_skipped,
            xdp_events: events,
            iptables_rules,
            iptables_restore,
            iptables_nodeport_packets,
        });
    }
    ensure_no_rules(&node, &log)?;
    let url = format!("http://{NODE_IP}:{NODE_PORT}/");
    let setup = Setup {
        agent_args: format!("ingress {}", agent_args(Path::new("DIR"), "N+16").join(" ")),
        nginx_version: nginx::version(tools.nginx),
        iptables_version: output_bounded(
            Command::new("iptables").arg("--version"),
            Duration::from_secs(10),
            &log,
        )
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "iptables".into()),
        new_conn_cmd: load.describe_with(SECS, &url, &[CLOSE]),
        keep_alive_cmd: load.describe_with(SECS, &url, &[]),
    };
    drop(bed);
    Ok((rounds, setup))
}

/// Where the agent and the examples are.
pub fn example_path(root: &Path, name: &str) -> PathBuf {
    root.join("target/release/examples").join(name)
}
