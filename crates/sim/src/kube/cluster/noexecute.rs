//! The taint-eviction controller: pods on a node with a NoExecute taint they do not tolerate
//! are deleted at once; pods that tolerate it only for `tolerationSeconds` are deleted when the
//! shortest such time, counted from when the controller first saw the taint, runs out, unless
//! the taint goes first. Woken by the store's change notifications and one timer for the
//! earliest deadline (a tokio timer, so tests can drive it with a paused clock).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;
use tokio::time::Instant;

use super::{Feed, Update, info, key_of, terminating};
use crate::kube::Shared;
use crate::kube::meta::{name_of, uid_of};
use crate::kube::store::{DeleteOptions, EventType};
use crate::kube::taints::{self, Eviction, Taint};

struct Controller {
    shared: Arc<Shared>,
    /// NoExecute taints per node (nodes without any are absent).
    taints: HashMap<String, Vec<Taint>>,
    /// Pod uid → (namespace, name, when it is evicted).
    pending: HashMap<String, (String, String, Instant)>,
}

impl Controller {
    fn resync_nodes(&mut self) -> Vec<String> {
        let (nodes, _) = self
            .shared
            .store
            .snapshot(&info(&self.shared, "", "nodes").gr());
        let before = std::mem::take(&mut self.taints);
        for n in &nodes {
            let t: Vec<Taint> = taints::taints_of(n)
                .into_iter()
                .filter(|t| t.effect == "NoExecute")
                .collect();
            if !t.is_empty() {
                self.taints.insert(name_of(n).to_string(), t);
            }
        }
        // Nodes whose NoExecute taints changed: their pods are looked at again.
        let mut changed: Vec<String> = self
            .taints
            .iter()
            .filter(|(n, t)| before.get(*n) != Some(*t))
            .map(|(n, _)| n.clone())
            .collect();
        changed.extend(
            before
                .keys()
                .filter(|n| !self.taints.contains_key(*n))
                .cloned(),
        );
        changed
    }

    fn pods_on(&self, nodes: &[String]) -> Vec<Arc<Value>> {
        if nodes.is_empty() {
            return Vec::new();
        }
        let (pods, _) = self
            .shared
            .store
            .snapshot(&info(&self.shared, "", "pods").gr());
        pods.into_iter()
            .filter(|p| {
                p.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some_and(|n| nodes.iter().any(|x| x == n))
            })
            .collect()
    }

    fn consider(&mut self, pod: &Value, event: EventType, now: Instant) {
        let uid = uid_of(pod).to_string();
        if event == EventType::Deleted || terminating(pod) {
            self.pending.remove(&uid);
            return;
        }
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str);
        let Some(node_taints) = node.and_then(|n| self.taints.get(n)) else {
            self.pending.remove(&uid);
            return;
        };
        let tolerations = taints::tolerations_of(pod.get("spec").unwrap_or(&Value::Null));
        let (ns, name) = key_of(pod);
        match taints::eviction(node_taints, &tolerations) {
            Eviction::Never => {
                self.pending.remove(&uid);
            }
            Eviction::Now => {
                self.pending.remove(&uid);
                self.evict(&ns, &name, &uid);
            }
            Eviction::After(d) => {
                // The first deadline stands; a shorter one found later replaces it.
                let at = now + d;
                let e = self.pending.entry(uid).or_insert((ns, name, at));
                e.2 = e.2.min(at);
            }
        }
    }

    fn evict(&self, ns: &str, name: &str, uid: &str) {
        let pods = info(&self.shared, "", "pods");
        let opts = DeleteOptions {
            uid: Some(uid.to_string()),
            ..DeleteOptions::default()
        };
        match self.shared.store.delete(&pods, ns, name, &opts) {
            Ok(_) => tracing::debug!(pod = %name, namespace = %ns, "evicted by a NoExecute taint"),
            Err(e) => tracing::debug!(pod = %name, error = %e, "NoExecute eviction failed"),
        }
    }

    fn fire_due(&mut self, now: Instant) {
        let due: Vec<(String, (String, String, Instant))> = self
            .pending
            .iter()
            .filter(|(_, (_, _, at))| *at <= now)
            .map(|(u, v)| (u.clone(), v.clone()))
            .collect();
        for (uid, (ns, name, _)) in due {
            self.pending.remove(&uid);
            self.evict(&ns, &name, &uid);
        }
    }
}

/// Runs the controller until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let mut pods = Feed::new(shared.store.clone(), "", "pods");
    let mut nodes = Feed::new(shared.store.clone(), "", "nodes");
    let mut c = Controller {
        shared: shared.clone(),
        taints: HashMap::new(),
        pending: HashMap::new(),
    };
    loop {
        let now = Instant::now();
        let changed_nodes = match nodes.take() {
            Update::Resync => c.resync_nodes(),
            Update::Events(e) if !e.is_empty() => c.resync_nodes(),
            Update::Events(_) => Vec::new(),
        };
        for p in c.pods_on(&changed_nodes) {
            c.consider(&p, EventType::Modified, now);
        }
        match pods.take() {
            Update::Resync => {
                let all: Vec<String> = c.taints.keys().cloned().collect();
                for p in c.pods_on(&all) {
                    c.consider(&p, EventType::Modified, now);
                }
            }
            Update::Events(events) => {
                // Only the last state of each pod in the batch matters.
                let mut last: BTreeMap<String, (Arc<Value>, EventType)> = BTreeMap::new();
                for e in events {
                    last.insert(uid_of(&e.object).to_string(), (e.object.clone(), e.type_));
                }
                for (p, t) in last.values() {
                    c.consider(p, *t, now);
                }
            }
        }
        c.fire_due(Instant::now());
        let next = c.pending.values().map(|(_, _, at)| *at).min();
        tokio::select! {
            () = pods.wait() => {}
            () = nodes.wait() => {}
            () = async { match next { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}
