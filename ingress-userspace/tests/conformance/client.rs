//! A minimal HTTP/1.1 client: one connection per request, bounded in time.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{HeaderMap, Method, Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one request may take, connect to last body byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What came back.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// `HTTP/1.1`, ...
    pub proto: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as the echoserver's JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the response (status {}) is not the echoserver's JSON: {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// Sends `method path` with `Host: host` to `addr`, as Go's client would.
pub async fn send(addr: SocketAddr, method: &str, host: &str, path: &str) -> anyhow::Result<Reply> {
    let what = format!("{method} http://{host}{path} (via {addr})");
    tokio::time::timeout(REQUEST_TIMEOUT, send_inner(addr, method, host, path))
        .await
        .with_context(|| format!("{what}: no answer within {REQUEST_TIMEOUT:?}"))?
        .with_context(|| what)
}

async fn send_inner(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
) -> anyhow::Result<Reply> {
    let method = Method::from_bytes(method.as_bytes()).context("method")?;
    let stream = TcpStream::connect(addr).await.context("connecting")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("handshake")?;
    let driver = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::HOST, host)
        .header(header::USER_AGENT, "Go-http-client/1.1");
    // Go sends an explicit empty body for the methods that expect one.
    if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        req = req.header(header::CONTENT_LENGTH, "0");
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let result = async {
        let resp = sender.send_request(req).await.context("sending")?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.context("reading the body")?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            proto: format!("{:?}", parts.version),
            headers: parts.headers,
            body,
        })
    }
    .await;
    driver.abort();
    result
}
