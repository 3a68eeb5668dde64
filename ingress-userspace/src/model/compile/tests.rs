use super::*;
use crate::model::{RouteTarget, Severity, reason};

use crate::source::manifest::parse_clean as state;

fn opts() -> CompileOptions {
    CompileOptions {
        ingress_class: "ours".into(),
        node_name: "node-a".into(),
        node_ips: Vec::new(),
        ..CompileOptions::default()
    }
}

const CLASS_DEFAULT: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: ours
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: ingress-ebpf.dev/controller}
"#;

/// A Service `name` in `ns` with ports http:80->8080 and admin:9000->admin,
/// and a slice with one ready and one terminating endpoint.
fn service(ns: &str, name: &str, ip: &str) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
  - {{name: admin, port: 9000, targetPort: admin}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-abc, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports:
- {{name: http, port: 8080}}
- {{name: admin, port: 9901}}
endpoints:
- addresses: ["{ip}"]
  nodeName: node-a
  conditions: {{ready: true}}
- addresses: ["198.18.9.9"]
  nodeName: node-b
  conditions: {{ready: false, serving: true, terminating: true}}
"#
    )
}

fn ingress(ns: &str, name: &str, created: Option<&str>, class: &str, spec: &str) -> String {
    let ts = created
        .map(|t| format!("  creationTimestamp: \"{t}\"\n"))
        .unwrap_or_default();
    format!(
        "\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {ns}\n{ts}spec:\n{class}{spec}\n"
    )
}

fn rule(host: &str, path: &str, kind: &str, svc: &str, port: &str) -> String {
    let host = if host.is_empty() {
        String::new()
    } else {
        format!("    host: \"{host}\"\n")
    };
    format!(
        "  - http:\n      paths:\n      - path: {path}\n        pathType: {kind}\n        backend:\n          service:\n            name: {svc}\n            port: {{{port}}}\n{host}"
    )
}

fn rules(rs: &[String]) -> String {
    format!("  rules:\n{}", rs.concat())
}

fn backend_of<'a>(snap: &'a Snapshot, host: Option<&str>, path: &str) -> Option<&'a Backend> {
    match snap.router.route(host, path) {
        RouteTarget::Backend(id) => snap.backend(id),
        RouteTarget::NotFound => None,
    }
}

#[test]
fn class_selection() {
    let spec = |svc: &str| {
        rules(&[rule(
            &format!("{svc}.example"),
            "/",
            "Prefix",
            svc,
            "number: 80",
        )])
    };
    let yaml = [
        service("web", "a", "198.18.1.1"),
        ingress(
            "web",
            "named",
            None,
            "  ingressClassName: ours\n",
            &spec("a"),
        ),
        ingress(
            "web",
            "other",
            None,
            "  ingressClassName: theirs\n",
            &spec("b"),
        ),
        ingress("web", "unclassed", None, "", &spec("c")),
        ingress("web", "legacy", None, "", &spec("d")).replace(
            "  namespace: web\n",
            "  namespace: web\n  annotations: {kubernetes.io/ingress.class: ours}\n",
        ),
    ]
    .concat();
    // Without our class being default, the unclassed Ingress is not ours.
    let snap = compile(&state(&yaml), &opts());
    let served: Vec<_> = snap.served.iter().map(|s| s.key.name.as_str()).collect();
    assert_eq!(served, ["legacy", "named"]);
    // With it, the unclassed one joins; the other class never does.
    let snap = compile(&state(&format!("{CLASS_DEFAULT}{yaml}")), &opts());
    let served: Vec<_> = snap.served.iter().map(|s| s.key.name.as_str()).collect();
    assert_eq!(served, ["legacy", "named", "unclassed"]);
}

