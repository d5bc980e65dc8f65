//! A node's `spec.providerID` → the Azure compute resource that carries its identities.
//!
//! Identities are assigned to a whole scale set, never to one instance, so a scale-set
//! instance maps to its scale set. Keywords are matched case-insensitively (the cloud provider
//! has written `resourceGroups` and `resourcegroups` over the years); names keep their casing
//! for display but compare and hash case-insensitively, as ARM does.

use std::fmt;
use std::hash::{Hash, Hasher};

use super::Error;

/// The VM or scale set that identities are assigned to.
#[derive(Clone, Debug)]
pub enum ComputeRef {
    /// A virtual machine scale set (every instance shares its identities).
    ScaleSet {
        /// Subscription id.
        subscription: String,
        /// Resource group.
        resource_group: String,
        /// Scale set name.
        name: String,
    },
    /// A standalone virtual machine.
    Vm {
        /// Subscription id.
        subscription: String,
        /// Resource group.
        resource_group: String,
        /// VM name.
        name: String,
    },
}

impl ComputeRef {
    /// A scale set reference.
    #[must_use]
    pub fn scale_set(subscription: &str, resource_group: &str, name: &str) -> Self {
        ComputeRef::ScaleSet {
            subscription: subscription.to_string(),
            resource_group: resource_group.to_string(),
            name: name.to_string(),
        }
    }

    /// A standalone VM reference.
    #[must_use]
    pub fn vm(subscription: &str, resource_group: &str, name: &str) -> Self {
        ComputeRef::Vm {
            subscription: subscription.to_string(),
            resource_group: resource_group.to_string(),
            name: name.to_string(),
        }
    }

    fn parts(&self) -> (&'static str, &str, &str, &str) {
        match self {
            ComputeRef::ScaleSet {
                subscription,
                resource_group,
                name,
            } => (
                "virtualMachineScaleSets",
                subscription,
                resource_group,
                name,
            ),
            ComputeRef::Vm {
                subscription,
                resource_group,
                name,
            } => ("virtualMachines", subscription, resource_group, name),
        }
    }

    /// Subscription id (the unit of ARM throttling).
    #[must_use]
    pub fn subscription(&self) -> &str {
        self.parts().1
    }

    /// Resource name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.parts().3
    }

    /// True for a scale set.
    #[must_use]
    pub fn is_scale_set(&self) -> bool {
        matches!(self, ComputeRef::ScaleSet { .. })
    }

    /// ARM resource path, e.g. `/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/n`.
    #[must_use]
    pub fn resource_path(&self) -> String {
        let (kind, sub, rg, name) = self.parts();
        format!(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/{kind}/{name}"
        )
    }

    /// Stable lower-case key (`vmss/<sub>/<rg>/<name>` or `vm/...`) for maps and actor names.
    #[must_use]
    pub fn key(&self) -> String {
        let (_, sub, rg, name) = self.parts();
        let kind = if self.is_scale_set() { "vmss" } else { "vm" };
        format!("{kind}/{sub}/{rg}/{name}").to_ascii_lowercase()
    }
}

impl PartialEq for ComputeRef {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for ComputeRef {}

impl Hash for ComputeRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl fmt::Display for ComputeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (_, sub, rg, name) = self.parts();
        let kind = if self.is_scale_set() { "vmss" } else { "vm" };
        write!(f, "{kind} {name} (subscription {sub}, resource group {rg})")
    }
}

/// Parses `azure:///subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachineScaleSets/<vmss>/virtualMachines/<i>`
/// or `azure:///subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachines/<vm>`.
///
/// # Errors
/// [`Error::InvalidProviderId`] naming the node, the id and what is wrong with it.
pub fn parse_provider_id(node_name: &str, provider_id: &str) -> Result<ComputeRef, Error> {
    parse(provider_id).map_err(|problem| Error::InvalidProviderId {
        node: node_name.to_string(),
        provider_id: provider_id.to_string(),
        problem,
    })
}

