//! Cluster mode end to end: the real `ingress` binary with `--kubeconfig`
//! pointing at the in-repo API server double (tests/support/apiserver.rs),
//! test backends standing in for pods, on loopback.

mod support;

use std::{net::SocketAddr, thread, time::Duration};

use support::{
    Agent, TempDir, apiserver::ApiServer, backend::Backend, free_port, get, ingress_bin, manifests,
    wait_until,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A double holding our IngressClass, Service `svc-a` whose endpoint is
/// `a`, and an Ingress `name` for `host` (`/`) on that Service.
fn api_serving(rt: &tokio::runtime::Runtime, a: &Backend, name: &str, host: &str) -> ApiServer {
    let api = ApiServer::start(rt);
    api.apply_yaml(&manifests::class());
    api.apply_yaml(&manifests::service("svc-a", &[a.addr]));
    api.apply_yaml(&manifests::ingress(name, host, "/", "svc-a"));
    api
}

fn backend(rt: &tokio::runtime::Runtime, name: &str) -> Backend {
    rt.block_on(Backend::start("127.0.0.1:0".parse().unwrap(), name))
}

/// The agent in cluster mode on loopback, with its HTTP address.
fn start_agent(kubeconfig: &std::path::Path, extra: &[&str]) -> (Agent, SocketAddr) {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (http_s, kc) = (http.to_string(), kubeconfig.display().to_string());
    let mut args = vec![
        "--kubeconfig",
        &kc,
        "--http-listen",
        &http_s,
        "--xdp-mode",
        "off",
    ];
    args.extend_from_slice(extra);
    (Agent::start_local(&ingress_bin(), &args, admin), http)
}

/// (status, pod name or "") of `GET /` on `host`.
fn pod(http: SocketAddr, host: &str) -> (u16, String) {
    match get(http, host, "/") {
        Ok(r) if r.status == 200 => (200, r.json()["pod"].as_str().unwrap_or("").to_string()),
        Ok(r) => (r.status, String::new()),
        Err(e) => (0, e.to_string()),
    }
}

/// Waits (bounded) until `host` answers `want`; panics with the last answer.
fn wait_for(http: SocketAddr, host: &str, want: (u16, &str)) {
    wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        let got = pod(http, host);
        if got.0 == want.0 && got.1 == want.1 {
            Ok(())
        } else {
            Err(format!("{host}: wanted {want:?}, still {got:?}"))
        }
    });
}