#[test]
fn ports_by_number_and_name_and_target_ports_through_slices() {
    let yaml = [
        CLASS_DEFAULT.to_string(),
        service("web", "a", "198.18.1.1"),
        ingress(
            "web",
            "i",
            None,
            "",
            &rules(&[
                rule("h", "/num", "Prefix", "a", "number: 80"),
                rule("h", "/name", "Prefix", "a", "name: http"),
                rule("h", "/admin", "Prefix", "a", "name: admin"),
            ]),
        ),
    ]
    .concat();
    let snap = compile(&state(&yaml), &opts());
    assert!(snap.diagnostics.is_empty(), "{:?}", snap.diagnostics);
    let num = backend_of(&snap, Some("h"), "/num").unwrap();
    assert_eq!(num.endpoints.len(), 1, "only the ready endpoint");
    assert_eq!(num.endpoints[0].addr, "198.18.1.1:8080".parse().unwrap());
    assert_eq!(num.endpoints[0].node_name.as_deref(), Some("node-a"));
    // Port by name is the same Service port, so the same backend.
    assert!(std::ptr::eq(
        num,
        backend_of(&snap, Some("h"), "/name").unwrap()
    ));
    // targetPort by name resolves through the slice's named port.
    let admin = backend_of(&snap, Some("h"), "/admin").unwrap();
    assert_eq!(admin.endpoints[0].addr.port(), 9901);
    assert_eq!(snap.node_name, "node-a");
}

#[test]
fn serving_endpoints_are_used_only_when_none_is_ready() {
    let yaml = [
        CLASS_DEFAULT.to_string(),
        service("web", "a", "198.18.1.1")
            .replace("conditions: {ready: true}", "conditions: {ready: false}"),
        ingress(
            "web",
            "i",
            None,
            "",
            &rules(&[rule("", "/", "Prefix", "a", "number: 80")]),
        ),
    ]
    .concat();
    let snap = compile(&state(&yaml), &opts());
    let b = backend_of(&snap, None, "/").unwrap();
    assert_eq!(b.endpoints.len(), 1);
    assert_eq!(b.endpoints[0].addr, "198.18.9.9:8080".parse().unwrap());
    assert!(!b.endpoints[0].ready);
}

#[test]
fn missing_service_or_port_answers_503_and_is_reported() {
    let yaml = [
        CLASS_DEFAULT.to_string(),
        service("web", "a", "198.18.1.1"),
        ingress(
            "web",
            "i",
            None,
            "",
            &rules(&[
                rule("h", "/nosvc", "Prefix", "missing", "number: 80"),
                rule("h", "/noport", "Prefix", "a", "number: 81"),
                rule("h", "/ok", "Prefix", "a", "number: 80"),
            ]),
        ),
    ]
    .concat();
    let snap = compile(&state(&yaml), &opts());
    let nosvc = backend_of(&snap, Some("h"), "/nosvc").unwrap();
    assert!(nosvc.endpoints.is_empty());
    assert!(
        nosvc
            .problem
            .as_deref()
            .unwrap()
            .contains("Service web/missing not found")
    );
    let noport = backend_of(&snap, Some("h"), "/noport").unwrap();
    assert!(noport.problem.as_deref().unwrap().contains("no port 81"));
    assert_eq!(
        backend_of(&snap, Some("h"), "/ok").unwrap().endpoints.len(),
        1
    );
    let errs: Vec<_> = snap
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0].object, "Ingress web/i");
    assert_eq!(errs[0].field, "spec.rules[0].http.paths[0].backend.service");
}

#[test]
fn conflicts_go_to_the_oldest_ingress_and_the_loser_is_reported() {
    let yaml = [
        CLASS_DEFAULT.to_string(),
        service("web", "old", "198.18.1.1"),
        service("web", "new", "198.18.1.2"),
        service("web", "zzz", "198.18.1.3"),
        ingress(
            "web",
            "b-new",
            Some("2026-02-01T00:00:00Z"),
            "",
            &rules(&[
                rule("h", "/x", "Prefix", "new", "number: 80"),
                rule("h", "/y", "Exact", "new", "number: 80"),
            ]),
        ),
        ingress(
            "web",
            "a-old",
            Some("2026-01-01T00:00:00Z"),
            "",
            &rules(&[rule("h", "/x/", "Prefix", "old", "number: 80")]),
        ),
        // No timestamp sorts after every timestamped one.
        ingress(
            "web",
            "0-undated",
            None,
            "",
            &rules(&[rule("h", "/y", "Exact", "zzz", "number: 80")]),
        ),
    ]
    .concat();
    let snap = compile(&state(&yaml), &opts());
    assert_eq!(
        backend_of(&snap, Some("h"), "/x/z").unwrap().service.name,
        "old"
    );
    // Paths for one host merge across Ingresses.
    assert_eq!(
        backend_of(&snap, Some("h"), "/y").unwrap().service.name,
        "new"
    );
    let warnings: Vec<_> = snap
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(warnings[0].object, "Ingress web/b-new");
    assert!(warnings[0].message.contains("older Ingress web/a-old"));
    assert_eq!(warnings[1].object, "Ingress web/0-undated");
}

