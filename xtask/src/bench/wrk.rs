//! Running wrk and reading its `--latency` report.

use std::{path::Path, process::Command, time::Duration};

use anyhow::Context;

use super::process::output_bounded;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    /// Responses that were not 2xx or 3xx.
    pub non_2xx: u64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
}

/// The load: `taskset -c CPU wrk -t1 -c64 -dSECSs --latency -H 'Host: HOST' URL`.
pub struct Load<'a> {
    pub wrk: &'a Path,
    pub cpu: u32,
    pub threads: u32,
    pub connections: u32,
    pub host: &'a str,
    /// Send `Connection: close`: every request on a new connection (over
    /// https, a full TLS handshake each: wrk does not resume sessions).
    pub close: bool,
}

impl Load<'_> {
    pub fn args(&self, secs: u64, url: &str) -> Vec<String> {
        vec![
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{secs}s"),
            "--latency".to_string(),
            "-H".to_string(),
            format!("Host: {}", self.host),
        ]
        .into_iter()
        .chain(
            self.close
                .then(|| ["-H".to_string(), "Connection: close".to_string()])
                .into_iter()
                .flatten(),
        )
        .chain([url.to_string()])
        .collect()
    }

    /// The command line as the report shows it.
    pub fn describe(&self, secs: u64, url: &str) -> String {
        let args: Vec<String> = self
            .args(secs, url)
            .into_iter()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect();
        format!("taskset -c {} wrk {}", self.cpu, args.join(" "))
    }

    /// Runs wrk for `secs` seconds (bounded) and parses its report.
    pub fn run(&self, secs: u64, url: &str, log: &Path) -> anyhow::Result<WrkResult> {
        let out = output_bounded(
            Command::new("taskset")
                .args(["-c", &self.cpu.to_string()])
                .arg(self.wrk)
                .args(self.args(secs, url)),
            Duration::from_secs(secs + 20),
            log,
        )?;
        parse(&out).with_context(|| format!("reading wrk's report:\n{out}"))
    }
}

/// Parses wrk's report (with `--latency`).
pub fn parse(out: &str) -> anyhow::Result<WrkResult> {
    let mut requests_per_sec = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = None;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = time_us(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = time_us(v.trim());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            socket_errors = v
                .split(',')
                .filter_map(|f| f.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if line.contains(" requests in ") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    Ok(WrkResult {
        requests_per_sec: requests_per_sec.context("no Requests/sec line")?,
        p50_us: p50.context("no 50% latency line (was --latency given?)")?,
        p99_us: p99.context("no 99% latency line")?,
        requests: requests.context("no 'N requests in' line")?,
        non_2xx,
        socket_errors,
    })
}

/// wrk's durations ("412.00us", "1.23ms", "2.00s", "1.50m") in microseconds.
fn time_us(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3600e6)
    } else {
        (v, 1.0)
    };
    num.trim().parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 10s test @ http://127.0.0.1:18080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.52ms  310.21us   9.87ms   88.12%
    Req/Sec    42.10k     1.20k   44.00k    71.00%
  Latency Distribution
     50%  412.50us
     75%    1.60ms
     90%    1.80ms
     99%    2.50ms
  418765 requests in 10.00s, 61.11MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  41876.12
Transfer/sec:      6.11MB
";

    #[test]
    fn reads_the_latency_report() {
        let r = parse(REPORT).unwrap();
        assert_eq!(r.requests_per_sec, 41876.12);
        assert_eq!(r.p50_us, 412.5);
        assert_eq!(r.p99_us, 2500.0);
        assert_eq!(r.requests, 418765);
        assert_eq!(r.non_2xx, 7);
        assert_eq!(r.socket_errors, 3);
    }

    #[test]
    fn units_and_missing_lines() {
        assert_eq!(time_us("2.00s"), Some(2e6));
        assert_eq!(time_us("1.50m"), Some(90e6));
        assert!(parse("Requests/sec: 10\n").is_err());
    }
}
