//! The managed-mode catalog: identities pre-assigned by the operator, so NMI matches pods to
//! AzureIdentityBindings and AzureIdentities itself (always namespaced, as the original requires).
//!
//! Written only by the catalog watcher; every change bumps a `watch` version so waiting requests
//! re-check the moment a binding or identity appears.

use super::cache::CacheKey;
use super::identity::{ResolvedIdentity, sort_identities};
use super::pods::PodInfo;
use crate::crd::{AssignedState, AzureIdentity, AzureIdentityBinding};
use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

type NsName = (String, String);

#[derive(Default)]
struct Catalog {
    identities: HashMap<NsName, Arc<ResolvedIdentity>>,
    /// namespace → binding name → (selector, identity name).
    bindings: HashMap<String, HashMap<String, (String, String)>>,
}

/// Bindings and identities of every namespace, for managed mode.
pub struct ManagedCatalog {
    inner: RwLock<Catalog>,
    version: watch::Sender<u64>,
    identities_synced: AtomicBool,
    bindings_synced: AtomicBool,
}

impl Default for ManagedCatalog {
    fn default() -> Self {
        Self::new()
    }
}

fn ns_name<K: ResourceExt>(o: &K) -> NsName {
    (o.namespace().unwrap_or_default(), o.name_any())
}

