//! The L4 program's per-packet cost, measured with `BPF_PROG_TEST_RUN`
//! against a do-nothing XDP program in the same run, at 1, 1,000 and 10,000
//! services. Run by `cargo xtask bench l4` (needs root); prints a Markdown
//! section on stdout.
//!
//! `XDP_COST_PROFILE=N` instead runs a connection-table hit and the
//! do-nothing program alternately N times each (one service) and prints
//! their mean, median and interquartile mean: a loop to run under `perf record`, where the
//! JIT'd programs show as `bpf_prog_*` symbols.

use std::net::SocketAddr;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use ingress_common::{maps::XDP_NOOP_PROGRAM, testing::PacketBuilder};
use ingress_userspace::{
    datapath::{LoadOptions, LoadedPrograms, l4maps::L4Maps},
    model::{
        ObjectKey,
        l4::{L4Backend, L4Service, L4Table, Proto},
    },
};

const NODE: [u8; 4] = [198, 18, 0, 1];
const CLIENT: [u8; 4] = [198, 18, 0, 2];
const RUNS: u16 = 20_000;

/// Nanoseconds per run of `frame`, as the kernel times `repeat` runs.
fn cost(prog: &Xdp, frame: &[u8], repeat: u32) -> f64 {
    let mut out = vec![0u8; frame.len() + 64];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    r.duration.as_nanos() as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The mean of the middle half of `v` (the interquartile mean): as robust
/// to a descheduled run as the median, and finer than the kernel's timer,
/// whose single-run readings come in steps of 10 ns here.
fn interquartile_mean(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let middle = &v[v.len() / 4..v.len() - v.len() / 4];
    middle.iter().sum::<f64>() / middle.len() as f64
}

/// One measured case: a program and the frame of run `i`.
type Case<'a> = (&'a Xdp, &'a dyn Fn(u16) -> Vec<u8>);

/// Runs every case once per round, for `RUNS` rounds, so that all of them
/// see the same state of a shared, noisy machine; the interquartile mean of
/// each case's single runs, in nanoseconds.
fn interleaved(cases: &[Case<'_>]) -> Vec<f64> {
    let mut runs = vec![Vec::with_capacity(RUNS as usize); cases.len()];
    for i in 0..RUNS {
        for ((prog, frame), r) in cases.iter().zip(runs.iter_mut()) {
            r.push(cost(prog, &frame(i), 1));
        }
    }
    runs.into_iter().map(interquartile_mean).collect()
}

fn table(n: u16) -> L4Table {
    let mut t = L4Table::default();
    for i in 0..n {
        let backends = (1..=4u8)
            .map(|j| L4Backend {
                addr: SocketAddr::from(([198, 18, 3 + (i / 250) as u8 % 200, j], 8080)),
                local: true,
                terminating: false,
            })
            .collect();
        t.services.insert(
            (SocketAddr::from((NODE, 20_000 + i)), Proto::Tcp),
            L4Service {
                service: ObjectKey::new("bench", format!("svc-{i}")),
                port: "http".into(),
                backends,
                local_policy: false,
                affinity_timeout: None,
                source_ranges: Vec::new(),
                health_check_node_port: None,
            },
        );
    }
    t
}

/// Loads the do-nothing XDP program the costs are compared with.
fn load_noop(programs: &mut LoadedPrograms) {
    let noop: &mut Xdp = programs
        .ebpf
        .program_mut(XDP_NOOP_PROGRAM)
        .expect("the no-op program")
        .try_into()
        .expect("an XDP program");
    noop.load().expect("loading the no-op program");
}

/// The loaded XDP program `name`.
fn xdp_program<'a>(programs: &'a LoadedPrograms, name: &str) -> &'a Xdp {
    programs
        .ebpf
        .program(name)
        .expect("a program of the object")
        .try_into()
        .expect("an XDP program")
}

