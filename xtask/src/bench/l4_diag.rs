//! A reduced L4 bench for the remote-pod path alone, with diagnostics:
//! `BENCH_L4_REMOTE_ONLY=SECS cargo xtask bench l4` builds the bench's
//! topology, starts the agent with the two measured Services, and runs
//! `SECS` seconds of new connections to the pod on the worker (NodePort
//! 30081: DNAT + SNAT + `XDP_TX`), sampling the reverse table's SNAT ports
//! every second; then it prints the agent's counters, the client's and the
//! worker's TCP counters (`nstat`), the veth counters (`ethtool -S`) of the
//! node's uplink and its bridge port, and the occupancy samples; then 3 s of
//! keep-alive requests (as each bench round runs) with the SNAT exhaustion
//! counted during them. It writes nothing to the docs. The decoding of `bpftool` dumps is pure and tested
//! below.

use std::{
    collections::HashMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{
    l4_net::{self, Target, Tools},
    process::{TempDir, output_bounded},
    wrk::Load,
};

/// One SNAT reverse entry's state at a sample.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    /// Reverse entries of remote flows (SNAT ports in use or kept).
    pub snat: usize,
    /// Still open (no FIN or RST seen).
    pub live: usize,
    /// Closed less than `reuse_s` seconds ago (not free yet).
    pub closed_recent: usize,
    /// Closed longer ago (free for a new flow).
    pub closed_old: usize,
}

/// The byte lists of a `bpftool map dump` (plain text): each entry's key
/// and value.
pub fn dump_entries(text: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let hex = |s: &str| -> Vec<u8> {
        s.split_whitespace()
            .filter_map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok())
            .collect()
    };
    text.split("key:")
        .skip(1)
        .filter_map(|e| {
            let (k, v) = e.split_once("value:")?;
            // The value ends where the next non-hex text starts ("Found N
            // elements").
            let v = v.split("Found").next().unwrap_or(v);
            Some((hex(k), hex(v)))
        })
        .collect()
}

/// Counts the SNAT reverse entries of a `L4_REVNAT` dump by state at
/// `now_s` (the programs' clock in seconds).
pub fn occupancy(entries: &[(Vec<u8>, Vec<u8>)], now_s: u32, reuse_s: u32) -> Occupancy {
    let mut o = Occupancy::default();
    for (k, v) in entries {
        // FlowKey: 40 bytes; RevValue: 44 (flags at 36, closed_at at 40).
        if k.len() != 40 || v.len() != 44 || v[36] & ingress_rev_remote() == 0 {
            continue;
        }
        o.snat += 1;
        let closed_at = u32::from_le_bytes([v[40], v[41], v[42], v[43]]);
        if closed_at == 0 {
            o.live += 1;
        } else if now_s.wrapping_sub(closed_at) < reuse_s {
            o.closed_recent += 1;
        } else {
            o.closed_old += 1;
        }
    }
    o
}

/// `REV_REMOTE` (ingress-common's `l4` module; the xtask does not depend
/// on the agent's crates).
const fn ingress_rev_remote() -> u8 {
    1
}

fn monotonic_s() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u32).max(1)
}

/// The id of the `L4_REVNAT` map of the XDP program on `iface` in `ns`.
fn revnat_id(ns: &str, iface: &str, log: &Path) -> anyhow::Result<String> {
    let link = output_bounded(
        Command::new("ip").args(["-n", ns, "-d", "link", "show", "dev", iface]),
        Duration::from_secs(10),
        log,
    )?;
    let prog = link
        .split_whitespace()
        .skip_while(|w| *w != "prog/xdp")
        .nth(2)
        .and_then(|w| w.strip_prefix("id"))
        .map(str::to_string)
        .or_else(|| {
            let w: Vec<&str> = link.split_whitespace().collect();
            w.windows(2)
                .find(|p| p[0] == "id" && link.contains("prog/xdp"))
                .map(|p| p[1].to_string())
        })
        .with_context(|| format!("no XDP program on {iface}: {link}"))?;
    let show = output_bounded(
        Command::new("bpftool").args(["prog", "show", "id", &prog]),
        Duration::from_secs(10),
        log,
    )?;
    let ids = show
        .split("map_ids")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .with_context(|| format!("no map ids in: {show}"))?;
    for id in ids.split(',') {
        let m = output_bounded(
            Command::new("bpftool").args(["map", "show", "id", id]),
            Duration::from_secs(10),
            log,
        )?;
        if m.contains("name L4_REVNAT") {
            return Ok(id.to_string());
        }
    }
    bail!("program {prog} has no L4_REVNAT among maps {ids}")
}

