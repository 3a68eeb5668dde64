//! The objects the agent reads, as the API (or manifest files) gives them.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::api::{
    core::v1::{Node, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::{Ingress, IngressClass},
};

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything compile needs, keyed for deterministic iteration.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// IngressClasses are cluster-scoped: keyed by name.
    pub ingress_classes: BTreeMap<String, IngressClass>,
    pub ingresses: BTreeMap<ObjectKey, Ingress>,
    pub services: BTreeMap<ObjectKey, Service>,
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub secrets: BTreeMap<ObjectKey, Secret>,
    /// Nodes are cluster-scoped: keyed by name. Kept by cluster mode for
    /// node addresses; compile does not read them yet.
    pub nodes: BTreeMap<String, Node>,
}

/// The object key of anything with metadata, defaulting the namespace.
pub fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        meta.name.clone().unwrap_or_default(),
    )
}
