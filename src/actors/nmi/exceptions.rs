//! AzurePodIdentityExceptions by namespace: pods they match get the node's own token.
//! Written only by the exception watcher.

use super::pods::PodInfo;
use crate::crd::AzurePodIdentityException;
use dashmap::DashMap;
use kube::ResourceExt;
use std::sync::atomic::{AtomicBool, Ordering};

/// Exceptions of every namespace.
#[derive(Default)]
pub struct ExceptionIndex {
    by_ns: DashMap<String, Vec<AzurePodIdentityException>>,
    synced: AtomicBool,
}

impl ExceptionIndex {
    /// An empty index.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an exception added or changed.
    pub fn apply(&self, e: &AzurePodIdentityException) {
        let mut list = self
            .by_ns
            .entry(e.namespace().unwrap_or_default())
            .or_default();
        list.retain(|x| x.name_any() != e.name_any());
        list.push(e.clone());
    }

    /// Records an exception's deletion.
    pub fn delete(&self, e: &AzurePodIdentityException) {
        if let Some(mut list) = self.by_ns.get_mut(&e.namespace().unwrap_or_default()) {
            list.retain(|x| x.name_any() != e.name_any());
        }
    }

    /// Replaces everything after a (re)list; marks the index synced.
    pub fn replace_all(&self, list: &[AzurePodIdentityException]) {
        self.by_ns.clear();
        for e in list {
            self.apply(e);
        }
        self.synced.store(true, Ordering::Release);
    }

    /// True when an exception of the pod's namespace matches the pod's labels.
    #[must_use]
    pub fn excepts(&self, pod: &PodInfo) -> bool {
        self.by_ns
            .get(&*pod.namespace)
            .is_some_and(|list| list.iter().any(|e| e.matches_labels(&pod.labels)))
    }

    /// Marks the index as no longer in sync (its watch broke); the next full list syncs it again.
    pub fn mark_unsynced(&self) {
        self.synced.store(false, Ordering::Release);
    }

    /// True once the first list is in.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::nmi::pods::fixtures::pod;
    use crate::crd::AzurePodIdentityExceptionSpec;

    fn exception(ns: &str, k: &str, v: &str) -> AzurePodIdentityException {
        let mut e = AzurePodIdentityException::new(
            "exc",
            AzurePodIdentityExceptionSpec {
                pod_labels: [(k.to_string(), v.to_string())].into(),
            },
        );
        e.metadata.namespace = Some(ns.into());
        e
    }

    #[test]
    fn an_exception_applies_only_in_its_namespace() {
        let idx = ExceptionIndex::new();
        idx.apply(&exception("kube-system", "app", "dns"));
        let sys = PodInfo::from_pod(
            &pod("kube-system", "d")
                .ip("127.0.0.2")
                .with_label("app", "dns")
                .build(),
            "node-1",
        )
        .unwrap();
        let other = PodInfo::from_pod(
            &pod("default", "d")
                .ip("127.0.0.3")
                .with_label("app", "dns")
                .build(),
            "node-1",
        )
        .unwrap();
        assert!(idx.excepts(&sys));
        assert!(!idx.excepts(&other));
        idx.delete(&exception("kube-system", "app", "dns"));
        assert!(!idx.excepts(&sys));
    }
}