fn snapshot(cmds: &[(&str, Vec<String>)], log: &Path) -> Vec<(String, String)> {
    cmds.iter()
        .map(|(what, c)| {
            let out = output_bounded(
                Command::new(&c[0]).args(&c[1..]),
                Duration::from_secs(20),
                log,
            )
            .unwrap_or_else(|e| format!("({e:#})"));
            (what.to_string(), out)
        })
        .collect()
}

/// Numbers of `ethtool -S` / `nstat -az` output, by name.
pub fn counters(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?.trim_end_matches(':');
            let v = w.next()?.parse::<f64>().ok()?;
            Some((name.to_string(), v))
        })
        .collect()
}

/// The reduced run (see the module's documentation).
pub fn run(tools: &Tools, secs: u64, reuse_s: u32) -> anyhow::Result<()> {
    let tmp = TempDir::new("l4diag")?;
    let log = tmp.path().join("cmd.log");
    let mut bed = l4_net::build_topology(&tmp, tools.nginx, tools.peer)?;
    let (node, client, worker, lan) = (
        bed.name("node"),
        bed.name("client"),
        bed.name("worker"),
        bed.name("lan"),
    );
    let mut agent = l4_net::start_agent(&tmp, tools, &node)?;
    let addr = std::net::SocketAddr::from(([198, 18, 0, 1], Target::Remote.port()));
    let url = format!("http://{addr}/");
    l4_net::wait_200(&client, addr, Duration::from_secs(10))?;
    let map = revnat_id(&node, "eth0", &log)?;
    println!("bench l4 (remote only): L4_REVNAT is map {map}");
    let snaps = |log: &Path| {
        let nn = |ns: &str, args: &[&str]| -> Vec<String> {
            ["ip", "netns", "exec", ns]
                .iter()
                .chain(args)
                .map(|s| s.to_string())
                .collect()
        };
        snapshot(
            &[
                ("client nstat", nn(&client, &["nstat", "-az"])),
                ("worker nstat", nn(&worker, &["nstat", "-az"])),
                ("node nstat", nn(&node, &["nstat", "-az"])),
                ("node eth0", nn(&node, &["ethtool", "-S", "eth0"])),
                ("lan p-node", nn(&lan, &["ethtool", "-S", "p-node"])),
                ("lan p-worker", nn(&lan, &["ethtool", "-S", "p-worker"])),
                ("worker eth0", nn(&worker, &["ethtool", "-S", "eth0"])),
            ],
            log,
        )
    };
    let before = snaps(&log);
    let ev_before = l4_net::xdp_events(&l4_net::agent_metrics(&node)?);
    let load = Load {
        wrk: tools.wrk,
        cpu: l4_net::LOAD_CPU,
        threads: 1,
        connections: l4_net::CONNECTIONS,
        host: "bench.local",
        close: true,
    };
    // wrk in the background; the reverse table sampled meanwhile.
    let wrk_log = tmp.path().join("wrk.log");
    let wrk_cmd = {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &client, "taskset", "-c", "1"])
            .arg(tools.wrk)
            .args(load.args(secs, &url));
        c
    };
    let mut wrk = super::process::Proc::spawn("wrk", &mut { wrk_cmd }, &wrk_log)?;
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(secs + 1) {
        let t = Instant::now();
        let dump = output_bounded(
            Command::new("bpftool").args(["map", "dump", "id", &map]),
            Duration::from_secs(20),
            &log,
        )?;
        let o = occupancy(&dump_entries(&dump), monotonic_s(), reuse_s);
        let ev = l4_net::xdp_events(&l4_net::agent_metrics(&node)?);
        let ex = ev.get("l4_snat_exhausted").copied().unwrap_or(0.0)
            - ev_before.get("l4_snat_exhausted").copied().unwrap_or(0.0);
        samples.push((start.elapsed(), o, ex));
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
    let _ = wrk.stop();
    let wrk_out = std::fs::read_to_string(&wrk_log).unwrap_or_default();
    // Then a keep-alive run, as each bench round does after its new
    // connections: the exhaustion count after it.
    let exhausted = |node: &str| -> anyhow::Result<f64> {
        Ok(l4_net::xdp_events(&l4_net::agent_metrics(node)?)
            .get("l4_snat_exhausted")
            .copied()
            .unwrap_or(0.0))
    };
    let before_ka = exhausted(&node)?;
    let keep_alive = Load {
        close: false,
        ..load
    };
    let ka = keep_alive.run_in(&client, 3, &url, &[], &log)?;
    println!(
        "--- keep-alive run: {:.0} requests/s, l4_snat_exhausted during it: {:.0}",
        ka.requests_per_sec,
        exhausted(&node)? - before_ka
    );
    let after = snaps(&log);
    let ev_after = l4_net::xdp_events(&l4_net::agent_metrics(&node)?);
    println!("--- wrk\n{wrk_out}");
    println!("--- agent's L4 events during the run");
    let mut keys: Vec<&String> = ev_after.keys().collect();
    keys.sort();
    for k in keys {
        let d = ev_after[k] - ev_before.get(k).copied().unwrap_or(0.0);
        if d != 0.0 {
            println!("{k:<32} {d:>10.0}");
        }
    }
    println!(
        "--- SNAT reverse entries (t, snat, live, closed < {reuse_s} s, closed older; exhausted so far)"
    );
    for (t, o, ex) in &samples {
        println!(
            "{:>5.1}s {:>6} {:>6} {:>6} {:>6}   {ex:.0}",
            t.as_secs_f64(),
            o.snat,
            o.live,
            o.closed_recent,
            o.closed_old
        );
    }
    for ((what, b), (_, a)) in before.iter().zip(&after) {
        let (b, a) = (counters(b), counters(a));
        let mut names: Vec<&String> = a.keys().collect();
        names.sort();
        let changed: Vec<String> = names
            .into_iter()
            .filter_map(|n| {
                let d = a[n] - b.get(n).copied().unwrap_or(0.0);
                (d != 0.0).then(|| format!("{n} {d:.0}"))
            })
            .collect();
        println!(
            "--- {what} (changed during the run)\n{}",
            changed.join("\n")
        );
    }
    if std::env::var_os("BENCH_L4_HOLD").is_some() {
        println!("holding 120 s: namespaces {client} {node} {worker} {lan}, L4_REVNAT map {map}");
        std::thread::sleep(Duration::from_secs(120));
    }
    agent.stop()?;
    bed.pods.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_bpftool_dump_and_counts_states() {
        let mut rev = vec![0u8; 44];
        rev[36] = 1;
        let live = rev.clone();
        let mut recent = rev.clone();
        recent[40..44].copy_from_slice(&99u32.to_le_bytes());
        let mut old = rev.clone();
        old[40..44].copy_from_slice(&90u32.to_le_bytes());
        let mut local = old.clone();
        local[36] = 0;
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let key = vec![7u8; 40];
        let text: String = [&live, &recent, &old, &local]
            .iter()
            .map(|v| format!("key:\n{}\nvalue:\n{}\n", hex(&key), hex(v)))
            .collect::<String>()
            + "Found 4 elements\n";
        let e = dump_entries(&text);
        assert_eq!(e.len(), 4);
        assert_eq!(
            occupancy(&e, 100, 2),
            Occupancy {
                snat: 3,
                live: 1,
                closed_recent: 1,
                closed_old: 1
            }
        );
    }

    #[test]
    fn reads_counters() {
        let c = counters(
            "NIC statistics:\n     peer_ifindex: 5\n     xdp_tx_errors: 3\nTcpExtTCPSynRetrans 12 0.0\n",
        );
        assert_eq!(c["xdp_tx_errors"], 3.0);
        assert_eq!(c["TcpExtTCPSynRetrans"], 12.0);
    }
}
