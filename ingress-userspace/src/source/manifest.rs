//! Multi-document YAML (or JSON) into typed Kubernetes objects.

use k8s_openapi::api::{
    core::v1::{Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::{Ingress, IngressClass},
};
use serde::Deserialize;

use crate::model::{ClusterState, Diagnostic, ObjectKey, state::key_of};

/// Tests: the state `yaml` holds, which must parse with no diagnostic.
#[cfg(test)]
pub fn parse_clean(yaml: &str) -> ClusterState {
    let mut s = ClusterState::default();
    let mut d = Vec::new();
    parse_into("test", yaml, &mut s, &mut d);
    assert!(d.is_empty(), "fixture does not parse: {d:?}");
    s
}

/// Adds the objects in `text` to `state`. `origin` names the file in
/// diagnostics (`origin#index` for a document).
pub fn parse_into(origin: &str, text: &str, state: &mut ClusterState, diags: &mut Vec<Diagnostic>) {
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let where_ = format!("file {origin} document {index}");
        match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => {}
            Ok(value) => add_value(&where_, value, state, diags),
            Err(e) => {
                diags.push(Diagnostic::error(where_, "", format!("invalid YAML: {e}")));
                // The stream cannot be resynchronized after a syntax error.
                return;
            }
        }
    }
}

fn add_value(
    where_: &str,
    value: serde_yaml::Value,
    state: &mut ClusterState,
    diags: &mut Vec<Diagnostic>,
) {
    let field = |k: &str| {
        value
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    macro_rules! put {
        ($ty:ty, $map:expr, $key:expr) => {{
            match serde_yaml::from_value::<$ty>(value) {
                Ok(obj) => {
                    let key = $key(&obj);
                    if obj.metadata.name.as_deref().unwrap_or("").is_empty() {
                        diags.push(Diagnostic::error(where_, "metadata.name", "missing"));
                    } else if $map.insert(key.clone(), obj).is_some() {
                        diags.push(Diagnostic::warning(
                            where_,
                            "",
                            format!("{kind} {key:?} is defined more than once; the last definition is used"),
                        ));
                    }
                }
                Err(e) => diags.push(Diagnostic::error(where_, "", format!("{kind} does not parse: {e}"))),
            }
        }};
    }
    let namespaced =
        |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| -> ObjectKey {
            key_of(meta)
        };
    match (api_version.as_str(), kind.as_str()) {
        ("networking.k8s.io/v1", "Ingress") => {
            put!(Ingress, state.ingresses, |o: &Ingress| namespaced(
                &o.metadata
            ))
        }
        ("networking.k8s.io/v1", "IngressClass") => {
            put!(IngressClass, state.ingress_classes, |o: &IngressClass| o
                .metadata
                .name
                .clone()
                .unwrap_or_default())
        }
        ("v1", "Service") => put!(Service, state.services, |o: &Service| namespaced(
            &o.metadata
        )),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            put!(EndpointSlice, state.endpoint_slices, |o: &EndpointSlice| {
                namespaced(&o.metadata)
            })
        }
        ("v1", "Secret") => put!(Secret, state.secrets, |o: &Secret| namespaced(&o.metadata)),
        ("v1", "List") => {
            for (i, item) in value
                .get("items")
                .and_then(|v| v.as_sequence())
                .into_iter()
                .flatten()
                .enumerate()
            {
                add_value(&format!("{where_} item {i}"), item.clone(), state, diags);
            }
        }
        ("", _) | (_, "") => diags.push(Diagnostic::error(
            where_,
            "",
            "not a Kubernetes object (no apiVersion or kind)",
        )),
        (a, k) => diags.push(Diagnostic::warning(
            where_,
            "",
            format!("{a} {k} is not used by the agent; ignored"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (ClusterState, Vec<Diagnostic>) {
        let mut s = ClusterState::default();
        let mut d = Vec::new();
        parse_into("t.yaml", text, &mut s, &mut d);
        (s, d)
    }

    #[test]
    fn multi_document_with_every_kind() {
        let (s, d) = parse(
            r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: ours}
spec: {controller: x/y}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: a, namespace: web}
spec: {defaultBackend: {service: {name: s, port: {number: 80}}}}
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
endpoints: [{addresses: ["127.0.0.2"]}]
---
apiVersion: v1
kind: Secret
metadata: {name: tls}
type: kubernetes.io/tls
---
"#,
        );
        assert!(d.is_empty(), "{d:?}");
        assert!(s.ingress_classes.contains_key("ours"));
        assert!(s.ingresses.contains_key(&ObjectKey::new("web", "a")));
        assert!(s.services.contains_key(&ObjectKey::new("default", "s")));
        assert_eq!(s.endpoint_slices.len(), 1);
        assert_eq!(s.secrets.len(), 1);
    }

    #[test]
    fn bad_documents_are_reported_by_index_and_the_rest_kept() {
        let (s, d) = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: 7}\n---\nkind: Nothing\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
        );
        assert_eq!(s.services.len(), 1);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(
            d[0].object.contains("t.yaml document 1") && d[0].message.contains("does not parse")
        );
        assert!(d[1].object.contains("document 2"));
        assert!(d[2].message.contains("ignored"));
    }

    #[test]
    fn invalid_yaml_names_the_file_and_document() {
        let (s, d) = parse("apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n: : [\n");
        assert_eq!(s.services.len(), 1);
        assert_eq!(d.len(), 1);
        assert!(d[0].object.contains("t.yaml document 1"), "{d:?}");
        assert!(d[0].message.contains("invalid YAML"));
    }

    #[test]
    fn list_items_and_duplicates() {
        let (s, d) = parse(
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a}}\n- {apiVersion: v1, kind: Service, metadata: {name: a}}\n",
        );
        assert_eq!(s.services.len(), 1);
        assert_eq!(d.len(), 1);
        assert!(d[0].message.contains("more than once"));
    }
}
