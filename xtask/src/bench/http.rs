//! A minimal HTTP/1.1 client for the benches' checks and polls (one request
//! per connection, bounded by timeouts), and Prometheus text parsing.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::process::check_interrupted;

/// `GET path` with `Host: host` and `Connection: close`: (status, body).
pub fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text:?}")))?;
    let head_end = text.find("\r\n\r\n").map(|i| i + 4).unwrap_or(text.len());
    let head = &text[..head_end];
    let mut body = text[head_end..].to_string();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

/// Joins a chunked body's chunks (enough for the small bodies checked here).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `GET host path` until it answers `want`, for at most `limit`,
/// `every` apart; returns the time it took.
pub fn wait_for_status(
    addr: SocketAddr,
    host: &str,
    path: &str,
    want: u16,
    limit: Duration,
    every: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let last = match get(addr, host, path) {
            Ok((s, _)) if s == want => return Ok(start.elapsed()),
            Ok((s, body)) => format!("{s} {}", body.trim()),
            Err(e) => e.to_string(),
        };
        if start.elapsed() > limit {
            bail!(
                "GET http://{addr}{path} (Host: {host}) not {want} within {limit:?}: last {last}"
            );
        }
        check_interrupted()?;
        thread::sleep(every);
    }
}

/// The admin listener's metrics as `name{labels}` -> value.
pub fn metrics(admin: SocketAddr) -> anyhow::Result<HashMap<String, f64>> {
    let (status, body) =
        get(admin, "admin", "/metrics").with_context(|| format!("GET http://{admin}/metrics"))?;
    if status != 200 {
        bail!("GET http://{admin}/metrics answered {status}");
    }
    Ok(parse_metrics(&body))
}

/// One metric without labels from the admin listener.
pub fn metric(admin: SocketAddr, name: &str) -> anyhow::Result<f64> {
    metrics(admin)?
        .get(name)
        .copied()
        .with_context(|| format!("no metric {name} on http://{admin}/metrics"))
}

/// Parses Prometheus/OpenMetrics text into `name{labels}` -> value.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nok\n\r\n0\r\n\r\n"), "ok\n");
        assert_eq!(dechunk("2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"), "abc");
    }

    #[test]
    fn metrics_without_labels() {
        let m = parse_metrics(
            "# HELP x y\ningress_snapshot_generation 3\ningress_snapshot_apply_seconds 0.25\n# EOF\n",
        );
        assert_eq!(m["ingress_snapshot_generation"], 3.0);
        assert_eq!(m["ingress_snapshot_apply_seconds"], 0.25);
    }
}
