//! Test support: the shared namespace testbed (from `xtask::testbed`), the
//! path of the binary under test, and a look at what is attached.
//!
//! These tests need root (namespaces, eBPF). They never skip: without
//! privileges they fail with a message saying so.
#![allow(dead_code, unused_imports)]

pub mod apiserver;
pub mod backend;
pub mod manifests;
pub mod nodeport;
pub mod tls_client;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

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

/// The cls_bpf filters on `iface`'s egress hook in `ns`, one line each
/// (`tc filter show`'s lines with a handle), none without a clsact qdisc.
pub fn tc_filters(ns: &str, iface: &str) -> Vec<String> {
    let out = std::process::Command::new("tc")
        .args(["-n", ns, "filter", "show", "dev", iface, "egress"])
        .output()
        .expect("running tc (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" bpf ") && l.contains("handle"))
        .map(String::from)
        .collect()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ingress-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` atomically (temp file, then rename over).
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.0.join(name)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent on loopback serving `dir`, with its HTTP address.
pub fn start_local_agent(dir: &Path, extra: &[&str]) -> (Agent, SocketAddr) {
    let (agent, http, _) = start_local_agent_tls(dir, extra);
    (agent, http)
}

/// The agent on loopback serving `dir`, with its HTTP and HTTPS addresses.
pub fn start_local_agent_tls(dir: &Path, extra: &[&str]) -> (Agent, SocketAddr, SocketAddr) {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (http_s, https_s) = (http.to_string(), https.to_string());
    let dir_s = dir.display().to_string();
    let mut args = vec![
        "--manifests",
        &dir_s,
        "--http-listen",
        &http_s,
        "--https-listen",
        &https_s,
        "--xdp-mode",
        "off",
    ];
    args.extend_from_slice(extra);
    (
        Agent::start_local(&ingress_bin(), &args, admin),
        http,
        https,
    )
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends raw bytes (which should ask for `Connection: close`) and reads the
/// whole answer. `Err` when the connection fails before a status line.
pub fn raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "no response head in {:?}",
                String::from_utf8_lossy(&buf)
            ))
        })?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok(RawResponse {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    })
}

/// `GET path` with `Host: host` and `Connection: close`.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<RawResponse> {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Keeps the calling thread on the CPU it runs on now, so per-CPU state
/// (budgets, scratch) seen by `BPF_PROG_TEST_RUN` is one CPU's.
pub fn pin_to_one_cpu() {
    // SAFETY: plain libc calls on a zeroed cpu_set_t owned here.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu failed");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Polls `poll` every `every` until it returns `Ok` (whose value is
/// returned); once `limit` has passed, the test fails with the last `Err`,
/// which says what was wanted and what was seen.
pub fn wait_until<T>(
    limit: Duration,
    every: Duration,
    mut poll: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match poll() {
            Ok(v) => return v,
            Err(why) => assert!(
                std::time::Instant::now() < deadline,
                "not within {limit:?}: {why}"
            ),
        }
        std::thread::sleep(every);
    }
}
