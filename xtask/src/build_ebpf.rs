//! `cargo xtask build-ebpf`: the same build that `ingress-userspace/build.rs`
//! runs (through aya-build) for the object the agent embeds, done here on
//! its own so the object can be inspected.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};

use crate::cmd::{self, workspace_root};

pub fn run() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join("target/ebpf");
    // Flags as aya-build passes them: the target arch cfg, full debug info
    // and BTF from bpf-linker.
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    cmd::run(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "build",
                "--package",
                "ingress-ebpf",
                "--bins",
            ])
            .args([
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .current_dir(&root),
    )
    .context("building ingress-ebpf (is the toolchain there? `cargo xtask setup`)")?;
    let object = target_dir.join("bpfel-unknown-none/release/ingress-ebpf");
    let bytes = std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    if !bytes.starts_with(b"\x7fELF") {
        bail!("{} is not an ELF object", object.display());
    }
    let has = |name: &[u8]| bytes.windows(name.len()).any(|w| w == name);
    if !has(b".BTF\0") {
        bail!("{} has no .BTF section", object.display());
    }
    println!(
        "build-ebpf: {} ({} bytes, BTF present, programs: xdp {}, classifier {})",
        object.display(),
        bytes.len(),
        has(b"ingress_xdp\0"),
        has(b"ingress_tc_egress\0"),
    );
    println!("build-ebpf: the agent embeds this same build (ingress-userspace/build.rs)");
    Ok(object)
}
