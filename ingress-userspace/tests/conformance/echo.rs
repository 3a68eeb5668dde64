//! Echo "pods": HTTP servers inside the test process, one per loopback
//! address, answering like the conformance suite's echoserver.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};

/// The port every pod listens on (each pod has its own address).
pub const POD_PORT: u16 = 8080;

/// Who a pod is, as its replies tell.
#[derive(Debug)]
struct Identity {
    namespace: String,
    service: String,
    pod: String,
    ip: Ipv4Addr,
}

/// A running echo server; dropping it stops it (and its connections).
#[derive(Debug)]
pub struct Pod {
    pub ip: Ipv4Addr,
    task: JoinHandle<()>,
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The next candidate pod address: 127.a.b.c with a in 100..200, from a
/// counter that starts at a random place so that two runs side by side
/// rarely meet (and a taken address is skipped anyway).
fn next_ip() -> Ipv4Addr {
    const PER_A: u32 = 256 * 250;
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = *START.get_or_init(|| fastrand::u32(0..100 * PER_A));
    let n = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % (100 * PER_A);
    Ipv4Addr::new(
        127,
        100 + (n / PER_A) as u8,
        ((n / 250) % 256) as u8,
        2 + (n % 250) as u8,
    )
}

/// Starts pod number `index` of `service` on a fresh loopback address.
pub async fn start(namespace: &str, service: &str, index: usize) -> anyhow::Result<Pod> {
    for _ in 0..64 {
        let ip = next_ip();
        let listener = match TcpListener::bind(SocketAddr::from((ip, POD_PORT))).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e).with_context(|| format!("binding an echo pod on {ip}")),
        };
        let who = Arc::new(Identity {
            namespace: namespace.to_string(),
            service: service.to_string(),
            pod: format!("{service}-{index}"),
            ip,
        });
        let task = tokio::spawn(serve(listener, who));
        return Ok(Pod { ip, task });
    }
    bail!("no free loopback address for an echo pod after 64 tries")
}

async fn serve(listener: TcpListener, who: Arc<Identity>) {
    // Connections live in the set, so that aborting this task ends them too.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let who = who.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let who = who.clone();
                async move { Ok::<_, Infallible>(echo(req, &who).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn echo(req: Request<Incoming>, who: &Identity) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    // Like Go's net/http: canonical names, Host taken out into `host`.
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        if name == header::HOST {
            continue;
        }
        headers
            .entry(canonical_header(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let host = parts
        .headers
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let body = serde_json::json!({
        "path": parts.uri.path(),
        "host": host,
        "method": parts.method.as_str(),
        "proto": format!("{:?}", parts.version),
        "headers": headers,
        "namespace": who.namespace,
        "service": who.service,
        "pod": who.pod,
        "podIP": who.ip.to_string(),
    })
    .to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body.clone())));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from(body.len()),
    );
    if let Ok(v) = header::HeaderValue::from_str(&http_date(SystemTime::now())) {
        h.insert(header::DATE, v);
    }
    h.insert(
        header::SERVER,
        header::HeaderValue::from_static("echoserver"),
    );
    resp
}

/// `user-agent` -> `User-Agent`.
fn canonical_header(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// RFC 9110 IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days.rem_euclid(7)) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}
