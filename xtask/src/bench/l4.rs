//! `cargo xtask bench l4`: the L4 path side by side with its references in
//! one run, at 1 (2), 1,000 and 10,000 Services:
//!
//! - through a NodePort in network namespaces (`l4_net`): new TCP
//!   connections per second and keep-alive requests per second, answered by
//!   the agent's XDP path, then on the same node with the agent stopped by
//!   iptables rules written as kube-proxy's iptables mode writes them;
//! - the program's per-packet cost through `BPF_PROG_TEST_RUN` next to a
//!   do-nothing XDP program (the `xdp_cost` example of ingress-userspace
//!   does that measuring).
//!
//! It writes its section of docs/benchmarks.md.

use std::{
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{
    Machine,
    l4_net::{self, Contender, Pair, Round, Setup, Target},
    process,
};
use crate::cmd::{self, workspace_root};

/// The section's heading; an older section is found by its prefix.
const HEADING: &str = "## L4: XDP vs iptables DNAT, and per-packet cost (cargo xtask bench l4)";
const HEADING_PREFIX: &str = "## L4: ";

/// The project's targets.
const TARGET_CONN_RATIO: f64 = 3.0;
const TARGET_CT_HIT: f64 = 2.0;
/// "Flat": within this fraction of the smallest round.
const FLAT_TOLERANCE: f64 = 0.15;
/// Seconds after its close that a SNAT port is free again (the program's
/// `SNAT_REUSE_S`), for the reduced run's occupancy samples.
const REUSE_S: u32 = 2;

pub fn run() -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("cargo xtask bench l4 needs root (network namespaces, eBPF, iptables in them)");
    }
    process::catch_interrupts();
    let started = Instant::now();
    let load_before = loadavg();
    let root = workspace_root();
    println!(
        "bench l4: building the agent and the examples xdp_cost, xdp_peer (cargo build --release)"
    );
    // One invocation for the binary and the examples: built apart, they
    // would unify dependency features differently and rebuild each other.
    cmd::run(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "--quiet",
                "--package",
                "ingress-userspace",
                "--bin",
                "ingress",
                "--example",
                "xdp_cost",
                "--example",
                "xdp_peer",
            ])
            .current_dir(&root),
    )
    .context("building the agent and the xdp_cost and xdp_peer examples (missing toolchain? run `cargo xtask setup`)")?;
    let agent = root.join("target/release/ingress");
    let tools = process::ensure_tools(&[
        ("wrk", "wrk"),
        ("nginx", "nginx"),
        ("iptables-restore", "iptables"),
        ("nft", "nftables"),
    ])?;
    let peer = l4_net::example_path(&root, "xdp_peer");
    let net_tools = l4_net::Tools {
        agent: &agent,
        peer: &peer,
        wrk: &tools[0],
        nginx: &tools[1],
    };

    // The reduced run: the remote pod only, with diagnostics; no report.
    if let Some(secs) = std::env::var("BENCH_L4_REMOTE_ONLY")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        println!("bench l4: remote pod only, {secs} s of new connections, with diagnostics");
        return super::l4_diag::run(&net_tools, secs, REUSE_S);
    }
    println!(
        "bench l4: through a NodePort in namespaces, the agent ({} XDP) then kube-proxy's iptables rules, at {:?} Services",
        l4_net::XDP_MODE,
        l4_net::SCALES
    );
    let (rounds, setup) = l4_net::run(&net_tools)?;

    println!("bench l4: per-packet cost through BPF_PROG_TEST_RUN (about 30 s)");
    let out = cmd::output(&mut Command::new(l4_net::example_path(&root, "xdp_cost")))
        .context("running the xdp_cost example")?;
    let cost_table = String::from_utf8_lossy(&out.stdout).into_owned();

    let report = Report {
        machine: Machine::describe(),
        load_before,
        load_after: loadavg(),
        took: started.elapsed(),
        rounds,
        setup,
        cost_table,
    };
    let section = report.render();
    super::write_section(HEADING_PREFIX, &section)?;
    println!("bench l4: wrote docs/benchmarks.md\n");
    print!("{}", report.summary());
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

