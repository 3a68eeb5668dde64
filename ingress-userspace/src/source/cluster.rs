//! Cluster mode: kube-runtime watchers over the API server keep one store
//! per kind; every settled burst of changes hands a whole ClusterState to
//! the same compile -> apply path as the manifest files.
//!
//! - Objects are read as untyped JSON and decoded one by one, so one object
//!   the decoder rejects is reported (a diagnostic naming it) and skipped
//!   while its kind keeps being watched.
//! - A (re)list is buffered from `Init` to `InitDone` and swapped in whole:
//!   an object present before and after a relist never leaves the store.
//! - Nothing is applied before every kind finished its first list. Errors
//!   (API down, watch expired) keep the last stores and the applied
//!   snapshot; the watchers retry with kube-runtime's default backoff.
//!
//! What is called on the API server is exactly the read rows of
//! `cluster::access` (get/list/watch on these six resources).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::StreamExt;
use k8s_openapi::{
    api::{
        core::v1::{Node, Secret, Service},
        discovery::v1::EndpointSlice,
        networking::v1::{Ingress, IngressClass},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Config, Resource,
    api::{ApiResource, DynamicObject},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use prometheus_client::metrics::histogram::Histogram;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::{
    cluster::{addresses, status::View},
    model::{ClusterState, Diagnostic, ObjectKey, refresh, state::key_of},
};

/// How long a burst of watch events settles before one compile.
const DEBOUNCE: Duration = Duration::from_millis(5);

/// The field selector of the Secret watcher: only TLS Secrets are read.
pub const SECRET_FIELD_SELECTOR: &str = "type=kubernetes.io/tls";

/// Where the client's configuration comes from.
pub enum ClientSource<'a> {
    Kubeconfig(&'a Path),
    InCluster,
}

/// A client for the API server.
pub async fn client(source: ClientSource<'_>) -> anyhow::Result<Client> {
    let config = match source {
        ClientSource::Kubeconfig(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        ClientSource::InCluster => {
            Config::incluster().context("reading the in-cluster configuration")?
        }
    };
    Client::try_from(config).context("building the API client")
}

/// A kind cluster mode watches: how its objects are keyed and stored.
pub trait Watched:
    Resource<DynamicType = ()>
    + k8s_openapi::Resource
    + DeserializeOwned
    + Clone
    + Send
    + Sync
    + 'static
{
    type Key: Ord + Clone + Send + fmt::Display + 'static;
    /// Whether --watch-namespace limits it.
    const NAMESPACED: bool;
    /// The bit of this kind in the synced mask.
    const BIT: u8;
    /// Whether the compiled snapshot reads this kind at all (Nodes are
    /// only read for the status addresses).
    const COMPILED: bool = true;
    fn key(meta: &ObjectMeta) -> Self::Key;
    fn store(state: &mut ClusterState) -> &mut BTreeMap<Self::Key, Self>;
    /// What a change from `old` to `new` (either absent) needs.
    fn change(_old: Option<&Self>, _new: Option<&Self>) -> Change {
        if Self::COMPILED {
            Change::Compile
        } else {
            Change::Status
        }
    }
}

/// What one watch event needs before it reaches traffic and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A full compile of the whole state.
    Compile,
    /// Only the endpoints of these Services are re-resolved.
    Endpoints(BTreeSet<ObjectKey>),
    /// Nothing served changes; only the status writer's view (an Ingress's
    /// own status, a Node's addresses).
    Status,
}

/// Whether `old` and `new` differ at most in what the agent itself writes
/// (`status`) and in the bookkeeping every write changes (resourceVersion,
/// managedFields): the leader's status writes must not recompile 10,000
/// Ingresses on every agent.
fn ingress_status_only(old: &Ingress, new: &Ingress) -> bool {
    fn bare(i: &Ingress) -> Ingress {
        let mut i = i.clone();
        i.status = None;
        i.metadata.resource_version = None;
        i.metadata.managed_fields = None;
        i
    }
    bare(old) == bare(new)
}

macro_rules! namespaced {
    ($t:ty, $field:ident, $bit:expr $(, $extra:item)*) => {
        impl Watched for $t {
            type Key = ObjectKey;
            const NAMESPACED: bool = true;
            const BIT: u8 = $bit;
            fn key(meta: &ObjectMeta) -> ObjectKey {
                key_of(meta)
            }
            fn store(state: &mut ClusterState) -> &mut BTreeMap<ObjectKey, Self> {
                &mut state.$field
            }
            $($extra)*
        }
    };
}

macro_rules! cluster_scoped {
    ($t:ty, $field:ident, $bit:expr $(, $extra:item)*) => {
        impl Watched for $t {
            type Key = String;
            const NAMESPACED: bool = false;
            const BIT: u8 = $bit;
            fn key(meta: &ObjectMeta) -> String {
                meta.name.clone().unwrap_or_default()
            }
            fn store(state: &mut ClusterState) -> &mut BTreeMap<String, Self> {
                &mut state.$field
            }
            $($extra)*
        }
    };
}

cluster_scoped!(IngressClass, ingress_classes, 1 << 0);
namespaced!(
    Ingress,
    ingresses,
    1 << 1,
    fn change(old: Option<&Self>, new: Option<&Self>) -> Change {
        match (old, new) {
            (Some(old), Some(new)) if ingress_status_only(old, new) => Change::Status,
            _ => Change::Compile,
        }
    }
);
namespaced!(Service, services, 1 << 2);
namespaced!(
    EndpointSlice,
    endpoint_slices,
    1 << 3,
    fn change(old: Option<&Self>, new: Option<&Self>) -> Change {
        Change::Endpoints(refresh::services_of_slices(old.into_iter().chain(new)))
    }
);
namespaced!(Secret, secrets, 1 << 4);
cluster_scoped!(Node, nodes, 1 << 5, const COMPILED: bool = false;);

/// Every kind's bit: applying waits until all are set.
const ALL_SYNCED: u8 = (1 << 6) - 1;

/// (API group, plural) of every watched kind, for the access table check.
pub fn watched_resources() -> Vec<(String, String)> {
    fn one<K: Watched>() -> (String, String) {
        let ar = ApiResource::erase::<K>(&());
        (ar.group, ar.plural)
    }
    vec![
        one::<IngressClass>(),
        one::<Ingress>(),
        one::<Service>(),
        one::<EndpointSlice>(),
        one::<Secret>(),
        one::<Node>(),
    ]
}

/// The histogram of watch-event-to-applied latency, registered as
/// `ingress_cluster_event_to_apply_seconds`.
pub fn register_latency(registry: &mut prometheus_client::registry::Registry) -> Histogram {
    let h = Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]);
    registry.register(
        "ingress_cluster_event_to_apply_seconds",
        "Cluster mode: time from the first watch event of a burst to its snapshot applied.",
        h.clone(),
    );
    h
}

