//! The simulator's small cluster: Jobs and CronJobs under a paused tokio clock (run time and
//! cron schedule are tokio timers), Deployments and DaemonSets driven through kube-rs.

use std::sync::Arc;
use std::time::Duration;

use aad_pod_identity_sim::kube::resources::ResourceInfo;
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig, KubeSimHandle};
use aad_pod_identity_sim::topology::Topology;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn info(h: &KubeSimHandle, group: &str, plural: &str) -> Arc<ResourceInfo> {
    h.store().registry().preferred(group, plural).unwrap()
}

/// Waits (on store notifications, never polling on a timer) until `check` holds for the
/// objects of `group/plural`.
async fn wait_for(
    h: &KubeSimHandle,
    group: &str,
    plural: &str,
    check: impl Fn(&[Arc<Value>]) -> bool,
) -> Vec<Arc<Value>> {
    let i = info(h, group, plural);
    let mut rx = h.store().subscribe(&i.gr());
    loop {
        let (items, _) = h.store().snapshot(&i.gr());
        if check(&items) {
            return items;
        }
        tokio::time::timeout(Duration::from_secs(3600), rx.changed())
            .await
            .expect("condition not reached within an hour of simulated time")
            .unwrap();
    }
}

fn complete(job: &Value) -> bool {
    job.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Complete" && c["status"] == "True")
        })
}

fn job_template() -> Value {
    json!({"template": {"spec": {"containers": [{"name": "c", "image": "x"}], "restartPolicy": "Never"}}})
}

