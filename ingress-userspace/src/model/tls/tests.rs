use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};

use super::*;
use crate::{
    model::{CompileOptions, Severity, Snapshot, compile_at},
    source::manifest::parse_into,
};

/// 2026-11-26, a fixed "now" for every test.
const NOW: i64 = 1_795_651_200;

/// A self-signed certificate for `names` valid until `year`, as PEM
/// (certificate, key).
fn cert(names: &[&str], year: i32) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let c = params.self_signed(&key).unwrap();
    (c.pem(), key.serialize_pem())
}

fn secret(ns: &str, name: &str, crt: &str, key: &str) -> (ObjectKey, Secret) {
    let mut data = BTreeMap::new();
    data.insert(TLS_CRT.to_string(), crt.to_string());
    data.insert(TLS_KEY.to_string(), key.to_string());
    let s = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(data),
        ..Default::default()
    };
    (ObjectKey::new(ns, name), s)
}

const CLASS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: ingress-ebpf
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: ingress-ebpf.dev/controller}
"#;

/// An Ingress `name` in `web` routing `hosts` to Service s, with `tls`
/// (YAML of spec.tls items) and `created`.
fn ingress(name: &str, created: &str, hosts: &[&str], tls: &str, annotations: &str) -> String {
    let rules: String = hosts
        .iter()
        .map(|h| {
            format!(
                "  - host: \"{h}\"\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: s, port: {{number: 80}}}}}}}}\n"
            )
        })
        .collect();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: web\n  creationTimestamp: \"{created}\"\n  annotations: {{{annotations}}}\nspec:\n  tls:\n{tls}  rules:\n{rules}"
    )
}

fn state(yaml: &str, secrets: Vec<(ObjectKey, Secret)>) -> ClusterState {
    let mut s = ClusterState::default();
    let mut d = Vec::new();
    parse_into("test", &format!("{CLASS}{yaml}"), &mut s, &mut d);
    assert!(d.is_empty(), "fixture does not parse: {d:?}");
    s.secrets.extend(secrets);
    s
}

fn compile(state: &ClusterState, opts: &CompileOptions, previous: Option<&Snapshot>) -> Snapshot {
    compile_at(state, opts, previous, NOW)
}

fn served(snap: &Snapshot, sni: Option<&str>) -> Option<String> {
    snap.tls.resolve(sni).map(|c| c.secret.name.clone())
}

fn tls_diags(snap: &Snapshot) -> Vec<&Diagnostic> {
    snap.diagnostics
        .iter()
        .filter(|d| !d.message.contains("Service web/s"))
        .collect()
}

#[test]
fn sni_selection_exact_then_wildcard_then_default() {
    let (c1, k1) = cert(&["foo.example.com"], 2030);
    let (c2, k2) = cert(&["*.example.com"], 2030);
    let (c3, k3) = cert(&["default.example"], 2030);
    let s = state(
        &ingress(
            "i",
            "2026-01-01T00:00:00Z",
            &["foo.example.com", "*.example.com"],
            "  - {hosts: [foo.example.com], secretName: exact}\n  - {hosts: [\"*.example.com\"], secretName: wild}\n",
            "",
        ),
        vec![
            secret("web", "exact", &c1, &k1),
            secret("web", "wild", &c2, &k2),
            secret("ingress", "fallback", &c3, &k3),
        ],
    );
    let snap = compile(&s, &CompileOptions::default(), None);
    assert!(tls_diags(&snap).is_empty(), "{:?}", snap.diagnostics);
    assert_eq!(
        served(&snap, Some("foo.example.com")).as_deref(),
        Some("exact")
    );
    assert_eq!(
        served(&snap, Some("FOO.example.com.")).as_deref(),
        Some("exact")
    );
    assert_eq!(
        served(&snap, Some("bar.example.com")).as_deref(),
        Some("wild")
    );
    // A wildcard covers exactly one label.
    assert_eq!(served(&snap, Some("a.b.example.com")), None);
    assert_eq!(served(&snap, Some("example.com")), None);
    assert_eq!(served(&snap, Some("other.test")), None);
    assert_eq!(served(&snap, None), None);
    // With --default-ssl-certificate, the unknown and SNI-less get it.
    let opts = CompileOptions {
        default_certificate: Some(ObjectKey::new("ingress", "fallback")),
        ..CompileOptions::default()
    };
    let snap = compile(&s, &opts, None);
    assert_eq!(
        served(&snap, Some("a.b.example.com")).as_deref(),
        Some("fallback")
    );
    assert_eq!(served(&snap, None).as_deref(), Some("fallback"));
    assert_eq!(
        served(&snap, Some("bar.example.com")).as_deref(),
        Some("wild")
    );
    let listed: Vec<String> = snap
        .tls
        .certificates()
        .iter()
        .map(|c| c.secret.to_string())
        .collect();
    assert_eq!(listed, ["ingress/fallback", "web/exact", "web/wild"]);
    // Redirect scope: hosts listed under spec.tls, wildcards by one label.
    assert!(snap.tls.has_host("foo.example.com"));
    assert!(snap.tls.has_host("x.example.com"));
    assert!(!snap.tls.has_host("x.y.example.com"));
    assert!(!snap.tls.has_host("other.test"));
}

