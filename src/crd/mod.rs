//! The `aadpodidentity.k8s.io/v1` custom resources, byte-compatible with the Go original.
//!
//! Users of the original have these objects in their clusters today, so the JSON shape is a
//! contract: `type` is an integer, ids are spelled `resourceID`/`clientID`/`tenantID`, an
//! AzureAssignedIdentity embeds the whole AzureIdentity and AzureIdentityBinding, and the
//! original's odd `metadata` inside spec and status is tolerated on read. Unknown fields are
//! ignored rather than refused, so a newer or older writer never breaks a watch.
//!
//! The CRD manifests themselves come from [`generate`], which `aad-pod-identity crdgen` writes
//! to `chart/crds/`.

mod generate;
mod identity_type;
mod resource_id;
pub mod write;

pub use generate::{API_APPROVED_ANNOTATION, CrdFile, all_crds, render_crd_yaml};
pub use identity_type::IdentityType;
pub use resource_id::{IdentityResourceId, ResourceIdError, parse_identity_resource_id};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{CustomResource, Resource, ResourceExt};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// API group of every custom resource here.
pub const GROUP: &str = "aadpodidentity.k8s.io";
/// The only served version.
pub const VERSION: &str = "v1";
/// Pod label that opts a pod in; its value must equal a binding's `spec.selector`.
pub const POD_LABEL: &str = "aadpodidbinding";
/// Annotation that makes one AzureIdentity namespaced regardless of the global mode.
pub const BEHAVIOR_ANNOTATION: &str = "aadpodidentity.k8s.io/Behavior";
/// Value of [`BEHAVIOR_ANNOTATION`] that turns namespaced matching on for the identity.
pub const BEHAVIOR_NAMESPACED: &str = "namespaced";
/// Annotation that makes an AzureIdentity federated when its value is `true`: NMI gets its
/// tokens through workload identity federation (the calling pod's service-account token
/// exchanged at Azure AD) and MIC assigns it to no VM or scale set. An annotation rather than a
/// new `type`: the original's controllers and CRD schema ignore it, so after a rollback a
/// federated type-0 identity is assigned to the scale set again and keeps working
/// (docs/federation.md).
pub const FEDERATED_ANNOTATION: &str = "aadpodidentity.k8s.io/federated";
/// Finalizer MIC puts on every AzureAssignedIdentity it creates.
pub const ASSIGNED_IDENTITY_FINALIZER: &str =
    "azureassignedidentity.finalizers.aadpodidentity.k8s.io";
/// Annotation MIC puts on an AzureAssignedIdentity whose identity was on the VM or scale set
/// without MIC's write (present before, added by hand or concurrently), with the value
/// [`IDENTITY_OWNER_EXTERNAL`]: MIC never removes such an identity, and a restarted MIC does
/// not take it for its own. Absent (as on objects the original wrote), the assignment is MIC's.
pub const IDENTITY_OWNER_ANNOTATION: &str = "aadpodidentity.k8s.io/identity-owner";
/// Value of [`IDENTITY_OWNER_ANNOTATION`] for an identity MIC did not put on its host.
pub const IDENTITY_OWNER_EXTERNAL: &str = "external";
/// Annotation MIC puts on every AzureAssignedIdentity of a user-assigned identity: the ARM
/// resource id of the VM or scale set the identity goes on
/// (`/subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachineScaleSets/<name>`
/// or `.../virtualMachines/<name>`). A restarted MIC adopts the identities of its unmarked objects
/// by this host even when the node the object names was deleted meanwhile; objects without it
/// (written by the original) are adopted through their node. MIC adds an identity to a host
/// only once an object naming both is stored (a write-ahead record), so whatever instant a
/// leader dies at, its successor finds a record of every identity it put anywhere.
pub const IDENTITY_HOST_ANNOTATION: &str = "aadpodidentity.k8s.io/identity-host";
/// Label on every AzureAssignedIdentity naming the node of its pod.
pub const NODENAME_LABEL: &str = "nodename";

/// A Secret reference, as Kubernetes' `SecretReference` (both fields optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// Secret name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Secret namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

impl SecretRef {
    /// True when neither field is set (the original always writes `{}`).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.name.is_empty() && self.namespace.is_empty()
    }
}

/// An Azure identity a pod may use: a user-assigned managed identity (type 0) or a service
/// principal with a secret (1) or certificate (2).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzureIdentity",
    plural = "azureidentities",
    namespaced,
    status = "AzureIdentityStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
pub struct AzureIdentitySpec {
    /// 0 user-assigned managed identity, 1 service principal (secret), 2 service principal (certificate).
    #[serde(rename = "type", default)]
    pub type_: IdentityType,
    /// ARM resource id of a user-assigned identity.
    #[serde(
        rename = "resourceID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub resource_id: String,
    /// Client (application) id.
    #[serde(rename = "clientID", default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// Secret holding a service principal's secret or certificate.
    #[serde(
        rename = "clientPassword",
        default,
        skip_serializing_if = "SecretRef::is_empty"
    )]
    pub client_password: SecretRef,
    /// Tenant of a service principal.
    #[serde(rename = "tenantID", default, skip_serializing_if = "String::is_empty")]
    pub tenant_id: String,
    /// Further tenants a service principal's token is valid for.
    /// (The original's Go type writes `null` when there are none.)
    #[serde(
        rename = "auxiliaryTenantIDs",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub auxiliary_tenant_ids: Vec<String>,
    /// Azure AD resource id the original used for some service-principal flows.
    #[serde(
        rename = "adResourceID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ad_resource_id: String,
    /// Azure AD authority; `https://login.microsoftonline.com/` when empty.
    #[serde(
        rename = "adEndpoint",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ad_endpoint: String,
    /// Unused by the system; kept because the original writes it (as `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

