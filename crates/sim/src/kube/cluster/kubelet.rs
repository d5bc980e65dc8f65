//! Scheduler and kubelet in one task: places unscheduled pods on the Ready node with the
//! fewest pods, then "runs" them: a loopback pod IP from the configured block, the node's IP
//! as hostIP, phase Running with Ready conditions. Pods owned by a Job succeed after the
//! configured run time (a tokio timer, so tests can drive it with a paused clock).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{Feed, Update, controller_of, info, key_of, nth_address, terminating};
use crate::kube::Shared;
use crate::kube::meta::{self, labels_of, name_of, uid_of};
use crate::kube::store::EventType;

/// Hands out pod IPs from the block and takes them back.
#[derive(Debug)]
/// Addresses are handed out in order through the whole block and reused only after it wraps
/// around, so a just-deleted pod's IP does not reappear at once on another pod (NMI tells pods
/// apart by source address).
struct IpPool {
    next: u32,
    by_pod: HashMap<String, Ipv4Addr>,
    used: HashSet<Ipv4Addr>,
}

impl IpPool {
    /// An address for pod `uid`, or `None` when the block is exhausted.
    fn allocate(&mut self, shared: &Shared, uid: &str) -> Option<Ipv4Addr> {
        if let Some(ip) = self.by_pod.get(uid) {
            return Some(*ip);
        }
        let block = &shared.config.pod_ip_range;
        // Offsets 0 and size-1 (network and broadcast addresses) are never handed out.
        let usable = block.size() - 2;
        if self.used.len() >= usable as usize {
            return None;
        }
        let ip = loop {
            self.next = self.next % usable + 1;
            let candidate = nth_address(block, self.next);
            if !self.used.contains(&candidate) {
                break candidate;
            }
        };
        self.claim(uid, ip);
        Some(ip)
    }

    /// Records an address already held by a pod (found on a resync).
    fn claim(&mut self, uid: &str, ip: Ipv4Addr) {
        self.by_pod.insert(uid.to_string(), ip);
        self.used.insert(ip);
    }

    fn release(&mut self, uid: &str) {
        if let Some(ip) = self.by_pod.remove(uid) {
            self.used.remove(&ip);
        }
    }
}

struct NodeInfo {
    ready: bool,
    unschedulable: bool,
    ip: String,
    labels: serde_json::Map<String, Value>,
}

fn node_info(n: &Value) -> NodeInfo {
    let ready = n
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .is_some_and(|c| c["status"] == "True");
    let ip = n
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .unwrap_or("")
        .to_string();
    NodeInfo {
        ready,
        unschedulable: n.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true),
        ip,
        labels: labels_of(n).cloned().unwrap_or_default(),
    }
}

struct Kubelet {
    shared: Arc<Shared>,
    nodes: BTreeMap<String, NodeInfo>,
    pods_per_node: HashMap<String, usize>,
    /// (pods, node) for every schedulable node: the least-loaded node is the first entry.
    load: BTreeSet<(usize, String)>,
    /// Pods left without an IP because the block was full, retried when one is released.
    waiting: BTreeSet<(String, String)>,
    /// Whether an address was released since the last retry.
    released: bool,
    /// Pod uid → node it was counted on.
    placed: HashMap<String, String>,
    ips: IpPool,
}

impl Kubelet {
    fn resync_nodes(&mut self) {
        let (nodes, _) = self
            .shared
            .store
            .snapshot(&info(&self.shared, "", "nodes").gr());
        self.nodes = nodes
            .iter()
            .map(|n| (name_of(n).to_string(), node_info(n)))
            .collect();
        self.rebuild_load();
    }

    fn rebuild_load(&mut self) {
        self.load = self
            .nodes
            .iter()
            .filter(|(_, n)| n.ready && !n.unschedulable)
            .map(|(name, _)| {
                (
                    self.pods_per_node.get(name).copied().unwrap_or(0),
                    name.clone(),
                )
            })
            .collect();
    }

    /// Moves `node`'s count by `delta`, keeping the load index in step.
    fn adjust(&mut self, node: &str, delta: isize) {
        let c = self.pods_per_node.entry(node.to_string()).or_default();
        let old = *c;
        *c = old.saturating_add_signed(delta);
        let new = *c;
        if self.load.remove(&(old, node.to_string())) {
            self.load.insert((new, node.to_string()));
        }
    }

