//! The assignment index (standard mode): each pod's identities from the AzureAssignedIdentity
//! objects of this node, published through one `tokio::sync::watch` channel per pod.
//!
//! A token request for a pod whose identity is not yet `Assigned` subscribes to its pod's channel
//! and is woken by the very update that flips the status: no polling, and the wake-up costs one
//! channel send. Only the assignment watcher writes here.

use super::cache::CacheKey;
use super::identity::{ResolvedIdentity, sort_identities};
use crate::crd::{AssignedState, AzureAssignedIdentity};
use crate::object_key::ObjectKey;
use dashmap::DashMap;
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A pod's identities, sorted by (identity namespace, identity name).
pub type PodIdentities = Arc<Vec<Arc<ResolvedIdentity>>>;

#[derive(Default)]
struct Records {
    /// pod key → AzureAssignedIdentity `namespace/name` → identity.
    by_pod: HashMap<Arc<ObjectKey>, BTreeMap<ObjectKey, Arc<ResolvedIdentity>>>,
    /// AzureAssignedIdentity `namespace/name` → pod key.
    pod_of: HashMap<ObjectKey, Arc<ObjectKey>>,
    /// identity cache key → number of `Assigned` records using it on this node.
    assigned: HashMap<CacheKey, usize>,
}

/// Per-pod identities of this node, readable without locks held across awaits.
pub struct AssignmentIndex {
    node: String,
    force_namespaced: bool,
    channels: DashMap<Arc<ObjectKey>, watch::Sender<PodIdentities>>,
    records: Mutex<Records>,
    synced: AtomicBool,
}

