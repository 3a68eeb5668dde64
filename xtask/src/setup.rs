//! `cargo xtask setup`: check each prerequisite, install what is missing,
//! say what was found and what was done. A second run installs nothing.

use std::{path::Path, process::Command};

use anyhow::bail;

use crate::cmd::{self, succeeds};

/// Debian packages the build and the tests need.
/// - llvm-22-dev and companions: bpf-linker links against LLVM 22 (the
///   nightly's LLVM).
/// - iproute2, ethtool, util-linux: namespaces, veth, offload switches, setpriv.
/// - iptables, nftables: the L4 tests assert the node has no rule at all, and
///   `cargo xtask bench l4` loads kube-proxy's rules into its node namespace
///   with `iptables-restore` (wrk and nginx it installs itself on demand).
/// - iputils-ping: warms neighbour entries in the namespace tests.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "ethtool",
    "util-linux",
    "iptables",
    "nftables",
    "iputils-ping",
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

struct Report {
    installed: Vec<String>,
}

impl Report {
    fn found(&self, what: &str, detail: &str) {
        println!("  ok         {what}: {detail}");
    }
    fn installing(&mut self, what: &str) {
        println!("  installing {what} ...");
        self.installed.push(what.to_string());
    }
}

pub fn run() -> anyhow::Result<()> {
    println!("setup: checking prerequisites");
    let mut report = Report {
        installed: Vec::new(),
    };
    debian_packages(&mut report)?;
    nightly_rust_src(&mut report)?;
    bpf_linker(&mut report)?;
    if report.installed.is_empty() {
        println!("setup: every prerequisite is present; nothing to do");
    } else {
        println!("setup: installed {}", report.installed.join(", "));
    }
    Ok(())
}

fn missing_debian_packages() -> Vec<&'static str> {
    DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

fn debian_packages(report: &mut Report) -> anyhow::Result<()> {
    let missing = missing_debian_packages();
    let fix = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if missing.is_empty() {
        report.found("Debian packages", &DEBIAN_PACKAGES.join(" "));
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "Debian packages {} are missing and setup is not root: run `{fix}` as root",
            missing.join(" ")
        );
    }
    report.installing(&format!("Debian packages {}", missing.join(" ")));
    let ok = succeeds(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    ) && succeeds(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    let still = missing_debian_packages();
    if !ok || !still.is_empty() {
        bail!(
            "Debian packages {} could not be installed: run `{fix}`",
            still.join(" ")
        );
    }
    Ok(())
}

fn nightly_sysroot() -> Option<String> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn has_rust_src(sysroot: &str) -> bool {
    Path::new(sysroot)
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

fn nightly_rust_src(report: &mut Report) -> anyhow::Result<()> {
    let fix = "rustup toolchain install nightly --profile minimal --component rust-src";
    if nightly_sysroot().is_none() {
        report.installing("the nightly Rust toolchain");
        if !succeeds(Command::new("rustup").args(fix.split(' ').skip(1)))
            || nightly_sysroot().is_none()
        {
            bail!("the nightly Rust toolchain could not be installed: run `{fix}`");
        }
    }
    let sysroot = nightly_sysroot().unwrap_or_default();
    let version =
        cmd::output(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]))
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
    if has_rust_src(&sysroot) {
        report.found("nightly rust-src", &version);
        return Ok(());
    }
    let fix = "rustup component add rust-src --toolchain nightly";
    report.installing("nightly rust-src");
    if !succeeds(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ])) || !has_rust_src(&sysroot)
    {
        bail!("nightly rust-src could not be installed: run `{fix}`");
    }
    Ok(())
}

/// `Some(description)` when bpf-linker runs and links LLVM 22.
fn bpf_linker_found() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let path = String::from_utf8_lossy(
        &Command::new("which")
            .arg("bpf-linker")
            .output()
            .ok()?
            .stdout,
    )
    .trim()
    .to_string();
    let ldd = Command::new("ldd").arg(&path).output().ok()?;
    let libs = String::from_utf8_lossy(&ldd.stdout);
    // A statically linked LLVM shows no libLLVM: accept what runs then.
    if libs.contains("libLLVM") && !libs.contains("libLLVM.so.22") {
        return None;
    }
    Some(format!("{version} (LLVM 22) at {path}"))
}

fn bpf_linker(report: &mut Report) -> anyhow::Result<()> {
    let fix = format!(
        "LLVM_PREFIX={LLVM_PREFIX} PATH={LLVM_PREFIX}/bin:$PATH cargo install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features llvm-22 --force"
    );
    if let Some(found) = bpf_linker_found() {
        report.found("bpf-linker", &found);
        return Ok(());
    }
    report.installing(&format!(
        "bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 5 minutes)"
    ));
    let path = format!(
        "{LLVM_PREFIX}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let ok = succeeds(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22", "--force"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path),
    );
    if !ok || bpf_linker_found().is_none() {
        bail!("bpf-linker could not be installed: run `{fix}` (and put ~/.cargo/bin on PATH)");
    }
    Ok(())
}
