//! Scheduler and kubelet in one task: places unscheduled pods on the Ready node with the
//! fewest pods among those they fit (node selector, cordon, taints: a pod must tolerate every
//! NoSchedule and NoExecute taint; PreferNoSchedule taints it does not tolerate make a node
//! less preferred), choosing at random among equally good nodes and counting each placement at
//! once, as kube-scheduler does (it picks among the top-scored nodes by reservoir sampling and
//! "assumes" a pod on its node in its cache before the binding is written back, so a burst of
//! pods is spread instead of landing on whichever node was emptiest when the burst began),
//! then "runs" them: a loopback pod IP from the configured block, the node's IP
//! as hostIP, phase Running with Ready conditions. A pod no node fits stays Pending with the
//! scheduler's `PodScheduled=False` condition saying why, and is tried again whenever a node
//! changes. As the real kubelet, a pod bound directly to a node whose NoExecute taint it does
//! not tolerate is rejected (phase Failed). Pods owned by a Job succeed after the configured run
//! time (a tokio timer, so tests can drive it with a paused clock).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{Feed, Update, controller_of, info, key_of, nth_address, terminating};
use crate::kube::Shared;
use crate::kube::meta::{self, labels_of, name_of, uid_of};
use crate::kube::store::EventType;
use crate::kube::taints::{self, Taint};

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
    taints: Vec<Taint>,
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
        taints: taints::taints_of(n),
    }
}

/// Why a node does not fit a pod, in the scheduler's words.
fn misfit(n: &NodeInfo, pod: &Value, tolerations: &[taints::Toleration]) -> Option<String> {
    if !n.ready {
        return Some("node(s) were not ready".into());
    }
    let selector = pod.pointer("/spec/nodeSelector").and_then(Value::as_object);
    if selector.is_some_and(|s| s.iter().any(|(k, v)| n.labels.get(k) != Some(v))) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    if n.unschedulable {
        let cordon = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            value: String::new(),
            effect: "NoSchedule".into(),
        };
        if !tolerations.iter().any(|t| t.tolerates(&cordon)) {
            return Some("node(s) were unschedulable".into());
        }
    }
    taints::untolerated(&n.taints, tolerations, &["NoSchedule", "NoExecute"])
        .map(|t| format!("node(s) had untolerated taint {}", t.describe()))
}

/// The scheduler's message for a pod no node fits: reasons counted and sorted.
fn unschedulable_message(total: usize, reasons: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(r, c)| format!("{c} {r}")).collect();
    format!(
        "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling.",
        parts.join(", ")
    )
}