impl AssignmentIndex {
    /// An empty index for `node`.
    #[must_use]
    pub fn new(node: impl Into<String>, force_namespaced: bool) -> Self {
        Self {
            node: node.into(),
            force_namespaced,
            channels: DashMap::new(),
            records: Mutex::new(Records::default()),
            synced: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an AzureAssignedIdentity added or changed. Returns the cache keys of identities
    /// no longer `Assigned` to any pod of this node (their tokens must be dropped).
    pub fn apply(&self, aai: &AzureAssignedIdentity) -> Vec<CacheKey> {
        let mut gone = Vec::new();
        let mut touched = Vec::new();
        {
            let mut rec = self.lock();
            let aai_key = ObjectKey::of(aai);
            Self::remove_record(&mut rec, &aai_key, &mut gone, &mut touched);
            if let Some((pod, id)) = self.resolve(aai) {
                if id.state == AssignedState::Assigned {
                    *rec.assigned.entry(id.cache_key.clone()).or_default() += 1;
                    gone.retain(|k| *k != id.cache_key);
                }
                // Where a wake-up starts (docs/performance.md: the wake-up's stages).
                tracing::debug!(pod = %pod, identity = %id.identity_name, state = id.state.as_str(), "assignment event");
                rec.pod_of.insert(aai_key.clone(), Arc::clone(&pod));
                rec.by_pod
                    .entry(Arc::clone(&pod))
                    .or_default()
                    .insert(aai_key, Arc::new(id));
                touched.push(pod);
            }
            for pod in &touched {
                self.publish(&rec, pod);
            }
        }
        gone
    }

    /// Records an AzureAssignedIdentity's deletion; returns cache keys to drop as [`Self::apply`].
    pub fn delete(&self, aai: &AzureAssignedIdentity) -> Vec<CacheKey> {
        let mut gone = Vec::new();
        let mut touched = Vec::new();
        let mut rec = self.lock();
        Self::remove_record(&mut rec, &ObjectKey::of(aai), &mut gone, &mut touched);
        for pod in &touched {
            self.publish(&rec, pod);
        }
        gone
    }

    /// Replaces everything after a (re)list; marks the index synced. Returns cache keys to drop.
    pub fn replace_all(&self, list: &[AzureAssignedIdentity]) -> Vec<CacheKey> {
        let before: Vec<CacheKey> = self.lock().assigned.keys().cloned().collect();
        let mut fresh = Records::default();
        for aai in list {
            if let Some((pod, id)) = self.resolve(aai) {
                if id.state == AssignedState::Assigned {
                    *fresh.assigned.entry(id.cache_key.clone()).or_default() += 1;
                }
                let key = ObjectKey::of(aai);
                fresh.pod_of.insert(key.clone(), Arc::clone(&pod));
                fresh
                    .by_pod
                    .entry(pod)
                    .or_default()
                    .insert(key, Arc::new(id));
            }
        }
        let mut rec = self.lock();
        let mut pods: Vec<Arc<ObjectKey>> = rec.by_pod.keys().cloned().collect();
        pods.extend(fresh.by_pod.keys().cloned());
        *rec = fresh;
        for pod in &pods {
            self.publish(&rec, pod);
        }
        self.synced.store(true, Ordering::Release);
        before
            .into_iter()
            .filter(|k| !rec.assigned.contains_key(k))
            .collect()
    }

    fn remove_record(
        rec: &mut Records,
        aai_key: &ObjectKey,
        gone: &mut Vec<CacheKey>,
        touched: &mut Vec<Arc<ObjectKey>>,
    ) {
        let Some(pod) = rec.pod_of.remove(aai_key) else {
            return;
        };
        let old = rec.by_pod.get_mut(&pod).and_then(|m| m.remove(aai_key));
        if rec.by_pod.get(&pod).is_some_and(BTreeMap::is_empty) {
            rec.by_pod.remove(&pod);
        }
        if let Some(old) = old
            && old.state == AssignedState::Assigned
            && let Some(n) = rec.assigned.get_mut(&old.cache_key)
        {
            *n -= 1;
            if *n == 0 {
                rec.assigned.remove(&old.cache_key);
                gone.push(old.cache_key.clone());
            }
        }
        touched.push(pod);
    }

    fn resolve(&self, aai: &AzureAssignedIdentity) -> Option<(Arc<ObjectKey>, ResolvedIdentity)> {
        let spec = &aai.spec;
        if spec.node_name != self.node || spec.pod.is_empty() {
            return None;
        }
        let identity = spec.azure_identity_ref.as_deref()?;
        let binding_ns = spec
            .azure_binding_ref
            .as_deref()
            .and_then(|b| b.namespace())
            .or_else(|| identity.namespace())
            .unwrap_or_default();
        let state = aai
            .status
            .as_ref()
            .map(|s| s.status.clone())
            .unwrap_or_default();
        let pod = Arc::new(ObjectKey::new(&spec.pod_namespace, &spec.pod));
        Some((
            pod,
            ResolvedIdentity::new(identity, &binding_ns, state, self.force_namespaced),
        ))
    }

    /// Sends a pod's current identities to its channel (creating it when needed); drops the
    /// channel of a pod with no identities and nobody waiting.
    fn publish(&self, rec: &Records, pod: &Arc<ObjectKey>) {
        let mut ids: Vec<Arc<ResolvedIdentity>> = rec
            .by_pod
            .get(pod)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        sort_identities(&mut ids);
        if ids.is_empty() {
            if let Some(tx) = self.channels.get(pod.as_ref()) {
                tx.send_replace(Arc::new(ids));
            }
            self.channels
                .remove_if(pod.as_ref(), |_, tx| tx.receiver_count() == 0);
            return;
        }
        match self.channels.get(pod.as_ref()) {
            Some(tx) => {
                tx.send_replace(Arc::new(ids));
            }
            None => {
                let (tx, _) = watch::channel(Arc::new(ids));
                self.channels.insert(Arc::clone(pod), tx);
            }
        }
    }

    /// A pod's identities, now.
    #[must_use]
    pub fn current(&self, pod_key: &ObjectKey) -> Option<PodIdentities> {
        self.channels
            .get(pod_key)
            .map(|tx| Arc::clone(&tx.borrow()))
    }

    /// A receiver of a pod's identities, woken on every change.
    #[must_use]
    pub fn subscribe(&self, pod_key: &ObjectKey) -> watch::Receiver<PodIdentities> {
        if let Some(tx) = self.channels.get(pod_key) {
            return tx.subscribe();
        }
        self.channels
            .entry(Arc::new(pod_key.clone()))
            .or_insert_with(|| watch::channel(Arc::new(Vec::new())).0)
            .subscribe()
    }

    /// Drops a pod's channel when it holds no identities and nobody waits on it (called by a
    /// request that subscribed for a pod the watch never reported, so such pods leave nothing).
    pub fn forget_if_idle(&self, pod_key: &ObjectKey) {
        self.channels.remove_if(pod_key, |_, tx| {
            tx.receiver_count() == 0 && tx.borrow().is_empty()
        });
    }

    /// Number of pods with a channel (for tests).
    #[must_use]
    pub fn tracked_pods(&self) -> usize {
        self.channels.len()
    }

    /// Number of requests subscribed to a pod's identities (for tests and benchmarks).
    #[must_use]
    pub fn waiters(&self, pod_key: &ObjectKey) -> usize {
        self.channels
            .get(pod_key)
            .map_or(0, |tx| tx.receiver_count())
    }

    /// Marks the index as no longer in sync (its watch broke); the next full list syncs it again.
    pub fn mark_unsynced(&self) {
        self.synced.store(false, Ordering::Release);
    }

    /// True once the first list of AzureAssignedIdentities is in.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use crate::crd::{
        AssignedState, AzureAssignedIdentity, AzureAssignedIdentitySpec,
        AzureAssignedIdentityStatus, AzureIdentity, AzureIdentityBinding, AzureIdentityBindingSpec,
        assigned_identity_name,
    };
    use kube::ResourceExt;

    pub fn assigned(
        pod_ns: &str,
        pod: &str,
        identity: &AzureIdentity,
        node: &str,
        state: AssignedState,
    ) -> AzureAssignedIdentity {
        let id_ns = identity.namespace().unwrap_or_default();
        let mut binding = AzureIdentityBinding::new(
            &format!("{}-binding", identity.name_any()),
            AzureIdentityBindingSpec {
                azure_identity: identity.name_any(),
                selector: "sel".into(),
                weight: 0,
            },
        );
        binding.metadata.namespace = Some(id_ns.clone());
        let mut aai = AzureAssignedIdentity::new(
            &assigned_identity_name(pod, pod_ns, &identity.name_any()),
            AzureAssignedIdentitySpec {
                azure_identity_ref: Some(Box::new(identity.clone())),
                azure_binding_ref: Some(Box::new(binding)),
                pod: pod.into(),
                pod_namespace: pod_ns.into(),
                node_name: node.into(),
                replicas: None,
            },
        );
        aai.metadata.namespace = Some(id_ns);
        aai.status = Some(AzureAssignedIdentityStatus {
            available_replicas: 0,
            status: state,
        });
        aai
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::assigned;
    use super::*;
    use crate::actors::nmi::identity::fixtures::identity;
    use std::time::Duration;

    #[test]
    fn a_pods_identities_are_published_sorted_and_other_nodes_ignored() {
        let idx = AssignmentIndex::new("node-1", false);
        idx.apply(&assigned(
            "ns",
            "p",
            &identity("ns", "b", "cb"),
            "node-1",
            AssignedState::Assigned,
        ));
        idx.apply(&assigned(
            "ns",
            "p",
            &identity("ns", "a", "ca"),
            "node-1",
            AssignedState::Created,
        ));
        idx.apply(&assigned(
            "ns",
            "q",
            &identity("ns", "a", "ca"),
            "node-2",
            AssignedState::Assigned,
        ));
        let ids = idx.current(&ObjectKey::new("ns", "p")).unwrap();
        let names: Vec<_> = ids.iter().map(|i| i.identity_name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(idx.current(&ObjectKey::new("ns", "q")).is_none());
    }

    #[test]
    fn the_last_unassignment_of_an_identity_on_the_node_reports_it_gone() {
        let idx = AssignmentIndex::new("node-1", false);
        let id = identity("ns", "a", "ca");
        assert!(
            idx.apply(&assigned(
                "ns",
                "p1",
                &id,
                "node-1",
                AssignedState::Assigned
            ))
            .is_empty()
        );
        assert!(
            idx.apply(&assigned(
                "ns",
                "p2",
                &id,
                "node-1",
                AssignedState::Assigned
            ))
            .is_empty()
        );
        assert!(
            idx.delete(&assigned(
                "ns",
                "p1",
                &id,
                "node-1",
                AssignedState::Assigned
            ))
            .is_empty()
        );
        let gone = idx.apply(&assigned(
            "ns",
            "p2",
            &id,
            "node-1",
            AssignedState::Unassigned,
        ));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].as_str(), "msi/ca");
    }

    /// An edited service principal (here its tenant and Secret) reaches the pod's identities,
    /// and the tokens NMI cached for the old values are dropped rather than served.
    #[test]
    fn an_edited_service_principal_replaces_its_cached_tokens() {
        let idx = AssignmentIndex::new("node-1", false);
        let mut id = identity("ns", "sp", "c-sp");
        id.spec.type_ = crate::crd::IdentityType::ServicePrincipal;
        id.spec.tenant_id = "tenant-a".into();
        assert!(
            idx.apply(&assigned("ns", "p", &id, "node-1", AssignedState::Assigned))
                .is_empty()
        );
        let old_key = idx.current(&ObjectKey::new("ns", "p")).unwrap()[0]
            .cache_key
            .clone();
        id.spec.tenant_id = "tenant-b".into();
        id.spec.client_password.name = "rotated".into();
        let gone = idx.apply(&assigned("ns", "p", &id, "node-1", AssignedState::Assigned));
        assert_eq!(gone, std::slice::from_ref(&old_key));
        let now = idx.current(&ObjectKey::new("ns", "p")).unwrap();
        assert_eq!(now[0].spec.tenant_id, "tenant-b");
        assert_ne!(now[0].cache_key, old_key);
        // The same spec again changes nothing.
        assert!(
            idx.apply(&assigned("ns", "p", &id, "node-1", AssignedState::Assigned))
                .is_empty()
        );
    }

    #[test]
    fn a_relist_replaces_everything_and_reports_dropped_identities() {
        let idx = AssignmentIndex::new("node-1", false);
        idx.apply(&assigned(
            "ns",
            "p1",
            &identity("ns", "a", "ca"),
            "node-1",
            AssignedState::Assigned,
        ));
        assert!(!idx.is_synced());
        let gone = idx.replace_all(&[assigned(
            "ns",
            "p2",
            &identity("ns", "b", "cb"),
            "node-1",
            AssignedState::Assigned,
        )]);
        assert!(idx.is_synced());
        assert_eq!(
            gone.iter().map(CacheKey::as_str).collect::<Vec<_>>(),
            ["msi/ca"]
        );
        assert!(idx.current(&ObjectKey::new("ns", "p1")).is_none());
        assert_eq!(idx.current(&ObjectKey::new("ns", "p2")).unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_is_woken_by_the_flip_to_assigned() {
        let idx = Arc::new(AssignmentIndex::new("node-1", false));
        let id = identity("ns", "a", "ca");
        idx.apply(&assigned("ns", "p", &id, "node-1", AssignedState::Created));
        let mut rx = idx.subscribe(&ObjectKey::new("ns", "p"));
        assert_eq!(idx.waiters(&ObjectKey::new("ns", "p")), 1);
        let waiter = tokio::spawn(async move {
            rx.wait_for(|ids| ids.iter().any(|i| i.state == AssignedState::Assigned))
                .await
                .map(|ids| ids.len())
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        idx.apply(&assigned("ns", "p", &id, "node-1", AssignedState::Assigned));
        assert_eq!(waiter.await.unwrap().unwrap(), 1);
    }

    #[test]
    fn an_empty_pod_without_waiters_leaves_no_channel_behind() {
        let idx = AssignmentIndex::new("node-1", false);
        let a = assigned(
            "ns",
            "p",
            &identity("ns", "a", "ca"),
            "node-1",
            AssignedState::Assigned,
        );
        idx.apply(&a);
        idx.delete(&a);
        assert!(idx.channels.is_empty());
    }
}
