//! Ingress status: the agent holding the Lease (`lease`) publishes the
//! addresses `addresses` chooses in `status.loadBalancer.ingress` of every
//! Ingress it serves, and clears them from an Ingress it stops serving
//! (which left the class, or whose class is no longer ours) while that
//! Ingress still shows what it showed when served. Calls `patch` on
//! `ingresses/status` (a JSON merge patch), only where the status differs,
//! so a settled cluster sees no writes. Other Ingresses are never touched.

use std::{collections::BTreeMap, time::Duration};

use futures_util::StreamExt;

use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    cluster::{
        addresses::{self, Known, Source},
        lease::Leadership,
    },
    model::ObjectKey,
};

pub use crate::cluster::addresses::entry;

/// One load balancer status entry.
pub type Entry = IngressLoadBalancerIngress;

/// What the watchers hold after an apply, for the status writer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Every Ingress held: whether the applied snapshot serves it, and its
    /// `status.loadBalancer.ingress`.
    pub ingresses: BTreeMap<ObjectKey, (bool, Vec<Entry>)>,
    /// Node and Service addresses, for the address sources.
    pub known: Known,
}

/// One status write.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub key: ObjectKey,
    /// True when it clears the status of an Ingress no longer served.
    pub clear: bool,
    /// The JSON merge patch for `ingresses/status`.
    pub patch: serde_json::Value,
}

fn same(a: &[Entry], b: &[Entry]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    addresses::sort(&mut a);
    addresses::sort(&mut b);
    a == b
}

/// What the status writer remembers between views: the status each served
/// Ingress showed while served, the status this agent last published on
/// it, and the Ingresses no longer served that still show one of those
/// (to be cleared). Every agent keeps it, leader or not, so that a new
/// leader clears what the old one published.
///
/// The published status matters when our own write and the change that
/// takes the Ingress away reach the watch together: no view then showed
/// the Ingress served with the status we wrote. With it goes the status
/// shown when we wrote: a view that still shows that is older than our
/// write, and writing again would only repeat it.
#[derive(Debug, Default)]
pub struct Tracker {
    served: BTreeMap<ObjectKey, Vec<Entry>>,
    /// Ingress -> (what we wrote, what it showed then).
    published: BTreeMap<ObjectKey, (Vec<Entry>, Vec<Entry>)>,
    leaving: BTreeMap<ObjectKey, Vec<Entry>>,
}

impl Tracker {
    /// Folds a view in.
    pub fn observe(&mut self, view: &View) {
        for (key, seen) in std::mem::take(&mut self.served) {
            let Some((false, now)) = view.ingresses.get(&key) else {
                continue;
            };
            let ours =
                same(now, &seen) || self.published.get(&key).is_some_and(|(p, _)| same(now, p));
            if ours && !now.is_empty() {
                self.leaving.insert(key, now.clone());
            }
        }
        // Kept while served and until a view shows what we wrote.
        self.published.retain(|key, (wrote, _)| {
            matches!(view.ingresses.get(key), Some((true, now)) if !same(now, wrote))
        });
        // Only while nobody changed it since (another controller writing
        // its own address takes the Ingress out of our hands), and while
        // it exists and is still not ours.
        self.leaving.retain(|key, status| {
            matches!(view.ingresses.get(key), Some((false, now)) if same(now, status))
        });
        self.served = view
            .ingresses
            .iter()
            .filter(|(_, (served, _))| *served)
            .map(|(k, (_, s))| (k.clone(), s.clone()))
            .collect();
    }

    /// The writes that bring `view` to `want`: served Ingresses whose
    /// status differs (unless the view predates our write of `want`), and
    /// Ingresses to clear.
    pub fn plan(&self, view: &View, want: &[Entry]) -> Vec<Write> {
        let set = view
            .ingresses
            .iter()
            .filter(|(_, (served, now))| *served && !same(now, want))
            .filter(|(key, (_, now))| {
                !matches!(self.published.get(*key),
                          Some((wrote, before)) if same(wrote, want) && same(before, now))
            })
            .map(|(key, _)| Write {
                key: key.clone(),
                clear: false,
                patch: serde_json::json!({"status": {"loadBalancer": {"ingress": want}}}),
            });
        let clear = self.leaving.keys().map(|key| Write {
            key: key.clone(),
            clear: true,
            patch: serde_json::json!({"status": {"loadBalancer": {"ingress": null}}}),
        });
        set.chain(clear).collect()
    }

