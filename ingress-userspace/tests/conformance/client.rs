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
    /// Over TLS: the name the server's certificate was verified for.
    pub verified_host: Option<String>,
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
    tokio::time::timeout(REQUEST_TIMEOUT, send_inner(addr, method, host, path, None))
        .await
        .with_context(|| format!("{what}: no answer within {REQUEST_TIMEOUT:?}"))?
        .with_context(|| what)
}

/// Like [`send`] over TLS: SNI `host`, and the server's certificate must
/// verify for `host` against `trusted` (the PEM of the self-signed
/// certificate the scenario made). ALPN offers http/1.1 only, as Go's
/// client does with a custom TLS configuration.
pub async fn send_tls(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    trusted: &str,
) -> anyhow::Result<Reply> {
    let what = format!("{method} https://{host}{path} (via {addr})");
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        send_inner(addr, method, host, path, Some(trusted)),
    )
    .await
    .with_context(|| format!("{what}: no answer within {REQUEST_TIMEOUT:?}"))?
    .with_context(|| what)
}

fn tls_connector(trusted: &str) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trusted.as_bytes()) {
        roots
            .add(cert.context("the trusted certificate is not PEM")?)
            .context("adding the trusted certificate")?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

async fn send_inner(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    trusted: Option<&str>,
) -> anyhow::Result<Reply> {
    let method = Method::from_bytes(method.as_bytes()).context("method")?;
    let stream = TcpStream::connect(addr).await.context("connecting")?;
    let (mut sender, conn, verified_host) = match trusted {
        None => {
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("handshake")?;
            (s, tokio::spawn(async move { c.await.map(|_| ()) }), None)
        }
        Some(pem) => {
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .context("the host is not a TLS server name")?;
            let tls = tls_connector(pem)?
                .connect(name, stream)
                .await
                .with_context(|| format!("TLS handshake (verifying the certificate for {host})"))?;
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .context("handshake")?;
            (
                s,
                tokio::spawn(async move { c.await.map(|_| ()) }),
                Some(host.to_string()),
            )
        }
    };
    let driver = conn;
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
            verified_host,
        })
    }
    .await;
    driver.abort();
    result
}
