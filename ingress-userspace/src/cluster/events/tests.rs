use hyper::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;
use crate::{
    cluster::access::{ACCESS, Scope},
    model::{CompileOptions, Severity, compile, reason},
};

const YAML: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: ingress-ebpf
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: ingress-ebpf.dev/controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: i, namespace: web, uid: 0f0e0d0c-0000-4000-8000-000000000001}
spec:
  tls:
  - {hosts: [s.test], secretName: other/cert}
  rules:
  - host: a.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: gone, port: {number: 80}}}}
      - {path: /x, pathType: Prefix, backend: {service: {name: gone, port: {number: 80}}}}
"#;

use crate::source::manifest::parse_clean as state;

fn problem(name: &str, reason: &'static str, message: &str) -> Problem {
    Problem {
        key: Key {
            ingress: ObjectKey::new("web", name),
            reason,
            message: message.to_string(),
        },
        regarding: ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("Ingress".into()),
            namespace: Some("web".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        },
    }
}

fn reasons(ps: &[Problem]) -> Vec<&'static str> {
    ps.iter().map(|p| p.key.reason).collect()
}

#[test]
fn problems_are_the_ingress_diagnostics_with_a_reason_once_each() {
    let s = state(YAML);
    let snap = compile(&s, &CompileOptions::default());
    let mut diags = snap.diagnostics.to_vec();
    // Not about an Ingress, or without a reason: no Event.
    diags.push(Diagnostic::error("Secret web/x", "data", "bad").with_reason("X"));
    diags.push(Diagnostic::warning("Ingress web/i", "f", "no reason"));
    let ps = problems(&s, &diags);
    // The two paths naming the missing Service are one problem.
    assert_eq!(
        reasons(&ps),
        [
            reason::SERVICE_NOT_FOUND,
            reason::TLS_SECRET_CROSS_NAMESPACE
        ],
        "{diags:?}"
    );
    assert_eq!(ps[0].key.message, "Service web/gone not found");
    let r = &ps[0].regarding;
    assert_eq!(r.kind.as_deref(), Some("Ingress"));
    assert_eq!(r.api_version.as_deref(), Some("networking.k8s.io/v1"));
    assert_eq!(r.namespace.as_deref(), Some("web"));
    assert_eq!(r.name.as_deref(), Some("i"));
    assert_eq!(
        r.uid.as_deref(),
        Some("0f0e0d0c-0000-4000-8000-000000000001")
    );
    // An Ingress the decoder rejected is known by name only.
    let unread = Diagnostic::error("Ingress web/bad", "", "cannot be read")
        .with_reason(reason::INVALID_INGRESS);
    let ps = problems(&ClusterState::default(), &[unread]);
    assert_eq!(ps[0].regarding.name.as_deref(), Some("bad"));
    assert_eq!(ps[0].regarding.uid, None);
    assert_eq!(ps[0].key.reason, reason::INVALID_INGRESS);
    assert!(
        snap.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    );
}

#[test]
fn only_new_problems_are_reported_and_a_returning_one_again() {
    let mut t = Tracker::default();
    let a = problem("a", reason::SERVICE_NOT_FOUND, "Service web/x not found");
    let b = problem("b", reason::CONFLICT_LOST, "conflict lost: ...");
    let mut update = |current: &[&Problem]| -> Vec<String> {
        let current: Vec<Problem> = current.iter().map(|p| (*p).clone()).collect();
        t.update(&current, true)
            .into_iter()
            .map(|p| format!("{} {}", p.key.ingress, p.key.message))
            .collect()
    };
    // The first snapshot as leader: everything in it.
    assert_eq!(update(&[&a]), ["web/a Service web/x not found"]);
    // Applied again, unchanged: nothing.
    assert!(update(&[&a]).is_empty());
    assert!(update(&[&a]).is_empty());
    // Another appears: only it.
    assert_eq!(update(&[&a, &b]), ["web/b conflict lost: ..."]);
    // Fixed, then broken again: reported again.
    assert!(update(&[&b]).is_empty());
    assert_eq!(update(&[&a, &b]), ["web/a Service web/x not found"]);
    // Same Ingress and reason, another message: a new problem.
    let a2 = problem("a", reason::SERVICE_NOT_FOUND, "Service web/y not found");
    assert_eq!(update(&[&a2, &b]), ["web/a Service web/y not found"]);
}

#[test]
fn a_follower_reports_nothing_and_a_new_leader_only_what_is_new() {
    let a = problem("a", reason::SERVICE_NOT_FOUND, "m");
    let b = problem("b", reason::TLS_SECRET_NOT_FOUND, "n");
    let mut t = Tracker::default();
    assert!(t.update(std::slice::from_ref(&a), false).is_empty());
    assert!(t.update(&[a.clone(), b.clone()], false).is_empty());
    // Taking over: what the old leader saw is not reported again.
    assert!(t.update(&[a.clone(), b.clone()], true).is_empty());
    let c = problem("c", reason::CONFLICT_LOST, "o");
    assert_eq!(t.update(&[a, b, c.clone()], true), [c]);
}