    /// `--update-status-on-shutdown`: the last agent of the class is
    /// leaving, so every served Ingress that shows what we publish (`want`,
    /// or what we last wrote on it, or still what it showed before that
    /// write when the view has not caught up with it) is cleared.
    pub fn plan_shutdown(&self, view: &View, want: &[Entry]) -> Vec<Write> {
        view.ingresses
            .iter()
            .filter(|(key, (served, now))| {
                let ours = (!now.is_empty() && same(now, want))
                    || self
                        .published
                        .get(*key)
                        .is_some_and(|(wrote, before)| same(now, wrote) || same(now, before));
                *served && ours
            })
            .map(|(key, _)| Write {
                key: key.clone(),
                clear: true,
                patch: serde_json::json!({"status": {"loadBalancer": {"ingress": null}}}),
            })
            .collect()
    }

    /// A clear was written: nothing left to do for `key`.
    pub fn cleared(&mut self, key: &ObjectKey) {
        self.leaving.remove(key);
    }

    /// `status` was written on served Ingress `key`, which showed `before`.
    pub fn published(&mut self, key: &ObjectKey, status: &[Entry], before: &[Entry]) {
        self.published
            .insert(key.clone(), (status.to_vec(), before.to_vec()));
    }
}

/// Writes status for one agent.
pub struct Writer {
    client: Client,
    source: Source,
    tracker: Tracker,
}

impl Writer {
    pub fn new(client: Client, source: Source) -> Writer {
        Writer {
            client,
            source,
            tracker: Tracker::default(),
        }
    }

    /// Folds `view` in and, when leading, writes what differs.
    pub async fn sync(&mut self, view: &View, leadership: &Leadership) {
        self.tracker.observe(view);
        let Some(nodes) = leadership else {
            return;
        };
        let want = addresses::desired(&self.source, &view.known, nodes);
        // The leader runs on an ingress node itself: no node listed means
        // the presence Leases could not be listed yet, not that there is
        // no address. And no address known (nodes without addresses, a
        // Service without a load balancer yet) is no reason to wipe what
        // the Ingresses show. Only clears go out then.
        let unknown = (self.source == Source::Nodes && nodes.is_empty()) || want.is_empty();
        for w in self.tracker.plan(view, &want) {
            if unknown && !w.clear {
                continue;
            }
            let api: Api<Ingress> = Api::namespaced(self.client.clone(), &w.key.namespace);
            match api
                .patch_status(
                    &w.key.name,
                    &PatchParams::default(),
                    &Patch::Merge(&w.patch),
                )
                .await
            {
                Ok(_) if w.clear => {
                    self.tracker.cleared(&w.key);
                    tracing::info!(ingress = %w.key, "status cleared (no longer served)");
                }
                Ok(_) => {
                    let before = view.ingresses.get(&w.key).map(|(_, s)| s.as_slice());
                    self.tracker
                        .published(&w.key, &want, before.unwrap_or_default());
                    tracing::info!(ingress = %w.key, addresses = ?want, "status published");
                }
                Err(e) => tracing::warn!(ingress = %w.key, error = %e, "writing status"),
            }
        }
    }
}

/// How long the last agent of a class may spend clearing status on its
/// way out (`--update-status-on-shutdown`).
pub const SHUTDOWN_CLEAR_TIMEOUT: Duration = Duration::from_secs(5);

/// How many status patches are in flight at once while clearing.
const SHUTDOWN_CLEAR_PARALLEL: usize = 16;

impl Writer {
    /// Clears the status of every served Ingress that shows ours, when
    /// leading; returns how many were cleared.
    pub async fn clear_on_shutdown(&mut self, view: &View, leadership: &Leadership) -> usize {
        let Some(nodes) = leadership else {
            return 0;
        };
        let want = addresses::desired(&self.source, &view.known, nodes);
        let writes = self.tracker.plan_shutdown(view, &want);
        let client = self.client.clone();
        futures_util::stream::iter(writes)
            .map(|w| {
                let api: Api<Ingress> = Api::namespaced(client.clone(), &w.key.namespace);
                async move {
                    let r = api
                        .patch_status(
                            &w.key.name,
                            &PatchParams::default(),
                            &Patch::Merge(&w.patch),
                        )
                        .await;
                    if let Err(e) = &r {
                        tracing::warn!(ingress = %w.key, error = %e, "clearing status on shutdown");
                    }
                    r.is_ok()
                }
            })
            .buffer_unordered(SHUTDOWN_CLEAR_PARALLEL)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await
    }
}

/// Asks the status writer to clear what it published, and to stop; the
/// sender gets an answer once it is done.
pub type ShutdownRequest = oneshot::Sender<()>;

