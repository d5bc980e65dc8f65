//! The binding matcher: pods × bindings × identities × nodes → desired assignments.
//!
//! Plain data, no I/O: watchers `apply`/`delete` objects, and [`BindingIndex::desired`] says
//! which AzureAssignedIdentity objects should exist, which identities each VM or scale set
//! needs, and which matches were refused and why (so the writer can put an Event on the pod).
//! Everything downstream is level-triggered on this output, so a relist or a restart only has
//! to feed the index again.

use super::host::{HostId, IdentityId, ProviderIdError, host_of_provider_id};
use super::pod_facts::PodView;
use crate::crd::{
    AzureIdentity, AzureIdentityBinding, IdentityType, POD_LABEL, ResourceIdError,
    assigned_identity_name, parse_identity_resource_id,
};
use crate::object_key::ObjectKey;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

/// Matching rules that come from flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchSettings {
    /// Every identity is namespaced (`--forceNamespaced`, true by default here).
    pub force_namespaced: bool,
    /// Client ids never removed from a host (`--immutable-user-msis` plus the cluster identity).
    pub immutable_client_ids: BTreeSet<String>,
}

impl Default for MatchSettings {
    fn default() -> Self {
        Self {
            force_namespaced: true,
            immutable_client_ids: BTreeSet::new(),
        }
    }
}

/// What MIC must do on Azure for one assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A user-assigned identity that must be on the host's identity list.
    Msi {
        /// VM or scale set of the pod's node.
        host: HostId,
        /// The identity's resource id.
        id: IdentityId,
    },
    /// A service principal: nothing to assign, the object is Assigned at once.
    ServicePrincipal,
    /// A federated identity (`aadpodidentity.k8s.io/federated: "true"`): NMI exchanges the
    /// pod's service-account token at Azure AD, so nothing is assigned to any VM or scale set
    /// and the object is Assigned at once. It never reaches an assigner.
    Federated,
}

/// One AzureAssignedIdentity that should exist.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// Namespace and name of the AzureAssignedIdentity.
    pub key: ObjectKey,
    /// The pod.
    pub pod: ObjectKey,
    /// The pod's uid (Events are attached to it).
    pub pod_uid: String,
    /// The pod's node.
    pub node: String,
    /// The identity, embedded in the object as the original does (shared by every assignment
    /// of it: a cluster's worth of assignments costs one copy per identity).
    pub identity: Arc<AzureIdentity>,
    /// The binding that matched (shared likewise).
    pub binding: Arc<AzureIdentityBinding>,
    /// What it needs on Azure.
    pub target: Target,
}

/// Why a pod did not get an identity a binding names: each becomes an Event on the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// Namespaced matching and the binding or identity is in another namespace than the pod.
    CrossNamespace {
        /// The binding.
        binding: ObjectKey,
        /// The identity it names, when found.
        identity: Option<ObjectKey>,
    },
    /// The binding names an identity that does not exist.
    IdentityMissing {
        /// The binding.
        binding: ObjectKey,
        /// Name it refers to.
        identity: String,
    },
    /// A user-assigned identity with an invalid `resourceID`.
    InvalidResourceId {
        /// The identity.
        identity: ObjectKey,
        /// What is wrong.
        error: ResourceIdError,
    },
    /// An identity type MIC does not know.
    UnknownType {
        /// The identity.
        identity: ObjectKey,
        /// The integer written.
        value: i64,
    },
    /// The pod's node has no usable providerID.
    NodeWithoutHost {
        /// The node.
        node: String,
        /// Why.
        error: ProviderIdError,
    },
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CrossNamespace { binding, identity } => {
                write!(
                    f,
                    "binding {binding} was not applied: namespaced matching only applies a binding to pods in its own namespace"
                )?;
                if let Some(i) = identity {
                    write!(f, " (identity {i})")?;
                }
                Ok(())
            }
            Self::IdentityMissing { binding, identity } => write!(
                f,
                "binding {binding} refers to AzureIdentity {identity:?}, which does not exist"
            ),
            Self::InvalidResourceId { identity, error } => {
                write!(f, "AzureIdentity {identity} is invalid: {error}")
            }
            Self::UnknownType { identity, value } => write!(
                f,
                "AzureIdentity {identity} has type {value}; only 0, 1 and 2 are known"
            ),
            Self::NodeWithoutHost { node, error } => {
                write!(f, "node {node} has no Azure VM or scale set: {error}")
            }
        }
    }
}

