//! The agent's own metrics (prometheus-client), beside the eBPF counters
//! that `datapath::counters` exports.

use std::{
    fmt::Write as _,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// A label value shared by reference count: built once per snapshot, so
/// counting a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// `2xx` .. `5xx`, from the status code's first digit.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct StatusClass(pub u8);

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}xx", self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub status_class: StatusClass,
    /// A host the configuration names, or `other`.
    pub host: Label,
    /// `ns/name:port`, or `none` for the proxy's own answers.
    pub service: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `1.2` or `1.3`.
    pub version: &'static str,
    /// `h2`, `http/1.1` or `none`.
    pub alpn: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct ProxyMetrics {
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    pub tls_handshake_failures: Family<FailureLabels, Counter>,
    pub http2_connection_errors: Family<FailureLabels, Counter>,
    pub http2_oversized_header_blocks: Counter,
    pub redirects: Counter,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histogram,
    pub upstream_connect_errors: Counter,
    pub upstream_retries: Counter,
    pub open_connections: Gauge,
    pub snapshot_generation: Gauge,
    pub snapshot_apply_seconds: Gauge<f64, AtomicU64>,
    pub config_diagnostics: Gauge,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ProxyMetrics {
            tls_handshakes: Family::default(),
            tls_handshake_failures: Family::default(),
            http2_connection_errors: Family::default(),
            http2_oversized_header_blocks: Counter::default(),
            redirects: Counter::default(),
            requests: Family::default(),
            request_duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
            upstream_connect_errors: Counter::default(),
            upstream_retries: Counter::default(),
            open_connections: Gauge::default(),
            snapshot_generation: Gauge::default(),
            snapshot_apply_seconds: Gauge::default(),
            config_diagnostics: Gauge::default(),
        };
        registry.register(
            "ingress_http_requests",
            "HTTP requests answered, by status class, host and service.",
            m.requests.clone(),
        );
        registry.register(
            "ingress_http_request_duration_seconds",
            "Time from request head to the end of the response body.",
            m.request_duration.clone(),
        );
        registry.register(
            "ingress_upstream_connect_errors",
            "Failed connection attempts to pod endpoints.",
            m.upstream_connect_errors.clone(),
        );
        registry.register(
            "ingress_upstream_retries",
            "Requests retried on another endpoint after a failed connect.",
            m.upstream_retries.clone(),
        );
        registry.register(
            "ingress_http_open_connections",
            "Client connections open now.",
            m.open_connections.clone(),
        );
        registry.register(
            "ingress_snapshot_generation",
            "Generation of the configuration snapshot being served.",
            m.snapshot_generation.clone(),
        );
        registry.register(
            "ingress_snapshot_apply_seconds",
            "Time the last configuration change took to load, compile and apply.",
            m.snapshot_apply_seconds.clone(),
        );
        registry.register(
            "ingress_config_diagnostics",
            "Problems found in the configuration being served.",
            m.config_diagnostics.clone(),
        );
        registry.register(
            "ingress_tls_handshakes",
            "Completed TLS handshakes, by protocol version and negotiated ALPN protocol.",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "ingress_tls_handshake_failures",
            "Failed TLS handshakes, by reason (plain_http, invalid_message, incompatible, no_alpn, alert_received, misbehaved, timeout, eof, io, other).",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "ingress_http2_connection_errors",
            "HTTP/2 client connections closed for misbehaving, by reason (settings_flood, ping_flood, enhance_your_calm, protocol_error, compression_error, frame_size_error, flow_control_error, other).",
            m.http2_connection_errors.clone(),
        );
        registry.register(
            "ingress_http2_oversized_header_blocks",
            "HTTP/2 header blocks whose size on the wire alone exceeds the header list limit (the stream is answered 431).",
            m.http2_oversized_header_blocks.clone(),
        );
        registry.register(
            "ingress_https_redirects",
            "Plain HTTP requests answered with a redirect to HTTPS.",
            m.redirects.clone(),
        );
        m
    }

    pub fn observe_handshake(&self, version: &'static str, alpn: &'static str) {
        self.tls_handshakes
            .get_or_create(&HandshakeLabels { version, alpn })
            .inc();
    }

    pub fn observe_handshake_failure(&self, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&FailureLabels { reason })
            .inc();
    }

    pub fn observe_http2_connection_error(&self, reason: &'static str) {
        self.http2_connection_errors
            .get_or_create(&FailureLabels { reason })
            .inc();
    }

    pub fn observe_request(
        &self,
        status: u16,
        host: &Arc<str>,
        service: &Arc<str>,
        duration: Duration,
    ) {
        let labels = RequestLabels {
            status_class: StatusClass((status / 100) as u8),
            host: Label(host.clone()),
            service: Label(service.clone()),
        };
        self.requests.get_or_create(&labels).inc();
        self.request_duration.observe(duration.as_secs_f64());
    }
}

/// `ingress_tls_certificate_expiry_seconds{secret}`: seconds until notAfter
/// of every certificate the current snapshot serves, computed at scrape
/// time.
pub struct CertExpiryCollector {
    pub proxy: Arc<crate::proxy::Proxy>,
}

impl std::fmt::Debug for CertExpiryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertExpiryCollector")
    }
}

impl prometheus_client::collector::Collector for CertExpiryCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::{encoding::EncodeMetric, metrics::gauge::ConstGauge};
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let certs = self.proxy.snapshot().tls.certificates();
        let mut family = encoder.encode_descriptor(
            "ingress_tls_certificate_expiry_seconds",
            "Seconds until notAfter of each certificate served, by Secret.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for c in certs {
            let secret = c.secret.to_string();
            let labels = [("secret", secret.as_str())];
            let gauge = ConstGauge::new(c.not_after - now);
            gauge.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