/// Writes status after every change of `view` or of `leader` (and every
/// few seconds, to retry failed writes), until either sender goes or a
/// request comes on `shutdown`: then, with the leadership still held, it
/// clears what it published, answers and stops.
pub async fn run(
    mut writer: Writer,
    mut view: watch::Receiver<View>,
    mut leader: watch::Receiver<Leadership>,
    mut shutdown: mpsc::Receiver<ShutdownRequest>,
) {
    loop {
        let v = view.borrow_and_update().clone();
        let l = leader.borrow_and_update().clone();
        writer.sync(&v, &l).await;
        tokio::select! {
            r = view.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            Some(done) = shutdown.recv() => {
                let v = view.borrow().clone();
                let l = leader.borrow().clone();
                let cleared = writer.clear_on_shutdown(&v, &l).await;
                tracing::info!(cleared, "status cleared on shutdown (last agent of the class)");
                let _ = done.send(());
                return;
            }
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::mock::{self, answer};
    use serde_json::json;

    #[test]
    fn the_access_table_grants_the_status_patch() {
        let row = crate::cluster::access::ACCESS
            .iter()
            .find(|a| a.resource == "ingresses/status")
            .unwrap();
        // api.patch_status, for publishing and for clearing alike.
        assert_eq!(row.verbs, ["patch"]);
    }

    fn view(items: &[(&str, bool, &[&str])]) -> View {
        View {
            ingresses: items
                .iter()
                .map(|(name, served, status)| {
                    (
                        ObjectKey::new("a", *name),
                        (*served, status.iter().map(|s| entry(s)).collect()),
                    )
                })
                .collect(),
            known: Known::default(),
        }
    }

    fn keys(writes: &[Write]) -> Vec<String> {
        writes
            .iter()
            .map(|w| format!("{}{}", if w.clear { "clear " } else { "" }, w.key))
            .collect()
    }

    #[test]
    fn only_differing_statuses_are_patched() {
        let want = vec![entry("198.18.0.1"), entry("198.18.0.2")];
        let v = view(&[
            ("same", true, &["198.18.0.2", "198.18.0.1"]),
            ("empty", true, &[]),
            ("other", true, &["198.18.0.2"]),
            ("foreign", false, &["198.18.0.9"]),
        ]);
        let mut t = Tracker::default();
        t.observe(&v);
        let p = t.plan(&v, &want);
        assert_eq!(keys(&p), ["a/empty", "a/other"]);
        assert_eq!(
            p[0].patch,
            json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.18.0.1"}, {"ip": "198.18.0.2"}]}}})
        );
    }

    #[test]
    fn an_ingress_no_longer_served_is_cleared_while_it_shows_our_status() {
        let want = vec![entry("198.18.0.1")];
        let mut t = Tracker::default();
        t.observe(&view(&[
            ("moved", true, &["198.18.0.1"]),
            ("taken", true, &["198.18.0.1"]),
            ("gone", true, &["198.18.0.1"]),
            ("never", true, &[]),
            ("foreign", false, &["198.18.0.1"]),
        ]));
        // All four leave us; one is deleted, one already got another
        // controller's address, one never had a status.
        let v = view(&[
            ("moved", false, &["198.18.0.1"]),
            ("taken", false, &["198.18.0.7"]),
            ("never", false, &[]),
            ("foreign", false, &["198.18.0.1"]),
        ]);
        t.observe(&v);
        let p = t.plan(&v, &want);
        assert_eq!(keys(&p), ["clear a/moved"]);
        assert_eq!(
            p[0].patch,
            json!({"status": {"loadBalancer": {"ingress": null}}})
        );
        // Still pending on the next view (the writer follows, say) until
        // cleared; served again, it is ours to set again.
        t.observe(&v);
        assert_eq!(keys(&t.plan(&v, &want)), ["clear a/moved"]);
        t.cleared(&ObjectKey::new("a", "moved"));
        assert!(t.plan(&v, &want).is_empty());
        let back = view(&[("moved", true, &["198.18.0.1"])]);
        t.observe(&back);
        assert!(t.plan(&back, &want).is_empty());
    }

    #[test]
    fn our_write_and_the_move_seen_together_still_clear() {
        // The view before the move still shows the status from before our
        // write: the write's own watch event came with the move.
        let want = vec![entry("198.18.0.1"), entry("198.18.0.2")];
        let mut t = Tracker::default();
        let before = view(&[("moved", true, &["198.18.0.1"]), ("other", true, &[])]);
        t.observe(&before);
        t.published(&ObjectKey::new("a", "moved"), &want, &[entry("198.18.0.1")]);
        t.published(&ObjectKey::new("a", "other"), &want, &[]);
        let after = view(&[
            ("moved", false, &["198.18.0.2", "198.18.0.1"]),
            ("other", false, &["198.18.0.9"]),
        ]);
        t.observe(&after);
        // Another controller's address on "other" is not ours to clear.
        assert_eq!(keys(&t.plan(&after, &want)), ["clear a/moved"]);
    }

    #[test]
    fn a_view_older_than_our_write_is_not_written_again() {
        let want = vec![entry("198.18.0.1")];
        let mut t = Tracker::default();
        let old = view(&[("web", true, &["198.18.0.9"])]);
        t.observe(&old);
        assert_eq!(keys(&t.plan(&old, &want)), ["a/web"]);
        t.published(&ObjectKey::new("a", "web"), &want, &[entry("198.18.0.9")]);
        // The same (stale) view again, or with only something else new.
        t.observe(&old);
        assert!(t.plan(&old, &want).is_empty());
        // Someone else wrote another status since: ours again.
        let changed = view(&[("web", true, &["198.18.0.7"])]);
        t.observe(&changed);
        assert_eq!(keys(&t.plan(&changed, &want)), ["a/web"]);
        // The addresses we want changed: written again.
        let more = vec![entry("198.18.0.1"), entry("198.18.0.2")];
        assert_eq!(keys(&t.plan(&old, &more)), ["a/web"]);
    }

    #[test]
    fn on_shutdown_only_our_status_on_served_ingresses_is_cleared() {
        let want = vec![entry("198.18.0.1")];
        let mut t = Tracker::default();
        let v = view(&[
            ("ours", true, &["198.18.0.1"]),
            ("written", true, &["198.18.0.5"]),
            ("another", true, &["198.18.0.7"]),
            ("empty", true, &[]),
            ("foreign", false, &["198.18.0.1"]),
        ]);
        t.observe(&v);
        // What we wrote on "written" before the addresses changed; "empty"
        // got our write, which the view has not caught up with.
        t.published(&ObjectKey::new("a", "written"), &[entry("198.18.0.5")], &[]);
        t.published(&ObjectKey::new("a", "empty"), &want, &[]);
        let p = t.plan_shutdown(&v, &want);
        assert_eq!(
            keys(&p),
            ["clear a/empty", "clear a/ours", "clear a/written"]
        );
        assert_eq!(
            p[0].patch,
            json!({"status": {"loadBalancer": {"ingress": null}}})
        );
    }

    #[tokio::test]
    async fn the_writer_patches_status_and_clears_only_when_leading() {
        let (client, mut h) = mock::client();
        let mut w = Writer::new(client, Source::Nodes);
        let mut v = view(&[("web", true, &[]), ("x", false, &[])]);
        v.known.nodes.insert("n1".into(), vec!["198.18.5.1".into()]);
        v.known.nodes.insert("n2".into(), vec!["198.18.5.2".into()]);
        // Following: nothing is written.
        w.sync(&v, &None).await;
        let ingress = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                             "metadata": {"name": "web", "namespace": "a"}});
        let server = tokio::spawn(async move {
            let set = answer(&mut h, 200, ingress.clone()).await;
            let clear = answer(&mut h, 200, ingress).await;
            (set, clear)
        });
        let leading = Some(vec!["n1".to_string(), "n2".to_string()]);
        w.sync(&v, &leading).await;
        // It got the status, then left the class.
        let mut v2 = view(&[("web", true, &["198.18.5.1", "198.18.5.2"])]);
        v2.known = v.known.clone();
        w.sync(&v2, &leading).await;
        let mut v3 = view(&[("web", false, &["198.18.5.1", "198.18.5.2"])]);
        v3.known = v.known.clone();
        w.sync(&v3, &leading).await;
        let (set, clear) = server.await.unwrap();
        assert_eq!(set.method, "PATCH");
        assert_eq!(
            set.uri,
            "/apis/networking.k8s.io/v1/namespaces/a/ingresses/web/status?"
        );
        assert_eq!(
            set.body,
            json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.18.5.1"}, {"ip": "198.18.5.2"}]}}})
        );
        assert_eq!(clear.uri, set.uri);
        assert_eq!(
            clear.body,
            json!({"status": {"loadBalancer": {"ingress": null}}})
        );
        // Cleared once: the next view with the old status writes nothing.
        assert!(w.tracker.leaving.is_empty());
        // No ingress node listed yet: the status shown stays (a request
        // would wait forever here for an answer that never comes).
        let shown = view(&[("web", true, &["198.18.5.1"])]);
        let none_listed = Some(vec![]);
        let nothing = tokio::time::timeout(Duration::from_secs(5), w.sync(&shown, &none_listed));
        assert!(
            nothing.await.is_ok(),
            "a status write without ingress nodes"
        );
    }
}
