//! The watch loops that feed NMI's indexes: pods of this node, AzureAssignedIdentities labelled
//! with this node, AzurePodIdentityExceptions, and (managed mode) bindings and identities.
//!
//! Each loop is the only writer of its index. A (re)list is buffered and swapped in whole at
//! [`Event::Listed`], so a restart or a lost watch leaves nothing stale. A lost watch marks the
//! index out of sync (NMI is not ready) until [`crate::kube_watch`] has listed again (after its
//! backoff), so readiness returns only once the index holds the API's current state again.
//! Every finished (re)list and every lost watch wakes the `synced` [`Notify`], so whoever waits for the caches to be
//! synced (the node gate) is told without polling.

use super::assignments::AssignmentIndex;
use super::cache::{CacheKey, TokenCache};
use super::exceptions::ExceptionIndex;
use super::managed::ManagedCatalog;
use super::pods::PodIndex;
use crate::crd::{
    AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException,
    NODENAME_LABEL,
};
use crate::kube_watch::{self, Event};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use tokio::sync::Notify;

/// What a watch loop does with its events.
pub(crate) trait Sink<K> {
    fn apply(&self, obj: &K);
    fn delete(&self, obj: &K);
    fn replace(&self, list: &[K]);
    /// The watch broke: the index may miss changes until the next full list.
    fn lost(&self);
}

async fn drive<K, S>(
    api: Api<K>,
    config: kube_watch::Config,
    sink: S,
    what: &'static str,
    synced: Arc<Notify>,
    errors: Option<prometheus::IntCounter>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    S: Sink<K>,
{
    let mut events = std::pin::pin!(kube_watch::watch(api, config));
    while let Some(event) = events.next().await {
        match event {
            Event::Applied(o) => sink.apply(&o),
            Event::Deleted(o) => sink.delete(&o),
            Event::Listed(list) => {
                sink.replace(&list);
                tracing::debug!(watch = what, objects = list.len(), "list synced");
                synced.notify_waiters();
            }
            Event::Lost(e) => {
                if let Some(c) = &errors {
                    c.inc();
                }
                sink.lost();
                synced.notify_waiters();
                tracing::warn!(watch = what, error = %e, "watch failed; not ready until re-listed");
            }
        }
    }
}

struct Pods(Arc<PodIndex>);
impl Sink<Pod> for Pods {
    fn apply(&self, o: &Pod) {
        self.0.apply(o);
    }
    fn delete(&self, o: &Pod) {
        self.0.delete(o);
    }
    fn replace(&self, l: &[Pod]) {
        self.0.replace_all(l);
    }
    fn lost(&self) {
        self.0.mark_unsynced();
    }
}

pub(crate) struct Assigned(pub(crate) Arc<AssignmentIndex>, pub(crate) Arc<TokenCache>);
impl Assigned {
    fn forget(&self, gone: Vec<CacheKey>) {
        for key in gone {
            self.1.drop_identity(&key);
        }
    }
}
impl Sink<AzureAssignedIdentity> for Assigned {
    fn apply(&self, o: &AzureAssignedIdentity) {
        self.forget(self.0.apply(o));
    }
    fn delete(&self, o: &AzureAssignedIdentity) {
        self.forget(self.0.delete(o));
    }
    fn replace(&self, l: &[AzureAssignedIdentity]) {
        self.forget(self.0.replace_all(l));
    }
    fn lost(&self) {
        self.0.mark_unsynced();
    }
}

struct Exceptions(Arc<ExceptionIndex>);
impl Sink<AzurePodIdentityException> for Exceptions {
    fn apply(&self, o: &AzurePodIdentityException) {
        self.0.apply(o);
    }
    fn delete(&self, o: &AzurePodIdentityException) {
        self.0.delete(o);
    }
    fn replace(&self, l: &[AzurePodIdentityException]) {
        self.0.replace_all(l);
    }
    fn lost(&self) {
        self.0.mark_unsynced();
    }
}

struct Identities(Arc<ManagedCatalog>, Arc<TokenCache>);
impl Sink<AzureIdentity> for Identities {
    fn apply(&self, o: &AzureIdentity) {
        if let Some(k) = self.0.apply_identity(o) {
            self.1.drop_identity(&k);
        }
    }
    fn delete(&self, o: &AzureIdentity) {
        if let Some(k) = self.0.delete_identity(o) {
            self.1.drop_identity(&k);
        }
    }
    fn replace(&self, l: &[AzureIdentity]) {
        for k in self.0.replace_identities(l) {
            self.1.drop_identity(&k);
        }
    }
    fn lost(&self) {
        self.0.mark_identities_unsynced();
    }
}

struct Bindings(Arc<ManagedCatalog>);
impl Sink<AzureIdentityBinding> for Bindings {
    fn apply(&self, o: &AzureIdentityBinding) {
        self.0.apply_binding(o);
    }
    fn delete(&self, o: &AzureIdentityBinding) {
        self.0.delete_binding(o);
    }
    fn replace(&self, l: &[AzureIdentityBinding]) {
        self.0.replace_bindings(l);
    }
    fn lost(&self) {
        self.0.mark_bindings_unsynced();
    }
}

/// Watches this node's pods (`spec.nodeName=<node>`) into `index`, counting failed lists and
/// watches in `errors` (the original's `kubernetes_api_operations_errors_count{operation_type="get_pod_list"}`).
pub async fn watch_pods(
    client: Client,
    node: String,
    index: Arc<PodIndex>,
    synced: Arc<Notify>,
    errors: Option<prometheus::IntCounter>,
) {
    let config = kube_watch::Config::default().fields(&format!("spec.nodeName={node}"));
    drive(
        Api::<Pod>::all(client),
        config,
        Pods(index),
        "pods",
        synced,
        errors,
    )
    .await;
}

/// Watches AzureAssignedIdentities labelled `nodename=<node>` into `index`, dropping cached
/// tokens of identities no longer assigned on the node.
pub async fn watch_assigned(
    client: Client,
    node: String,
    index: Arc<AssignmentIndex>,
    cache: Arc<TokenCache>,
    synced: Arc<Notify>,
) {
    let config = kube_watch::Config::default().labels(&format!("{NODENAME_LABEL}={node}"));
    drive(
        Api::<AzureAssignedIdentity>::all(client),
        config,
        Assigned(index, cache),
        "azureassignedidentities",
        synced,
        None,
    )
    .await;
}

/// Watches AzurePodIdentityExceptions of every namespace into `index`.
pub async fn watch_exceptions(client: Client, index: Arc<ExceptionIndex>, synced: Arc<Notify>) {
    drive(
        Api::<AzurePodIdentityException>::all(client),
        kube_watch::Config::default(),
        Exceptions(index),
        "azurepodidentityexceptions",
        synced,
        None,
    )
    .await;
}

/// Watches AzureIdentities and AzureIdentityBindings (managed mode) into `catalog`.
pub async fn watch_catalog(
    client: Client,
    catalog: Arc<ManagedCatalog>,
    cache: Arc<TokenCache>,
    synced: Arc<Notify>,
) {
    let identities = drive(
        Api::<AzureIdentity>::all(client.clone()),
        kube_watch::Config::default(),
        Identities(Arc::clone(&catalog), cache),
        "azureidentities",
        Arc::clone(&synced),
        None,
    );
    let bindings = drive(
        Api::<AzureIdentityBinding>::all(client),
        kube_watch::Config::default(),
        Bindings(catalog),
        "azureidentitybindings",
        synced,
        None,
    );
    futures::join!(identities, bindings);
}
