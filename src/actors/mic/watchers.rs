//! The pod watcher and the catalog watcher: [`kube_watch`] streams turned into messages.
//!
//! A relist (start-up, or after a lost watch / 410 Gone) is delivered as one
//! [`Observed::Relisted`] holding every object, so receivers replace their copy and nothing
//! deleted while the watch was down survives.

use crate::crd::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, POD_LABEL};
use crate::kube_watch;
use actix::prelude::*;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use tracing::{info, warn};

/// One change seen by a watch.
#[derive(Debug, Clone)]
pub enum Observed<K> {
    /// Added or modified.
    Applied(Box<K>),
    /// Deleted.
    Deleted(Box<K>),
    /// Complete list after a (re)start of the watch.
    Relisted(Vec<K>),
}

/// A change to anything the matcher reads.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum CatalogEvent {
    /// Pods labelled `aadpodidbinding`.
    Pod(Observed<Pod>),
    /// AzureIdentity objects.
    Identity(Observed<AzureIdentity>),
    /// AzureIdentityBinding objects.
    Binding(Observed<AzureIdentityBinding>),
    /// Nodes.
    Node(Observed<Node>),
    /// AzureAssignedIdentity objects.
    Assigned(Observed<AzureAssignedIdentity>),
}

/// Turns a [`kube_watch`] stream into [`Observed`] values; losses are only logged (the next
/// [`Observed::Relisted`] repairs whatever they missed).
pub fn observe<K, S>(stream: S) -> impl Stream<Item = Observed<K>>
where
    S: Stream<Item = kube_watch::Event<K>>,
{
    stream.filter_map(|ev| {
        let out = match ev {
            kube_watch::Event::Applied(o) => Some(Observed::Applied(Box::new(o))),
            kube_watch::Event::Deleted(o) => Some(Observed::Deleted(Box::new(o))),
            kube_watch::Event::Listed(list) => Some(Observed::Relisted(list)),
            kube_watch::Event::Lost(e) => {
                warn!(error = %e, "watch failed; relisting");
                None
            }
        };
        std::future::ready(out)
    })
}

fn watch<K>(api: Api<K>, config: kube_watch::Config) -> impl Stream<Item = Observed<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    observe(kube_watch::watch(api, config))
}

/// Runs every watch MIC needs until the receivers are gone, forwarding to `to`.
pub async fn run(client: Client, to: Recipient<CatalogEvent>) {
    let pods = watch(
        Api::<Pod>::all(client.clone()),
        kube_watch::Config::default().labels(POD_LABEL),
    )
    .map(CatalogEvent::Pod);
    let identities = watch(
        Api::<AzureIdentity>::all(client.clone()),
        kube_watch::Config::default(),
    )
    .map(CatalogEvent::Identity);
    let bindings = watch(
        Api::<AzureIdentityBinding>::all(client.clone()),
        kube_watch::Config::default(),
    )
    .map(CatalogEvent::Binding);
    let nodes = watch(
        Api::<Node>::all(client.clone()),
        kube_watch::Config::default(),
    )
    .map(CatalogEvent::Node);
    let assigned = watch(
        Api::<AzureAssignedIdentity>::all(client),
        kube_watch::Config::default(),
    )
    .map(CatalogEvent::Assigned);
    let all = futures::stream::select_all([
        pods.boxed(),
        identities.boxed(),
        bindings.boxed(),
        nodes.boxed(),
        assigned.boxed(),
    ]);
    info!("watching pods, identities, bindings, nodes and assigned identities");
    let mut all = std::pin::pin!(all);
    while let Some(ev) = all.next().await {
        if to.send(ev).await.is_err() {
            return;
        }
    }
}
