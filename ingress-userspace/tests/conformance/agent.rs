//! The `ingress` binary under test, in standalone mode: its own temporary
//! manifests directory and its own loopback ports. Killed when dropped.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::client;

/// The one manifest file; rewritten whole (renamed over) on every change, so
/// that any reload the agent makes sees a complete configuration.
const MANIFEST: &str = "cluster.yaml";
/// Bound on start-up (first configuration applied) and on each reload.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?)
}

impl Agent {
    /// Starts the agent on `manifest` and waits until it is ready (its first
    /// configuration is applied by then).
    pub async fn start(manifest: &str) -> anyhow::Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("ingress-conformance-")
            .tempdir()
            .context("creating the agent's directory")?;
        std::fs::create_dir(dir.path().join("manifests"))?;
        std::fs::create_dir(dir.path().join("staging"))?;
        std::fs::write(dir.path().join("manifests").join(MANIFEST), manifest)?;
        let mut agent = Agent {
            child: None,
            http: free_port()?,
            https: free_port()?,
            admin: free_port()?,
            dir,
        };
        // A port taken between the probe and the agent's bind: try again.
        for attempt in 1..=3 {
            agent.spawn()?;
            match agent.wait_ready().await {
                Ok(()) => return Ok(agent),
                Err(e) => {
                    let exited = agent
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    agent.stop();
                    if attempt < 3 && exited.is_some() && agent.log().contains("binding the") {
                        agent.http = free_port()?;
                        agent.https = free_port()?;
                        agent.admin = free_port()?;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        unreachable!("the loop returns")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = File::create(self.log_path())?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingress"));
        cmd.arg("run")
            .arg("--manifests")
            .arg(self.manifests())
            .arg("--http-listen")
            .arg(self.http.to_string())
            .arg("--https-listen")
            .arg(self.https.to_string())
            // The Ingress spec defines no redirect, and the suite expects
            // plain HTTP to a host listed under spec.tls to be served (200),
            // so the agent's ingress-nginx-style redirect is off here.
            .arg("--ssl-redirect")
            .arg("false")
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .arg("--xdp-mode")
            .arg("off")
            .arg("--ingress-class")
            .arg("ingress-ebpf")
            .arg("--node-name")
            .arg("conformance")
            .env("RUST_LOG", "info")
            .env_remove("INGRESS_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // The agent dies with this process, even when it is killed.
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().context("starting the ingress binary")?);
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the agent exited ({status}) before it was ready; its log:\n{}",
                    self.log_tail(15)
                );
            }
            if let Ok(r) = client::send(self.admin, "GET", &self.admin.to_string(), "/readyz").await
                && r.status == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    self.log_tail(15)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    async fn admin_get(&self, path: &str) -> anyhow::Result<client::Reply> {
        let r = client::send(self.admin, "GET", &self.admin.to_string(), path).await?;
        if r.status != 200 {
            bail!("admin {path} answered {}: {}", r.status, r.text());
        }
        Ok(r)
    }

    /// `ingress_snapshot_generation` from /metrics.
    pub async fn generation(&self) -> anyhow::Result<i64> {
        let text = self.admin_get("/metrics").await?.text();
        text.lines()
            .find_map(|l| {
                // `ingress_snapshot_generation 3` (labels, if any, before the value).
                let rest = l.strip_prefix("ingress_snapshot_generation")?;
                if !rest.starts_with([' ', '{']) {
                    return None;
                }
                rest.rsplit(' ').next()?.trim().parse::<f64>().ok()
            })
            .map(|g| g as i64)
            .context("/metrics has no ingress_snapshot_generation")
    }

    /// The parsed `/status/ingresses`.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        self.admin_get("/status/ingresses").await?.json()
    }

    /// Replaces the manifests with `manifest` and waits until the agent has
    /// applied them.
    pub async fn apply(&self, manifest: &str) -> anyhow::Result<()> {
        let before = self.generation().await?;
        let staged = self.dir.path().join("staging").join(MANIFEST);
        std::fs::write(&staged, manifest)?;
        rename(&staged, &self.manifests().join(MANIFEST))?;
        let deadline = Instant::now() + APPLY_TIMEOUT;
        loop {
            if self.generation().await? > before {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not apply the new manifests within {APPLY_TIMEOUT:?} (generation stays {before}); its log:\n{}",
                    self.log_tail(15)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn rename(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))
}
