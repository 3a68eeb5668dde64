//! The Kubernetes manifests under `deploy/`: render each overlay with
//! `kubectl kustomize` and validate every object against the schemas of the
//! Kubernetes version the project targets, with the `kubernetes-validate`
//! package (its schemas ship inside it). Both run in a network namespace
//! of their own, with no network at all, so nothing is fetched.
//!
//! `cargo xtask test` runs [`check`]; `ingress-userspace/tests/deploy.rs`
//! uses [`render`] and [`validate`] for its checks of the agent's arguments
//! and RBAC.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::cmd::workspace_root;

/// The Kubernetes version the manifests target: the API version the agent
/// is built against (k8s-openapi's `v1_33` feature in ingress-userspace).
pub const KUBERNETES_VERSION: &str = "1.33.0";

/// The `kubernetes-validate` release `cargo xtask setup` installs with pip.
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// `deploy/` in the workspace.
pub fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

/// Every overlay an operator may apply: each directory under
/// `deploy/overlays` that holds a `kustomization.yaml`, sorted.
pub fn overlays() -> anyhow::Result<Vec<PathBuf>> {
    let dir = deploy_dir().join("overlays");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.join("kustomization.yaml").is_file() {
            out.push(path);
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("no overlay (a kustomization.yaml) under {}", dir.display());
    }
    Ok(out)
}

/// A command that runs with no network: a new, empty network namespace.
fn offline(program: &str) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--net", "--", program]);
    c
}

/// `kubectl kustomize DIR`, offline: the rendered YAML stream.
pub fn render(dir: &Path) -> anyhow::Result<String> {
    let out = offline("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("running `unshare --net -- kubectl kustomize` (kubectl is needed: run `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("kubectl kustomize printed something that is not UTF-8")
}

/// Validates every object of a YAML stream against the Kubernetes
/// [`KUBERNETES_VERSION`] schemas, strictly (unknown fields are errors), and
/// returns how many objects passed. An object whose kind has no schema is an
/// error too, not the tool's warning.
pub fn validate(yaml: &str) -> anyhow::Result<usize> {
    let mut child = offline("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBERNETES_VERSION,
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `python3 -m kubernetes_validate` (run `cargo xtask setup`)")?;
    child
        .stdin
        .take()
        .context("kubernetes-validate's stdin")?
        .write_all(yaml.as_bytes())
        .context("writing to kubernetes-validate")?;
    let out = child
        .wait_with_output()
        .context("waiting for kubernetes-validate")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let problems: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with("INFO "))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if !out.status.success() || !problems.is_empty() {
        bail!(
            "kubernetes-validate (Kubernetes {KUBERNETES_VERSION}, strict) refused: {}{}",
            problems.join("; "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let passed = stdout.lines().filter(|l| l.contains(" passed ")).count();
    if passed == 0 {
        bail!("kubernetes-validate saw no object");
    }
    Ok(passed)
}

/// Renders and validates every overlay, one line each.
pub fn check() -> anyhow::Result<()> {
    for dir in overlays()? {
        let name = dir
            .strip_prefix(deploy_dir())
            .unwrap_or(&dir)
            .display()
            .to_string();
        let yaml = render(&dir)?;
        let n = validate(&yaml).with_context(|| format!("deploy/{name}"))?;
        println!(
            "  deploy/{name}: {n} objects, valid against Kubernetes {KUBERNETES_VERSION} (strict)"
        );
    }
    Ok(())
}
