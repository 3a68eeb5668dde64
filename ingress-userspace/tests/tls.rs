//! TLS termination over real sockets: the real `ingress` binary on loopback
//! with certificates from Secret manifests, rustls clients that record the
//! certificate they were shown, and test backends standing in for pods.

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{TempDir, backend::Backend, manifests, tls_client::Client};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A self-signed certificate for `names`: (PEM certificate, PEM key, DER).
fn cert(names: &[&str]) -> (String, String, Vec<u8>) {
    let made =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    (
        made.cert.pem(),
        made.signing_key.serialize_pem(),
        made.cert.der().to_vec(),
    )
}

/// A kubernetes.io/tls Secret in `default`, PEM in stringData.
fn secret(name: &str, crt: &str, key: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\nstringData: {{\"tls.crt\": {}, \"tls.key\": {}}}\n",
        serde_json::to_string(crt).unwrap(),
        serde_json::to_string(key).unwrap()
    )
}

/// An Ingress routing `host` to `service`, with `tls` (`(hosts, secret)`)
/// and annotations.
fn ingress(
    name: &str,
    host: &str,
    service: &str,
    tls: &[(&str, &str)],
    annotations: &str,
) -> String {
    let tls: String = tls
        .iter()
        .map(|(h, s)| format!("  - {{hosts: [\"{h}\"], secretName: {s}}}\n"))
        .collect();
    let tls = if tls.is_empty() {
        String::new()
    } else {
        format!("  tls:\n{tls}")
    };
    format!(
        r#"---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}, namespace: default, annotations: {{{annotations}}}}}
spec:
{tls}  rules:
  - host: "{host}"
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}
"#
    )
}

/// The agent with an HTTPS listener, serving `dir`.
fn start(dir: &TempDir, extra: &[&str]) -> (support::Agent, SocketAddr, SocketAddr) {
    support::start_local_agent_tls(dir.path(), extra)
}

fn metric(agent: &support::Agent, prefix: &str) -> f64 {
    agent
        .metrics()
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Waits (bounded) until the agent applied a configuration newer than
/// `before`.
fn wait_generation(agent: &support::Agent, before: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(agent, "ingress_snapshot_generation") <= before {
        assert!(Instant::now() < deadline, "the change was never applied");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sni_picks_exact_then_wildcard_then_default_then_self_signed() {
    let rt = rt();
    let a = rt.block_on(Backend::start("127.0.0.1:0".parse().unwrap(), "a"));
    let (exact, exact_key, exact_der) = cert(&["exact.test"]);
    let (wild, wild_key, wild_der) = cert(&["*.wild.test"]);
    let (fallback, fallback_key, fallback_der) = cert(&["fallback.test"]);
    let dir = TempDir::new("tls-sni");
    dir.write(
        "all.yaml",
        &[
            manifests::class(),
            manifests::service("svc-a", &[a.addr]),
            secret("exact", &exact, &exact_key),
            secret("wild", &wild, &wild_key),
            secret("fallback", &fallback, &fallback_key),
            ingress("e", "exact.test", "svc-a", &[("exact.test", "exact")], ""),
            ingress("w", "*.wild.test", "svc-a", &[("*.wild.test", "wild")], ""),
        ]
        .concat(),
    );
    let client = Client::h1();
    let table: [(Option<&str>, &[u8], &str); 6] = [
        (Some("exact.test"), &exact_der, "exact host"),
        (Some("EXACT.test"), &exact_der, "exact host, other case"),
        (Some("x.wild.test"), &wild_der, "wildcard, one label"),
        (
            Some("a.b.wild.test"),
            &fallback_der,
            "wildcard covers one label only",
        ),
        (Some("unknown.test"), &fallback_der, "unknown SNI"),
        (None, &fallback_der, "no SNI"),
    ];
    {
        let (_agent, _http, https) =
            start(&dir, &["--default-ssl-certificate", "default/fallback"]);
        for (sni, want, what) in table {
            let (_, seen) = rt.block_on(client.connect(https, sni)).unwrap();
            assert_eq!(seen, want, "{what}");
        }
        // The certificate is served, and so is the request.
        let (status, _, body) = rt.block_on(client.get(https, "exact.test", "/")).unwrap();
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains("\"pod\":\"a\""));
    }
    // Without --default-ssl-certificate, a certificate made at start-up.
    let (_agent, _http, https) = start(&dir, &[]);
    for sni in [Some("unknown.test"), None] {
        let (_, seen) = rt.block_on(client.connect(https, sni)).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&seen).unwrap();
        let names: Vec<String> = parsed
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["DNSName(ingress.local)"], "{sni:?}");
        assert_ne!(seen, fallback_der);
    }
    let (_, seen) = rt
        .block_on(client.connect(https, Some("exact.test")))
        .unwrap();
    assert_eq!(seen, exact_der);
}

