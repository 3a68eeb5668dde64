//! `cargo xtask bench sync`: cluster mode at scale. The agent runs with
//! `--kubeconfig` against the in-repo API server double (the
//! `apiserver_double` example) seeded with N Ingresses, their Services and
//! EndpointSlices holding 50,000 endpoints in all; the bench then moves the
//! measured Service's only endpoint from one live backend to another through
//! the double, again and again, and times each move from the write to the
//! first answer from the new backend. Also: cold start (spawn to `/readyz`),
//! the agent's own apply time, and its memory. Writes its section of
//! docs/benchmarks.md.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{
    Machine, build_agent, http,
    process::{self, Proc, TempDir, pause},
};
use crate::cmd;

const HEADING: &str = "## Cluster sync: watch event to traffic (cargo xtask bench sync)";

const OURS: &str = "127.0.0.1:18180";
const ADMIN: &str = "127.0.0.1:19180";
const MEASURED_HOST: &str = "measured.sync.bench";
const CLASS: &str = "ingress-ebpf";
/// The agent's node: the Node the seed holds, whose address every
/// Ingress's status already shows.
const NODE: &str = "node-1";
/// Endpoints in all at the 1,000 and 10,000 scales.
const ENDPOINTS: usize = 50_000;
/// The scales: Ingresses (each with its own Service and EndpointSlice).
const SCALES: [usize; 3] = [1, 1_000, 10_000];
/// Live backends the measured endpoint moves between.
const LIVE: usize = 4;
/// Moves per scale, and the time they may take at most.
const MOVES: usize = 150;
const MOVES_BUDGET: Duration = Duration::from_secs(75);
/// Ingress changes per scale (each a full compile), and their time bound.
const INGRESS_MOVES: usize = 30;
const INGRESS_BUDGET: Duration = Duration::from_secs(45);
/// How often the client polls the measured host (as `bench l7` does): a
/// tight loop would take a CPU from the agent on a 2-CPU machine.
const POLL: Duration = Duration::from_micros(500);
/// How long one move may take before the bench gives up.
const MOVE_LIMIT: Duration = Duration::from_secs(10);
/// The targets the project set for this path.
const TARGET_P99: Duration = Duration::from_millis(50);
const TARGET_COLD: Duration = Duration::from_secs(2);

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    process::catch_interrupts();
    let load_before = loadavg();
    process::ensure_free(&[sa(OURS), sa(ADMIN)])?;
    println!("bench sync: building the agent and the API server double (release)");
    let agent = build_agent()?;
    let double = cmd::build_example_release("apiserver_double")?;
    let backends = Backends::start(LIVE)?;
    let tmp = TempDir::new("sync")?;
    let mut rounds = Vec::new();
    for n in SCALES {
        process::check_interrupted()?;
        println!("bench sync: {n} Ingresses");
        let r = scale(
            &agent,
            &double,
            &backends,
            n,
            &tmp.subdir(&format!("n{n}"))?,
        )
        .with_context(|| format!("at {n} Ingresses"))?;
        println!(
            "bench sync:   cold start {}, propagation p50 {} p99 {} max {} over {} moves",
            dur(r.cold),
            dur(r.p(0.50)),
            dur(r.p(0.99)),
            dur(r.p(1.0)),
            r.moves.len()
        );
        rounds.push(r);
    }
    let report = Report {
        machine: Machine::describe(),
        load_before,
        load_after: loadavg(),
        rounds,
        elapsed: started.elapsed(),
    };
    super::write_section(HEADING, &report.render()?)?;
    println!(
        "bench sync: docs/benchmarks.md updated ({} s)",
        started.elapsed().as_secs()
    );
    Ok(())
}

