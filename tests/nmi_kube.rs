//! NMI end to end against the Kubernetes simulator: its own watches find the pod (scheduled by
//! the simulator, with a loopback IP) and the AzureAssignedIdentity; a request waiting for the
//! assignment is answered when the status is patched to Assigned through the API; deleting the
//! assignment drops the cached token and refuses the pod.

mod nmi_support;

use aad_pod_identity::actors::nmi;
use aad_pod_identity::crd::{
    self, AssignedState, AzureAssignedIdentity, IdentityType, NODENAME_LABEL,
};
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig};
use aad_pod_identity_sim::topology::Topology;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nmi_support::*;
use std::time::{Duration, Instant};

/// Waits (bounded) for `cond`; test scaffolding only.
async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmi_follows_the_api_from_created_to_assigned_to_deleted() {
    let topology = Topology::sized(1, 1, 0, 1);
    let node = topology.nodes()[0].name.clone();
    let sim = KubeSim::start(KubeSimConfig {
        topology,
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for f in crd::all_crds() {
        crds.create(&PostParams::default(), &f.crd).await.unwrap();
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "labels": {"aadpodidbinding": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    // Act as the kubelet when the simulator's own has not started the pod (yet).
    let current = pods.get("web").await.unwrap();
    if current
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_ref())
        .is_none()
    {
        pods.patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {
                "phase": "Running", "podIP": "127.1.200.7", "podIPs": [{"ip": "127.1.200.7"}]
            }})),
        )
        .await
        .unwrap();
    }

    let meta = start_metadata_standin();
    let mut settings = settings(meta);
    settings.node = node.clone();
    settings.assignment_wait = Duration::from_secs(5);
    let source = FakeSource::new(Duration::from_millis(2));
    let metrics = aad_pod_identity::metrics::Metrics::new();
    let running = nmi::start(&settings, client.clone(), source.clone(), &metrics).unwrap();
    let state = std::sync::Arc::clone(&running.nmi);

    // The pod index learns the pod and its IP from the watch.
    let mut pod_ip = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pod_ip.is_empty() {
        if Instant::now() >= deadline {
            let p = pods.get("web").await.unwrap();
            panic!(
                "pod never got an IP or was not indexed: spec.nodeName={:?} status={:?} indexed={} node={node}",
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                p.status,
                state.pods.len()
            );
        }
        if let Some(ip) = pods
            .get("web")
            .await
            .unwrap()
            .status
            .and_then(|s| s.pod_ip)
            .filter(|ip| {
                state
                    .pods
                    .by_ip(ip.parse().unwrap())
                    .is_some_and(|p| &*p.key == "default/web")
            })
        {
            pod_ip = ip;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let healthz = format!("http://{}/healthz", running.probe_addr);
    let mut active = String::new();
    for _ in 0..200 {
        active = reqwest::get(&healthz).await.unwrap().text().await.unwrap();
        if active == "Active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(active, "Active");

    // MIC's record, Created.
    let id = identity(
        "default",
        "web-id",
        "cid-web",
        IdentityType::UserAssignedMsi,
    );
    let mut aai = assigned("default", "web", &id, AssignedState::Created);
    aai.spec.node_name = node.clone();
    aai.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(NODENAME_LABEL.into(), node.clone());
    let aais: Api<AzureAssignedIdentity> = Api::namespaced(client.clone(), "default");
    let created = aais.create(&PostParams::default(), &aai).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    aais.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"status": "Created"}})),
    )
    .await
    .unwrap();

    let url = format!(
        "http://{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net",
        running.nmi_addr
    );
    let c = client_from(&pod_ip);
    let req = {
        let (c, url) = (c.clone(), url.clone());
        tokio::spawn(async move {
            let r = c.get(&url).header("Metadata", "true").send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap(), Instant::now())
        })
    };
    eventually("the request to wait on its assignment", || {
        state.assignments.as_ref().unwrap().waiters("default/web") > 0
    })
    .await;
    assert_eq!(
        source.calls(),
        0,
        "no token before the identity is Assigned"
    );

    let flipped = Instant::now();
    aais.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"status": "Assigned"}})),
    )
    .await
    .unwrap();
    let (status, body, answered) = req.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["access_token"], jwt_for("cid-web"));
    println!(
        "status flip (API write) to answer: {:?}",
        answered - flipped
    );
    assert!(answered - flipped < Duration::from_secs(5));
    assert_eq!(state.cache.identity_count(), 1);

    // Unassigned: the token is dropped and the pod refused.
    aais.delete(&name, &DeleteParams::default()).await.unwrap();
    eventually("the cached token to be dropped", || {
        state.cache.identity_count() == 0
    })
    .await;
    let r = c.get(&url).header("Metadata", "true").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);

    let t = Instant::now();
    running.stop().await.unwrap();
    println!("nmi stop took {:?}", t.elapsed());
    let t = Instant::now();
    sim.shutdown().await;
    println!("sim stop took {:?}", t.elapsed());
}
