//! Kubernetes Events for configuration problems of Ingresses (cluster mode).
//!
//! Every applied snapshot hands its diagnostics here as [`Problem`]s: the
//! diagnostics about an Ingress that carry a reason (`model::reason`). The
//! writer task reports as a `Warning` Event on that Ingress each problem
//! (Ingress, reason, message) that was not in the previous snapshot: an
//! unchanged problem is reported once, however often the configuration is
//! applied again; fixed then broken again, it is reported again.
//!
//! - Only the holder of the status Lease (`lease`) writes, so that N agents
//!   do not write N copies. The set of known problems follows every
//!   snapshot on every agent, so a new leader does not report again what
//!   the old one had reported; an agent that wins the Lease in its first
//!   election round after start reports what is wrong at that moment.
//! - A token bucket (burst [`BURST`], refilled at [`REFILL_PER_SECOND`])
//!   caps the writes overall; what it refuses is dropped and counted in
//!   `ingress_cluster_events_dropped_total` (as client-go's spam filter
//!   drops), what is written in `ingress_cluster_events_total{reason}`.
//! - A write the API server refuses or does not answer is counted in
//!   `ingress_cluster_events_failed_total` and tried again every
//!   [`RETRY_AFTER`], at most [`MAX_TRIES`] times in all (client-go's
//!   broadcaster does the same), while the problem is still there and the
//!   agent still leads.
//! - Written by kube-runtime's `Recorder` (`events.k8s.io/v1`, in the
//!   Ingress's namespace): `create`, and `patch` for a series when the same
//!   problem comes back within its cache time. Those two verbs are the
//!   Events row of `access`.
//!
//! [`Tracker`] and [`TokenBucket`] are pure; [`run`] does the I/O.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::ObjectReference, networking::v1::Ingress};
use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::sync::watch;

use crate::model::{ClusterState, Diagnostic, ObjectKey};

/// `reportingController` of the Events.
pub const CONTROLLER: &str = "ingress-ebpf";
/// `action` of the Events: what the agent was doing when it met the problem.
pub const ACTION: &str = "Configure";
/// Events written at once at most.
pub const BURST: f64 = 25.0;
/// Events the bucket allows per second, after the burst.
pub const REFILL_PER_SECOND: f64 = 1.0;
/// A recorder unused for this long is forgotten (kube's own series cache
/// keeps an Event for 6 minutes).
const RECORDER_IDLE: Duration = Duration::from_secs(10 * 60);
/// How long one write may take before it counts as failed, so that an
/// unreachable API server does not hold up the next snapshot's problems.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a failed write waits before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How many times one Event is tried at most.
pub const MAX_TRIES: u32 = 12;

/// What identifies a reported problem.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub ingress: ObjectKey,
    pub reason: &'static str,
    pub message: String,
}

/// One problem of an Ingress, with the reference its Event is about.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub key: Key,
    pub regarding: ObjectReference,
}

/// The Ingress a diagnostic's object names (`Ingress ns/name`).
fn ingress_of(object: &str) -> Option<ObjectKey> {
    let (ns, name) = object.strip_prefix("Ingress ")?.split_once('/')?;
    Some(ObjectKey::new(ns, name))
}

/// Pure: the problems of a snapshot, from its diagnostics (those about an
/// Ingress with a reason), once each, in a stable order.
pub fn problems(state: &ClusterState, diagnostics: &[Diagnostic]) -> Vec<Problem> {
    let mut out: BTreeMap<Key, ObjectReference> = BTreeMap::new();
    for d in diagnostics {
        let (Some(reason), Some(ingress)) = (d.reason, ingress_of(&d.object)) else {
            continue;
        };
        let regarding = match state.ingresses.get(&ingress) {
            // apiVersion, kind, namespace, name, uid and resourceVersion.
            Some(i) => i.object_ref(&()),
            // Known only by name (it could not be read).
            None => ObjectReference {
                api_version: Some(<Ingress as k8s_openapi::Resource>::API_VERSION.to_string()),
                kind: Some(<Ingress as k8s_openapi::Resource>::KIND.to_string()),
                namespace: Some(ingress.namespace.clone()),
                name: Some(ingress.name.clone()),
                ..ObjectReference::default()
            },
        };
        out.entry(Key {
            ingress,
            reason,
            message: d.message.clone(),
        })
        .or_insert(regarding);
    }
    out.into_iter()
        .map(|(key, regarding)| Problem { key, regarding })
        .collect()
}

/// The problems of the previous snapshot, to report only new ones.
#[derive(Debug, Default)]
pub struct Tracker {
    /// None until a first snapshot was seen.
    known: Option<BTreeSet<Key>>,
}

impl Tracker {
    /// Pure: the problems of `current` to report, given whether we are the
    /// leader; `current` becomes the previous snapshot. A follower reports
    /// nothing but keeps up, so that taking over reports only what is new.
    pub fn update(&mut self, current: &[Problem], leader: bool) -> Vec<Problem> {
        let out = if leader {
            current
                .iter()
                .filter(|p| !self.known.as_ref().is_some_and(|k| k.contains(&p.key)))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        self.known = Some(current.iter().map(|p| p.key.clone()).collect());
        out
    }
}

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
pub struct TokenBucket {
    burst: f64,
    per_second: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// Full.
    pub fn new(burst: f64, per_second: f64) -> Self {
        TokenBucket {
            burst,
            per_second,
            tokens: burst,
            last: None,
        }
    }

