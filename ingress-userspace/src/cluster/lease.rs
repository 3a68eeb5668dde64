//! Leases in the agent's namespace (coordination.k8s.io/v1):
//!
//! - Leader election: one agent per class writes Ingress status, the holder
//!   of `<class>-status`. An update carries the resourceVersion it read, so
//!   two agents racing for an expired Lease cannot both win (the loser gets
//!   409 Conflict and follows). On shutdown the holder releases it as
//!   client-go's `ReleaseOnCancel` does (holder cleared, duration 1 s), so
//!   another agent takes it at its next look instead of after expiry.
//! - Presence: each agent holds `<class>-node-<node name>`, labelled
//!   `ingress.ebpf.io/class`, and the leader lists those (label selector)
//!   to know on which nodes an agent of the class runs now: for status
//!   that shows the ingress nodes' addresses, and to know whether it is the
//!   last agent of the class when it stops. Released on shutdown like the
//!   election Lease; one an agent killed outright leaves expires after its
//!   duration.
//!
//! Calls `get`, `list`, `create` and `update` on `leases` (the Namespaced
//! row of `access`).

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cluster::status::{SHUTDOWN_CLEAR_TIMEOUT, ShutdownRequest};

/// How long a Lease is held without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews and the others look.
pub const RETRY: Duration = Duration::from_secs(2);
/// How often an agent renews its presence Lease (held `LEASE_DURATION`).
pub const PRESENCE_RENEW: Duration = Duration::from_secs(5);
/// How long releasing the Leases may take on shutdown.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);
/// The label presence Leases carry, with the class as its value.
pub const CLASS_LABEL: &str = "ingress.ebpf.io/class";

/// The election Lease of `class`.
pub fn election_name(class: &str) -> String {
    format!("{class}-status")
}

/// The presence Lease of the agent of `class` on `node`.
pub fn presence_name(class: &str, node: &str) -> String {
    format!("{class}-node-{node}")
}

/// The label selector listing the presence Leases of `class`.
pub fn presence_selector(class: &str) -> String {
    format!("{CLASS_LABEL}={class}")
}

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
    if holder.is_empty() || expired(&spec, now) {
        Step::Update { take: true }
    } else {
        Step::Follow
    }
}

/// Whether a Lease's holder stopped renewing it.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
        Some(MicroTime(t)) => *t + SignedDuration::from_secs(duration) < now,
        None => true,
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

/// `current` released as client-go's `ReleaseOnCancel` writes it: no
/// holder, a duration of 1 s, renewed now; the transitions count is kept.
pub fn released(mut current: Lease, now: Timestamp) -> Lease {
    let mut spec = current.spec.take().unwrap_or_default();
    spec.holder_identity = Some(String::new());
    spec.lease_duration_seconds = Some(1);
    spec.acquire_time = Some(MicroTime(now));
    spec.renew_time = Some(MicroTime(now));
    current.spec = Some(spec);
    current
}

/// The presence Lease `name` of `class` as `me` holds it, from `current`
/// (None to create): labelled with the class, renewed now.
pub fn presence(
    name: &str,
    class: &str,
    me: &str,
    current: Option<Lease>,
    now: Timestamp,
) -> Lease {
    let mut lease = held(name, me, current, false, now);
    lease
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(CLASS_LABEL.to_string(), class.to_string());
    lease
}