/// The `XDP_COST_PROFILE` loop: a connection-table hit and the do-nothing
/// program, alternately, `runs` times each.
fn profile(runs: u32) {
    let mut programs = LoadedPrograms::load_with(&LoadOptions::default())
        .expect("loading the eBPF object (run as root)");
    let mut l4 = L4Maps::take(&mut programs).expect("L4 maps");
    let skipped = l4.apply(&table(1)).expect("writing the maps");
    assert!(skipped.is_empty(), "{skipped:?}");
    load_noop(&mut programs);
    let noop = xdp_program(&programs, XDP_NOOP_PROGRAM);
    let xdp = xdp_program(&programs, ingress_common::maps::XDP_PROGRAM);
    let frame = PacketBuilder::tcp4(CLIENT, NODE, 10_000, 20_000).build();
    // The first run records the flow; the loop's runs are hits.
    cost(xdp, &frame, 1);
    let (mut hit, mut trivial) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        hit.push(cost(xdp, &frame, 1));
        trivial.push(cost(noop, &frame, 1));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (hit_mean, trivial_mean) = (mean(&hit), mean(&trivial));
    let (hit_iqm, trivial_iqm) = (
        interquartile_mean(hit.clone()),
        interquartile_mean(trivial.clone()),
    );
    let (hit_median, trivial_median) = (median(hit), median(trivial));
    println!(
        "connection-table hit: mean {hit_mean:.1} ns, median {hit_median:.1} ns, interquartile mean {hit_iqm:.1} ns; do-nothing: mean {trivial_mean:.1} ns, median {trivial_median:.1} ns, interquartile mean {trivial_iqm:.1} ns; ratio of interquartile means {:.2}x",
        hit_iqm / trivial_iqm
    );
}

fn main() {
    if let Some(runs) = std::env::var("XDP_COST_PROFILE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        profile(runs);
        return;
    }
    let mut rows = Vec::new();
    for services in [1u16, 1_000, 10_000] {
        let mut programs = LoadedPrograms::load_with(&LoadOptions {
            max_services: 12_000,
            ..LoadOptions::default()
        })
        .expect("loading the eBPF object (run as root)");
        let mut l4 = L4Maps::take(&mut programs).expect("L4 maps");
        let started = std::time::Instant::now();
        let skipped = l4.apply(&table(services)).expect("writing the maps");
        assert!(skipped.is_empty(), "{skipped:?}");
        let fill = started.elapsed();
        load_noop(&mut programs);
        let noop = xdp_program(&programs, XDP_NOOP_PROGRAM);
        let frame_to =
            |port: u16, sport: u16| PacketBuilder::tcp4(CLIENT, NODE, sport, port).build();
        let last = 20_000 + services - 1;
        // The measured frames must take the paths they are named after.
        let xdp = xdp_program(&programs, ingress_common::maps::XDP_PROGRAM);
        let mut out = vec![0u8; 128];
        xdp.test_run(TestRunOptions {
            data_in: Some(&frame_to(last, 10_000)),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
        assert_eq!(out[30], 198, "translated to a pod");
        assert_ne!(
            &out[30..34],
            &NODE,
            "the connection-table hit is translated"
        );
        // Single runs: with `repeat` the kernel runs the program again on
        // the frame it already rewrote, so a translated frame would be
        // measured as something else. Each new flow is a different source
        // port.
        let to_80 = |_| frame_to(80, 1);
        let new = |i| frame_to(last, 10_001 + i);
        let known = |_| frame_to(last, 10_000);
        let c = interleaved(&[(noop, &to_80), (xdp, &to_80), (xdp, &new), (xdp, &known)]);
        let (trivial, pass, new_flow, ct_hit) = (c[0], c[1], c[2], c[3]);
        rows.push((services, trivial, pass, new_flow, ct_hit, fill));
    }
    println!(
        "| services | trivial XDP_PASS | pass (not a service) | new flow (service hit, Maglev, DNAT) | connection-table hit (DNAT) | ct hit / trivial | maps written in |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (n, trivial, pass, new_flow, ct, fill) in &rows {
        println!(
            "| {n} | {trivial:.1} ns | {pass:.1} ns | {new_flow:.1} ns | {ct:.1} ns | {:.2}x | {:.1} s |",
            ct / trivial,
            fill.as_secs_f64()
        );
    }
    let flat = rows.last().map(|r| r.4).unwrap_or(0.0) / rows.first().map(|r| r.4).unwrap_or(1.0);
    println!();
    println!(
        "Connection-table hit at 10,000 services / at 1 service: {flat:.2}x. Every figure is the interquartile mean of {RUNS} single runs as the kernel times them, the four cases taking turns (new flows each with a distinct 5-tuple), so all include the same timer overhead: compare them with the do-nothing column."
    );
}