/// Decodes one object of kind `K` from the API's JSON, already parsed into
/// a `DynamicObject` (so that one bad object is skipped, not the whole
/// list). The fields are moved out of it, not copied: the metadata kube
/// already decoded is kept as it is and only the rest is read as `K` (a
/// round trip of the whole object through `serde_json::Value` cost about
/// as much as the first decode, at 50,000 endpoints a good part of cold
/// start).
pub fn decode<K: Watched>(obj: DynamicObject) -> Result<K, String> {
    let bad = |e: String| format!("cannot be read as {}: {e}", K::KIND);
    let DynamicObject { metadata, data, .. } = obj;
    let mut fields = match data {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => serde_json::Map::new(),
        _ => return Err(bad("not a JSON object".into())),
    };
    // kube keeps these out of `data`; the typed decode checks them.
    fields.remove("metadata");
    fields.insert("apiVersion".into(), K::API_VERSION.into());
    fields.insert("kind".into(), K::KIND.into());
    let mut typed: K = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| bad(e.to_string()))?;
    *typed.meta_mut() = metadata;
    Ok(typed)
}

/// The stores of every kind, the objects that failed to decode, and which
/// kinds finished their first list.
#[derive(Default)]
pub struct Stores {
    /// Shared with the full update being applied, if any (a change made
    /// meanwhile copies it first): a full update costs no copy of the
    /// stores.
    pub state: Arc<ClusterState>,
    /// (kind, key) -> why it was skipped.
    pub bad: BTreeMap<(&'static str, String), String>,
    pub synced: u8,
    /// When the first change not yet applied arrived.
    pub first_change: Option<Instant>,
    /// What changed since the last apply.
    pub pending: Pending,
    /// Something only the status writer's view shows changed (an
    /// Ingress's status, a Node) since the last view was sent.
    pub view_stale: bool,
}

/// What changed in the stores since the last apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Pending {
    /// Nothing.
    None,
    /// Only EndpointSlices, of these Services.
    Endpoints(BTreeSet<ObjectKey>),
    /// Anything else (or a list): everything is compiled again.
    #[default]
    All,
}

