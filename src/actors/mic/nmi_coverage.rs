//! NMI coverage: nodes that run pod-identity pods without a ready NMI.
//!
//! On such a node nothing redirects the pods' metadata traffic, so they can reach the node's
//! own identities directly: a node pool without the startup taint (docs/security.md, "The node
//! gate"), an NMI DaemonSet whose nodeSelector or tolerations leave the node out, or an NMI that
//! is crash-looping. MIC (the leader) watches the pods labelled `aadpodidbinding` and the NMI
//! pods (`--nmi-selector` in MIC's namespace) and, once a node has been without a ready NMI for
//! `--nmi-absence-grace` while such pods are bound to it, reports it: the gauges
//! `aadpodidentity_mic_nodes_without_nmi` and `aadpodidentity_mic_pods_without_nmi`, and a
//! Warning Event `NodeWithoutNMI` on the Node and `PodWithoutNMI` on each of its pod-identity
//! pods (once per pod and episode).
//!
//! [`Coverage`] is the bookkeeping as plain data with the clock passed in; [`run`] feeds it
//! from two watches and sleeps until the next grace period ends (no polling).

use super::pod_facts::{PodFacts, PodView};
use crate::crd::POD_LABEL;
use crate::kube_watch::{self, Event as WatchEvent};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, PostParams};
use prometheus::IntGauge;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// Where NMI pods are and how long a node may lack one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoverageSettings {
    /// Namespace of the NMI pods (MIC's own, as the chart installs both).
    pub namespace: String,
    /// Label selector of the NMI pods (`--nmi-selector`).
    pub selector: String,
    /// How long a node may run pod-identity pods without a ready NMI before it is reported
    /// (`--nmi-absence-grace`): NMI usually becomes ready seconds after a node joins.
    pub grace: Duration,
}

/// `namespace/name` of a pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (for the Event's reference).
    pub uid: String,
}

/// A node reported as running pod-identity pods without a ready NMI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unguarded {
    /// The node.
    pub node: String,
    /// Its pod-identity pods.
    pub pods: BTreeSet<PodRef>,
}

/// The index: pod-identity pods and ready NMIs per node, and since when each node lacks one.
///
/// A pod or NMI event costs O(log n): it changes the counts of at most two nodes and only
/// those nodes' standing is looked at again (a pass over every pod per event held MIC's actor
/// thread for seconds at 100k pods). Relists rebuild everything.
#[derive(Debug, Default)]
pub struct Coverage {
    /// Pod-identity pods by uid → (node, pod).
    pods: BTreeMap<String, (String, PodRef)>,
    /// Ready NMI pods by uid → node.
    nmis: BTreeMap<String, String>,
    /// Pod-identity pods per node (nodes with none are absent).
    pods_on: BTreeMap<String, usize>,
    /// Ready NMI pods per node (nodes with none are absent).
    nmis_on: BTreeMap<String, usize>,
    /// Nodes with pod-identity pods and no ready NMI → since when.
    since: BTreeMap<String, Instant>,
}

/// The two kinds of pods counted per node.
#[derive(Clone, Copy)]
enum Kind {
    /// Labelled `aadpodidbinding`.
    Pod,
    /// A ready NMI.
    Nmi,
}

/// Adds one to `node`'s count.
fn count_in(counts: &mut BTreeMap<String, usize>, node: &str) {
    *counts.entry(node.to_string()).or_default() += 1;
}

/// Takes one from `node`'s count, forgetting the node at zero.
fn count_out(counts: &mut BTreeMap<String, usize>, node: &str) {
    if let Some(n) = counts.get_mut(node) {
        *n -= 1;
        if *n == 0 {
            counts.remove(node);
        }
    }
}

/// How many of `nodes` name each node.
fn counts<'a>(nodes: impl Iterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for n in nodes {
        count_in(&mut c, n);
    }
    c
}

