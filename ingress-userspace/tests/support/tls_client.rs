//! A rustls client for tests that records the certificate it was shown.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Accepts any certificate and records the leaf it was shown (signatures
/// are still checked, so the server must hold the key).
#[derive(Debug)]
pub struct Capture {
    pub seen: Mutex<Option<Vec<u8>>>,
    pub provider: rustls::crypto::CryptoProvider,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client offering `alpn`, and what it saw.
pub struct Client {
    pub config: Arc<rustls::ClientConfig>,
    pub connector: tokio_rustls::TlsConnector,
    pub capture: Arc<Capture>,
}

impl Client {
    pub fn new(alpn: &[&[u8]], versions: &[&'static rustls::SupportedProtocolVersion]) -> Client {
        let provider = rustls::crypto::ring::default_provider();
        let capture = Arc::new(Capture {
            seen: Mutex::new(None),
            provider: provider.clone(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(capture.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Every handshake shows the certificate (a resumed one would not).
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        Client {
            connector: tokio_rustls::TlsConnector::from(config.clone()),
            config,
            capture,
        }
    }

    pub fn h1() -> Client {
        Client::new(&[b"http/1.1"], rustls::DEFAULT_VERSIONS)
    }

    /// Handshakes with `sni` (none for `None`); returns the stream and the
    /// leaf certificate shown.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        sni: Option<&str>,
    ) -> std::io::Result<(
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Vec<u8>,
    )> {
        let name = match sni {
            Some(h) => ServerName::try_from(h.to_string()).unwrap(),
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = tokio::time::timeout(Duration::from_secs(5), self.connector.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::other("handshake timed out"))??;
        let seen = self.capture.seen.lock().unwrap().take().unwrap_or_default();
        Ok((tls, seen))
    }

    /// `GET path` over HTTP/1.1 on a fresh TLS connection to `host`.
    pub async fn get(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
    ) -> anyhow::Result<(u16, hyper::HeaderMap, Bytes)> {
        let (tls, _) = self.connect(addr, Some(host)).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let driver = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        driver.abort();
        Ok((status, headers, body))
    }
}
