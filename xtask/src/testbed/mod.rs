//! A testbed of network namespaces joined by veth pairs, shared by
//! `cargo xtask demo`, the benchmarks and the end-to-end tests. Namespaces are
//! removed on drop, so also when a test fails. Addresses come only from
//! 198.18.0.0/15 and fd00::/8, and nothing routes out.

pub mod agent;
pub mod http;
pub mod traffic;

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

/// Panics unless the process runs as root (namespaces and eBPF need it).
/// Tests call this so that they fail, never skip, without privileges.
pub fn require_root() {
    assert!(
        crate::cmd::is_root(),
        "this needs root (network namespaces, eBPF); it fails rather than skips"
    );
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A set of network namespaces owned by one test.
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates namespaces named `ig<pid>-<n>-<role>` with loopback up.
    pub fn new(roles: &[&str]) -> Self {
        require_root();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let mut ns = Namespaces { names: Vec::new() };
        for role in roles {
            let name = format!("ig{pid}-{n}-{role}");
            sh(&["ip", "netns", "add", &name]);
            ns.names.push(name.clone());
            sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        }
        ns
    }

    pub fn name(&self, role: &str) -> &str {
        self.names
            .iter()
            .find(|n| n.ends_with(&format!("-{role}")))
            .unwrap_or_else(|| panic!("no namespace for role {role}"))
    }

    /// Joins two namespaces with a veth pair: `a_if` in `a`, `b_if` in `b`,
    /// both up, with the given addresses (CIDR).
    pub fn link(
        &self,
        a: &str,
        a_if: &str,
        a_addrs: &[&str],
        b: &str,
        b_if: &str,
        b_addrs: &[&str],
    ) {
        let (na, nb) = (self.name(a).to_string(), self.name(b).to_string());
        sh(&[
            "ip", "-n", &na, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns",
            &nb,
        ]);
        for (ns, ifname, addrs) in [(&na, a_if, a_addrs), (&nb, b_if, b_addrs)] {
            for addr in addrs {
                if addr.contains(':') {
                    sh(&["ip", "-n", ns, "addr", "add", addr, "dev", ifname, "nodad"]);
                } else {
                    sh(&["ip", "-n", ns, "addr", "add", addr, "dev", ifname]);
                }
            }
            sh(&["ip", "-n", ns, "link", "set", ifname, "up"]);
            // Start rewrites and counts from full checksums, not partial ones.
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "ethtool", "-K", ifname, "tx", "off"])
                .output();
        }
    }
}

impl Namespaces {
    /// Makes the namespace of role `router` forward (IPv4, or IPv6 for an
    /// IPv6 `gateway`) and gives `host` a default route through `gateway`
    /// (a pod behind a node).
    pub fn route_via(&self, router: &str, host: &str, gateway: &str) {
        let (family, forwarding) = if gateway.contains(':') {
            ("-6", "net.ipv6.conf.all.forwarding=1")
        } else {
            ("-4", "net.ipv4.ip_forward=1")
        };
        sh(&[
            "ip",
            "netns",
            "exec",
            self.name(router),
            "sysctl",
            "-qw",
            forwarding,
        ]);
        sh(&[
            "ip",
            family,
            "-n",
            self.name(host),
            "route",
            "add",
            "default",
            "via",
            gateway,
        ]);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs `f` on a thread that has joined namespace `ns`; sockets it creates
/// belong to that namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}
