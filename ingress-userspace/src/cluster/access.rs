//! Every API access cluster mode makes, as a table. `deploy/base/rbac.yaml`
//! grants exactly this: the deploy test (`tests/deploy.rs`) fails when the
//! rendered ClusterRole and Role lack a row here or grant anything more.
//! A watcher, status writer or recorder that needs another verb adds its
//! row here, and the test then names the rule the manifests miss.

/// Where a permission applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every namespace (or a cluster-scoped resource): a ClusterRole bound
    /// by a ClusterRoleBinding.
    Cluster,
    /// The agent's own namespace: a Role bound by a RoleBinding.
    Namespaced,
}

/// One resource and the verbs used on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// API group; `""` is the core group.
    pub api_group: &'static str,
    /// Plural resource name, with `/subresource` where one is used.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    /// Why cluster mode needs it.
    pub why: &'static str,
}

const READ: &[&str] = &["get", "list", "watch"];

/// The table. Kept in the order of `deploy/base/rbac.yaml`.
pub const ACCESS: &[Access] = &[
    Access {
        api_group: "networking.k8s.io",
        resource: "ingressclasses",
        verbs: READ,
        scope: Scope::Cluster,
        why: "which classes name our controller, and which is the default",
    },
    Access {
        api_group: "networking.k8s.io",
        resource: "ingresses",
        verbs: READ,
        scope: Scope::Cluster,
        why: "the L7 rules",
    },
    Access {
        api_group: "networking.k8s.io",
        resource: "ingresses/status",
        verbs: &["patch"],
        scope: Scope::Cluster,
        why: "publish the load balancer address (leader only)",
    },
    Access {
        api_group: "",
        resource: "services",
        verbs: READ,
        scope: Scope::Cluster,
        why: "backends of Ingress rules, and the L4 frontends (NodePort, LoadBalancer, externalIPs)",
    },
    Access {
        api_group: "",
        resource: "secrets",
        verbs: READ,
        scope: Scope::Cluster,
        why: "TLS certificates named by Ingress spec.tls",
    },
    Access {
        api_group: "",
        resource: "nodes",
        verbs: READ,
        scope: Scope::Cluster,
        why: "node addresses for remote endpoints and NodePort answers",
    },
    Access {
        api_group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: READ,
        scope: Scope::Cluster,
        why: "pod endpoints, their readiness and their node",
    },
    Access {
        api_group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
        why: "Warning Events on Ingresses with configuration problems, in their namespace (leader only; patch for a series)",
    },
    Access {
        api_group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "list", "create", "update"],
        scope: Scope::Namespaced,
        why: "leader election for status writing, and each agent's presence Lease (listed by the leader to know the ingress nodes), in the agent's namespace",
    },
];

/// One permission: (scope, group, resource, verb).
pub type Permission = (Scope, &'static str, &'static str, &'static str);

/// The table as single permissions, sorted and without duplicates.
pub fn permissions() -> Vec<Permission> {
    let mut out: Vec<Permission> = ACCESS
        .iter()
        .flat_map(|a| {
            a.verbs
                .iter()
                .map(move |v| (a.scope, a.api_group, a.resource, *v))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_unique_and_verbs_known() {
        let known = [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ];
        for (i, a) in ACCESS.iter().enumerate() {
            assert!(!a.verbs.is_empty(), "{} has no verb", a.resource);
            for v in a.verbs {
                assert!(known.contains(v), "{}: unknown verb {v}", a.resource);
            }
            for b in &ACCESS[i + 1..] {
                assert!(
                    !(a.api_group == b.api_group && a.resource == b.resource && a.scope == b.scope),
                    "{} is listed twice",
                    a.resource
                );
            }
        }
    }

    #[test]
    fn permissions_expand_every_verb() {
        let p = permissions();
        let verbs: usize = ACCESS.iter().map(|a| a.verbs.len()).sum();
        assert_eq!(p.len(), verbs);
        assert!(p.contains(&(Scope::Namespaced, "coordination.k8s.io", "leases", "create")));
        assert!(
            !p.iter().any(|(_, _, r, v)| *r == "secrets"
                && *v != "get"
                && *v != "list"
                && *v != "watch")
        );
    }
}
