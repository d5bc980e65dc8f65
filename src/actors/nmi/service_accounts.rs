//! Workload identity's own opt-in, honoured behind the metadata endpoint (with
//! `--enable-federation`): a pod labelled `azure.workload.identity/use: "true"` whose service
//! account is annotated `azure.workload.identity/client-id` (and optionally
//! `azure.workload.identity/tenant-id`) gets that identity's tokens through federation, as the
//! same pod would with workload identity's webhook and an SDK reading the projected token.
//!
//! The authorization is the same as workload identity's: the pod runs as the service account,
//! and Azure AD's federated credential names that service account as its subject. NMI adds
//! nothing a pod could not already get (any pod may mount a projected token of its own service
//! account for any audience), and gives nothing to a pod of another service account: the
//! token it exchanges is always the calling pod's own, bound to that pod.
//!
//! This index holds only service accounts that carry the client-id annotation, each as a
//! ready [`ResolvedIdentity`]; the service-account watch is its only writer. Annotation values
//! that cannot be ids (longer than [`MAX_ID_LEN`], or with characters other than letters,
//! digits, `-` and `.`) are ignored with a warning.

use super::cache::CacheKey;
use super::identity::ResolvedIdentity;
use super::pods::PodInfo;
use crate::object_key::ObjectKey;
use dashmap::DashMap;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Pod label by which a pod opts in to workload identity.
pub const USE_LABEL: &str = "azure.workload.identity/use";
/// Service-account annotation naming the identity's client id.
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// Service-account annotation naming the identity's tenant.
pub const TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";
/// Longest client or tenant id accepted from an annotation.
pub const MAX_ID_LEN: usize = 128;

/// Service accounts annotated for workload identity, by `namespace/name`.
#[derive(Default)]
pub struct ServiceAccountIndex {
    by_key: DashMap<ObjectKey, Arc<ResolvedIdentity>>,
    synced: AtomicBool,
}

fn key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey::new(namespace, name)
}