/// Status of an AzureIdentity (unused by the system; kept for compatibility).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureIdentityStatus {
    /// Always 0 in the original.
    #[serde(rename = "availableReplicas", default)]
    pub available_replicas: i32,
}

/// Binds an AzureIdentity to the pods whose `aadpodidbinding` label equals `selector`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzureIdentityBinding",
    plural = "azureidentitybindings",
    namespaced,
    status = "AzureIdentityBindingStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
pub struct AzureIdentityBindingSpec {
    /// Name of the AzureIdentity (in the binding's namespace when matching is namespaced).
    #[serde(rename = "azureIdentity", default)]
    pub azure_identity: String,
    /// Value of the pod label `aadpodidbinding` this binding matches, exactly.
    #[serde(default)]
    pub selector: String,
    /// Unused; kept for compatibility.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weight: i64,
}

/// Status of an AzureIdentityBinding (unused by the system; kept for compatibility).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureIdentityBindingStatus {
    /// Always 0 in the original.
    #[serde(rename = "availableReplicas", default)]
    pub available_replicas: i32,
}

/// MIC's record that one pod's identity is (being) assigned to its node's VM or scale set.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzureAssignedIdentity",
    plural = "azureassignedidentities",
    namespaced,
    status = "AzureAssignedIdentityStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
pub struct AzureAssignedIdentitySpec {
    /// The whole AzureIdentity, as it was when assigned.
    #[serde(rename = "azureIdentityRef", default)]
    pub azure_identity_ref: Option<Box<AzureIdentity>>,
    /// The whole AzureIdentityBinding that matched.
    #[serde(rename = "azureBindingRef", default)]
    pub azure_binding_ref: Option<Box<AzureIdentityBinding>>,
    /// Pod name.
    #[serde(default)]
    pub pod: String,
    /// Pod namespace.
    #[serde(rename = "podNamespace", default)]
    pub pod_namespace: String,
    /// Node of the pod.
    #[serde(rename = "nodename", default)]
    pub node_name: String,
    /// Unused; the original writes `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

/// Status of an AzureAssignedIdentity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureAssignedIdentityStatus {
    /// Always 0 in the original.
    #[serde(rename = "availableReplicas", default)]
    pub available_replicas: i32,
    /// Where the assignment stands.
    #[serde(default, skip_serializing_if = "AssignedState::is_unset")]
    pub status: AssignedState,
}

/// Lifecycle of an AzureAssignedIdentity: `Created` → `Assigned` → `Unassigned`.
///
/// Values written by other tools are kept verbatim in [`AssignedState::Other`], so reading and
/// writing an object never loses what was there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum AssignedState {
    /// No status written yet.
    #[default]
    Unset,
    /// Object exists; the identity is not yet confirmed on the VM or scale set.
    Created,
    /// The identity is on the VM or scale set; NMI may hand out tokens.
    Assigned,
    /// The identity was removed (or is being removed) for this pod.
    Unassigned,
    /// Any other value, kept as written.
    Other(String),
}

impl AssignedState {
    /// The wire string ("" for [`AssignedState::Unset`]).
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Unset => "",
            Self::Created => "Created",
            Self::Assigned => "Assigned",
            Self::Unassigned => "Unassigned",
            Self::Other(s) => s,
        }
    }

    fn is_unset(&self) -> bool {
        matches!(self, Self::Unset)
    }
}

impl From<&str> for AssignedState {
    fn from(s: &str) -> Self {
        match s {
            "" => Self::Unset,
            "Created" => Self::Created,
            "Assigned" => Self::Assigned,
            "Unassigned" => Self::Unassigned,
            other => Self::Other(other.to_string()),
        }
    }
}

impl Serialize for AssignedState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AssignedState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        Ok(s.as_deref().map_or(Self::Unset, Self::from))
    }
}

/// Pods whose labels match `podLabels` (in the exception's namespace) get the node's own token.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "aadpodidentity.k8s.io",
    version = "v1",
    kind = "AzurePodIdentityException",
    plural = "azurepodidentityexceptions",
    namespaced,
    status = "AzurePodIdentityExceptionStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
pub struct AzurePodIdentityExceptionSpec {
    /// Labels that except a pod: any one of them on the pod, value compared case-insensitively.
    #[serde(rename = "podLabels", default, deserialize_with = "null_as_default")]
    pub pod_labels: BTreeMap<String, String>,
}

/// Status of an AzurePodIdentityException (unused; kept for compatibility).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzurePodIdentityExceptionStatus {
    /// Free text.
    #[serde(default)]
    pub status: String,
}