/// A refused match, to be reported on the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The pod.
    pub pod: ObjectKey,
    /// Its uid.
    pub pod_uid: String,
    /// Why.
    pub reason: RejectReason,
}

/// Everything that should be true, computed from the index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// AzureAssignedIdentity objects that should exist, by their key.
    pub assignments: BTreeMap<ObjectKey, Assignment>,
    /// Identities each known host needs (hosts with none are listed with an empty set, so their
    /// assigners can release what is no longer used).
    pub hosts: BTreeMap<HostId, BTreeSet<IdentityId>>,
    /// Resource ids of identities whose client id is immutable: never removed.
    pub immutable: BTreeSet<IdentityId>,
    /// Refused matches, one per pod and reason.
    pub rejections: Vec<Rejection>,
}

impl Assignment {
    /// True when `other` is for another pod or another identity (the same name meaning a
    /// different object).
    #[must_use]
    pub fn is_other_object(&self, other: &Self) -> bool {
        self.pod != other.pod
            || ObjectKey::of(self.identity.as_ref()) != ObjectKey::of(other.identity.as_ref())
    }

    /// The assignment under a name no other pod and identity can have
    /// ([`crate::crd::unique_assigned_identity_name`]), for when the original's is taken.
    #[must_use]
    pub fn with_unique_name(mut self) -> Self {
        let identity = ObjectKey::of(self.identity.as_ref());
        self.key.name = crate::crd::unique_assigned_identity_name(
            &self.pod.name,
            &self.pod.namespace,
            &identity.namespace,
            &identity.name,
        );
        self
    }

    /// The same assignment: equal fields, the shared identity and binding compared by address
    /// first (a recomputation shares them with the last one unless they changed).
    #[must_use]
    pub fn same_as(&self, other: &Self) -> bool {
        self.key == other.key
            && self.pod == other.pod
            && self.pod_uid == other.pod_uid
            && self.node == other.node
            && self.target == other.target
            && (Arc::ptr_eq(&self.identity, &other.identity) || self.identity == other.identity)
            && (Arc::ptr_eq(&self.binding, &other.binding) || self.binding == other.binding)
    }
}

impl Desired {
    /// The assignments of one pod.
    pub fn for_pod<'a>(&'a self, pod: &'a ObjectKey) -> impl Iterator<Item = &'a Assignment> + 'a {
        self.assignments.values().filter(move |a| &a.pod == pod)
    }
}

/// What the index keeps of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodEntry {
    uid: String,
    node: Option<String>,
    selector: String,
    /// False once Succeeded or Failed: the pod releases its identities.
    active: bool,
}

/// The matching index. Feed it objects; read [`BindingIndex::desired`].
#[derive(Debug, Default)]
pub struct BindingIndex {
    settings: MatchSettings,
    pods: HashMap<ObjectKey, PodEntry>,
    identities: BTreeMap<ObjectKey, Arc<AzureIdentity>>,
    bindings: BTreeMap<ObjectKey, Arc<AzureIdentityBinding>>,
    nodes: BTreeMap<String, Result<HostId, ProviderIdError>>,
}