#[test]
fn default_backend_from_the_oldest_and_404_without_any() {
    let yaml = [
        CLASS_DEFAULT.to_string(),
        service("web", "a", "198.18.1.1"),
        service("web", "b", "198.18.1.2"),
        ingress(
            "web",
            "first",
            None,
            "",
            "  defaultBackend: {service: {name: a, port: {number: 80}}}",
        ),
        ingress(
            "web",
            "second",
            None,
            "",
            "  defaultBackend: {service: {name: b, port: {number: 80}}}",
        ),
    ]
    .concat();
    let snap = compile(&state(&yaml), &opts());
    assert_eq!(
        backend_of(&snap, Some("any"), "/x").unwrap().service.name,
        "a"
    );
    assert_eq!(snap.diagnostics.len(), 1);
    assert!(
        snap.diagnostics[0]
            .message
            .contains("already sets the default backend")
    );
    let empty = compile(&ClusterState::default(), &opts());
    assert_eq!(empty.router.route(Some("x"), "/"), RouteTarget::NotFound);
}

#[test]
fn invalid_paths_types_hosts_and_backends_are_skipped_with_field_names() {
    let yaml = [
        CLASS_DEFAULT.to_string(),
        service("web", "a", "198.18.1.1"),
        ingress(
            "web",
            "i",
            None,
            "",
            &rules(&[
                rule("h", "nope", "Prefix", "a", "number: 80"),
                rule("h", "/t", "Regex", "a", "number: 80"),
                rule("198.18.0.1", "/", "Prefix", "a", "number: 80"),
                rule("bad_host!", "/", "Prefix", "a", "number: 80"),
                rule("h", "/impl", "ImplementationSpecific", "a", "number: 80"),
            ]),
        ),
    ]
    .concat();
    let snap = compile(&state(&yaml), &opts());
    let fields: Vec<_> = snap.diagnostics.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].http.paths[0].path",
            "spec.rules[1].http.paths[0].pathType",
            "spec.rules[2].host",
            "spec.rules[3].host",
        ]
    );
    // ImplementationSpecific is Prefix.
    assert!(backend_of(&snap, Some("h"), "/impl/deeper").is_some());
    assert!(backend_of(&snap, Some("h"), "/t").is_none());
}

#[test]
fn compile_is_deterministic() {
    let yaml = [
        CLASS_DEFAULT.to_string(),
        service("web", "a", "198.18.1.1"),
        service("web", "b", "198.18.1.2"),
        ingress(
            "web",
            "i",
            None,
            "",
            &rules(&[
                rule("h", "/a", "Prefix", "a", "number: 80"),
                rule("*.w.com", "/", "Prefix", "b", "number: 80"),
            ]),
        ),
    ]
    .concat();
    let s = state(&yaml);
    let (x, y) = (compile(&s, &opts()), compile(&s, &opts()));
    assert_eq!(x.router, y.router);
    assert_eq!(x.backends, y.backends);
    assert_eq!(x.served, y.served);
    assert_eq!(x.diagnostics, y.diagnostics);
}

/// A kubernetes.io/tls Secret `ns/name` with a fresh self-signed
/// certificate for `host`.
fn tls_secret(ns: &str, name: &str, host: &str) -> String {
    let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    format!(
        "\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData: {{\"tls.crt\": {}, \"tls.key\": {}}}\n",
        serde_json::to_string(&c.cert.pem()).unwrap(),
        serde_json::to_string(&c.signing_key.serialize_pem()).unwrap()
    )
}