fn metric(agent: &Agent, name: &str) -> f64 {
    agent
        .metrics()
        .iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn traffic_follows_the_api_and_survives_its_outage_and_relist() {
    let rt = rt();
    let a = backend(&rt, "a");
    let b = backend(&rt, "b");
    let mut api = api_serving(&rt, &a, "a", "a.test");
    let dir = TempDir::new("cluster");
    let (mut agent, http) = start_agent(&api.kubeconfig(dir.path()), &[]);

    // Ready means listed and applied: served at once.
    assert_eq!(pod(http, "a.test"), (200, "a".to_string()));
    assert_eq!(pod(http, "b.test").0, 404);

    // Every kind was listed and watched, Secrets of the TLS type only.
    let reqs = api.requests();
    for path in [
        "/apis/networking.k8s.io/v1/ingressclasses",
        "/apis/networking.k8s.io/v1/ingresses",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/secrets",
        "/api/v1/nodes",
    ] {
        assert!(
            reqs.iter().any(|r| r.starts_with(&format!("GET {path}?"))),
            "{path} not listed: {reqs:?}"
        );
    }
    assert!(
        reqs.iter()
            .filter(|r| r.starts_with("GET /api/v1/secrets?"))
            .all(|r| r.contains("fieldSelector=type")),
        "{reqs:?}"
    );

    // Add: a new Service and Ingress.
    api.apply_yaml(&manifests::service("svc-b", &[b.addr]));
    api.apply_yaml(&manifests::ingress("b", "b.test", "/", "svc-b"));
    wait_for(http, "b.test", (200, "b"));

    // Change: svc-a's endpoints move to pod b.
    api.apply_yaml(&manifests::service("svc-a", &[b.addr]));
    wait_for(http, "a.test", (200, "b"));

    // Delete: the EndpointSlice (503), then the Ingress (404).
    assert!(api.delete("EndpointSlice", "default", "svc-b-1"));
    wait_for(http, "b.test", (503, ""));
    assert!(api.delete("Ingress", "default", "b"));
    wait_for(http, "b.test", (404, ""));
    api.apply_yaml(&manifests::service("svc-a", &[a.addr]));
    wait_for(http, "a.test", (200, "a"));

    // An object the agent cannot read is reported and skipped; the rest
    // keeps serving and the watch goes on.
    api.apply(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "broken", "namespace": "default"},
        "spec": {"rules": "not a list"},
    }));
    api.apply_yaml(&manifests::ingress("b", "b2.test", "/", "svc-a"));
    wait_for(http, "b2.test", (200, "a"));
    assert!(metric(&agent, "ingress_config_diagnostics") >= 1.0);
    // Each applied burst observed once in the latency histogram.
    assert!(metric(&agent, "ingress_cluster_event_to_apply_seconds_count") >= 5.0);
    let generation = metric(&agent, "ingress_snapshot_generation");

    // Watches (with their bookmarks) ran without a single failure so far.
    let log = agent.take_output();
    assert!(!log.contains("watch failed"), "{log}");

    // The API server goes away: the last snapshot keeps serving, ready.
    api.stop();
    for _ in 0..20 {
        assert_eq!(pod(http, "a.test"), (200, "a".to_string()));
        assert_eq!(pod(http, "b2.test"), (200, "a".to_string()));
        assert_eq!(agent.get("/readyz").unwrap().0, 200);
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&agent, "ingress_snapshot_generation"), generation);

    // Changes made meanwhile, then back with a newer resource version
    // base: the agent's watches are expired (410), it relists and
    // converges. Objects present before and after never stop serving.
    api.apply_yaml(&manifests::ingress("c", "c.test", "/", "svc-a"));
    assert!(api.delete("Ingress", "default", "broken"));
    api.restart(1000);
    wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        if pod(http, "c.test").0 == 200 {
            return Ok(());
        }
        assert_eq!(pod(http, "a.test"), (200, "a".to_string()));
        assert_eq!(agent.get("/readyz").unwrap().0, 200);
        Err("no relist".to_string())
    });
    assert_eq!(pod(http, "c.test"), (200, "a".to_string()));
    assert_eq!(pod(http, "b2.test"), (200, "a".to_string()));
    // The old watches were expired and every kind was listed again.
    assert!(api.expired() >= 1, "no watch was answered 410");
    let log = agent.take_output();
    let ingress_lists = log
        .lines()
        .filter(|l| l.contains("listed") && l.contains("kind=\"Ingress\""))
        .count();
    assert!(ingress_lists >= 2, "Ingresses not relisted:\n{log}");

    // And it keeps watching after the relist.
    api.apply_yaml(&manifests::ingress("d", "d.test", "/", "svc-a"));
    wait_for(http, "d.test", (200, "a"));
    wait_for(http, "c.test", (200, "a"));
    let log = agent.take_output();
    assert!(!log.contains("panicked"), "{log}");
    drop(b);
}

#[test]
fn watch_namespace_limits_the_namespaced_kinds() {
    let rt = rt();
    let a = backend(&rt, "a");
    let api = api_serving(&rt, &a, "a", "a.test");
    let other = manifests::service("svc-a", &[a.addr])
        .replace("namespace: default", "namespace: other")
        + &manifests::ingress("o", "other.test", "/", "svc-a")
            .replace("namespace: default", "namespace: other");
    api.apply_yaml(&other);
    let dir = TempDir::new("cluster-ns");
    let (_agent, http) = start_agent(
        &api.kubeconfig(dir.path()),
        &["--watch-namespace", "default"],
    );
    assert_eq!(pod(http, "a.test"), (200, "a".to_string()));
    assert_eq!(pod(http, "other.test").0, 404);
    let reqs = api.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("GET /apis/networking.k8s.io/v1/namespaces/default/ingresses?")),
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("GET /apis/networking.k8s.io/v1/ingressclasses?")),
        "{reqs:?}"
    );
    assert!(
        !reqs
            .iter()
            .any(|r| r.starts_with("GET /apis/networking.k8s.io/v1/ingresses?")),
        "{reqs:?}"
    );
}