#[test]
fn bad_secrets_are_reported_by_object_and_field() {
    let (good, good_key) = cert(&["ok.test"], 2030);
    let (expired, expired_key) = cert(&["old.test"], 2021);
    let (_, other_key) = cert(&["x.test"], 2030);
    let tls = "  - {hosts: [missing.test], secretName: nowhere}\n  - {hosts: [garbage.test], secretName: garbage}\n  - {hosts: [old.test], secretName: expired}\n  - {hosts: [mismatch.test], secretName: mismatch}\n  - {hosts: [uncovered.test], secretName: good}\n  - {hosts: [nokey.test], secretName: nokey}\n";
    let mut nokey = secret("web", "nokey", &good, "");
    nokey.1.string_data.as_mut().unwrap().remove(TLS_KEY);
    let s = state(
        &ingress("i", "2026-01-01T00:00:00Z", &["missing.test"], tls, ""),
        vec![
            secret("web", "garbage", "not a certificate", &good_key),
            secret("web", "expired", &expired, &expired_key),
            secret("web", "mismatch", &good, &other_key),
            secret("web", "good", &good, &good_key),
            nokey,
        ],
    );
    let snap = compile(&s, &CompileOptions::default(), None);
    let errors: Vec<String> = snap
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error && !d.message.contains("Service web/s"))
        .map(|d| d.to_string())
        .collect();
    let has = |what: &str| errors.iter().any(|e| e.contains(what));
    assert!(
        has("Ingress web/i spec.tls[0].secretName: Secret web/nowhere not found"),
        "{errors:#?}"
    );
    assert!(
        has("Secret web/garbage data[tls.crt]: no CERTIFICATE block"),
        "{errors:#?}"
    );
    assert!(
        has("Secret web/expired data[tls.crt]: certificate expired"),
        "{errors:#?}"
    );
    assert!(
        has("Secret web/mismatch data[tls.key]: the private key does not match"),
        "{errors:#?}"
    );
    assert!(
        has("Secret web/nokey data[tls.key]: missing or empty"),
        "{errors:#?}"
    );
    assert_eq!(errors.len(), 5, "{errors:#?}");
    // A certificate that does not name the host is served, with a warning.
    assert_eq!(
        served(&snap, Some("uncovered.test")).as_deref(),
        Some("good")
    );
    assert!(
        snap.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Warning
                && d.field == "spec.tls[4].hosts[0]"
                && d.message.contains("does not cover host uncovered.test"))
    );
    // Bad ones fall back to the default (none here).
    for h in [
        "missing.test",
        "garbage.test",
        "old.test",
        "mismatch.test",
        "nokey.test",
    ] {
        assert_eq!(served(&snap, Some(h)), None, "{h}");
        assert!(snap.tls.has_host(h), "{h} still redirects");
    }
}

