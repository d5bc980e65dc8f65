//! What MIC keeps of a pod: [`PodFacts`], the few fields the matcher and the NMI coverage check
//! read, made from each pod as its list page or watch event arrives
//! ([`crate::kube_watch::watch_mapped`]).
//!
//! A `Pod` is about 2 KiB before any of its strings (its spec and status hold dozens of
//! optional fields inline), so a relist of a 100 000-pod cluster held as whole pods costs
//! hundreds of megabytes while it is being read, twice over when two watches read pods. The
//! facts are a fifth of that and carry no containers, volumes or conditions.
//!
//! [`PodView`] is what the readers ask of a pod; both `Pod` (tests, fixtures) and [`PodFacts`]
//! answer it, so the decisions are written once.

use crate::crd::POD_LABEL;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use std::borrow::Cow;

/// The parts of a pod MIC reads (besides its metadata).
pub trait PodView: Resource<DynamicType = ()> {
    /// The node it is scheduled on.
    fn node_name(&self) -> Option<&str>;
    /// Its phase (`Pending`, `Running`, `Succeeded`, `Failed`).
    fn phase(&self) -> Option<&str>;
}

impl PodView for Pod {
    fn node_name(&self) -> Option<&str> {
        self.spec.as_ref()?.node_name.as_deref()
    }

    fn phase(&self) -> Option<&str> {
        self.status.as_ref()?.phase.as_deref()
    }
}

/// A pod reduced to namespace, name, uid, resourceVersion, deletion timestamp, its
/// `aadpodidbinding` label, node and phase.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodFacts {
    /// The pod's metadata, with only the fields named above.
    pub metadata: ObjectMeta,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `status.phase`.
    pub phase: Option<String>,
}

impl From<Pod> for PodFacts {
    fn from(pod: Pod) -> Self {
        let m = pod.metadata;
        Self {
            metadata: ObjectMeta {
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
            },
            node_name: pod.spec.and_then(|s| s.node_name),
            phase: pod.status.and_then(|s| s.phase),
        }
    }
}

impl PodView for PodFacts {
    fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    fn phase(&self) -> Option<&str> {
        self.phase.as_deref()
    }
}

/// The API resource is the pod's: `kube` needs this to key and report the facts as it would
/// the pod.
impl Resource for PodFacts {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Pod::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Pod::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Pod::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        Pod::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Pod::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt as _;

    #[test]
    fn the_facts_are_much_smaller_than_a_pod() {
        // The reason this type exists; a regression here undoes the 100k-pod memory figure.
        assert!(
            std::mem::size_of::<PodFacts>() * 3 < std::mem::size_of::<Pod>(),
            "{} vs {}",
            std::mem::size_of::<PodFacts>(),
            std::mem::size_of::<Pod>()
        );
    }

    #[test]
    fn a_pod_and_its_facts_read_the_same() {
        let mut p = crate::actors::fixtures::pod("ns1", "p1")
            .label("sel")
            .on_node("n1")
            .build();
        p.metadata.resource_version = Some("7".into());
        p.metadata
            .labels
            .get_or_insert_default()
            .insert("app".into(), "web".into());
        p.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
        let f = PodFacts::from(p.clone());
        assert_eq!(f.name_any(), p.name_any());
        assert_eq!(f.namespace(), p.namespace());
        assert_eq!(f.uid(), p.uid());
        assert_eq!(f.resource_version().as_deref(), Some("7"));
        assert_eq!(f.labels().get(POD_LABEL), p.labels().get(POD_LABEL));
        assert_eq!(f.labels().len(), 1, "only the binding label is kept");
        assert!(f.annotations().is_empty());
        assert_eq!(PodView::node_name(&f), PodView::node_name(&p));
        assert_eq!(PodView::phase(&f), PodView::phase(&p));
        assert_eq!(f.meta().deletion_timestamp, p.meta().deletion_timestamp);
    }
}