/// Pure: the node names of the live presence Leases of `class` (held, not
/// expired), sorted.
pub fn live_nodes(leases: &[Lease], class: &str, now: Timestamp) -> Vec<String> {
    let prefix = presence_name(class, "");
    let mut nodes: Vec<String> = leases
        .iter()
        .filter(|l| {
            l.spec.as_ref().is_some_and(|s| {
                s.holder_identity.as_deref().is_some_and(|h| !h.is_empty()) && !expired(s, now)
            })
        })
        .filter_map(|l| l.metadata.name.as_deref()?.strip_prefix(&prefix))
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

/// What the election says: `None` while following, `Some(nodes)` while
/// holding the Lease, with the ingress nodes (empty without presence).
pub type Leadership = Option<Vec<String>>;

/// One agent's Leases: the election and, when status shows node
/// addresses, its presence.
pub struct Elector {
    api: Api<Lease>,
    class: String,
    name: String,
    me: String,
    /// The presence Lease's name, when kept.
    presence: Option<String>,
    presence_renewed: Option<Instant>,
    holding: bool,
    /// The ingress nodes last listed.
    nodes: Vec<String>,
}

impl Elector {
    /// `presence_node`: keep a presence Lease for this node (and list the
    /// others' while leader).
    pub fn new(
        client: Client,
        namespace: &str,
        class: &str,
        me: &str,
        presence_node: Option<&str>,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            class: class.to_string(),
            name: election_name(class),
            me: me.to_string(),
            presence: presence_node.map(|n| presence_name(class, n)),
            presence_renewed: None,
            holding: false,
            nodes: Vec::new(),
        }
    }

    /// One look: renews the presence Lease when due, then gets and
    /// creates, renews or takes the election Lease, or follows; the leader
    /// lists the live presence Leases.
    pub async fn round(&mut self) -> Leadership {
        if let Some(name) = self.presence.clone()
            && self
                .presence_renewed
                .is_none_or(|t| t.elapsed() >= PRESENCE_RENEW)
        {
            match self.renew_presence(&name).await {
                Ok(()) => self.presence_renewed = Some(Instant::now()),
                Err(e) => tracing::warn!(lease = %name, error = %e, "renewing the presence Lease"),
            }
        }
        let holding = match self.step().await {
            Ok(h) => h,
            Err(kube::Error::Api(s)) if s.code == 409 => false,
            Err(e) => {
                tracing::warn!(lease = %self.name, error = %e, "leader election");
                // Not renewed: stop writing before another agent may take it.
                false
            }
        };
        if holding != self.holding {
            tracing::info!(lease = %self.name, identity = %self.me, leader = holding, "status leader");
        }
        self.holding = holding;
        if !holding {
            return None;
        }
        if self.presence.is_some() {
            let lp = ListParams::default().labels(&presence_selector(&self.class));
            match self.api.list(&lp).await {
                Ok(list) => {
                    let nodes = live_nodes(&list.items, &self.class, Timestamp::now());
                    if nodes != self.nodes {
                        tracing::info!(nodes = ?nodes, "ingress nodes");
                    }
                    self.nodes = nodes;
                }
                // The last list stands until one succeeds.
                Err(e) => tracing::warn!(error = %e, "listing the presence Leases"),
            }
        }
        Some(self.nodes.clone())
    }

    async fn step(&self) -> kube::Result<bool> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        match decide(current.as_ref(), &self.me, now) {
            Step::Create => {
                let lease = held(&self.name, &self.me, None, true, now);
                self.api.create(&PostParams::default(), &lease).await?;
                Ok(true)
            }
            Step::Update { take } => {
                let lease = held(&self.name, &self.me, current, take, now);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await?;
                Ok(true)
            }
            Step::Follow => Ok(false),
        }
    }

    async fn renew_presence(&self, name: &str) -> kube::Result<()> {
        let now = Timestamp::now();
        match self.api.get_opt(name).await? {
            None => {
                let lease = presence(name, &self.class, &self.me, None, now);
                self.api.create(&PostParams::default(), &lease).await?;
            }
            Some(current) => {
                let lease = presence(name, &self.class, &self.me, Some(current), now);
                self.api
                    .replace(name, &PostParams::default(), &lease)
                    .await?;
            }
        }
        Ok(())
    }

    /// Releases `name` if this agent holds it.
    async fn release_one(&self, name: &str) -> kube::Result<bool> {
        let Some(current) = self.api.get_opt(name).await? else {
            return Ok(false);
        };
        let holder = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .unwrap_or("");
        if holder != self.me {
            return Ok(false);
        }
        let lease = released(current, Timestamp::now());
        self.api
            .replace(name, &PostParams::default(), &lease)
            .await?;
        Ok(true)
    }

    /// Releases the election Lease (when held) and the presence Lease.
    pub async fn release(&mut self) {
        self.holding = false;
        let presence = self.presence.clone();
        let (election, presence) = tokio::join!(self.release_one(&self.name), async {
            match &presence {
                Some(p) => Some(self.release_one(p).await),
                None => None,
            }
        });
        match election {
            Ok(true) => tracing::info!(lease = %self.name, "status leadership released"),
            Ok(false) => {}
            Err(e) => tracing::warn!(lease = %self.name, error = %e, "releasing the Lease"),
        }
        if let Some(Err(e)) = presence {
            tracing::warn!(error = %e, "releasing the presence Lease");
        }
    }
}