#[test]
fn a_secret_turning_bad_keeps_the_previous_certificate() {
    let (c1, k1) = cert(&["a.test"], 2030);
    let (c2, k2) = cert(&["a.test"], 2031);
    let yaml = ingress(
        "i",
        "2026-01-01T00:00:00Z",
        &["a.test"],
        "  - {hosts: [a.test], secretName: cert}\n",
        "",
    );
    let opts = CompileOptions::default();
    let first = compile(
        &state(&yaml, vec![secret("web", "cert", &c1, &k1)]),
        &opts,
        None,
    );
    let served_first = first.tls.resolve(Some("a.test")).unwrap().clone();
    // Unchanged: the parse is reused.
    let again = compile(
        &state(&yaml, vec![secret("web", "cert", &c1, &k1)]),
        &opts,
        Some(&first),
    );
    assert!(Arc::ptr_eq(
        &served_first,
        again.tls.resolve(Some("a.test")).unwrap()
    ));
    // Broken: reported, and the previous certificate stays.
    let broken = compile(
        &state(&yaml, vec![secret("web", "cert", "garbage", &k1)]),
        &opts,
        Some(&again),
    );
    assert!(
        broken
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error
                && d.object == "Secret web/cert"
                && d.field == "data[tls.crt]")
    );
    assert!(
        broken
            .diagnostics
            .iter()
            .any(|d| d.message.contains("keeps its previous certificate"))
    );
    assert!(Arc::ptr_eq(
        &served_first,
        broken.tls.resolve(Some("a.test")).unwrap()
    ));
    // Still broken on the next change: still the last good one.
    let still = compile(
        &state(&yaml, vec![secret("web", "cert", "garbage", &k1)]),
        &opts,
        Some(&broken),
    );
    assert!(Arc::ptr_eq(
        &served_first,
        still.tls.resolve(Some("a.test")).unwrap()
    ));
    // Fixed with a new certificate: the new one is served.
    let fixed = compile(
        &state(&yaml, vec![secret("web", "cert", &c2, &k2)]),
        &opts,
        Some(&still),
    );
    let now_served = fixed.tls.resolve(Some("a.test")).unwrap();
    assert!(!Arc::ptr_eq(&served_first, now_served));
    assert!(now_served.not_after > served_first.not_after);
    assert!(tls_diags(&fixed).is_empty(), "{:?}", fixed.diagnostics);
}

#[test]
fn oldest_ingress_wins_a_host_and_hostless_tls_covers_rule_hosts() {
    let (c1, k1) = cert(&["a.test", "b.test"], 2030);
    let (c2, k2) = cert(&["a.test"], 2030);
    let yaml = [
        ingress(
            "young",
            "2026-02-01T00:00:00Z",
            &["a.test"],
            "  - {hosts: [a.test], secretName: two}\n",
            "",
        ),
        ingress(
            "old",
            "2026-01-01T00:00:00Z",
            &["a.test", "b.test"],
            "  - {secretName: one}\n",
            "",
        ),
    ]
    .concat();
    let snap = compile(
        &state(
            &yaml,
            vec![
                secret("web", "one", &c1, &k1),
                secret("web", "two", &c2, &k2),
            ],
        ),
        &CompileOptions::default(),
        None,
    );
    assert_eq!(served(&snap, Some("a.test")).as_deref(), Some("one"));
    assert_eq!(served(&snap, Some("b.test")).as_deref(), Some("one"));
    let lost: Vec<_> = snap
        .diagnostics
        .iter()
        .filter(|d| d.message.contains("takes its certificate from"))
        .collect();
    assert_eq!(lost.len(), 1, "{:?}", snap.diagnostics);
    assert_eq!(lost[0].object, "Ingress web/young");
    assert!(lost[0].message.contains("Secret web/one"));
}

#[test]
fn secrets_with_base64_data_load_from_manifests() {
    let (c, k) = cert(&["b64.test"], 2030);
    let mut data = BTreeMap::new();
    data.insert(TLS_CRT.to_string(), ByteString(c.into_bytes()));
    data.insert(TLS_KEY.to_string(), ByteString(k.into_bytes()));
    let secret = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("b64".into()),
            namespace: Some("web".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    };
    let mut yaml = serde_yaml::to_string(&secret).unwrap();
    yaml = format!("---\n{yaml}");
    assert!(
        !yaml.contains("BEGIN CERTIFICATE"),
        "data is base64 in the file"
    );
    let yaml = format!(
        "{yaml}{}",
        ingress(
            "i",
            "2026-01-01T00:00:00Z",
            &["b64.test"],
            "  - {hosts: [b64.test], secretName: b64}\n",
            ""
        )
    );
    let snap = compile(&state(&yaml, Vec::new()), &CompileOptions::default(), None);
    assert_eq!(served(&snap, Some("b64.test")).as_deref(), Some("b64"));
}

