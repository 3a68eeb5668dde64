//! `cargo xtask setup`: check each prerequisite, install what is missing,
//! say what was found and what was done. A second run installs nothing.

use std::{path::Path, process::Command};

use anyhow::bail;

use crate::cmd::{self, succeeds};

/// Debian packages the build needs: bpf-linker links against LLVM 22 (the
/// nightly's LLVM).
pub const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];

/// Debian packages the tests need besides the build's.
/// - iproute2, ethtool, util-linux: namespaces, veth, offload switches, setpriv.
/// - iptables, nftables: the L4 tests assert the node has no rule at all.
/// - iputils-ping: warms neighbour entries in the namespace tests.
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "util-linux",
    "iptables",
    "nftables",
    "iputils-ping",
];

/// Debian packages `cargo xtask kernels` needs (it installs them itself):
/// qemu, a static busybox for the guest's userland, cpio to pack its
/// initramfs.
pub const KERNEL_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "cpio"];

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

/// `build_only`: what `cargo build` needs and no more (the container image
/// build, `deploy/Dockerfile`); otherwise the tests' prerequisites too.
pub fn run(build_only: bool) -> anyhow::Result<()> {
    println!("setup: checking prerequisites");
    let mut report = Report {
        installed: Vec::new(),
    };
    let packages: Vec<&str> = if build_only {
        BUILD_PACKAGES.to_vec()
    } else {
        BUILD_PACKAGES
            .iter()
            .chain(TEST_PACKAGES)
            .copied()
            .collect()
    };
    debian_packages(&mut report, &packages)?;
    nightly_rust_src(&mut report)?;
    bpf_linker(&mut report)?;
    if !build_only {
        kubectl(&report)?;
        kubernetes_validate(&mut report)?;
    }
    if report.installed.is_empty() {
        println!("setup: every prerequisite is present; nothing to do");
    } else {
        println!("setup: installed {}", report.installed.join(", "));
    }
    Ok(())
}

/// Installs those of `packages` that are missing (root only), saying so.
pub fn ensure_debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    let mut report = Report {
        installed: Vec::new(),
    };
    debian_packages(&mut report, packages)
}

fn missing_debian_packages<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages
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

fn debian_packages(report: &mut Report, packages: &[&str]) -> anyhow::Result<()> {
    let missing = missing_debian_packages(packages);
    let fix = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if missing.is_empty() {
        report.found("Debian packages", &packages.join(" "));
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
    let still = missing_debian_packages(packages);
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

/// kubectl renders the kustomize overlays under `deploy/` (the client
/// alone, offline). The machines carry it; a missing one is named.
fn kubectl(report: &Report) -> anyhow::Result<()> {
    let out = Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            report.found(
                "kubectl",
                &text.split_whitespace().collect::<Vec<_>>().join(" "),
            );
            Ok(())
        }
        _ => bail!(
            "kubectl is missing (the deploy tests render the manifests with `kubectl kustomize`): install the Kubernetes client, version 1.32 or later, on PATH"
        ),
    }
}

fn kubernetes_validate_found() -> Option<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import kubernetes_validate.version as v; print(v.__version__)",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// kubernetes-validate (PyPI) checks the rendered manifests against the
/// Kubernetes schemas, which ship inside the package: it needs no network
/// once installed.
fn kubernetes_validate(report: &mut Report) -> anyhow::Result<()> {
    let wanted = crate::deploy::KUBERNETES_VALIDATE_VERSION;
    let fix = format!("python3 -m pip install kubernetes-validate=={wanted}");
    if kubernetes_validate_found().as_deref() == Some(wanted) {
        report.found("kubernetes-validate", &format!("{wanted} (python3)"));
        return Ok(());
    }
    report.installing(&format!("kubernetes-validate {wanted} (pip)"));
    let ok = succeeds(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("kubernetes-validate=={wanted}"),
    ]));
    if !ok || kubernetes_validate_found().as_deref() != Some(wanted) {
        bail!("kubernetes-validate could not be installed: run `{fix}`");
    }
    Ok(())
}