impl Pending {
    /// Adds a change that needs a compile: endpoints of `services`, or
    /// (None) any other.
    fn add(&mut self, services: Option<BTreeSet<ObjectKey>>) {
        let Some(s) = services else {
            *self = Pending::All;
            return;
        };
        match self {
            Pending::All => {}
            Pending::None => *self = Pending::Endpoints(s),
            Pending::Endpoints(have) => have.extend(s),
        }
    }
}

impl Stores {
    /// Records a change. An object that failed to decode before needs a
    /// full compile whatever changed (its diagnostic goes).
    /// Only changes that reach traffic start the clock of
    /// `ingress_cluster_event_to_apply_seconds`.
    fn record(&mut self, change: Change, was_bad: bool) {
        match change {
            Change::Status if !was_bad => {
                self.view_stale = true;
                return;
            }
            Change::Endpoints(services) if !was_bad => self.pending.add(Some(services)),
            _ => self.pending.add(None),
        }
        self.first_change.get_or_insert_with(Instant::now);
    }

    pub fn all_synced(&self) -> bool {
        self.synced == ALL_SYNCED
    }

    /// The skipped objects, as diagnostics for the applied snapshot.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        self.bad
            .iter()
            .map(|((kind, key), why)| {
                let d = Diagnostic::error(format!("{kind} {key}"), "", why.clone());
                if *kind == <Ingress as k8s_openapi::Resource>::KIND {
                    d.with_reason(crate::model::reason::INVALID_INGRESS)
                } else {
                    d
                }
            })
            .collect()
    }
}

/// One kind's watch events folded into the shared stores. Pure: the
/// watcher task feeds it, tests feed it by hand.
pub struct KindStore<K: Watched> {
    /// The (re)list in progress, swapped in at `InitDone`.
    relist: Option<Relist<K>>,
}

/// A list in progress: the objects decoded, and key -> why for the others.
type Relist<K> = (BTreeMap<<K as Watched>::Key, K>, BTreeMap<String, String>);

impl<K: Watched> Default for KindStore<K> {
    fn default() -> Self {
        KindStore { relist: None }
    }
}

