//! Identifiers MIC's assigners are keyed by: the VM or scale set under a node, and a
//! user-assigned identity's resource id compared the way ARM compares it (case-insensitively).
//!
//! The providerID parser is the Azure layer's ([`crate::cloud::provider_id::parse`]);
//! [`host_of_provider_id`] only turns its answer into the assigners' key.

use crate::cloud::provider_id::{self, ComputeRef};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// Whether a host is a scale set (identities apply to every instance) or a standalone VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostKind {
    /// `Microsoft.Compute/virtualMachineScaleSets`.
    ScaleSet,
    /// `Microsoft.Compute/virtualMachines`.
    Vm,
}

/// The Azure compute resource whose identity list MIC patches: one assigner exists per value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId {
    /// Scale set or VM.
    pub kind: HostKind,
    /// Subscription id as written in the providerID.
    pub subscription: String,
    /// Resource group as written in the providerID.
    pub resource_group: String,
    /// Scale set or VM name.
    pub name: String,
}

impl HostId {
    /// The original's `operation_type` for an ARM `get` or `update` of this host (`vmss_get`,
    /// `vmss_update`, `vm_get`, `vm_update`), as its dashboards query them.
    #[must_use]
    pub fn operation(&self, verb: &'static str) -> &'static str {
        match (self.kind, verb) {
            (HostKind::ScaleSet, "get") => "vmss_get",
            (HostKind::ScaleSet, _) => "vmss_update",
            (HostKind::Vm, "get") => "vm_get",
            (HostKind::Vm, _) => "vm_update",
        }
    }

    /// A scale set.
    #[must_use]
    pub fn scale_set(subscription: &str, resource_group: &str, name: &str) -> Self {
        Self {
            kind: HostKind::ScaleSet,
            subscription: subscription.to_string(),
            resource_group: resource_group.to_string(),
            name: name.to_string(),
        }
    }

    /// A standalone VM.
    #[must_use]
    pub fn vm(subscription: &str, resource_group: &str, name: &str) -> Self {
        Self {
            kind: HostKind::Vm,
            ..Self::scale_set(subscription, resource_group, name)
        }
    }
}

impl HostKind {
    /// The resource type's segment of an ARM id.
    fn segment(self) -> &'static str {
        match self {
            Self::ScaleSet => "virtualMachineScaleSets",
            Self::Vm => "virtualMachines",
        }
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.segment();
        write!(
            f,
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/{kind}/{}",
            self.subscription, self.resource_group, self.name
        )
    }
}

/// Why a node's `spec.providerID` names no host MIC can patch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderIdError {
    /// The node has no providerID yet (the cloud provider sets it after registration).
    #[error("node has no spec.providerID")]
    Missing,
    /// Not an `azure://` id of a VM or scale-set instance.
    #[error(
        "providerID {0:?} is not azure:///subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Compute/(virtualMachines/<vm>|virtualMachineScaleSets/<ss>/virtualMachines/<i>)"
    )]
    Malformed(String),
}

/// The VM or scale set of a node, from its `spec.providerID`.
///
/// # Errors
/// [`ProviderIdError::Missing`] for an empty id, else [`ProviderIdError::Malformed`].
pub fn host_of_provider_id(provider_id: &str) -> Result<HostId, ProviderIdError> {
    match provider_id::parse(provider_id) {
        Ok(r) => Ok(HostId::from(&r)),
        Err(provider_id::EMPTY) => Err(ProviderIdError::Missing),
        Err(_) => Err(ProviderIdError::Malformed(provider_id.to_string())),
    }
}

impl HostId {
    /// The host an ARM resource id names, as [`fmt::Display`] writes it (and as MIC records it
    /// on its objects): a scale set's or a VM's id; `None` for anything else. Parsed by the one
    /// providerID parser: a VM's resource id is its node's providerID path, a scale set's is its
    /// instances' without `/virtualMachines/<instance>`.
    #[must_use]
    pub fn from_resource_id(id: &str) -> Option<Self> {
        let scale_set = id
            .split('/')
            .nth(7)
            .is_some_and(|k| k.eq_ignore_ascii_case("virtualMachineScaleSets"));
        let as_provider_id = if scale_set {
            format!("azure://{id}/virtualMachines/0")
        } else {
            format!("azure://{id}")
        };
        provider_id::parse(&as_provider_id)
            .ok()
            .map(|r| Self::from(&r))
    }
}

