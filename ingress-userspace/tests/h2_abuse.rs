//! Misbehaving HTTP/2 clients against the real `ingress` binary, over TLS
//! (ALPN h2) and over h2c on the plain listener: rapid reset, SETTINGS
//! floods, oversized header lists, and bad ClientHellos. Each abuser gets
//! its connection closed (or its stream refused) and counted in /metrics,
//! while a well-behaved client keeps getting 200s throughout.
//!
//! The abusive frames are written by hand: a frame is a 9-byte header and a
//! payload, and request headers use HPACK literals without indexing.

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
use rustls_pki_types::ServerName;
use support::{TempDir, backend::Backend, manifests, tls_client::Client};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const HOST: &str = "abuse.test";
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const CANCEL: u32 = 0x8;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Clone, Copy, Debug)]
enum Transport {
    /// TLS with ALPN h2 on the HTTPS listener.
    Tls(SocketAddr),
    /// HTTP/2 with prior knowledge on the plain listener.
    H2c(SocketAddr),
}

/// A connection ready for the HTTP/2 preface.
async fn open(t: Transport) -> Box<dyn Io> {
    match t {
        Transport::H2c(addr) => Box::new(tokio::net::TcpStream::connect(addr).await.unwrap()),
        Transport::Tls(addr) => {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = Client::new(&[b"h2"], rustls::DEFAULT_VERSIONS)
                .connector
                .connect(ServerName::try_from(HOST).unwrap(), tcp)
                .await
                .unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            Box::new(tls)
        }
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with a 7-bit prefix (string lengths, no Huffman).
fn hpack_len(n: usize, out: &mut Vec<u8>) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    let mut rest = n - 127;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A GET request's header block: every field a literal without indexing
/// with a literal name.
fn request_block(scheme: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", scheme),
        (":path", "/"),
        (":authority", HOST),
    ] {
        block.push(0x00);
        hpack_len(name.len(), &mut block);
        block.extend_from_slice(name.as_bytes());
        hpack_len(value.len(), &mut block);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

fn scheme(t: Transport) -> &'static str {
    match t {
        Transport::Tls(_) => "https",
        Transport::H2c(_) => "http",
    }
}

/// How the proxy ended an abusive connection.
#[derive(Debug, PartialEq)]
enum Ending {
    /// GOAWAY with this error code, then the close.
    GoAway(u32),
    /// Closed (or reset) without a GOAWAY.
    Closed,
}

/// Reads frames until the connection ends (bounded by a generous deadline
/// against a hung test; this is not a timing assertion).
async fn read_until_end(mut rd: impl AsyncRead + Unpin) -> Ending {
    let deadline = Duration::from_secs(20);
    let read_all = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut goaway = None;
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            // Parse the complete frames received so far.
            while buf.len() >= 9 {
                let len =
                    usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                if buf[3] == GOAWAY && len >= 8 && goaway.is_none() {
                    goaway = Some(u32::from_be_bytes(buf[13..17].try_into().unwrap()));
                }
                buf.drain(..9 + len);
            }
        }
        goaway.map_or(Ending::Closed, Ending::GoAway)
    };
    tokio::time::timeout(deadline, read_all)
        .await
        .expect("the proxy never closed the abusive connection")
}

/// The agent serving `HOST` from one backend, with a certificate for it.
struct Setup {
    _dir: TempDir,
    _backend: Backend,
    agent: support::Agent,
    http: SocketAddr,
    https: SocketAddr,
}

fn setup(rt: &tokio::runtime::Runtime, tag: &str) -> Setup {
    let backend = rt.block_on(Backend::start("127.0.0.1:0".parse().unwrap(), "a"));
    let dir = TempDir::new(tag);
    dir.write(
        "all.yaml",
        &[
            manifests::class(),
            manifests::service("svc-a", &[backend.addr]),
            manifests::ingress("web", HOST, "/", "svc-a"),
        ]
        .concat(),
    );
    let (agent, http, https) = support::start_local_agent_tls(dir.path(), &[]);
    Setup {
        _dir: dir,
        _backend: backend,
        agent,
        http,
        https,
    }
}

fn metric(agent: &support::Agent, name: &str) -> f64 {
    agent.metrics().get(name).copied().unwrap_or(0.0)
}