struct Report {
    machine: Machine,
    load_before: String,
    load_after: String,
    took: Duration,
    rounds: Vec<Round>,
    setup: Setup,
    /// The xdp_cost example's Markdown table and its note.
    cost_table: String,
}

/// `a / b`, or NaN when `b` is zero.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The `ct hit / trivial` column of the xdp_cost table: (services, ratio).
fn ct_hit_ratios(table: &str) -> Vec<(String, f64)> {
    table
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            // "", services, trivial, pass, new flow, ct hit, ratio, fill, ""
            if cells.len() < 8 {
                return None;
            }
            let n = cells[1];
            if n.parse::<usize>().is_err() {
                return None;
            }
            let r = cells[6].trim_end_matches('x').parse::<f64>().ok()?;
            Some((n.to_string(), r))
        })
        .collect()
}

/// The connection-table hit's cost in ns by services (column 5).
fn ct_hit_ns(table: &str) -> Vec<f64> {
    table
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            if cells.len() < 8 || cells[1].parse::<usize>().is_err() {
                return None;
            }
            cells[5].trim_end_matches("ns").trim().parse().ok()
        })
        .collect()
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

impl Report {
    fn value(&self, r: &Round, c: Contender, t: Target, new_conns: bool) -> f64 {
        r.results
            .get(&(c, t))
            .map(|p| {
                if new_conns {
                    p.new_conns.requests_per_sec
                } else {
                    p.keep_alive.requests_per_sec
                }
            })
            .unwrap_or(f64::NAN)
    }

    fn ratio_at(&self, r: &Round, t: Target, new_conns: bool) -> f64 {
        ratio(
            self.value(r, Contender::Ours, t, new_conns),
            self.value(r, Contender::Iptables, t, new_conns),
        )
    }

    /// A contender's rate over the direct connection's in the same round:
    /// what the NodePort costs, with the machine's load of the moment
    /// divided out.
    fn vs_direct(&self, r: &Round, c: Contender, t: Target, new_conns: bool) -> f64 {
        ratio(
            self.value(r, c, t, new_conns),
            self.value(r, Contender::Direct, Target::Local, new_conns),
        )
    }

    /// `vs_direct` at the largest round over `vs_direct` at the smallest.
    fn flatness(&self, c: Contender, t: Target, new_conns: bool) -> f64 {
        match (self.rounds.first(), self.rounds.last()) {
            (Some(a), Some(b)) => ratio(
                self.vs_direct(b, c, t, new_conns),
                self.vs_direct(a, c, t, new_conns),
            ),
            _ => f64::NAN,
        }
    }

    fn rate_table(&self, s: &mut String, new_conns: bool) {
        let _ = writeln!(
            s,
            "| Services | direct to the pod (control) | pod on the node: ingress | iptables | **ingress / iptables** | pod on a worker: ingress | iptables | **ingress / iptables** |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.rounds {
            let mut row = format!(
                "| {} | {:.0} |",
                thousands(r.services),
                self.value(r, Contender::Direct, Target::Local, new_conns)
            );
            for t in [Target::Local, Target::Remote] {
                let _ = write!(
                    row,
                    " {:.0} | {:.0} | **{:.2}x** |",
                    self.value(r, Contender::Ours, t, new_conns),
                    self.value(r, Contender::Iptables, t, new_conns),
                    self.ratio_at(r, t, new_conns)
                );
            }
            let _ = writeln!(s, "{row}");
        }
        let _ = writeln!(
            s,
            "\nAs a share of the direct connection's rate in the same round (which no Service count affects, so the machine's load of the moment divides out): ingress {} (pod on the node) and {} (pod on a worker); iptables {} and {}. From {} to {} Services, ingress keeps {:.2}x and {:.2}x of its share, iptables {:.2}x and {:.2}x.\n",
            self.shares(Contender::Ours, Target::Local, new_conns),
            self.shares(Contender::Ours, Target::Remote, new_conns),
            self.shares(Contender::Iptables, Target::Local, new_conns),
            self.shares(Contender::Iptables, Target::Remote, new_conns),
            thousands(self.rounds.first().map_or(0, |r| r.services)),
            thousands(self.rounds.last().map_or(0, |r| r.services)),
            self.flatness(Contender::Ours, Target::Local, new_conns),
            self.flatness(Contender::Ours, Target::Remote, new_conns),
            self.flatness(Contender::Iptables, Target::Local, new_conns),
            self.flatness(Contender::Iptables, Target::Remote, new_conns),
        );
    }

