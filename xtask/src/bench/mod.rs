//! `cargo xtask bench WHAT`: benchmarks on loopback, each side by side with
//! a reference in one run (the machine is shared and noisy, so the ratios
//! matter more than the absolute numbers). Each bench regenerates its own
//! section of docs/benchmarks.md and leaves the other sections alone.

mod handshake;
mod http;
mod l4;
mod l4_diag;
mod l4_net;
mod l7;
mod nginx;
mod process;
mod services;
mod sync;
mod wrk;

use std::{path::Path, process::Command};

use anyhow::Context;
use clap::ValueEnum;

use crate::cmd::{self, workspace_root};

/// Which bench to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    /// The L7 proxy against nginx: requests/s and latency under wrk, memory
    /// and apply time with 10,000 Ingresses, change-to-traffic latency.
    L7,
    /// The L4 path against kube-proxy's iptables rules through a NodePort in
    /// namespaces (new connections/s, keep-alive requests/s), and its
    /// per-packet cost (BPF_PROG_TEST_RUN) against a do-nothing XDP
    /// program, at 1 (2), 1,000 and 10,000 Services.
    L4,
    /// Cluster mode at 1, 1,000 and 10,000 Ingresses (50,000 endpoints)
    /// against the API server double: EndpointSlice change to traffic
    /// (p50/p99), cold start and memory.
    Sync,
}

pub fn run(what: What) -> anyhow::Result<()> {
    match what {
        What::L7 => l7::run(),
        What::L4 => l4::run(),
        What::Sync => sync::run(),
    }
}

/// Builds the agent in release mode (quietly) and returns its path.
fn build_agent() -> anyhow::Result<std::path::PathBuf> {
    cmd::build_agent_release()
}

/// The machine the numbers come from.
struct Machine {
    date: String,
    cpus: String,
    kernel: String,
    cpu_model: String,
}

impl Machine {
    fn describe() -> Machine {
        let out = |c: &mut Command| {
            cmd::output(c)
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_else(|_| "unknown".to_string())
        };
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        Machine {
            date: out(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            cpus: out(&mut Command::new("nproc")),
            kernel: out(Command::new("uname").arg("-r")),
            cpu_model,
        }
    }
}

const DOC_TITLE: &str = "# Benchmarks\n\n\
Each section is written by the bench named in its heading; running it again\n\
replaces that section and leaves the others as they are. The machine is\n\
shared and noisy: each bench runs its reference side by side in the same\n\
run, and the ratios matter more than the absolute numbers.\n";

/// Replaces the `## ` section whose heading starts with `heading` in `doc`
/// (up to the next `## ` heading), or appends it.
fn replace_section(doc: &str, heading: &str, section: &str) -> String {
    let section = format!("{}\n", section.trim_end());
    let lines: Vec<&str> = doc.split_inclusive('\n').collect();
    let start = lines.iter().position(|l| l.starts_with(heading));
    match start {
        Some(s) => {
            let end = lines[s + 1..]
                .iter()
                .position(|l| l.starts_with("## "))
                .map(|i| s + 1 + i)
                .unwrap_or(lines.len());
            let mut out: String = lines[..s].concat();
            out.push_str(&section);
            if end < lines.len() {
                out.push('\n');
                out.push_str(&lines[end..].concat());
            }
            out
        }
        None => {
            let mut out = doc.trim_end().to_string();
            out.push_str("\n\n");
            out.push_str(&section);
            out
        }
    }
}

/// Writes `section` (starting with `heading`) into docs/benchmarks.md.
fn write_section(heading: &str, section: &str) -> anyhow::Result<()> {
    let path = workspace_root().join("docs/benchmarks.md");
    let doc = match std::fs::read_to_string(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DOC_TITLE.to_string(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    write_atomically(&path, &replace_section(&doc, heading, section))
}

/// Writes `path` through a temp file and a rename.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("file name")?;
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_or_appended() {
        let doc = "# B\n\nintro\n\n## L4: x\nold l4\n\n## L7: y\nold l7\nmore\n\n## Sync\nsync\n";
        let out = replace_section(doc, "## L7: ", "## L7: y\nnew l7\n");
        assert_eq!(
            out,
            "# B\n\nintro\n\n## L4: x\nold l4\n\n## L7: y\nnew l7\n\n## Sync\nsync\n"
        );
        let last = replace_section(&out, "## Sync", "## Sync\nnew sync");
        assert!(last.ends_with("## Sync\nnew sync\n"), "{last}");
        assert!(last.contains("new l7"));
        let added = replace_section("# B\n\nintro\n", "## L7: ", "## L7: y\nl7\n");
        assert_eq!(added, "# B\n\nintro\n\n## L7: y\nl7\n");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