/// Waits (bounded) until `name` reaches `at_least`: the proxy counts a
/// closed connection once its task ends, which can be just after the
/// client saw the close.
fn wait_metric(agent: &support::Agent, name: &str, at_least: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(agent, name) < at_least {
        assert!(
            Instant::now() < deadline,
            "{what}: {name} never reached {at_least}: {:?}",
            agent.metrics()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A well-behaved client on other threads: HTTP/2 over TLS, h2c and
/// HTTP/1.1 requests in a loop until dropped; every answer must be 200.
struct Bystander {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<Vec<String>>>,
}

impl Bystander {
    fn start(s: &Setup) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for t in [Transport::Tls(s.https), Transport::H2c(s.http)] {
            let (stop, ok) = (stop.clone(), ok.clone());
            threads.push(thread::spawn(move || {
                let rt = rt();
                let mut failures = Vec::new();
                // Bounded: stops when told, or after many rounds.
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match rt.block_on(h2_get(t, &[])) {
                        Ok(200) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.push(format!("{t:?}: {other:?}")),
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                failures
            }));
        }
        let (http, stop1, ok1) = (s.http, stop.clone(), ok.clone());
        threads.push(thread::spawn(move || {
            let mut failures = Vec::new();
            for _ in 0..100_000 {
                if stop1.load(Ordering::Relaxed) {
                    break;
                }
                match support::get(http, HOST, "/") {
                    Ok(r) if r.status == 200 => {
                        ok1.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.push(format!("HTTP/1.1: {other:?}")),
                }
                thread::sleep(Duration::from_millis(5));
            }
            failures
        }));
        Bystander { stop, ok, threads }
    }

    /// Stops the loops; panics on any answer but 200, or if none came.
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let failures: Vec<String> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert!(
            failures.is_empty(),
            "a well-behaved client failed: {failures:?}"
        );
        assert!(
            self.ok.load(Ordering::Relaxed) > 0,
            "no well-behaved request was served"
        );
    }
}

/// One `GET /` with `extra` headers over HTTP/2 (hyper's client) on a
/// fresh connection; the status.
async fn h2_get(t: Transport, extra: &[(&str, &str)]) -> anyhow::Result<u16> {
    let io = open(t).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    let driver = tokio::spawn(conn);
    let status = send(&mut sender, t, extra).await?;
    driver.abort();
    Ok(status)
}

async fn send(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    t: Transport,
    extra: &[(&str, &str)],
) -> anyhow::Result<u16> {
    let mut req = hyper::Request::get(format!("{}://{HOST}/", scheme(t)));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new())?)
        .await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

/// CVE-2023-44487: streams opened and reset at once, hundreds at a time,
/// until the proxy says ENHANCE_YOUR_CALM.
async fn rapid_reset(t: Transport) -> Ending {
    let io = open(t).await;
    let (rd, mut wr) = tokio::io::split(io);
    let reader = tokio::spawn(read_until_end(rd));
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    wr.write_all(&out).await.unwrap();
    let block = request_block(scheme(t));
    let mut stream = 1u32;
    // Bounded: 100 batches of 200 streams at most.
    for _ in 0..100 {
        let mut batch = Vec::new();
        for _ in 0..200 {
            batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
            batch.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
            stream += 2;
        }
        if wr.write_all(&batch).await.is_err() || reader.is_finished() {
            break;
        }
    }
    reader.await.unwrap()
}

/// A flood of SETTINGS frames (or PINGs); with `read`, the client reads
/// (and so sees the ACKs) as it writes; without, it never acknowledges the
/// proxy's SETTINGS and reads nothing until it has sent them all.
async fn control_flood(t: Transport, kind: u8, count: u32, read: bool) -> Ending {
    let io = open(t).await;
    let (rd, mut wr) = tokio::io::split(io);
    let mut out = PREFACE.to_vec();
    for i in 0..count {
        let payload = if kind == SETTINGS {
            // SETTINGS_INITIAL_WINDOW_SIZE, a different value each time.
            let mut p = vec![0x00, 0x04];
            p.extend_from_slice(&(65_535 + i).to_be_bytes());
            p
        } else {
            u64::from(i).to_be_bytes().to_vec()
        };
        out.extend(frame(kind, 0, 0, &payload));
    }
    if read {
        let reader = tokio::spawn(read_until_end(rd));
        let _ = wr.write_all(&out).await;
        reader.await.unwrap()
    } else {
        let _ = wr.write_all(&out).await;
        read_until_end(rd).await
    }
}

fn transports(s: &Setup) -> [Transport; 2] {
    [Transport::Tls(s.https), Transport::H2c(s.http)]
}

#[test]
fn rapid_reset_gets_goaway_and_is_counted_while_others_are_served() {
    let rt = rt();
    let s = setup(&rt, "h2-rapid-reset");
    let bystander = Bystander::start(&s);
    let name = "ingress_http2_connection_errors_total{reason=\"enhance_your_calm\"}";
    for (i, t) in transports(&s).into_iter().enumerate() {
        let ending = rt.block_on(rapid_reset(t));
        assert_eq!(ending, Ending::GoAway(ENHANCE_YOUR_CALM), "{t:?}");
        wait_metric(&s.agent, name, (i + 1) as f64, &format!("{t:?}"));
        assert_eq!(
            rt.block_on(h2_get(t, &[])).unwrap(),
            200,
            "{t:?} after the attack"
        );
    }
    bystander.finish();
}

#[test]
fn settings_and_ping_floods_are_closed_and_counted_while_others_are_served() {
    let rt = rt();
    let s = setup(&rt, "h2-settings");
    let bystander = Bystander::start(&s);
    let name = "ingress_http2_connection_errors_total{reason=\"settings_flood\"}";
    let mut n = 0.0;
    for t in transports(&s) {
        for read in [true, false] {
            let ending = rt.block_on(control_flood(t, SETTINGS, 300, read));
            assert_eq!(ending, Ending::Closed, "{t:?} read={read}");
            n += 1.0;
            wait_metric(&s.agent, name, n, &format!("{t:?}"));
        }
        assert_eq!(
            rt.block_on(h2_get(t, &[])).unwrap(),
            200,
            "{t:?} after the flood"
        );
    }
    // PINGs: the budget is generous (gRPC clients ping a lot), not endless.
    let pings = "ingress_http2_connection_errors_total{reason=\"ping_flood\"}";
    for (i, t) in transports(&s).into_iter().enumerate() {
        let ending = rt.block_on(control_flood(t, PING, 12_000, true));
        assert_eq!(ending, Ending::Closed, "{t:?} pings");
        wait_metric(&s.agent, pings, (i + 1) as f64, &format!("{t:?} pings"));
    }
    bystander.finish();
}

#[test]
fn an_oversized_header_list_is_refused_431_and_the_connection_goes_on() {
    let rt = rt();
    let s = setup(&rt, "h2-big-headers");
    let bystander = Bystander::start(&s);
    // The default limit is --max-header-size (32k) + --max-uri-size (8k);
    // hyper's client Huffman-codes the value (5 bits an `a`), so 80 KiB
    // is about 50 KiB on the wire, over the limit even before decoding.
    let big = "a".repeat(80 * 1024);
    let name = "ingress_http2_oversized_header_blocks_total";
    for (i, t) in transports(&s).into_iter().enumerate() {
        let statuses = rt.block_on(async {
            let io = open(t).await;
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                    .await
                    .unwrap();
            let driver = tokio::spawn(conn);
            let refused = send(&mut sender, t, &[("x-big", &big)]).await;
            // The same connection still serves.
            let after = send(&mut sender, t, &[]).await;
            driver.abort();
            (refused, after)
        });
        match statuses.0 {
            Ok(status) => assert_eq!(status, 431, "{t:?}"),
            // h2 may also reset the stream; the connection must go on.
            Err(e) => panic!("{t:?}: the oversized request failed with {e:?}, not 431"),
        }
        assert_eq!(statuses.1.unwrap(), 200, "{t:?}");
        wait_metric(&s.agent, name, (i + 1) as f64, &format!("{t:?}"));
    }
    bystander.finish();
}

/// The first flight of a rustls client for `name`, as bytes.
fn client_hello(name: &str) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(
        Client::new(&[b"h2"], rustls::DEFAULT_VERSIONS).config,
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[test]
fn invalid_sni_and_garbage_hellos_are_refused_and_counted_while_others_are_served() {
    let rt = rt();
    let s = setup(&rt, "h2-bad-hello");
    let bystander = Bystander::start(&s);
    // A valid ClientHello with its SNI bytes replaced, same length, by a
    // name no DNS name can be.
    let good = client_hello("abcdefgh.test");
    let at = good
        .windows(8)
        .position(|w| w == b"abcdefgh")
        .expect("the SNI is in the hello");
    let mut bad_sni = good.clone();
    bad_sni[at..at + 8].copy_from_slice(b"ab_d!f h");
    let cases: [(&str, &[u8], &str); 3] = [
        ("invalid SNI", &bad_sni, "misbehaved"),
        (
            "garbage",
            &[0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00],
            "invalid_message",
        ),
        ("random bytes", &[0xff; 64], "invalid_message"),
    ];
    for (what, bytes, reason) in cases {
        let name = format!("ingress_tls_handshake_failures_total{{reason=\"{reason}\"}}");
        let before = metric(&s.agent, &name);
        let mut c = TcpStream::connect(s.https).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(bytes).unwrap();
        let mut buf = Vec::new();
        match c.read_to_end(&mut buf) {
            // At most an alert record (content type 21), then the close.
            Ok(_) => assert!(
                buf.is_empty() || (buf[0] == 0x15 && buf.len() <= 7),
                "{what}: {buf:?}"
            ),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}"),
        }
        wait_metric(&s.agent, &name, before + 1.0, what);
    }
    // The untouched hello's name is fine (no certificate for it: the
    // default one is served).
    assert_eq!(
        rt.block_on(h2_get(Transport::Tls(s.https), &[])).unwrap(),
        200
    );
    bystander.finish();
}