/// The one providerID parser (MIC's matcher keys its assigners by its answer): the compute
/// resource, or what is wrong with the id.
///
/// # Errors
/// A sentence saying what is wrong (an empty id means the node has no providerID yet).
pub fn parse(provider_id: &str) -> Result<ComputeRef, &'static str> {
    if provider_id.trim().is_empty() {
        return Err(EMPTY);
    }
    let rest = strip_prefix_ci(provider_id, "azure://").ok_or("it does not start with azure://")?;
    let rest = rest
        .strip_prefix('/')
        .ok_or("the resource path must start with '/'")?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("it has an empty path segment");
    }
    let kw = |i: usize, word: &str| parts.get(i).is_some_and(|p| p.eq_ignore_ascii_case(word));
    if parts.len() < 8 {
        return Err("it has too few path segments");
    }
    if !kw(0, "subscriptions") || !kw(2, "resourceGroups") || !kw(4, "providers") {
        return Err(
            "expected /subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Compute/...",
        );
    }
    if !kw(5, "Microsoft.Compute") {
        return Err("the provider is not Microsoft.Compute");
    }
    let (sub, rg) = (parts[1], parts[3]);
    if kw(6, "virtualMachineScaleSets") {
        if parts.len() != 10 || !kw(8, "virtualMachines") {
            return Err(
                "a scale-set id must end with virtualMachineScaleSets/<name>/virtualMachines/<instance>",
            );
        }
        return Ok(ComputeRef::scale_set(sub, rg, parts[7]));
    }
    if kw(6, "virtualMachines") {
        if parts.len() != 8 {
            return Err("a VM id must end with virtualMachines/<name>");
        }
        return Ok(ComputeRef::vm(sub, rg, parts[7]));
    }
    Err("the resource type is neither virtualMachineScaleSets nor virtualMachines")
}

/// [`parse`]'s answer for an empty providerID.
pub const EMPTY: &str = "it is empty (the node has no providerID yet)";

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const VMSS: &str = "azure:///subscriptions/sub-1/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-pool-vmss/virtualMachines/3";

    #[test]
    fn scale_set_instance_maps_to_its_scale_set() {
        let r = parse_provider_id("n1", VMSS).unwrap();
        assert_eq!(r, ComputeRef::scale_set("sub-1", "MC_rg", "aks-pool-vmss"));
        assert_eq!(r.key(), "vmss/sub-1/mc_rg/aks-pool-vmss");
        assert_eq!(
            r.resource_path(),
            "/subscriptions/sub-1/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-pool-vmss"
        );
    }

    #[test]
    fn two_instances_of_one_scale_set_are_the_same_key() {
        let a = parse_provider_id("a", VMSS).unwrap();
        let b = parse_provider_id(
            "b",
            &VMSS.replace("/virtualMachines/3", "/virtualMachines/0"),
        )
        .unwrap();
        let set: HashSet<_> = [a, b].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn standalone_vm_is_parsed() {
        let r = parse_provider_id(
            "vm0",
            "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm0",
        )
        .unwrap();
        assert_eq!(r, ComputeRef::vm("s", "rg", "vm0"));
        assert!(!r.is_scale_set());
    }

    #[test]
    fn keywords_and_names_are_case_insensitive() {
        let lower = VMSS.to_ascii_lowercase().replace("azure://", "AZURE://");
        let a = parse_provider_id("n", &lower).unwrap();
        let b = parse_provider_id("n", VMSS).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_ids_are_typed_errors_naming_the_node() {
        for bad in [
            "",
            "aws:///i-123",
            "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualMachines/x",
            "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/x",
            "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/x/extra",
            "azure:///subscriptions//resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/x",
        ] {
            let err = parse_provider_id("node-7", bad).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidProviderId { node, .. } if node == "node-7"),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("node-7"));
        }
    }
}
