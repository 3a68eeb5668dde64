//! End to end in network namespaces: the real `ingress` binary attaches to a
//! veth in native and then in skb mode, real TCP and UDP (IPv4 and IPv6)
//! cross it, the counters in /metrics move, and after SIGINT nothing stays
//! attached. Bad input (unknown interface, unknown mode, no privileges)
//! ends with one line and exit code 1.

mod support;

use std::{net::SocketAddr, process::Command};

use support::{Namespaces, attached_programs, ingress_bin, run_to_exit};
use xtask::testbed::traffic::{tcp_echo_server, tcp_round_trips, udp_echo_server, udp_round_trips};

const TCP_CONNECTIONS: usize = 20;
const UDP_DATAGRAMS: usize = 30;

fn topology() -> Namespaces {
    let ns = Namespaces::new(&["node", "client"]);
    ns.link(
        "node",
        "eth0",
        &["198.18.0.1/24", "fd00::1/64"],
        "client",
        "eth0",
        &["198.18.0.2/24", "fd00::2/64"],
    );
    ns
}

fn admin() -> SocketAddr {
    "127.0.0.1:9100".parse().unwrap()
}

/// Echo servers in the node namespace (TCP v4 and v6, UDP), then real
/// client traffic from the client namespace through the attached interface.
fn exchange_traffic(node: &str, client: &str) {
    let tcp4 = tcp_echo_server(node, sa("198.18.0.1:8080"), TCP_CONNECTIONS);
    let tcp6 = tcp_echo_server(node, sa("[fd00::1]:8080"), 1);
    let udp = udp_echo_server(node, sa("198.18.0.1:8081"), UDP_DATAGRAMS);
    assert_eq!(
        tcp_round_trips(client, sa("198.18.0.1:8080"), TCP_CONNECTIONS),
        TCP_CONNECTIONS
    );
    assert_eq!(tcp_round_trips(client, sa("[fd00::1]:8080"), 1), 1);
    assert_eq!(
        udp_round_trips(
            client,
            sa("198.18.0.2:0"),
            sa("198.18.0.1:8081"),
            UDP_DATAGRAMS
        ),
        UDP_DATAGRAMS
    );
    for server in [tcp4, tcp6, udp] {
        server.join().expect("echo server");
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn counter(m: &std::collections::HashMap<String, f64>, hook: &str, class: &str) -> f64 {
    let key = format!("ingress_datapath_packet_class_total{{hook=\"{hook}\",class=\"{class}\"}}");
    *m.get(&key)
        .unwrap_or_else(|| panic!("metric {key} missing"))
}

fn run_mode(mode: &str) {
    let ns = topology();
    let node = ns.name("node").to_string();
    let client = ns.name("client").to_string();
    let agent = support::start_agent(
        &node,
        &[
            "--interface",
            "eth0",
            "--xdp-mode",
            mode,
            "--on-exit",
            "detach",
        ],
        admin(),
    );
    let (xdp, tc) = attached_programs(&node, "eth0");
    assert_eq!(
        (xdp, tc),
        (1, 1),
        "{mode}: XDP and TC egress attached to eth0"
    );

    let before = agent.metrics();
    exchange_traffic(&node, &client);
    let after = agent.metrics();
    let moved =
        |hook: &str, class: &str| counter(&after, hook, class) - counter(&before, hook, class);

    // Each TCP connection brings at least SYN, ACK, data and FIN in; each
    // datagram is one frame each way.
    assert!(
        moved("xdp", "ipv4_tcp") >= (4 * TCP_CONNECTIONS) as f64,
        "{mode}: xdp ipv4_tcp moved {}",
        moved("xdp", "ipv4_tcp")
    );
    assert!(
        moved("xdp", "ipv4_udp") >= UDP_DATAGRAMS as f64,
        "{mode}: xdp ipv4_udp"
    );
    assert!(moved("xdp", "ipv6_tcp") >= 4.0, "{mode}: xdp ipv6_tcp");
    assert!(
        moved("tc_egress", "ipv4_tcp") >= (3 * TCP_CONNECTIONS) as f64,
        "{mode}: tc ipv4_tcp"
    );
    assert!(
        moved("tc_egress", "ipv4_udp") >= UDP_DATAGRAMS as f64,
        "{mode}: tc ipv4_udp"
    );
    let total = after["ingress_datapath_packets_total{hook=\"xdp\"}"];
    let classes: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("ingress_datapath_packet_class_total{hook=\"xdp\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, classes, "{mode}: the classes sum to the total");

    let (status, stderr) = agent.stop(libc::SIGINT);
    assert!(
        status.success(),
        "{mode}: exit after SIGINT: {status}\n{stderr}"
    );
    assert_eq!(
        attached_programs(&node, "eth0"),
        (0, 0),
        "{mode}: nothing stays attached after exit"
    );
}

#[test]
fn native_mode_counts_real_traffic_and_detaches_on_sigint() {
    run_mode("native");
}

#[test]
fn skb_mode_counts_real_traffic_and_detaches_on_sigterm_too() {
    run_mode("skb");
    // SIGTERM takes the same path as SIGINT.
    let ns = topology();
    let node = ns.name("node").to_string();
    let agent = support::start_agent(
        &node,
        &[
            "--interface",
            "eth0",
            "--xdp-mode",
            "skb",
            "--on-exit",
            "detach",
        ],
        admin(),
    );
    let (status, stderr) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "exit after SIGTERM: {status}\n{stderr}");
    assert_eq!(attached_programs(&node, "eth0"), (0, 0));
}

fn agent_cmd(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(ingress_bin())
        .arg("run")
        .args(args);
    c
}

fn assert_one_line_error(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one line on stderr, got: {stderr:?}"
    );
    assert!(
        lines[0].contains(needle),
        "{needle:?} not in {:?}",
        lines[0]
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unknown_interface_is_one_line_and_exit_1() {
    let ns = topology();
    let node = ns.name("node");
    let (status, stderr) = run_to_exit(
        agent_cmd(
            node,
            &["--interface", "nosuch0", "--admin-listen", "127.0.0.1:9100"],
        )
        .env("RUST_LOG", "error"),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_one_line_error(&stderr, "interface 'nosuch0' does not exist");
    // A good interface followed by a bad one: nothing may stay attached.
    let (status, stderr) = run_to_exit(
        agent_cmd(node, &["--interface", "eth0", "--interface", "nosuch0"])
            .env("RUST_LOG", "error"),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(attached_programs(node, "eth0"), (0, 0));
}

#[test]
fn unsupported_xdp_mode_is_one_line_and_exit_1() {
    let (status, stderr) = run_to_exit(Command::new(ingress_bin()).args([
        "run",
        "--interface",
        "eth0",
        "--xdp-mode",
        "turbo",
    ]));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_one_line_error(&stderr, "turbo");
}

#[test]
fn missing_privileges_is_one_line_and_exit_1() {
    let ns = topology();
    let node = ns.name("node");
    // Drop to an unprivileged user with no capabilities at all.
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        node,
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ])
    .args(["--inh-caps=-all", "--bounding-set=-all"])
    .arg(ingress_bin())
    .args([
        "run",
        "--interface",
        "eth0",
        "--admin-listen",
        "127.0.0.1:9100",
        "--http-listen",
        "127.0.0.1:8080",
        "--https-listen",
        "127.0.0.1:8443",
    ])
    .env("RUST_LOG", "error");
    let (status, stderr) = run_to_exit(&mut cmd);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_one_line_error(&stderr, "missing privileges");
    assert_eq!(attached_programs(node, "eth0"), (0, 0));
}
