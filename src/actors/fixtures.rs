//! The one test pod builder of MIC and NMI, chained: `pod("ns", "name").ip("127.1.0.2").on_node("n1")`.
//!
//! MIC's and NMI's fixture modules start from it with their own defaults (MIC's pods are in
//! `default` and unscheduled; NMI's run on `node-1`).

use crate::crd::POD_LABEL;
use k8s_openapi::api::core::v1::{Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

/// A Running pod under construction.
pub struct PodBuilder(pub Pod);

/// A Running, unscheduled pod `ns/name` with uid `uid-<ns>-<name>`.
pub fn pod(ns: &str, name: &str) -> PodBuilder {
    PodBuilder(Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{ns}-{name}")),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec::default()),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            ..PodStatus::default()
        }),
    })
}

impl PodBuilder {
    /// Moves the pod to namespace `ns` (and its uid with it).
    pub fn ns(mut self, ns: &str) -> Self {
        let name = self.0.metadata.name.clone().unwrap_or_default();
        self.0.metadata.uid = Some(format!("uid-{ns}-{name}"));
        self.0.metadata.namespace = Some(ns.into());
        self
    }
    /// Labels the pod `aadpodidbinding=<selector>`.
    pub fn label(self, selector: &str) -> Self {
        self.with_label(POD_LABEL, selector)
    }
    /// Any label.
    pub fn with_label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_default()
            .insert(k.into(), v.into());
        self
    }
    /// The pod's IP (`status.podIP` and `podIPs`).
    pub fn ip(mut self, ip: &str) -> Self {
        let st = self.0.status.as_mut().unwrap();
        st.pod_ip = Some(ip.into());
        st.pod_ips = Some(vec![PodIP { ip: ip.into() }]);
        self
    }
    /// Scheduled on `node`.
    pub fn on_node(mut self, node: &str) -> Self {
        self.0.spec.as_mut().unwrap().node_name = Some(node.into());
        self
    }
    /// `status.phase`.
    pub fn phase(mut self, phase: &str) -> Self {
        self.0.status.as_mut().unwrap().phase = Some(phase.into());
        self
    }
    /// Owned by ReplicaSet `rs`.
    pub fn owned_by_replicaset(mut self, rs: &str) -> Self {
        self.0.metadata.owner_references = Some(vec![OwnerReference {
            kind: "ReplicaSet".into(),
            name: rs.into(),
            api_version: "apps/v1".into(),
            uid: "rs".into(),
            ..OwnerReference::default()
        }]);
        self
    }
    /// `spec.serviceAccountName`.
    pub fn service_account(mut self, sa: &str) -> Self {
        self.0.spec.as_mut().unwrap().service_account_name = Some(sa.into());
        self
    }
    /// `spec.hostNetwork: true`.
    pub fn host_network(mut self) -> Self {
        self.0.spec.as_mut().unwrap().host_network = Some(true);
        self
    }
    /// Another uid.
    pub fn uid(mut self, uid: &str) -> Self {
        self.0.metadata.uid = Some(uid.into());
        self
    }
    /// Being deleted (`deletionTimestamp` set).
    pub fn terminating(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        self
    }
    /// The pod.
    pub fn build(self) -> Pod {
        self.0
    }
}