/// The node a pod is bound to, if it is active (bound, not finished, not terminating).
fn active_node(p: &impl PodView) -> Option<String> {
    if p.meta().deletion_timestamp.is_some() {
        return None;
    }
    if matches!(p.phase(), Some("Succeeded" | "Failed")) {
        return None;
    }
    p.node_name().map(str::to_string)
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn uid(p: &impl PodView) -> String {
    p.meta().uid.clone().unwrap_or_default()
}

impl PodRef {
    fn of(p: &impl PodView) -> Self {
        Self {
            namespace: p.meta().namespace.clone().unwrap_or_default(),
            name: p.meta().name.clone().unwrap_or_default(),
            uid: uid(p),
        }
    }
}

impl Coverage {
    /// An empty index.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A pod labelled `aadpodidbinding` was added or changed.
    pub fn apply_pod(&mut self, p: &impl PodView, now: Instant) {
        let new = active_node(p);
        let old = match &new {
            Some(node) => self.pods.insert(uid(p), (node.clone(), PodRef::of(p))),
            None => self.pods.remove(&uid(p)),
        }
        .map(|(n, _)| n);
        self.moved(Kind::Pod, old, new, now);
    }

    /// A pod labelled `aadpodidbinding` is gone.
    pub fn delete_pod(&mut self, p: &impl PodView, now: Instant) {
        let old = self.pods.remove(&uid(p)).map(|(n, _)| n);
        self.moved(Kind::Pod, old, None, now);
    }

    /// The full list of pod-identity pods (after a relist).
    pub fn replace_pods<P: PodView>(&mut self, list: &[P], now: Instant) {
        self.pods.clear();
        for p in list {
            if let Some(node) = active_node(p) {
                self.pods.insert(uid(p), (node, PodRef::of(p)));
            }
        }
        self.pods_on = counts(self.pods.values().map(|(n, _)| n));
        self.refresh(now);
    }

    /// An NMI pod was added or changed.
    pub fn apply_nmi(&mut self, p: &Pod, now: Instant) {
        let new = active_node(p).filter(|_| ready(p));
        let old = match &new {
            Some(node) => self.nmis.insert(uid(p), node.clone()),
            None => self.nmis.remove(&uid(p)),
        };
        self.moved(Kind::Nmi, old, new, now);
    }

    /// An NMI pod is gone.
    pub fn delete_nmi(&mut self, p: &Pod, now: Instant) {
        let old = self.nmis.remove(&uid(p));
        self.moved(Kind::Nmi, old, None, now);
    }

    /// The full list of NMI pods (after a relist).
    pub fn replace_nmis(&mut self, list: &[Pod], now: Instant) {
        self.nmis = list
            .iter()
            .filter(|p| ready(p))
            .filter_map(|p| active_node(p).map(|n| (uid(p), n)))
            .collect();
        self.nmis_on = counts(self.nmis.values());
        self.refresh(now);
    }

    /// A pod of `kind` moved from node `old` to node `new` (either may be none): only those two
    /// nodes' counts and standing change.
    fn moved(&mut self, kind: Kind, old: Option<String>, new: Option<String>, now: Instant) {
        if old == new {
            return;
        }
        let counts = match kind {
            Kind::Pod => &mut self.pods_on,
            Kind::Nmi => &mut self.nmis_on,
        };
        if let Some(n) = &old {
            count_out(counts, n);
        }
        if let Some(n) = &new {
            count_in(counts, n);
        }
        for n in old.iter().chain(&new) {
            self.refresh_node(n, now);
        }
    }

    /// Whether `node` runs pod-identity pods without a ready NMI.
    fn exposed(&self, node: &str) -> bool {
        self.pods_on.contains_key(node) && !self.nmis_on.contains_key(node)
    }

    /// Looks at one node's standing again (after its counts changed).
    fn refresh_node(&mut self, node: &str, now: Instant) {
        if self.exposed(node) {
            if !self.since.contains_key(node) {
                self.since.insert(node.to_string(), now);
            }
        } else {
            self.since.remove(node);
        }
    }

    /// Looks at every node's standing again (after a relist).
    fn refresh(&mut self, now: Instant) {
        let exposed: Vec<String> = self
            .pods_on
            .keys()
            .filter(|n| !self.nmis_on.contains_key(*n))
            .cloned()
            .collect();
        let keep: BTreeSet<&String> = exposed.iter().collect();
        self.since.retain(|n, _| keep.contains(n));
        for n in exposed {
            self.since.entry(n).or_insert(now);
        }
    }

    /// Nodes that have run pod-identity pods without a ready NMI for at least `grace`.
    ///
    /// One pass over the pods (grouped by node), not one per node: with 5000 nodes and 100 000
    /// pods, a pass per node held MIC's thread for long enough to lose its leader lease.
    #[must_use]
    pub fn unguarded(&self, now: Instant, grace: Duration) -> Vec<Unguarded> {
        let mut due: BTreeMap<&String, BTreeSet<PodRef>> = self
            .since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= grace)
            .map(|(node, _)| (node, BTreeSet::new()))
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        for (node, p) in self.pods.values() {
            if let Some(pods) = due.get_mut(node) {
                pods.insert(p.clone());
            }
        }
        due.into_iter()
            .map(|(node, pods)| Unguarded {
                node: node.clone(),
                pods,
            })
            .collect()
    }

    /// When the next node's grace period ends, if one is running.
    #[must_use]
    pub fn next_deadline(&self, now: Instant, grace: Duration) -> Option<Instant> {
        self.since
            .values()
            .map(|s| *s + grace)
            .filter(|at| *at > now)
            .min()
    }
}

