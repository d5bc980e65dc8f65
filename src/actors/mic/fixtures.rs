//! Test fixtures as chained builders: `pod("demo").label("sel").on_node("n0")`.

use crate::crd::{
    AzureIdentity, AzureIdentityBinding, AzureIdentityBindingSpec, AzureIdentitySpec,
    BEHAVIOR_ANNOTATION, IdentityType,
};
use k8s_openapi::api::core::v1::{Node, NodeSpec};
use kube::api::ObjectMeta;

pub const SUB: &str = "sub";
pub const RG: &str = "rg";

pub fn rid(name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourcegroups/{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        uid: Some(format!("uid-{ns}-{name}")),
        ..ObjectMeta::default()
    }
}

pub use crate::actors::fixtures::PodBuilder as PodB;

/// A Running, unscheduled pod in `default` (the one builder is `crate::actors::fixtures`).
pub fn pod(name: &str) -> PodB {
    crate::actors::fixtures::pod("default", name)
}

pub struct IdB(pub AzureIdentity);
pub fn identity(name: &str) -> IdB {
    let mut i = AzureIdentity::new(
        name,
        AzureIdentitySpec {
            type_: IdentityType::UserAssignedMsi,
            resource_id: rid(name),
            client_id: format!("client-{name}"),
            ..AzureIdentitySpec::default()
        },
    );
    i.metadata = meta("default", name);
    IdB(i)
}
impl IdB {
    pub fn ns(mut self, ns: &str) -> Self {
        self.0.metadata.namespace = Some(ns.into());
        self
    }
    pub fn resource_id(mut self, id: &str) -> Self {
        self.0.spec.resource_id = id.into();
        self
    }
    pub fn type_(mut self, t: IdentityType) -> Self {
        self.0.spec.type_ = t;
        self
    }
    pub fn namespaced(mut self) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(BEHAVIOR_ANNOTATION.into(), "namespaced".into());
        self
    }
    pub fn build(self) -> AzureIdentity {
        self.0
    }
}

pub struct BindB(pub AzureIdentityBinding);
pub fn binding(name: &str, identity: &str, selector: &str) -> BindB {
    let mut b = AzureIdentityBinding::new(
        name,
        AzureIdentityBindingSpec {
            azure_identity: identity.into(),
            selector: selector.into(),
            weight: 0,
        },
    );
    b.metadata = meta("default", name);
    BindB(b)
}
impl BindB {
    pub fn ns(mut self, ns: &str) -> Self {
        self.0.metadata.namespace = Some(ns.into());
        self
    }
    pub fn build(self) -> AzureIdentityBinding {
        self.0
    }
}

/// A node in scale set `vmss` (instance `i`), named `<vmss>-<i>`.
pub fn vmss_node(vmss: &str, i: u32) -> Node {
    node_with_provider(
        &format!("{vmss}-{i}"),
        &format!(
            "azure:///subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{vmss}/virtualMachines/{i}"
        ),
    )
}

/// A standalone VM node.
pub fn vm_node(vm: &str) -> Node {
    node_with_provider(
        vm,
        &format!(
            "azure:///subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/{vm}"
        ),
    )
}

pub fn node_with_provider(name: &str, provider_id: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            provider_id: Some(provider_id.into()),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

pub use super::testing::MemoryArm as FakeArm;
