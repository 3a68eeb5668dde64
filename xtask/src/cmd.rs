//! Running commands with context in errors.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::{Context, bail};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Runs `cmd` with inherited stdio; fails naming the command.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs `cmd` capturing output; fails with its stderr.
pub fn output(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Whether `cmd` runs and exits 0 (output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Builds the `ingress` binary in release mode (quietly) and returns its
/// path; a missing eBPF toolchain is reported with the fix.
pub fn build_agent_release() -> anyhow::Result<PathBuf> {
    build_release(&["--bin", "ingress"])
        .context("building the agent (missing toolchain? run `cargo xtask setup`)")?;
    Ok(workspace_root().join("target/release/ingress"))
}

/// Builds one of the agent crate's examples in release mode; returns its
/// path.
pub fn build_example_release(name: &str) -> anyhow::Result<PathBuf> {
    build_release(&["--example", name]).with_context(|| format!("building the example {name}"))?;
    Ok(workspace_root().join("target/release/examples").join(name))
}

/// `cargo build --quiet --release --package ingress-userspace TARGET...`.
fn build_release(target: &[&str]) -> anyhow::Result<()> {
    run(Command::new("cargo")
        .args([
            "build",
            "--quiet",
            "--release",
            "--package",
            "ingress-userspace",
        ])
        .args(target)
        .current_dir(workspace_root()))
}
