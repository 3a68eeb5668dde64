//! Builds the eBPF programs (`ingress-ebpf`, for `bpfel-unknown-none` with the
//! nightly toolchain, `-Z build-std=core`, bpf-linker and BTF) and leaves the
//! object in OUT_DIR, where `datapath::object` embeds it. A missing
//! prerequisite stops the build with one line that names `cargo xtask setup`.

use std::{path::Path, process::Command};

fn fail(what: &str) -> ! {
    println!("cargo:warning={what}: run `cargo xtask setup` (it installs the eBPF toolchain)");
    eprintln!("error: {what}: run `cargo xtask setup` (it installs the eBPF toolchain)");
    std::process::exit(1);
}

fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    let linker =
        which::which("bpf-linker").unwrap_or_else(|_| fail("bpf-linker not found on PATH"));
    println!("cargo:rerun-if-changed={}", linker.display());

    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .unwrap_or_else(|| fail("the nightly Rust toolchain is missing"));
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if !Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
    {
        fail("the nightly toolchain lacks the rust-src component");
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ingress-ebpf");
    let root = root
        .to_str()
        .unwrap_or_else(|| fail("the workspace path is not UTF-8"));
    let package = aya_build::Package {
        name: "ingress-ebpf",
        root_dir: root,
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Nightly) {
        eprintln!("error: building the eBPF programs failed: {e:#}");
        std::process::exit(1);
    }
}
