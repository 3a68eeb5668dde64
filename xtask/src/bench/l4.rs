//! `cargo xtask bench l4`: the L4 program's per-packet cost through
//! `BPF_PROG_TEST_RUN` next to a do-nothing XDP program, at 1, 1,000 and
//! 10,000 services (the `xdp_cost` example of ingress-userspace does the
//! measuring; this task builds and runs it and writes the section).

use std::process::Command;

use anyhow::{Context, bail};

use super::Machine;
use crate::cmd::{self, workspace_root};

const HEADING: &str = "## L4: per-packet cost (cargo xtask bench l4)";

pub fn run() -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("cargo xtask bench l4 needs root (it loads eBPF programs)");
    }
    let root = workspace_root();
    println!("bench l4: building the measuring example (cargo build --release --example xdp_cost)");
    cmd::run(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "--quiet",
                "--package",
                "ingress-userspace",
                "--example",
                "xdp_cost",
            ])
            .current_dir(&root),
    )
    .context("building the xdp_cost example")?;
    println!("bench l4: measuring (about 15 s)");
    let out = cmd::output(&mut Command::new(
        root.join("target/release/examples/xdp_cost"),
    ))
    .context("running the xdp_cost example")?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let m = Machine::describe();
    let section = format!(
        "{HEADING}\n\n\
Written by `cargo xtask bench l4` on {date}. **Machine:** {cpus} CPUs, kernel {kernel}, {cpu}.\n\n\
Each figure is the median of single runs of the program on one frame as the \
kernel times them (`BPF_PROG_TEST_RUN`; not `repeat`, which would run the \
program again on the frame it already rewrote), for a do-nothing XDP program and for the agent's XDP \
program with 1, 1,000 and 10,000 NodePort services of 4 pods each loaded by \
the agent's map writer. *pass* is a TCP frame to a port that is no service \
(parse, counters, frontend and reverse-table misses); *new flow* a SYN to \
the last service (frontend hit, Maglev pick, connection-table and reverse \
entries, DNAT); *connection-table hit* the same flow again (frontend and \
table hits, DNAT).\n\n{table}\n\
**What it means:** the cost is flat in the number of services (hash and \
array lookups). Frames no service concerns (the proxy's own ports) pass \
after one array lookup of port flags, for a few tens of ns over the \
do-nothing program. A connection-table hit with its DNAT costs about 3-4x \
the do-nothing program including the timer overhead both carry (target: \
under 2x): the frontend and connection-table hash lookups and the \
checksum fix-up. The side-by-side against iptables DNAT in \
namespaces (connections/s through a NodePort at 1, 1,000 and 10,000 \
services) is not built yet.\n",
        date = m.date,
        cpus = m.cpus,
        kernel = m.kernel,
        cpu = m.cpu_model,
    );
    super::write_section(HEADING, &section)?;
    println!("bench l4: wrote docs/benchmarks.md");
    print!("{table}");
    Ok(())
}