impl ManagedCatalog {
    /// An empty catalog.
    #[must_use]
    pub fn new() -> Self {
        Self {
            inner: RwLock::new(Catalog::default()),
            version: watch::channel(0).0,
            identities_synced: AtomicBool::new(false),
            bindings_synced: AtomicBool::new(false),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Catalog> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn resolved(id: &AzureIdentity) -> Arc<ResolvedIdentity> {
        let ns = id.namespace().unwrap_or_default();
        Arc::new(ResolvedIdentity::new(
            id,
            &ns,
            AssignedState::Assigned,
            true,
        ))
    }

    /// Records an identity added or changed; returns the cache key of a replaced version whose
    /// tokens must be dropped.
    pub fn apply_identity(&self, id: &AzureIdentity) -> Option<CacheKey> {
        let new = Self::resolved(id);
        let old = self
            .write()
            .identities
            .insert(ns_name(id), Arc::clone(&new));
        self.bump();
        old.filter(|o| o.cache_key != new.cache_key || o.spec != new.spec)
            .map(|o| o.cache_key.clone())
    }

    /// Records an identity's deletion; returns its cache key.
    pub fn delete_identity(&self, id: &AzureIdentity) -> Option<CacheKey> {
        let old = self.write().identities.remove(&ns_name(id));
        self.bump();
        old.map(|o| o.cache_key.clone())
    }

    /// Replaces all identities after a (re)list; returns cache keys of identities gone.
    pub fn replace_identities(&self, list: &[AzureIdentity]) -> Vec<CacheKey> {
        let fresh: HashMap<NsName, Arc<ResolvedIdentity>> = list
            .iter()
            .map(|i| (ns_name(i), Self::resolved(i)))
            .collect();
        let old = std::mem::replace(&mut self.write().identities, fresh);
        self.identities_synced.store(true, Ordering::Release);
        self.bump();
        let inner = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        old.into_iter()
            .filter(|(k, v)| inner.identities.get(k).is_none_or(|n| n.spec != v.spec))
            .map(|(_, v)| v.cache_key.clone())
            .collect()
    }

    /// Records a binding added or changed.
    pub fn apply_binding(&self, b: &AzureIdentityBinding) {
        let (ns, name) = ns_name(b);
        self.write().bindings.entry(ns).or_default().insert(
            name,
            (b.spec.selector.clone(), b.spec.azure_identity.clone()),
        );
        self.bump();
    }

    /// Records a binding's deletion.
    pub fn delete_binding(&self, b: &AzureIdentityBinding) {
        let (ns, name) = ns_name(b);
        if let Some(m) = self.write().bindings.get_mut(&ns) {
            m.remove(&name);
        }
        self.bump();
    }

    /// Replaces all bindings after a (re)list.
    pub fn replace_bindings(&self, list: &[AzureIdentityBinding]) {
        let mut fresh: HashMap<String, HashMap<String, (String, String)>> = HashMap::new();
        for b in list {
            let (ns, name) = ns_name(b);
            fresh.entry(ns).or_default().insert(
                name,
                (b.spec.selector.clone(), b.spec.azure_identity.clone()),
            );
        }
        self.write().bindings = fresh;
        self.bindings_synced.store(true, Ordering::Release);
        self.bump();
    }

    /// The identities bound to `pod`: bindings of the pod's namespace whose selector equals the
    /// pod's `aadpodidbinding` label, and the same-namespace identities they name. Sorted.
    #[must_use]
    pub fn resolve(&self, pod: &PodInfo) -> Vec<Arc<ResolvedIdentity>> {
        let Some(selector) = pod.selector() else {
            return Vec::new();
        };
        let inner = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(bindings) = inner.bindings.get(&*pod.namespace) else {
            return Vec::new();
        };
        let mut out: Vec<Arc<ResolvedIdentity>> = bindings
            .values()
            .filter(|(sel, _)| sel == selector)
            .filter_map(|(_, id)| {
                inner
                    .identities
                    .get(&(pod.namespace.to_string(), id.clone()))
                    .cloned()
            })
            .collect();
        drop(inner);
        sort_identities(&mut out);
        out.dedup_by(|a, b| a.cache_key == b.cache_key && a.identity_name == b.identity_name);
        out
    }

    /// A receiver woken on every catalog change.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Marks the identities as no longer in sync (their watch broke).
    pub fn mark_identities_unsynced(&self) {
        self.identities_synced.store(false, Ordering::Release);
    }

    /// Marks the bindings as no longer in sync (their watch broke).
    pub fn mark_bindings_unsynced(&self) {
        self.bindings_synced.store(false, Ordering::Release);
    }

    /// True once both lists are in.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.identities_synced.load(Ordering::Acquire)
            && self.bindings_synced.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::nmi::identity::fixtures::identity;
    use crate::actors::nmi::pods::fixtures::pod;
    use crate::crd::AzureIdentityBindingSpec;

    fn binding(ns: &str, name: &str, identity: &str, selector: &str) -> AzureIdentityBinding {
        let mut b = AzureIdentityBinding::new(
            name,
            AzureIdentityBindingSpec {
                azure_identity: identity.into(),
                selector: selector.into(),
                weight: 0,
            },
        );
        b.metadata.namespace = Some(ns.into());
        b
    }

    fn info(ns: &str, name: &str, sel: &str) -> PodInfo {
        PodInfo::from_pod(&pod(ns, name).ip("127.0.0.2").label(sel).build(), "node-1").unwrap()
    }

    #[test]
    fn a_pod_gets_the_identities_its_label_binds_in_its_own_namespace() {
        let cat = ManagedCatalog::new();
        cat.apply_identity(&identity("a", "id1", "c1"));
        cat.apply_identity(&identity("b", "id2", "c2"));
        cat.apply_binding(&binding("a", "b1", "id1", "web"));
        cat.apply_binding(&binding("a", "b2", "id2", "web"));
        cat.apply_binding(&binding("b", "b3", "id2", "web"));
        let ids = cat.resolve(&info("a", "p", "web"));
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].identity_name, "id1");
        assert!(cat.resolve(&info("a", "p", "other")).is_empty());
        assert_eq!(cat.resolve(&info("b", "p", "web"))[0].identity_name, "id2");
    }

    #[test]
    fn changes_wake_subscribers_and_deleted_identities_report_their_key() {
        let cat = ManagedCatalog::new();
        let rx = cat.subscribe();
        let v0 = *rx.borrow();
        cat.apply_identity(&identity("a", "id1", "c1"));
        assert!(*rx.borrow() > v0);
        assert_eq!(
            cat.delete_identity(&identity("a", "id1", "c1"))
                .as_ref()
                .map(CacheKey::as_str),
            Some("msi/c1")
        );
        assert!(!cat.is_synced());
        cat.replace_bindings(&[]);
        cat.replace_identities(&[]);
        assert!(cat.is_synced());
    }
}