#[test]
fn the_bucket_allows_a_burst_then_its_refill_rate() {
    let mut b = TokenBucket::new(BURST, REFILL_PER_SECOND);
    let t0 = Instant::now();
    let allowed = (0..100).filter(|_| b.take(t0)).count();
    assert_eq!(allowed, 25);
    // One more per second after that.
    assert!(!b.take(t0 + Duration::from_millis(500)));
    assert!(b.take(t0 + Duration::from_millis(1000)));
    assert!(!b.take(t0 + Duration::from_millis(1001)));
    // A long pause refills it to the burst, not more.
    let later = t0 + Duration::from_secs(3600);
    assert_eq!((0..100).filter(|_| b.take(later)).count(), 25);
}

#[test]
fn long_notes_are_cut_to_what_the_api_accepts() {
    let short = problem("a", reason::CONFLICT_LOST, "short");
    assert_eq!(event(&short).note.as_deref(), Some("short"));
    let long = problem("a", reason::CONFLICT_LOST, &"é".repeat(1000));
    let n = event(&long).note.unwrap();
    assert!(n.len() <= NOTE_MAX, "{}", n.len());
    assert!(n.ends_with("..."));
    assert_eq!(event(&long).type_, EventType::Warning);
}

/// One request the writer sent: (method, path and query, JSON body).
type Seen = (String, String, Value);

/// A client whose API server is a mock answering `n` requests (201 with
/// the body sent back), and the requests it saw.
fn mock_client(n: usize) -> (Client, tokio::task::JoinHandle<Vec<Seen>>) {
    mock_client_answering(vec![201; n])
}

/// A client whose API server is a mock answering with `statuses` in turn
/// (the request's body sent back, or a Status for an error), and the
/// requests it saw.
fn mock_client_answering(statuses: Vec<u16>) -> (Client, tokio::task::JoinHandle<Vec<Seen>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for code in statuses {
            let (req, send) = handle.next_request().await.expect("no request sent");
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let body = req.into_body().collect_bytes().await.unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap();
            let answer = if code < 300 {
                body.to_vec()
            } else {
                serde_json::to_vec(&crate::cluster::mock::status(code, "InternalError")).unwrap()
            };
            let mut r = Response::new(Body::from(answer));
            *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
            send.send_response(r);
            seen.push((method, uri, v));
        }
        seen
    });
    (Client::new(service, "default"), server)
}

fn written(m: &EventMetrics, reason: &'static str) -> u64 {
    m.written.get_or_create(&ReasonLabels { reason }).get()
}

#[tokio::test]
async fn the_writer_creates_a_warning_event_then_patches_its_series() {
    let (client, server) = mock_client(2);
    let metrics = EventMetrics::default();
    let mut w = Writer::new(client, "node-a".into(), metrics.clone());
    let p = problem("i", reason::SERVICE_NOT_FOUND, "Service web/gone not found");
    w.write(&p).await;
    // The same problem coming back: the same Event, as a series.
    w.write(&p).await;
    let seen = server.await.unwrap();

    let (method, uri, body) = &seen[0];
    assert_eq!(method, "POST");
    assert!(
        uri.starts_with("/apis/events.k8s.io/v1/namespaces/web/events?"),
        "{uri}"
    );
    assert_eq!(body["apiVersion"], "events.k8s.io/v1");
    assert_eq!(body["kind"], "Event");
    assert_eq!(body["type"], "Warning");
    assert_eq!(body["reason"], "ServiceNotFound");
    assert_eq!(body["note"], "Service web/gone not found");
    assert_eq!(body["action"], ACTION);
    assert_eq!(body["reportingController"], CONTROLLER);
    assert_eq!(body["reportingInstance"], "node-a");
    assert_eq!(body["metadata"]["namespace"], "web");
    assert_eq!(
        body["regarding"],
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "namespace": "web", "name": "i", "uid": "uid-i"})
    );
    assert!(body["eventTime"].is_string(), "{body}");
    let name = body["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("i."), "{name}");

    let (method, uri, patch) = &seen[1];
    assert_eq!(method, "PATCH");
    assert!(
        uri.starts_with(&format!(
            "/apis/events.k8s.io/v1/namespaces/web/events/{name}?"
        )),
        "{uri}"
    );
    assert_eq!(patch["series"]["count"], 2);
    assert_eq!(patch["note"], "Service web/gone not found");
    assert_eq!(written(&metrics, reason::SERVICE_NOT_FOUND), 2);
    assert_eq!(metrics.dropped.get(), 0);

    // Exactly what the access table grants for Events.
    let row = ACCESS
        .iter()
        .find(|a| a.api_group == "events.k8s.io" && a.resource == "events")
        .expect("no Events row in the access table");
    assert_eq!(
        row.scope,
        Scope::Cluster,
        "Events go to each Ingress's namespace"
    );
    let mut verbs: Vec<&str> = seen
        .iter()
        .map(|(m, _, _)| match m.as_str() {
            "POST" => "create",
            "PATCH" => "patch",
            other => panic!("unexpected {other}"),
        })
        .collect();
    verbs.dedup();
    assert_eq!(row.verbs, verbs.as_slice());
}