/// The gauges (registered in the process registry).
#[derive(Clone, Debug)]
pub struct CoverageMetrics {
    /// `aadpodidentity_mic_nodes_without_nmi`.
    pub nodes: IntGauge,
    /// `aadpodidentity_mic_pods_without_nmi`.
    pub pods: IntGauge,
}

impl CoverageMetrics {
    /// Registers the gauges.
    ///
    /// # Errors
    /// When they are registered already.
    pub fn new(shared: &crate::metrics::Metrics) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| {
            IntGauge::with_opts(
                prometheus::Opts::new(name, help).namespace(crate::metrics::NAMESPACE),
            )
        };
        let nodes = gauge(
            "mic_nodes_without_nmi",
            "Nodes running pod-identity pods without a ready NMI (past --nmi-absence-grace)",
        )?;
        let pods = gauge(
            "mic_pods_without_nmi",
            "Pod-identity pods on nodes without a ready NMI (past --nmi-absence-grace)",
        )?;
        shared.registry().register(Box::new(nodes.clone()))?;
        shared.registry().register(Box::new(pods.clone()))?;
        Ok(Self { nodes, pods })
    }
}

/// Reason of the Warning Event on the node.
pub const REASON_NODE: &str = "NodeWithoutNMI";
/// Reason of the Warning Event on each pod of such a node.
pub const REASON_POD: &str = "PodWithoutNMI";

/// An event of one of the two watches.
enum Seen {
    Identity(Box<WatchEvent<PodFacts>>),
    Nmi(Box<WatchEvent<Pod>>),
}

fn watch_lost(e: &kube_watch::Error) {
    tracing::warn!(error = %e, "pod watch failed; relisting");
}

/// How many newly reported nodes a warning names; the rest are counted (every one is in the
/// debug log, and each has its Event), so a node pool without NMI costs one line, not one per node.
const NODES_NAMED: usize = 5;

/// Logs the nodes reported in one pass as a single warning.
fn log_newly_told(nodes: &[&str]) {
    if nodes.is_empty() {
        return;
    }
    let named = nodes[..nodes.len().min(NODES_NAMED)].join(", ");
    let more = nodes.len().saturating_sub(NODES_NAMED);
    tracing::warn!(
        nodes = nodes.len(),
        first = %named,
        more,
        "pod-identity pods run on nodes without a ready NMI (Events NodeWithoutNMI on each)"
    );
}

