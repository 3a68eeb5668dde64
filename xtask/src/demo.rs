//! `cargo xtask demo`: builds the agent, brings up a client and an ingress
//! node in network namespaces joined by a veth pair, attaches the programs to
//! the node's uplink, sends real TCP and UDP across it and shows the
//! counters moving; then stops the agent and shows nothing stays attached.

use std::{collections::BTreeMap, net::SocketAddr, process::Command};

use anyhow::{Context, bail};

use crate::{
    cmd::{self, workspace_root},
    testbed::{
        Namespaces,
        agent::Agent,
        sh,
        traffic::{tcp_echo_server, tcp_round_trips, udp_echo_server, udp_round_trips},
    },
};

const ROUNDS: usize = 3;
const PER_ROUND: usize = 10;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

pub fn run() -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("cargo xtask demo needs root (network namespaces, eBPF)");
    }
    let root = workspace_root();
    println!("demo: building the agent and its eBPF programs (cargo build --release)");
    cmd::run(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "--package",
                "ingress-userspace",
                "--bin",
                "ingress",
            ])
            .current_dir(&root),
    )
    .context("building the agent (missing toolchain? run `cargo xtask setup`)")?;
    let bin = root.join("target/release/ingress");

    let ns = Namespaces::new(&["node", "client"]);
    ns.link(
        "node",
        "eth0",
        &["198.18.0.1/24", "fd00::1/64"],
        "client",
        "eth0",
        &["198.18.0.2/24", "fd00::2/64"],
    );
    let (node, client) = (ns.name("node").to_string(), ns.name("client").to_string());
    println!(
        "demo: topology  client {client} (198.18.0.2) <-veth-> (198.18.0.1, eth0) node {node}"
    );

    let admin = sa("127.0.0.1:9100");
    let agent = Agent::start(
        &bin,
        &node,
        &["--interface", "eth0", "--xdp-mode", "native"],
        admin,
    );
    println!("demo: agent running in {node}: XDP (native) and TC egress on eth0, admin on {admin}");

    let mut first = counters(&agent);
    let baseline = first.clone();
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
            "\nround {round}: {t}/{PER_ROUND} TCP connections and {u}/{PER_ROUND} UDP datagrams echoed through eth0"
        );
        print_table(&first, &now);
        first = now;
    }
    let total_moved: f64 = first
        .iter()
        .filter(|(k, _)| k.contains("packets_total"))
        .map(|(k, v)| v - baseline.get(k).copied().unwrap_or(0.0))
        .sum();

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
    if !status.success() || still_attached || total_moved <= 0.0 {
        bail!("the demo did not go as expected");
    }
    println!("demo: done; namespaces removed");
    Ok(())
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
    println!("  {:<62} {:>10} {:>8}", "counter", "total", "+round");
    for (k, v) in after {
        let delta = v - before.get(k).copied().unwrap_or(0.0);
        if *v > 0.0 {
            let name = k
                .trim_start_matches("ingress_datapath_")
                .replace("_total{", "{");
            println!("  {name:<62} {v:>10} {delta:>+8}");
        }
    }
}
