//! A minimal HTTP/1.1 client for the benches' checks and polls (one request
//! per connection, bounded by timeouts), and Prometheus text parsing.

use std::{
    collections::HashMap,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::process::check_interrupted;

pub use crate::testbed::http::{get, parse_metrics};

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