impl HostId {
    /// True when `s` is this host's id exactly as [`fmt::Display`] writes it (compared without
    /// building the string; [`Self::from_resource_id`] also reads other spellings).
    #[must_use]
    pub fn is_written_as(&self, s: &str) -> bool {
        [
            "/subscriptions/",
            self.subscription.as_str(),
            "/resourceGroups/",
            self.resource_group.as_str(),
            "/providers/Microsoft.Compute/",
            self.kind.segment(),
            "/",
            self.name.as_str(),
        ]
        .iter()
        .try_fold(s, |rest, part| rest.strip_prefix(part))
        .is_some_and(str::is_empty)
    }
}

impl From<&ComputeRef> for HostId {
    fn from(r: &ComputeRef) -> Self {
        match r {
            ComputeRef::ScaleSet {
                subscription,
                resource_group,
                name,
            } => Self::scale_set(subscription, resource_group, name),
            ComputeRef::Vm {
                subscription,
                resource_group,
                name,
            } => Self::vm(subscription, resource_group, name),
        }
    }
}

/// A user-assigned identity's ARM resource id: kept as written (that is what goes on the wire)
/// and compared case-insensitively, as ARM does.
#[derive(Clone, Debug)]
pub struct IdentityId {
    written: String,
    canonical: String,
}

impl IdentityId {
    /// Wraps a resource id.
    #[must_use]
    pub fn new(id: &str) -> Self {
        Self {
            written: id.to_string(),
            canonical: id.to_ascii_lowercase(),
        }
    }

    /// The id as written by the user (sent to ARM).
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.written
    }
}

impl PartialEq for IdentityId {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}
impl Eq for IdentityId {}
impl PartialOrd for IdentityId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for IdentityId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.canonical.cmp(&other.canonical)
    }
}
impl Hash for IdentityId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.canonical.hash(state);
    }
}
impl fmt::Display for IdentityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_set_instance_maps_to_its_scale_set() {
        let h = host_of_provider_id("azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/pool/virtualMachines/3").unwrap();
        assert_eq!(h, HostId::scale_set("s", "rg", "pool"));
    }

    #[test]
    fn a_standalone_vm_maps_to_itself() {
        let h = host_of_provider_id(
            "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm0",
        )
        .unwrap();
        assert_eq!(h, HostId::vm("s", "rg", "vm0"));
    }

    #[test]
    fn other_provider_ids_are_refused_with_the_id() {
        assert_eq!(host_of_provider_id(""), Err(ProviderIdError::Missing));
        let err = host_of_provider_id("kind://docker/node").unwrap_err();
        assert!(err.to_string().contains("kind://docker/node"));
    }

    #[test]
    fn a_host_reads_back_from_the_resource_id_it_displays() {
        for h in [
            HostId::scale_set("s", "rg", "pool"),
            HostId::vm("s", "rg", "vm0"),
        ] {
            assert_eq!(HostId::from_resource_id(&h.to_string()), Some(h));
        }
        for bad in [
            "",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/p/virtualMachines/1",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/x",
            "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm0",
        ] {
            assert_eq!(HostId::from_resource_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_host_is_written_as_its_display_only() {
        for h in [
            HostId::scale_set("s", "rg", "pool"),
            HostId::vm("s", "rg", "vm0"),
        ] {
            let written = h.to_string();
            assert!(h.is_written_as(&written), "{written}");
            assert!(!h.is_written_as(&format!("{written}/virtualMachines/1")));
            assert!(!h.is_written_as(&written[..written.len() - 1]));
            // Another spelling of the same host: parsed, not compared.
            let lower = written.to_lowercase();
            assert!(!h.is_written_as(&lower));
        }
        assert!(
            !HostId::vm("s", "rg", "pool")
                .is_written_as(&HostId::scale_set("s", "rg", "pool").to_string())
        );
    }

    #[test]
    fn identity_ids_compare_without_case() {
        assert_eq!(
            IdentityId::new("/subscriptions/S/x"),
            IdentityId::new("/subscriptions/s/X")
        );
        assert_eq!(IdentityId::new("/A").as_str(), "/A");
    }
}