impl BindingIndex {
    /// An empty index.
    #[must_use]
    pub fn new(settings: MatchSettings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// Adds or replaces a pod (a `Pod`, or the [`PodFacts`](super::pod_facts::PodFacts) MIC's
    /// watch keeps of one). A pod without the label is forgotten.
    pub fn apply_pod(&mut self, pod: &impl PodView) {
        let key = ObjectKey::of(pod);
        let Some(selector) = pod.labels().get(POD_LABEL).cloned() else {
            self.pods.remove(&key);
            return;
        };
        let entry = PodEntry {
            uid: pod.uid().unwrap_or_default(),
            node: pod
                .node_name()
                .filter(|n| !n.is_empty())
                .map(str::to_string),
            selector,
            active: !matches!(pod.phase(), Some("Succeeded" | "Failed")),
        };
        self.pods.insert(key, entry);
    }

    /// Forgets a pod.
    pub fn delete_pod(&mut self, key: &ObjectKey) {
        self.pods.remove(key);
    }

    /// Adds or replaces an identity.
    pub fn apply_identity(&mut self, identity: &AzureIdentity) {
        self.identities
            .insert(ObjectKey::of(identity), Arc::new(identity.clone()));
    }

    /// Forgets an identity.
    pub fn delete_identity(&mut self, key: &ObjectKey) {
        self.identities.remove(key);
    }

    /// Adds or replaces a binding.
    pub fn apply_binding(&mut self, binding: &AzureIdentityBinding) {
        self.bindings
            .insert(ObjectKey::of(binding), Arc::new(binding.clone()));
    }

    /// Forgets a binding.
    pub fn delete_binding(&mut self, key: &ObjectKey) {
        self.bindings.remove(key);
    }

    /// Adds or replaces a node (only its providerID matters).
    pub fn apply_node(&mut self, node: &Node) {
        let pid = node
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .unwrap_or("");
        self.nodes.insert(node.name_any(), host_of_provider_id(pid));
    }

    /// Forgets a node; its pods stop needing anything until it comes back.
    pub fn delete_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// The host of a known node.
    #[must_use]
    pub fn host_of_node(&self, node: &str) -> Option<&HostId> {
        self.nodes.get(node).and_then(|r| r.as_ref().ok())
    }

    /// Host of every node whose providerID names one.
    #[must_use]
    pub fn node_hosts(&self) -> BTreeMap<String, HostId> {
        self.nodes
            .iter()
            .filter_map(|(n, h)| h.as_ref().ok().map(|h| (n.clone(), h.clone())))
            .collect()
    }

    /// Forgets every pod (before a relist is applied).
    pub fn clear_pods(&mut self) {
        self.pods.clear();
    }

    /// Forgets every identity (before a relist is applied).
    pub fn clear_identities(&mut self) {
        self.identities.clear();
    }

    /// Forgets every binding (before a relist is applied).
    pub fn clear_bindings(&mut self) {
        self.bindings.clear();
    }

    /// Forgets every node (before a relist is applied).
    pub fn clear_nodes(&mut self) {
        self.nodes.clear();
    }

    /// Number of labelled pods known.
    #[must_use]
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Computes everything that should be true now.
    #[must_use]
    pub fn desired(&self) -> Desired {
        let mut out = Desired::default();
        for host in self.nodes.values().flatten() {
            out.hosts.entry(host.clone()).or_default();
        }
        for identity in self.identities.values() {
            if self
                .settings
                .immutable_client_ids
                .contains(&identity.spec.client_id)
                && !identity.spec.resource_id.is_empty()
            {
                out.immutable
                    .insert(IdentityId::new(&identity.spec.resource_id));
            }
        }
        let mut by_selector: HashMap<&str, Vec<(&ObjectKey, &Arc<AzureIdentityBinding>)>> =
            HashMap::new();
        for (k, b) in &self.bindings {
            by_selector
                .entry(b.spec.selector.as_str())
                .or_default()
                .push((k, b));
        }
        let mut pods: Vec<_> = self.pods.iter().collect();
        pods.sort_by(|a, b| a.0.cmp(b.0));
        for (pod_key, pod) in pods {
            if !pod.active {
                continue;
            }
            let Some(node) = &pod.node else { continue };
            let Some(candidates) = by_selector.get(pod.selector.as_str()) else {
                continue;
            };
            let mut matched = false;
            let mut refused = Vec::new();
            for (bkey, binding) in candidates {
                match self.match_one(pod_key, pod, node, bkey, binding) {
                    Ok(a) => {
                        matched = true;
                        if let Target::Msi { host, id } = &a.target {
                            out.hosts
                                .entry(host.clone())
                                .or_default()
                                .insert(id.clone());
                        }
                        // The original's name reads the same for pod `a-b` in `c` and `a` in
                        // `b-c`: the later one takes a name of its own.
                        let a = match out.assignments.get(&a.key) {
                            Some(first) if first.is_other_object(&a) => a.with_unique_name(),
                            _ => a,
                        };
                        out.assignments.insert(a.key.clone(), a);
                    }
                    Err(Some(reason)) => refused.push(reason),
                    Err(None) => {}
                }
            }
            for reason in refused {
                // In namespaced mode every namespace may use the same selector; a foreign
                // binding is only worth telling the user about when nothing matched at home.
                if matched && matches!(reason, RejectReason::CrossNamespace { .. }) {
                    continue;
                }
                let r = Rejection {
                    pod: pod_key.clone(),
                    pod_uid: pod.uid.clone(),
                    reason,
                };
                if !out.rejections.contains(&r) {
                    out.rejections.push(r);
                }
            }
        }
        out
    }

    fn find_identity(
        &self,
        binding_ns: &str,
        name: &str,
    ) -> Option<(&ObjectKey, &Arc<AzureIdentity>)> {
        // The identity beside the binding wins; in cluster-wide mode any namespace will do.
        let home = ObjectKey::new(binding_ns, name);
        if let Some(i) = self.identities.get_key_value(&home) {
            return Some(i);
        }
        self.identities.iter().find(|(k, _)| k.name == name)
    }

    fn match_one(
        &self,
        pod_key: &ObjectKey,
        pod: &PodEntry,
        node: &str,
        bkey: &ObjectKey,
        binding: &Arc<AzureIdentityBinding>,
    ) -> Result<Assignment, Option<RejectReason>> {
        let found = if self.settings.force_namespaced {
            self.identities.get_key_value(&ObjectKey::new(
                &bkey.namespace,
                &binding.spec.azure_identity,
            ))
        } else {
            self.find_identity(&bkey.namespace, &binding.spec.azure_identity)
        };
        let Some((ikey, identity)) = found else {
            if self.settings.force_namespaced && bkey.namespace != pod_key.namespace {
                return Err(Some(RejectReason::CrossNamespace {
                    binding: bkey.clone(),
                    identity: None,
                }));
            }
            return Err(Some(RejectReason::IdentityMissing {
                binding: bkey.clone(),
                identity: binding.spec.azure_identity.clone(),
            }));
        };
        let namespaced = self.settings.force_namespaced || identity.has_namespaced_annotation();
        if namespaced && (bkey.namespace != pod_key.namespace || ikey.namespace != bkey.namespace) {
            return Err(Some(RejectReason::CrossNamespace {
                binding: bkey.clone(),
                identity: Some(ikey.clone()),
            }));
        }
        let target = match identity.spec.type_ {
            // Checked first: a federated type-0 identity needs no host and no valid resource id
            // (docs/federation.md says why it should keep one anyway: rollback).
            _ if identity.is_federated() => Target::Federated,
            IdentityType::UserAssignedMsi => {
                if let Err(error) = parse_identity_resource_id(&identity.spec.resource_id) {
                    return Err(Some(RejectReason::InvalidResourceId {
                        identity: ikey.clone(),
                        error,
                    }));
                }
                let host = match self.nodes.get(node) {
                    // The node watcher has not seen it yet; the pod is matched once it has.
                    None => return Err(None),
                    Some(Err(error)) => {
                        return Err(Some(RejectReason::NodeWithoutHost {
                            node: node.to_string(),
                            error: error.clone(),
                        }));
                    }
                    Some(Ok(h)) => h.clone(),
                };
                Target::Msi {
                    host,
                    id: IdentityId::new(&identity.spec.resource_id),
                }
            }
            IdentityType::ServicePrincipal | IdentityType::ServicePrincipalCertificate => {
                Target::ServicePrincipal
            }
            IdentityType::Unknown(value) => {
                return Err(Some(RejectReason::UnknownType {
                    identity: ikey.clone(),
                    value,
                }));
            }
        };
        let aai_ns = if namespaced {
            ikey.namespace.clone()
        } else {
            "default".to_string()
        };
        Ok(Assignment {
            key: ObjectKey {
                namespace: aai_ns,
                name: assigned_identity_name(&pod_key.name, &pod_key.namespace, &ikey.name),
            },
            pod: pod_key.clone(),
            pod_uid: pod.uid.clone(),
            node: node.to_string(),
            identity: identity.clone(),
            binding: binding.clone(),
            target,
        })
    }
}

#[cfg(test)]
#[path = "matcher_tests.rs"]
mod tests;