    /// `vs_direct` for every round, "a / b / c".
    fn shares(&self, c: Contender, t: Target, new_conns: bool) -> String {
        self.rounds
            .iter()
            .map(|r| format!("{:.2}", self.vs_direct(r, c, t, new_conns)))
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// p99 latency of new connections (connect, request, answer, close).
    fn latency_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "**p99 latency of a request on a new connection** (wrk's `--latency`: from writing the request to the answer; wrk does not time the connect, so a dropped SYN shows in the rate, not here):\n\n| Services | direct to the pod | pod on the node: ingress | iptables | pod on a worker: ingress | iptables |\n|---:|---:|---:|---:|---:|---:|"
        );
        let p99 = |r: &Round, c, t| {
            r.results
                .get(&(c, t))
                .filter(|p: &&Pair| p.new_conns.p99_us.is_finite())
                .map_or("-".to_string(), |p| {
                    format!("{:.2} ms", p.new_conns.p99_us / 1e3)
                })
        };
        for r in &self.rounds {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                thousands(r.services),
                p99(r, Contender::Direct, Target::Local),
                p99(r, Contender::Ours, Target::Local),
                p99(r, Contender::Iptables, Target::Local),
                p99(r, Contender::Ours, Target::Remote),
                p99(r, Contender::Iptables, Target::Remote),
            );
        }
        s.push('\n');
    }

    /// Non-2xx answers and socket errors wrk saw, if any.
    fn errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.rounds {
            for c in [Contender::Direct, Contender::Ours, Contender::Iptables] {
                for t in [Target::Local, Target::Remote] {
                    let Some(p) = r.results.get(&(c, t)) else {
                        continue;
                    };
                    for why in &p.stalled {
                        out.push(format!(
                            "{} Services, {c:?}, {t:?}: {why} (recorded as 0 per second)",
                            r.services
                        ));
                    }
                    for (what, w) in [
                        ("new connections", p.new_conns),
                        ("keep-alive", p.keep_alive),
                    ] {
                        if w.non_2xx > 0 || w.socket_errors > 0 {
                            out.push(format!(
                                "{} Services, {c:?}, {t:?}, {what}: {} non-2xx, {} socket errors of {} requests",
                                r.services, w.non_2xx, w.socket_errors, w.requests
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    fn targets(&self) -> (String, bool) {
        let mut s = String::new();
        let last = self.rounds.last();
        let conn: Vec<f64> = [Target::Local, Target::Remote]
            .iter()
            .map(|t| last.map_or(f64::NAN, |r| self.ratio_at(r, *t, true)))
            .collect();
        let conn_ok = conn.iter().all(|r| *r >= TARGET_CONN_RATIO);
        let flat: Vec<f64> = [Target::Local, Target::Remote]
            .iter()
            .map(|t| self.flatness(Contender::Ours, *t, true))
            .collect();
        let ct_ns = ct_hit_ns(&self.cost_table);
        let ct_flat = match (ct_ns.first(), ct_ns.last()) {
            (Some(a), Some(b)) => ratio(*b, *a),
            _ => f64::NAN,
        };
        let flat_ok = flat
            .iter()
            .chain([&ct_flat])
            .all(|r| (r - 1.0).abs() <= FLAT_TOLERANCE);
        let ct = ct_hit_ratios(&self.cost_table);
        let ct_ok = !ct.is_empty() && ct.iter().all(|(_, r)| *r < TARGET_CT_HIT);
        let skipped = last.map_or(0, |r| r.agent_skipped);
        let last_n = thousands(last.map_or(0, |r| r.services));
        let _ = writeln!(
            s,
            "- At least {TARGET_CONN_RATIO}x iptables' new-connection rate at {last_n} Services: {:.2}x (pod on the node), {:.2}x (pod on a worker): {}.",
            conn[0],
            conn[1],
            met(conn_ok)
        );
        if skipped > 0 {
            let _ = writeln!(
                s,
                "  The agent held only part of those Services ({skipped} skipped for capacity, see below), so this round does not count as {last_n} Services for it."
            );
        }
        let _ = writeln!(
            s,
            "- Cost flat from the smallest round to {last_n} Services (within {:.0}%): the agent's new-connection rate as a share of the direct connection's, at {last_n} over the smallest round, {:.2}x (pod on the node) and {:.2}x (pod on a worker); a connection-table hit's per-packet cost {:.2}x: {}.",
            FLAT_TOLERANCE * 100.0,
            flat[0],
            flat[1],
            ct_flat,
            if flat_ok && skipped > 0 {
                "**not established**: flat as far as measured, but the agent did not hold every Service of the last round"
            } else {
                met(flat_ok)
            }
        );
        let _ = writeln!(
            s,
            "- A connection-table hit under {TARGET_CT_HIT}x the do-nothing XDP program: {}: {}.",
            ct.iter()
                .map(|(n, r)| format!("{r:.2}x at {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            met(ct_ok)
        );
        (s, conn_ok && flat_ok && ct_ok && skipped == 0)
    }

    fn render(&self) -> String {
        let m = &self.machine;
        let st = &self.setup;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{HEADING}\n\nWritten by `cargo xtask bench l4` on {}; the bench rewrites this section on every run (it took {:.0} s).\n",
            m.date,
            self.took.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "**Machine:** {} CPUs (`nproc`), kernel {}, {}; load average {} at the start and {} at the end. Shared and noisy (other work ran on it at the same time): read the ratios, which come from one run side by side, rather than the absolute numbers.\n",
            m.cpus, m.kernel, m.cpu_model, self.load_before, self.load_after
        );
        let (targets, all_met) = self.targets();
        let _ = writeln!(
            s,
            "### The project's targets\n\n{targets}\n{}\n",
            if all_met {
                "All three are met in this run."
            } else {
                "Not all of them are met in this run; the figures below say by how much."
            }
        );
        let _ = writeln!(
            s,
            "### Through a NodePort: the agent's XDP path vs kube-proxy's iptables rules\n"
        );
        let _ = writeln!(
            s,
            "**Setup** (network namespaces made by the bench, addresses in 198.18.0.0/15 only, no route out; removed at the end):\n\n```text\n{}```\n",
            l4_net::PICTURE
        );
        let _ = writeln!(
            s,
            "- pods: {} with `worker_processes 1` and `return 200 \"ok\\n\"` on 198.18.1.2:8080 (behind the node) and 198.18.0.3:8080 (on the worker), both pinned to CPU {}.",
            st.nginx_version,
            l4_net::POD_CPU
        );
        let _ = writeln!(
            s,
            "- Services, in each round: NodePort 30080 (Service `web-local`, one endpoint: the pod on the node) and NodePort 30081 (`web-remote`, one endpoint: the pod on the worker) are measured; the others are ClusterIP Services with an externalIP each (198.19.x.y:80, since nodePorts only go from 30000 to 32767) and two endpoints on the worker (never reached). The smallest round has the two measured Services only. Both contenders get the same Services: as manifests for the agent, as rules for iptables."
        );
        let _ = writeln!(
            s,
            "- **ingress** (ours): `ip netns exec NODE {}` with `RUST_LOG=warn`: XDP ({} mode) on the uplink eth0 does DNAT to the pod on the node (TC egress translates the replies back) and DNAT + SNAT + `XDP_TX` to the worker; the node has no iptables or nftables rule (checked before each round). The node's bridge port runs the do-nothing XDP program (the `xdp_peer` example) throughout: native `XDP_TX` on a veth reaches a peer promptly only when the peer runs XDP.",
            st.agent_args,
            l4_net::XDP_MODE
        );
        let _ = writeln!(
            s,
            "- **iptables** (reference): then the agent is stopped (its XDP and TC programs detached, checked), the do-nothing XDP program is put on the node's eth0 (native XDP switches a veth's receive side to NAPI with GRO; the control and iptables get the same receive path as the agent, the program's own cost is in the per-packet table) and the rules kube-proxy's iptables mode writes for the same Services are loaded into the node with one `iptables-restore` ({}): nat `PREROUTING`/`OUTPUT` → `KUBE-SERVICES` (a rule per cluster IP and per external IP, the measured Services' first, then `-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS` as the last rule, so a NodePort's first packet goes past every other Service's rules, as with kube-proxy) → `KUBE-EXT-<hash>` (`KUBE-MARK-MASQ`, externalTrafficPolicy Cluster) → `KUBE-SVC-<hash>` (`-m statistic --mode random --probability` over the endpoints) → `KUBE-SEP-<hash>` (DNAT); `POSTROUTING` → `KUBE-POSTROUTING` (`MASQUERADE --random-fully` of marked traffic); filter `KUBE-FORWARD` and the jumps to kube-proxy's (here empty) firewall chains. Chain names have kube-proxy's shape (16 base32 characters of a hash of the service port name). After the round the node's tables are removed (`nft flush ruleset`, inside the node only).",
            st.iptables_version
        );
        let _ = writeln!(
            s,
            "- load, from the client: new connections: `ip netns exec CLIENT {}` (wrk opens a new connection for every request: connect, one small request, close); keep-alive: `ip netns exec CLIENT {}`. Each target gets a {} s warm-up of new connections first. In each round, first the control: the same load straight to the pod on the node (`http://198.18.1.2:8080/`, the node routing it with no rule and only the do-nothing XDP program on eth0), then the agent, then iptables.",
            st.new_conn_cmd,
            st.keep_alive_cmd,
            l4_net::WARMUP_SECS
        );
        let _ = writeln!(
            s,
            "\n**New TCP connections per second** (one request each):\n"
        );
        self.rate_table(&mut s, true);
        let _ = writeln!(s, "**Requests per second on keep-alive connections:**\n");
        self.rate_table(&mut s, false);
        self.latency_table(&mut s);
        let _ = writeln!(
            s,
            "| Services | agent ready (spawn → `/readyz` 200) | Services the agent skipped | iptables rules (`-A`) | `iptables-restore` | packets through `KUBE-NODEPORTS` | XDP events in the agent's runs |\n|---:|---:|---:|---:|---:|---:|---|"
        );
        for r in &self.rounds {
            let mut ev: Vec<(&String, &f64)> = r
                .xdp_events
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "l4_new_flow"
                            | "l4_dnat_local"
                            | "l4_dnat_remote"
                            | "l4_reply_remote"
                            | "l4_snat_exhausted"
                            | "tc_egress:l4_revnat"
                    )
                })
                .collect();
            ev.sort_by(|a, b| a.0.cmp(b.0));
            let _ = writeln!(
                s,
                "| {} | {:.2} s | {} | {} | {:.2} s | {} | {} |",
                thousands(r.services),
                r.agent_ready.as_secs_f64(),
                r.agent_skipped,
                thousands(r.iptables_rules),
                r.iptables_restore.as_secs_f64(),
                r.iptables_nodeport_packets,
                ev.iter()
                    .map(|(k, v)| format!("{k} {v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let errors = self.errors();
        if errors.is_empty() {
            let _ = writeln!(
                s,
                "\nEvery response was a 2xx and wrk saw no socket errors.\n"
            );
        } else {
            let _ = writeln!(s, "\nErrors wrk saw: {}.\n", errors.join("; "));
        }
        let _ = writeln!(
            s,
            "### Per-packet cost (BPF_PROG_TEST_RUN)\n\n\
Each figure is the interquartile mean (the middle half's mean: as robust as \
the median, and finer than the kernel's timer, whose single-run readings come \
in steps of 10 ns here) of single runs of the program on one frame as the \
kernel times them (`BPF_PROG_TEST_RUN`; not `repeat`, which would run the \
program again on the frame it already rewrote), the four cases taking turns \
run by run, for a do-nothing XDP program and for the agent's XDP \
program with 1, 1,000 and 10,000 NodePort services of 4 pods each loaded by \
the agent's map writer (the `xdp_cost` example, which sizes the maps for 12,000 services). *pass* is a TCP frame to a port that is no service \
(parse, counters, port-flag lookup); *new flow* a SYN to \
the last service (the main program, then tail calls to the general and the \
new-flow programs: frontend hit, Maglev pick, connection-table and reverse \
entries, DNAT); *connection-table hit* the same flow again (the main \
program alone: one lookup in the IPv4 connection table, DNAT).\n\n{}",
            self.cost_table.trim_end()
        );
        let _ = writeln!(s, "\n### What it means\n\n{}", self.meaning());
        s
    }

    fn meaning(&self) -> String {
        let mut s = String::new();
        let (first, last) = match (self.rounds.first(), self.rounds.last()) {
            (Some(a), Some(b)) => (a, b),
            _ => return s,
        };
        let (n0, n1) = (thousands(first.services), thousands(last.services));
        let _ = writeln!(
            s,
            "- **New connections, pod on the node.** iptables evaluates the nat rules on each connection's first packet, and kube-proxy's `KUBE-SERVICES` is a list that a NodePort's SYN walks past every other Service's rules: as a share of the direct connection, iptables goes from {:.2} at {n0} Services to {:.2} at {n1}, the agent from {:.2} to {:.2} (hash lookups in XDP). With few Services the two are close: on veth pairs inside one 2-CPU machine most of a new connection's cost is the TCP stacks of client, node and pod, nginx and wrk, which both pay alike.",
            self.vs_direct(first, Contender::Iptables, Target::Local, true),
            self.vs_direct(last, Contender::Iptables, Target::Local, true),
            self.vs_direct(first, Contender::Ours, Target::Local, true),
            self.vs_direct(last, Contender::Ours, Target::Local, true),
        );
        let exhausted: f64 = self
            .rounds
            .iter()
            .map(|r| {
                r.xdp_events
                    .get("l4_snat_exhausted")
                    .copied()
                    .unwrap_or(0.0)
            })
            .sum();
        let remote = self.ratio_at(last, Target::Remote, true);
        if exhausted > 0.0 {
            let _ = writeln!(
                s,
                "- **New connections, pod on a worker.** Here the agent is at {remote:.2}x iptables at {n1} Services. Its program counted `l4_snat_exhausted` {exhausted:.0} times over the rounds: a new flow to a pod on another node whose 32 SNAT port tries (spread over the default `--snat-port-range`, 1024-29999; see docs/l4.md for which ports count as free) all found no free port is dropped, and the client resends its SYN after a second or more, which holds one of wrk's connections that long (it shows in the rate; wrk does not time connects). They are the range's capacity: at thousands of new connections a second to one pod the range's ports are all used before the first closed ones are 2 s old, and in that gap every new SYN finds no port (all of wrk's connections at once); see docs/l4.md."
            );
        } else {
            let _ = writeln!(
                s,
                "- **New connections, pod on a worker.** The agent is at {remote:.2}x iptables at {n1} Services (DNAT + SNAT + `XDP_TX` against conntrack's DNAT + MASQUERADE). The SNAT port of a flow goes to another client only when no port the pod may still hold TIME_WAIT for is left (a pod refuses another client's SYN on such a tuple, PAWS, and the client resends it a second later); each round's runs (about 4 s of new connections on a fresh agent) stay within the 10,000-port range, so they meet no such reuse: a pod taking more than range / 60 s new connections a second for longer would (docs/l4.md)."
            );
        }
        let _ = writeln!(
            s,
            "- **Keep-alive requests** (conntrack's established path for iptables, the connection table for XDP): ingress / iptables {:.2}x at {n0} Services and {:.2}x at {n1} (pod on the node).",
            self.ratio_at(first, Target::Local, false),
            self.ratio_at(last, Target::Local, false),
        );
        if last.agent_skipped > 0 {
            let _ = writeln!(
                s,
                "- **Capacity.** At {n1} Services the agent held {} of them ({} skipped: its maps hold 4,096 by default and `ingress run` has no flag to raise that yet); the measured NodePorts were among those held. iptables held all {n1}. The agent took {:.1} s from spawn to ready on that configuration, `iptables-restore` {:.1} s.",
                thousands(last.services - last.agent_skipped),
                last.agent_skipped,
                last.agent_ready.as_secs_f64(),
                last.iptables_restore.as_secs_f64(),
            );
        }
        let _ = writeln!(
            s,
            "- These are figures from veth pairs in namespaces on a shared machine, not from a NIC: they compare the two ways of translating a NodePort in the same run, and say nothing of either one's capacity on real hardware."
        );
        s
    }

    /// What the terminal shows at the end.
    fn summary(&self) -> String {
        let mut s = String::new();
        for r in &self.rounds {
            let _ = writeln!(
                s,
                "{:>6} Services: new conn/s ingress/iptables {:.2}x (node pod) {:.2}x (worker pod); keep-alive {:.2}x {:.2}x",
                r.services,
                self.ratio_at(r, Target::Local, true),
                self.ratio_at(r, Target::Remote, true),
                self.ratio_at(r, Target::Local, false),
                self.ratio_at(r, Target::Remote, false),
            );
        }
        s.push_str(&self.targets().0);
        s
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::bench::wrk::WrkResult;

    const COST: &str = "| services | trivial XDP_PASS | pass (not a service) | new flow (service hit, Maglev, DNAT) | connection-table hit (DNAT) | ct hit / trivial | maps written in |
|---:|---:|---:|---:|---:|---:|---:|
| 1 | 81.0 ns | 111.0 ns | 1272.0 ns | 301.0 ns | 3.72x | 0.0 s |
| 1000 | 80.0 ns | 100.0 ns | 941.0 ns | 240.0 ns | 3.00x | 1.2 s |
| 10000 | 80.0 ns | 100.0 ns | 981.0 ns | 250.0 ns | 1.90x | 10.5 s |

Connection-table hit at 10,000 services / at 1 service: 0.83x.
";

    fn wrk(rps: f64) -> WrkResult {
        WrkResult {
            requests_per_sec: rps,
            p50_us: 100.0,
            p99_us: 900.0,
            requests: (rps * 3.0) as u64,
            non_2xx: 0,
            socket_errors: 0,
        }
    }

    fn round(services: usize, ours: f64, ipt: f64) -> Round {
        let mut results = HashMap::new();
        for t in [Target::Local, Target::Remote] {
            results.insert(
                (Contender::Ours, t),
                Pair {
                    new_conns: wrk(ours),
                    keep_alive: wrk(ours * 4.0),
                    stalled: Vec::new(),
                },
            );
            results.insert(
                (Contender::Iptables, t),
                Pair {
                    new_conns: wrk(ipt),
                    keep_alive: wrk(ipt * 4.0),
                    stalled: Vec::new(),
                },
            );
        }
        results.insert(
            (Contender::Direct, Target::Local),
            Pair {
                new_conns: wrk(2000.0),
                keep_alive: wrk(8000.0),
                stalled: Vec::new(),
            },
        );
        Round {
            services,
            results,
            agent_ready: Duration::from_millis(300),
            agent_skipped: 0,
            xdp_events: HashMap::from([("l4_new_flow".to_string(), 10.0)]),
            iptables_rules: 12,
            iptables_restore: Duration::from_millis(20),
            iptables_nodeport_packets: 99,
        }
    }

    fn report(rounds: Vec<Round>) -> Report {
        Report {
            machine: Machine {
                date: "2026-11-26 09:00 UTC".into(),
                cpus: "2".into(),
                kernel: "6.18".into(),
                cpu_model: "EPYC".into(),
            },
            load_before: "1 1 1".into(),
            load_after: "2 2 2".into(),
            took: Duration::from_secs(200),
            rounds,
            setup: Setup {
                agent_args: "ingress run ...".into(),
                nginx_version: "nginx/1.22.1".into(),
                iptables_version: "iptables v1.8.9 (nf_tables)".into(),
                new_conn_cmd: "wrk close".into(),
                keep_alive_cmd: "wrk".into(),
            },
            cost_table: COST.into(),
        }
    }

    #[test]
    fn reads_the_cost_table() {
        assert_eq!(
            ct_hit_ratios(COST),
            vec![
                ("1".to_string(), 3.72),
                ("1000".to_string(), 3.0),
                ("10000".to_string(), 1.9)
            ]
        );
        assert_eq!(ct_hit_ns(COST), vec![301.0, 240.0, 250.0]);
    }

    #[test]
    fn the_section_has_both_sides_and_the_targets() {
        let r = report(vec![round(2, 1000.0, 1000.0), round(10_000, 1000.0, 250.0)]);
        let s = r.render();
        assert!(s.starts_with(HEADING), "{s}");
        assert!(s.starts_with(HEADING_PREFIX));
        assert!(
            s.contains("| 10,000 | 2000 | 1000 | 250 | **4.00x** | 1000 | 250 | **4.00x** |"),
            "{s}"
        );
        assert!(s.contains("| 2 | 2000 | 1000 | 1000 | **1.00x** |"), "{s}");
        assert!(
            s.contains("4.00x (pod on the node), 4.00x (pod on a worker): **met**"),
            "{s}"
        );
        // The per-packet cost is 3.72x at one service: that target is missed.
        assert!(
            s.contains("3.72x at 1, 3.00x at 1000, 1.90x at 10000: **not met**"),
            "{s}"
        );
        // 250 / 301 ns is not within 15%.
        assert!(s.contains("0.83x: **not met**"), "{s}");
        assert!(s.contains("Every response was a 2xx"));
        // Shares of the direct connection: 0.50 in both rounds, so flat.
        assert!(s.contains("ingress 0.50 / 0.50 (pod on the node)"), "{s}");
        assert!(
            s.contains("over the smallest round, 1.00x (pod on the node)"),
            "{s}"
        );
        assert!(
            s.contains("| 10,000 | 0.90 ms | 0.90 ms | 0.90 ms |"),
            "{s}"
        );
        assert!(!s.contains("NaN"), "{s}");
    }

    #[test]
    fn skipped_services_and_errors_are_said() {
        let mut last = round(10_000, 1000.0, 100.0);
        last.agent_skipped = 5_906;
        if let Some(p) = last.results.get_mut(&(Contender::Iptables, Target::Local)) {
            p.new_conns.socket_errors = 3;
        }
        if let Some(p) = last.results.get_mut(&(Contender::Ours, Target::Remote)) {
            p.new_conns = WrkResult {
                requests_per_sec: 0.0,
                p99_us: f64::NAN,
                ..p.new_conns
            };
            p.stalled
                .push("new connections: did not finish within 13s".into());
        }
        let s = report(vec![round(2, 1000.0, 1000.0), last]).render();
        assert!(s.contains("5906 skipped for capacity"), "{s}");
        assert!(s.contains("Errors wrk saw: "), "{s}");
        assert!(
            s.contains(
                "10000 Services, Iptables, Local, new connections: 0 non-2xx, 3 socket errors"
            ),
            "{s}"
        );
        assert!(s.contains("10000 Services, Ours, Remote: new connections: did not finish within 13s (recorded as 0 per second)"), "{s}");
        assert!(
            s.contains("| 10,000 | 0.90 ms | 0.90 ms | 0.90 ms | - | 0.90 ms |"),
            "{s}"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(2), "2");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(123_456_789), "123,456,789");
    }
}