    /// Takes a token at `now` if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// The counters of the Event writer.
#[derive(Clone, Debug, Default)]
pub struct EventMetrics {
    /// Written, by reason.
    pub written: Family<ReasonLabels, Counter>,
    /// Refused by the token bucket.
    pub dropped: Counter,
    /// Refused by the API server (or not sent for an error).
    pub failed: Counter,
}

impl EventMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = EventMetrics::default();
        registry.register(
            "ingress_cluster_events",
            "Kubernetes Events written for Ingress configuration problems, by reason (leader only).",
            m.written.clone(),
        );
        registry.register(
            "ingress_cluster_events_dropped",
            "Kubernetes Events not written because the rate limit was reached.",
            m.dropped.clone(),
        );
        registry.register(
            "ingress_cluster_events_failed",
            "Kubernetes Events the API server did not accept.",
            m.failed.clone(),
        );
        m
    }
}

/// The longest `note` the API server accepts, in bytes.
pub const NOTE_MAX: usize = 1024;

/// `message` cut to [`NOTE_MAX`] bytes on a character boundary, with `...`
/// when cut.
fn note(message: &str) -> String {
    if message.len() <= NOTE_MAX {
        return message.to_string();
    }
    let mut end = NOTE_MAX - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

/// The Event for `p`.
pub fn event(p: &Problem) -> Event {
    Event {
        type_: EventType::Warning,
        reason: p.key.reason.to_string(),
        note: Some(note(&p.key.message)),
        action: ACTION.to_string(),
        secondary: None,
    }
}

/// The writer: one recorder per problem, so that a problem that comes back
/// is a series of its own Event (and another problem with the same reason
/// never shows the first one's note).
pub struct Writer {
    client: Client,
    reporter: Reporter,
    recorders: HashMap<Key, (Recorder, Instant)>,
    bucket: TokenBucket,
    metrics: EventMetrics,
    /// [`RETRY_AFTER`], shorter in tests.
    retry_after: Duration,
}

/// What became of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// Refused by the token bucket: not sent, not tried again.
    Dropped,
    /// Refused by the API server, or no answer: tried again later.
    Failed,
}

impl Writer {
    /// Writes as `instance` (the node name) of [`CONTROLLER`].
    pub fn new(client: Client, instance: String, metrics: EventMetrics) -> Self {
        Writer {
            client,
            reporter: Reporter {
                controller: CONTROLLER.to_string(),
                instance: Some(instance),
            },
            recorders: HashMap::new(),
            bucket: TokenBucket::new(BURST, REFILL_PER_SECOND),
            metrics,
            retry_after: RETRY_AFTER,
        }
    }

    /// Writes the Event of `p` if the bucket allows it.
    pub async fn write(&mut self, p: &Problem) -> Outcome {
        let now = Instant::now();
        if !self.bucket.take(now) {
            self.metrics.dropped.inc();
            tracing::debug!(ingress = %p.key.ingress, reason = p.key.reason, "event dropped by the rate limit");
            return Outcome::Dropped;
        }
        self.recorders
            .retain(|_, (_, used)| now.saturating_duration_since(*used) < RECORDER_IDLE);
        let (recorder, used) = self.recorders.entry(p.key.clone()).or_insert_with(|| {
            (
                Recorder::new(self.client.clone(), self.reporter.clone()),
                now,
            )
        });
        *used = now;
        let written =
            tokio::time::timeout(WRITE_TIMEOUT, recorder.publish(&event(p), &p.regarding))
                .await
                .map_err(|_| format!("no answer within {WRITE_TIMEOUT:?}"))
                .and_then(|r| r.map_err(|e| e.to_string()));
        match written {
            Ok(()) => {
                self.metrics
                    .written
                    .get_or_create(&ReasonLabels {
                        reason: p.key.reason,
                    })
                    .inc();
                tracing::info!(ingress = %p.key.ingress, reason = p.key.reason, "event written");
                Outcome::Written
            }
            Err(e) => {
                self.metrics.failed.inc();
                tracing::warn!(ingress = %p.key.ingress, reason = p.key.reason, error = %e, "writing an event");
                Outcome::Failed
            }
        }
    }
}

/// Reports new problems while `leader` is `Some`, until the channels close.
/// Waits for the first election round first, so that an agent that wins
/// the Lease at start reports what is already wrong.
pub async fn run(
    mut writer: Writer,
    mut problems: watch::Receiver<Vec<Problem>>,
    mut leader: watch::Receiver<crate::cluster::lease::Leadership>,
) {
    if leader.changed().await.is_err() {
        return;
    }
    let mut tracker = Tracker::default();
    // Failed writes, with how many times each was tried.
    let mut failed: Vec<(Problem, u32)> = Vec::new();
    // When they are tried again: not put off by other wake-ups.
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut retry_due = false;
    loop {
        let is_leader = leader.borrow_and_update().is_some();
        let current = problems.borrow_and_update().clone();
        let mut again = Vec::new();
        if std::mem::take(&mut retry_due) && is_leader {
            // Only what is still wrong now.
            for (p, tries) in std::mem::take(&mut failed) {
                if current.iter().any(|c| c.key == p.key) {
                    again.push((p, tries));
                }
            }
        }
        let new = tracker
            .update(&current, is_leader)
            .into_iter()
            .map(|p| (p, 0));
        for (p, tries) in again.into_iter().chain(new) {
            if writer.write(&p).await != Outcome::Failed {
                continue;
            }
            if tries + 1 < MAX_TRIES {
                failed.push((p, tries + 1));
            } else {
                tracing::warn!(ingress = %p.key.ingress, reason = p.key.reason, "event given up after {MAX_TRIES} tries");
            }
        }
        if !is_leader {
            failed.clear();
        }
        if failed.is_empty() {
            retry_at = None;
        } else if retry_at.is_none() {
            retry_at = Some(tokio::time::Instant::now() + writer.retry_after);
        }
        let due = retry_at.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            r = problems.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(due), if retry_at.is_some() => {
                retry_at = None;
                retry_due = true;
            }
        }
    }
}

#[cfg(test)]
mod tests;