/// What one scale measured.
struct Round {
    ingresses: usize,
    endpoints: usize,
    seed_bytes: u64,
    /// Agent spawn to `/readyz` 200.
    cold: Duration,
    /// `ingress_snapshot_apply_seconds` of the first snapshot.
    cold_apply: f64,
    /// VmRSS and VmHWM (KiB) once ready and settled, and after the moves.
    rss_ready: (u64, u64),
    rss_after: (u64, u64),
    /// Write to the double -> first answer from the new backend.
    moves: Vec<Duration>,
    /// `ingress_snapshot_apply_seconds` after each move.
    applies: Vec<f64>,
    /// The same for Ingress changes (the measured Ingress pointed at
    /// another Service).
    ingress_moves: Vec<Duration>,
    ingress_applies: Vec<f64>,
    /// `ingress_cluster_event_to_apply_seconds` over the moves: count, sum,
    /// and the count under 50 ms.
    event_to_apply: (f64, f64, f64),
    /// From the agent's log over the whole round: full compiles applied,
    /// endpoint-only applies, status writes.
    agent_work: (usize, usize, usize),
}

impl Round {
    /// The q quantile of the moves (nearest rank).
    fn p(&self, q: f64) -> Duration {
        quantile(&self.moves, q)
    }
}

fn quantile(values: &[Duration], q: f64) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn scale(
    agent_bin: &Path,
    double_bin: &Path,
    backends: &Backends,
    n: usize,
    dir: &Path,
) -> anyhow::Result<Round> {
    let endpoints = if n == 1 { 1 + LIVE } else { ENDPOINTS };
    let seed = dir.join("seed.jsonl");
    write_seed(&seed, n, endpoints, &backends.addrs)?;
    let seed_bytes = std::fs::metadata(&seed).map(|m| m.len()).unwrap_or(0);
    let api_dir = dir.join("api");
    std::fs::create_dir_all(&api_dir).with_context(|| format!("creating {}", api_dir.display()))?;
    let mut double = Proc::spawn(
        "apiserver_double",
        Command::new(double_bin).arg(&api_dir).arg(&seed),
        &dir.join("apiserver.log"),
    )?;
    let control = wait_control(&api_dir, &mut double)?;

    let t0 = Instant::now();
    let mut agent = Proc::spawn(
        "ingress",
        Command::new(agent_bin)
            .arg("run")
            .arg("--kubeconfig")
            .arg(api_dir.join("kubeconfig"))
            .args(["--http-listen", OURS, "--admin-listen", ADMIN])
            .args(["--https-listen", "off", "--xdp-mode", "off"])
            .args(["--drain-timeout", "1s", "--ingress-class", CLASS])
            .args(["--node-name", NODE])
            .env("RUST_LOG", "info"),
        &dir.join("agent.log"),
    )?;
    let admin = sa(ADMIN);
    loop {
        agent.ensure_running()?;
        double.ensure_running()?;
        if matches!(http::get(admin, "admin", "/readyz"), Ok((200, _))) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(90) {
            bail!("the agent was not ready within 90 s:\n{}", agent.log_tail());
        }
        process::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(2));
    }
    let cold = t0.elapsed();
    let cold_apply = http::metric(admin, "ingress_snapshot_apply_seconds")?;
    let ours = sa(OURS);
    wait_backend(ours, backends.name(0), MOVE_LIMIT)
        .context("the measured host before the first move")?;
    // Let the allocator and the status writer settle.
    pause(Duration::from_secs(2))?;
    let rss_ready = mem(agent.pid())?;

    let before = http::metrics(admin)?;
    let (mut moves, mut applies) = (Vec::new(), Vec::new());
    let budget = Instant::now();
    let mut current = 0;
    for i in 0..MOVES {
        if budget.elapsed() > MOVES_BUDGET {
            println!("bench sync:   stopped after {i} moves (time budget)");
            break;
        }
        process::check_interrupted()?;
        let next = (current + 1 + i % (LIVE - 1)) % LIVE;
        let body = format!("{}\n", slice_json(&service_name(0), &[backends.addr(next)]));
        let t = Instant::now();
        post(control, "/apply", &body)?;
        wait_backend(ours, backends.name(next), MOVE_LIMIT)
            .with_context(|| format!("move {i} to {}", backends.name(next)))?;
        moves.push(t.elapsed());
        current = next;
        // The agent's own figure for this move, then a gap so that moves
        // do not land in one debounce.
        applies.push(http::metric(admin, "ingress_snapshot_apply_seconds")?);
        pause(Duration::from_millis(10 + (i as u64 * 7) % 20))?;
    }
    let after = http::metrics(admin)?;

    // The measured Ingress pointed at Service live-K (whose endpoint is
    // backend K): a change to an Ingress, compiled whole.
    let (mut ingress_moves, mut ingress_applies) = (Vec::new(), Vec::new());
    let budget = Instant::now();
    for i in 0..INGRESS_MOVES {
        if budget.elapsed() > INGRESS_BUDGET {
            println!("bench sync:   stopped after {i} Ingress changes (time budget)");
            break;
        }
        process::check_interrupted()?;
        let next = (current + 1 + i % (LIVE - 1)) % LIVE;
        let body = format!("{}\n", ingress_json(0, &format!("live-{next}")));
        let t = Instant::now();
        post(control, "/apply", &body)?;
        wait_backend(ours, backends.name(next), MOVE_LIMIT)
            .with_context(|| format!("Ingress change {i} to {}", backends.name(next)))?;
        ingress_moves.push(t.elapsed());
        current = next;
        ingress_applies.push(http::metric(admin, "ingress_snapshot_apply_seconds")?);
        pause(Duration::from_millis(10 + (i as u64 * 7) % 20))?;
    }
    let h = |m: &std::collections::HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let name = "ingress_cluster_event_to_apply_seconds";
    let event_to_apply = (
        h(&after, &format!("{name}_count")) - h(&before, &format!("{name}_count")),
        h(&after, &format!("{name}_sum")) - h(&before, &format!("{name}_sum")),
        h(&after, &format!("{name}_bucket{{le=\"0.05\"}}"))
            - h(&before, &format!("{name}_bucket{{le=\"0.05\"}}")),
    );
    let rss_after = mem(agent.pid())?;
    agent.ensure_running()?;
    agent.stop()?;
    // Read once it stopped: traffic may see an apply before its log line.
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let logged = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    let agent_work = (
        logged("configuration applied"),
        logged("endpoints applied"),
        logged("status published"),
    );
    double.stop()?;
    Ok(Round {
        ingresses: n,
        endpoints,
        seed_bytes,
        cold,
        cold_apply,
        rss_ready,
        rss_after,
        moves,
        applies,
        ingress_moves,
        ingress_applies,
        event_to_apply,
        agent_work,
    })
}

