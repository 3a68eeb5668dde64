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
    let cargo = |what: &str, args: &[&str]| {
        println!("test: {what}: cargo {}", args.join(" "));
        cmd::run(Command::new("cargo").args(args).current_dir(&root))
            .with_context(|| format!("{what} failed"))
    };
    cargo("formatting", &["fmt", "--all", "--", "--check"])?;
    cargo(
        "clippy",
        &["clippy", "--all-targets", "--", "-D", "warnings"],
    )?;
    println!(
        "test: deploy manifests: kubectl kustomize and kubernetes-validate, offline, for every overlay"
    );
    crate::deploy::check().context("the deploy manifests failed")?;
    cargo("tests", &["test", "--no-fail-fast"])?;
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
    println!(
        "test: older kernels: cargo xtask kernels --verify-only (Debian's 5.10, 6.1 and 6.12 under qemu)"
    );
    crate::kernels::run(&[], true).context("the programs do not verify on every kernel")?;
    println!("test: all passed");
    Ok(())
}
