//! A stand-in for the Kubernetes API server on loopback, for cluster mode's
//! end-to-end tests: list and watch (chunked JSON event streams, bookmarks,
//! `410 Gone` as an ERROR event for a resource version older than what it
//! keeps) of the six kinds the agent watches, objects set and deleted by the
//! test, Leases and Ingress status writes (recorded with the request's
//! token), and a kubeconfig pointing at it. It can be stopped (every
//! connection dropped) and started again on the same port with a newer
//! resource version base, which expires every watch the agent had.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

type Body = BoxBody<Bytes, Infallible>;

/// (plural, kind, apiVersion, namespaced)
const KINDS: &[(&str, &str, &str, bool)] = &[
    (
        "ingressclasses",
        "IngressClass",
        "networking.k8s.io/v1",
        false,
    ),
    ("ingresses", "Ingress", "networking.k8s.io/v1", true),
    ("services", "Service", "v1", true),
    (
        "endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
        true,
    ),
    ("secrets", "Secret", "v1", true),
    ("nodes", "Node", "v1", false),
];

fn kind_of(plural: &str) -> Option<&'static (&'static str, &'static str, &'static str, bool)> {
    KINDS.iter().find(|k| k.0 == plural)
}

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    plural: &'static str,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Db {
    rv: u64,
    /// Watches from a resource version below this get 410 Gone.
    oldest: u64,
    /// (plural, namespace, name) -> object.
    objects: BTreeMap<(&'static str, String, String), Value>,
    log: Vec<Event>,
    /// Requests served, as "METHOD path?query".
    requests: Vec<String>,
    /// Watches answered with 410 Gone.
    expired: usize,
    /// (namespace, name) -> Lease.
    leases: BTreeMap<(String, String), Value>,
    /// Ingress status patches applied.
    status_writes: usize,
    /// Events (events.k8s.io/v1) as written: see `event_route`.
    events: EventStore,
    /// Status and Lease writes, in order (see `Write`).
    writes: Vec<Write>,
}

/// One write to a Lease or to an Ingress's status, as the double took it.
#[derive(Clone, Debug)]
pub struct Write {
    /// "leases" or "ingresses/status".
    pub resource: &'static str,
    pub namespace: String,
    pub name: String,
    /// The bearer token of the request (tells agents apart when each has a
    /// kubeconfig of its own, see `ApiServer::kubeconfig_with_token`).
    pub token: String,
    /// The object as stored after the write.
    pub object: Value,
}

struct Inner {
    db: Mutex<Db>,
    events: broadcast::Sender<Event>,
}

/// The API server double.
pub struct ApiServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ApiServer {
    /// Starts on a free loopback port, on `rt`.
    pub fn start(rt: &tokio::runtime::Runtime) -> ApiServer {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binding the API server double");
        Self::start_on(rt, listener)
    }

    /// Starts on a free loopback port of network namespace `ns` (an agent
    /// running there reaches it at 127.0.0.1, as its kubeconfig says), on
    /// `rt`. The listening socket is made by a thread that joined `ns`, and
    /// a socket stays in the namespace it was made in. (`restart` binds in
    /// the test's own namespace: not for a server started this way.)
    pub fn start_in_netns(rt: &tokio::runtime::Runtime, ns: &str) -> ApiServer {
        let listener = xtask::testbed::in_netns(ns, || {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })
        .unwrap_or_else(|e| panic!("binding the API server double in {ns}: {e}"));
        let _guard = rt.enter();
        let listener =
            tokio::net::TcpListener::from_std(listener).expect("registering the listener");
        Self::start_on(rt, listener)
    }

