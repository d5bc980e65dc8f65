//! Test fixtures as chained builders: `pod("demo").label("sel").on_node("n0")`.

use crate::crd::{
    AzureIdentity, AzureIdentityBinding, AzureIdentityBindingSpec, AzureIdentitySpec,
    BEHAVIOR_ANNOTATION, IdentityType, POD_LABEL,
};
use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod, PodSpec, PodStatus};
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

pub struct PodB(pub Pod);
pub fn pod(name: &str) -> PodB {
    PodB(Pod {
        metadata: meta("default", name),
        spec: Some(PodSpec::default()),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            ..PodStatus::default()
        }),
    })
}
impl PodB {
    pub fn ns(mut self, ns: &str) -> Self {
        let name = self.0.metadata.name.clone().unwrap_or_default();
        self.0.metadata.uid = Some(format!("uid-{ns}-{name}"));
        self.0.metadata.namespace = Some(ns.into());
        self
    }
    pub fn label(mut self, sel: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_default()
            .insert(POD_LABEL.into(), sel.into());
        self
    }
    pub fn on_node(mut self, node: &str) -> Self {
        self.0.spec.as_mut().unwrap().node_name = Some(node.into());
        self
    }
    pub fn phase(mut self, phase: &str) -> Self {
        self.0.status.as_mut().unwrap().phase = Some(phase.into());
        self
    }
    pub fn build(self) -> Pod {
        self.0
    }
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

use super::host::{HostId, IdentityId};
use super::port::{ArmPort, HostIdentities, PortError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One PATCH the fake ARM received.
#[derive(Clone, Debug)]
pub struct PatchCall {
    pub host: HostId,
    pub add: Vec<IdentityId>,
    pub remove: Vec<IdentityId>,
    pub at: Instant,
}

/// An in-memory ARM with a fixed latency per call; identities in `refuse` are refused the way
/// ARM refuses a deleted identity, naming it.
#[derive(Default)]
pub struct FakeArm {
    pub latency: Duration,
    pub hosts: Mutex<BTreeMap<HostId, BTreeSet<IdentityId>>>,
    pub refuse: Mutex<BTreeSet<IdentityId>>,
    pub patches: Mutex<Vec<PatchCall>>,
    pub gets: Mutex<u32>,
}

impl FakeArm {
    pub fn new(latency: Duration) -> Arc<Self> {
        Arc::new(Self {
            latency,
            ..Self::default()
        })
    }
    pub fn on_host(&self, host: &HostId) -> BTreeSet<IdentityId> {
        self.hosts
            .lock()
            .unwrap()
            .get(host)
            .cloned()
            .unwrap_or_default()
    }
    pub fn patch_count(&self) -> usize {
        self.patches.lock().unwrap().len()
    }
}

#[async_trait::async_trait]
impl ArmPort for FakeArm {
    async fn get(&self, host: &HostId) -> Result<HostIdentities, PortError> {
        tokio::time::sleep(self.latency).await;
        *self.gets.lock().unwrap() += 1;
        Ok(HostIdentities {
            user_assigned: self.on_host(host),
            deleting: false,
        })
    }

    async fn patch(
        &self,
        host: &HostId,
        add: &[IdentityId],
        remove: &[IdentityId],
    ) -> Result<HostIdentities, PortError> {
        self.patches.lock().unwrap().push(PatchCall {
            host: host.clone(),
            add: add.to_vec(),
            remove: remove.to_vec(),
            at: Instant::now(),
        });
        tokio::time::sleep(self.latency).await;
        let bad: Vec<IdentityId> = {
            let refuse = self.refuse.lock().unwrap();
            add.iter()
                .filter(|id| refuse.contains(*id))
                .cloned()
                .collect()
        };
        if !bad.is_empty() {
            return Err(PortError::Refused {
                ids: bad,
                message: "FailedIdentityOperation: identity not found".into(),
            });
        }
        let mut hosts = self.hosts.lock().unwrap();
        let on = hosts.entry(host.clone()).or_default();
        on.extend(add.iter().cloned());
        for id in remove {
            on.remove(id);
        }
        Ok(HostIdentities {
            user_assigned: on.clone(),
            deleting: false,
        })
    }
}