/// Waits (bounded) for the double to have loaded its seed; returns its
/// control address.
fn wait_control(dir: &Path, double: &mut Proc) -> anyhow::Result<SocketAddr> {
    let path = dir.join("control");
    let t0 = Instant::now();
    loop {
        double.ensure_running()?;
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text
                .trim()
                .parse()
                .with_context(|| format!("{}: {text:?}", path.display()));
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!(
                "the API server double did not load its seed within 120 s:\n{}",
                double.log_tail()
            );
        }
        process::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls the measured host (a new connection each, `POLL` apart) until the
/// answer comes from `backend`.
fn wait_backend(ours: SocketAddr, backend: &str, limit: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut tries = 0u64;
    loop {
        let last = match http::get(ours, MEASURED_HOST, "/") {
            Ok((200, body)) if body.trim() == backend => return Ok(()),
            Ok((s, body)) => format!("{s} {}", body.trim()),
            Err(e) => e.to_string(),
        };
        tries += 1;
        if t0.elapsed() > limit {
            bail!("no answer from {backend} within {limit:?} ({tries} tries): last {last}");
        }
        if tries.is_multiple_of(64) {
            process::check_interrupted()?;
        }
        std::thread::sleep(POLL);
    }
}

/// `POST path` with `body` to the double's control listener; fails unless 200.
fn post(addr: SocketAddr, path: &str, body: &str) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: control\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .with_context(|| format!("POST http://{addr}{path}"))?;
    if !buf.starts_with("HTTP/1.1 200") {
        bail!(
            "POST http://{addr}{path}: {}",
            buf.lines().next().unwrap_or("")
        );
    }
    Ok(())
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn mem(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

// ---- the objects ----

fn service_name(i: usize) -> String {
    if i == 0 {
        "measured".to_string()
    } else {
        format!("s{i}")
    }
}

fn host(i: usize) -> String {
    if i == 0 {
        MEASURED_HOST.to_string()
    } else {
        format!("h{i}.sync.bench")
    }
}

/// The `j`-th filler endpoint: a loopback address nothing listens on (the
/// proxy never connects to them: only the measured host gets traffic).
fn filler(j: usize) -> SocketAddr {
    let a = (j / 65_536 + 1) as u8;
    let b = ((j / 256) % 256) as u8;
    let c = (j % 256) as u8;
    SocketAddr::from(([127, a, b, c], 8080))
}

fn ingress_json(i: usize, service: &str) -> String {
    // The status the agent would publish (the address of its Node), so
    // that the status writer finds nothing to write.
    format!(
        r#"{{"apiVersion":"networking.k8s.io/v1","kind":"Ingress","metadata":{{"name":"i{i}","namespace":"default","creationTimestamp":"2026-01-01T00:00:00Z"}},"spec":{{"ingressClassName":"{CLASS}","rules":[{{"host":"{h}","http":{{"paths":[{{"path":"/","pathType":"Prefix","backend":{{"service":{{"name":"{s}","port":{{"number":80}}}}}}}}]}}}}]}},"status":{{"loadBalancer":{{"ingress":[{{"ip":"127.0.0.1"}}]}}}}}}"#,
        h = host(i),
        s = service,
    )
}

fn service_json(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}","namespace":"default"}},"spec":{{"ports":[{{"name":"http","port":80,"targetPort":8080}}]}}}}"#
    )
}