impl<K: Watched> KindStore<K> {
    /// Folds one event in; true when the stores changed.
    pub fn handle(&mut self, event: watcher::Event<DynamicObject>, stores: &Mutex<Stores>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(Default::default());
                false
            }
            watcher::Event::InitApply(obj) => {
                let Some((objects, bad)) = &mut self.relist else {
                    tracing::warn!(kind = K::KIND, "object listed outside a list");
                    return false;
                };
                let key = K::key(&obj.metadata);
                match decode::<K>(obj) {
                    Ok(o) => {
                        objects.insert(key, o);
                    }
                    Err(why) => {
                        tracing::error!(kind = K::KIND, object = %key, "{why}; skipped");
                        bad.insert(key.to_string(), why);
                    }
                }
                false
            }
            watcher::Event::InitDone => {
                let (objects, bad) = self.relist.take().unwrap_or_default();
                let mut s = lock(stores);
                tracing::info!(kind = K::KIND, objects = objects.len(), "listed");
                *K::store(Arc::make_mut(&mut s.state)) = objects;
                s.bad.retain(|(kind, _), _| *kind != K::KIND);
                s.bad
                    .extend(bad.into_iter().map(|(k, why)| ((K::KIND, k), why)));
                s.synced |= K::BIT;
                let relisted = if K::COMPILED {
                    Change::Compile
                } else {
                    Change::Status
                };
                s.record(relisted, false);
                true
            }
            watcher::Event::Apply(obj) => {
                let key = K::key(&obj.metadata);
                let decoded = decode::<K>(obj);
                let mut s = lock(stores);
                match decoded {
                    Ok(o) => {
                        let was_bad = s.bad.remove(&(K::KIND, key.to_string())).is_some();
                        let change =
                            K::change(K::store(Arc::make_mut(&mut s.state)).get(&key), Some(&o));
                        s.record(change, was_bad);
                        K::store(Arc::make_mut(&mut s.state)).insert(key, o);
                    }
                    Err(why) => {
                        // The last good version, if any, keeps serving.
                        tracing::error!(kind = K::KIND, object = %key, "{why}; skipped");
                        s.bad.insert((K::KIND, key.to_string()), why);
                        s.record(Change::Compile, false);
                    }
                }
                true
            }
            watcher::Event::Delete(obj) => {
                let key = K::key(&obj.metadata);
                let mut s = lock(stores);
                let was_bad = s.bad.remove(&(K::KIND, key.to_string())).is_some();
                let old = K::store(Arc::make_mut(&mut s.state)).remove(&key);
                let change = K::change(old.as_ref(), None);
                s.record(change, was_bad);
                true
            }
        }
    }
}

fn lock(stores: &Mutex<Stores>) -> std::sync::MutexGuard<'_, Stores> {
    // A panic while holding the lock leaves whole maps behind: keep going.
    stores.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watches one kind until the task is aborted.
async fn watch_kind<K: Watched>(
    client: Client,
    namespace: Option<String>,
    stores: Arc<Mutex<Stores>>,
    changed: Arc<Notify>,
) {
    let ar = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match (&namespace, K::NAMESPACED) {
        (Some(ns), true) => Api::namespaced_with(client, ns, &ar),
        _ => Api::all_with(client, &ar),
    };
    let mut config = watcher::Config::default();
    if K::KIND == <Secret as k8s_openapi::Resource>::KIND {
        config = config.fields(SECRET_FIELD_SELECTOR);
    }
    let mut store = KindStore::<K>::default();
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(e) => {
                if store.handle(e, &stores) {
                    changed.notify_one();
                }
            }
            // The stores and the applied snapshot stay as they are; the
            // stream retries with backoff (a 410 relists).
            Err(e) => tracing::warn!(kind = K::KIND, error = %e, "watch failed; retrying"),
        }
    }
}

/// Where the status writer gets its views: every Ingress with its status
/// and whether it is served, and the addresses of the Nodes and of the
/// `--publish-service` Service.
pub struct StatusFeed {
    pub tx: tokio::sync::watch::Sender<View>,
    pub publish_service: Option<ObjectKey>,
}

impl StatusFeed {
    /// The view of `state` (before the apply: it is moved there).
    fn view(&self, state: &ClusterState) -> View {
        let mut view = View::default();
        for (k, i) in &state.ingresses {
            let current = i
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.clone())
                .unwrap_or_default();
            view.ingresses.insert(k.clone(), (false, current));
        }
        view.known.nodes = state
            .nodes
            .iter()
            .map(|(name, n)| (name.clone(), addresses::node_addresses(n)))
            .collect();
        if let Some(s) = self
            .publish_service
            .as_ref()
            .and_then(|k| state.services.get(k))
        {
            view.known.service = addresses::service_addresses(s);
        }
        view
    }
}