struct Kubelet {
    shared: Arc<Shared>,
    nodes: BTreeMap<String, NodeInfo>,
    pods_per_node: HashMap<String, usize>,
    /// (pods, a random draw, node) for every schedulable node: the least-loaded node is the
    /// first entry, and equally loaded nodes come in random order (the draw is made afresh
    /// whenever a node's count changes), as kube-scheduler picks at random among its
    /// top-scored nodes.
    load: BTreeSet<(usize, u64, String)>,
    /// Each indexed node's current draw (its key in `load`).
    draws: HashMap<String, u64>,
    /// Pods left without an IP because the block was full, retried when one is released.
    waiting: BTreeSet<(String, String)>,
    /// Whether an address was released since the last retry.
    released: bool,
    /// Pod uid → node it was counted on.
    placed: HashMap<String, String>,
    /// Pods no node fits now, tried again when a node changes.
    unscheduled: BTreeSet<(String, String)>,
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
        self.draws = self
            .nodes
            .iter()
            .filter(|(_, n)| n.ready)
            .map(|(name, _)| (name.clone(), rand::random()))
            .collect();
        self.load = self
            .draws
            .iter()
            .map(|(name, draw)| {
                (
                    self.pods_per_node.get(name).copied().unwrap_or(0),
                    *draw,
                    name.clone(),
                )
            })
            .collect();
    }

    /// Moves `node`'s count by `delta`, keeping the load index in step (with a fresh draw).
    fn adjust(&mut self, node: &str, delta: isize) {
        let c = self.pods_per_node.entry(node.to_string()).or_default();
        let old = *c;
        *c = old.saturating_add_signed(delta);
        let new = *c;
        if let Some(draw) = self.draws.get_mut(node)
            && self.load.remove(&(old, *draw, node.to_string()))
        {
            *draw = rand::random();
            self.load.insert((new, *draw, node.to_string()));
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

    /// The least-loaded node the pod fits, preferring nodes without PreferNoSchedule taints it
    /// does not tolerate, in the load index's random order among equals; or the scheduler's
    /// message saying why none fits.
    fn pick_node(&self, pod: &Value) -> Result<String, String> {
        let tolerations = taints::tolerations_of(pod.get("spec").unwrap_or(&Value::Null));
        let mut best: Option<(usize, &String)> = None;
        for (_, _, name) in &self.load {
            let Some(n) = self.nodes.get(name) else {
                continue;
            };
            if misfit(n, pod, &tolerations).is_some() {
                continue;
            }
            let soft = n
                .taints
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule")
                .filter(|t| !tolerations.iter().any(|tol| tol.tolerates(t)))
                .count();
            if soft == 0 {
                return Ok(name.clone());
            }
            if best.is_none_or(|(b, _)| soft < b) {
                best = Some((soft, name));
            }
        }
        if let Some((_, name)) = best {
            return Ok(name.clone());
        }
        let reasons: Vec<String> = self
            .nodes
            .values()
            .filter_map(|n| misfit(n, pod, &tolerations))
            .collect();
        Err(unschedulable_message(self.nodes.len(), &reasons))
    }

    /// Records the scheduler's verdict on a pod no node fits (once per distinct message).
    fn mark_unschedulable(&self, pod: &Value, message: String) {
        let current = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"));
        if current.is_some_and(|c| c["status"] == "False" && c["message"] == message.as_str()) {
            return;
        }
        let pods = info(&self.shared, "", "pods");
        let (ns, name) = key_of(pod);
        let uid = uid_of(pod).to_string();
        let now = meta::now();
        let cond = json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": null, "lastTransitionTime": now});
        // As the real scheduler: a FailedScheduling Warning, shown by `kubectl describe pod`.
        let event = json!({
            "metadata": {"generateName": format!("{name}.")},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns, "uid": uid_of(pod)},
            "reason": "FailedScheduling", "message": message, "type": "Warning",
            "source": {"component": "default-scheduler"}, "reportingComponent": "default-scheduler",
            "reportingInstance": "default-scheduler", "action": "Scheduling",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        });
        if let Err(e) = self
            .shared
            .store
            .create(&info(&self.shared, "", "events"), &ns, event)
        {
            tracing::debug!(pod = %name, error = %e, "recording FailedScheduling failed");
        }
        let _ = self
            .shared
            .store
            .update_with(&pods, &ns, &name, true, |cur| {
                if uid_of(cur) != uid || cur.pointer("/spec/nodeName").is_some() {
                    return Ok(cur.clone());
                }
                let mut n = cur.clone();
                let conds = n["status"]
                    .as_object_mut()
                    .map(|st| st.entry("conditions").or_insert(json!([])));
                if let Some(Value::Array(list)) = conds {
                    list.retain(|c| c["type"] != "PodScheduled");
                    list.push(cond);
                }
                Ok(n)
            });
    }

    /// Tries the pods no node fitted again (a node changed).
    fn retry_unscheduled(&mut self) {
        let pods = info(&self.shared, "", "pods");
        for (ns, name) in std::mem::take(&mut self.unscheduled) {
            if let Ok(p) = self.shared.store.get(&pods, &ns, &name) {
                self.handle(&p, EventType::Modified);
            }
        }
    }

    /// The kubelet's admission: a pod bound to this node that does not tolerate one of its
    /// NoExecute taints is rejected.
    fn reject_untolerated(&self, pod: &Value, node: &str) -> bool {
        let Some(n) = self.nodes.get(node) else {
            return false;
        };
        let tolerations = taints::tolerations_of(pod.get("spec").unwrap_or(&Value::Null));
        let Some(t) = taints::untolerated(&n.taints, &tolerations, &["NoExecute"]) else {
            return false;
        };
        let message = format!(
            "Pod was rejected: Predicate TaintToleration failed: node(s) had untolerated taint {}",
            t.describe()
        );
        let pods = info(&self.shared, "", "pods");
        let (ns, name) = key_of(pod);
        let uid = uid_of(pod).to_string();
        let _ = self
            .shared
            .store
            .update_with(&pods, &ns, &name, true, |cur| {
                if uid_of(cur) != uid {
                    return Ok(cur.clone());
                }
                let mut n = cur.clone();
                n["status"]["phase"] = json!("Failed");
                n["status"]["reason"] = json!("TaintToleration");
                n["status"]["message"] = json!(message);
                Ok(n)
            });
        true
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
            let target = match self.pick_node(pod) {
                Ok(t) => t,
                Err(message) => {
                    self.unscheduled.insert((ns.clone(), name.clone()));
                    self.mark_unschedulable(pod, message);
                    return;
                }
            };
            self.unscheduled.remove(&(ns.clone(), name.clone()));
            {
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
                match r {
                    // Counted now, as the real scheduler's cache assumes a pod on its node before
                    // the binding comes back: the next pod of a burst sees this one's node as
                    // fuller. The pod's own update, when it arrives, finds it counted already.
                    Ok(stored)
                        if uid_of(&stored) == uid
                            && stored.pointer("/spec/nodeName").and_then(Value::as_str)
                                == Some(target.as_str())
                            && !self.placed.contains_key(&uid) =>
                    {
                        self.adjust(&target, 1);
                        self.placed.insert(uid, target);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(pod = %name, error = %e, "scheduling failed"),
                }
            }
            return;
        };
        let phase = pod.pointer("/status/phase").and_then(Value::as_str);
        if phase != Some("Pending") || pod.pointer("/status/podIP").is_some() {
            return;
        }
        if self.reject_untolerated(pod, node) {
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
        draws: HashMap::new(),
        waiting: BTreeSet::new(),
        released: false,
        placed: HashMap::new(),
        unscheduled: BTreeSet::new(),
        ips: IpPool {
            next: 0,
            by_pod: HashMap::new(),
            used: HashSet::new(),
        },
    };
    loop {
        let nodes_changed = match nodes.take() {
            // Node changes are rare: re-read them all.
            Update::Resync => true,
            Update::Events(e) => !e.is_empty(),
        };
        if nodes_changed {
            k.resync_nodes();
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
        if nodes_changed && !k.unscheduled.is_empty() {
            k.retry_unscheduled();
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