    fn start_on(rt: &tokio::runtime::Runtime, listener: tokio::net::TcpListener) -> ApiServer {
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            db: Mutex::new(Db {
                rv: 100,
                oldest: 100,
                ..Db::default()
            }),
            events,
        });
        let addr = listener.local_addr().unwrap();
        let mut s = ApiServer {
            addr,
            inner,
            handle: rt.handle().clone(),
            task: None,
        };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let inner = self.inner.clone();
        self.task = Some(self.handle.spawn(async move {
            // Connections live in this set: aborting the task drops them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let inner = inner.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let inner = inner.clone();
                        async move { Ok::<_, Infallible>(route(req, inner).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        }));
    }

    /// Stops answering: the listener and every open watch are closed.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = self.handle.block_on(t);
        }
    }

    /// Starts again on the same port with the resource version moved on by
    /// `bump`: every resource version handed out before is now too old.
    pub fn restart(&mut self, bump: u64) {
        assert!(self.task.is_none(), "stop first");
        {
            let mut db = self.inner.db.lock().unwrap();
            db.rv += bump;
            db.oldest = db.rv;
            db.log.clear();
        }
        let listener = self
            .handle
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .expect("binding the API server double again");
        self.serve(listener);
    }

    /// Creates or replaces every object of a YAML stream.
    pub fn apply_yaml(&self, yaml: &str) {
        use serde::Deserialize;
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v = Value::deserialize(doc).expect("YAML document");
            if !v.is_null() {
                self.apply(v);
            }
        }
    }

    /// Creates or replaces one object (by its kind, namespace and name).
    pub fn apply(&self, mut object: Value) {
        let kind = object["kind"].as_str().expect("object kind").to_string();
        let &(plural, _, _, namespaced) = KINDS
            .iter()
            .find(|k| k.1 == kind)
            .unwrap_or_else(|| panic!("kind {kind} is not served"));
        let meta = &mut object["metadata"];
        let name = meta["name"].as_str().expect("metadata.name").to_string();
        let ns = if namespaced {
            let ns = meta["namespace"].as_str().unwrap_or("default").to_string();
            meta["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        if kind == "Secret" {
            string_data_to_data(&mut object);
        }
        let mut db = self.inner.db.lock().unwrap();
        db.rv += 1;
        let rv = db.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let old = db.objects.insert((plural, ns, name), object.clone());
        let event = if old.is_some() { "MODIFIED" } else { "ADDED" };
        Self::record(&mut db, &self.inner, rv, plural, event, object);
    }

    /// Replaces an object's spec as an update of the main resource does on
    /// the real server: the status it holds stays (only the status
    /// subresource changes it). For Ingresses moved between classes.
    pub fn update_keeping_status(&self, yaml: &str) {
        let mut object: Value = serde_yaml::from_str(yaml).expect("YAML object");
        let kind = object["kind"].as_str().expect("object kind").to_string();
        let &(plural, _, _, namespaced) = KINDS.iter().find(|k| k.1 == kind).unwrap();
        let ns = if namespaced {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if let Some(status) = self
            .get(plural, &ns, &name)
            .and_then(|old| old.get("status").cloned())
        {
            object["status"] = status;
        }
        self.apply(object);
    }

    /// Deletes an object; true when it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let &(plural, _, _, namespaced) = KINDS.iter().find(|k| k.1 == kind).unwrap();
        let ns = if namespaced { namespace } else { "" };
        let mut db = self.inner.db.lock().unwrap();
        let Some(mut object) = db
            .objects
            .remove(&(plural, ns.to_string(), name.to_string()))
        else {
            return false;
        };
        db.rv += 1;
        let rv = db.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        Self::record(&mut db, &self.inner, rv, plural, "DELETED", object);
        true
    }

    fn record(
        db: &mut Db,
        inner: &Inner,
        rv: u64,
        plural: &'static str,
        kind: &'static str,
        object: Value,
    ) {
        let e = Event {
            rv,
            plural,
            kind,
            object,
        };
        db.log.push(e.clone());
        // Sent under the lock: a watch that subscribed under it misses
        // nothing and sees nothing twice.
        let _ = inner.events.send(e);
    }

    /// The requests served so far ("GET /path?query").
    pub fn requests(&self) -> Vec<String> {
        self.inner.db.lock().unwrap().requests.clone()
    }

    /// An object as the server holds it now.
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let db = self.inner.db.lock().unwrap();
        db.objects
            .iter()
            .find(|((p, n, m), _)| *p == plural && n == namespace && m == name)
            .map(|(_, o)| o.clone())
    }

    /// A Lease as the server holds it now.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        let db = self.inner.db.lock().unwrap();
        db.leases
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// How many Ingress status patches were applied.
    pub fn status_writes(&self) -> usize {
        self.inner.db.lock().unwrap().status_writes
    }

    /// Every Lease and Ingress status write so far, in order.
    pub fn writes(&self) -> Vec<Write> {
        self.inner.db.lock().unwrap().writes.clone()
    }

    /// How many watches were answered with 410 Gone.
    pub fn expired(&self) -> usize {
        self.inner.db.lock().unwrap().expired
    }

    /// A kubeconfig file in `dir` pointing at this server (plain HTTP, a
    /// bearer token it does not check).
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        self.kubeconfig_with_token(dir, "test-token")
    }

    /// The same with `token` as the bearer token, which `writes` records:
    /// one per agent tells whose writes they are.
    pub fn kubeconfig_with_token(&self, dir: &Path, token: &str) -> PathBuf {
        let path = dir.join(format!("kubeconfig-{token}"));
        std::fs::write(
            &path,
            format!(
                r#"apiVersion: v1
kind: Config
clusters:
- name: double
  cluster: {{server: "http://{}"}}
users:
- name: agent
  user: {{token: {token}}}
contexts:
- name: double
  context: {{cluster: double, user: agent, namespace: default}}
current-context: double
"#,
                self.addr,
                token = token
            ),
        )
        .unwrap();
        path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// What the API server does on write: `stringData` merged into `data`,
/// base64-encoded, and dropped.
fn string_data_to_data(secret: &mut Value) {
    use base64::Engine;
    let Some(Value::Object(sd)) = secret.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    if !secret["data"].is_object() {
        secret["data"] = json!({});
    }
    for (k, v) in sd {
        let text = v.as_str().unwrap_or_default();
        secret["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// `/api/v1/[namespaces/NS/]PLURAL` or `/apis/GROUP/v1/[namespaces/NS/]PLURAL`.
fn parse_path(path: &str) -> Option<(&'static str, Option<String>)> {
    let rest = path.strip_prefix("/api/v1/").or_else(|| {
        path.strip_prefix("/apis/")
            .and_then(|p| p.split_once("/v1/").map(|(_, r)| r))
    })?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["namespaces", ns, plural] => Some((kind_of(plural)?.0, Some(ns.to_string()))),
        [plural] => Some((kind_of(plural)?.0, None)),
        _ => None,
    }
}

fn query(req: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%2F", "/")))
        .collect()
}

/// Whether `object` (of `plural`) passes the namespace and field selector.
fn selected(object: &Value, ns: &Option<String>, fields: Option<&String>) -> bool {
    if let Some(ns) = ns
        && object["metadata"]["namespace"].as_str() != Some(ns)
    {
        return false;
    }
    match fields.and_then(|f| f.split_once('=')) {
        Some(("type", t)) => object["type"].as_str() == Some(t),
        _ => true,
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in p {
                if v.is_null() {
                    target.as_object_mut().unwrap().remove(k);
                } else {
                    merge(&mut target[k], v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Records a write request (method and path) and reads its body whole.
async fn record_and_read(req: Request<hyper::body::Incoming>, inner: &Inner) -> Bytes {
    let line = format!("{} {}?", req.method(), req.uri().path());
    inner.db.lock().unwrap().requests.push(line);
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

/// Writes: Leases (get, list by label, create, update with a
/// resourceVersion check) and Ingress status (merge patch), each write
/// recorded with its token; everything else is `handle`.
async fn route(req: Request<hyper::body::Incoming>, inner: Arc<Inner>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if let Some((ns, name)) = event_path(&path) {
        return event_route(req, inner, ns, name).await;
    }
    let method = req.method().clone();
    let lease = path
        .strip_prefix("/apis/coordination.k8s.io/v1/namespaces/")
        .and_then(|r| r.split_once("/leases"))
        .map(|(ns, rest)| (ns.to_string(), rest.trim_start_matches('/').to_string()));
    let status_of = path
        .strip_prefix("/apis/networking.k8s.io/v1/namespaces/")
        .and_then(|r| r.strip_suffix("/status"))
        .and_then(|r| r.split_once("/ingresses/"))
        .map(|(ns, name)| (ns.to_string(), name.to_string()));
    if lease.is_none() && status_of.is_none() {
        return handle(req, inner);
    }
    let token = bearer(&req);
    let label_selector = query(&req).get("labelSelector").cloned();
    let bytes = record_and_read(req, &inner).await;
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut db = inner.db.lock().unwrap();
    let conflict = |m: &str| json_response(StatusCode::CONFLICT, &status(409, "Conflict", m));
    if let Some((ns, name)) = lease {
        let key = (ns.clone(), name.clone());
        if name.is_empty() && method == hyper::Method::GET {
            return list_leases(&db, &ns, label_selector.as_deref());
        }
        let response = match method {
            hyper::Method::GET => match db.leases.get(&key) {
                Some(l) => json_response(StatusCode::OK, l),
                None => json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &name)),
            },
            hyper::Method::POST => {
                let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
                if db.leases.contains_key(&(ns.clone(), name.clone())) {
                    return conflict("exists");
                }
                db.rv += 1;
                let mut l = body;
                l["metadata"]["namespace"] = json!(ns);
                l["metadata"]["resourceVersion"] = json!(db.rv.to_string());
                db.leases.insert((ns.clone(), name), l.clone());
                json_response(StatusCode::CREATED, &l)
            }
            hyper::Method::PUT => {
                let held = db
                    .leases
                    .get(&key)
                    .map(|l| l["metadata"]["resourceVersion"].clone());
                if held.is_none() || held.as_ref() != Some(&body["metadata"]["resourceVersion"]) {
                    return conflict("resourceVersion changed");
                }
                db.rv += 1;
                let mut l = body;
                l["metadata"]["resourceVersion"] = json!(db.rv.to_string());
                db.leases.insert(key, l.clone());
                json_response(StatusCode::OK, &l)
            }
            _ => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &status(405, "MethodNotAllowed", ""),
            ),
        };
        if matches!(method, hyper::Method::POST | hyper::Method::PUT) {
            record_lease_write(&mut db, &ns, &token);
        }
        return response;
    }
    let Some((ns, name)) = status_of else {
        return handle_unreachable();
    };
    if method != hyper::Method::PATCH {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(405, "MethodNotAllowed", ""),
        );
    }
    let Some(mut obj) = db
        .objects
        .get(&("ingresses", ns.clone(), name.clone()))
        .cloned()
    else {
        return json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &name));
    };
    // Only the status of a status patch counts.
    merge(&mut obj["status"], &body["status"]);
    db.rv += 1;
    let rv = db.rv;
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    db.objects
        .insert(("ingresses", ns.clone(), name.clone()), obj.clone());
    db.status_writes += 1;
    db.writes.push(Write {
        resource: "ingresses/status",
        namespace: ns.clone(),
        name: name.clone(),
        token,
        object: obj.clone(),
    });
    ApiServer::record(&mut db, &inner, rv, "ingresses", "MODIFIED", obj.clone());
    json_response(StatusCode::OK, &obj)
}

/// The bearer token of a request ("" without one).
fn bearer(req: &Request<hyper::body::Incoming>) -> String {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string()
}

/// `GET .../namespaces/NS/leases[?labelSelector=K=V]`: the Leases of `ns`
/// carrying label K=V (only that equality form is understood).
fn list_leases(db: &Db, ns: &str, selector: Option<&str>) -> Response<Body> {
    let wanted = selector.and_then(|s| s.split_once('='));
    let items: Vec<Value> = db
        .leases
        .iter()
        .filter(|((n, _), _)| n == ns)
        .filter(|(_, l)| match wanted {
            Some((k, v)) => l["metadata"]["labels"][k].as_str() == Some(v),
            None => true,
        })
        .map(|(_, l)| l.clone())
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "LeaseList", "apiVersion": "coordination.k8s.io/v1",
                "metadata": {"resourceVersion": db.rv.to_string()}, "items": items}),
    )
}

