//! Taints and tolerations in the Kubernetes simulator, with the real rules: the scheduler keeps
//! pods off nodes whose NoSchedule/NoExecute taints they do not tolerate (and says why in
//! `PodScheduled`), the taint-eviction controller removes pods from NoExecute nodes (at once, or
//! after `tolerationSeconds`), the kubelet rejects a directly bound pod that does not tolerate a
//! NoExecute taint, DaemonSets follow taints with the controller's default tolerations, and the
//! API refuses the taints and tolerations a real API server refuses. `kubectl taint` (the real
//! kubectl) is the judge of the wire format.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aad_pod_identity_sim::kube::resources::ResourceInfo;
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig, KubeSimHandle};
use aad_pod_identity_sim::topology::Topology;
use serde_json::{Value, json};
use tokio::process::Command;

fn info(h: &KubeSimHandle, group: &str, plural: &str) -> Arc<ResourceInfo> {
    h.store().registry().preferred(group, plural).unwrap()
}

/// Waits (on store notifications, never polling on a timer) until `check` holds for the pods,
/// at most an hour of tokio time (the paused-clock test) or 30 s (the others).
async fn pods_until(h: &KubeSimHandle, check: impl Fn(&[Arc<Value>]) -> bool) -> Vec<Arc<Value>> {
    let limit = if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread
    {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(30)
    };
    let i = info(h, "", "pods");
    let mut rx = h.store().subscribe(&i.gr());
    loop {
        let (items, _) = h.store().snapshot(&i.gr());
        if check(&items) {
            return items;
        }
        tokio::time::timeout(limit, rx.changed())
            .await
            .expect("condition not reached in time")
            .unwrap();
    }
}

