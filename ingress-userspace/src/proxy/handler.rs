//! One request through the proxy: limits, routing, forwarding with retries
//! on connect failure, and the answer.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use http_body_util::BodyExt;
use hyper::{
    Request, Response, StatusCode, Uri, Version,
    body::Incoming,
    header::{self, HeaderValue},
    http::request::Parts,
};
use hyper_util::rt::TokioIo;

use super::{
    Proxy, balancer,
    body::{AccessRecord, BodyError, BodyTooLarge, LoggedBody, prebuffer},
    headers::{self, Forwarded},
    responses::{not_found, plain, redirect},
    upstream::{BoxError, ConnectError, UpBody, Upstreams},
};
use crate::model::{RouteTarget, Snapshot, UpstreamProtocol, router::normalize_request_host};

/// The client connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub scheme: &'static str,
}

/// Serves one request; never fails (errors become status codes).
pub async fn handle(
    proxy: Arc<Proxy>,
    pool: Arc<Upstreams>,
    conn: ConnInfo,
    mut req: Request<Incoming>,
) -> Response<LoggedBody> {
    let start = Instant::now();
    let request_id = headers::ensure_request_id(req.headers_mut());
    let raw_host = request_host(&req);
    let snapshot = proxy.snapshot();
    let host = raw_host.as_deref().and_then(normalize_request_host);
    let host_label = host
        .as_ref()
        .and_then(|h| snapshot.host_labels.get(h))
        .unwrap_or(&proxy.labels.other)
        .clone();
    let mut record = AccessRecord {
        metrics: proxy.metrics.clone(),
        start,
        request_id,
        method: req.method().clone(),
        host: raw_host.clone().unwrap_or_else(|| "-".into()),
        host_label,
        path: req.uri().path().to_string(),
        status: 0,
        service: proxy.labels.none.clone(),
        upstream: None,
        upstream_time: None,
        bytes_in: 0,
    };
    let resp = forward(
        &proxy,
        &pool,
        &snapshot,
        conn,
        req,
        raw_host,
        host,
        &mut record,
    )
    .await;
    record.status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, LoggedBody::new(body, record))
}

/// The Host: the URI's authority (HTTP/2, absolute-form), else the header.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    proxy: &Proxy,
    pool: &Upstreams,
    snapshot: &Snapshot,
    conn: ConnInfo,
    mut req: Request<Incoming>,
    raw_host: Option<String>,
    host: Option<String>,
    record: &mut AccessRecord,
) -> Response<UpBody> {
    let cfg = &proxy.config;
    // Limits and malformed requests: answered here, never reach a backend.
    if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > cfg.max_uri_bytes {
        return plain(StatusCode::URI_TOO_LONG, "request URI too long");
    }
    if headers::header_bytes(req.headers()) > cfg.max_header_bytes {
        return plain(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large",
        );
    }
    match (&raw_host, &host) {
        (None, _) if req.version() == Version::HTTP_11 => {
            return plain(StatusCode::BAD_REQUEST, "HTTP/1.1 request without Host");
        }
        (Some(_), None) => return plain(StatusCode::BAD_REQUEST, "invalid Host"),
        _ => {}
    }
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return plain(StatusCode::BAD_REQUEST, "more than one Host header");
    }

    let backend = match snapshot.router.route(host.as_deref(), req.uri().path()) {
        RouteTarget::NotFound => return not_found(),
        RouteTarget::Backend(id) => match snapshot.backend(id) {
            Some(b) => b,
            None => return not_found(),
        },
    };
    record.service = backend.label();
    if conn.scheme == "http"
        && let Some(h) = host.as_deref()
        && (backend.policy.force_ssl_redirect
            || (backend.policy.ssl_redirect && snapshot.tls.has_host(h)))
    {
        proxy.metrics.redirects.inc();
        return https_redirect(h, cfg.https_port, req.uri());
    }
    if let Some(problem) = &backend.problem {
        return plain(StatusCode::SERVICE_UNAVAILABLE, problem);
    }
    if backend.endpoints.is_empty() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("Service {} has no ready endpoint", record.service),
        );
    }

    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cfg.max_body_bytes) {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let upgrade = headers::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let body = match prebuffer(body, cfg.prebuffer_bytes, cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        Err(BodyError::Malformed(e)) => {
            tracing::debug!(error = %e, "malformed request body");
            return plain(StatusCode::BAD_REQUEST, "malformed request body");
        }
    };
    if let super::body::RequestBody::Full(b) = &body {
        record.bytes_in = b.len() as u64;
    }
    let mut body = Some(body.into_upstream());
    let protocol = backend.protocol;
    let template = upstream_parts(parts, conn, raw_host.as_deref(), upgrade, protocol);

    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_error: Option<ConnectError> = None;
    let attempts = 1 + cfg.retries;
    while let Some(addr) = balancer::pick(cfg.load_balance, backend, pool, &tried) {
        if tried.len() >= attempts {
            break;
        }
        if !tried.is_empty() {
            proxy.metrics.upstream_retries.inc();
        }
        tried.push(addr);
        record.upstream = Some(addr);
        let mut pooled = match pool.checkout(addr, protocol).await {
            Ok(c) => c,
            Err(e) => {
                proxy.metrics.upstream_connect_errors.inc();
                tracing::warn!(upstream = %addr, error = %e, service = %record.service, "connect failed");
                last_error = Some(e);
                continue;
            }
        };
        let Some(b) = body.take() else { break };
        let mut upreq = Request::from_parts(template.clone_parts(), b);
        let started = Instant::now();
        // A pooled connection the peer closed while idle hands the request
        // back unsent: try once more on a fresh connection.
        let mut fresh_retry = pooled.reused;
        let endpoint = pooled.endpoint.clone();
        endpoint.inflight.fetch_add(1, Ordering::Relaxed);
        let outcome = loop {
            let sent =
                tokio::time::timeout(cfg.read_timeout, pooled.sender.try_send_request(upreq)).await;
            match sent {
                Err(_) => break Err(plain(StatusCode::GATEWAY_TIMEOUT, "upstream timed out")),
                Ok(Ok(resp)) => break Ok(resp),
                Ok(Err(mut e)) => {
                    let unsent = e.take_message();
                    match unsent {
                        Some(back) if fresh_retry => {
                            fresh_retry = false;
                            match pool.connect(addr, protocol).await {
                                Ok(sender) => {
                                    pooled.sender = sender;
                                    upreq = back;
                                    continue;
                                }
                                Err(ce) => {
                                    proxy.metrics.upstream_connect_errors.inc();
                                    break Err(connect_failure(&ce));
                                }
                            }
                        }
                        _ => break Err(send_failure(e.error(), &record.service)),
                    }
                }
            }
        };
        endpoint.inflight.fetch_sub(1, Ordering::Relaxed);
        let elapsed = started.elapsed();
        record.upstream_time = Some(elapsed);
        let mut resp = match outcome {
            Ok(r) => r,
            Err(answer) => return answer,
        };
        pool.observe_latency(&endpoint, elapsed);
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                let upstream = hyper::upgrade::on(&mut resp);
                tokio::spawn(tunnel(client, upstream, addr));
                let (parts, _) = resp.into_parts();
                return Response::from_parts(
                    parts,
                    http_body_util::Empty::new().map_err(|n| match n {}).boxed(),
                );
            }
            return plain(
                StatusCode::BAD_GATEWAY,
                "upstream switched protocols without being asked",
            );
        }
        pool.release(pooled.sender, protocol, &endpoint);
        headers::strip_hop_by_hop(resp.headers_mut());
        return resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed());
    }
    match last_error {
        Some(e) => connect_failure(&e),
        None => plain(StatusCode::BAD_GATEWAY, "no endpoint could be reached"),
    }
}

