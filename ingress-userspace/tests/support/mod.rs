//! Test support: the shared namespace testbed (from `xtask::testbed`), the
//! path of the binary under test, and a look at what is attached.
//!
//! These tests need root (namespaces, eBPF). They never skip: without
//! privileges they fail with a message saying so.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;

pub use xtask::testbed::{
    Namespaces,
    agent::{Agent, http_get, parse_metrics, run_to_exit},
    in_netns, require_root, sh,
};

/// Path of the real `ingress` binary cargo built for these tests.
pub fn ingress_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ingress"))
}

/// Starts the agent under test in `ns` and waits for /readyz.
pub fn start_agent(ns: &str, args: &[&str], admin: std::net::SocketAddr) -> Agent {
    Agent::start(&ingress_bin(), ns, args, admin)
}

/// How many XDP programs (per `ip -d link`) and TCX egress programs (per a
/// BPF_PROG_QUERY) are attached to `iface` in `ns`.
pub fn attached_programs(ns: &str, iface: &str) -> (usize, usize) {
    let out = sh(&["ip", "-n", ns, "-j", "-d", "link", "show", "dev", iface]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j JSON");
    let xdp = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|link| link.get("xdp").is_some())
        .count();
    let iface = iface.to_string();
    let tc = in_netns(ns, move || {
        aya::programs::SchedClassifier::query_tcx(&iface, aya::programs::TcAttachType::Egress)
            .map(|(_, progs)| progs.len())
            .expect("querying TCX egress")
    });
    (xdp, tc)
}
