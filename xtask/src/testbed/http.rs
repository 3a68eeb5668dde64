//! A minimal HTTP/1.1 client (one request per connection, bounded by
//! timeouts) and Prometheus text parsing, for the demo, the benches and the
//! tests' looks at the agent.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

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
pub fn dechunk(mut rest: &str) -> String {
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
