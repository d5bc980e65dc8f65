//! Controllers for Deployments (replicas), DaemonSets (one pod per Ready node whose taints the
//! pod tolerates, with the tolerations the real controller adds to daemon pods) and Jobs
//! (completions, parallelism, backoffLimit). Pods carry a controller owner reference, so
//! deleting the workload garbage-collects them. Each wake-up maps changed objects to the
//! workloads concerned and reconciles those from the store's current state.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{Feed, Update, controller_of, info, key_of, owner_ref, terminating};
use crate::kube::Shared;
use crate::kube::meta::{self, name_of, namespace_of, uid_of};
use crate::kube::store::DeleteOptions;
use crate::kube::taints;

/// A workload to reconcile.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Deployment(String, String),
    DaemonSet(String, String),
    Job(String, String),
}

fn active(pod: &Value) -> bool {
    !terminating(pod)
        && !matches!(
            pod.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        )
}

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .is_some_and(|c| c["status"] == "True")
}

/// A short stable hash of a pod template (the `pod-template-hash` label).
fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in template.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (0..10)
        .map(|i| ALPHABET[((h >> (i * 6)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

struct Controllers {
    shared: Arc<Shared>,
}

impl Controllers {
    /// Pods of `ns` controlled by the object with `uid`.
    fn owned_pods(&self, ns: &str, uid: &str) -> Vec<Arc<Value>> {
        let pods = info(&self.shared, "", "pods");
        self.shared
            .store
            .dependents(uid, &pods.gr())
            .into_iter()
            .filter(|p| namespace_of(p) == ns)
            .filter(|p| controller_of(p).is_some_and(|(_, _, u)| u == uid))
            .collect()
    }

    fn create_pod(&self, owner: &Value, extra_labels: &[(&str, String)], node: Option<&str>) {
        let pods = info(&self.shared, "", "pods");
        let template = owner
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(json!({}));
        let mut pod = json!({
            "metadata": template.get("metadata").cloned().unwrap_or(json!({})),
            "spec": template.get("spec").cloned().unwrap_or(json!({})),
        });
        let prefix = match extra_labels.iter().find(|(k, _)| *k == "pod-template-hash") {
            Some((_, h)) => format!("{}-{h}-", name_of(owner)),
            None => format!("{}-", name_of(owner)),
        };
        let m = meta::meta_mut(&mut pod);
        m.remove("name");
        m.insert("generateName".into(), json!(prefix));
        m.insert("ownerReferences".into(), json!([owner_ref(owner)]));
        let labels = m.entry("labels").or_insert(json!({}));
        for (k, v) in extra_labels {
            labels[*k] = json!(v);
        }
        if let Some(n) = node {
            pod["spec"]["nodeName"] = json!(n);
        }
        if owner.get("kind").and_then(Value::as_str) == Some("DaemonSet") {
            taints::add_daemon_pod_tolerations(&mut pod["spec"]);
        }
        if let Err(e) = self.shared.store.create(&pods, namespace_of(owner), pod) {
            tracing::debug!(owner = %name_of(owner), error = %e, "creating a pod failed");
        }
    }

    fn delete_pod(&self, pod: &Value) {
        let pods = info(&self.shared, "", "pods");
        let _ = self.shared.store.delete(
            &pods,
            namespace_of(pod),
            name_of(pod),
            &DeleteOptions::default(),
        );
    }

    fn write_status(&self, group: &str, plural: &str, owner: &Value, status: Value) {
        let i = info(&self.shared, group, plural);
        let uid = uid_of(owner).to_string();
        let _ =
            self.shared
                .store
                .update_with(&i, namespace_of(owner), name_of(owner), true, |cur| {
                    let mut n = cur.clone();
                    let current = cur.get("status").cloned().unwrap_or(json!({}));
                    let mut merged = current.clone();
                    json_patch::merge(&mut merged, &status);
                    // Rewriting only timestamps would wake this controller again for nothing.
                    if uid_of(cur) == uid && without_times(&merged) != without_times(&current) {
                        n["status"] = merged;
                    }
                    Ok(n)
                });
    }

    fn reconcile_deployment(&self, ns: &str, name: &str) {
        let Ok(d) = self
            .shared
            .store
            .get(&info(&self.shared, "apps", "deployments"), ns, name)
        else {
            return;
        };
        if terminating(&d) {
            return;
        }
        let want = d
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0) as usize;
        let hash = template_hash(d.pointer("/spec/template").unwrap_or(&Value::Null));
        let is_current = |p: &Value| {
            p.pointer("/metadata/labels/pod-template-hash")
                .and_then(Value::as_str)
                == Some(hash.as_str())
        };
        let active_pods: Vec<_> = self
            .owned_pods(ns, uid_of(&d))
            .into_iter()
            .filter(|p| active(p))
            .collect();
        let (mut current, old): (Vec<_>, Vec<_>) =
            active_pods.into_iter().partition(|p| is_current(p));
        // A changed template (e.g. `kubectl rollout restart`) replaces the old pods.
        for p in &old {
            self.delete_pod(p);
        }
        if current.len() < want {
            for _ in current.len()..want {
                self.create_pod(&d, &[("pod-template-hash", hash.clone())], None);
            }
        } else if current.len() > want {
            current.sort_by(|a, b| {
                meta::meta_str(b, "creationTimestamp").cmp(&meta::meta_str(a, "creationTimestamp"))
            });
            for p in current.drain(..current.len() - want) {
                self.delete_pod(&p);
            }
        }
        let pods: Vec<_> = self
            .owned_pods(ns, uid_of(&d))
            .into_iter()
            .filter(|p| active(p) && is_current(p))
            .collect();
        let ready_n = pods.iter().filter(|p| ready(p)).count();
        let available = ready_n >= want;
        let now = meta::now();
        self.write_status("apps", "deployments", &d, json!({
            "observedGeneration": d.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "replicas": pods.len(),
            "updatedReplicas": pods.len(),
            "readyReplicas": ready_n,
            "availableReplicas": ready_n,
            "unavailableReplicas": pods.len().saturating_sub(ready_n),
            "conditions": [
                {"type": "Available", "status": if available { "True" } else { "False" },
                 "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                 "message": if available { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
                 "lastUpdateTime": now, "lastTransitionTime": now},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                 "message": format!("Pods of deployment \"{name}\" are progressing."), "lastUpdateTime": now, "lastTransitionTime": now}
            ],
        }));
    }

    fn reconcile_daemonset(&self, ns: &str, name: &str) {
        let Ok(ds) = self
            .shared
            .store
            .get(&info(&self.shared, "apps", "daemonsets"), ns, name)
        else {
            return;
        };
        if terminating(&ds) {
            return;
        }
        let node_selector = ds
            .pointer("/spec/template/spec/nodeSelector")
            .and_then(Value::as_object);
        // The tolerations its pods will have: the template's and the daemon pods' defaults.
        let mut pod_spec = ds
            .pointer("/spec/template/spec")
            .cloned()
            .unwrap_or(json!({}));
        taints::add_daemon_pod_tolerations(&mut pod_spec);
        let tolerations = taints::tolerations_of(&pod_spec);
        let (nodes, _) = self
            .shared
            .store
            .snapshot(&info(&self.shared, "", "nodes").gr());
        let selected = |n: &&Arc<Value>| {
            node_ready(n)
                && node_selector.is_none_or(|s| {
                    s.iter().all(|(k, v)| {
                        n.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v)
                    })
                })
        };
        let untolerated = |n: &Value, effects: &[&str]| {
            taints::untolerated(&taints::taints_of(n), &tolerations, effects).is_some()
        };
        // Should run: every NoSchedule and NoExecute taint tolerated. Should keep running: every
        // NoExecute taint tolerated (a NoSchedule taint added later does not remove a pod).
        let eligible: BTreeSet<String> = nodes
            .iter()
            .filter(selected)
            .filter(|n| !untolerated(n, &["NoSchedule", "NoExecute"]))
            .map(|n| name_of(n).to_string())
            .collect();
        let keep: BTreeSet<String> = nodes
            .iter()
            .filter(selected)
            .filter(|n| !untolerated(n, &["NoExecute"]))
            .map(|n| name_of(n).to_string())
            .collect();
        let pods: Vec<_> = self
            .owned_pods(ns, uid_of(&ds))
            .into_iter()
            .filter(|p| active(p))
            .collect();
        let mut covered = BTreeSet::new();
        for p in &pods {
            let node = p
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !keep.contains(node) || !covered.insert(node.to_string()) {
                self.delete_pod(p);
            }
        }
        let hash = template_hash(ds.pointer("/spec/template").unwrap_or(&Value::Null));
        for n in eligible.difference(&covered) {
            self.create_pod(&ds, &[("controller-revision-hash", hash.clone())], Some(n));
        }
        let pods: Vec<_> = self
            .owned_pods(ns, uid_of(&ds))
            .into_iter()
            .filter(|p| active(p))
            .collect();
        let ready_n = pods.iter().filter(|p| ready(p)).count();
        self.write_status("apps", "daemonsets", &ds, json!({
            "observedGeneration": ds.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "desiredNumberScheduled": eligible.len(),
            "currentNumberScheduled": pods.len(),
            "updatedNumberScheduled": pods.len(),
            "numberReady": ready_n,
            "numberAvailable": ready_n,
            "numberMisscheduled": 0,
        }));
    }

    fn reconcile_job(&self, ns: &str, name: &str) {
        let Ok(job) = self
            .shared
            .store
            .get(&info(&self.shared, "batch", "jobs"), ns, name)
        else {
            return;
        };
        if terminating(&job) {
            return;
        }
        let finished = job
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter().any(|c| {
                    (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
                })
            });
        let pods = self.owned_pods(ns, uid_of(&job));
        let phase =
            |p: &Value, ph: &str| p.pointer("/status/phase").and_then(Value::as_str) == Some(ph);
        let succeeded = pods.iter().filter(|p| phase(p, "Succeeded")).count() as i64;
        let failed = pods.iter().filter(|p| phase(p, "Failed")).count() as i64;
        let running: Vec<_> = pods.iter().filter(|p| active(p)).collect();
        let completions = job
            .pointer("/spec/completions")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let parallelism = job
            .pointer("/spec/parallelism")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let backoff = job
            .pointer("/spec/backoffLimit")
            .and_then(Value::as_i64)
            .unwrap_or(6);
        let now = meta::now();
        let mut status = json!({
            "active": running.len(),
            "succeeded": succeeded,
            "failed": failed,
            "ready": running.iter().filter(|p| ready(p)).count(),
        });
        if job.pointer("/status/startTime").is_none() {
            status["startTime"] = json!(now);
        }
        if !finished {
            let suspended = job.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
            if succeeded >= completions {
                status["completionTime"] = json!(now);
                status["conditions"] = json!([
                    {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now, "lastTransitionTime": now},
                    {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now, "lastTransitionTime": now}
                ]);
            } else if failed > backoff {
                status["conditions"] = json!([
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastProbeTime": now, "lastTransitionTime": now}
                ]);
                for p in &running {
                    self.delete_pod(p);
                }
            } else if !suspended {
                let want = parallelism.min(completions - succeeded).max(0) as usize;
                let hash = uid_of(&job).to_string();
                for _ in running.len()..want {
                    self.create_pod(
                        &job,
                        &[("batch.kubernetes.io/controller-uid", hash.clone())],
                        None,
                    );
                }
                status["active"] = json!(want.max(running.len()));
            }
        }
        self.write_status("batch", "jobs", &job, status);
    }
}