impl Elector {
    /// Whether `nodes`, the ingress nodes last listed, hold no agent of the
    /// class but this one (and were listed at all).
    pub fn alone(&self, nodes: &[String]) -> bool {
        !nodes.is_empty()
            && nodes
                .iter()
                .all(|n| self.presence.as_deref() == Some(presence_name(&self.class, n).as_str()))
    }
}

/// Runs the election until `stop` turns true (or its sender goes), then
/// stops leading (`leader` to None) and releases the Leases within
/// `RELEASE_TIMEOUT`. With `clear_on_shutdown` (`--update-status-on-shutdown`),
/// a leader that is the last agent of its class first asks the status
/// writer there to clear what it published, and waits for it at most
/// `status::SHUTDOWN_CLEAR_TIMEOUT`.
pub async fn run(
    mut elector: Elector,
    leader: watch::Sender<Leadership>,
    mut stop: watch::Receiver<bool>,
    clear_on_shutdown: Option<mpsc::Sender<ShutdownRequest>>,
) {
    // The first round's result is always announced (following included):
    // the Events writer waits for it to know what it may report.
    let mut first = true;
    loop {
        let out = tokio::select! {
            out = elector.round() => out,
            _ = stop.wait_for(|s| *s) => break,
        };
        leader.send_if_modified(|l| {
            let changed = first || *l != out;
            *l = out;
            changed
        });
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let last = leader.borrow().as_ref().is_some_and(|n| elector.alone(n));
    if let (true, Some(writer)) = (last, clear_on_shutdown) {
        let (done, answered) = oneshot::channel();
        let cleared = tokio::time::timeout(SHUTDOWN_CLEAR_TIMEOUT, async {
            writer.send(done).await.is_ok() && answered.await.is_ok()
        })
        .await;
        if cleared.is_err() {
            tracing::warn!("clearing status took over {SHUTDOWN_CLEAR_TIMEOUT:?}; some stays");
        }
    }
    leader.send_replace(None);
    if tokio::time::timeout(RELEASE_TIMEOUT, elector.release())
        .await
        .is_err()
    {
        tracing::warn!("releasing the Leases took over {RELEASE_TIMEOUT:?}; left to expire");
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
        // api.get_opt, api.list (presence), api.create, api.replace.
        assert_eq!(row.verbs, ["get", "list", "create", "update"]);
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

    #[test]
    fn release_clears_the_holder_as_client_go_does() {
        let now = Timestamp::now();
        let l = held("l", "me", Some(lease("other", now)), true, now);
        let r = released(l, now);
        let spec = r.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(""));
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(2));
        // Anyone takes a released Lease at once, counting a transition.
        assert_eq!(decide(Some(&r), "next", now), Step::Update { take: true });
        let taken = held("l", "next", Some(r), true, now);
        assert_eq!(taken.spec.unwrap().lease_transitions, Some(3));
    }

    #[test]
    fn live_nodes_are_the_held_unexpired_presence_leases_of_the_class() {
        let now = Timestamp::now();
        let old = now - SignedDuration::from_secs(60);
        let p =
            |node: &str, at: Timestamp| presence(&presence_name("c", node), "c", node, None, at);
        let leases = vec![
            p("n2", now),
            p("n1", now),
            p("gone", old),
            released(p("stopped", now), now),
            // Not named as a presence Lease of this class.
            presence("c-status", "c", "x", None, now),
            presence(&presence_name("d", "n3"), "c", "x", None, now),
        ];
        assert_eq!(live_nodes(&leases, "c", now), ["n1", "n2"]);
        let l = &leases[0];
        assert_eq!(l.metadata.name.as_deref(), Some("c-node-n2"));
        assert_eq!(l.metadata.labels.as_ref().unwrap()[CLASS_LABEL], "c");
        assert_eq!(presence_selector("c"), "ingress.ebpf.io/class=c");
    }

    use crate::cluster::mock::{self, answer};
    use serde_json::json;

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";

    fn lease_json(holder: &str, rv: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(lease(holder, Timestamp::now())).unwrap();
        v["metadata"]["resourceVersion"] = json!(rv);
        v["metadata"]["name"] = json!("c-status");
        v
    }

    #[tokio::test]
    async fn the_last_agent_is_the_only_node_listed() {
        let (client, _h) = mock::client();
        let e = Elector::new(client, "ns", "c", "me", Some("n1"));
        let nodes = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(e.alone(&nodes(&["n1"])));
        assert!(!e.alone(&nodes(&["n1", "n2"])));
        assert!(!e.alone(&nodes(&["n2"])));
        // Never listed: not known to be alone.
        assert!(!e.alone(&[]));
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_and_a_conflict_means_following() {
        let (client, mut h) = mock::client();
        let mut e = Elector::new(client, "ns", "c", "me", None);
        let server = tokio::spawn(async move {
            let get = answer(&mut h, 404, mock::status(404, "NotFound")).await;
            assert_eq!(
                (get.method.as_str(), get.uri.as_str()),
                ("GET", &*format!("{LEASES}/c-status"))
            );
            let create = answer(&mut h, 201, lease_json("me", "1")).await;
            assert_eq!(
                (create.method.as_str(), create.uri.as_str()),
                ("POST", &*format!("{LEASES}?"))
            );
            assert_eq!(create.body["metadata"]["name"], "c-status");
            assert_eq!(create.body["spec"]["holderIdentity"], "me");
            assert_eq!(create.body["spec"]["leaseDurationSeconds"], 15);
            // Next round: someone else created it first.
            answer(&mut h, 404, mock::status(404, "NotFound")).await;
            let lost = answer(&mut h, 409, mock::status(409, "AlreadyExists")).await;
            assert_eq!(lost.method, "POST");
            h
        });
        assert_eq!(e.round().await, Some(vec![]));
        assert_eq!(e.round().await, None);
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn the_leader_lists_presence_leases_by_label_and_release_clears_the_holder() {
        let (client, mut h) = mock::client();
        let mut e = Elector::new(client, "ns", "c", "me", Some("n1"));
        let server = tokio::spawn(async move {
            // Presence: none yet, created with the class label.
            let get = answer(&mut h, 404, mock::status(404, "NotFound")).await;
            assert_eq!(get.uri, format!("{LEASES}/c-node-n1"));
            let mut mine =
                serde_json::to_value(presence("c-node-n1", "c", "me", None, Timestamp::now()))
                    .unwrap();
            mine["metadata"]["resourceVersion"] = json!("5");
            let create = answer(&mut h, 201, mine.clone()).await;
            assert_eq!(create.body["metadata"]["labels"][CLASS_LABEL], "c");
            // Election: ours already, renewed with the version read.
            answer(&mut h, 200, lease_json("me", "7")).await;
            let renew = answer(&mut h, 200, lease_json("me", "8")).await;
            assert_eq!(renew.method, "PUT");
            assert_eq!(renew.uri, format!("{LEASES}/c-status?"));
            assert_eq!(renew.body["metadata"]["resourceVersion"], "7");
            // Leader: the presence Leases of the class.
            let other =
                serde_json::to_value(presence("c-node-n2", "c", "them", None, Timestamp::now()))
                    .unwrap();
            let list = answer(
                &mut h,
                200,
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList",
                "metadata": {"resourceVersion": "9"}, "items": [mine.clone(), other]}),
            )
            .await;
            assert_eq!(list.method, "GET");
            assert!(list.uri.starts_with(&format!("{LEASES}?")), "{}", list.uri);
            assert!(
                list.uri
                    .contains("labelSelector=ingress.ebpf.io%2Fclass%3Dc"),
                "{}",
                list.uri
            );
            // Release: both Leases read and written back without a holder.
            let mut gets = Vec::new();
            for _ in 0..2 {
                let get = mock::respond(&mut h, |seen| {
                    if seen.uri.ends_with("c-status") {
                        (200, lease_json("me", "8"))
                    } else {
                        (200, mine.clone())
                    }
                })
                .await;
                assert_eq!(get.method, "GET");
                gets.push(get.uri);
            }
            let mut puts = Vec::new();
            for _ in 0..2 {
                let put = mock::respond(&mut h, |seen| (200, seen.body.clone())).await;
                assert_eq!(put.method, "PUT");
                puts.push(put);
            }
            (gets, puts)
        });
        assert_eq!(
            e.round().await,
            Some(vec!["n1".to_string(), "n2".to_string()])
        );
        e.release().await;
        let (gets, puts) = server.await.unwrap();
        assert_eq!(gets.len(), 2);
        for put in &puts {
            assert_eq!(put.body["spec"]["holderIdentity"], "", "{:?}", put);
            assert_eq!(put.body["spec"]["leaseDurationSeconds"], 1);
        }
        let mut uris: Vec<&str> = puts.iter().map(|p| p.uri.as_str()).collect();
        uris.sort();
        assert_eq!(
            uris,
            [
                format!("{LEASES}/c-node-n1?"),
                format!("{LEASES}/c-status?")
            ]
        );
    }
}