/// Service `i`'s EndpointSlice holding `addrs` (one port, named like the
/// Service port; each address on its own port).
fn slice_json(service: &str, addrs: &[SocketAddr]) -> String {
    let port = addrs.first().map_or(8080, SocketAddr::port);
    let eps: Vec<String> = addrs
        .iter()
        .map(|a| {
            format!(
                r#"{{"addresses":["{}"],"conditions":{{"ready":true}},"nodeName":"node-1"}}"#,
                a.ip()
            )
        })
        .collect();
    format!(
        r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"{s}-1","namespace":"default","labels":{{"kubernetes.io/service-name":"{s}"}}}},"addressType":"IPv4","ports":[{{"name":"http","port":{port},"protocol":"TCP"}}],"endpoints":[{}]}}"#,
        eps.join(","),
        s = service,
    )
}

/// The seed: the IngressClass, a Node, per Ingress its Service and one
/// EndpointSlice, and Services live-K with backend K as their endpoint.
/// Ingress 0 (the measured one) has one endpoint, `live[0]`, and the others
/// share the rest of `endpoints` evenly.
fn seed_lines(n: usize, endpoints: usize, live: &[SocketAddr]) -> Vec<String> {
    let mut lines = vec![
        format!(
            r#"{{"apiVersion":"networking.k8s.io/v1","kind":"IngressClass","metadata":{{"name":"{CLASS}"}},"spec":{{"controller":"ingress-ebpf.dev/controller"}}}}"#
        ),
        format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{NODE}"}},"status":{{"addresses":[{{"type":"InternalIP","address":"127.0.0.1"}}]}}}}"#
        ),
    ];
    for (k, addr) in live.iter().enumerate() {
        let name = format!("live-{k}");
        lines.push(service_json(&name));
        lines.push(slice_json(&name, &[*addr]));
    }
    let rest = endpoints.saturating_sub(1 + live.len());
    let others = n.saturating_sub(1);
    let mut next = 0;
    for i in 0..n {
        lines.push(ingress_json(i, &service_name(i)));
        lines.push(service_json(&service_name(i)));
        let addrs: Vec<SocketAddr> = if i == 0 {
            vec![live[0]]
        } else {
            let k = rest / others + usize::from(i - 1 < rest % others);
            let a = (next..next + k).map(filler).collect();
            next += k;
            a
        };
        lines.push(slice_json(&service_name(i), &addrs));
    }
    lines
}