/// Records the Lease just created or updated (the one with the newest
/// resource version) in `writes`.
fn record_lease_write(db: &mut Db, ns: &str, token: &str) {
    let rv = db.rv.to_string();
    let written = db
        .leases
        .iter()
        .find(|((n, _), l)| n == ns && l["metadata"]["resourceVersion"] == json!(rv))
        .map(|((n, name), l)| (n.clone(), name.clone(), l.clone()));
    if let Some((namespace, name, object)) = written {
        db.writes.push(Write {
            resource: "leases",
            namespace,
            name,
            token: token.to_string(),
            object,
        });
    }
}

fn handle_unreachable() -> Response<Body> {
    json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", ""))
}

fn handle(req: Request<hyper::body::Incoming>, inner: Arc<Inner>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let q = query(&req);
    inner.db.lock().unwrap().requests.push(format!(
        "{} {}?{}",
        req.method(),
        path,
        req.uri().query().unwrap_or("")
    ));
    let Some((plural, ns)) = parse_path(&path) else {
        return json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &path));
    };
    if req.method() != hyper::Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(405, "MethodNotAllowed", "read only"),
        );
    }
    let &(_, kind, api_version, _) = kind_of(plural).unwrap();
    let fields = q.get("fieldSelector");
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let mut db = inner.db.lock().unwrap();
    if !watching {
        let items: Vec<Value> = db
            .objects
            .iter()
            .filter(|((p, _, _), o)| *p == plural && selected(o, &ns, fields))
            .map(|(_, o)| o.clone())
            .collect();
        return json_response(
            StatusCode::OK,
            &json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                    "metadata": {"resourceVersion": db.rv.to_string()}, "items": items}),
        );
    }
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(db.rv);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let line = |v: Value| Bytes::from(format!("{v}\n"));
    if from < db.oldest {
        db.expired += 1;
        let _ = tx.try_send(line(json!({"type": "ERROR", "object":
            status(410, "Expired", &format!("too old resource version: {from} ({})", db.oldest))})));
        drop(tx);
    } else {
        let mut sub = inner.events.subscribe();
        let backlog: Vec<Event> = db
            .log
            .iter()
            .filter(|e| e.rv > from && e.plural == plural)
            .cloned()
            .collect();
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
        let inner2 = inner.clone();
        let ns2 = ns.clone();
        let fields = fields.cloned();
        tokio::spawn(async move {
            let send = |e: &Event| line(json!({"type": e.kind, "object": e.object}));
            let mut last = from;
            for e in &backlog {
                if selected(&e.object, &ns2, fields.as_ref()) && tx.send(send(e)).await.is_err() {
                    return;
                }
                last = e.rv;
            }
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    biased;
                    _ = tx.closed() => return,
                    e = sub.recv() => match e {
                        Ok(e) if e.rv > last && e.plural == plural => {
                            last = e.rv;
                            if selected(&e.object, &ns2, fields.as_ref())
                                && tx.send(send(&e)).await.is_err()
                            {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    },
                    _ = tick.tick(), if bookmarks => {
                        let rv = inner2.db.lock().unwrap().rv;
                        if rv > last {
                            // Only when nothing of ours is in flight.
                            if !sub.is_empty() {
                                continue;
                            }
                            last = rv;
                            let b = json!({"type": "BOOKMARK", "object": {"kind": kind,
                                "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}}});
                            if tx.send(line(b)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
    }
    drop(db);
    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

// Events: create and merge patch of events.k8s.io/v1 Events, as
// kube-runtime's Recorder writes them (kept apart from the other routes).

/// One write of an Event.
#[derive(Clone, Debug)]
pub struct EventWrite {
    /// `POST` (create) or `PATCH`.
    pub method: String,
    pub namespace: String,
    /// The Event's name.
    pub name: String,
    /// The body as sent.
    pub body: Value,
}

#[derive(Default)]
struct EventStore {
    /// (namespace, name) -> Event as held now.
    objects: BTreeMap<(String, String), Value>,
    writes: Vec<EventWrite>,
}

impl ApiServer {
    /// The Events the server holds now, in (namespace, name) order.
    pub fn events(&self) -> Vec<Value> {
        let db = self.inner.db.lock().unwrap();
        db.events.objects.values().cloned().collect()
    }

    /// Every Event write accepted so far, in order.
    pub fn event_writes(&self) -> Vec<EventWrite> {
        self.inner.db.lock().unwrap().events.writes.clone()
    }
}

/// `/apis/events.k8s.io/v1/namespaces/NS/events[/NAME]`.
fn event_path(path: &str) -> Option<(String, Option<String>)> {
    let (ns, rest) = path
        .strip_prefix("/apis/events.k8s.io/v1/namespaces/")?
        .split_once("/events")?;
    match rest {
        "" => Some((ns.to_string(), None)),
        r => r
            .strip_prefix('/')
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .map(|n| (ns.to_string(), Some(n.to_string()))),
    }
}

/// POST on the collection creates (409 if the name is taken); PATCH on an
/// Event merges the patch (404 if absent). Both are recorded.
async fn event_route(
    req: Request<hyper::body::Incoming>,
    inner: Arc<Inner>,
    ns: String,
    name: Option<String>,
) -> Response<Body> {
    let method = req.method().clone();
    let bytes = record_and_read(req, &inner).await;
    let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", "not JSON"),
        );
    };
    let mut db = inner.db.lock().unwrap();
    db.rv += 1;
    let rv = db.rv.to_string();
    let (key, held, code) = match (&method, name) {
        (&hyper::Method::POST, None) => {
            let Some(n) = body["metadata"]["name"].as_str().map(str::to_string) else {
                return json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &status(422, "Invalid", "metadata.name is required"),
                );
            };
            let key = (ns.clone(), n);
            if db.events.objects.contains_key(&key) {
                return json_response(StatusCode::CONFLICT, &status(409, "AlreadyExists", &key.1));
            }
            let mut e = body.clone();
            e["metadata"]["namespace"] = json!(ns);
            (key, e, StatusCode::CREATED)
        }
        (&hyper::Method::PATCH, Some(n)) => {
            let key = (ns.clone(), n);
            let Some(mut e) = db.events.objects.get(&key).cloned() else {
                return json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &key.1));
            };
            merge(&mut e, &body);
            (key, e, StatusCode::OK)
        }
        _ => {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &status(405, "MethodNotAllowed", "create and patch only"),
            );
        }
    };
    let mut held = held;
    held["metadata"]["resourceVersion"] = json!(rv);
    db.events.writes.push(EventWrite {
        method: method.to_string(),
        namespace: key.0.clone(),
        name: key.1.clone(),
        body,
    });
    db.events.objects.insert(key, held.clone());
    json_response(code, &held)
}
