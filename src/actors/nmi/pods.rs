//! The pod index: this node's Pending and Running pods by IP (O(1), read from every HTTP worker)
//! and by `namespace/name`, fed by the node-scoped pod watch.
//!
//! One address never lets one pod act as another. Two pods can hold one IP (a terminating pod and
//! its successor, or pods whose IP was reused before the watch caught up): an address maps to
//! every pod holding it, and a caller is identified only when exactly one of them is live (not
//! terminating); otherwise the address is [`IpLookup::Ambiguous`] and refused (the original
//! answered 500 for more than one pod). Host-network pods share the node's address, so they are
//! never identified by IP (only by name, through `/host/token`).
//!
//! The first token request of a new pod can beat the watch event that announces it, so a lookup
//! may wait for the pod's arrival ([`PodIndex::wait_for_ip`]): it sleeps on a [`Notify`] that
//! every insert wakes, bounded by a short deadline. No polling.

use crate::crd::POD_LABEL;
use crate::object_key::ObjectKey;
use dashmap::DashMap;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// What NMI needs to know about a calling pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// `namespace/name`: the key of the pod's assignments.
    pub key: Arc<ObjectKey>,
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
    /// UID (distinguishes a pod from a later one reusing its IP).
    pub uid: Arc<str>,
    /// Pod IPs.
    pub ips: Vec<IpAddr>,
    /// Labels (matched against AzurePodIdentityExceptions).
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName` (MIC's own pods are recognised by it).
    pub service_account: Option<String>,
    /// `spec.hostNetwork`: the pod shares the node's address and is never identified by IP.
    pub host_network: bool,
    /// The pod has a deletion timestamp (it is shutting down; its IP may already be reused).
    pub terminating: bool,
}

impl PodInfo {
    /// The pod's `aadpodidbinding` label value.
    #[must_use]
    pub fn selector(&self) -> Option<&str> {
        self.labels.get(POD_LABEL).map(String::as_str)
    }

    /// Builds the record for a pod that may call NMI: on `node`, Pending or Running, with an IP.
    #[must_use]
    pub fn from_pod(pod: &Pod, node: &str) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        if spec.node_name.as_deref() != Some(node) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if !matches!(status.phase.as_deref(), Some("Pending" | "Running")) {
            return None;
        }
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if let Some(ip) = status.pod_ip.as_deref().and_then(|s| s.parse().ok())
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
        if ips.is_empty() {
            return None;
        }
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        Some(Self {
            key: Arc::new(ObjectKey::new(&namespace, &name)),
            namespace: namespace.into(),
            name: name.into(),
            uid: pod.uid().unwrap_or_default().into(),
            ips,
            labels: pod.labels().clone(),
            service_account: spec.service_account_name.clone(),
            host_network: spec.host_network == Some(true),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        })
    }

    /// The addresses that identify this pod (none for a host-network pod).
    fn identifying_ips(&self) -> &[IpAddr] {
        if self.host_network { &[] } else { &self.ips }
    }
}

/// Who is calling from an address.
#[derive(Clone, Debug)]
pub enum IpLookup {
    /// No pod of this node holds the address.
    Unknown,
    /// Exactly one pod holds it, or exactly one of those holding it is live.
    Pod(Arc<PodInfo>),
    /// Several pods hold it and not exactly one is live: nobody may act through it.
    Ambiguous(Arc<[Arc<ObjectKey>]>),
}

/// Every pod holding one address, and what that makes the address.
struct IpEntry {
    pods: Vec<Arc<PodInfo>>,
    resolved: IpLookup,
}

impl IpEntry {
    fn resolve(&mut self) {
        self.resolved = match self.pods.as_slice() {
            [] => IpLookup::Unknown,
            [one] => IpLookup::Pod(Arc::clone(one)),
            many => {
                let mut live = many.iter().filter(|p| !p.terminating);
                match (live.next(), live.next()) {
                    (Some(one), None) => IpLookup::Pod(Arc::clone(one)),
                    _ => IpLookup::Ambiguous(many.iter().map(|p| Arc::clone(&p.key)).collect()),
                }
            }
        };
    }
}

/// Pods of this node by IP and by key. Written only by the pod watcher.
pub struct PodIndex {
    node: String,
    by_ip: DashMap<IpAddr, IpEntry>,
    by_key: DashMap<Arc<ObjectKey>, Arc<PodInfo>>,
    arrivals: Notify,
    synced: AtomicBool,
}

impl PodIndex {
    /// An empty index for `node`.
    #[must_use]
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            by_ip: DashMap::new(),
            by_key: DashMap::new(),
            arrivals: Notify::new(),
            synced: AtomicBool::new(false),
        }
    }

    /// Records a pod added or changed; a pod that left this node or finished is removed.
    pub fn apply(&self, pod: &Pod) {
        match PodInfo::from_pod(pod, &self.node) {
            Some(info) => self.insert(info),
            None => self.delete(pod),
        }
    }

    /// Records a pod's deletion.
    pub fn delete(&self, pod: &Pod) {
        let key = ObjectKey::new(&pod.namespace().unwrap_or_default(), &pod.name_any());
        if let Some((_, old)) = self.by_key.remove(&key) {
            self.unlink(&old, &[]);
        }
    }

    /// Removes `old` from the addresses it held, except those in `keep`.
    fn unlink(&self, old: &PodInfo, keep: &[IpAddr]) {
        for ip in old.identifying_ips().iter().filter(|ip| !keep.contains(ip)) {
            if let Some(mut e) = self.by_ip.get_mut(ip) {
                e.pods.retain(|p| p.key != old.key);
                e.resolve();
            }
            self.by_ip.remove_if(ip, |_, e| e.pods.is_empty());
        }
    }

    fn insert(&self, info: PodInfo) {
        let info = Arc::new(info);
        let old = self.by_key.insert(Arc::clone(&info.key), Arc::clone(&info));
        // Each address is updated in place, so a reader never sees the pod missing.
        for ip in info.identifying_ips() {
            let mut e = self.by_ip.entry(*ip).or_insert_with(|| IpEntry {
                pods: Vec::new(),
                resolved: IpLookup::Unknown,
            });
            e.pods.retain(|p| p.key != info.key);
            e.pods.push(Arc::clone(&info));
            e.resolve();
        }
        if let Some(old) = old {
            self.unlink(&old, info.identifying_ips());
        }
        self.arrivals.notify_waiters();
    }

    /// Replaces the whole content after a (re)list; marks the index synced.
    pub fn replace_all(&self, pods: &[Pod]) {
        let fresh: Vec<PodInfo> = pods
            .iter()
            .filter_map(|p| PodInfo::from_pod(p, &self.node))
            .collect();
        let keep: std::collections::HashSet<&ObjectKey> = fresh.iter().map(|p| &*p.key).collect();
        let gone: Vec<Arc<ObjectKey>> = self
            .by_key
            .iter()
            .filter(|e| !keep.contains(&**e.key()))
            .map(|e| Arc::clone(e.key()))
            .collect();
        for key in gone {
            if let Some((_, old)) = self.by_key.remove(&key) {
                self.unlink(&old, &[]);
            }
        }
        for info in fresh {
            self.insert(info);
        }
        self.synced.store(true, Ordering::Release);
    }

    /// Marks the index as no longer in sync (its watch broke); the next full list syncs it again.
    pub fn mark_unsynced(&self) {
        self.synced.store(false, Ordering::Release);
    }

    /// Who is calling from `ip`, now.
    #[must_use]
    pub fn lookup_ip(&self, ip: IpAddr) -> IpLookup {
        self.by_ip
            .get(&ip.to_canonical())
            .map_or(IpLookup::Unknown, |e| e.resolved.clone())
    }

    /// The one pod identified by this IP, now (`None` when unknown or ambiguous).
    #[must_use]
    pub fn by_ip(&self, ip: IpAddr) -> Option<Arc<PodInfo>> {
        match self.lookup_ip(ip) {
            IpLookup::Pod(p) => Some(p),
            IpLookup::Unknown | IpLookup::Ambiguous(_) => None,
        }
    }

    /// The pod `namespace/name`, now.
    #[must_use]
    pub fn by_key(&self, key: &ObjectKey) -> Option<Arc<PodInfo>> {
        self.by_key.get(key).map(|p| Arc::clone(&p))
    }

    /// Who is calling from `ip`, waiting up to `within` for a pod to arrive at an unknown address.
    pub async fn wait_for_ip(&self, ip: IpAddr, within: Duration) -> IpLookup {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.arrivals.notified();
            tokio::pin!(notified);
            // Register before checking so an insert between the check and the await is not lost.
            notified.as_mut().enable();
            match self.lookup_ip(ip) {
                IpLookup::Unknown => {}
                found => return found,
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.lookup_ip(ip);
            }
        }
    }

    /// True once the first list of pods is in.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Number of pods indexed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when no pod is indexed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    pub use crate::actors::fixtures::PodBuilder;

    /// A Running pod of NMI's node (`node-1`): `pod("ns", "name").ip("127.0.0.2")`.
    pub fn pod(ns: &str, name: &str) -> PodBuilder {
        crate::actors::fixtures::pod(ns, name).on_node("node-1")
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::pod;
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn running_pods_of_this_node_are_found_by_ip() {
        let idx = PodIndex::new("node-1");
        idx.apply(&pod("ns", "a").ip("127.0.0.2").build());
        idx.apply(&pod("ns", "b").ip("127.0.0.3").on_node("node-2").build());
        idx.apply(&pod("ns", "c").ip("127.0.0.4").phase("Succeeded").build());
        assert_eq!(idx.by_ip(ip("127.0.0.2")).unwrap().key.to_string(), "ns/a");
        assert!(idx.by_ip(ip("127.0.0.3")).is_none());
        assert!(idx.by_ip(ip("127.0.0.4")).is_none());
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn a_finished_pod_leaves_and_a_reused_ip_points_at_the_new_pod() {
        let idx = PodIndex::new("node-1");
        idx.apply(&pod("ns", "old").ip("127.0.0.2").build());
        idx.apply(&pod("ns", "new").ip("127.0.0.2").build());
        idx.apply(&pod("ns", "old").ip("127.0.0.2").phase("Failed").build());
        assert_eq!(&*idx.by_ip(ip("127.0.0.2")).unwrap().name, "new");
        idx.delete(&pod("ns", "new").build());
        assert!(idx.by_ip(ip("127.0.0.2")).is_none());
    }

    #[test]
    fn an_ip_change_moves_the_pod() {
        let idx = PodIndex::new("node-1");
        idx.apply(&pod("ns", "a").ip("127.0.0.2").build());
        idx.apply(&pod("ns", "a").ip("127.0.0.9").build());
        assert!(idx.by_ip(ip("127.0.0.2")).is_none());
        assert!(idx.by_ip(ip("127.0.0.9")).is_some());
        assert!(idx.by_ip(ip("::ffff:127.0.0.9")).is_some());
    }

    #[test]
    fn a_relist_drops_what_is_gone_and_marks_synced() {
        let idx = PodIndex::new("node-1");
        idx.apply(&pod("ns", "gone").ip("127.0.0.2").build());
        assert!(!idx.is_synced());
        idx.replace_all(&[pod("ns", "kept").ip("127.0.0.3").build()]);
        assert!(idx.is_synced());
        assert!(idx.by_ip(ip("127.0.0.2")).is_none());
        assert!(idx.by_ip(ip("127.0.0.3")).is_some());
    }

    #[test]
    fn two_live_pods_on_one_address_identify_neither() {
        let idx = PodIndex::new("node-1");
        idx.apply(&pod("ns", "a").ip("127.0.0.2").build());
        idx.apply(&pod("ns", "b").ip("127.0.0.2").build());
        assert!(idx.by_ip(ip("127.0.0.2")).is_none());
        match idx.lookup_ip(ip("127.0.0.2")) {
            IpLookup::Ambiguous(keys) => {
                let mut k: Vec<String> = keys.iter().map(ToString::to_string).collect();
                k.sort_unstable();
                assert_eq!(k, ["ns/a", "ns/b"]);
            }
            other => panic!("expected ambiguous, got {other:?}"),
        }
        // One of them leaves: the other is identified again.
        idx.delete(&pod("ns", "a").build());
        assert_eq!(&*idx.by_ip(ip("127.0.0.2")).unwrap().name, "b");
    }

    #[test]
    fn a_terminating_pod_yields_its_address_to_the_one_live_successor() {
        let idx = PodIndex::new("node-1");
        idx.apply(&pod("ns", "old").ip("127.0.0.2").build());
        idx.apply(&pod("ns", "old").ip("127.0.0.2").terminating().build());
        // Alone, a terminating pod is still itself (it may ask for tokens while shutting down).
        assert_eq!(&*idx.by_ip(ip("127.0.0.2")).unwrap().name, "old");
        idx.apply(&pod("ns", "new").ip("127.0.0.2").build());
        assert_eq!(&*idx.by_ip(ip("127.0.0.2")).unwrap().name, "new");
        // Both terminating: nobody.
        idx.apply(&pod("ns", "new").ip("127.0.0.2").terminating().build());
        assert!(matches!(
            idx.lookup_ip(ip("127.0.0.2")),
            IpLookup::Ambiguous(_)
        ));
    }

    #[test]
    fn host_network_pods_are_not_identified_by_the_node_address() {
        let idx = PodIndex::new("node-1");
        idx.apply(
            &pod("kube-system", "agent")
                .ip("127.0.0.1")
                .host_network()
                .build(),
        );
        assert!(matches!(idx.lookup_ip(ip("127.0.0.1")), IpLookup::Unknown));
        assert!(
            idx.by_key(&ObjectKey::new("kube-system", "agent"))
                .is_some()
        );
        idx.apply(
            &pod("ns", "other-agent")
                .ip("127.0.0.1")
                .host_network()
                .build(),
        );
        assert!(matches!(idx.lookup_ip(ip("127.0.0.1")), IpLookup::Unknown));
    }

    #[test]
    fn a_pod_recreated_under_its_name_replaces_itself_at_its_address() {
        let idx = PodIndex::new("node-1");
        idx.apply(&pod("ns", "web-0").ip("127.0.0.2").uid("u1").build());
        idx.apply(&pod("ns", "web-0").ip("127.0.0.2").uid("u2").build());
        assert_eq!(&*idx.by_ip(ip("127.0.0.2")).unwrap().uid, "u2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_its_pod_to_arrive() {
        let idx = Arc::new(PodIndex::new("node-1"));
        let waiter = {
            let idx = Arc::clone(&idx);
            tokio::spawn(async move {
                idx.wait_for_ip(ip("127.0.0.5"), Duration::from_secs(2))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        idx.apply(&pod("ns", "other").ip("127.0.0.6").build());
        tokio::time::sleep(Duration::from_millis(500)).await;
        idx.apply(&pod("ns", "late").ip("127.0.0.5").build());
        let IpLookup::Pod(found) = waiter.await.unwrap() else {
            panic!("the pod arrived");
        };
        assert_eq!(&*found.name, "late");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_never_arrives_gives_up_at_the_deadline() {
        let idx = PodIndex::new("node-1");
        let start = tokio::time::Instant::now();
        assert!(matches!(
            idx.wait_for_ip(ip("127.0.0.5"), Duration::from_secs(2))
                .await,
            IpLookup::Unknown
        ));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
