//! The watch loops that feed NMI's indexes: pods of this node, AzureAssignedIdentities labelled
//! with this node, AzurePodIdentityExceptions, and (managed mode) bindings and identities.
//!
//! Each loop is the only writer of its index. A (re)list is buffered and swapped in whole at
//! `InitDone`, so a restart or a lost watch leaves nothing stale; watch errors back off and retry.

use super::assignments::AssignmentIndex;
use super::cache::TokenCache;
use super::exceptions::ExceptionIndex;
use super::managed::ManagedCatalog;
use super::pods::PodIndex;
use crate::crd::{
    AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException,
    NODENAME_LABEL,
};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;

/// What a watch loop does with its events.
pub(crate) trait Sink<K> {
    fn apply(&self, obj: &K);
    fn delete(&self, obj: &K);
    fn replace(&self, list: &[K]);
}

async fn drive<K, S>(
    api: Api<K>,
    config: watcher::Config,
    sink: S,
    what: &'static str,
    errors: Option<prometheus::IntCounter>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    S: Sink<K>,
{
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut buffer: Vec<K> = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(o)) => sink.apply(&o),
            Ok(Event::Delete(o)) => sink.delete(&o),
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(o)) => buffer.push(o),
            Ok(Event::InitDone) => {
                sink.replace(&buffer);
                tracing::debug!(watch = what, objects = buffer.len(), "list synced");
                buffer.clear();
            }
            Err(e) => {
                if let Some(c) = &errors {
                    c.inc();
                }
                tracing::warn!(watch = what, error = %e, "watch failed; retrying with backoff")
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
}

pub(crate) struct Assigned(pub(crate) Arc<AssignmentIndex>, pub(crate) Arc<TokenCache>);
impl Assigned {
    fn forget(&self, gone: Vec<Arc<str>>) {
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
}

/// Watches this node's pods (`spec.nodeName=<node>`) into `index`, counting failed lists and
/// watches in `errors` (the original's `kubernetes_api_operations_errors_count{operation_type="get_pod_list"}`).
pub async fn watch_pods(
    client: Client,
    node: String,
    index: Arc<PodIndex>,
    errors: Option<prometheus::IntCounter>,
) {
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    drive(Api::<Pod>::all(client), config, Pods(index), "pods", errors).await;
}

/// Watches AzureAssignedIdentities labelled `nodename=<node>` into `index`, dropping cached
/// tokens of identities no longer assigned on the node.
pub async fn watch_assigned(
    client: Client,
    node: String,
    index: Arc<AssignmentIndex>,
    cache: Arc<TokenCache>,
) {
    let config = watcher::Config::default().labels(&format!("{NODENAME_LABEL}={node}"));
    drive(
        Api::<AzureAssignedIdentity>::all(client),
        config,
        Assigned(index, cache),
        "azureassignedidentities",
        None,
    )
    .await;
}

/// Watches AzurePodIdentityExceptions of every namespace into `index`.
pub async fn watch_exceptions(client: Client, index: Arc<ExceptionIndex>) {
    drive(
        Api::<AzurePodIdentityException>::all(client),
        watcher::Config::default(),
        Exceptions(index),
        "azurepodidentityexceptions",
        None,
    )
    .await;
}

/// Watches AzureIdentities and AzureIdentityBindings (managed mode) into `catalog`.
pub async fn watch_catalog(client: Client, catalog: Arc<ManagedCatalog>, cache: Arc<TokenCache>) {
    let identities = drive(
        Api::<AzureIdentity>::all(client.clone()),
        watcher::Config::default(),
        Identities(Arc::clone(&catalog), cache),
        "azureidentities",
        None,
    );
    let bindings = drive(
        Api::<AzureIdentityBinding>::all(client),
        watcher::Config::default(),
        Bindings(catalog),
        "azureidentitybindings",
        None,
    );
    futures::join!(identities, bindings);
}
