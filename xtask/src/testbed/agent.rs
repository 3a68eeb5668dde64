//! The real `ingress` binary running inside a namespace, and its admin
//! endpoints.

use std::{
    collections::HashMap,
    fs::File,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use super::in_netns;

/// A pin directory of its own for each agent a test runs (on the host's
/// bpffs, which the agent mounts when nothing is mounted there).
pub fn bpffs_test_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    PathBuf::from(format!(
        "/sys/fs/bpf/ingress-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// The agent running inside a namespace (or on the host's loopback); killed
/// on drop if still running.
pub struct Agent {
    pub child: Child,
    /// `None`: the agent runs in this process's namespace.
    pub ns: Option<String>,
    pub admin: SocketAddr,
    /// The agent's stderr goes to a file, so a chatty agent never blocks on
    /// a full pipe.
    log: PathBuf,
    /// The pin directory made up for this agent (none was given): removed
    /// on drop, which detaches whatever the agent left pinned.
    own_bpffs_dir: Option<PathBuf>,
}

impl Agent {
    /// Starts `ingress run ARGS` in `ns` and waits for /readyz. The child
    /// joins the network namespace only (not a mount namespace of its own
    /// as under `ip netns exec`), so its bpffs pins are the host's and a
    /// later agent or `ingress bpf` finds them. Without `--bpffs-dir` in
    /// ARGS it gets a directory of its own, removed on drop.
    pub fn start(bin: &Path, ns: &str, args: &[&str], admin: SocketAddr) -> Agent {
        Self::spawn(bin, Some(ns), args, admin)
    }

    /// Starts `ingress run ARGS` in this namespace (loopback tests).
    pub fn start_local(bin: &Path, args: &[&str], admin: SocketAddr) -> Agent {
        Self::spawn(bin, None, args, admin)
    }

    fn spawn(bin: &Path, ns: Option<&str>, args: &[&str], admin: SocketAddr) -> Agent {
        let log = std::env::temp_dir().join(format!(
            "{}-agent-{}-{}.log",
            ns.unwrap_or("local"),
            std::process::id(),
            admin.port()
        ));
        let log_file = std::fs::File::create(&log).expect("creating the agent log");
        let mut cmd = Command::new(bin);
        if let Some(ns) = ns {
            let path = format!("/run/netns/{ns}");
            let netns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: setns is async-signal-safe; the fd stays open (owned
            // by the closure) until exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let own_bpffs_dir = (ns.is_some() && !args.contains(&"--bpffs-dir")).then(bpffs_test_dir);
        if let Some(dir) = &own_bpffs_dir {
            cmd.arg("run").arg("--bpffs-dir").arg(dir);
        } else {
            cmd.arg("run");
        }
        cmd.args(args)
            .arg("--admin-listen")
            .arg(admin.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd.spawn().expect("spawning the agent");
        let mut agent = Agent {
            child,
            ns: ns.map(str::to_string),
            admin,
            log,
            own_bpffs_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = agent.child.try_wait().expect("try_wait") {
                let out = agent.take_output();
                panic!("agent exited early with {status}: {out}");
            }
            if agent.get("/readyz").map(|(s, _)| s == 200).unwrap_or(false) {
                return agent;
            }
            assert!(Instant::now() < deadline, "agent not ready within 20 s");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET on the admin listener: (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let (addr, path) = (self.admin, path.to_string());
        match &self.ns {
            Some(ns) => in_netns(ns, move || http_get(addr, &path)),
            None => http_get(addr, &path),
        }
    }

    /// The agent's metrics as `name{labels}` -> value.
    pub fn metrics(&self) -> HashMap<String, f64> {
        let (status, body) = self.get("/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        parse_metrics(&body)
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Sends `signal` and waits (bounded) for the exit status.
    pub fn stop(mut self, signal: libc::c_int) -> (ExitStatus, String) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let out = self.take_output();
                return (status, out);
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit within 20 s of the signal"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the agent wrote to stderr so far.
    pub fn take_output(&mut self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
        if let Some(dir) = &self.own_bpffs_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `GET path` on the admin listener: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    super::http::get(addr, "admin", path)
}

pub use super::http::parse_metrics;

/// Runs the binary to completion with `args` and returns (status, stderr).
pub fn run_to_exit(cmd: &mut Command) -> (ExitStatus, String) {
    let out = cmd.output().expect("spawning");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