/// Of a full update, with a status feed: the view for the status writer
/// (an endpoints-only update changes neither what is served nor status).
fn view_of(status: &Option<StatusFeed>, update: &Update) -> Option<View> {
    match (status, update) {
        (Some(feed), Update::Full(state)) => Some(feed.view(state)),
        _ => None,
    }
}

/// What the apply callback is given.
pub enum Update {
    /// The whole state, to compile (shared with the stores, not copied).
    Full(Arc<ClusterState>),
    /// Only EndpointSlices changed since the last apply, those of
    /// `services`; `current` holds these Services and all their slices
    /// (`refresh::slices_of`), for `refresh::refresh_endpoints`.
    Endpoints {
        services: BTreeSet<ObjectKey>,
        current: ClusterState,
    },
}

/// Starts the watchers and the apply loop; `apply` is called with whole
/// states once every kind is listed, then after each settled burst (with
/// only the Services concerned when only EndpointSlices changed).
/// `latency` observes, per apply, the time from the first watch event it
/// carries to the end of the apply.
/// `apply` returns the Ingresses served, or None when it could not apply
/// an `Update::Endpoints` (the whole state follows at once); with `status`,
/// a view of every Ingress (served or not, with its current load balancer
/// status) and of the addresses is sent there for the status writer.
pub fn start<F>(
    client: Client,
    namespace: Option<String>,
    latency: Histogram,
    status: Option<StatusFeed>,
    mut apply: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut(Update, Vec<Diagnostic>, Instant) -> Option<Vec<ObjectKey>> + Send + 'static,
{
    let stores = Arc::new(Mutex::new(Stores::default()));
    let changed = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    macro_rules! spawn {
        ($t:ty) => {
            tasks.spawn(watch_kind::<$t>(
                client.clone(),
                namespace.clone(),
                stores.clone(),
                changed.clone(),
            ));
        };
    }
    spawn!(IngressClass);
    spawn!(Ingress);
    spawn!(Service);
    spawn!(EndpointSlice);
    spawn!(Secret);
    spawn!(Node);
    tokio::spawn(async move {
        // Owned here: aborting this task drops (and aborts) the watchers.
        let _tasks = tasks;
        // The Ingresses the applied snapshot serves, for views sent
        // without a compile.
        let mut served_now: Option<Vec<ObjectKey>> = None;
        loop {
            changed.notified().await;
            let started = Instant::now();
            tokio::time::sleep(DEBOUNCE).await;
            let (taken, view_state) = {
                let mut s = lock(&stores);
                if !s.all_synced() {
                    continue;
                }
                let view_stale = std::mem::take(&mut s.view_stale);
                let taken = match std::mem::replace(&mut s.pending, Pending::None) {
                    Pending::None => None,
                    Pending::Endpoints(services) => {
                        let first = s.first_change.take().unwrap_or(started);
                        let current = refresh::slices_of(&s.state, &services);
                        Some((Update::Endpoints { services, current }, Vec::new(), first))
                    }
                    Pending::All => {
                        let first = s.first_change.take().unwrap_or(started);
                        Some((Update::Full(s.state.clone()), s.diagnostics(), first))
                    }
                };
                if taken.is_none() {
                    s.first_change = None;
                }
                // A full update carries its own view.
                let full = matches!(taken, Some((Update::Full(_), _, _)));
                (taken, (view_stale && !full).then(|| s.state.clone()))
            };
            if let Some((update, diags, first)) = taken {
                let mut view = view_of(&status, &update);
                let mut served = tokio::task::block_in_place(|| apply(update, diags, started));
                if served.is_none() {
                    // Not appliable incrementally: the whole state, now.
                    let update = {
                        let s = lock(&stores);
                        Update::Full(s.state.clone())
                    };
                    let diags = lock(&stores).diagnostics();
                    view = view_of(&status, &update);
                    served = tokio::task::block_in_place(|| apply(update, diags, started));
                }
                latency.observe(first.elapsed().as_secs_f64());
                // After an endpoints-only change (no view) neither the
                // Ingresses served nor their status changed.
                if let (Some(feed), Some(served), Some(view)) = (&status, served, view) {
                    feed.tx.send_replace(mark_served(view, &served));
                    served_now = Some(served);
                }
            }
            if let (Some(feed), Some(state), Some(served)) = (&status, view_state, &served_now) {
                feed.tx.send_replace(mark_served(feed.view(&state), served));
            }
        }
    })
}

/// `view` with the Ingresses in `served` marked served.
fn mark_served(mut view: View, served: &[ObjectKey]) -> View {
    for k in served {
        if let Some(entry) = view.ingresses.get_mut(k) {
            entry.0 = true;
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    fn svc(name: &str, port: i64) -> DynamicObject {
        obj(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "spec": {"ports": [{"port": port}]},
        }))
    }

    fn names(s: &Mutex<Stores>) -> Vec<String> {
        lock(s)
            .state
            .services
            .keys()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn decode_fills_type_and_rejects_bad_fields() {
        let s: Service = decode(svc("a", 80)).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("a"));
        let bad = obj(serde_json::json!({
            "metadata": {"name": "b", "namespace": "default"},
            "spec": {"ports": "not a list"},
        }));
        let e = decode::<Service>(bad).unwrap_err();
        assert!(e.contains("Service"), "{e}");
    }

    #[test]
    fn relist_is_swapped_in_whole_at_init_done() {
        let stores = Mutex::new(Stores::default());
        let mut k = KindStore::<Service>::default();
        assert!(!k.handle(watcher::Event::Init, &stores));
        k.handle(watcher::Event::InitApply(svc("a", 80)), &stores);
        k.handle(watcher::Event::InitApply(svc("b", 80)), &stores);
        assert!(names(&stores).is_empty(), "nothing before InitDone");
        assert!(!lock(&stores).all_synced());
        assert!(k.handle(watcher::Event::InitDone, &stores));
        assert_eq!(names(&stores), ["default/a", "default/b"]);
        assert_eq!(lock(&stores).synced, Service::BIT);

        // A relist: during it the old objects stay; after it, only what
        // the new list holds.
        k.handle(watcher::Event::Init, &stores);
        k.handle(watcher::Event::InitApply(svc("b", 81)), &stores);
        k.handle(watcher::Event::InitApply(svc("c", 80)), &stores);
        assert_eq!(names(&stores), ["default/a", "default/b"]);
        k.handle(watcher::Event::InitDone, &stores);
        assert_eq!(names(&stores), ["default/b", "default/c"]);
        let port = lock(&stores).state.services[&ObjectKey::new("default", "b")]
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()[0]
            .port;
        assert_eq!(port, 81);
    }

    #[test]
    fn bad_object_is_reported_skipped_and_keeps_its_last_good_version() {
        let stores = Mutex::new(Stores::default());
        let mut k = KindStore::<Service>::default();
        k.handle(watcher::Event::Init, &stores);
        k.handle(watcher::Event::InitApply(svc("a", 80)), &stores);
        k.handle(watcher::Event::InitDone, &stores);
        let bad = obj(serde_json::json!({
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"ports": 5},
        }));
        assert!(k.handle(watcher::Event::Apply(bad), &stores));
        assert_eq!(names(&stores), ["default/a"]);
        let d = lock(&stores).diagnostics();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].object, "Service default/a");
        // Fixed: the diagnostic goes away.
        k.handle(watcher::Event::Apply(svc("a", 82)), &stores);
        assert!(lock(&stores).diagnostics().is_empty());
        k.handle(watcher::Event::Delete(svc("a", 82)), &stores);
        assert!(names(&stores).is_empty());
    }

    fn slice(name: &str, service: &str, ip: &str) -> DynamicObject {
        obj(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "1",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip]}],
        }))
    }

    #[test]
    fn slice_changes_are_pending_as_endpoints_of_their_services() {
        let stores = Mutex::new(Stores::default());
        let mut slices = KindStore::<EndpointSlice>::default();
        let mut services = KindStore::<Service>::default();
        slices.handle(watcher::Event::Init, &stores);
        slices.handle(
            watcher::Event::InitApply(slice("a-1", "a", "198.18.0.1")),
            &stores,
        );
        slices.handle(watcher::Event::InitDone, &stores);
        assert_eq!(
            lock(&stores).pending,
            Pending::All,
            "a list is compiled whole"
        );
        lock(&stores).pending = Pending::None;

        slices.handle(
            watcher::Event::Apply(slice("a-1", "a", "198.18.0.2")),
            &stores,
        );
        slices.handle(
            watcher::Event::Apply(slice("b-1", "b", "198.18.0.3")),
            &stores,
        );
        let keys = |names: &[&str]| -> BTreeSet<ObjectKey> {
            names
                .iter()
                .map(|n| ObjectKey::new("default", *n))
                .collect()
        };
        assert_eq!(lock(&stores).pending, Pending::Endpoints(keys(&["a", "b"])));
        lock(&stores).pending = Pending::None;

        // Relabelled: both Services' endpoints change.
        slices.handle(
            watcher::Event::Apply(slice("a-1", "c", "198.18.0.2")),
            &stores,
        );
        assert_eq!(lock(&stores).pending, Pending::Endpoints(keys(&["a", "c"])));
        lock(&stores).pending = Pending::None;
        slices.handle(
            watcher::Event::Delete(slice("b-1", "b", "198.18.0.3")),
            &stores,
        );
        assert_eq!(lock(&stores).pending, Pending::Endpoints(keys(&["b"])));

        // Any other kind needs everything compiled again.
        services.handle(watcher::Event::Apply(svc("a", 80)), &stores);
        assert_eq!(lock(&stores).pending, Pending::All);
        slices.handle(
            watcher::Event::Apply(slice("a-1", "a", "198.18.0.4")),
            &stores,
        );
        assert_eq!(lock(&stores).pending, Pending::All);

        // A slice the decoder rejects changes the diagnostics: everything.
        lock(&stores).pending = Pending::None;
        let bad = obj(serde_json::json!({
            "metadata": {"name": "a-1", "namespace": "default"},
            "endpoints": "not a list",
        }));
        slices.handle(watcher::Event::Apply(bad), &stores);
        assert_eq!(lock(&stores).pending, Pending::All);
        // And so does its fix.
        lock(&stores).pending = Pending::None;
        slices.handle(
            watcher::Event::Apply(slice("a-1", "a", "198.18.0.5")),
            &stores,
        );
        assert_eq!(lock(&stores).pending, Pending::All);
    }

    #[test]
    fn status_writes_and_nodes_refresh_the_view_without_a_compile() {
        let stores = Mutex::new(Stores::default());
        let mut ingresses = KindStore::<Ingress>::default();
        let mut nodes = KindStore::<Node>::default();
        let ingress = |rv: &str, host: &str, ip: Option<&str>| {
            let mut v = serde_json::json!({
                "metadata": {"name": "web", "namespace": "default", "resourceVersion": rv,
                             "managedFields": [{"manager": rv}]},
                "spec": {"rules": [{"host": host}]},
            });
            if let Some(ip) = ip {
                v["status"] = serde_json::json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
            }
            obj(v)
        };
        let settled = |s: &Mutex<Stores>| {
            let mut s = lock(s);
            s.pending = Pending::None;
            s.view_stale = false;
            s.first_change = None;
        };
        // A list of Nodes changes no snapshot.
        settled(&stores);
        nodes.handle(watcher::Event::Init, &stores);
        nodes.handle(watcher::Event::InitDone, &stores);
        assert_eq!(lock(&stores).pending, Pending::None);
        assert!(lock(&stores).view_stale);
        settled(&stores);

        ingresses.handle(watcher::Event::Apply(ingress("1", "a.test", None)), &stores);
        assert_eq!(lock(&stores).pending, Pending::All, "a new Ingress");
        settled(&stores);
        // Our status write: a new resourceVersion and managedFields too.
        ingresses.handle(
            watcher::Event::Apply(ingress("2", "a.test", Some("198.18.0.1"))),
            &stores,
        );
        assert_eq!(lock(&stores).pending, Pending::None);
        assert!(lock(&stores).view_stale);
        assert!(
            lock(&stores).first_change.is_none(),
            "no change to traffic: no latency to observe"
        );
        assert!(
            lock(&stores).state.ingresses[&ObjectKey::new("default", "web")]
                .status
                .is_some(),
            "the store holds the new status"
        );
        settled(&stores);
        // A spec change with it compiles.
        ingresses.handle(
            watcher::Event::Apply(ingress("3", "b.test", Some("198.18.0.2"))),
            &stores,
        );
        assert_eq!(lock(&stores).pending, Pending::All);
        settled(&stores);
        // A Node's addresses, its removal: the view only.
        nodes.handle(
            watcher::Event::Apply(obj(serde_json::json!({"metadata": {"name": "n1"}}))),
            &stores,
        );
        nodes.handle(
            watcher::Event::Delete(obj(serde_json::json!({"metadata": {"name": "n1"}}))),
            &stores,
        );
        assert_eq!(lock(&stores).pending, Pending::None);
        assert!(lock(&stores).view_stale);
        // Deleting an Ingress compiles.
        ingresses.handle(
            watcher::Event::Delete(ingress("4", "b.test", None)),
            &stores,
        );
        assert_eq!(lock(&stores).pending, Pending::All);
    }

    #[test]
    fn watched_kinds_are_exactly_the_read_rows_of_the_access_table() {
        use crate::cluster::access::{ACCESS, Scope};
        let mut watched = watched_resources();
        watched.sort();
        let mut reads: Vec<(String, String)> = ACCESS
            .iter()
            .filter(|a| a.verbs.contains(&"watch"))
            .map(|a| {
                // Watched cluster-wide unless --watch-namespace narrows it.
                assert_eq!(a.scope, Scope::Cluster, "{}", a.resource);
                assert!(a.verbs.contains(&"list"), "{}", a.resource);
                (a.api_group.to_string(), a.resource.to_string())
            })
            .collect();
        reads.sort();
        assert_eq!(watched, reads);
    }

    #[test]
    fn all_kinds_must_be_listed() {
        let stores = Mutex::new(Stores::default());
        fn done<K: Watched>(s: &Mutex<Stores>) {
            let mut k = KindStore::<K>::default();
            k.handle(watcher::Event::Init, s);
            k.handle(watcher::Event::InitDone, s);
        }
        done::<IngressClass>(&stores);
        done::<Ingress>(&stores);
        done::<Service>(&stores);
        done::<EndpointSlice>(&stores);
        done::<Secret>(&stores);
        assert!(!lock(&stores).all_synced());
        done::<Node>(&stores);
        assert!(lock(&stores).all_synced());
    }

    #[test]
    fn the_status_view_holds_every_ingress_and_the_addresses() {
        let mut state = ClusterState::default();
        let ing: Ingress = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "i", "namespace": "a"},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.0.1"}]}},
        }))
        .unwrap();
        state.ingresses.insert(ObjectKey::new("a", "i"), ing);
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.18.5.1"}]},
        }))
        .unwrap();
        state.nodes.insert("n1".into(), node);
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "edge", "namespace": "ing"},
            "status": {"loadBalancer": {"ingress": [{"hostname": "lb.test"}]}},
        }))
        .unwrap();
        state.services.insert(ObjectKey::new("ing", "edge"), svc);
        let (tx, _rx) = tokio::sync::watch::channel(View::default());
        let feed = StatusFeed {
            tx,
            publish_service: Some(ObjectKey::new("ing", "edge")),
        };
        let v = feed.view(&state);
        let (served, status) = &v.ingresses[&ObjectKey::new("a", "i")];
        assert!(!served, "served is set after the apply");
        assert_eq!(status[0].ip.as_deref(), Some("198.18.0.1"));
        assert_eq!(v.known.nodes["n1"], ["198.18.5.1"]);
        assert_eq!(v.known.service, ["lb.test"]);
    }
}
