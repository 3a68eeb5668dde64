//! The cluster tests' API server double (tests/support/apiserver.rs) as a
//! program, for `cargo xtask bench sync`: the agent runs with `--kubeconfig`
//! against it while the bench changes objects through a control listener.
//!
//! `apiserver_double DIR [SEED]`:
//!
//! - serves the API on a free loopback port and writes `DIR/kubeconfig`
//!   pointing at it;
//! - creates the objects of SEED (one JSON object per line), if given;
//! - then serves the control listener on another free loopback port and
//!   writes its address to `DIR/control` (written last: once it exists the
//!   seed is loaded):
//!   - `POST /apply` with JSON objects, one per line: each is created or
//!     replaced, in order, and its watch event sent before the answer;
//!   - `POST /delete?kind=K&namespace=NS&name=N`: answers 200 or 404.
//!
//! Runs until killed.

use std::{
    convert::Infallible,
    io::BufRead,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, service::service_fn};
use hyper_util::rt::TokioIo;

#[path = "../tests/support/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;

use apiserver::ApiServer;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        anyhow::bail!("usage: apiserver_double DIR [SEED]");
    };
    let seed = args.next().map(PathBuf::from);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("building the runtime")?;
    let api = ApiServer::start(&rt);
    // The double names it after the token; the bench reads DIR/kubeconfig.
    let written = api.kubeconfig(&dir);
    std::fs::rename(&written, dir.join("kubeconfig"))
        .with_context(|| format!("renaming {}", written.display()))?;
    if let Some(seed) = &seed {
        let n = load(&api, seed)?;
        println!("seeded {n} objects from {}", seed.display());
    }
    let api = Arc::new(api);
    rt.block_on(control(api.clone(), &dir))
}

/// Creates every object of `seed` (JSON lines); returns how many.
fn load(api: &ApiServer, seed: &Path) -> anyhow::Result<usize> {
    let file = std::fs::File::open(seed).with_context(|| format!("opening {}", seed.display()))?;
    let mut n = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", seed.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}", seed.display(), i + 1))?;
        api.apply(v);
        n += 1;
    }
    Ok(n)
}

async fn control(api: Arc<ApiServer>, dir: &Path) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the control listener")?;
    let addr = listener.local_addr().context("control address")?;
    let tmp = dir.join(".control");
    std::fs::write(&tmp, addr.to_string()).context("writing the control address")?;
    std::fs::rename(&tmp, dir.join("control")).context("renaming the control address")?;
    println!("api http://{} control http://{addr}", api.addr);
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        let api = api.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(serve(req, &api).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn serve(req: Request<hyper::body::Incoming>, api: &ApiServer) -> Response<Full<Bytes>> {
    let answer = |code: StatusCode, text: String| {
        let mut r = Response::new(Full::new(Bytes::from(text)));
        *r.status_mut() = code;
        r
    };
    let path = req.uri().path().to_string();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let arg = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    match (req.method().as_str(), path.as_str()) {
        ("POST", "/apply") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return answer(StatusCode::BAD_REQUEST, format!("reading: {e}\n")),
            };
            let mut objects = Vec::new();
            for line in body.split(|b| *b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<serde_json::Value>(line) {
                    Ok(v) if v["kind"].is_string() && v["metadata"]["name"].is_string() => {
                        objects.push(v)
                    }
                    Ok(_) => {
                        return answer(
                            StatusCode::BAD_REQUEST,
                            "an object needs kind and metadata.name\n".into(),
                        );
                    }
                    Err(e) => return answer(StatusCode::BAD_REQUEST, format!("JSON: {e}\n")),
                }
            }
            let n = objects.len();
            for v in objects {
                api.apply(v);
            }
            answer(StatusCode::OK, format!("applied {n}\n"))
        }
        ("POST", "/delete") => {
            if api.delete(&arg("kind"), &arg("namespace"), &arg("name")) {
                answer(StatusCode::OK, "deleted\n".into())
            } else {
                answer(StatusCode::NOT_FOUND, "not found\n".into())
            }
        }
        _ => answer(StatusCode::NOT_FOUND, format!("no route {path}\n")),
    }
}
