//! The pod watcher and the catalog watcher: [`kube_watch`] streams turned into messages.
//!
//! A relist (start-up, or after a lost watch / 410 Gone) is delivered as one
//! [`Observed::Relisted`] holding every object, so receivers replace their copy and nothing
//! deleted while the watch was down survives.
//!
//! Pods and nodes are trimmed to what the matcher reads ([`trim_pod`], [`trim_node`]) as each
//! list page and watch event arrives: a relist of a 100 000-pod cluster then holds 100 000
//! small pods rather than 100 000 whole ones (their containers, volumes, conditions, ...).

use crate::crd::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, POD_LABEL};
use crate::kube_watch;
use actix::prelude::*;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod, PodSpec, PodStatus};
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

fn watch<K>(
    api: Api<K>,
    config: kube_watch::Config,
    trim: fn(&mut K),
) -> impl Stream<Item = Observed<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    observe(kube_watch::watch_trimmed(api, config, trim))
}

fn keep_whole<K>(_: &mut K) {}

/// Keeps of a pod what the matcher reads: namespace, name, uid, resourceVersion, deletion
/// timestamp, the `aadpodidbinding` label, the node and the phase.
pub fn trim_pod(pod: &mut Pod) {
    let m = std::mem::take(&mut pod.metadata);
    pod.metadata = ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        deletion_timestamp: m.deletion_timestamp,
        labels: m
            .labels
            .and_then(|mut l| l.remove_entry(POD_LABEL))
            .map(|(k, v)| [(k, v)].into()),
        ..ObjectMeta::default()
    };
    let node_name = pod.spec.take().and_then(|s| s.node_name);
    pod.spec = node_name.map(|n| PodSpec {
        node_name: Some(n),
        ..PodSpec::default()
    });
    let phase = pod.status.take().and_then(|s| s.phase);
    pod.status = phase.map(|p| PodStatus {
        phase: Some(p),
        ..PodStatus::default()
    });
}

/// Keeps of a node its name, resourceVersion and providerID (the matcher's host of its pods).
pub fn trim_node(node: &mut Node) {
    let m = std::mem::take(&mut node.metadata);
    node.metadata = ObjectMeta {
        name: m.name,
        resource_version: m.resource_version,
        ..ObjectMeta::default()
    };
    let provider_id = node.spec.take().and_then(|s| s.provider_id);
    node.spec = Some(NodeSpec {
        provider_id,
        ..NodeSpec::default()
    });
    node.status = None;
}

/// Runs every watch MIC needs until the receivers are gone, forwarding to `to`.
pub async fn run(client: Client, to: Recipient<CatalogEvent>) {
    let pods = watch(
        Api::<Pod>::all(client.clone()),
        kube_watch::Config::default().labels(POD_LABEL),
        trim_pod,
    )
    .map(CatalogEvent::Pod);
    let identities = watch(
        Api::<AzureIdentity>::all(client.clone()),
        kube_watch::Config::default(),
        keep_whole,
    )
    .map(CatalogEvent::Identity);
    let bindings = watch(
        Api::<AzureIdentityBinding>::all(client.clone()),
        kube_watch::Config::default(),
        keep_whole,
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
        keep_whole,
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
    fn a_trimmed_pod_keeps_what_the_matcher_reads_and_drops_the_rest() {
        let p = whole("p1", "sel", "ss0-0", "Running");
        let mut t = p.clone();
        trim_pod(&mut t);
        assert_eq!(t.metadata.name, p.metadata.name);
        assert_eq!(t.metadata.uid, p.metadata.uid);
        assert_eq!(t.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(
            t.metadata.labels,
            Some([(POD_LABEL.to_string(), "sel".to_string())].into())
        );
        assert!(t.metadata.annotations.is_none());
        let spec = t.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("ss0-0"));
        assert!(spec.containers.is_empty());
        let status = t.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(status.conditions.is_none());

        // The matcher decides the same for whole and trimmed pods, finished or not.
        for (name, phase) in [("p1", "Running"), ("p2", "Succeeded"), ("p3", "Pending")] {
            let ix = |trim: bool| {
                let mut ix = BindingIndex::new(MatchSettings::default());
                ix.apply_node(&vmss_node("ss0", 0));
                ix.apply_identity(&identity("id1").build());
                ix.apply_binding(&binding("b1", "id1", "sel").build());
                let mut p = whole(name, "sel", "ss0-0", phase);
                if trim {
                    trim_pod(&mut p);
                }
                ix.apply_pod(&p);
                ix.desired()
            };
            let (a, b) = (ix(false), ix(true));
            assert_eq!(a.assignments, b.assignments, "{phase}");
            assert_eq!(a.hosts, b.hosts, "{phase}");
        }
    }

    #[test]
    fn an_unscheduled_pod_stays_unscheduled_and_a_trimmed_node_keeps_its_host() {
        let mut p = pod("p1").label("sel").build();
        p.spec.get_or_insert_default().node_name = None;
        trim_pod(&mut p);
        assert!(p.spec.and_then(|s| s.node_name).is_none());

        let n = vmss_node("ss0", 3);
        let mut t = n.clone();
        t.metadata.labels = Some([("kubernetes.io/os".to_string(), "linux".to_string())].into());
        trim_node(&mut t);
        assert_eq!(t.metadata.name, n.metadata.name);
        assert!(t.metadata.labels.is_none());
        assert_eq!(
            t.spec.and_then(|s| s.provider_id),
            n.spec.and_then(|s| s.provider_id)
        );
    }
}