#[test]
fn an_unreachable_api_server_leaves_the_agent_unready() {
    let rt = rt();
    let mut api = ApiServer::start(&rt);
    api.apply_yaml(&manifests::class());
    let dir = TempDir::new("cluster-down");
    let kc = api.kubeconfig(dir.path());
    api.stop();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = std::process::Command::new(ingress_bin())
        .args(["run", "--kubeconfig"])
        .arg(&kc)
        .args([
            "--http-listen",
            &http.to_string(),
            "--admin-listen",
            &admin.to_string(),
            "--xdp-mode",
            "off",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Alive (healthz) but never ready while nothing was listed.
    let health = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        support::http_get(admin, "/healthz").map_err(|e| format!("admin listener not up: {e}"))
    });
    assert_eq!(health.0, 200);
    for _ in 0..10 {
        assert_eq!(support::http_get(admin, "/readyz").unwrap().0, 503);
        thread::sleep(Duration::from_millis(100));
    }
    // Once it is back, the agent lists and becomes ready.
    api.restart(10);
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || match support::http_get(admin, "/readyz").unwrap().0 {
            200 => Ok(()),
            code => Err(format!("/readyz {code} after the API server's return")),
        },
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A kubernetes.io/tls (or other `type`) Secret in `default`, PEM in
/// stringData (the double turns it into base64 `data`, as the API does).
fn secret(name: &str, kind: &str, crt: &str, key: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: {kind}\nstringData: {{\"tls.crt\": {}, \"tls.key\": {}}}\n",
        serde_json::to_string(crt).unwrap(),
        serde_json::to_string(key).unwrap()
    )
}

/// An Ingress `host` -> `service`:80 with spec.tls naming `secret`.
fn tls_ingress(name: &str, host: &str, service: &str, secret: &str) -> String {
    manifests::ingress(name, host, "/", service).replace(
        "spec:\n",
        &format!("spec:\n  tls:\n  - {{hosts: [\"{host}\"], secretName: {secret}}}\n"),
    )
}

#[test]
fn tls_secrets_come_from_the_api_and_only_of_the_tls_type() {
    let rt = rt();
    let a = backend(&rt, "a");
    let api = ApiServer::start(&rt);
    let made = |host: &str| {
        let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
        (
            c.cert.pem(),
            c.signing_key.serialize_pem(),
            c.cert.der().to_vec(),
        )
    };
    let (crt, key, der) = made("s.test");
    let (ocrt, okey, oder) = made("o.test");
    api.apply_yaml(&manifests::class());
    api.apply_yaml(&manifests::service("svc-a", &[a.addr]));
    api.apply_yaml(&secret("s-tls", "kubernetes.io/tls", &crt, &key));
    // Same contents, but Opaque: the field selector keeps it from the agent.
    api.apply_yaml(&secret("o-opaque", "Opaque", &ocrt, &okey));
    api.apply_yaml(&tls_ingress("s", "s.test", "svc-a", "s-tls"));
    api.apply_yaml(&tls_ingress("o", "o.test", "svc-a", "o-opaque"));
    let dir = TempDir::new("cluster-tls");
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let https_s = https.to_string();
    let (_agent, _http) = start_agent(&api.kubeconfig(dir.path()), &["--https-listen", &https_s]);
    let client = support::tls_client::Client::h1();
    let (_, seen) = rt.block_on(client.connect(https, Some("s.test"))).unwrap();
    assert_eq!(seen, der, "s.test is not served the certificate of s-tls");
    let (status, _, body) = rt.block_on(client.get(https, "s.test", "/")).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["pod"],
        "a"
    );
    let (_, seen) = rt.block_on(client.connect(https, Some("o.test"))).unwrap();
    assert!(!seen.is_empty());
    assert_ne!(seen, oder, "an Opaque Secret was read");

    // A rotated certificate arrives through the watch.
    let (crt2, key2, der2) = made("s.test");
    api.apply_yaml(&secret("s-tls", "kubernetes.io/tls", &crt2, &key2));
    wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        let (_, seen) = rt.block_on(client.connect(https, Some("s.test"))).unwrap();
        if seen == der2 {
            Ok(())
        } else {
            Err("rotated certificate not served".to_string())
        }
    });
}