#[test]
fn sessions_resume_with_tickets_on_tls13_and_tls12() {
    let (crt, key, _) = cert(&["resume.test"]);
    let dir = TempDir::new("tls-resume");
    dir.write(
        "all.yaml",
        &[
            manifests::class(),
            secret("c", &crt, &key),
            ingress("r", "resume.test", "svc-none", &[("resume.test", "c")], ""),
        ]
        .concat(),
    );
    let (_agent, _http, https) = start(&dir, &[]);
    let rt = rt();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut client = Client::new(&[b"http/1.1"], &[version]);
        let mut config = rustls::ClientConfig::clone(client.connector.config());
        config.resumption = rustls::client::Resumption::in_memory_sessions(16);
        client.connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let kinds: Vec<_> = (0..3)
            .map(|_| {
                rt.block_on(async {
                    use tokio::io::AsyncReadExt;
                    let (mut tls, _) = client.connect(https, Some("resume.test")).await.unwrap();
                    let kind = tls.get_ref().1.handshake_kind();
                    // TLS 1.3 tickets arrive after the handshake: read a
                    // little so they are taken in.
                    let mut buf = [0u8; 1];
                    let _ =
                        tokio::time::timeout(Duration::from_millis(100), tls.read(&mut buf)).await;
                    kind
                })
            })
            .collect();
        assert_eq!(
            kinds[1..],
            [Some(rustls::HandshakeKind::Resumed); 2],
            "{version:?}: {kinds:?}"
        );
    }
}

