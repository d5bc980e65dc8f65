//! The pod watcher and the catalog watcher: kube-runtime watches turned into messages.
//!
//! A relist (start-up, or after a lost watch / 410 Gone) is delivered as one
//! [`Observed::Relisted`] holding every object, so receivers replace their copy and nothing
//! deleted while the watch was down survives.

use crate::crd::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, POD_LABEL};
use actix::prelude::*;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::{WatchStreamExt, watcher};
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

/// Turns a watcher stream into [`Observed`] values, buffering a relist until it is complete.
pub fn observe<K, S>(stream: S) -> impl Stream<Item = Observed<K>>
where
    K: Clone + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let mut buffer: Vec<K> = Vec::new();
    stream.filter_map(move |ev| {
        let out = match ev {
            Ok(watcher::Event::Apply(o)) => Some(Observed::Applied(Box::new(o))),
            Ok(watcher::Event::Delete(o)) => Some(Observed::Deleted(Box::new(o))),
            Ok(watcher::Event::Init) => {
                buffer.clear();
                None
            }
            Ok(watcher::Event::InitApply(o)) => {
                buffer.push(o);
                None
            }
            Ok(watcher::Event::InitDone) => Some(Observed::Relisted(std::mem::take(&mut buffer))),
            Err(e) => {
                // The watcher retries with backoff and relists; we only say so.
                warn!(error = %e, "watch failed; retrying");
                None
            }
        };
        std::future::ready(out)
    })
}

fn watch<K>(api: Api<K>, config: watcher::Config) -> impl Stream<Item = Observed<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    observe(watcher(api, config).default_backoff())
}

/// Runs every watch MIC needs until the receivers are gone, forwarding to `to`.
pub async fn run(client: Client, to: Recipient<CatalogEvent>) {
    let pods = watch(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(POD_LABEL),
    )
    .map(CatalogEvent::Pod);
    let identities = watch(
        Api::<AzureIdentity>::all(client.clone()),
        watcher::Config::default(),
    )
    .map(CatalogEvent::Identity);
    let bindings = watch(
        Api::<AzureIdentityBinding>::all(client.clone()),
        watcher::Config::default(),
    )
    .map(CatalogEvent::Binding);
    let nodes =
        watch(Api::<Node>::all(client.clone()), watcher::Config::default()).map(CatalogEvent::Node);
    let assigned = watch(
        Api::<AzureAssignedIdentity>::all(client),
        watcher::Config::default(),
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