#[test]
fn a_missing_kubeconfig_is_one_line_and_exit_1() {
    let (status, stderr) = support::run_to_exit(
        std::process::Command::new(ingress_bin())
            .args([
                "run",
                "--kubeconfig",
                "/nonexistent/kubeconfig",
                "--xdp-mode",
                "off",
                "--http-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "error"),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("reading the kubeconfig /nonexistent/kubeconfig"),
        "{stderr}"
    );
}

/// The status address the API holds for Ingress `name`.
fn published(api: &ApiServer, name: &str) -> Option<String> {
    let i = api.get("ingresses", "default", name)?;
    i["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()
        .map(str::to_string)
}

fn wait_published(api: &ApiServer, name: &str, want: &str) {
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || match published(api, name) {
            Some(p) if p == want => Ok(()),
            other => Err(format!("{name}: status {other:?}, wanted {want}")),
        },
    );
}

#[test]
fn the_lease_holder_publishes_ingress_status_and_a_follower_takes_over() {
    let rt = rt();
    let a = backend(&rt, "a");
    let api = api_serving(&rt, &a, "a", "a.test");
    // A problem, for the Events the Lease holder alone writes.
    api.apply_yaml(&manifests::ingress("broken", "broken.test", "/", "missing"));
    let dir = TempDir::new("cluster-status");
    let kc = api.kubeconfig(dir.path());
    let (first, _) = start_agent(
        &kc,
        &[
            "--publish-status-address",
            "198.18.0.10",
            "--node-name",
            "node-1",
        ],
    );
    wait_published(&api, "a", "198.18.0.10");
    let lease = api
        .lease("default", "ingress-ebpf-status")
        .expect("no Lease in the kubeconfig's namespace");
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(holder.ends_with(&format!("_{}", first.pid())), "{lease}");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);

    // A new Ingress gets the status too; an Ingress of another class not.
    api.apply_yaml(&manifests::ingress("b", "b.test", "/", "svc-a"));
    api.apply_yaml(
        &manifests::ingress("x", "x.test", "/", "svc-a")
            .replace("spec:\n", "spec:\n  ingressClassName: someone-else\n"),
    );
    wait_published(&api, "b", "198.18.0.10");

    // A second agent follows: the Lease stays with the first.
    let (second, _) = start_agent(
        &kc,
        &[
            "--publish-status-address",
            "198.18.0.11",
            "--node-name",
            "node-2",
        ],
    );
    for _ in 0..10 {
        assert_eq!(published(&api, "a").as_deref(), Some("198.18.0.10"));
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        api.lease("default", "ingress-ebpf-status").unwrap()["spec"]["holderIdentity"],
        holder.as_str()
    );
    assert_eq!(published(&api, "x"), None);

    wait_event_writes(&api, "broken", "ServiceNotFound", 1);

    // The first goes away without renewing: once the Lease expires the
    // second takes it and publishes its own address.
    let (status, _) = first.stop(libc::SIGKILL);
    assert!(!status.success());
    wait_published(&api, "a", "198.18.0.11");
    wait_published(&api, "b", "198.18.0.11");
    let lease = api.lease("default", "ingress-ebpf-status").unwrap();
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap()
            .ends_with(&format!("_{}", second.pid())),
        "{lease}"
    );
    assert_eq!(lease["spec"]["leaseTransitions"], 2);
    assert_eq!(published(&api, "x"), None);
    assert!(api.status_writes() >= 4);

    // Events: the problem known before the takeover was written once, by
    // the first agent; a new one after it, by the second.
    api.apply_yaml(&manifests::ingress(
        "broken2",
        "broken2.test",
        "/",
        "missing",
    ));
    let w = wait_event_writes(&api, "broken2", "ServiceNotFound", 1);
    assert_eq!(w[0].body["reportingInstance"], "node-2");
    let w = event_writes(&api, "broken", "ServiceNotFound");
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].body["reportingInstance"], "node-1");
}

/// The Event writes about Ingress `name` with `reason`.
fn event_writes(api: &ApiServer, name: &str, reason: &str) -> Vec<support::apiserver::EventWrite> {
    api.event_writes()
        .into_iter()
        .filter(|w| w.body["regarding"]["name"] == name && w.body["reason"] == reason)
        .collect()
}

