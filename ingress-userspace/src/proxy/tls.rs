//! TLS termination: one rustls server configuration for every worker, whose
//! certificate resolver reads the current snapshot at each handshake (so a
//! Secret change reaches new handshakes without restart), and the handshake
//! itself with its outcome counted.

use std::{io, sync::Arc, time::Duration};

use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::Proxy;

/// Longest a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS 1.2 sessions resumable by session ID (tickets need no state).
const SESSION_CACHE: usize = 4096;
/// The name the start-up certificate is made for.
pub const SELF_SIGNED_NAME: &str = "ingress.local";

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("making the self-signed default certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    #[error("setting up rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Picks the certificate by SNI from the current snapshot: exact host, then
/// wildcard, then `--default-ssl-certificate`, else the self-signed one.
pub struct SniResolver {
    proxy: Arc<Proxy>,
    fallback: Arc<CertifiedKey>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.proxy.snapshot();
        Some(
            snapshot
                .tls
                .resolve(hello.server_name())
                .map(|c| c.key.clone())
                .unwrap_or_else(|| self.fallback.clone()),
        )
    }
}

/// A self-signed certificate for [`SELF_SIGNED_NAME`], made now.
pub fn self_signed() -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let made = rcgen::generate_simple_self_signed(vec![SELF_SIGNED_NAME.to_string()])?;
    let cert = CertificateDer::from(made.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let provider = rustls::crypto::ring::default_provider();
    Ok(Arc::new(CertifiedKey::from_der(
        vec![cert],
        key,
        &provider,
    )?))
}

/// The server configuration all HTTPS listeners share: TLS 1.3 and 1.2,
/// ALPN h2 then http/1.1, session tickets and a session-ID cache.
pub fn acceptor(proxy: Arc<Proxy>) -> Result<TlsAcceptor, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = SniResolver {
        proxy,
        fallback: self_signed()?,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What a plain HTTP request on the HTTPS port gets.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 55\r\nConnection: close\r\n\r\n400 Bad Request: plain HTTP was sent to the HTTPS port\n";

/// Runs the handshake (bounded by [`HANDSHAKE_TIMEOUT`]) and counts its
/// outcome; `None` when it failed (the connection is then dropped).
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    proxy: &Proxy,
) -> Option<TlsStream<TcpStream>> {
    let m = &proxy.metrics;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    // A TLS record starts with 0x16; a request line with a letter. Tell a
    // client that spoke plain HTTP to this port, as nginx does.
    let mut first = [0u8; 1];
    if let Ok(Ok(1)) = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await
        && first[0].is_ascii_alphabetic()
    {
        m.observe_handshake_failure("plain_http");
        let mut stream = stream;
        let _ = tokio::time::timeout_at(deadline, stream.write_all(PLAIN_HTTP_ANSWER)).await;
        let _ = stream.shutdown().await;
        return None;
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let (_, conn) = tls.get_ref();
            let version = match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                _ => "other",
            };
            let alpn = match conn.alpn_protocol() {
                Some(b"h2") => "h2",
                Some(b"http/1.1") => "http/1.1",
                Some(_) => "other",
                None => "none",
            };
            m.observe_handshake(version, alpn);
            Some(tls)
        }
        Ok(Err(e)) => {
            let reason = failure_reason(&e);
            tracing::debug!(error = %e, reason, "TLS handshake failed");
            m.observe_handshake_failure(reason);
            None
        }
        Err(_) => {
            m.observe_handshake_failure("timeout");
            None
        }
    }
}

/// A bounded label for why a handshake failed.
pub fn failure_reason(e: &io::Error) -> &'static str {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::InappropriateMessage { .. } => "invalid_message",
            rustls::Error::PeerIncompatible(_) => "incompatible",
            rustls::Error::NoApplicationProtocol => "no_alpn",
            rustls::Error::AlertReceived(_) => "alert_received",
            rustls::Error::PeerMisbehaved(_) => "misbehaved",
            _ => "other",
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "eof",
        _ => "io",
    }
}

/// Accepts whatever certificate a pod shows (signatures are still
/// checked): pods' certificates are usually self-signed, and ingress-nginx
/// does not verify them by default either.
#[derive(Debug)]
struct AnyCertificate(rustls::crypto::CryptoProvider);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration for TLS to pods offering `alpn`.
pub fn upstream_connector(alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let provider = rustls::crypto::ring::default_provider();
    let verifier = Arc::new(AnyCertificate(provider.clone()));
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider));
    // The ring provider supports the default versions, so this cannot fail;
    // fall back to the provider's defaults if it ever did.
    let builder = match builder.with_safe_default_protocol_versions() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "TLS versions for upstreams");
            rustls::ClientConfig::builder()
        }
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}