fn write_seed(path: &Path, n: usize, endpoints: usize, live: &[SocketAddr]) -> anyhow::Result<()> {
    let mut text = seed_lines(n, endpoints, live).join("\n");
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

// ---- the live backends ----

/// HTTP/1.1 servers on loopback, each answering `backend-K` to everything
/// (keep-alive), on a thread per connection. They live as long as the
/// bench process.
struct Backends {
    addrs: Vec<SocketAddr>,
    names: Vec<String>,
}

impl Backends {
    fn start(n: usize) -> anyhow::Result<Backends> {
        let mut b = Backends {
            addrs: Vec::new(),
            names: Vec::new(),
        };
        for k in 0..n {
            // Each on its own loopback address, as pods have.
            let ip = format!("127.0.2.{}", k + 1);
            let listener = TcpListener::bind((ip.as_str(), 0))
                .with_context(|| format!("binding a backend on {ip}"))?;
            let name = format!("backend-{k}");
            b.addrs.push(listener.local_addr()?);
            b.names.push(name.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    let name = name.clone();
                    std::thread::spawn(move || serve_backend(conn, &name));
                }
            });
        }
        Ok(b)
    }

    fn addr(&self, k: usize) -> SocketAddr {
        self.addrs[k]
    }

    fn name(&self, k: usize) -> &str {
        &self.names[k]
    }
}

/// Answers every request on `conn` with `name` until the peer closes.
fn serve_backend(mut conn: TcpStream, name: &str) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let body = format!("{name}\n");
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // The requests are GETs without a body: a request ends at its
        // blank line.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            if conn.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

// ---- the report ----

struct Report {
    machine: Machine,
    load_before: String,
    load_after: String,
    rounds: Vec<Round>,
    elapsed: Duration,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_string())
}

fn dur(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1e3)
    } else {
        format!("{ms:.1} ms")
    }
}