/// Waits (bounded) until Ingress `name` has `count` writes of `reason`.
fn wait_event_writes(
    api: &ApiServer,
    name: &str,
    reason: &str,
    count: usize,
) -> Vec<support::apiserver::EventWrite> {
    wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
        let w = event_writes(api, name, reason);
        if w.len() >= count {
            Ok(w)
        } else {
            Err(format!(
                "{name}: {} {reason} Event writes, wanted {count}; all: {:?}",
                w.len(),
                api.event_writes()
            ))
        }
    })
}

#[test]
fn config_problems_become_warning_events_once_each() {
    let rt = rt();
    let a = backend(&rt, "a");
    let api = api_serving(&rt, &a, "a", "a.test");
    // A backend Service that does not exist.
    api.apply_yaml(&manifests::ingress("broken", "broken.test", "/", "missing"));
    // A valid TLS Secret for s.test, in another namespace, named from
    // `default` as `other/cert`.
    let c = rcgen::generate_simple_self_signed(vec!["s.test".to_string()]).unwrap();
    let other_der = c.cert.der().to_vec();
    api.apply_yaml(
        &secret(
            "cert",
            "kubernetes.io/tls",
            &c.cert.pem(),
            &c.signing_key.serialize_pem(),
        )
        .replace("namespace: default", "namespace: other"),
    );
    api.apply_yaml(&tls_ingress("x", "s.test", "svc-a", "other/cert"));
    let dir = TempDir::new("cluster-events");
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let https_s = https.to_string();
    let (agent, http) = start_agent(
        &api.kubeconfig(dir.path()),
        &["--https-listen", &https_s, "--node-name", "node-e"],
    );
    assert_eq!(pod(http, "broken.test").0, 503);

    // One Warning Event on the broken Ingress, by the Lease holder.
    let w = wait_event_writes(&api, "broken", "ServiceNotFound", 1);
    assert_eq!(w[0].method, "POST");
    assert_eq!(w[0].namespace, "default");
    let e = &w[0].body;
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["note"], "Service default/missing not found");
    assert_eq!(e["regarding"]["kind"], "Ingress");
    assert_eq!(e["regarding"]["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(e["regarding"]["namespace"], "default");
    assert_eq!(e["reportingController"], "ingress-ebpf");
    assert_eq!(e["reportingInstance"], "node-e");
    assert!(
        api.lease("default", "ingress-ebpf-status").is_some(),
        "Events written without a Lease"
    );

    // The cross-namespace Secret is refused with its own Event, and never
    // served for the host.
    let w = wait_event_writes(&api, "x", "TLSSecretCrossNamespace", 1);
    assert!(
        w[0].body["note"]
            .as_str()
            .unwrap()
            .contains("namespace 'other'"),
        "{:?}",
        w[0].body
    );
    let client = support::tls_client::Client::h1();
    let (_, seen) = rt.block_on(client.connect(https, Some("s.test"))).unwrap();
    assert!(!seen.is_empty());
    assert_ne!(seen, other_der, "another namespace's Secret was served");

    // Unrelated changes re-apply the configuration: no repeat. A new
    // problem in the last of them shows the writer has seen them all.
    let b = backend(&rt, "b");
    api.apply_yaml(&manifests::service("svc-b", &[b.addr]));
    api.apply_yaml(&manifests::ingress("b", "b.test", "/", "svc-b"));
    wait_for(http, "b.test", (200, "b"));
    api.apply_yaml(&manifests::service("svc-a", &[b.addr]));
    wait_for(http, "a.test", (200, "b"));
    api.apply_yaml(&manifests::ingress("c", "c.test", "/", "gone"));
    wait_event_writes(&api, "c", "ServiceNotFound", 1);
    assert_eq!(event_writes(&api, "broken", "ServiceNotFound").len(), 1);
    assert_eq!(event_writes(&api, "x", "TLSSecretCrossNamespace").len(), 1);

    // Fixed (and seen fixed, by the same marker), then broken again: a
    // second write, the same Event's series.
    api.apply_yaml(&manifests::service("missing", &[a.addr]));
    wait_for(http, "broken.test", (200, "a"));
    api.apply_yaml(&manifests::ingress("d", "d.test", "/", "gone"));
    wait_event_writes(&api, "d", "ServiceNotFound", 1);
    assert_eq!(event_writes(&api, "broken", "ServiceNotFound").len(), 1);
    assert!(api.delete("Service", "default", "missing"));
    wait_for(http, "broken.test", (503, ""));
    let w = wait_event_writes(&api, "broken", "ServiceNotFound", 2);
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(w[1].method, "PATCH");
    assert_eq!(w[1].name, w[0].name);
    assert_eq!(w[1].body["series"]["count"], 2);
    let held: Vec<_> = api
        .events()
        .into_iter()
        .filter(|e| e["regarding"]["name"] == "broken")
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");

    // Counted by reason (once the write's answer is back); nothing
    // dropped at this pace.
    let writes = api.event_writes().len() as f64;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || match metric(&agent, "ingress_cluster_events_total") {
            n if n == writes => Ok(()),
            n => Err(format!(
                "ingress_cluster_events_total {n} for {writes} writes"
            )),
        },
    );
    assert!(
        agent
            .metrics()
            .keys()
            .any(|k| k.starts_with("ingress_cluster_events_total{")
                && k.contains("reason=\"TLSSecretCrossNamespace\"")),
        "{:?}",
        agent.metrics()
    );
    assert_eq!(metric(&agent, "ingress_cluster_events_dropped_total"), 0.0);
}