#[test]
fn a_tls_secret_of_another_namespace_is_refused_and_never_read() {
    let spec = |secret: &str| {
        format!(
            "  tls:\n  - {{hosts: [s.test], secretName: \"{secret}\"}}\n{}",
            rules(&[rule("s.test", "/", "Prefix", "a", "number: 80")])
        )
    };
    let yaml = [
        CLASS_DEFAULT.to_string(),
        service("web", "a", "198.18.1.1"),
        // The Secret exists and is valid, but in namespace `other`; and a
        // Secret literally named like the reference in `web` cannot exist.
        tls_secret("other", "cert", "s.test"),
        ingress("web", "i", None, "", &spec("other/cert")),
    ]
    .concat();
    let snap = compile(&state(&yaml), &opts());
    let d: Vec<_> = snap
        .diagnostics
        .iter()
        .filter(|d| d.object == "Ingress web/i")
        .collect();
    assert_eq!(d.len(), 1, "{:?}", snap.diagnostics);
    assert_eq!(d[0].severity, Severity::Error);
    assert_eq!(d[0].field, "spec.tls[0].secretName");
    assert_eq!(d[0].reason, Some(reason::TLS_SECRET_CROSS_NAMESPACE));
    assert!(d[0].message.contains("namespace 'other'"), "{}", d[0]);
    // No certificate for the host (the default one answers), but it still
    // asks for HTTPS, and its plain HTTP route stays.
    assert!(snap.tls.resolve(Some("s.test")).is_none());
    assert!(snap.tls.certificates().is_empty());
    assert!(snap.tls.has_host("s.test"));
    assert!(backend_of(&snap, Some("s.test"), "/").is_some());

    // The same Secret named from its own namespace is served.
    let own = [
        CLASS_DEFAULT.to_string(),
        service("other", "a", "198.18.1.1"),
        tls_secret("other", "cert", "s.test"),
        ingress("other", "i", None, "", &spec("cert")),
    ]
    .concat();
    let snap = compile(&state(&own), &opts());
    assert!(snap.diagnostics.is_empty(), "{:?}", snap.diagnostics);
    assert_eq!(
        snap.tls
            .resolve(Some("s.test"))
            .map(|c| c.secret.to_string()),
        Some("other/cert".to_string())
    );
}

#[test]
fn ingress_problems_carry_their_event_reason() {
    let yaml = [
        CLASS_DEFAULT.to_string(),
        service("web", "a", "198.18.1.1"),
        ingress(
            "web",
            "old",
            Some("2026-01-01T00:00:00Z"),
            "",
            &rules(&[rule("h", "/", "Prefix", "a", "number: 80")]),
        ),
        ingress(
            "web",
            "new",
            Some("2026-01-02T00:00:00Z"),
            "",
            &format!(
                "  tls:\n  - {{hosts: [h], secretName: nowhere}}\n{}",
                rules(&[
                    rule("h", "/", "Prefix", "a", "number: 80"),
                    rule("g", "/", "Prefix", "gone", "number: 80"),
                    rule("g", "/p", "Prefix", "a", "number: 81"),
                    rule("g", "/e", "Exactly", "a", "number: 80"),
                ])
            ),
        ),
    ]
    .concat();
    let snap = compile(&state(&yaml), &opts());
    let reasons: Vec<_> = snap
        .diagnostics
        .iter()
        .filter(|d| d.object == "Ingress web/new")
        .filter_map(|d| d.reason)
        .collect();
    for want in [
        reason::TLS_SECRET_NOT_FOUND,
        reason::CONFLICT_LOST,
        reason::SERVICE_NOT_FOUND,
        reason::SERVICE_PORT_NOT_FOUND,
        reason::INVALID_RULE,
    ] {
        assert!(reasons.contains(&want), "{want}: {:?}", snap.diagnostics);
    }
}