/// Watches pod-identity pods and NMI pods and reports nodes without a ready NMI until the
/// watches end (MIC runs it while it leads).
pub async fn run(
    client: kube::Client,
    settings: CoverageSettings,
    metrics: CoverageMetrics,
    errors: prometheus::IntCounterVec,
) {
    // Only a pod's facts are kept of the (possibly 100 000) pod-identity pods; NMI pods are
    // read whole (their readiness is in their conditions).
    let identity_pods = kube_watch::watch_mapped(
        Api::<Pod>::all(client.clone()),
        kube_watch::Config::default().labels(POD_LABEL),
        PodFacts::from,
    )
    .map(|e| Seen::Identity(Box::new(e)));
    let nmi_pods = kube_watch::watch(
        Api::<Pod>::namespaced(client.clone(), &settings.namespace),
        kube_watch::Config::default().labels(&settings.selector),
    )
    .map(|e| Seen::Nmi(Box::new(e)));
    let mut events = futures::stream::select(identity_pods.boxed(), nmi_pods.boxed());
    let mut index = Coverage::new();
    // Pods and nodes already told about in the current episode.
    let mut told_nodes: BTreeSet<String> = BTreeSet::new();
    let mut told_pods: BTreeSet<String> = BTreeSet::new();
    loop {
        let now = Instant::now();
        let unguarded = index.unguarded(now, settings.grace);
        metrics
            .nodes
            .set(i64::try_from(unguarded.len()).unwrap_or(i64::MAX));
        metrics.pods.set(
            i64::try_from(unguarded.iter().map(|u| u.pods.len()).sum::<usize>())
                .unwrap_or(i64::MAX),
        );
        let nodes_now: BTreeSet<String> = unguarded.iter().map(|u| u.node.clone()).collect();
        let pods_now: BTreeSet<String> = unguarded
            .iter()
            .flat_map(|u| u.pods.iter().map(|p| p.uid.clone()))
            .collect();
        let mut newly_told: Vec<&str> = Vec::new();
        for u in &unguarded {
            if told_nodes.insert(u.node.clone()) {
                newly_told.push(&u.node);
                tracing::debug!(node = %u.node, pods = u.pods.len(), "pod-identity pods run on a node without a ready NMI");
                let message = format!(
                    "{} pod(s) using AAD Pod Identity run on node {} without a ready NMI for more than {:?}: their requests to the metadata service are not intercepted (is the node pool tainted for the node gate, and does the NMI DaemonSet cover the node?)",
                    u.pods.len(),
                    u.node,
                    settings.grace
                );
                record(&client, node_ref(&u.node), REASON_NODE, message, &errors).await;
            }
            for p in &u.pods {
                if told_pods.insert(p.uid.clone()) {
                    let message = format!(
                        "node {} has no ready NMI: this pod's requests to the metadata service are not intercepted",
                        u.node
                    );
                    record(&client, pod_ref(p), REASON_POD, message, &errors).await;
                }
            }
        }
        log_newly_told(&newly_told);
        // A node that gets its NMI (or loses its pods) ends the episode.
        told_nodes.retain(|n| nodes_now.contains(n));
        told_pods.retain(|p| pods_now.contains(p));

        let next = index.next_deadline(now, settings.grace);
        let ev = tokio::select! {
            ev = events.next() => ev,
            () = async { match next { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => continue,
        };
        let Some(ev) = ev else { return };
        let now = Instant::now();
        match ev {
            Seen::Nmi(ev) => match *ev {
                WatchEvent::Applied(p) => index.apply_nmi(&p, now),
                WatchEvent::Deleted(p) => index.delete_nmi(&p, now),
                WatchEvent::Listed(list) => index.replace_nmis(&list, now),
                WatchEvent::Lost(e) => watch_lost(&e),
            },
            Seen::Identity(ev) => match *ev {
                WatchEvent::Applied(p) => index.apply_pod(&p, now),
                WatchEvent::Deleted(p) => index.delete_pod(&p, now),
                WatchEvent::Listed(list) => index.replace_pods(&list, now),
                WatchEvent::Lost(e) => watch_lost(&e),
            },
        }
    }
}

fn node_ref(node: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.to_string()),
        // The kubelet names a node's Events with the node name as uid.
        uid: Some(node.to_string()),
        ..Default::default()
    }
}