/// Every address (`ip`, else `hostname`) the API holds in Ingress `name`'s
/// status, in order.
fn shown(api: &ApiServer, name: &str) -> Vec<String> {
    let Some(i) = api.get("ingresses", "default", name) else {
        return Vec::new();
    };
    i["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["ip"].as_str().or(e["hostname"].as_str()))
        .map(str::to_string)
        .collect()
}

/// Waits (bounded) until Ingress `name` shows exactly `want`.
fn wait_shown(api: &ApiServer, name: &str, want: &[&str]) {
    wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        let got = shown(api, name);
        if got == want {
            Ok(())
        } else {
            Err(format!("{name}: status {got:?}, wanted {want:?}"))
        }
    });
}

/// A Node with `addresses` as (type, address).
fn node(name: &str, addresses: &[(&str, &str)]) -> serde_json::Value {
    let addresses: Vec<_> = addresses
        .iter()
        .map(|(t, a)| serde_json::json!({"type": t, "address": a}))
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                       "status": {"addresses": addresses}})
}

/// The agent in cluster mode on loopback with a kubeconfig of its own
/// (bearer token `token`, so the double tells its writes apart) as node
/// `node`.
fn start_agent_as(api: &ApiServer, dir: &TempDir, token: &str, node: &str) -> Agent {
    let kc = api.kubeconfig_with_token(dir.path(), token);
    start_agent(&kc, &["--node-name", node]).0
}