fn usable_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_ID_LEN
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl ServiceAccountIndex {
    /// An empty index, not synced.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn resolve(sa: &ServiceAccount) -> Option<Arc<ResolvedIdentity>> {
        let annotations = sa.annotations();
        let client_id = annotations.get(CLIENT_ID_ANNOTATION)?.trim();
        let tenant_id = annotations
            .get(TENANT_ID_ANNOTATION)
            .map_or("", |t| t.trim());
        let ns = sa.namespace().unwrap_or_default();
        if !usable_id(client_id) || !(tenant_id.is_empty() || usable_id(tenant_id)) {
            tracing::warn!(namespace = %ns, service_account = %sa.name_any(), "ignoring a workload identity annotation that is not an id");
            return None;
        }
        Some(Arc::new(ResolvedIdentity::from_service_account(
            &ns,
            &sa.name_any(),
            client_id,
            tenant_id,
        )))
    }

    /// Records a service account added or changed; returns the cache key of the identity it
    /// no longer names (its tokens must be dropped).
    pub fn apply(&self, sa: &ServiceAccount) -> Option<CacheKey> {
        let k = key(&sa.namespace().unwrap_or_default(), &sa.name_any());
        let old = match Self::resolve(sa) {
            Some(id) => self
                .by_key
                .insert(k, id.clone())
                .filter(|o| o.cache_key != id.cache_key),
            None => self.by_key.remove(&k).map(|(_, o)| o),
        };
        old.map(|o| o.cache_key.clone())
    }

    /// Records a service account's deletion; returns the cache key to drop.
    pub fn delete(&self, sa: &ServiceAccount) -> Option<CacheKey> {
        self.by_key
            .remove(&key(&sa.namespace().unwrap_or_default(), &sa.name_any()))
            .map(|(_, o)| o.cache_key.clone())
    }

    /// Replaces everything after a (re)list; marks the index synced. Returns cache keys to drop.
    pub fn replace_all(&self, list: &[ServiceAccount]) -> Vec<CacheKey> {
        let fresh: std::collections::HashMap<ObjectKey, Arc<ResolvedIdentity>> = list
            .iter()
            .filter_map(|sa| {
                Self::resolve(sa)
                    .map(|id| (key(&sa.namespace().unwrap_or_default(), &sa.name_any()), id))
            })
            .collect();
        let mut gone = Vec::new();
        self.by_key.retain(|k, old| match fresh.get(k) {
            Some(new) if new.cache_key == old.cache_key => true,
            _ => {
                gone.push(old.cache_key.clone());
                false
            }
        });
        for (k, id) in fresh {
            self.by_key.entry(k).or_insert(id);
        }
        self.synced.store(true, Ordering::Release);
        gone
    }

    /// The watch broke: not synced until the next list.
    pub fn mark_unsynced(&self) {
        self.synced.store(false, Ordering::Release);
    }

    /// True once a full list is in.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The identity `pod` may use through workload identity's opt-in: the pod carries
    /// [`USE_LABEL`] `true` and its service account names a client id.
    #[must_use]
    pub fn identity_for(&self, pod: &PodInfo) -> Option<Arc<ResolvedIdentity>> {
        if pod.labels.get(USE_LABEL).map(String::as_str) != Some("true") {
            return None;
        }
        let sa = pod.service_account.as_deref().unwrap_or("default");
        self.by_key
            .get(&key(&pod.namespace, sa))
            .map(|e| Arc::clone(e.value()))
    }

    /// Number of annotated service accounts held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when none is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sa(ns: &str, name: &str, annotations: &[(&str, &str)]) -> ServiceAccount {
        let mut s = ServiceAccount::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some(ns.into());
        s.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        s
    }

    fn pod(ns: &str, sa: Option<&str>, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            key: Arc::new(ObjectKey::new(ns, "p")),
            namespace: ns.into(),
            name: "p".into(),
            uid: "u".into(),
            ips: vec![],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            service_account: sa.map(str::to_string),
            host_network: false,
            terminating: false,
        }
    }

    #[test]
    fn only_an_opted_in_pod_of_an_annotated_service_account_gets_an_identity() {
        let idx = ServiceAccountIndex::new();
        idx.replace_all(&[
            sa(
                "team",
                "app",
                &[(CLIENT_ID_ANNOTATION, "c-1"), (TENANT_ID_ANNOTATION, "t-1")],
            ),
            sa("team", "plain", &[]),
        ]);
        assert!(idx.is_synced());
        assert_eq!(idx.len(), 1);
        let id = idx
            .identity_for(&pod("team", Some("app"), &[(USE_LABEL, "true")]))
            .expect("opted in");
        assert!(id.federated && id.namespaced);
        assert_eq!(
            (id.spec.client_id.as_str(), id.spec.tenant_id.as_str()),
            ("c-1", "t-1")
        );
        assert!(id.serves_namespace("team") && !id.serves_namespace("other"));
        // No label, another value, another service account, another namespace: nothing.
        assert!(idx.identity_for(&pod("team", Some("app"), &[])).is_none());
        assert!(
            idx.identity_for(&pod("team", Some("app"), &[(USE_LABEL, "yes")]))
                .is_none()
        );
        assert!(
            idx.identity_for(&pod("team", Some("plain"), &[(USE_LABEL, "true")]))
                .is_none()
        );
        assert!(
            idx.identity_for(&pod("team", None, &[(USE_LABEL, "true")]))
                .is_none()
        );
        assert!(
            idx.identity_for(&pod("other", Some("app"), &[(USE_LABEL, "true")]))
                .is_none()
        );
    }

    #[test]
    fn a_changed_or_removed_annotation_drops_the_old_tokens() {
        let idx = ServiceAccountIndex::new();
        assert_eq!(
            idx.apply(&sa("n", "a", &[(CLIENT_ID_ANNOTATION, "c-1")])),
            None
        );
        let same = idx.apply(&sa("n", "a", &[(CLIENT_ID_ANNOTATION, "c-1")]));
        assert_eq!(same, None, "an unchanged annotation keeps its tokens");
        let old = idx
            .apply(&sa("n", "a", &[(CLIENT_ID_ANNOTATION, "c-2")]))
            .unwrap();
        assert!(old.as_str().contains("c-1"));
        let gone = idx.apply(&sa("n", "a", &[])).unwrap();
        assert!(gone.as_str().contains("c-2"));
        assert!(idx.is_empty());
        idx.apply(&sa("n", "b", &[(CLIENT_ID_ANNOTATION, "c-3")]));
        assert!(
            idx.delete(&sa("n", "b", &[]))
                .unwrap()
                .as_str()
                .contains("c-3")
        );
        idx.apply(&sa("n", "c", &[(CLIENT_ID_ANNOTATION, "c-4")]));
        let dropped = idx.replace_all(&[]);
        assert_eq!(dropped.len(), 1);
    }

    #[test]
    fn annotations_that_are_not_ids_are_ignored() {
        let idx = ServiceAccountIndex::new();
        let long = "a".repeat(MAX_ID_LEN + 1);
        for bad in ["", "c 1", "c/1", long.as_str(), "c\u{0}"] {
            idx.apply(&sa("n", "a", &[(CLIENT_ID_ANNOTATION, bad)]));
            assert!(idx.is_empty(), "{bad:?}");
        }
        idx.apply(&sa(
            "n",
            "a",
            &[
                (CLIENT_ID_ANNOTATION, "c"),
                (TENANT_ID_ANNOTATION, "t/../x"),
            ],
        ));
        assert!(idx.is_empty());
    }
}