#[test]
fn https_forwarding_redirects_websocket_and_metrics() {
    let rt = rt();
    let a = rt.block_on(Backend::start("127.0.0.1:0".parse().unwrap(), "a"));
    let (crt, key, _) = cert(&["secure.test", "optout.test"]);
    let dir = TempDir::new("tls-fwd");
    dir.write(
        "all.yaml",
        &[
            manifests::class(),
            manifests::service("svc-a", &[a.addr]),
            secret("c", &crt, &key),
            ingress("s", "secure.test", "svc-a", &[("secure.test", "c")], ""),
            ingress(
                "o",
                "optout.test",
                "svc-a",
                &[("optout.test", "c")],
                "nginx.ingress.kubernetes.io/ssl-redirect: \"false\"",
            ),
            ingress(
                "f",
                "forced.test",
                "svc-a",
                &[],
                "nginx.ingress.kubernetes.io/force-ssl-redirect: \"true\"",
            ),
            ingress("p", "plain.test", "svc-a", &[], ""),
        ]
        .concat(),
    );
    let (agent, http, https) = start(&dir, &[]);
    let client = Client::h1();

    let (status, _, body) = rt
        .block_on(client.get(https, "secure.test", "/x?q=1"))
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen = a.requests().pop().unwrap();
    assert_eq!(seen.path, "/x");
    assert_eq!(seen.headers["x-forwarded-proto"], ["https"]);
    assert_eq!(seen.headers["x-forwarded-port"], [https.port().to_string()]);

    // Plain HTTP to a host with TLS: 308 to the same path and query.
    let r = support::get(http, "secure.test", "/x?q=1").unwrap();
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(
        r.header("location").as_deref(),
        Some(format!("https://secure.test:{}/x?q=1", https.port()).as_str())
    );
    // Opted out by annotation, no TLS at all: served. Forced: redirected.
    assert_eq!(support::get(http, "optout.test", "/").unwrap().status, 200);
    assert_eq!(support::get(http, "plain.test", "/").unwrap().status, 200);
    let forced = support::get(http, "forced.test", "/f").unwrap();
    assert_eq!(forced.status, 308);
    assert_eq!(
        forced.header("location").as_deref(),
        Some(format!("https://forced.test:{}/f", https.port()).as_str())
    );
    // Over HTTPS, never redirected.
    let (status, _, _) = rt.block_on(client.get(https, "forced.test", "/")).unwrap();
    assert_eq!(status, 200);

    // WebSocket over HTTP/1.1 on TLS.
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut tls, _) = client.connect(https, Some("secure.test")).await.unwrap();
        tls.write_all(b"GET /ws HTTP/1.1\r\nHost: secure.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(tls.read(&mut byte).await.unwrap(), 1, "closed during the upgrade");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        for msg in [&b"ping"[..], b"\x81\x05hello"] {
            tls.write_all(msg).await.unwrap();
            let mut got = vec![0u8; msg.len()];
            tls.read_exact(&mut got).await.unwrap();
            assert_eq!(got, msg);
        }
    });

    let m = agent.metrics();
    let handshakes: f64 = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with("ingress_tls_handshakes_total{") && k.contains("alpn=\"http/1.1\"")
        })
        .map(|(_, v)| v)
        .sum();
    assert!(handshakes >= 3.0, "{m:?}");
    assert!(metric(&agent, "ingress_https_redirects_total") >= 2.0);
    let expiry = m
        .iter()
        .find(|(k, _)| {
            k.starts_with("ingress_tls_certificate_expiry_seconds{")
                && k.contains("secret=\"default/c\"")
        })
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no expiry gauge for default/c: {m:?}"));
    // rcgen's default validity runs to 4096: far ahead, and positive.
    assert!(expiry > 365.0 * 86_400.0, "{expiry}");
}

