//! Test backends standing in for pods: a hyper server with a few behaviours
//! chosen by path, and a raw one that breaks mid-response.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

type Body = BoxBody<Bytes, Infallible>;

/// What the backend saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body_len: usize,
}

/// A pod: counts connections, records requests.
pub struct Backend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The deterministic content of `/big/N`: byte i is i % 251.
pub fn big_byte(i: usize) -> u8 {
    (i % 251) as u8
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

async fn respond(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    name: String,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let method = req.method().to_string();
    if path == "/ws" {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        seen.lock().unwrap().push(Seen {
            method,
            path,
            headers,
            body_len: 0,
        });
        let mut r = full(StatusCode::SWITCHING_PROTOCOLS, "");
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut()
            .insert("connection", "Upgrade".parse().unwrap());
        return r;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body_len: body.len(),
    });
    if let Some(n) = path.strip_prefix("/big/") {
        let n: usize = n.parse().unwrap_or(0);
        let data: Vec<u8> = (0..n).map(big_byte).collect();
        return full(StatusCode::OK, data);
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    let sum: u64 = body.iter().map(|b| *b as u64).sum();
    let reply = serde_json::json!({
        "pod": name,
        "method": method,
        "path": path,
        "headers": headers,
        "body_len": body.len(),
        "body_sum": sum,
    });
    let mut r = full(StatusCode::OK, reply.to_string());
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    // A hop-by-hop header the proxy must not pass on.
    r.headers_mut()
        .insert("keep-alive", "timeout=5".parse().unwrap());
    r
}

impl Backend {
    /// Starts a backend on `addr` (a loopback address; port 0 picks one).
    pub async fn start(addr: SocketAddr, name: &str) -> Backend {
        let listener = TcpListener::bind(addr)
            .await
            .expect("binding a test backend");
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s, name) = (connections.clone(), seen.clone(), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (s, name) = (s.clone(), name.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (s, name) = (s.clone(), name.clone());
                        async move { Ok::<_, Infallible>(respond(req, s, name).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend {
            addr,
            connections,
            seen,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A backend that answers every request with a Content-Length of 100000,
/// sends 10 bytes, then resets the connection.
pub async fn resetting_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789")
                    .await;
                let _ = s.set_zero_linger();
                drop(s);
            });
        }
    });
    (addr, task)
}
