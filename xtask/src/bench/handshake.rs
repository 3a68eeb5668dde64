//! Full TLS handshakes per second with `openssl s_time -new` (every
//! connection a full handshake, no resumption), several clients at once.

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;

use super::process::output_bounded;

/// `procs` × `taskset -c CPU openssl s_time -connect ADDR -new -time SECS`
/// at once; handshakes completed per second of wall time, all together.
pub fn full_handshakes_per_sec(
    openssl: &Path,
    cpu: u32,
    addr: std::net::SocketAddr,
    secs: u64,
    procs: usize,
    log_dir: &Path,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let runs: Vec<thread::JoinHandle<anyhow::Result<u64>>> = (0..procs)
        .map(|i| {
            let (openssl, log) = (
                openssl.to_path_buf(),
                log_dir.join(format!("s_time-{i}.out")),
            );
            thread::spawn(move || {
                let out = output_bounded(
                    Command::new("taskset")
                        .args(["-c", &cpu.to_string()])
                        .arg(&openssl)
                        .args(["s_time", "-connect", &addr.to_string(), "-new"])
                        .args(["-time", &secs.to_string()]),
                    Duration::from_secs(secs + 30),
                    &log,
                )?;
                connections(&out).context("no `N connections in` line from openssl s_time")
            })
        })
        .collect();
    let mut total = 0;
    for r in runs {
        total += r
            .join()
            .map_err(|_| anyhow::anyhow!("an s_time thread panicked"))??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// The handshakes s_time counted: `N connections in 0.90s; ...`.
fn connections(out: &str) -> Option<u64> {
    out.lines()
        .find(|l| l.contains(" connections in ") && l.contains("s;"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The command one client runs, as the report shows it.
pub fn describe(cpu: u32, secs: u64, procs: usize) -> String {
    format!("{procs} × taskset -c {cpu} openssl s_time -connect 127.0.0.1:PORT -new -time {secs}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_count() {
        let out = "*****\n\n1514 connections in 0.90s; 1682.22 connections/user sec, bytes read 0\n1514 connections in 3 real seconds, 0 bytes read per connection\n";
        assert_eq!(connections(out), Some(1514));
        assert_eq!(connections("error"), None);
    }
}