/// Reads `null` as the type's default (Go writes `null` for an empty slice or map).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl AzureAssignedIdentity {
    /// True when its status is `Assigned` (NMI may hand out the identity's tokens).
    #[must_use]
    pub fn is_assigned(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.status == AssignedState::Assigned)
    }

    /// True when the object records that its identity was on the host without MIC's write.
    #[must_use]
    pub fn identity_is_external(&self) -> bool {
        self.annotations()
            .get(IDENTITY_OWNER_ANNOTATION)
            .is_some_and(|v| v == IDENTITY_OWNER_EXTERNAL)
    }

    /// The VM or scale set the object says its identity goes on ([`IDENTITY_HOST_ANNOTATION`]),
    /// as written; `None` on objects the original wrote.
    #[must_use]
    pub fn identity_host(&self) -> Option<&str> {
        self.annotations()
            .get(IDENTITY_HOST_ANNOTATION)
            .map(String::as_str)
    }
}

impl AzureIdentity {
    /// True when this identity alone is namespaced through [`BEHAVIOR_ANNOTATION`].
    #[must_use]
    pub fn has_namespaced_annotation(&self) -> bool {
        self.annotations()
            .get(BEHAVIOR_ANNOTATION)
            .is_some_and(|v| v.eq_ignore_ascii_case(BEHAVIOR_NAMESPACED))
    }
}

impl AzureIdentity {
    /// True when [`FEDERATED_ANNOTATION`] is `true` (case-insensitive) on an identity of a
    /// known type: its tokens come from federation, and nothing is assigned on Azure for it.
    #[must_use]
    pub fn is_federated(&self) -> bool {
        !matches!(self.spec.type_, IdentityType::Unknown(_))
            && self
                .annotations()
                .get(FEDERATED_ANNOTATION)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }
}

impl AzurePodIdentityException {
    /// True when any one label of the exception is on the pod, its value compared
    /// case-insensitively: the original's rule, which its users' exceptions are written for.
    #[must_use]
    pub fn matches_labels(&self, pod_labels: &BTreeMap<String, String>) -> bool {
        self.spec
            .pod_labels
            .iter()
            .any(|(k, v)| pod_labels.get(k).is_some_and(|p| p.eq_ignore_ascii_case(v)))
    }
}

/// The longest object name the API server accepts (a DNS subdomain).
pub const MAX_NAME_LEN: usize = 253;

/// Name the original gives the AzureAssignedIdentity of one pod and identity:
/// `<pod>-<podNamespace>-<identityName>`, whenever that is a valid object name.
///
/// Pod and identity names may each be 253 characters, so the original's name can be too long
/// for the API server, which refused it for good and left the pod without its identity. Such a
/// name is cut to fit and ends in a hash of all three parts, so it stays valid, stable across
/// restarts and distinct for distinct pods.
#[must_use]
pub fn assigned_identity_name(pod: &str, pod_namespace: &str, identity: &str) -> String {
    let name = format!("{pod}-{pod_namespace}-{identity}");
    if name.len() <= MAX_NAME_LEN {
        return name;
    }
    hashed_name(&name, &[pod, pod_namespace, identity])
}

/// A name for the AzureAssignedIdentity of one pod and identity that no other pod and identity
/// can have: the original's name (cut to fit) ending in a hash of pod, pod namespace, identity
/// namespace and identity. For when the original's name is taken: `<pod>-<namespace>-<identity>`
/// reads the same for pod `a-b` in `c` and pod `a` in `b-c`, and in cluster-wide mode every
/// object lives in one namespace.
#[must_use]
pub fn unique_assigned_identity_name(
    pod: &str,
    pod_namespace: &str,
    identity_namespace: &str,
    identity: &str,
) -> String {
    hashed_name(
        &format!("{pod}-{pod_namespace}-{identity}"),
        &[pod, pod_namespace, identity_namespace, identity],
    )
}

/// `name` cut to leave room for `-<hash of parts>` within [`MAX_NAME_LEN`], then that suffix.
fn hashed_name(name: &str, parts: &[&str]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let suffix: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    // Keep room for "-" and the suffix; the cut must not leave a label ending in '-' or '.',
    // nor a '.' right before the suffix's '-' (each dot-separated label must end alphanumeric).
    let mut keep = (MAX_NAME_LEN - 1 - suffix.len()).min(name.len());
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    let prefix = name[..keep].trim_end_matches(['-', '.']);
    format!("{prefix}-{suffix}")
}

/// A copy of `meta` reduced to what the original embeds in an AzureAssignedIdentity's refs:
/// identity fields only, no managed fields or last-applied annotations (which can be large).
#[must_use]
pub fn embeddable_meta(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        generation: meta.generation,
        creation_timestamp: meta.creation_timestamp.clone(),
        labels: meta.labels.clone(),
        annotations: meta.annotations.as_ref().map(|a| {
            a.iter()
                .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

/// The `apiVersion` string of every resource here.
#[must_use]
pub fn api_version() -> String {
    AzureIdentity::api_version(&()).into_owned()
}

#[cfg(test)]
mod tests;