fn secs(s: f64) -> String {
    dur(Duration::from_secs_f64(s.max(0.0)))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// 10000 -> "10,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Report {
    fn render(&self) -> anyhow::Result<String> {
        let mut s = String::new();
        let m = &self.machine;
        writeln!(s, "{HEADING}\n")?;
        writeln!(
            s,
            "Written by `cargo xtask bench sync` on {}; the bench rewrites this section on every run (it took {} s).\n",
            m.date,
            self.elapsed.as_secs()
        )?;
        writeln!(
            s,
            "**Machine:** {} CPUs (`nproc`), kernel {}, {}; load average {} at the start and {} at the end. Shared and noisy (other work ran on it at the same time).\n",
            m.cpus, m.kernel, m.cpu_model, self.load_before, self.load_after
        )?;
        writeln!(s, "### The project's targets\n")?;
        let big = self.rounds.iter().max_by_key(|r| r.ingresses);
        if let Some(r) = big {
            let p99 = r.p(0.99);
            let all_p99 = self.rounds.iter().all(|r| r.p(0.99) < TARGET_P99);
            writeln!(
                s,
                "- p99 propagation under {} at every scale: {}: **{}**.",
                dur(TARGET_P99),
                self.rounds
                    .iter()
                    .map(|r| format!("{} at {}", dur(r.p(0.99)), thousands(r.ingresses)))
                    .collect::<Vec<_>>()
                    .join(", "),
                if all_p99 { "met" } else { "not met" }
            )?;
            writeln!(
                s,
                "- First snapshot under {} at {} Ingresses: {} (spawn to `/readyz` 200): **{}**.",
                dur(TARGET_COLD),
                thousands(r.ingresses),
                dur(r.cold),
                if r.cold < TARGET_COLD {
                    "met"
                } else {
                    "not met"
                }
            )?;
            let _ = p99;
        }
        writeln!(s)?;
        writeln!(s, "### Setup\n")?;
        writeln!(
            s,
            "- API server: the cluster tests' double (`ingress-userspace/tests/support/apiserver.rs`) run as the `apiserver_double` example on loopback, seeded from JSON lines before the agent starts: an IngressClass `{CLASS}`, the Node `{NODE}` (InternalIP 127.0.0.1), and per Ingress (host `hN.sync.bench`, `/` Prefix) its own Service and one EndpointSlice. The Ingresses already carry the status the agent would publish, so its status writer (it holds the Lease) has nothing to write. The double answers lists whole (no pages) and streams watch events as chunked JSON, like the real server's watch."
        )?;
        writeln!(
            s,
            "- Endpoints: {} in all at 1,000 and 10,000 Ingresses (spread evenly over the slices, on loopback addresses 127.x.y.z nothing listens on: only the measured host gets traffic); the measured Ingress `{MEASURED_HOST}` has one endpoint, one of {LIVE} live HTTP servers on 127.0.2.1-{LIVE}, each answering its own name (keep-alive).",
            thousands(ENDPOINTS)
        )?;
        writeln!(
            s,
            "- Agent: `target/release/ingress run --kubeconfig KUBECONFIG --http-listen {OURS} --admin-listen {ADMIN} --https-listen off --xdp-mode off --drain-timeout 1s --ingress-class {CLASS} --node-name {NODE}` with `RUST_LOG=info`, not pinned."
        )?;
        writeln!(
            s,
            "- A move: the measured EndpointSlice is replaced through the double's control listener (its endpoint moved to the next live server; the write returns once the watch event is sent) and a client polls `GET http://{OURS}/` with `Host: {MEASURED_HOST}` (a new connection each, {} µs apart, at most {} s) until the answer names the new server; the time from before the write to that answer. Then `ingress_snapshot_apply_seconds` is read and the next move follows 10-30 ms later. Up to {MOVES} moves per scale, within {} s.\n",
            POLL.as_micros(),
            MOVE_LIMIT.as_secs(),
            MOVES_BUDGET.as_secs()
        )?;
        writeln!(s, "### Propagation: EndpointSlice write to traffic\n")?;
        writeln!(
            s,
            "| Ingresses | endpoints | moves | p50 | p99 | max | agent apply per move (median of `ingress_snapshot_apply_seconds`) | `ingress_cluster_event_to_apply_seconds`: mean, share under 50 ms |"
        )?;
        writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for r in &self.rounds {
            let (count, sum, under) = r.event_to_apply;
            let mean = if count > 0.0 { sum / count } else { f64::NAN };
            writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {}, {:.0}% of {} |",
                thousands(r.ingresses),
                thousands(r.endpoints),
                r.moves.len(),
                dur(r.p(0.50)),
                dur(r.p(0.99)),
                dur(r.p(1.0)),
                secs(super::median(&r.applies)),
                secs(mean),
                if count > 0.0 {
                    100.0 * under / count
                } else {
                    0.0
                },
                count
            )?;
        }
        writeln!(s)?;
        writeln!(
            s,
            "**Ingress change** (compiled whole): the measured Ingress re-written to point at Service `live-K` (one endpoint: live server K), up to {INGRESS_MOVES} times per scale within {} s, timed the same way:\n",
            INGRESS_BUDGET.as_secs()
        )?;
        writeln!(
            s,
            "| Ingresses | changes | p50 | p99 | max | agent apply per change (median) |"
        )?;
        writeln!(s, "|---:|---:|---:|---:|---:|---:|")?;
        for r in &self.rounds {
            writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                thousands(r.ingresses),
                r.ingress_moves.len(),
                dur(quantile(&r.ingress_moves, 0.50)),
                dur(quantile(&r.ingress_moves, 0.99)),
                dur(quantile(&r.ingress_moves, 1.0)),
                secs(super::median(&r.ingress_applies)),
            )?;
        }
        writeln!(s)?;
        writeln!(
            s,
            "**What the agent did** over each round (counted in its log: the first snapshot, the moves, the Ingress changes). A settled cluster's status needs no write, and an EndpointSlice change needs no full compile:\n"
        )?;
        writeln!(
            s,
            "| Ingresses | full compiles applied | endpoint-only applies | status writes |"
        )?;
        writeln!(s, "|---:|---:|---:|---:|")?;
        for r in &self.rounds {
            let (full, endpoints, status) = r.agent_work;
            writeln!(
                s,
                "| {} | {full} | {endpoints} | {status} |",
                thousands(r.ingresses)
            )?;
        }
        writeln!(s)?;
        writeln!(s, "### Cold start and memory\n")?;
        writeln!(
            s,
            "| Ingresses | endpoints | seed (JSON) | spawn to `/readyz` 200 | first apply (`ingress_snapshot_apply_seconds`) | VmRSS ready | VmRSS after the moves | VmHWM (peak) |"
        )?;
        writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for r in &self.rounds {
            writeln!(
                s,
                "| {} | {} | {:.1} MB | {} | {} | {} | {} | {} |",
                thousands(r.ingresses),
                thousands(r.endpoints),
                r.seed_bytes as f64 / 1e6,
                dur(r.cold),
                secs(r.cold_apply),
                mib(r.rss_ready.0),
                mib(r.rss_after.0),
                mib(r.rss_after.1.max(r.rss_ready.1)),
            )?;
        }
        writeln!(s)?;
        if let (Some(small), Some(big)) = (self.rounds.first(), self.rounds.last()) {
            let ratio = big.p(0.50).as_secs_f64() / small.p(0.50).as_secs_f64().max(1e-9);
            writeln!(
                s,
                "Propagation p50 at {} Ingresses over 1 Ingress: **{ratio:.1}x**.\n",
                thousands(big.ingresses)
            )?;
        }
        writeln!(
            s,
            "### Beside ingress-nginx (its documented behaviour, not measured here)\n"
        )?;
        writeln!(
            s,
            "- Endpoints: ingress-nginx changes them without reloading nginx: its controller rebuilds its model on a sync loop (rate-limited by `--sync-rate-limit`, 0.3 syncs/s by default) and POSTs the backends to a Lua handler inside nginx, and each nginx worker picks them up on a timer that runs every second (`BACKENDS_SYNC_INTERVAL = 1` in its `balancer.lua`: \"for an Nginx worker to pick up the new list of upstream peers it will take <the delay until controller POSTed the backend object to the Nginx endpoint> + BACKENDS_SYNC_INTERVAL\"). An endpoint change thus reaches traffic after the controller's sync plus up to 1 s."
        )?;
        writeln!(
            s,
            "- Any other change (an Ingress, a Service's port, a certificate when not dynamic, an annotation) renders nginx.conf again and reloads nginx: new workers start and the old ones drain their connections (long-lived connections keep old workers, and their memory, around). Here every change is compiled into a new snapshot swapped atomically, the proxy's threads keep serving the previous one meanwhile, and nothing restarts."
        )?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_holds_the_endpoints_asked_for() {
        let live = [sa("127.0.2.1:4000"), sa("127.0.2.2:4001")];
        for (n, eps) in [(1, 3), (10, 95), (1000, 50_000)] {
            let lines = seed_lines(n, eps, &live);
            assert_eq!(lines.len(), 2 + 2 * live.len() + 3 * n);
            let slices: Vec<&String> = lines
                .iter()
                .filter(|l| l.contains("\"EndpointSlice\""))
                .collect();
            let count: usize = slices
                .iter()
                .map(|l| l.matches("\"addresses\"").count())
                .sum();
            assert_eq!(count, eps, "{n} Ingresses");
            // Every filler address is distinct.
            let mut addrs: Vec<&str> = slices
                .iter()
                .flat_map(|l| l.split("\"addresses\":[\"").skip(1))
                .map(|a| a.split('"').next().unwrap())
                .collect();
            addrs.sort();
            addrs.dedup();
            // The measured Service's endpoint is live-0's too.
            assert_eq!(addrs.len(), eps - 1);
        }
        assert!(slice_json("measured", &live[..1]).contains(r#""port":4000"#));
        assert!(ingress_json(0, "live-1").contains(MEASURED_HOST));
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn filler_addresses_are_loopback() {
        assert!(filler(0).ip().is_loopback());
        assert!(filler(49_999).ip().is_loopback());
        assert_ne!(filler(255), filler(256));
    }
}
