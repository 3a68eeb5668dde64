//! The real `ingress` binary running inside a namespace, and its admin
//! endpoints.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::in_netns;

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
}

impl Agent {
    /// Starts `ingress run ARGS` in `ns` (`ip netns exec` execs it, so the
    /// child's pid is the agent's) and waits for /readyz.
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
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("run")
            .args(args)
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