#[test]
fn one_agent_writes_the_ingress_nodes_addresses_and_hands_over_on_sigterm() {
    const ELECTION: &str = "ingress-ebpf-status";
    let rt = rt();
    let a = backend(&rt, "a");
    let api = api_serving(&rt, &a, "web", "web.test");
    api.apply_yaml(&manifests::ingress("moving", "moving.test", "/", "svc-a"));
    // Another controller's Ingress, with the status it wrote.
    let mut foreign: serde_json::Value = serde_yaml::from_str(
        &manifests::ingress("foreign", "foreign.test", "/", "svc-a")
            .replace("spec:\n", "spec:\n  ingressClassName: someone-else\n"),
    )
    .unwrap();
    foreign["status"] = serde_json::json!({"loadBalancer": {"ingress": [{"ip": "198.18.7.7"}]}});
    api.apply(foreign);
    // n1 has external addresses (both families), which win over its
    // internal one; n2 only an internal one. n3 runs no agent.
    api.apply(node(
        "n1",
        &[
            ("Hostname", "n1"),
            ("InternalIP", "198.18.0.1"),
            ("ExternalIP", "198.19.0.1"),
            ("ExternalIP", "fd00::1"),
        ],
    ));
    api.apply(node("n2", &[("InternalIP", "198.18.0.2")]));
    api.apply(node("n3", &[("InternalIP", "198.18.0.3")]));
    let dir = TempDir::new("cluster-nodes");

    let first = start_agent_as(&api, &dir, "agent-1", "n1");
    wait_shown(&api, "web", &["198.19.0.1", "fd00::1"]);
    let second = start_agent_as(&api, &dir, "agent-2", "n2");
    // The leader lists the second agent's presence Lease: both nodes.
    let both = ["198.18.0.2", "198.19.0.1", "fd00::1"];
    wait_shown(&api, "web", &both);
    wait_shown(&api, "moving", &both);
    // The follower's /status/ingresses shows what the API shows.
    wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let (code, body) = second.get("/status/ingresses").map_err(|e| e.to_string())?;
        let doc: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let web = doc["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["name"] == "web")
            .cloned()
            .unwrap_or_default();
        let ips: Vec<&str> = web["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["ip"].as_str())
            .collect();
        if code == 200 && ips == both && web["hosts"] == serde_json::json!(["web.test"]) {
            Ok(())
        } else {
            Err(format!("/status/ingresses {code}: {body}"))
        }
    });
    let presence = api.lease("default", "ingress-ebpf-node-n2").unwrap();
    assert_eq!(
        presence["metadata"]["labels"]["ingress.ebpf.io/class"],
        "ingress-ebpf"
    );

    // An Ingress moved to another class gets its status cleared; the
    // other controller's Ingress is never touched.
    let moved = manifests::ingress("moving", "moving.test", "/", "svc-a")
        .replace("spec:\n", "spec:\n  ingressClassName: someone-else\n");
    api.update_keeping_status(&moved);
    wait_shown(&api, "moving", &[]);
    let cleared = api.get("ingresses", "default", "moving").unwrap();
    assert_eq!(cleared["status"]["loadBalancer"], serde_json::json!({}));
    assert_eq!(shown(&api, "foreign"), ["198.18.7.7"]);

    // Exactly one agent wrote status, and only the first ever held the
    // election Lease; the second wrote nothing but its presence.
    let writes = api.writes();
    let status_writers: Vec<&str> = writes
        .iter()
        .filter(|w| w.resource == "ingresses/status")
        .map(|w| w.token.as_str())
        .collect();
    assert!(status_writers.len() >= 3, "{status_writers:?}");
    assert!(
        status_writers.iter().all(|t| *t == "agent-1"),
        "{status_writers:?}"
    );
    assert!(
        !writes
            .iter()
            .any(|w| w.token == "agent-1" && w.name == "foreign"),
        "another class's Ingress was written"
    );
    for w in writes.iter().filter(|w| w.token == "agent-2") {
        assert_eq!(w.name, "ingress-ebpf-node-n2", "{w:?}");
    }

    // SIGTERM: the leader releases the election Lease and its presence
    // Lease on the way out. Another agent runs: it clears no status.
    let before_stop = api.writes().len();
    let (status, log) = first.stop(libc::SIGTERM);
    assert!(status.success(), "{log}");
    let writes = api.writes();
    assert!(
        !writes[before_stop..]
            .iter()
            .any(|w| w.token == "agent-1" && w.resource == "ingresses/status"),
        "status written on the way out while another agent runs"
    );
    let exited = writes.len();
    let last_of_first = writes
        .iter()
        .rev()
        .find(|w| w.token == "agent-1" && w.name == ELECTION)
        .expect("the first agent wrote the election Lease");
    let spec = &last_of_first.object["spec"];
    assert_eq!(spec["holderIdentity"], "", "not released: {spec}");
    assert_eq!(spec["leaseDurationSeconds"], 1, "{spec}");
    assert_eq!(spec["leaseTransitions"], 1, "{spec}");
    let gone = api.lease("default", "ingress-ebpf-node-n1").unwrap();
    assert_eq!(gone["spec"]["holderIdentity"], "", "{gone}");

    // The second takes the released Lease and shows its node only.
    wait_shown(&api, "web", &["198.18.0.2"]);
    let lease = api.lease("default", ELECTION).unwrap();
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap()
            .ends_with(&format!("_{}", second.pid())),
        "{lease}"
    );
    assert_eq!(lease["spec"]["leaseTransitions"], 2, "{lease}");
    let after: Vec<_> = api.writes()[exited..]
        .iter()
        .filter(|w| w.resource == "ingresses/status")
        .map(|w| w.token.clone())
        .collect();
    assert!(!after.is_empty());
    assert!(after.iter().all(|t| t == "agent-2"), "{after:?}");
    // The moved Ingress stays cleared; the foreign one untouched.
    assert!(shown(&api, "moving").is_empty());
    assert_eq!(shown(&api, "foreign"), ["198.18.7.7"]);
    drop(second);
}

