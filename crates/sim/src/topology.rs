//! The shape of a simulated cluster and its Azure side.
//!
//! Both simulators are built from one [`Topology`], so the Kubernetes nodes (with their
//! `spec.providerID`) and the Azure VMs and scale sets under them always agree.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A scale set and how many instances (nodes) it has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleSetSpec {
    /// Scale set name, e.g. `aks-nodepool1-12345678-vmss`.
    pub name: String,
    /// Number of instances; each becomes one Kubernetes node.
    pub instances: u32,
}

/// A user-assigned managed identity that exists in the simulated Azure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentitySpec {
    /// Identity name (last segment of its resource id).
    pub name: String,
    /// Resource group holding the identity (defaults to the topology's).
    pub resource_group: String,
}

/// Which Azure compute resource hosts a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Host {
    /// Instance `instance_id` of scale set `name`.
    ScaleSet { name: String, instance_id: u32 },
    /// Standalone virtual machine `name`.
    Vm { name: String },
}

/// One simulated Kubernetes node and where it lives in Azure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Kubernetes node name.
    pub name: String,
    /// `spec.providerID` as the Azure cloud provider writes it.
    pub provider_id: String,
    /// The VM or scale set under the node.
    pub host: Host,
}

/// A simulated cluster: subscription, resource group, scale sets, standalone VMs, identities.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// Subscription id of everything simulated.
    pub subscription_id: String,
    /// Node resource group holding the VMs and scale sets.
    pub resource_group: String,
    /// Tenant id used by the simulated Azure AD.
    pub tenant_id: String,
    /// Scale sets and their instance counts.
    pub scale_sets: Vec<ScaleSetSpec>,
    /// Standalone VMs (availability-set clusters).
    pub vms: Vec<String>,
    /// User-assigned identities that exist in Azure.
    pub identities: Vec<IdentitySpec>,
}

const NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b7e_9a41_4d0e_8c3f_5b2a_7d9e_1c40);

impl Default for Topology {
    /// Two nodes in one scale set and a handful of identities: the seed's scenario fits.
    fn default() -> Self {
        Self::sized(1, 2, 0, 5)
    }
}

impl Topology {
    /// A topology with `scale_sets` scale sets of `nodes_per_scale_set` nodes each, `vms`
    /// standalone VMs and `identities` identities named `identity-0`, `identity-1`, ….
    #[must_use]
    pub fn sized(scale_sets: u32, nodes_per_scale_set: u32, vms: u32, identities: u32) -> Self {
        let resource_group = "MC_sandbox_sandbox_westeurope".to_string();
        Self {
            subscription_id: "00000000-0000-0000-0000-00000000000a".to_string(),
            tenant_id: "00000000-0000-0000-0000-00000000000b".to_string(),
            scale_sets: (0..scale_sets)
                .map(|i| ScaleSetSpec {
                    name: format!("aks-pool{i}-12345678-vmss"),
                    instances: nodes_per_scale_set,
                })
                .collect(),
            vms: (0..vms)
                .map(|i| format!("aks-agentpool-12345678-{i}"))
                .collect(),
            identities: (0..identities)
                .map(|i| IdentitySpec {
                    name: format!("identity-{i}"),
                    resource_group: resource_group.clone(),
                })
                .collect(),
            resource_group,
        }
    }

    /// Every node, scale-set instances first, in a stable order.
    #[must_use]
    pub fn nodes(&self) -> Vec<NodeSpec> {
        let mut nodes = Vec::new();
        for ss in &self.scale_sets {
            for i in 0..ss.instances {
                nodes.push(NodeSpec {
                    // AKS names a scale-set node after the scale set and the instance id in base 36.
                    name: format!("{}{}", ss.name, base36_6(i)),
                    provider_id: format!(
                        "azure:///subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}/virtualMachines/{}",
                        self.subscription_id, self.resource_group, ss.name, i
                    ),
                    host: Host::ScaleSet {
                        name: ss.name.clone(),
                        instance_id: i,
                    },
                });
            }
        }
        for vm in &self.vms {
            nodes.push(NodeSpec {
                name: vm.clone(),
                provider_id: format!(
                    "azure:///subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
                    self.subscription_id, self.resource_group, vm
                ),
                host: Host::Vm { name: vm.clone() },
            });
        }
        nodes
    }

    /// ARM resource id of a user-assigned identity.
    #[must_use]
    pub fn identity_resource_id(&self, identity: &IdentitySpec) -> String {
        format!(
            "/subscriptions/{}/resourcegroups/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            self.subscription_id, identity.resource_group, identity.name
        )
    }

    /// Deterministic client id of an identity, so scenario files can name it in advance.
    #[must_use]
    pub fn identity_client_id(&self, identity: &IdentitySpec) -> Uuid {
        Uuid::new_v5(
            &NAMESPACE,
            format!("client/{}", self.identity_resource_id(identity)).as_bytes(),
        )
    }

    /// Deterministic principal (object) id of an identity.
    #[must_use]
    pub fn identity_principal_id(&self, identity: &IdentitySpec) -> Uuid {
        Uuid::new_v5(
            &NAMESPACE,
            format!("principal/{}", self.identity_resource_id(identity)).as_bytes(),
        )
    }
}

fn base36_6(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out.to_vec()).expect("ascii digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_set_nodes_are_named_like_aks_and_carry_provider_ids() {
        let t = Topology::sized(1, 2, 1, 1);
        let nodes = t.nodes();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].name, "aks-pool0-12345678-vmss000000");
        assert_eq!(nodes[1].name, "aks-pool0-12345678-vmss000001");
        assert!(
            nodes[1]
                .provider_id
                .ends_with("/virtualMachineScaleSets/aks-pool0-12345678-vmss/virtualMachines/1")
        );
        assert_eq!(
            nodes[2].host,
            Host::Vm {
                name: "aks-agentpool-12345678-0".into()
            }
        );
    }

    #[test]
    fn instance_ids_above_35_use_base36() {
        assert_eq!(base36_6(36), "000010");
        assert_eq!(base36_6(35), "00000z");
    }

    #[test]
    fn identity_ids_are_stable_and_distinct() {
        let t = Topology::default();
        let a = t.identity_client_id(&t.identities[0]);
        assert_eq!(a, t.identity_client_id(&t.identities[0]));
        assert_ne!(a, t.identity_client_id(&t.identities[1]));
        assert_ne!(a, t.identity_principal_id(&t.identities[0]));
    }
}
