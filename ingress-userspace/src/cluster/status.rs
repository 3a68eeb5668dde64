//! Ingress status: the agent holding the Lease (`lease`) publishes its
//! address in `status.loadBalancer.ingress` of every Ingress it serves.
//! Calls `patch` on `ingresses/status` (a JSON merge patch), only where the
//! status differs, so a settled cluster sees no writes.

use std::time::Duration;

use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tokio::sync::watch;

use crate::model::ObjectKey;

/// The served Ingresses and their status as last seen.
pub type Served = Vec<(ObjectKey, Vec<IngressLoadBalancerIngress>)>;

/// `address` as a load balancer entry: `ip` when it parses as one, else
/// `hostname`.
pub fn entry(address: &str) -> IngressLoadBalancerIngress {
    if address.parse::<std::net::IpAddr>().is_ok() {
        IngressLoadBalancerIngress {
            ip: Some(address.to_string()),
            ..Default::default()
        }
    } else {
        IngressLoadBalancerIngress {
            hostname: Some(address.to_string()),
            ..Default::default()
        }
    }
}

/// Pure: the Ingresses whose status must change, with the merge patch.
pub fn patches(served: &Served, address: &str) -> Vec<(ObjectKey, serde_json::Value)> {
    let want = vec![entry(address)];
    served
        .iter()
        .filter(|(_, current)| *current != want)
        .map(|(key, _)| {
            (
                key.clone(),
                serde_json::json!({"status": {"loadBalancer": {"ingress": want}}}),
            )
        })
        .collect()
}

/// Writes status while `leader` is true, after every change of `served`
/// (and every few seconds, to retry failed writes).
pub async fn run(
    client: Client,
    address: String,
    mut served: watch::Receiver<Served>,
    mut leader: watch::Receiver<bool>,
) {
    loop {
        if *leader.borrow_and_update() {
            let todo = patches(&served.borrow_and_update(), &address);
            for (key, patch) in todo {
                let api: Api<Ingress> = Api::namespaced(client.clone(), &key.namespace);
                match api
                    .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => tracing::info!(ingress = %key, address = %address, "status published"),
                    Err(e) => tracing::warn!(ingress = %key, error = %e, "publishing status"),
                }
            }
        }
        tokio::select! {
            r = served.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_table_grants_the_status_patch() {
        let row = crate::cluster::access::ACCESS
            .iter()
            .find(|a| a.resource == "ingresses/status")
            .unwrap();
        assert!(row.verbs.contains(&"patch"));
    }

    #[test]
    fn only_differing_statuses_are_patched() {
        let served: Served = vec![
            (ObjectKey::new("a", "same"), vec![entry("198.18.0.1")]),
            (ObjectKey::new("a", "empty"), vec![]),
            (ObjectKey::new("a", "other"), vec![entry("198.18.0.2")]),
        ];
        let p = patches(&served, "198.18.0.1");
        let keys: Vec<String> = p.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, ["a/empty", "a/other"]);
        assert_eq!(
            p[0].1,
            serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.18.0.1"}]}}})
        );
        assert_eq!(entry("lb.example").hostname.as_deref(), Some("lb.example"));
    }
}