#[test]
fn redirect_annotations_shape_the_backends() {
    let (c, k) = cert(&["a.test"], 2030);
    let yaml = [
        ingress(
            "plain",
            "2026-01-01T00:00:00Z",
            &["a.test"],
            "  - {hosts: [a.test], secretName: c}\n",
            "nginx.ingress.kubernetes.io/ssl-redirect: \"false\"",
        ),
        ingress(
            "forced",
            "2026-01-02T00:00:00Z",
            &["b.test"],
            "    []\n",
            "nginx.ingress.kubernetes.io/force-ssl-redirect: \"true\"",
        ),
        ingress(
            "bad",
            "2026-01-03T00:00:00Z",
            &["c.test"],
            "    []\n",
            "nginx.ingress.kubernetes.io/ssl-redirect: \"maybe\"",
        ),
    ]
    .concat();
    let snap = compile(
        &state(&yaml, vec![secret("web", "c", &c, &k)]),
        &CompileOptions::default(),
        None,
    );
    let policy = |host: &str| match snap.router.route(Some(host), "/") {
        crate::model::RouteTarget::Backend(id) => snap.backend(id).unwrap().policy,
        crate::model::RouteTarget::NotFound => panic!("{host} not routed"),
    };
    assert!(!policy("a.test").ssl_redirect && !policy("a.test").force_ssl_redirect);
    assert!(policy("b.test").force_ssl_redirect);
    assert!(
        policy("c.test").ssl_redirect,
        "a bad value keeps the default"
    );
    assert!(
        snap.diagnostics
            .iter()
            .any(|d| d.object == "Ingress web/bad"
                && d.field == "metadata.annotations[nginx.ingress.kubernetes.io/ssl-redirect]")
    );
    // Three policies, so three backends for the one Service port.
    assert_eq!(snap.backends.len(), 3);
}

#[test]
fn upstream_protocol_from_annotation_then_app_protocol() {
    let service = |name: &str, app: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: web}}\nspec:\n  ports: [{{name: http, port: 80{app}}}]\n"
        )
    };
    let yaml = [
        service("s", ""),
        service("h2c", ", appProtocol: kubernetes.io/h2c"),
        service("tls", ", appProtocol: https"),
        ingress(
            "a",
            "2026-01-01T00:00:00Z",
            &["grpc.test"],
            "    []\n",
            "nginx.ingress.kubernetes.io/backend-protocol: GRPC",
        ),
        ingress(
            "b",
            "2026-01-02T00:00:00Z",
            &["grpcs.test"],
            "    []\n",
            "nginx.ingress.kubernetes.io/backend-protocol: grpcs",
        ),
        ingress(
            "c",
            "2026-01-03T00:00:00Z",
            &["odd.test"],
            "    []\n",
            "nginx.ingress.kubernetes.io/backend-protocol: SPDY",
        ),
        ingress("d", "2026-01-04T00:00:00Z", &["plain.test"], "    []\n", ""),
        ingress("e", "2026-01-05T00:00:00Z", &["h2c.test"], "    []\n", "")
            .replace("name: s,", "name: h2c,"),
        ingress("f", "2026-01-06T00:00:00Z", &["tls.test"], "    []\n", "")
            .replace("name: s,", "name: tls,"),
        ingress(
            "g",
            "2026-01-07T00:00:00Z",
            &["override.test"],
            "    []\n",
            "nginx.ingress.kubernetes.io/backend-protocol: HTTP",
        )
        .replace("name: s,", "name: h2c,"),
    ]
    .concat();
    let snap = compile(&state(&yaml, Vec::new()), &CompileOptions::default(), None);
    let protocol = |host: &str| match snap.router.route(Some(host), "/") {
        crate::model::RouteTarget::Backend(id) => snap.backend(id).unwrap().protocol,
        crate::model::RouteTarget::NotFound => panic!("{host} not routed"),
    };
    use crate::model::UpstreamProtocol as P;
    assert_eq!(protocol("grpc.test"), P::H2c);
    assert_eq!(protocol("grpcs.test"), P::H2s);
    assert_eq!(protocol("odd.test"), P::Http1);
    assert_eq!(protocol("plain.test"), P::Http1);
    assert_eq!(protocol("h2c.test"), P::H2c);
    assert_eq!(protocol("tls.test"), P::Https);
    assert_eq!(protocol("override.test"), P::Http1, "the annotation wins");
    assert!(snap.diagnostics.iter().any(|d| d.object == "Ingress web/c"
        && d.field == "metadata.annotations[nginx.ingress.kubernetes.io/backend-protocol]"));
}
