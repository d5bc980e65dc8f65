//! The pod watcher and the catalog watcher: [`kube_watch`] streams turned into messages.
//!
//! A relist (start-up, or after a lost watch / 410 Gone) is delivered as one
//! [`Observed::Relisted`] holding every object, so receivers replace their copy and nothing
//! deleted while the watch was down survives.
//!
//! Pods become [`PodFacts`] and nodes are trimmed to their providerID ([`trim_node`]) as each
//! list page and watch event arrives: a relist of a 100 000-pod cluster then holds 100 000
//! small values rather than 100 000 whole pods (about 2 KiB each before their strings).

use super::pod_facts::PodFacts;
use crate::crd::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, POD_LABEL};
use crate::kube_watch;
use actix::prelude::*;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
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
    /// Pods labelled `aadpodidbinding` (what the matcher reads of them).
    Pod(Observed<PodFacts>),
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

fn watch<K, T>(
    api: Api<K>,
    config: kube_watch::Config,
    map: fn(K) -> T,
) -> impl Stream<Item = Observed<T>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Resource + Clone + Send + 'static,
{
    observe(kube_watch::watch_mapped(api, config, map))
}

/// Keeps of a node its name, resourceVersion and providerID (the matcher's host of its pods).
pub fn trim_node(node: Node) -> Node {
    Node {
        metadata: ObjectMeta {
            name: node.metadata.name,
            resource_version: node.metadata.resource_version,
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            provider_id: node.spec.and_then(|s| s.provider_id),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

/// Runs every watch MIC needs until the receivers are gone, forwarding to `to`.
pub async fn run(client: Client, to: Recipient<CatalogEvent>) {
    let pods = watch(
        Api::<Pod>::all(client.clone()),
        kube_watch::Config::default().labels(POD_LABEL),
        PodFacts::from,
    )
    .map(CatalogEvent::Pod);
    let identities = watch(
        Api::<AzureIdentity>::all(client.clone()),
        kube_watch::Config::default(),
        std::convert::identity,
    )
    .map(CatalogEvent::Identity);
    let bindings = watch(
        Api::<AzureIdentityBinding>::all(client.clone()),
        kube_watch::Config::default(),
        std::convert::identity,
    )
    .map(CatalogEvent::Binding);
    let nodes = watch(
        Api::<Node>::all(client.clone()),
        kube_watch::Config::default(),
        trim_node,
    )
    .map(CatalogEvent::Node);
    let assigned = watch(
        Api::<AzureAssignedIdentity>::all(client),
        kube_watch::Config::default(),
        std::convert::identity,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::mic::fixtures::{binding, identity, pod, vmss_node};
    use crate::actors::mic::matcher::{BindingIndex, MatchSettings};
    use k8s_openapi::api::core::v1::{Container, PodCondition};

    /// A pod as the API returns it: containers, conditions, other labels and annotations.
    fn whole(name: &str, selector: &str, node: &str, phase: &str) -> Pod {
        let mut p = pod(name).label(selector).on_node(node).build();
        p.metadata.resource_version = Some("42".into());
        p.metadata
            .labels
            .get_or_insert_default()
            .insert("app".into(), "web".into());
        p.metadata.annotations = Some([("note".to_string(), "x".repeat(500))].into());
        let spec = p.spec.get_or_insert_default();
        spec.containers = vec![Container {
            name: "app".into(),
            image: Some("app:1".into()),
            ..Container::default()
        }];
        let status = p.status.get_or_insert_default();
        status.phase = Some(phase.into());
        status.conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..PodCondition::default()
        }]);
        p
    }

    #[test]
    fn the_matcher_decides_the_same_from_a_pods_facts_as_from_the_pod() {
        for (name, phase) in [("p1", "Running"), ("p2", "Succeeded"), ("p3", "Pending")] {
            let seeded = || {
                let mut ix = BindingIndex::new(MatchSettings::default());
                ix.apply_node(&trim_node(vmss_node("ss0", 0)));
                ix.apply_identity(&identity("id1").build());
                ix.apply_binding(&binding("b1", "id1", "sel").build());
                ix
            };
            let (mut a, mut b) = (seeded(), seeded());
            let p = whole(name, "sel", "ss0-0", phase);
            a.apply_pod(&p);
            b.apply_pod(&PodFacts::from(p));
            let (a, b) = (a.desired(), b.desired());
            assert_eq!(a.assignments, b.assignments, "{phase}");
            assert_eq!(a.hosts, b.hosts, "{phase}");
        }
    }

    #[test]
    fn a_trimmed_node_keeps_its_name_and_provider_id() {
        let n = vmss_node("ss0", 3);
        let mut t = n.clone();
        t.metadata.labels = Some([("kubernetes.io/os".to_string(), "linux".to_string())].into());
        let t = trim_node(t);
        assert_eq!(t.metadata.name, n.metadata.name);
        assert!(t.metadata.labels.is_none());
        assert_eq!(
            t.spec.and_then(|s| s.provider_id),
            n.spec.and_then(|s| s.provider_id)
        );
    }
}
