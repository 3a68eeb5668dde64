//! What a bench starts and creates: processes and temp dirs that are cleaned
//! up on drop (so also on an error, and on Ctrl-C, which turns into an error
//! at the next wait), commands with a time bound, and the bench's tools.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::cmd::{self, succeeds};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into an error at the next wait or pause, so that
/// the drop guards stop what the bench started and remove its temp dirs.
pub fn catch_interrupts() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe; exec resets it in the children.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d` in short slices, failing as soon as the bench is interrupted.
pub fn pause(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// A temp directory, removed with everything in it on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("xtask-bench-{tag}-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Creates (if needed) and returns the subdirectory `name`.
    pub fn subdir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.0.join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A long-running process the bench started, with stdout and stderr in a log
/// file. Stopped on drop (SIGTERM, then SIGKILL), together with the children
/// it had (nginx's worker).
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    stopped: bool,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log handle")?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of what the process wrote.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fails, with the end of its log, when the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("try_wait")? {
            bail!(
                "{} exited with {status}; its log ends with:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Resident memory of the process and its direct children, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let mut total = rss_kib(self.pid())?;
        for (pid, _) in children(self.pid()) {
            total += rss_kib(pid).unwrap_or(0);
        }
        Ok(total)
    }

    /// SIGTERM, up to 10 s for the exit, then SIGKILL; children left behind
    /// (still the same program) are killed too.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        self.stopped = true;
        if let Some(status) = self.child.try_wait().context("try_wait")? {
            return Ok(status);
        }
        let kids = children(self.pid());
        // SAFETY: kill on our own child's pid, which has not been reaped.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().context("try_wait")? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().context("wait")?;
            }
            thread::sleep(Duration::from_millis(10));
        };
        for (pid, comm) in kids {
            if std::fs::read_to_string(format!("/proc/{pid}/comm")).ok() == Some(comm) {
                // SAFETY: a process we started (checked by its name), by pid.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        Ok(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop();
        }
    }
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The direct children of `pid`: (pid, contents of /proc/PID/comm).
fn children(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // The fields after the parenthesised name: state, ppid, ...
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).ok()?;
            (ppid == pid).then_some((p, comm))
        })
        .collect()
}

/// Runs `cmd` to completion within `limit` (killed after it) and returns
/// its stdout; fails on a non-zero exit with the end of its output.
pub fn output_bounded(cmd: &mut Command, limit: Duration, log: &Path) -> anyhow::Result<String> {
    let mut proc = Proc::spawn("command", cmd, log)?;
    let deadline = Instant::now() + limit;
    loop {
        check_interrupted()?;
        if let Some(status) = proc.child.try_wait().context("try_wait")? {
            proc.stopped = true;
            let out = std::fs::read_to_string(log).unwrap_or_default();
            if !status.success() {
                bail!("{cmd:?} failed with {status}: {}", proc.log_tail());
            }
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!("{cmd:?} did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `name` on $PATH or in the sbin directories (root's nginx is in /usr/sbin).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Finds each `(program, Debian package)`, installing the missing packages
/// with apt-get (as root), and returns the programs' paths.
pub fn ensure_tools(tools: &[(&str, &str)]) -> anyhow::Result<Vec<PathBuf>> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(bin, _)| find_tool(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        let fix = format!("apt-get install -y {}", missing.join(" "));
        if !cmd::is_root() {
            bail!(
                "the bench needs {} and is not root: run `{fix}`",
                missing.join(" ")
            );
        }
        println!("bench: installing {}", missing.join(" "));
        let install = || {
            succeeds(
                Command::new("apt-get")
                    .args(["install", "-y", "-qq", "--no-install-recommends"])
                    .args(&missing)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        };
        // An out-of-date package index is the usual reason an install fails.
        if !install() {
            cmd::run(
                Command::new("apt-get")
                    .args(["update", "-qq"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
            .context("apt-get update")?;
            if !install() {
                bail!("installing {} failed: run `{fix}`", missing.join(" "));
            }
        }
    }
    tools
        .iter()
        .map(|(bin, pkg)| {
            find_tool(bin).with_context(|| format!("{bin} not found after installing {pkg}"))
        })
        .collect()
}

/// Fails naming the first of `addrs` that something already listens on.
pub fn ensure_free(addrs: &[SocketAddr]) -> anyhow::Result<()> {
    for a in addrs {
        TcpListener::bind(a).with_context(|| {
            format!("{a} is taken (another bench still running?); the bench needs it free")
        })?;
    }
    Ok(())
}
