//! `refresh_endpoints`: the snapshot after a change to EndpointSlices only,
//! made from the previous snapshot by resolving again the endpoints of the
//! backends of the Services whose slices changed. Routes, certificates,
//! served Ingresses and diagnostics do not depend on EndpointSlices, nor
//! does the L4 table for Services without L4 frontends, so they are carried
//! over. Pure; the tests hold it equal to a full compile of the new state.
//!
//! With 10,000 Ingresses a full compile costs hundreds of milliseconds; a
//! pod coming or going (the most frequent change in a cluster) costs this
//! instead: the unchanged parts are shared (`Arc`s, see [`Snapshot`]), the
//! list of backends is a copy of pointers, and only the backends of the
//! Services concerned are built again.

use std::{
    collections::BTreeSet,
    sync::{Arc, atomic::Ordering},
};

use super::{Backend, ClusterState, ObjectKey, Snapshot, endpoints, l4};

/// The snapshot `previous` becomes when, since it was compiled, only
/// EndpointSlices changed, all of them of `services` (by their
/// `kubernetes.io/service-name` label before and after the change).
/// `current` holds, of the current state, those Services (when they exist)
/// and every EndpointSlice labelled for one of them; other objects in it are
/// ignored.
///
/// None when the change needs a full compile: one of the Services has L4
/// frontends (NodePort, LoadBalancer, externalIPs), or a backend of one no
/// longer resolves to a port of it.
pub fn refresh_endpoints(
    previous: &Snapshot,
    current: &ClusterState,
    services: &BTreeSet<ObjectKey>,
) -> Option<Snapshot> {
    if services
        .iter()
        .filter_map(|k| current.services.get(k))
        .any(l4::has_frontends)
    {
        return None;
    }
    let slices = endpoints::SliceIndex::new(current);
    let mut backends = previous.backends.clone();
    for b in &mut backends {
        if b.problem.is_some() || !services.contains(&b.service) {
            continue;
        }
        // Unchanged Service, so the port that resolved before still does.
        let sp = current
            .services
            .get(&b.service)?
            .spec
            .as_ref()?
            .ports
            .iter()
            .flatten()
            .find(|p| p.port.to_string() == b.port)?;
        let endpoints: Arc<[_]> = Arc::from(endpoints::usable(endpoints::of_service_port(
            &slices, &b.service, sp,
        )));
        if endpoints == b.endpoints {
            // The same endpoints: the same backend (and Arc) goes on.
            continue;
        }
        *b = Arc::new(Backend {
            service: b.service.clone(),
            port: b.port.clone(),
            endpoints,
            problem: None,
            // Round robin goes on where it was.
            cursor: b.cursor.load(Ordering::Relaxed).into(),
            label: b.label.clone(),
            policy: b.policy,
            protocol: b.protocol,
        });
    }
    Some(Snapshot {
        router: previous.router.clone(),
        backends,
        l4: previous.l4.clone(),
        tls: previous.tls.clone(),
        served: previous.served.clone(),
        diagnostics: previous.diagnostics.clone(),
        node_name: previous.node_name.clone(),
        host_labels: previous.host_labels.clone(),
    })
}

/// The Services named by the `kubernetes.io/service-name` label of a slice,
/// before and after a change (either may be absent): whose endpoints the
/// change can touch.
pub fn services_of_slices<'a>(
    slices: impl IntoIterator<Item = &'a k8s_openapi::api::discovery::v1::EndpointSlice>,
) -> BTreeSet<ObjectKey> {
    slices
        .into_iter()
        .filter_map(|s| {
            let name = s
                .metadata
                .labels
                .as_ref()?
                .get(super::compile::SERVICE_NAME_LABEL)?;
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            Some(ObjectKey::new(ns, name.as_str()))
        })
        .collect()
}

