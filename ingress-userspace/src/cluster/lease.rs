//! Leader election on a coordination.k8s.io Lease in the agent's namespace:
//! one agent per class writes Ingress status. Calls `get`, `create` and
//! `update` on `leases` (the Namespaced rows of `access`); an update carries
//! the resourceVersion it read, so two agents racing for an expired Lease
//! cannot both win (the loser gets 409 Conflict and follows).

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::Lease,
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;

/// How long a Lease is held without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews and the others look.
pub const RETRY: Duration = Duration::from_secs(2);

/// What to do with the Lease as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// None exists: create it, holding it.
    Create,
    /// Ours (renew) or expired (take over): update it, holding it.
    Update { take: bool },
    /// Someone else holds it and it is fresh.
    Follow,
}

/// Pure: the step for `lease` as read at `now`.
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Step {
    let Some(lease) = lease else {
        return Step::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Step::Update { take: false };
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    let expired = match spec.renew_time.or(spec.acquire_time) {
        Some(MicroTime(t)) => t + SignedDuration::from_secs(duration) < now,
        None => true,
    };
    if holder.is_empty() || expired {
        Step::Update { take: true }
    } else {
        Step::Follow
    }
}

/// The Lease as this agent holds it, from `current` (None to create).
pub fn held(name: &str, me: &str, current: Option<Lease>, take: bool, now: Timestamp) -> Lease {
    let mut lease = current.unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let mut spec = lease.spec.take().unwrap_or_default();
    if take || spec.holder_identity.as_deref() != Some(me) {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(me.to_string());
    spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
    spec.renew_time = Some(MicroTime(now));
    lease.spec = Some(spec);
    lease
}

/// Runs the election until aborted; `leader` says whether we hold the Lease.
pub async fn run(
    client: Client,
    namespace: String,
    name: String,
    me: String,
    leader: watch::Sender<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    loop {
        let now = Timestamp::now();
        let holding = match api.get_opt(&name).await {
            Ok(current) => match decide(current.as_ref(), &me, now) {
                Step::Create => api
                    .create(&PostParams::default(), &held(&name, &me, None, true, now))
                    .await
                    .map(|_| true),
                Step::Update { take } => api
                    .replace(
                        &name,
                        &PostParams::default(),
                        &held(&name, &me, current, take, now),
                    )
                    .await
                    .map(|_| true),
                Step::Follow => Ok(false),
            },
            Err(e) => Err(e),
        };
        let holding = match holding {
            Ok(h) => h,
            Err(kube::Error::Api(s)) if s.code == 409 => false,
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "leader election");
                // Not renewed: stop writing before another agent may take it.
                false
            }
        };
        if *leader.borrow() != holding {
            tracing::info!(lease = %name, identity = %me, leader = holding, "status leader");
        }
        leader.send_replace(holding);
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: Timestamp) -> Lease {
        held("l", holder, None, true, renewed)
    }

    #[test]
    fn the_access_table_grants_exactly_the_verbs_used_here() {
        let row = crate::cluster::access::ACCESS
            .iter()
            .find(|a| a.resource == "leases")
            .unwrap();
        assert_eq!(row.api_group, "coordination.k8s.io");
        assert_eq!(row.scope, crate::cluster::access::Scope::Namespaced);
        // api.get_opt, api.create, api.replace.
        assert_eq!(row.verbs, ["get", "create", "update"]);
    }

    #[test]
    fn steps() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "me", now), Step::Create);
        assert_eq!(
            decide(Some(&lease("me", now)), "me", now),
            Step::Update { take: false }
        );
        assert_eq!(decide(Some(&lease("other", now)), "me", now), Step::Follow);
        let old = now - SignedDuration::from_secs(60);
        assert_eq!(
            decide(Some(&lease("other", old)), "me", now),
            Step::Update { take: true }
        );
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let now = Timestamp::now();
        let l = lease("other", now);
        assert_eq!(l.spec.as_ref().unwrap().lease_transitions, Some(1));
        let taken = held("l", "me", Some(l), true, now);
        let spec = taken.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(2));
        let renewed = held("l", "me", Some(taken), false, now);
        assert_eq!(renewed.spec.unwrap().lease_transitions, Some(2));
    }
}