/// A simulator with `n` Ready nodes and its cluster tasks; the node names.
async fn cluster(n: u32) -> (KubeSimHandle, Vec<String>) {
    let topology = Topology::sized(1, n, 0, 0);
    let nodes = topology.nodes().into_iter().map(|n| n.name).collect();
    let h = KubeSim::start(KubeSimConfig {
        topology,
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    (h, nodes)
}

fn name(p: &Value) -> &str {
    p["metadata"]["name"].as_str().unwrap_or("")
}

fn node_of(p: &Value) -> Option<&str> {
    p.pointer("/spec/nodeName").and_then(Value::as_str)
}

fn scheduled_condition(p: &Value) -> Option<&Value> {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
}

fn set_taints(h: &KubeSimHandle, node: &str, taints: Value) {
    h.store()
        .update_with(&info(h, "", "nodes"), "", node, false, |cur| {
            let mut n = cur.clone();
            n["spec"]["taints"] = taints.clone();
            Ok(n)
        })
        .unwrap();
}

fn pod(name: &str, node: Option<&str>, tolerations: Value) -> Value {
    let mut p = json!({"metadata": {"name": name}, "spec": {
        "containers": [{"name": "c", "image": "x"}], "tolerations": tolerations}});
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    p
}

#[tokio::test(start_paused = true)]
async fn no_execute_taints_evict_at_once_after_toleration_seconds_or_never() {
    let (h, nodes) = cluster(1).await;
    let node = nodes[0].clone();
    let pods = info(&h, "", "pods");
    let ne = |secs: Option<i64>| {
        let mut t = json!({"key": "maintenance", "operator": "Exists", "effect": "NoExecute"});
        if let Some(s) = secs {
            t["tolerationSeconds"] = json!(s);
        }
        json!([t])
    };
    for (n, tol) in [
        ("intolerant", json!([])),
        ("for-60s", ne(Some(60))),
        ("for-120s", ne(Some(120))),
        ("forever", ne(None)),
    ] {
        h.store()
            .create(&pods, "default", pod(n, Some(&node), tol))
            .unwrap();
    }
    pods_until(&h, |ps| {
        ps.len() == 4 && ps.iter().all(|p| p["status"]["phase"] == "Running")
    })
    .await;
    let start = tokio::time::Instant::now();
    set_taints(
        &h,
        &node,
        json!([{"key": "maintenance", "value": "now", "effect": "NoExecute"}]),
    );
    let left = pods_until(&h, |ps| ps.len() == 3).await;
    assert!(left.iter().all(|p| name(p) != "intolerant"));
    assert!(start.elapsed() < Duration::from_secs(1), "evicted at once");

    let left = pods_until(&h, |ps| ps.len() == 2).await;
    assert!(left.iter().all(|p| name(p) != "for-60s"));
    assert!(
        start.elapsed() >= Duration::from_secs(60),
        "kept for its tolerationSeconds"
    );

    // The taint goes before the 120 s are up: that pod stays.
    tokio::time::sleep(Duration::from_secs(10)).await;
    set_taints(&h, &node, json!(null));
    tokio::time::sleep(Duration::from_secs(200)).await;
    let (left, _) = h.store().snapshot(&pods.gr());
    let mut names: Vec<_> = left.iter().map(|p| name(p).to_string()).collect();
    names.sort();
    assert_eq!(names, ["for-120s", "forever"]);

    // A pod bound straight to a NoExecute node it does not tolerate is rejected by the kubelet.
    set_taints(
        &h,
        &node,
        json!([{"key": "maintenance", "value": "now", "effect": "NoExecute"}]),
    );
    h.store()
        .create(&pods, "default", pod("bound", Some(&node), json!([])))
        .unwrap();
    let all = pods_until(&h, |ps| {
        ps.iter()
            .any(|p| name(p) == "bound" && p["status"]["phase"] == "Failed")
            || ps.iter().all(|p| name(p) != "bound")
    })
    .await;
    if let Some(b) = all.iter().find(|p| name(p) == "bound") {
        assert_eq!(b["status"]["reason"], "TaintToleration");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_keeps_pods_off_tainted_nodes_unless_they_tolerate_and_says_why() {
    let (h, nodes) = cluster(2).await;
    let gate = json!({"key": "aadpodidentity.k8s.io/nmi-not-ready", "value": "true", "effect": "NoSchedule"});
    set_taints(&h, &nodes[0], json!([gate]));
    set_taints(
        &h,
        &nodes[1],
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}]),
    );
    let pods = info(&h, "", "pods");
    h.store()
        .create(&pods, "default", pod("plain", None, json!([])))
        .unwrap();
    let ps = pods_until(&h, |ps| {
        ps.iter()
            .any(|p| scheduled_condition(p).is_some_and(|c| c["status"] == "False"))
    })
    .await;
    let c = scheduled_condition(&ps[0]).unwrap();
    assert_eq!(c["reason"], "Unschedulable");
    let msg = c["message"].as_str().unwrap();
    assert!(msg.starts_with("0/2 nodes are available:"), "{msg}");
    assert!(
        msg.contains("1 node(s) had untolerated taint {aadpodidentity.k8s.io/nmi-not-ready: true}"),
        "{msg}"
    );
    assert!(
        msg.contains("1 node(s) had untolerated taint {dedicated: gpu}"),
        "{msg}"
    );
    assert!(node_of(&ps[0]).is_none());

    // Tolerations by Equal (key and value) and by Exists (any value) fit the node they name;
    // an empty key with Exists tolerates everything.
    for (n, tol, expected) in [
        (
            "equal",
            json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}]),
            Some(1),
        ),
        (
            "wrong-value",
            json!([{"key": "dedicated", "operator": "Equal", "value": "cpu"}]),
            None,
        ),
        (
            "exists",
            json!([{"key": "aadpodidentity.k8s.io/nmi-not-ready", "operator": "Exists"}]),
            Some(0),
        ),
        (
            "wrong-effect",
            json!([{"key": "aadpodidentity.k8s.io/nmi-not-ready", "operator": "Exists", "effect": "NoExecute"}]),
            None,
        ),
        ("everything", json!([{"operator": "Exists"}]), Some(2)),
    ] {
        h.store()
            .create(&pods, "default", pod(n, None, tol))
            .unwrap();
        let ps = pods_until(&h, |ps| {
            ps.iter().any(|p| {
                name(p) == n
                    && (node_of(p).is_some()
                        || scheduled_condition(p).is_some_and(|c| c["status"] == "False"))
            })
        })
        .await;
        let p = ps.iter().find(|p| name(p) == n).unwrap();
        match expected {
            Some(2) => assert!(node_of(p).is_some(), "{n}"),
            Some(i) => assert_eq!(node_of(p), Some(nodes[i].as_str()), "{n}"),
            None => assert_eq!(node_of(p), None, "{n}"),
        }
    }

    // The gate taint goes: the waiting pods land on that node at once.
    set_taints(&h, &nodes[0], json!(null));
    let ps = pods_until(&h, |ps| {
        ["plain", "wrong-value", "wrong-effect"].iter().all(|n| {
            ps.iter()
                .any(|p| name(p) == *n && node_of(p) == Some(nodes[0].as_str()))
        })
    })
    .await;
    assert!(ps.iter().all(|p| node_of(p).is_some()));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonsets_follow_taints_with_the_controllers_default_tolerations() {
    let (h, nodes) = cluster(2).await;
    set_taints(
        &h,
        &nodes[1],
        json!([{"key": "aadpodidentity.k8s.io/nmi-not-ready", "value": "true", "effect": "NoSchedule"}]),
    );
    let ds = |name: &str, tolerations: Value| {
        json!({"metadata": {"name": name}, "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "hostNetwork": true, "containers": [{"name": "c", "image": "x"}], "tolerations": tolerations}}}})
    };
    let dss = info(&h, "apps", "daemonsets");
    h.store()
        .create(&dss, "default", ds("workload", json!([])))
        .unwrap();
    h.store()
        .create(
            &dss,
            "default",
            ds(
                "nmi",
                json!([{"key": "aadpodidentity.k8s.io/nmi-not-ready", "operator": "Exists"}]),
            ),
        )
        .unwrap();
    let of = |ps: &[Arc<Value>], app: &str| -> Vec<String> {
        let mut v: Vec<String> = ps
            .iter()
            .filter(|p| p["metadata"]["labels"]["app"] == app)
            .filter_map(|p| node_of(p).map(str::to_string))
            .collect();
        v.sort();
        v
    };
    let ps = pods_until(&h, |ps| {
        of(ps, "nmi").len() == 2 && of(ps, "workload").len() == 1
    })
    .await;
    assert_eq!(of(&ps, "workload"), [nodes[0].clone()]);
    let nmi_pod = ps
        .iter()
        .find(|p| p["metadata"]["labels"]["app"] == "nmi")
        .unwrap();
    let keys: Vec<&str> = nmi_pod["spec"]["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["key"].as_str())
        .collect();
    for k in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/unschedulable",
        "node.kubernetes.io/network-unavailable",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    // The taint goes: the other DaemonSet gets its pod there too.
    set_taints(&h, &nodes[1], json!(null));
    pods_until(&h, |ps| of(ps, "workload").len() == 2).await;
    // A NoExecute taint it does not tolerate takes its pod away again.
    set_taints(
        &h,
        &nodes[1],
        json!([{"key": "drain", "effect": "NoExecute"}]),
    );
    let ps = pods_until(&h, |ps| {
        of(ps, "workload").len() == 1 && of(ps, "nmi").len() == 1
    })
    .await;
    assert_eq!(of(&ps, "workload"), [nodes[0].clone()]);
    h.shutdown().await;
}

struct Kubectl {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(sim: &KubeSimHandle) -> Self {
        let dir = std::env::temp_dir().join(format!("kube-sim-taints-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        Self { dir, kubeconfig }
    }

    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args)
                .env("KUBECACHEDIR", self.dir.join("cache"))
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("kubectl finishes")
        .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_taint_adds_and_removes_taints_and_the_api_refuses_invalid_ones() {
    let (h, nodes) = cluster(1).await;
    let node = nodes[0].clone();
    let k = Kubectl::new(&h);
    let out = k
        .ok(&[
            "taint",
            "nodes",
            &node,
            "aadpodidentity.k8s.io/nmi-not-ready=true:NoSchedule",
        ])
        .await;
    assert!(out.contains("tainted"), "{out}");
    k.ok(&["taint", "nodes", &node, "dedicated=gpu:NoExecute"])
        .await;
    let taints = k
        .ok(&[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={range .spec.taints[*]}{.key}={.value}:{.effect}{\"\\n\"}{end}",
        ])
        .await;
    let mut lines: Vec<_> = taints.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "aadpodidentity.k8s.io/nmi-not-ready=true:NoSchedule",
            "dedicated=gpu:NoExecute"
        ]
    );
    let d = k.ok(&["describe", "node", &node]).await;
    assert!(
        d.contains("aadpodidentity.k8s.io/nmi-not-ready=true:NoSchedule"),
        "{d}"
    );

    // A pod with no toleration waits, and kubectl shows why.
    k.ok(&["run", "web", "--image=x", "--restart=Never"]).await;
    k.ok(&[
        "wait",
        "--for=condition=PodScheduled=False",
        "pod/web",
        "--timeout=30s",
    ])
    .await;
    let d = k.ok(&["describe", "pod", "web"]).await;
    // The scheduler names the first taint (in the node's order) the pod does not tolerate;
    // kubectl puts a new taint first.
    assert!(
        d.contains("FailedScheduling")
            && d.contains(
                "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}"
            ),
        "{d}"
    );
    assert!(
        d.contains("node.kubernetes.io/not-ready:NoExecute op=Exists for 300s"),
        "{d}"
    );

    // Removing both taints (by key and effect, then by key) lets it run.
    k.ok(&[
        "taint",
        "nodes",
        &node,
        "aadpodidentity.k8s.io/nmi-not-ready:NoSchedule-",
    ])
    .await;
    k.ok(&["taint", "nodes", &node, "dedicated-"]).await;
    k.ok(&["wait", "--for=condition=Ready", "pod/web", "--timeout=30s"])
        .await;
    let taints = k
        .ok(&["get", "node", &node, "-o", "jsonpath={.spec.taints}"])
        .await;
    assert_eq!(taints.trim(), "");

    // What a real API server refuses, the simulator refuses.
    let (ok, _, err) = k
        .run(&[
            "patch",
            "node",
            &node,
            "--type=merge",
            "-p",
            r#"{"spec":{"taints":[{"key":"k","effect":"Sometimes"}]}}"#,
        ])
        .await;
    assert!(
        !ok && err.contains("Unsupported value: \"Sometimes\""),
        "{err}"
    );
    let (ok, _, err) = k
        .run(&["patch", "node", &node, "--type=merge", "-p", r#"{"spec":{"taints":[{"key":"k","effect":"NoSchedule"},{"key":"k","value":"v","effect":"NoSchedule"}]}}"#])
        .await;
    assert!(
        !ok && err.contains("taints must be unique by key and effect pair"),
        "{err}"
    );
    let bad_pod = k.dir.join("bad.yaml");
    std::fs::write(
        &bad_pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\nspec:\n  containers:\n  - name: c\n    image: x\n  tolerations:\n  - operator: Equal\n    value: x\n",
    )
    .unwrap();
    let (ok, _, err) = k.run(&["create", "-f", bad_pod.to_str().unwrap()]).await;
    assert!(
        !ok && err.contains("operator must be Exists when `key` is empty"),
        "{err}"
    );
    std::fs::write(
        &bad_pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\nspec:\n  containers:\n  - name: c\n    image: x\n  tolerations:\n  - key: k\n    operator: Exists\n    effect: NoSchedule\n    tolerationSeconds: 30\n",
    )
    .unwrap();
    let (ok, _, err) = k.run(&["create", "-f", bad_pod.to_str().unwrap()]).await;
    assert!(
        !ok && err.contains("effect must be 'NoExecute' when `tolerationSeconds` is set"),
        "{err}"
    );
    let (ok, _, _) = k.run(&["get", "pod", "bad"]).await;
    assert!(!ok, "a refused pod is not stored");
    h.shutdown().await;
}
