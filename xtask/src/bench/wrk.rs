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
    /// https wrk resumes the TLS session: a resumed handshake each).
    pub close: bool,
}

impl Load<'_> {
    pub fn args(&self, secs: u64, url: &str) -> Vec<String> {
        self.args_with(secs, url, &[])
    }

    /// The arguments with extra request headers (`-H` each).
    pub fn args_with(&self, secs: u64, url: &str, headers: &[&str]) -> Vec<String> {
        let mut args = vec![
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{secs}s"),
            "--latency".to_string(),
            "-H".to_string(),
            format!("Host: {}", self.host),
        ];
        if self.close {
            args.push("-H".to_string());
            args.push("Connection: close".to_string());
        }
        for h in headers {
            args.push("-H".to_string());
            args.push(h.to_string());
        }
        args.push(url.to_string());
        args
    }

    /// The command line run inside namespace `ns`, as the report shows it
    /// (`ip netns exec NS` left out).
    pub fn describe_with(&self, secs: u64, url: &str, headers: &[&str]) -> String {
        let args: Vec<String> = self
            .args_with(secs, url, headers)
            .into_iter()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect();
        format!("taskset -c {} wrk {}", self.cpu, args.join(" "))
    }

    /// Runs wrk inside network namespace `ns` for `secs` seconds (bounded),
    /// with extra request headers, and parses its report.
    pub fn run_in(
        &self,
        ns: &str,
        secs: u64,
        url: &str,
        headers: &[&str],
        log: &Path,
    ) -> anyhow::Result<WrkResult> {
        let out = output_bounded(
            Command::new("ip")
                .args(["netns", "exec", ns, "taskset", "-c", &self.cpu.to_string()])
                .arg(self.wrk)
                .args(self.args_with(secs, url, headers)),
            Duration::from_secs(secs + 10),
            log,
        )?;
        parse(&out).with_context(|| format!("reading wrk's report:\n{out}"))
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
    fn extra_headers_come_before_the_url() {
        let load = Load {
            wrk: Path::new("wrk"),
            cpu: 1,
            threads: 1,
            connections: 8,
            host: "bench.local",
            close: false,
        };
        let args = load.args_with(3, "http://198.18.0.1:30080/", &["Connection: close"]);
        assert_eq!(
            args[args.len() - 3..],
            ["-H", "Connection: close", "http://198.18.0.1:30080/"]
        );
        assert_eq!(load.args(3, "u"), load.args_with(3, "u", &[]));
        assert!(
            load.describe_with(3, "u", &["Connection: close"])
                .ends_with("-H 'Host: bench.local' -H 'Connection: close' u")
        );
    }

    #[test]
    fn units_and_missing_lines() {
        assert_eq!(time_us("2.00s"), Some(2e6));
        assert_eq!(time_us("1.50m"), Some(90e6));
        assert!(parse("Requests/sec: 10\n").is_err());
    }
}
