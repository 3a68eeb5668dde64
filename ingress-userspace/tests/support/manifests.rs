//! YAML for the agent's standalone mode.

use std::net::SocketAddr;

/// Our IngressClass, default for Ingresses without a class.
pub fn class() -> String {
    r#"apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: ingress-ebpf
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: ingress-ebpf.dev/controller}
"#
    .to_string()
}

/// A Service `name` (port 80, named http) with one EndpointSlice holding
/// `endpoints` (which must share one port).
pub fn service(name: &str, endpoints: &[SocketAddr]) -> String {
    let port = endpoints.first().map_or(8080, |a| a.port());
    let eps: String = endpoints
        .iter()
        .map(|a| {
            format!(
                "  - addresses: [\"{}\"]\n    conditions: {{ready: true}}\n",
                a.ip()
            )
        })
        .collect();
    let eps = if eps.is_empty() {
        "  []\n".to_string()
    } else {
        eps
    };
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
{eps}"#
    )
}

/// An Ingress with one Prefix rule `host` `path` -> `service`:80.
pub fn ingress(name: &str, host: &str, path: &str, service: &str) -> String {
    format!(
        r#"---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}, namespace: default}}
spec:
  rules:
  - host: "{host}"
    http:
      paths:
      - {{path: "{path}", pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}
"#
    )
}