#[test]
fn the_last_agent_clears_the_status_it_published_on_sigterm_unless_told_not_to() {
    let rt = rt();
    let a = backend(&rt, "a");
    let api = api_serving(&rt, &a, "web", "web.test");
    api.apply(node("n1", &[("InternalIP", "198.18.0.1")]));
    let dir = TempDir::new("cluster-shutdown-status");

    // --update-status-on-shutdown=false: the addresses stay.
    let kc = api.kubeconfig_with_token(dir.path(), "agent-1");
    let (kept, _) = start_agent(
        &kc,
        &["--node-name", "n1", "--update-status-on-shutdown=false"],
    );
    wait_shown(&api, "web", &["198.18.0.1"]);
    let (status, log) = kept.stop(libc::SIGTERM);
    assert!(status.success(), "{log}");
    assert_eq!(shown(&api, "web"), ["198.18.0.1"]);

    // A stale status, so that the next agent's write shows it leads with
    // its node listed.
    let mut web = api.get("ingresses", "default", "web").unwrap();
    web["status"] = serde_json::json!({"loadBalancer": {"ingress": [{"ip": "198.18.9.9"}]}});
    api.apply(web);
    let last = start_agent_as(&api, &dir, "agent-2", "n1");
    wait_shown(&api, "web", &["198.18.0.1"]);
    // By default the last agent of the class clears what it published; an
    // Ingress of another class keeps its status.
    let mut foreign: serde_json::Value = serde_yaml::from_str(
        &manifests::ingress("foreign", "foreign.test", "/", "svc-a")
            .replace("spec:\n", "spec:\n  ingressClassName: someone-else\n"),
    )
    .unwrap();
    foreign["status"] = serde_json::json!({"loadBalancer": {"ingress": [{"ip": "198.18.0.1"}]}});
    api.apply(foreign);
    let (status, log) = last.stop(libc::SIGTERM);
    assert!(status.success(), "{log}");
    assert!(shown(&api, "web").is_empty(), "{log}");
    assert!(
        log.contains("status cleared on shutdown") && log.contains("cleared=1"),
        "{log}"
    );
    assert_eq!(shown(&api, "foreign"), ["198.18.0.1"]);
    let election = api.lease("default", "ingress-ebpf-status").unwrap();
    assert_eq!(election["spec"]["holderIdentity"], "", "{election}");
}

#[test]
fn publish_service_follows_the_services_load_balancer_addresses() {
    let rt = rt();
    let a = backend(&rt, "a");
    let api = api_serving(&rt, &a, "web", "web.test");
    api.apply(node("n1", &[("InternalIP", "198.18.0.1")]));
    let edge = |lb: serde_json::Value| {
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "edge", "namespace": "ingress-ebpf"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": lb}}})
    };
    api.apply(edge(serde_json::json!([{"ip": "198.18.8.1"}])));
    let dir = TempDir::new("cluster-publish-service");
    let kc = api.kubeconfig(dir.path());
    let (_agent, _) = start_agent(
        &kc,
        &[
            "--node-name",
            "n1",
            "--publish-service",
            "ingress-ebpf/edge",
        ],
    );
    wait_shown(&api, "web", &["198.18.8.1"]);
    // The load balancer's address changes: status follows.
    api.apply(edge(
        serde_json::json!([{"ip": "198.18.8.2"}, {"hostname": "edge.test"}]),
    ));
    wait_shown(&api, "web", &["198.18.8.2", "edge.test"]);
    // The presence Lease is kept all the same (the last agent of the
    // class clears status on its way out), but status never shows n1.
    assert!(api.lease("default", "ingress-ebpf-node-n1").is_some());
}