#[test]
fn http2_over_tls_multiplexes_requests() {
    let rt = rt();
    let a = rt.block_on(Backend::start("127.0.0.1:0".parse().unwrap(), "a"));
    let (crt, key, _) = cert(&["h2.test"]);
    let dir = TempDir::new("tls-h2");
    dir.write(
        "all.yaml",
        &[
            manifests::class(),
            manifests::service("svc-a", &[a.addr]),
            secret("c", &crt, &key),
            ingress("h", "h2.test", "svc-a", &[("h2.test", "c")], ""),
        ]
        .concat(),
    );
    let (_agent, _http, https) = start(&dir, &[]);
    let client = Client::new(&[b"h2", b"http/1.1"], rustls::DEFAULT_VERSIONS);
    let results = rt.block_on(async {
        let (tls, _) = client.connect(https, Some("h2.test")).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut tasks = Vec::new();
        for i in 0..20 {
            let mut sender = sender.clone();
            tasks.push(tokio::spawn(async move {
                let req = hyper::Request::get(format!("https://h2.test/slow/{}", 50 + i))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let version = resp.version();
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, version, body)
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert_eq!(results.len(), 20);
    for (status, version, body) in &results {
        assert_eq!(*status, 200);
        assert_eq!(*version, hyper::Version::HTTP_2);
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["headers"]["x-forwarded-proto"][0], "https");
    }
    let seen = a.requests();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|s| s.headers["host"] == ["h2.test"]));
}

#[test]
fn garbage_instead_of_a_client_hello_is_closed_and_others_are_served() {
    let rt = rt();
    let a = rt.block_on(Backend::start("127.0.0.1:0".parse().unwrap(), "a"));
    let (crt, key, _) = cert(&["g.test"]);
    let dir = TempDir::new("tls-garbage");
    dir.write(
        "all.yaml",
        &[
            manifests::class(),
            manifests::service("svc-a", &[a.addr]),
            secret("c", &crt, &key),
            ingress("g", "g.test", "svc-a", &[("g.test", "c")], ""),
        ]
        .concat(),
    );
    let (agent, _http, https) = start(&dir, &[]);
    let client = Client::h1();
    // A connection that stays silent while the others go on.
    let silent = TcpStream::connect(https).unwrap();
    let garbage: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: g.test\r\n\r\n",
        &[0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00],
        &[0xff; 64],
    ];
    for bytes in garbage {
        let mut s = TcpStream::connect(https).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(bytes).unwrap();
        // Plain HTTP gets a 400 saying so; anything else at most an alert;
        // then the connection closes.
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) if bytes.starts_with(b"GET") => {
                let text = String::from_utf8_lossy(&buf);
                assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
                assert!(
                    text.contains("plain HTTP was sent to the HTTPS port"),
                    "{text}"
                );
            }
            Ok(_) => assert!(buf.len() < 64, "more than an alert came back: {buf:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        let (status, _, _) = rt.block_on(client.get(https, "g.test", "/")).unwrap();
        assert_eq!(status, 200, "still serving after {bytes:?}");
    }
    assert!(
        metric(
            &agent,
            "ingress_tls_handshake_failures_total{reason=\"plain_http\"}"
        ) >= 1.0,
        "{:?}",
        agent.metrics()
    );
    drop(silent);
    assert!(
        metric(
            &agent,
            "ingress_tls_handshake_failures_total{reason=\"invalid_message\"}"
        ) >= 1.0,
        "{:?}",
        agent.metrics()
    );
    assert_eq!(agent.get("/healthz").unwrap().0, 200);
}

#[test]
fn a_bad_secret_is_reported_and_does_not_replace_the_good_certificate() {
    let rt = rt();
    let a = rt.block_on(Backend::start("127.0.0.1:0".parse().unwrap(), "a"));
    let (good, good_key, good_der) = cert(&["keep.test"]);
    let (other, _, _) = cert(&["keep.test"]);
    let dir = TempDir::new("tls-bad");
    let base = [
        manifests::class(),
        manifests::service("svc-a", &[a.addr]),
        ingress("k", "keep.test", "svc-a", &[("keep.test", "c")], ""),
    ]
    .concat();
    dir.write("base.yaml", &base);
    dir.write("secret.yaml", &secret("c", &good, &good_key));
    let (mut agent, _http, https) = start(&dir, &[]);
    let client = Client::h1();
    let (_, seen) = rt
        .block_on(client.connect(https, Some("keep.test")))
        .unwrap();
    assert_eq!(seen, good_der);
    assert_eq!(metric(&agent, "ingress_config_diagnostics"), 0.0);
    // A certificate with the wrong key, then one that is not PEM.
    for (crt, key) in [
        (other.as_str(), good_key.as_str()),
        ("garbage", good_key.as_str()),
    ] {
        let before = metric(&agent, "ingress_snapshot_generation");
        dir.write("secret.yaml", &secret("c", crt, key));
        wait_generation(&agent, before);
        assert!(metric(&agent, "ingress_config_diagnostics") >= 1.0);
        let (_, seen) = rt
            .block_on(client.connect(https, Some("keep.test")))
            .unwrap();
        assert_eq!(seen, good_der, "the good certificate stays");
        let (status, _, _) = rt.block_on(client.get(https, "keep.test", "/")).unwrap();
        assert_eq!(status, 200);
    }
    let log = agent.take_output();
    assert!(
        log.contains("Secret default/c") && log.contains("does not match the certificate"),
        "{log}"
    );
    assert!(log.contains("no CERTIFICATE block"), "{log}");
    assert!(log.contains("keeps its previous certificate"), "{log}");
}

#[test]
fn rotation_under_handshakes_fails_none_and_the_new_certificate_is_seen() {
    let rt = rt();
    let a = rt.block_on(Backend::start("127.0.0.1:0".parse().unwrap(), "a"));
    let (old, old_key, old_der) = cert(&["rot.test"]);
    let (new, new_key, new_der) = cert(&["rot.test"]);
    let dir = TempDir::new("tls-rotate");
    dir.write(
        "base.yaml",
        &[
            manifests::class(),
            manifests::service("svc-a", &[a.addr]),
            ingress("r", "rot.test", "svc-a", &[("rot.test", "c")], ""),
        ]
        .concat(),
    );
    dir.write("secret.yaml", &secret("c", &old, &old_key));
    let (agent, _http, https) = start(&dir, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen_new = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..2)
        .map(|i| {
            let (stop, ok, failed, seen_new) =
                (stop.clone(), ok.clone(), failed.clone(), seen_new.clone());
            let (old_der, new_der) = (old_der.clone(), new_der.clone());
            // TLS 1.3 and 1.2 both rotate.
            static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
            static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
            let versions: &'static [&'static rustls::SupportedProtocolVersion] =
                if i == 0 { &TLS13 } else { &TLS12 };
            thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let client = Client::new(&[b"http/1.1"], versions);
                let deadline = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match rt.block_on(client.connect(https, Some("rot.test"))) {
                        Ok((_, cert)) if cert == new_der => {
                            seen_new.store(true, Ordering::SeqCst);
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok((_, cert)) if cert == old_der => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let before = metric(&agent, "ingress_snapshot_generation");
    dir.write("secret.yaml", &secret("c", &new, &new_key));
    wait_generation(&agent, before);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen_new.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "handshakes failed during rotation"
    );
    assert!(
        ok.load(Ordering::SeqCst) > 20,
        "too few handshakes: {}",
        ok.load(Ordering::SeqCst)
    );
    assert_eq!(metric(&agent, "ingress_tls_handshake_failures_total"), 0.0);
}

/// A pod speaking HTTP/1.1 and HTTP/2 (detected), in clear or over TLS:
/// gRPC-style POSTs are echoed with `grpc-status` trailers, anything else
/// gets its body back; every answer says which protocol and whether TLS
/// carried the request.
async fn multi_protocol_pod(tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let over_tls = tls.is_some();
                let svc = hyper::service::service_fn(move |req| pod_answer(req, over_tls));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
            });
        }
    });
    addr
}