    fn count(&mut self, pod: &Value, event: EventType) {
        let uid = uid_of(pod).to_string();
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str);
        let gone = event == EventType::Deleted;
        if let Some(prev) = self.placed.get(&uid).cloned()
            && (gone || node != Some(prev.as_str()))
        {
            self.adjust(&prev, -1);
            self.placed.remove(&uid);
        }
        if !gone
            && let Some(n) = node
            && !self.placed.contains_key(&uid)
        {
            self.adjust(n, 1);
            self.placed.insert(uid.clone(), n.to_string());
        }
        if gone {
            self.ips.release(&uid);
            self.released = true;
        } else if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) != Some(true)
            && let Some(ip) = pod
                .pointer("/status/podIP")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
            && !self.ips.by_pod.contains_key(&uid)
        {
            self.ips.claim(&uid, ip);
        }
    }

    fn pick_node(&self, pod: &Value) -> Option<String> {
        let selector = pod.pointer("/spec/nodeSelector").and_then(Value::as_object);
        self.load
            .iter()
            .map(|(_, name)| name)
            .find(|name| {
                selector.is_none_or(|s| {
                    self.nodes
                        .get(*name)
                        .is_some_and(|n| s.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
                })
            })
            .cloned()
    }

    fn handle(&mut self, pod: &Value, event: EventType) {
        self.count(pod, event);
        if event == EventType::Deleted || terminating(pod) {
            return;
        }
        let pods = info(&self.shared, "", "pods");
        let (ns, name) = key_of(pod);
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str);
        let Some(node) = node else {
            if let Some(target) = self.pick_node(pod) {
                let uid = uid_of(pod).to_string();
                let r = self
                    .shared
                    .store
                    .update_with(&pods, &ns, &name, false, |cur| {
                        if uid_of(cur) != uid || cur.pointer("/spec/nodeName").is_some() {
                            return Ok(cur.clone());
                        }
                        let mut n = cur.clone();
                        n["spec"]["nodeName"] = json!(target);
                        Ok(n)
                    });
                if let Err(e) = r {
                    tracing::debug!(pod = %name, error = %e, "scheduling failed");
                }
            }
            return;
        };
        let phase = pod.pointer("/status/phase").and_then(Value::as_str);
        if phase != Some("Pending") || pod.pointer("/status/podIP").is_some() {
            return;
        }
        let host_ip = self
            .nodes
            .get(node)
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        let host_network = pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true);
        let pod_ip = if host_network {
            host_ip.clone()
        } else {
            match self.ips.allocate(&self.shared, uid_of(pod)) {
                Some(ip) => ip.to_string(),
                None => {
                    self.waiting.insert((ns.clone(), name.clone()));
                    tracing::warn!(pod = %name, range = %self.shared.config.pod_ip_range, "pod IP range exhausted; the pod stays Pending");
                    return;
                }
            }
        };
        let now = meta::now();
        let statuses: Vec<Value> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        json!({
                            "name": c.get("name").cloned().unwrap_or(json!("")),
                            "image": c.get("image").cloned().unwrap_or(json!("")),
                            "imageID": "",
                            "containerID": format!("containerd://{}", uid_of(pod)),
                            "ready": true,
                            "started": true,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": now}},
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
        let status = json!({
            "phase": "Running",
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": now,
            "qosClass": "BestEffort",
            "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
            "containerStatuses": statuses,
        });
        let uid = uid_of(pod).to_string();
        let r = self
            .shared
            .store
            .update_with(&pods, &ns, &name, true, |cur| {
                if uid_of(cur) != uid || cur.pointer("/status/podIP").is_some() {
                    return Ok(cur.clone());
                }
                let mut n = cur.clone();
                n["status"] = status;
                Ok(n)
            });
        if r.is_ok() && controller_of(pod).is_some_and(|(kind, _, _)| kind == "Job") {
            self.finish_later(ns, name, uid);
        }
    }

    /// Completes a Job's pod after the run time.
    fn finish_later(&self, ns: String, name: String, uid: String) {
        let shared = self.shared.clone();
        let run_time = shared.config.job_pod_run_time;
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(run_time) => {}
                () = shared.shutdown.cancelled() => return,
            }
            let pods = info(&shared, "", "pods");
            let _ = shared.store.update_with(&pods, &ns, &name, true, |cur| {
                if uid_of(cur) != uid {
                    return Ok(cur.clone());
                }
                let now = meta::now();
                let mut n = cur.clone();
                n["status"]["phase"] = json!("Succeeded");
                if let Some(cs) = n["status"]["containerStatuses"].as_array_mut() {
                    for c in cs {
                        let started = c.pointer("/state/running/startedAt").cloned().unwrap_or(json!(now));
                        c["ready"] = json!(false);
                        c["started"] = json!(false);
                        c["state"] = json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": now}});
                    }
                }
                if let Some(conds) = n["status"]["conditions"].as_array_mut() {
                    for c in conds {
                        if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                            c["status"] = json!("False");
                            c["reason"] = json!("PodCompleted");
                            c["lastTransitionTime"] = json!(now);
                        }
                    }
                }
                Ok(n)
            });
        });
    }
}

/// Runs the scheduler and kubelet until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let mut pods = Feed::new(shared.store.clone(), "", "pods");
    let mut nodes = Feed::new(shared.store.clone(), "", "nodes");
    let mut k = Kubelet {
        shared: shared.clone(),
        nodes: BTreeMap::new(),
        pods_per_node: HashMap::new(),
        load: BTreeSet::new(),
        waiting: BTreeSet::new(),
        released: false,
        placed: HashMap::new(),
        ips: IpPool {
            next: 0,
            by_pod: HashMap::new(),
            used: HashSet::new(),
        },
    };
    loop {
        match nodes.take() {
            // Node changes are rare: re-read them all.
            Update::Resync => k.resync_nodes(),
            Update::Events(e) if !e.is_empty() => k.resync_nodes(),
            Update::Events(_) => {}
        }
        match pods.take() {
            Update::Resync => {
                let (all, _) = shared.store.snapshot(&info(&shared, "", "pods").gr());
                k.pods_per_node.clear();
                k.placed.clear();
                k.rebuild_load();
                for p in &all {
                    k.handle(p, EventType::Added);
                }
            }
            Update::Events(events) => {
                for e in events {
                    k.handle(&e.object, e.type_);
                }
            }
        }
        if k.released && !k.waiting.is_empty() {
            k.released = false;
            let pods_info = info(&shared, "", "pods");
            for (ns, name) in std::mem::take(&mut k.waiting) {
                if let Ok(p) = shared.store.get(&pods_info, &ns, &name) {
                    k.handle(&p, EventType::Modified);
                }
            }
        }
        tokio::select! {
            () = pods.wait() => {}
            () = nodes.wait() => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}