/// `v` without the `*Time` fields (condition and status timestamps).
fn without_times(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.ends_with("Time"))
                .map(|(k, v)| (k.clone(), without_times(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_times).collect()),
        other => other.clone(),
    }
}

fn node_ready(n: &Value) -> bool {
    n.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .is_some_and(|c| c["status"] == "True")
}

fn all_keys(shared: &Shared, keys: &mut BTreeSet<Key>) {
    for (plural, group) in [
        ("deployments", "apps"),
        ("daemonsets", "apps"),
        ("jobs", "batch"),
    ] {
        let (items, _) = shared.store.snapshot(&info(shared, group, plural).gr());
        for o in items {
            let (ns, name) = key_of(&o);
            keys.insert(match plural {
                "deployments" => Key::Deployment(ns, name),
                "daemonsets" => Key::DaemonSet(ns, name),
                _ => Key::Job(ns, name),
            });
        }
    }
}

/// Runs the Deployment, DaemonSet and Job controllers until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let store = shared.store.clone();
    let mut deployments = Feed::new(store.clone(), "apps", "deployments");
    let mut daemonsets = Feed::new(store.clone(), "apps", "daemonsets");
    let mut jobs = Feed::new(store.clone(), "batch", "jobs");
    let mut pods = Feed::new(store.clone(), "", "pods");
    let mut nodes = Feed::new(store.clone(), "", "nodes");
    let c = Controllers {
        shared: shared.clone(),
    };
    loop {
        let mut keys = BTreeSet::new();
        let mut resync = false;
        for (feed, make) in [
            (
                &mut deployments,
                Key::Deployment as fn(String, String) -> Key,
            ),
            (&mut daemonsets, Key::DaemonSet),
            (&mut jobs, Key::Job),
        ] {
            match feed.take() {
                Update::Resync => resync = true,
                Update::Events(es) => {
                    for e in es {
                        let (ns, name) = key_of(&e.object);
                        keys.insert(make(ns, name));
                    }
                }
            }
        }
        match pods.take() {
            Update::Resync => resync = true,
            Update::Events(es) => {
                for e in es {
                    if let Some((kind, name, _)) = controller_of(&e.object) {
                        let ns = namespace_of(&e.object).to_string();
                        match kind.as_str() {
                            "Deployment" => keys.insert(Key::Deployment(ns, name)),
                            "DaemonSet" => keys.insert(Key::DaemonSet(ns, name)),
                            "Job" => keys.insert(Key::Job(ns, name)),
                            _ => false,
                        };
                    }
                }
            }
        }
        match nodes.take() {
            Update::Resync => resync = true,
            Update::Events(es) if !es.is_empty() => {
                let (items, _) = store.snapshot(&info(&shared, "apps", "daemonsets").gr());
                for o in items {
                    let (ns, name) = key_of(&o);
                    keys.insert(Key::DaemonSet(ns, name));
                }
            }
            Update::Events(_) => {}
        }
        if resync {
            all_keys(&shared, &mut keys);
        }
        let started = tokio::time::Instant::now();
        for k in keys {
            match k {
                Key::Deployment(ns, name) => c.reconcile_deployment(&ns, &name),
                Key::DaemonSet(ns, name) => c.reconcile_daemonset(&ns, &name),
                Key::Job(ns, name) => c.reconcile_job(&ns, &name),
            }
        }
        let took = started.elapsed();
        tokio::select! {
            () = deployments.wait() => {}
            () = daemonsets.wait() => {}
            () = jobs.wait() => {}
            () = pods.wait() => {}
            () = nodes.wait() => {}
            () = shared.shutdown.cancelled() => return,
        }
        // Let a burst of changes (the kubelet starting thousands of pods) land before
        // reconciling, so one reconcile covers many events; waiting at least as long as the
        // last round took keeps big workloads from monopolising the CPU.
        let pause = RECONCILE_BATCH.max(took);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

/// How long a wake-up waits for more changes before reconciling.
const RECONCILE_BATCH: std::time::Duration = std::time::Duration::from_millis(5);