/// 308 to the same host, path and query over HTTPS (on `port` when it is
/// not 443).
fn https_redirect(host: &str, port: Option<u16>, uri: &Uri) -> Response<UpBody> {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = match port {
        Some(p) if p != 443 => format!("https://{host}:{p}{pq}"),
        _ => format!("https://{host}{pq}"),
    };
    redirect(StatusCode::PERMANENT_REDIRECT, &location)
}

fn connect_failure(e: &ConnectError) -> Response<UpBody> {
    match e {
        ConnectError::Timeout(_) => plain(
            StatusCode::GATEWAY_TIMEOUT,
            "connecting to the upstream timed out",
        ),
        _ => plain(StatusCode::BAD_GATEWAY, "could not connect to the upstream"),
    }
}

/// An error after the request started going out: the body was too large,
/// the client's body broke, or the upstream failed.
fn send_failure(e: &hyper::Error, service: &str) -> Response<UpBody> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<BodyTooLarge>() {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        source = s.source();
    }
    tracing::warn!(error = %e, service, "upstream request failed");
    plain(StatusCode::BAD_GATEWAY, "upstream failed")
}

/// The request head sent upstream, built once and cloned per attempt.
struct Template {
    parts: Parts,
}

impl Template {
    fn clone_parts(&self) -> Parts {
        let mut p = Request::new(()).into_parts().0;
        p.method = self.parts.method.clone();
        p.uri = self.parts.uri.clone();
        p.version = self.parts.version;
        p.headers = self.parts.headers.clone();
        p
    }
}

fn upstream_parts(
    mut parts: Parts,
    conn: ConnInfo,
    raw_host: Option<&str>,
    upgrade: bool,
    protocol: UpstreamProtocol,
) -> Template {
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    // gRPC needs `te: trailers` end to end; HTTP/2 allows exactly that value.
    let te_trailers = parts
        .headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers::strip_hop_by_hop(&mut parts.headers);
    if upgrade && let Some(u) = upgrade_value {
        parts.headers.insert(header::UPGRADE, u);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if let Some(h) = raw_host
        && let Ok(v) = HeaderValue::from_str(h)
    {
        parts.headers.insert(header::HOST, v);
    }
    headers::add_forwarded(
        &mut parts.headers,
        &Forwarded {
            client_ip: conn.peer.ip(),
            proto: conn.scheme,
            host: raw_host,
            port: conn.local.port(),
        },
    );
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if protocol.is_h2() {
        // HTTP/2 carries scheme and authority as pseudo-headers: an
        // absolute URI with the client's Host.
        let scheme = if protocol.is_tls() { "https" } else { "http" };
        let authority = raw_host.unwrap_or("localhost");
        parts.uri = format!("{scheme}://{authority}{pq}")
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"));
        parts.headers.remove(header::HOST);
        if te_trailers {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        parts.version = Version::HTTP_2;
    } else {
        // Origin-form to the pod, whatever form the client used.
        parts.uri = pq.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
        parts.version = Version::HTTP_11;
    }
    Template { parts }
}

/// Copies bytes both ways between an upgraded client and upstream.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    addr: SocketAddr,
) {
    let (c, u) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (c, u) => {
            tracing::debug!(upstream = %addr, client_ok = c.is_ok(), upstream_ok = u.is_ok(), "upgrade failed");
            return;
        }
    };
    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
    match tokio::io::copy_bidirectional(&mut c, &mut u).await {
        Ok((up, down)) => tracing::debug!(upstream = %addr, up, down, "tunnel closed"),
        Err(e) => tracing::debug!(upstream = %addr, error = %e, "tunnel ended"),
    }
}
