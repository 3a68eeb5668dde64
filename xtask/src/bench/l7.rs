//! `cargo xtask bench l7`: the agent's L7 proxy against nginx as a
//! keep-alive reverse proxy, both in front of the same nginx backend on
//! loopback, with wrk alternating between them; then the agent alone with
//! 10,000 Ingresses (memory, apply time) and the time from a manifest change
//! to the first request served by it. Writes its section of
//! docs/benchmarks.md.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{
    Machine, build_agent, handshake, http, median, nginx,
    process::{self, Proc, TempDir, pause},
    wrk::{Load, WrkResult},
};

const HEADING: &str = "## L7: ingress vs nginx (cargo xtask bench l7)";

const OURS: &str = "127.0.0.1:18080";
const OURS_TLS: &str = "127.0.0.1:18443";
const NGINX_TLS: &str = "127.0.0.1:18444";
const BACKEND: &str = "127.0.0.1:18081";
const NGINX: &str = "127.0.0.1:18082";
const ADMIN: &str = "127.0.0.1:19100";
/// The CPU the proxies run on; the backend and wrk share the other one.
const PROXY_CPU: u32 = 0;
const LOAD_CPU: u32 = 1;

const HOST: &str = "bench.local";
const ROUNDS: usize = 3;
const SECS: u64 = 10;
const WARMUP_SECS: u64 = 2;
/// New-handshake rounds: shorter, fewer connections (each request makes
/// its own).
const HANDSHAKE_SECS: u64 = 5;
const HANDSHAKE_CONNECTIONS: u32 = 16;
/// Full-handshake rounds: this many `openssl s_time -new` clients at once.
const FULL_HANDSHAKE_CLIENTS: usize = 4;
const MANY: usize = 10_000;
const CHANGES: usize = 5;
/// How often the change-to-traffic client polls (one new connection each).
const POLL: Duration = Duration::from_micros(500);

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    process::catch_interrupts();
    let load_before = loadavg();
    let tools =
        process::ensure_tools(&[("nginx", "nginx"), ("wrk", "wrk"), ("openssl", "openssl")])?;
    let (nginx_bin, wrk_bin, openssl_bin) = (&tools[0], &tools[1], &tools[2]);
    println!("bench l7: building the agent (cargo build --release)");
    let bin = build_agent()?;
    process::check_interrupted()?;
    let (ours, backend, nginx_addr, admin) = (sa(OURS), sa(BACKEND), sa(NGINX), sa(ADMIN));
    let (ours_tls, nginx_tls) = (sa(OURS_TLS), sa(NGINX_TLS));
    process::ensure_free(&[ours, backend, nginx_addr, admin, ours_tls, nginx_tls])?;

    // Dropped last: every process below is stopped before it goes.
    let tmp = TempDir::new("l7")?;
    let watched = tmp.subdir("manifests")?;
    let staging = tmp.subdir("staging")?;
    // One ECDSA P-256 certificate for both proxies.
    let (cert, key) = (tmp.path().join("tls.crt"), tmp.path().join("tls.key"));
    crate::cmd::run(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN={HOST}")])
            .args(["-addext", &format!("subjectAltName=DNS:{HOST}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
    .context("making the bench certificate with openssl")?;
    let pem =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    write(
        &watched.join("base.yaml"),
        &format!(
            "{}---\n{}",
            base_manifests(),
            tls_secret(&pem(&cert)?, &pem(&key)?)
        ),
    )?;
    write(&watched.join("bench.yaml"), &ingress("bench", HOST))?;

    let mut backend_nginx = nginx::start(
        nginx_bin,
        "nginx (backend)",
        &tmp.path().join("nginx-backend"),
        LOAD_CPU,
        &nginx::backend_block(backend),
        backend,
        HOST,
    )?;
    let mut proxy_nginx = nginx::start(
        nginx_bin,
        "nginx (proxy)",
        &tmp.path().join("nginx-proxy"),
        PROXY_CPU,
        &nginx::proxy_block(
            nginx_addr,
            backend,
            Some(&nginx::TlsFiles {
                listen: nginx_tls,
                cert: &cert,
                key: &key,
            }),
        ),
        nginx_addr,
        HOST,
    )?;
    let (mut agent, _) = Agent::start(&bin, &watched, &tmp.path().join("agent.log"))?;
    for (name, addr) in [("ingress", ours), ("nginx", nginx_addr)] {
        let (status, body) = http::get(addr, HOST, "/")
            .with_context(|| format!("GET http://{addr}/ through {name}"))?;
        if status != 200 || body != "ok\n" {
            bail!("{name} on {addr} answered {status} {body:?}, not 200 \"ok\\n\"");
        }
    }
    let rss_idle = agent.proc.rss_kib()?;
    let nginx_rss_idle = proxy_nginx.proc.rss_kib()?;
    println!(
        "bench l7: backend nginx on {backend} (CPU {LOAD_CPU}), ingress on {ours} and nginx on {nginx_addr} (CPU {PROXY_CPU}), wrk on CPU {LOAD_CPU}"
    );

    // Throughput and latency, alternating.
    let load = Load {
        wrk: wrk_bin,
        cpu: LOAD_CPU,
        threads: 1,
        connections: 64,
        host: HOST,
        close: false,
    };
    let wrk_log = tmp.path().join("wrk.out");
    let mut rounds: Vec<(WrkResult, WrkResult)> = Vec::new();
    for round in 1..=ROUNDS {
        let mut pair = Vec::new();
        for (name, addr) in [("ingress", ours), ("nginx", nginx_addr)] {
            let url = format!("http://{addr}/");
            load.run(WARMUP_SECS, &url, &wrk_log)
                .with_context(|| format!("warming up {name}"))?;
            let r = load
                .run(SECS, &url, &wrk_log)
                .with_context(|| format!("round {round} on {name}"))?;
            println!(
                "bench l7: round {round}/{ROUNDS} {name:<7}  {:>9.0} req/s  p50 {}  p99 {}{}",
                r.requests_per_sec,
                ms(r.p50_us),
                ms(r.p99_us),
                errors(&r).map(|e| format!("  ({e})")).unwrap_or_default()
            );
            for p in [
                &mut agent.proc,
                &mut proxy_nginx.proc,
                &mut backend_nginx.proc,
            ] {
                p.ensure_running()?;
            }
            pair.push(r);
        }
        rounds.push((pair[0], pair[1]));
    }
    // The same over HTTPS (keep-alive: TLS records, not handshakes).
    let mut tls_rounds: Vec<(WrkResult, WrkResult)> = Vec::new();
    for round in 1..=ROUNDS {
        let mut pair = Vec::new();
        for (name, addr) in [("ingress", ours_tls), ("nginx", nginx_tls)] {
            let url = format!("https://{addr}/");
            load.run(WARMUP_SECS, &url, &wrk_log)
                .with_context(|| format!("warming up {name} (HTTPS)"))?;
            let r = load
                .run(SECS, &url, &wrk_log)
                .with_context(|| format!("HTTPS round {round} on {name}"))?;
            println!(
                "bench l7: HTTPS round {round}/{ROUNDS} {name:<7}  {:>9.0} req/s  p50 {}  p99 {}{}",
                r.requests_per_sec,
                ms(r.p50_us),
                ms(r.p99_us),
                errors(&r).map(|e| format!("  ({e})")).unwrap_or_default()
            );
            for p in [
                &mut agent.proc,
                &mut proxy_nginx.proc,
                &mut backend_nginx.proc,
            ] {
                p.ensure_running()?;
            }
            pair.push(r);
        }
        tls_rounds.push((pair[0], pair[1]));
    }
    // New TLS handshakes: `Connection: close`, one full handshake per request.
    let fresh = Load {
        connections: HANDSHAKE_CONNECTIONS,
        close: true,
        ..load
    };
    let mut handshake_rounds: Vec<(WrkResult, WrkResult)> = Vec::new();
    for round in 1..=ROUNDS {
        let mut pair = Vec::new();
        for (name, addr) in [("ingress", ours_tls), ("nginx", nginx_tls)] {
            let url = format!("https://{addr}/");
            fresh
                .run(1, &url, &wrk_log)
                .with_context(|| format!("warming up {name} (handshakes)"))?;
            let r = fresh
                .run(HANDSHAKE_SECS, &url, &wrk_log)
                .with_context(|| format!("handshake round {round} on {name}"))?;
            println!(
                "bench l7: handshake round {round}/{ROUNDS} {name:<7}  {:>9.0} handshakes/s  p50 {}  p99 {}{}",
                r.requests_per_sec,
                ms(r.p50_us),
                ms(r.p99_us),
                errors(&r).map(|e| format!("  ({e})")).unwrap_or_default()
            );
            for p in [
                &mut agent.proc,
                &mut proxy_nginx.proc,
                &mut backend_nginx.proc,
            ] {
                p.ensure_running()?;
            }
            pair.push(r);
        }
        handshake_rounds.push((pair[0], pair[1]));
    }
    // Full handshakes, no resumption: openssl s_time -new.
    let mut full_rounds: Vec<(f64, f64)> = Vec::new();
    for round in 1..=ROUNDS {
        let mut pair = Vec::new();
        for (name, addr) in [("ingress", ours_tls), ("nginx", nginx_tls)] {
            let rate = handshake::full_handshakes_per_sec(
                openssl_bin,
                LOAD_CPU,
                addr,
                HANDSHAKE_SECS,
                FULL_HANDSHAKE_CLIENTS,
                tmp.path(),
            )
            .with_context(|| format!("full-handshake round {round} on {name}"))?;
            println!(
                "bench l7: full-handshake round {round}/{ROUNDS} {name:<7}  {rate:>9.0} handshakes/s"
            );
            for p in [
                &mut agent.proc,
                &mut proxy_nginx.proc,
                &mut backend_nginx.proc,
            ] {
                p.ensure_running()?;
            }
            pair.push(rate);
        }
        full_rounds.push((pair[0], pair[1]));
    }
    let rss_loaded = agent.proc.rss_kib()?;
    let nginx_rss_loaded = proxy_nginx.proc.rss_kib()?;

    // Change to traffic with one Ingress.
    println!("bench l7: change to traffic, {CHANGES} new hosts, 1 Ingress loaded");
    let small = change_to_traffic(&watched, &staging, ours, "a")?;

    // 10,000 Ingresses into the running agent.
    println!("bench l7: {MANY} Ingresses into the running agent's directory");
    let many_yaml = many_ingresses(MANY);
    let gen0 = http::metric(admin, "ingress_snapshot_generation")?;
    let staged = staging.join("many.yaml");
    write(&staged, &many_yaml)?;
    let probe = Probe::start(ours);
    pause(Duration::from_millis(100))?;
    let t0 = Instant::now();
    std::fs::rename(&staged, watched.join("many.yaml")).context("renaming many.yaml")?;
    let hot_wall = wait_generation(admin, gen0, t0, Duration::from_secs(60))?;
    pause(Duration::from_millis(100))?;
    let stall = probe.finish()?;
    let hot_apply = http::metric(admin, "ingress_snapshot_apply_seconds")?;
    check_many(admin, ours, &mut agent)?;
    pause(Duration::from_millis(500))?;
    let rss_hot = agent.proc.rss_kib()?;
    println!(
        "bench l7: hot reload of {MANY}: apply {}, rename to new generation {}, RSS {}; slowest of {} requests to {HOST} meanwhile {}",
        secs(hot_apply),
        dur(hot_wall),
        mib(rss_hot),
        stall.1,
        dur(stall.0)
    );

    println!(
        "bench l7: change to traffic, {CHANGES} new hosts, {} Ingresses loaded",
        MANY + CHANGES + 1
    );
    let large = change_to_traffic(&watched, &staging, ours, "b")?;

    // A cold start on the 10,000.
    agent.proc.stop().context("stopping the agent")?;
    let cold_dir = tmp.subdir("manifests-10k")?;
    write(&cold_dir.join("base.yaml"), &base_manifests())?;
    write(&cold_dir.join("many.yaml"), &many_yaml)?;
    let (mut cold, cold_wall) = Agent::start(&bin, &cold_dir, &tmp.path().join("agent-cold.log"))?;
    let cold_apply = http::metric(admin, "ingress_snapshot_apply_seconds")?;
    check_many(admin, ours, &mut cold)?;
    pause(Duration::from_millis(500))?;
    let rss_cold = cold.proc.rss_kib()?;
    println!(
        "bench l7: cold start on {MANY}: apply {}, start to /readyz {}, RSS {}",
        secs(cold_apply),
        dur(cold_wall),
        mib(rss_cold)
    );
    cold.proc.stop().context("stopping the agent")?;
    proxy_nginx
        .proc
        .stop()
        .context("stopping the nginx proxy")?;
    backend_nginx.proc.stop().context("stopping the backend")?;

    let report = Report {
        machine: Machine::describe(),
        nginx_version: nginx::version(nginx_bin),
        load_cmd: load.describe(SECS, "http://127.0.0.1:PORT/"),
        rounds,
        tls_rounds,
        handshake_cmd: fresh.describe(HANDSHAKE_SECS, "https://127.0.0.1:PORT/"),
        handshake_rounds,
        full_cmd: handshake::describe(LOAD_CPU, HANDSHAKE_SECS, FULL_HANDSHAKE_CLIENTS),
        full_rounds,
        rss: [
            (rss_idle, Some(nginx_rss_idle)),
            (rss_loaded, Some(nginx_rss_loaded)),
            (rss_hot, None),
            (rss_cold, None),
        ],
        many_bytes: many_yaml.len(),
        hot: (hot_apply, hot_wall),
        stall,
        load_before,
        load_after: loadavg(),
        cold: (cold_apply, cold_wall),
        changes: [(1, small), (MANY + CHANGES + 1, large)],
        elapsed: started.elapsed(),
    };
    let section = report.render()?;
    super::write_section(HEADING, &section)?;
    println!("\n{section}");
    println!(
        "bench l7: done in {:.0} s; wrote docs/benchmarks.md",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The agent on `OURS`/`ADMIN`, pinned to `PROXY_CPU`, its stderr in a file.
struct Agent {
    proc: Proc,
}

impl Agent {
    /// Starts the agent on `manifests` and waits (bounded) for /readyz;
    /// returns it and the time from spawn to ready.
    fn start(bin: &Path, manifests: &Path, log: &Path) -> anyhow::Result<(Agent, Duration)> {
        let t0 = Instant::now();
        let mut proc = Proc::spawn(
            "ingress",
            Command::new("taskset")
                .args(["-c", &PROXY_CPU.to_string()])
                .arg(bin)
                .arg("run")
                .arg("--manifests")
                .arg(manifests)
                .args(["--http-listen", OURS, "--admin-listen", ADMIN])
                .args(["--https-listen", OURS_TLS, "--ssl-redirect", "false"])
                .args(["--default-ssl-certificate", "default/bench-tls"])
                .args(["--xdp-mode", "off", "--drain-timeout", "2s"])
                .env("RUST_LOG", "warn"),
            log,
        )?;
        let admin = sa(ADMIN);
        loop {
            proc.ensure_running()?;
            if matches!(http::get(admin, "admin", "/readyz"), Ok((200, _))) {
                return Ok((Agent { proc }, t0.elapsed()));
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("the agent was not ready within 60 s:\n{}", proc.log_tail());
            }
            process::check_interrupted()?;
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The IngressClass (default), the Service and its EndpointSlice.
fn base_manifests() -> String {
    let port = sa(BACKEND).port();
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: ingress-ebpf
  annotations:
    ingressclass.kubernetes.io/is-default-class: "true"
spec:
  controller: ingress-ebpf.dev/controller
---
apiVersion: v1
kind: Service
metadata:
  name: backend
  namespace: default
spec:
  ports:
  - name: http
    port: 80
    targetPort: {port}
    protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-1
  namespace: default
  labels:
    kubernetes.io/service-name: backend
addressType: IPv4
ports:
- name: http
  port: {port}
  protocol: TCP
endpoints:
- addresses: ["127.0.0.1"]
  conditions:
    ready: true
"#
    )
}

/// The bench certificate as a kubernetes.io/tls Secret (PEM in stringData).
fn tls_secret(cert: &str, key: &str) -> String {
    let block = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bench-tls\n  namespace: default\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        block(cert),
        block(key)
    )
}

/// An Ingress routing `host` `/` (Prefix) to Service `backend` port 80.
fn ingress(name: &str, host: &str) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: default
spec:
  rules:
  - host: {host}
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: backend
            port:
              number: 80
"#
    )
}

/// One file with `n` Ingresses `h{i}.bench.local`.
fn many_ingresses(n: usize) -> String {
    (0..n)
        .map(|i| ingress(&format!("h{i}"), &format!("h{i}.{HOST}")))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Polls /metrics until the snapshot generation passes `after`; returns the
/// time since `t0`.
fn wait_generation(
    admin: SocketAddr,
    after: f64,
    t0: Instant,
    limit: Duration,
) -> anyhow::Result<Duration> {
    loop {
        if http::metric(admin, "ingress_snapshot_generation")? > after {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            bail!("no new configuration generation within {limit:?}");
        }
        process::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Checks that the 10,000 are served: the last host in /status/ingresses and
/// answering 200.
fn check_many(admin: SocketAddr, ours: SocketAddr, agent: &mut Agent) -> anyhow::Result<()> {
    agent.proc.ensure_running()?;
    let last = format!("h{}.{HOST}", MANY - 1);
    let (_, status) =
        http::get(admin, "admin", "/status/ingresses").context("GET /status/ingresses")?;
    if !status.contains(&format!("\"{last}\"")) {
        bail!("/status/ingresses does not list {last}");
    }
    http::wait_for_status(ours, &last, "/", 200, Duration::from_secs(5), POLL)?;
    Ok(())
}

/// `CHANGES` times: a new Ingress for a new host written to `staging` and
/// renamed into `watched`; the time from the rename to the first 200 for
/// that host.
fn change_to_traffic(
    watched: &Path,
    staging: &Path,
    ours: SocketAddr,
    tag: &str,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for i in 0..CHANGES {
        let name = format!("new-{tag}{i}");
        let host = format!("{name}.{HOST}");
        let (before, _) = http::get(ours, &host, "/").context("GET before the change")?;
        if before == 200 {
            bail!("{host} answered 200 before its Ingress was written");
        }
        let staged: PathBuf = staging.join(format!("{name}.yaml"));
        write(&staged, &ingress(&name, &host))?;
        let t0 = Instant::now();
        std::fs::rename(&staged, watched.join(format!("{name}.yaml")))
            .with_context(|| format!("renaming {}", staged.display()))?;
        http::wait_for_status(ours, &host, "/", 200, Duration::from_secs(20), POLL)?;
        let took = t0.elapsed();
        println!("bench l7:   {host}: {}", dur(took));
        times.push(took);
        pause(Duration::from_millis(300))?;
    }
    Ok(times)
}

/// Requests to the bench host one after the other (new connection each,
/// 1 ms apart) on a thread, to see how long serving stalls during a reload.
struct Probe {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<anyhow::Result<(Duration, usize)>>,
}

impl Probe {
    fn start(ours: SocketAddr) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut slowest, mut sent) = (Duration::ZERO, 0);
            let deadline = Instant::now() + Duration::from_secs(90);
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                let t = Instant::now();
                let (status, _) = http::get(ours, HOST, "/").context("probe request")?;
                if status != 200 {
                    bail!("{HOST} answered {status} during the reload");
                }
                slowest = slowest.max(t.elapsed());
                sent += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok((slowest, sent))
        });
        Probe { stop, handle }
    }

    fn finish(self) -> anyhow::Result<(Duration, usize)> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_string())
}

/// 10006 -> "10,006".
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

/// Non-2xx responses and socket errors, if any.
fn errors(r: &WrkResult) -> Option<String> {
    (r.non_2xx > 0 || r.socket_errors > 0).then(|| {
        format!(
            "{} non-2xx, {} socket errors of {} requests",
            r.non_2xx, r.socket_errors, r.requests
        )
    })
}

fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1e3)
}