type PodBody = http_body_util::StreamBody<
    futures::stream::Iter<
        std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>,
    >,
>;

async fn pod_answer(
    req: hyper::Request<hyper::body::Incoming>,
    over_tls: bool,
) -> Result<hyper::Response<PodBody>, std::convert::Infallible> {
    use hyper::body::Frame;
    let version = format!("{:?}", req.version());
    let te = req
        .headers()
        .get("te")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/grpc");
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut frames = vec![Ok(Frame::data(body))];
    if grpc {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "echoed".parse().unwrap());
        frames.push(Ok(Frame::trailers(trailers)));
    }
    let mut resp = hyper::Response::new(http_body_util::StreamBody::new(futures::stream::iter(
        frames,
    )));
    let h = resp.headers_mut();
    h.insert("x-proto", version.parse().unwrap());
    h.insert("x-tls", over_tls.to_string().parse().unwrap());
    h.insert("x-te", te.parse().unwrap());
    if grpc {
        h.insert("content-type", "application/grpc".parse().unwrap());
    }
    Ok(resp)
}

/// A TLS acceptor for a pod, with a self-signed certificate and `alpn`.
fn pod_tls() -> tokio_rustls::TlsAcceptor {
    let made = rcgen::generate_simple_self_signed(vec!["pod.local".to_string()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![made.cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A Service `name` whose port has `app_protocol`, with one endpoint.
fn service_with_app_protocol(name: &str, pod: SocketAddr, app_protocol: &str) -> String {
    manifests::service(name, &[pod]).replace(
        &format!("targetPort: {}}}]", pod.port()),
        &format!("targetPort: {}, appProtocol: {app_protocol}}}]", pod.port()),
    )
}

#[test]
fn grpc_and_tls_to_pods_by_annotation_and_app_protocol() {
    let rt = rt();
    let h2c = rt.block_on(multi_protocol_pod(None));
    let tls_pod = rt.block_on(multi_protocol_pod(Some(pod_tls())));
    let (crt, key, _) = cert(&["*.proto.test"]);
    let dir = TempDir::new("tls-upstream");
    let annotated = |name: &str, svc: &str, proto: &str| {
        ingress(
            name,
            &format!("{name}.proto.test"),
            svc,
            &[(&format!("{name}.proto.test"), "c")],
            &format!("nginx.ingress.kubernetes.io/backend-protocol: {proto}"),
        )
    };
    dir.write(
        "all.yaml",
        &[
            manifests::class(),
            secret("c", &crt, &key),
            manifests::service("svc-h2c", &[h2c]),
            manifests::service("svc-tls", &[tls_pod]),
            service_with_app_protocol("svc-app", h2c, "kubernetes.io/h2c"),
            annotated("grpc", "svc-h2c", "GRPC"),
            annotated("grpcs", "svc-tls", "GRPCS"),
            annotated("https", "svc-tls", "HTTPS"),
            ingress(
                "app",
                "app.proto.test",
                "svc-app",
                &[("app.proto.test", "c")],
                "",
            ),
            ingress(
                "plain",
                "plain.proto.test",
                "svc-h2c",
                &[("plain.proto.test", "c")],
                "",
            ),
        ]
        .concat(),
    );
    let (_agent, _http, https) = start(&dir, &[]);
    let client = Client::new(&[b"h2"], rustls::DEFAULT_VERSIONS);
    // A gRPC call (length-prefixed message, te: trailers) over HTTP/2 on
    // TLS, to pods in h2c, h2 over TLS, and h2c by appProtocol.
    for (host, tls) in [
        ("grpc.proto.test", "false"),
        ("grpcs.proto.test", "true"),
        ("app.proto.test", "false"),
    ] {
        let (status, headers, body, trailers) = rt.block_on(async {
            let (tls, _) = client.connect(https, Some(host)).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let message = b"\x00\x00\x00\x00\x05hello".to_vec();
            let req = hyper::Request::post(format!("https://{host}/echo.Echo/Say"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(http_body_util::Full::new(Bytes::from(message)))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let collected = resp.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned();
            (status, headers, collected.to_bytes(), trailers)
        });
        assert_eq!(status, 200, "{host}");
        assert_eq!(headers["x-proto"], "HTTP/2.0", "{host}");
        assert_eq!(headers["x-tls"], tls, "{host}");
        assert_eq!(headers["x-te"], "trailers", "{host}");
        assert_eq!(&body[..], b"\x00\x00\x00\x00\x05hello", "{host}");
        let trailers = trailers.unwrap_or_else(|| panic!("{host}: no trailers"));
        assert_eq!(trailers["grpc-status"], "0", "{host}");
        assert_eq!(trailers["grpc-message"], "echoed", "{host}");
    }
    // HTTPS: HTTP/1.1 over TLS to the pod; without annotation, HTTP/1.1.
    let h1 = Client::h1();
    for (host, proto, tls) in [
        ("https.proto.test", "HTTP/1.1", "true"),
        ("plain.proto.test", "HTTP/1.1", "false"),
    ] {
        let (status, headers, _) = rt.block_on(h1.get(https, host, "/")).unwrap();
        assert_eq!(status, 200, "{host}");
        assert_eq!(headers["x-proto"], proto, "{host}");
        assert_eq!(headers["x-tls"], tls, "{host}");
    }
}