#[tokio::test]
async fn what_the_bucket_refuses_is_counted_not_sent() {
    let (client, server) = mock_client(1);
    let metrics = EventMetrics::default();
    let mut w = Writer::new(client, "node-a".into(), metrics.clone());
    w.bucket = TokenBucket::new(1.0, 0.0);
    w.write(&problem("a", reason::CONFLICT_LOST, "m")).await;
    w.write(&problem("b", reason::CONFLICT_LOST, "m")).await;
    w.write(&problem("c", reason::CONFLICT_LOST, "m")).await;
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].2["regarding"]["name"], "a");
    assert_eq!(written(&metrics, reason::CONFLICT_LOST), 1);
    assert_eq!(metrics.dropped.get(), 2);
}

#[tokio::test]
async fn run_writes_only_as_leader_and_only_new_problems() {
    let (client, server) = mock_client(2);
    let metrics = EventMetrics::default();
    let w = Writer::new(client, "node-a".into(), metrics.clone());
    let (ptx, prx) = watch::channel(Vec::new());
    let (ltx, lrx) = watch::channel(None);
    let task = tokio::spawn(run(w, prx, lrx));
    // The test and the task share one thread: yielding lets the task take
    // in what was sent before the next step.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    let a = problem("a", reason::SERVICE_NOT_FOUND, "m");
    let b = problem("b", reason::SERVICE_NOT_FOUND, "m");
    // Before the first election round nothing is looked at; then, as a
    // follower, `a` is seen and not written.
    ptx.send_replace(vec![a.clone()]);
    settle().await;
    ltx.send_replace(None);
    settle().await;
    // Leader: `a` stays unreported; `b` is new.
    ltx.send_replace(Some(Vec::new()));
    ptx.send_replace(vec![a.clone(), b.clone()]);
    let until = |count: u64| {
        let m = metrics.clone();
        async move {
            while written(&m, reason::SERVICE_NOT_FOUND) < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), until(1))
        .await
        .expect("b not written");
    // `a` fixed, then back while leader: written.
    ptx.send_replace(vec![b.clone()]);
    settle().await;
    ptx.send_replace(vec![a.clone(), b.clone()]);
    let seen = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("a not written again")
        .unwrap();
    task.abort();
    let names: Vec<&str> = seen
        .iter()
        .map(|(_, _, v)| v["regarding"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "a"]);
}

#[tokio::test]
async fn a_refused_write_is_tried_again_while_the_problem_stays() {
    let (client, server) = mock_client_answering(vec![500, 201]);
    let metrics = EventMetrics::default();
    let mut w = Writer::new(client, "node-a".into(), metrics.clone());
    w.retry_after = Duration::from_millis(50);
    let (ptx, prx) = watch::channel(Vec::new());
    let (ltx, lrx) = watch::channel(None);
    let task = tokio::spawn(run(w, prx, lrx));
    let a = problem("a", reason::SERVICE_NOT_FOUND, "m");
    ltx.send_replace(Some(Vec::new()));
    ptx.send_replace(vec![a.clone()]);
    let seen = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the refused Event was not tried again")
        .unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, "POST");
    assert_eq!(seen[1].0, "POST");
    assert_eq!(seen[0].2["note"], seen[1].2["note"]);
    assert_eq!(metrics.failed.get(), 1);
    let until_written = async {
        while written(&metrics, reason::SERVICE_NOT_FOUND) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), until_written)
        .await
        .expect("not counted as written");
    task.abort();
}

#[tokio::test]
async fn a_failed_write_is_not_tried_again_once_fixed() {
    // One answer only: a second request would find the mock gone and fail,
    // counted in `failed` (checked below).
    let (client, server) = mock_client_answering(vec![500]);
    let metrics = EventMetrics::default();
    let mut w = Writer::new(client, "node-a".into(), metrics.clone());
    w.retry_after = Duration::from_millis(20);
    let (ptx, prx) = watch::channel(Vec::new());
    let (ltx, lrx) = watch::channel(None);
    let task = tokio::spawn(run(w, prx, lrx));
    ltx.send_replace(Some(Vec::new()));
    ptx.send_replace(vec![problem("a", reason::SERVICE_NOT_FOUND, "m")]);
    let seen = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("not written")
        .unwrap();
    assert_eq!(seen.len(), 1);
    // Fixed before the retry is due: nothing more is sent.
    ptx.send_replace(Vec::new());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(metrics.failed.get(), 1);
    assert!(!task.is_finished());
    task.abort();
}
