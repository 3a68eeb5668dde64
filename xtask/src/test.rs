//! `cargo xtask test`: every check and test the project has, in one run.
//! The packet fixtures and the namespace tests need root and are never
//! skipped: without root this task stops at once and says so.

use std::process::Command;

use anyhow::{Context, bail};

use crate::cmd::{self, workspace_root};

pub fn run() -> anyhow::Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !cmd::is_root() {
        bail!(
            "cargo xtask test needs root: the eBPF packet fixtures and the namespace tests are mandatory"
        );
    }
    println!("test: CI={ci}; privileged tests are mandatory and run now");
    let root = workspace_root();
    let steps: [(&str, Vec<&str>); 3] = [
        ("formatting", vec!["fmt", "--all", "--", "--check"]),
        (
            "clippy",
            vec!["clippy", "--all-targets", "--", "-D", "warnings"],
        ),
        ("tests", vec!["test", "--no-fail-fast"]),
    ];
    for (what, args) in steps {
        println!("test: {what}: cargo {}", args.join(" "));
        cmd::run(Command::new("cargo").args(&args).current_dir(&root))
            .with_context(|| format!("{what} failed"))?;
    }
    println!("test: clippy on the eBPF programs (nightly, bpfel-unknown-none)");
    cmd::run(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "ingress-ebpf",
            ])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"])
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "--cfg=bpf_target_arch=\"x86_64\"",
            )
            .current_dir(&root),
    )
    .context("clippy on ingress-ebpf failed")?;
    println!("test: all passed");
    Ok(())
}