fn secs(s: f64) -> String {
    format!("{:.1} ms", s * 1e3)
}

fn dur(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

struct Report {
    machine: Machine,
    nginx_version: String,
    load_cmd: String,
    /// (ingress, nginx) per round.
    rounds: Vec<(WrkResult, WrkResult)>,
    /// The same over HTTPS.
    tls_rounds: Vec<(WrkResult, WrkResult)>,
    /// The wrk command of the new-handshake rounds, and the rounds.
    handshake_cmd: String,
    handshake_rounds: Vec<(WrkResult, WrkResult)>,
    /// The s_time command and (ingress, nginx) full handshakes/s per round.
    full_cmd: String,
    full_rounds: Vec<(f64, f64)>,
    /// (ingress, nginx proxy) RSS in KiB: idle, after the load, 10k hot, 10k cold.
    rss: [(u64, Option<u64>); 4],
    many_bytes: usize,
    /// (ingress_snapshot_apply_seconds, wall time).
    hot: (f64, Duration),
    /// The slowest request to the bench host during the hot reload, and
    /// how many were sent.
    stall: (Duration, usize),
    /// /proc/loadavg (1, 5, 15 min) at the start and at the end.
    load_before: String,
    load_after: String,
    cold: (f64, Duration),
    /// (Ingresses loaded before the first change, times).
    changes: [(usize, Vec<Duration>); 2],
    elapsed: Duration,
}

impl Report {
    fn render(&self) -> anyhow::Result<String> {
        let m = &self.machine;
        let col = |f: fn(&WrkResult) -> f64, ours: bool| -> Vec<f64> {
            self.rounds
                .iter()
                .map(|(o, n)| f(if ours { o } else { n }))
                .collect()
        };
        let rps = |r: &WrkResult| r.requests_per_sec;
        let p50 = |r: &WrkResult| r.p50_us;
        let p99 = |r: &WrkResult| r.p99_us;
        let med = |f: fn(&WrkResult) -> f64, ours: bool| median(&col(f, ours));
        let (rps_o, rps_n) = (med(rps, true), med(rps, false));
        let (p50_o, p50_n) = (med(p50, true), med(p50, false));
        let (p99_o, p99_n) = (med(p99, true), med(p99, false));
        let (rps_ratio, p50_ratio, p99_ratio) = (rps_o / rps_n, p50_o / p50_n, p99_o / p99_n);

        let mut s = String::new();
        writeln!(s, "{HEADING}\n")?;
        writeln!(
            s,
            "Written by `cargo xtask bench l7` on {}; the bench rewrites this section on every run (it took {:.0} s).\n",
            m.date,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            s,
            "**Machine:** {} CPUs (`nproc`), kernel {}, {}; load average {} at the start and {} at the end. Shared and noisy (other work ran on it at the same time): read the ratios, which come from one run side by side, rather than the absolute numbers.\n",
            m.cpus, m.kernel, m.cpu_model, self.load_before, self.load_after
        )?;
        writeln!(s, "**Setup** (everything on 127.0.0.1):\n")?;
        writeln!(
            s,
            "- backend: {} with `worker_processes 1`, `return 200 \"ok\\n\"` on {BACKEND}, pinned to CPU {LOAD_CPU} (`taskset -c {LOAD_CPU}`).",
            self.nginx_version
        )?;
        writeln!(
            s,
            "- **ingress** (ours): `taskset -c {PROXY_CPU} target/release/ingress run --manifests DIR --http-listen {OURS} --admin-listen {ADMIN} --https-listen {OURS_TLS} --ssl-redirect false --default-ssl-certificate default/bench-tls --xdp-mode off --drain-timeout 2s` with `RUST_LOG=warn` and stderr to a file; an IngressClass `ingress-ebpf` (default class), an Ingress `{HOST}` `/` Prefix → Service `backend`:80 → EndpointSlice 127.0.0.1:{}.",
            sa(BACKEND).port()
        )?;
        writeln!(
            s,
            "- **nginx** (reference proxy): {} on {NGINX} pinned to CPU {PROXY_CPU}, `worker_processes 1`, `upstream {{ server {BACKEND}; keepalive 64; }}`, `proxy_http_version 1.1`, `proxy_set_header Connection \"\"`, the forwarding headers the agent also sets (Host, X-Forwarded-For/-Proto/-Host/-Port, X-Real-IP, X-Request-ID), `access_log off`, `keepalive_requests 1000000` (so neither side recycles connections).",
            self.nginx_version
        )?;
        writeln!(
            s,
            "- load: `{}`, each run after a {WARMUP_SECS} s warm-up with the same command, alternating ingress, nginx, {ROUNDS} rounds. wrk shares CPU {LOAD_CPU} with the backend; each proxy has CPU {PROXY_CPU} to itself while it is measured.\n",
            self.load_cmd
        )?;

        writeln!(s, "### Throughput and latency\n")?;
        writeln!(
            s,
            "| round | ingress req/s | nginx req/s | ingress p50 | nginx p50 | ingress p99 | nginx p99 |"
        )?;
        writeln!(s, "|---|---:|---:|---:|---:|---:|---:|")?;
        for (i, (o, n)) in self.rounds.iter().enumerate() {
            writeln!(
                s,
                "| {} | {:.0} | {:.0} | {} | {} | {} | {} |",
                i + 1,
                o.requests_per_sec,
                n.requests_per_sec,
                ms(o.p50_us),
                ms(n.p50_us),
                ms(o.p99_us),
                ms(n.p99_us)
            )?;
        }
        writeln!(
            s,
            "| **median** | **{rps_o:.0}** | **{rps_n:.0}** | **{}** | **{}** | **{}** | **{}** |\n",
            ms(p50_o),
            ms(p50_n),
            ms(p99_o),
            ms(p99_n)
        )?;
        writeln!(
            s,
            "**Ratios, ingress / nginx (medians):** requests/s **{rps_ratio:.2}**, p50 latency **{p50_ratio:.2}**, p99 latency **{p99_ratio:.2}**.\n"
        )?;
        let errs: Vec<String> = self
            .rounds
            .iter()
            .enumerate()
            .flat_map(|(i, (o, n))| {
                [("ingress", o), ("nginx", n)]
                    .into_iter()
                    .filter_map(move |(w, r)| {
                        errors(r).map(|e| format!("round {} {w}: {e}", i + 1))
                    })
            })
            .collect();
        if errs.is_empty() {
            writeln!(
                s,
                "Every response was a 2xx and wrk saw no socket errors.\n"
            )?;
        } else {
            writeln!(s, "Errors wrk saw: {}.\n", errs.join("; "))?;
        }

        writeln!(s, "### HTTPS\n")?;
        writeln!(
            s,
            "The same load on `https://127.0.0.1:PORT/` (wrk keeps its 64 connections, so this is TLS record cost, not handshakes). Both proxies serve one ECDSA P-256 certificate made by `openssl req` for the run: the agent from a kubernetes.io/tls Secret as `--default-ssl-certificate` (rustls, ring) on {OURS_TLS}, nginx with `listen {NGINX_TLS} ssl`, `ssl_protocols TLSv1.2 TLSv1.3`, session cache and tickets (OpenSSL).\n"
        )?;
        rounds_table(&mut s, &self.tls_rounds)?;

        writeln!(s, "### New TLS handshakes\n")?;
        writeln!(
            s,
            "Full handshakes, no resumption: `{}`, the handshakes all clients completed divided by the wall time (each client connects, handshakes and closes, one connection at a time; no HTTP request). Same certificate and listeners as above (TLS 1.3, X25519, ECDSA P-256). The clients share CPU 1 with the backend and a full handshake costs the client about as much as the server, so when both proxies land on the same rate the clients may be the limit rather than either proxy.\n",
            self.full_cmd
        )?;
        writeln!(s, "| round | ingress handshakes/s | nginx handshakes/s |")?;
        writeln!(s, "|---|---:|---:|")?;
        for (i, (o, n)) in self.full_rounds.iter().enumerate() {
            writeln!(s, "| {} | {o:.0} | {n:.0} |", i + 1)?;
        }
        let (fo, fnx) = (
            median(&self.full_rounds.iter().map(|r| r.0).collect::<Vec<_>>()),
            median(&self.full_rounds.iter().map(|r| r.1).collect::<Vec<_>>()),
        );
        writeln!(s, "| **median** | **{fo:.0}** | **{fnx:.0}** |\n")?;
        writeln!(
            s,
            "**Ratio, ingress / nginx (medians):** full handshakes/s **{:.2}**.\n",
            fo / fnx
        )?;
        writeln!(
            s,
            "A new connection per request, resumed: `{}`. wrk reuses each connection's OpenSSL object, so after its first handshake every reconnect offers the TLS 1.3 ticket it was given and resumes (checked with nginx's `$ssl_session_reused`); req/s is resumed handshakes plus one request each.\n",
            self.handshake_cmd
        )?;
        rounds_table(&mut s, &self.handshake_rounds)?;

        writeln!(s, "### Memory and configuration size\n")?;
        writeln!(
            s,
            "| RSS (VmRSS) | ingress | nginx proxy (master + worker) |"
        )?;
        writeln!(s, "|---|---:|---:|")?;
        let labels = [
            "idle, 1 Ingress".to_string(),
            "after the load rounds, 1 Ingress".to_string(),
            format!(
                "{} Ingresses, after the hot reload",
                thousands(MANY + CHANGES + 1)
            ),
            format!("{} Ingresses, cold start", thousands(MANY)),
        ];
        for (label, (o, n)) in labels.iter().zip(&self.rss) {
            writeln!(
                s,
                "| {label} | {} | {} |",
                mib(*o),
                n.map(mib).unwrap_or_else(|| "-".to_string())
            )?;
        }
        writeln!(s)?;
        writeln!(
            s,
            "{} Ingresses `h{{i}}.{HOST}` in one file ({:.1} MB of YAML), all to Service `backend`; `ingress_snapshot_apply_seconds` is the agent's own load + compile + swap time (for a reload it starts at the file event and includes the 15 ms debounce):\n",
            thousands(MANY),
            self.many_bytes as f64 / 1e6
        )?;
        writeln!(s, "| | apply (metric) | wall time |")?;
        writeln!(s, "|---|---:|---:|")?;
        writeln!(
            s,
            "| cold start on {} Ingresses (spawn → `/readyz` 200) | {} | {} |",
            thousands(MANY),
            secs(self.cold.0),
            dur(self.cold.1)
        )?;
        writeln!(
            s,
            "| hot reload: file with {} renamed into the watched directory (rename → new `ingress_snapshot_generation` on `/metrics`) | {} | {} |\n",
            thousands(MANY),
            secs(self.hot.0),
            dur(self.hot.1)
        )?;
        writeln!(
            s,
            "In both cases `/status/ingresses` then listed `h{}.{HOST}` and it answered 200. During the hot reload a client sent {} requests to `{HOST}` one after the other (a new connection each, 1 ms apart): all answered 200, the slowest in {}.\n",
            MANY - 1,
            self.stall.1,
            dur(self.stall.0)
        )?;

        writeln!(s, "### Change to traffic\n")?;
        writeln!(
            s,
            "A new Ingress for a new host written to a staging directory and renamed into the watched one; the time from the rename to the first 200 for that host (a client polls every {} µs with a new connection), {CHANGES} times each. The agent waits 15 ms for file events to settle before it reloads, re-parses only the files that changed, and compiles the whole configuration again, so the time grows with the number of Ingresses:\n",
            POLL.as_micros()
        )?;
        writeln!(
            s,
            "| Ingresses loaded before each change | runs | median | max |"
        )?;
        writeln!(s, "|---:|---|---:|---:|")?;
        for (n, times) in &self.changes {
            let v: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
            let runs: Vec<String> = v.iter().map(|t| format!("{t:.1}")).collect();
            writeln!(
                s,
                "| {} to {} | {} ms | {:.1} ms | {:.1} ms |",
                thousands(*n),
                thousands(n + CHANGES - 1),
                runs.join(", "),
                median(&v),
                v.iter().copied().fold(f64::MIN, f64::max)
            )?;
        }
        writeln!(s)?;

        let throughput = if rps_ratio >= 1.05 {
            format!("{rps_ratio:.2}× nginx's requests per second (ahead)")
        } else if rps_ratio > 0.95 {
            format!("{rps_ratio:.2}× nginx's requests per second (level)")
        } else {
            format!(
                "{rps_ratio:.2}× nginx's requests per second ({:.0}% fewer)",
                (1.0 - rps_ratio) * 100.0
            )
        };
        let spread = |ours: bool| {
            let v = col(p99, ours);
            v.iter().copied().fold(f64::MIN, f64::max) / v.iter().copied().fold(f64::MAX, f64::min)
        };
        let p99_spread = spread(true).max(spread(false));
        let caveat = if p99_spread > 1.5 {
            format!(
                " (p99 moved up to {p99_spread:.1}× between rounds of the same proxy here, so the p99 ratio is the weaker signal)"
            )
        } else {
            String::new()
        };
        writeln!(
            s,
            "**What it means:** with one pinned core each in front of the same backend, the agent's proxy served {throughput} at {p99_ratio:.2}× its p99 latency{caveat}; this is per-request proxy overhead for a tiny response over loopback on a shared {}-CPU machine, measured against nginx in the same run, not the capacity of either proxy on real hardware or a real network.",
            m.cpus
        )?;
        Ok(s)
    }
}

/// Rounds, medians and ratios of one (ingress, nginx) comparison.
fn rounds_table(s: &mut String, rounds: &[(WrkResult, WrkResult)]) -> std::fmt::Result {
    let med = |f: fn(&WrkResult) -> f64, ours: bool| {
        median(
            &rounds
                .iter()
                .map(|(o, n)| f(if ours { o } else { n }))
                .collect::<Vec<_>>(),
        )
    };
    let rps = |r: &WrkResult| r.requests_per_sec;
    let p50 = |r: &WrkResult| r.p50_us;
    let p99 = |r: &WrkResult| r.p99_us;
    writeln!(
        s,
        "| round | ingress req/s | nginx req/s | ingress p50 | nginx p50 | ingress p99 | nginx p99 |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|")?;
    for (i, (o, n)) in rounds.iter().enumerate() {
        writeln!(
            s,
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} |",
            i + 1,
            o.requests_per_sec,
            n.requests_per_sec,
            ms(o.p50_us),
            ms(n.p50_us),
            ms(o.p99_us),
            ms(n.p99_us)
        )?;
    }
    writeln!(
        s,
        "| **median** | **{:.0}** | **{:.0}** | **{}** | **{}** | **{}** | **{}** |\n",
        med(rps, true),
        med(rps, false),
        ms(med(p50, true)),
        ms(med(p50, false)),
        ms(med(p99, true)),
        ms(med(p99, false))
    )?;
    writeln!(
        s,
        "**Ratios, ingress / nginx (medians):** requests/s **{:.2}**, p50 latency **{:.2}**, p99 latency **{:.2}**.\n",
        med(rps, true) / med(rps, false),
        med(p50, true) / med(p50, false),
        med(p99, true) / med(p99, false)
    )?;
    let errs: Vec<String> = rounds
        .iter()
        .enumerate()
        .flat_map(|(i, (o, n))| {
            [("ingress", o), ("nginx", n)]
                .into_iter()
                .filter_map(move |(w, r)| errors(r).map(|e| format!("round {} {w}: {e}", i + 1)))
        })
        .collect();
    if errs.is_empty() {
        writeln!(
            s,
            "Every response was a 2xx and wrk saw no socket errors.\n"
        )
    } else {
        writeln!(s, "Errors wrk saw: {}.\n", errs.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_secret_is_yaml_with_the_pem_blocks() {
        let y = tls_secret(
            "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n",
            "-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n",
        );
        assert!(y.contains("  tls.crt: |\n    -----BEGIN CERTIFICATE-----\n    AAA\n"));
        assert!(y.contains("  tls.key: |\n    -----BEGIN PRIVATE KEY-----\n    BBB\n"));
    }

    #[test]
    fn counts_get_separators() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(10_006), "10,006");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn many_ingresses_are_separate_documents() {
        let y = many_ingresses(3);
        assert_eq!(y.matches("kind: Ingress\n").count(), 3);
        assert_eq!(y.matches("---\n").count(), 2);
        assert!(y.contains("host: h2.bench.local"));
    }
}