#[tokio::test(start_paused = true)]
async fn job_pods_succeed_after_the_run_time_and_the_job_completes() {
    let h = KubeSim::start(KubeSimConfig {
        job_pod_run_time: Duration::from_secs(30),
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let start = tokio::time::Instant::now();
    let spec = job_template();
    h.store()
        .create(
            &info(&h, "batch", "jobs"),
            "default",
            json!({"metadata": {"name": "once"}, "spec": spec}),
        )
        .unwrap();
    let jobs = wait_for(&h, "batch", "jobs", |js| js.iter().any(|j| complete(j))).await;
    assert!(
        start.elapsed() >= Duration::from_secs(30),
        "completed before the pod's run time"
    );
    assert_eq!(jobs[0]["status"]["succeeded"], 1);
    let pods = wait_for(&h, "", "pods", |ps| !ps.is_empty()).await;
    assert_eq!(pods.len(), 1, "completions=1 runs exactly one pod");
    assert_eq!(pods[0]["status"]["phase"], "Succeeded");
    assert_eq!(pods[0]["metadata"]["labels"]["job-name"], "once");
    assert_eq!(pods[0]["metadata"]["ownerReferences"][0]["kind"], "Job");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn cronjob_creates_one_job_per_scheduled_minute_on_a_sped_up_clock() {
    let h = KubeSim::start(KubeSimConfig {
        job_pod_run_time: Duration::from_millis(100),
        cron_speedup: 60,
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let start = tokio::time::Instant::now();
    let cj = json!({"metadata": {"name": "tick"}, "spec": {"schedule": "*/1 * * * *",
        "successfulJobsHistoryLimit": 2, "jobTemplate": {"spec": job_template()}}});
    h.store()
        .create(&info(&h, "batch", "cronjobs"), "default", cj)
        .unwrap();
    // Four scheduled minutes pass in about four seconds of (paused) tokio time.
    let jobs = wait_for(&h, "batch", "jobs", |js| {
        js.iter().filter(|j| complete(j)).count() >= 2
            && js.iter().any(|j| {
                j["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("tick-"))
            })
    })
    .await;
    let names: std::collections::BTreeSet<_> = jobs
        .iter()
        .map(|j| j["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), jobs.len());
    assert!(
        start.elapsed() <= Duration::from_secs(3 * 60),
        "the clock speed-up was not applied"
    );
    // Keep going: the history limit prunes old finished jobs.
    let t = tokio::time::Instant::now();
    tokio::time::sleep_until(t + Duration::from_secs(5)).await;
    let jobs = wait_for(&h, "batch", "jobs", |_| true).await;
    let finished = jobs.iter().filter(|j| complete(j)).count();
    assert!(
        finished <= 2,
        "history limit not applied: {finished} finished jobs kept"
    );
    let cj = h
        .store()
        .get(&info(&h, "batch", "cronjobs"), "default", "tick")
        .unwrap();
    assert!(cj["status"]["lastScheduleTime"].is_string(), "{cj}");
    for j in &jobs {
        assert_eq!(j["metadata"]["ownerReferences"][0]["name"], "tick");
    }
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_cronjob_fires_at_its_hour_in_its_time_zone() {
    // One simulated hour per second of (paused) tokio time: the first 03:00 in Tokyo comes
    // within a day of simulated time.
    let h = KubeSim::start(KubeSimConfig {
        job_pod_run_time: Duration::from_millis(100),
        cron_speedup: 3600,
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let cj = json!({"metadata": {"name": "tokyo"}, "spec": {"schedule": "0 3 * * *",
        "timeZone": "Asia/Tokyo", "jobTemplate": {"spec": job_template()}}});
    h.store()
        .create(&info(&h, "batch", "cronjobs"), "default", cj)
        .unwrap();
    let jobs = wait_for(&h, "batch", "jobs", |js| !js.is_empty()).await;
    let at = jobs[0]["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .expect("scheduled time");
    // Tokyo is UTC+9 all year: 03:00 there is 18:00 UTC.
    assert!(at.ends_with("T18:00:00Z"), "{at}");
    // What the API server refuses never reaches the controller.
    for bad in [
        json!({"schedule": "TZ=Asia/Tokyo 0 3 * * *"}),
        json!({"schedule": "0 3 * * *", "timeZone": "Mars/Olympus"}),
    ] {
        let mut spec = bad;
        spec["jobTemplate"] = json!({"spec": job_template()});
        let e = h
            .store()
            .create(
                &info(&h, "batch", "cronjobs"),
                "default",
                json!({"metadata": {"name": "bad"}, "spec": spec}),
            )
            .unwrap_err();
        assert_eq!(e.code, 422, "{}", e.message);
    }
    h.shutdown().await;
}

async fn active_pods(pods: &Api<Pod>, selector: &str, want: usize) -> Vec<Pod> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let l = pods
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap();
        let running: Vec<_> = l
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        if running.len() == want {
            return running;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} running pods, want {want}",
            running.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_scale_and_daemonsets_cover_every_node() {
    let h = KubeSim::start(KubeSimConfig {
        topology: Topology::sized(1, 3, 0, 1),
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let client = h.client().await.unwrap();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"replicas": 3,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}))
    .unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    let running = active_pods(&pods, "app=web", 3).await;
    for p in &running {
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Deployment", "web")
        );
    }
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    active_pods(&pods, "app=web", 1).await;
    let ds: DaemonSet = serde_json::from_value(json!({"metadata": {"name": "agent"}, "spec": {
        "selector": {"matchLabels": {"app": "agent"}},
        "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "x"}]}}}}))
    .unwrap();
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    dss.create(&PostParams::default(), &ds).await.unwrap();
    let agents = active_pods(&pods, "app=agent", 3).await;
    let nodes: std::collections::BTreeSet<_> = agents
        .iter()
        .map(|p| p.spec.as_ref().unwrap().node_name.clone().unwrap())
        .collect();
    assert_eq!(nodes.len(), 3);
    for p in &agents {
        // Host-network pods share the node's address.
        let st = p.status.as_ref().unwrap();
        assert_eq!(st.pod_ip, st.host_ip);
    }
    h.shutdown().await;
}

fn pod_ip(p: &Value) -> Option<String> {
    p.pointer("/status/podIP")
        .and_then(Value::as_str)
        .map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_ips_are_not_reused_at_once_and_a_full_range_leaves_pods_pending() {
    let h = KubeSim::start(KubeSimConfig {
        // 127.1.0.0/29: six usable addresses.
        pod_ip_range: aad_pod_identity_sim::kube::Ipv4Block::parse("127.1.0.0/29").unwrap(),
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let pods = info(&h, "", "pods");
    let pod = |name: &str| json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
    h.store().create(&pods, "default", pod("p0")).unwrap();
    h.store().create(&pods, "default", pod("p1")).unwrap();
    let first = wait_for(&h, "", "pods", |ps| {
        ps.iter().filter(|p| pod_ip(p).is_some()).count() == 2
    })
    .await;
    let p0_ip = first
        .iter()
        .find(|p| p["metadata"]["name"] == "p0")
        .and_then(|p| pod_ip(p))
        .unwrap();
    h.store()
        .delete(&pods, "default", "p0", &Default::default())
        .unwrap();
    h.store().create(&pods, "default", pod("p2")).unwrap();
    let now = wait_for(&h, "", "pods", |ps| {
        ps.iter()
            .any(|p| p["metadata"]["name"] == "p2" && pod_ip(p).is_some())
    })
    .await;
    let p2_ip = now
        .iter()
        .find(|p| p["metadata"]["name"] == "p2")
        .and_then(|p| pod_ip(p))
        .unwrap();
    assert_ne!(p2_ip, p0_ip, "a just-freed address was handed out again");
    // Fill the block: p1, p2 and four more hold all six addresses; a seventh pod waits.
    for i in 3..8 {
        h.store()
            .create(&pods, "default", pod(&format!("p{i}")))
            .unwrap();
    }
    let all = wait_for(&h, "", "pods", |ps| {
        ps.iter().filter(|p| pod_ip(p).is_some()).count() == 6 && ps.len() == 7
    })
    .await;
    let mut ips: Vec<_> = all.iter().filter_map(|p| pod_ip(p)).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 6, "{ips:?}");
    let waiting: Vec<_> = all.iter().filter(|p| pod_ip(p).is_none()).collect();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0]["status"]["phase"], "Pending");
    // Releasing an address lets the waiting pod start.
    h.store()
        .delete(&pods, "default", "p1", &Default::default())
        .unwrap();
    wait_for(&h, "", "pods", |ps| {
        ps.len() == 6 && ps.iter().all(|p| pod_ip(p).is_some())
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_pods_is_spread_evenly_in_random_order_as_kube_scheduler_spreads_it() {
    let h = KubeSim::start(KubeSimConfig {
        topology: Topology::sized(1, 4, 0, 1),
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let pods = info(&h, "", "pods");
    // All forty exist before the scheduler sees the first: one burst, as a Deployment's
    // controller or a load test creates it.
    for i in 0..40 {
        let pod = json!({"metadata": {"name": format!("p{i}")}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        h.store().create(&pods, "default", pod).unwrap();
    }
    let placed = wait_for(&h, "", "pods", |ps| {
        ps.len() == 40 && ps.iter().all(|p| p.pointer("/spec/nodeName").is_some())
    })
    .await;
    let node_of = |name: &str| -> String {
        placed
            .iter()
            .find(|p| p["metadata"]["name"] == name)
            .and_then(|p| p.pointer("/spec/nodeName"))
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    };
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..40 {
        *per_node.entry(node_of(&format!("p{i}"))).or_default() += 1;
    }
    // Each placement counts at once (the scheduler's assumed pods), so no node takes a second
    // pod of the burst before every node has one.
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [10; 4],
        "{per_node:?}"
    );
    // Among equally loaded nodes the choice is random, not the nodes' name order: pods created
    // in order do not land round robin in lockstep with it (chance (1/24)^10 by accident).
    let names: Vec<&String> = per_node.keys().collect();
    assert!(
        (0..40).any(|i| node_of(&format!("p{i}")) != *names[i % 4]),
        "placement followed the node names' order"
    );
    h.shutdown().await;
}
