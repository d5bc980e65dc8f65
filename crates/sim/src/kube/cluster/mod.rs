//! A small cluster behind the API: a scheduler and kubelet ([`kubelet`]), controllers for
//! Deployments, DaemonSets and Jobs ([`workloads`]) and for CronJobs ([`cron`]), and the
//! taint-eviction controller ([`noexecute`]), and the service-account controller's `default`
//! account in every namespace ([`serviceaccounts`]). They act on the store directly and are woken by
//! its change notifications, never by polling.

pub mod cron;
pub mod kubelet;
pub mod noexecute;
pub mod serviceaccounts;
pub mod workloads;

use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::watch;

use super::meta::{name_of, namespace_of, uid_of};
use super::resources::{GroupResource, ResourceInfo};
use super::store::{Event, Store};
use super::{Ipv4Block, Shared};
use crate::topology::NodeSpec;

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

/// What a feed has to say after a wake-up.
#[derive(Debug)]
pub enum Update {
    /// These changes, in order.
    Events(Vec<std::sync::Arc<Event>>),
    /// The feed fell behind the history: reconcile everything.
    Resync,
}

/// An in-process watch on one resource: a cursor into the store's history plus its
/// change notification.
#[derive(Debug)]
pub struct Feed {
    store: Arc<Store>,
    gr: GroupResource,
    cursor: u64,
    rx: watch::Receiver<u64>,
    started: bool,
}

impl Feed {
    /// A feed on `gr`; its first [`Feed::take`] is a [`Update::Resync`].
    #[must_use]
    pub fn new(store: Arc<Store>, group: &str, plural: &str) -> Self {
        let gr = GroupResource::new(group, plural);
        let rx = store.subscribe(&gr);
        Self {
            cursor: store.current_rv(),
            store,
            gr,
            rx,
            started: false,
        }
    }

    /// Waits for the next change notification.
    pub async fn wait(&mut self) {
        if self.rx.changed().await.is_err() {
            // The store is gone; park until shutdown cancels the caller.
            std::future::pending::<()>().await;
        }
    }

    /// Everything since the last take.
    pub fn take(&mut self) -> Update {
        if !self.started {
            self.started = true;
            self.cursor = self.store.current_rv();
            return Update::Resync;
        }
        match self.store.events_since(&self.gr, self.cursor) {
            Ok((events, complete)) => {
                self.cursor = complete;
                Update::Events(events)
            }
            Err(_) => {
                self.cursor = self.store.current_rv();
                Update::Resync
            }
        }
    }
}

/// Looks up a built-in resource's info.
#[must_use]
pub fn info(shared: &Shared, group: &str, plural: &str) -> Arc<ResourceInfo> {
    shared
        .registry
        .preferred(group, plural)
        .expect("built-in resources are always registered")
}

/// An owner reference to `owner` (a controller reference).
#[must_use]
pub fn owner_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner.get("apiVersion").cloned().unwrap_or(json!("")),
        "kind": owner.get("kind").cloned().unwrap_or(json!("")),
        "name": name_of(owner),
        "uid": uid_of(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// The controller owner reference of `obj`: (kind, name, uid).
#[must_use]
pub fn controller_of(obj: &Value) -> Option<(String, String, String)> {
    obj.get("metadata")?
        .get("ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .map(|r| {
            let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            (s("kind"), s("name"), s("uid"))
        })
}

/// (namespace, name) of an object.
#[must_use]
pub fn key_of(obj: &Value) -> (String, String) {
    (namespace_of(obj).to_string(), name_of(obj).to_string())
}

/// Whether an object is being deleted.
#[must_use]
pub fn terminating(obj: &Value) -> bool {
    obj.get("metadata")
        .and_then(|m| m.get("deletionTimestamp"))
        .is_some()
}

/// Starts the cluster tasks; the returned task ends once all of them have ended on shutdown.
pub fn spawn(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let tasks = vec![
        tokio::spawn(kubelet::run(shared.clone())),
        tokio::spawn(workloads::run(shared.clone())),
        tokio::spawn(cron::run(shared.clone())),
        tokio::spawn(noexecute::run(shared.clone())),
        tokio::spawn(serviceaccounts::run(shared.clone())),
    ];
    tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
    })
}