fn pod_ref(p: &PodRef) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(p.name.clone()),
        namespace: Some(p.namespace.clone()),
        uid: Some(p.uid.clone()).filter(|u| !u.is_empty()),
        ..Default::default()
    }
}

/// Writes one Warning Event about `object` (Node Events go to `default`, as the kubelet's).
async fn record(
    client: &kube::Client,
    object: ObjectReference,
    reason: &str,
    message: String,
    errors: &prometheus::IntCounterVec,
) {
    let namespace = object.namespace.clone().unwrap_or_else(|| "default".into());
    let now = k8s_openapi::jiff::Timestamp::now();
    let name = object.name.clone().unwrap_or_default();
    let e = Event {
        metadata: kube::api::ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        involved_object: object,
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some(crate::actors::mic::writer::EVENT_SOURCE.to_string()),
            host: None,
        }),
        reporting_component: Some(crate::actors::mic::writer::EVENT_SOURCE.to_string()),
        reporting_instance: Some(crate::actors::mic::writer::EVENT_SOURCE.to_string()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        action: Some(reason.into()),
        ..Default::default()
    };
    if let Err(err) = Api::<Event>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &e)
        .await
        // Not sent: this replica no longer leads (counted by the fence).
        && !crate::actors::mic::fence::NotLeading::is(&err)
    {
        errors.with_label_values(&["create event"]).inc();
        tracing::warn!(object = %name, reason, error = %err, "writing Event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, node: Option<&str>, phase: &str, ready: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p-{uid}"), "namespace": "ns", "uid": uid},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn each_unguarded_node_is_reported_with_exactly_its_own_pods_from_their_facts() {
        let grace = Duration::from_secs(30);
        let mut c = Coverage::new();
        let t0 = Instant::now();
        let nodes = 40;
        let facts: Vec<PodFacts> = (0..nodes * 25)
            .map(|i| {
                let n = format!("n{}", i % nodes);
                PodFacts::from(pod(&i.to_string(), Some(&n), "Running", true))
            })
            .collect();
        c.replace_pods(&facts, t0);
        // Node n0 has its NMI: it is not reported.
        c.apply_nmi(&pod("nmi-0", Some("n0"), "Running", true), t0);
        assert!(c.unguarded(t0, grace).is_empty());
        let u = c.unguarded(t0 + grace, grace);
        assert_eq!(u.len(), nodes - 1);
        for g in &u {
            assert_eq!(g.pods.len(), 25, "{}", g.node);
            let k: usize = g.node[1..].parse().unwrap();
            assert!(
                g.pods
                    .iter()
                    .all(|p| p.uid.parse::<usize>().unwrap() % nodes == k),
                "{g:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_is_reported_only_after_the_grace_and_until_its_nmi_is_ready() {
        let grace = Duration::from_secs(30);
        let mut c = Coverage::new();
        let t0 = Instant::now();
        c.replace_nmis(&[pod("nmi-a", Some("a"), "Running", true)], t0);
        c.apply_pod(&pod("1", Some("a"), "Running", true), t0);
        c.apply_pod(&pod("2", Some("b"), "Pending", false), t0);
        c.apply_pod(&pod("3", None, "Pending", false), t0);
        assert!(c.unguarded(t0, grace).is_empty(), "within the grace");
        assert_eq!(c.next_deadline(t0, grace), Some(t0 + grace));
        let later = t0 + grace;
        let u = c.unguarded(later, grace);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].node, "b");
        assert_eq!(
            u[0].pods
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["p-2"]
        );

        // An NMI that is not ready does not guard; a ready one does.
        c.apply_nmi(&pod("nmi-b", Some("b"), "Running", false), later);
        assert_eq!(c.unguarded(later, grace).len(), 1);
        c.apply_nmi(&pod("nmi-b", Some("b"), "Running", true), later);
        assert!(c.unguarded(later, grace).is_empty());
        // It goes away: a new episode starts then, with a new grace.
        let t1 = later + Duration::from_secs(5);
        c.delete_nmi(&pod("nmi-b", Some("b"), "Running", true), t1);
        assert!(
            c.unguarded(t1 + grace - Duration::from_secs(1), grace)
                .is_empty()
        );
        assert_eq!(c.unguarded(t1 + grace, grace).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn finished_terminating_and_deleted_pods_do_not_count() {
        let grace = Duration::ZERO;
        let mut c = Coverage::new();
        let t = Instant::now();
        c.apply_pod(&pod("1", Some("a"), "Succeeded", false), t);
        c.apply_pod(&pod("2", Some("a"), "Failed", false), t);
        assert!(c.unguarded(t, grace).is_empty());
        let mut p = pod("3", Some("a"), "Running", true);
        c.apply_pod(&p, t);
        assert_eq!(c.unguarded(t, grace).len(), 1);
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        c.apply_pod(&p, t);
        assert!(c.unguarded(t, grace).is_empty());
        c.apply_pod(&pod("4", Some("a"), "Running", true), t);
        c.delete_pod(&pod("4", Some("a"), "Running", true), t);
        assert!(c.unguarded(t, grace).is_empty());
        c.replace_pods(&[pod("5", Some("c"), "Running", true)], t);
        assert_eq!(c.unguarded(t, grace)[0].node, "c");
    }

    /// Events applied one by one leave the same standing as a relist of the same pods: the
    /// per-node counts the incremental refresh relies on never drift (pods moving between
    /// nodes, finishing, being deleted; NMIs turning ready and unready).
    #[tokio::test(start_paused = true)]
    async fn events_one_by_one_agree_with_a_relist_of_the_same_pods() {
        let grace = Duration::ZERO;
        let t = Instant::now();
        let mut inc = Coverage::new();
        let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
        let mut nmis: BTreeMap<String, Pod> = BTreeMap::new();
        // A fixed pseudo-random walk (LCG), so a failure reproduces.
        let mut x: u64 = 7;
        let mut next = |m: u64| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % m
        };
        for step in 0..3000 {
            let uid = format!("u{}", next(60));
            let node = format!("n{}", next(8));
            let phase = ["Running", "Pending", "Succeeded"][usize::try_from(next(3)).unwrap()];
            let ready = next(2) == 0;
            match next(5) {
                0 => {
                    if let Some(p) = pods.remove(&uid) {
                        inc.delete_pod(&p, t);
                    }
                }
                1 => {
                    if let Some(p) = nmis.remove(&uid) {
                        inc.delete_nmi(&p, t);
                    }
                }
                2 => {
                    let p = pod(&format!("nmi-{uid}"), Some(&node), phase, ready);
                    inc.apply_nmi(&p, t);
                    nmis.insert(uid, p);
                }
                _ => {
                    let p = pod(&uid, Some(&node), phase, ready);
                    inc.apply_pod(&p, t);
                    pods.insert(uid, p);
                }
            }
            if step % 100 == 99 {
                let mut scratch = Coverage::new();
                let ps: Vec<Pod> = pods.values().cloned().collect();
                let ns: Vec<Pod> = nmis.values().cloned().collect();
                scratch.replace_pods(&ps, t);
                scratch.replace_nmis(&ns, t);
                assert_eq!(
                    inc.unguarded(t, grace),
                    scratch.unguarded(t, grace),
                    "step {step}"
                );
                assert_eq!(inc.pods_on, scratch.pods_on, "step {step}");
                assert_eq!(inc.nmis_on, scratch.nmis_on, "step {step}");
                assert_eq!(
                    inc.since.keys().collect::<Vec<_>>(),
                    scratch.since.keys().collect::<Vec<_>>(),
                    "step {step}"
                );
            }
        }
    }
}