/// Of `state`, the Services in `services` and every EndpointSlice labelled
/// for one of them: what [`refresh_endpoints`] reads.
pub fn slices_of(state: &ClusterState, services: &BTreeSet<ObjectKey>) -> ClusterState {
    let mut out = ClusterState::default();
    for k in services {
        if let Some(s) = state.services.get(k) {
            out.services.insert(k.clone(), s.clone());
        }
    }
    // Every slice is looked at: no allocation per slice.
    let wanted = |ns: &str, name: &str| {
        if services.len() <= 8 {
            services.iter().any(|k| k.namespace == ns && k.name == name)
        } else {
            services.contains(&ObjectKey::new(ns, name))
        }
    };
    for (k, s) in &state.endpoint_slices {
        let Some(name) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(super::compile::SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        if wanted(ns, name) {
            out.endpoint_slices.insert(k.clone(), s.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CompileOptions, compile_at};

    use crate::source::manifest::parse_clean as state;

    const BASE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: ingress-ebpf
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: ingress-ebpf.dev/controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: a, namespace: default}
spec:
  rules:
  - host: a.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /admin, pathType: Prefix, backend: {service: {name: web, port: {name: admin}}}}
      - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
      - {path: /gone, pathType: Prefix, backend: {service: {name: missing, port: {number: 80}}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: admin, port: 9000, targetPort: admin}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: default}
spec:
  type: NodePort
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
"#;

    fn slice(name: &str, service: &str, eps: &[(&str, bool)]) -> String {
        let eps: Vec<String> = eps
            .iter()
            .map(|(ip, ready)| {
                format!("- addresses: [\"{ip}\"]\n  conditions: {{ready: {ready}, serving: true}}")
            })
            .collect();
        format!(
            r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports:
- {{name: http, port: 8080}}
- {{name: admin, port: 9901}}
endpoints:
{}
"#,
            eps.join("\n")
        )
    }

    fn compile(s: &ClusterState) -> Snapshot {
        compile_at(s, &CompileOptions::default(), None, 0)
    }

    fn assert_same(a: &Snapshot, b: &Snapshot) {
        assert_eq!(a.router, b.router);
        assert_eq!(a.backends, b.backends);
        assert_eq!(a.l4, b.l4);
        assert_eq!(a.tls, b.tls);
        assert_eq!(a.served, b.served);
        assert_eq!(a.diagnostics, b.diagnostics);
        assert_eq!(a.node_name, b.node_name);
        assert_eq!(a.host_labels, b.host_labels);
    }

    /// Refreshing `before` for the slice change to `after` gives what a full
    /// compile of `after` gives.
    fn check(before: &str, after: &str) {
        let (s0, s1) = (state(before), state(after));
        let changed: Vec<_> = s0
            .endpoint_slices
            .iter()
            .filter(|(k, v)| s1.endpoint_slices.get(*k) != Some(*v))
            .map(|(_, v)| v)
            .chain(
                s1.endpoint_slices
                    .iter()
                    .filter(|(k, v)| s0.endpoint_slices.get(*k) != Some(*v))
                    .map(|(_, v)| v),
            )
            .collect();
        let services = services_of_slices(changed);
        let refreshed = refresh_endpoints(&compile(&s0), &slices_of(&s1, &services), &services)
            .expect("refreshable");
        assert_same(&refreshed, &compile(&s1));
    }

    #[test]
    fn slice_changes_give_what_a_full_compile_gives() {
        let web = slice("web-1", "web", &[("198.18.0.1", true)]);
        let api = slice("api-1", "api", &[("198.18.0.2", true)]);
        let base = format!("{BASE}{web}{api}");
        // An endpoint moves.
        check(
            &base,
            &format!(
                "{BASE}{}{api}",
                slice("web-1", "web", &[("198.18.0.3", true)])
            ),
        );
        // A second slice for the same Service, with a terminating endpoint.
        check(
            &base,
            &format!(
                "{base}{}",
                slice(
                    "web-2",
                    "web",
                    &[("198.18.0.4", true), ("198.18.0.5", false)]
                )
            ),
        );
        // Only terminating endpoints left: the serving ones are used.
        check(
            &base,
            &format!(
                "{BASE}{}{api}",
                slice("web-1", "web", &[("198.18.0.6", false)])
            ),
        );
        // A slice deleted, one added for a missing Service, one relabelled.
        check(&base, &format!("{BASE}{api}"));
        check(
            &base,
            &format!("{base}{}", slice("m-1", "missing", &[("198.18.0.7", true)])),
        );
        check(
            &base,
            &format!(
                "{BASE}{api}{}",
                slice("web-1", "api", &[("198.18.0.1", true)])
            ),
        );
    }

    #[test]
    fn services_with_l4_frontends_need_a_full_compile() {
        let s = state(&format!(
            "{BASE}{}",
            slice("np-1", "np", &[("198.18.0.1", true)])
        ));
        let services: BTreeSet<_> = [ObjectKey::new("default", "np")].into();
        assert!(refresh_endpoints(&compile(&s), &slices_of(&s, &services), &services).is_none());
    }

    #[test]
    fn the_round_robin_position_is_kept() {
        let s = state(&format!(
            "{BASE}{}",
            slice("api-1", "api", &[("198.18.0.2", true)])
        ));
        let before = compile(&s);
        for b in &before.backends {
            b.cursor.store(7, Ordering::Relaxed);
        }
        let services: BTreeSet<_> = [ObjectKey::new("default", "api")].into();
        let after = refresh_endpoints(&before, &slices_of(&s, &services), &services).unwrap();
        assert!(
            after
                .backends
                .iter()
                .all(|b| b.cursor.load(Ordering::Relaxed) == 7)
        );
        // Also when the endpoints did change.
        let moved = state(&format!(
            "{BASE}{}",
            slice("api-1", "api", &[("198.18.0.9", true)])
        ));
        let after = refresh_endpoints(&before, &slices_of(&moved, &services), &services).unwrap();
        let api: Vec<_> = after
            .backends
            .iter()
            .filter(|b| b.service.name == "api")
            .collect();
        assert!(!api.is_empty());
        assert!(api.iter().all(|b| b.cursor.load(Ordering::Relaxed) == 7));
        assert_eq!(api[0].endpoints[0].addr.ip().to_string(), "198.18.0.9");
    }

    #[test]
    fn what_did_not_change_is_shared_not_copied() {
        let s0 = state(&format!(
            "{BASE}{}{}",
            slice("web-1", "web", &[("198.18.0.1", true)]),
            slice("api-1", "api", &[("198.18.0.2", true)])
        ));
        let s1 = state(&format!(
            "{BASE}{}{}",
            slice("web-1", "web", &[("198.18.0.1", true)]),
            slice("api-1", "api", &[("198.18.0.3", true)])
        ));
        let before = compile(&s0);
        let services: BTreeSet<_> = [ObjectKey::new("default", "api")].into();
        let after = refresh_endpoints(&before, &slices_of(&s1, &services), &services).unwrap();
        assert!(Arc::ptr_eq(&before.router, &after.router));
        assert!(Arc::ptr_eq(&before.served, &after.served));
        assert!(Arc::ptr_eq(&before.host_labels, &after.host_labels));
        assert!(Arc::ptr_eq(&before.tls, &after.tls));
        assert_eq!(before.backends.len(), after.backends.len());
        for (b, a) in before.backends.iter().zip(&after.backends) {
            assert_eq!(Arc::ptr_eq(b, a), b.service.name != "api", "{}", b.label);
        }
    }
}
