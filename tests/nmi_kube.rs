//! NMI end to end against the Kubernetes simulator: its own watches find the pod (scheduled by
//! the simulator, with a loopback IP) and the AzureAssignedIdentity; a request waiting for the
//! assignment is answered when the status is patched to Assigned through the API; deleting the
//! assignment drops the cached token and refuses the pod.

mod nmi_support;

use aad_pod_identity::crd::{
    self, AssignedState, AzureAssignedIdentity, IdentityType, NODENAME_LABEL,
};
use aad_pod_identity::nmi;
use aad_pod_identity::object_key::ObjectKey;
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig};
use aad_pod_identity_sim::topology::Topology;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nmi_support::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmi_follows_the_api_from_created_to_assigned_to_deleted() {
    let (sim, node, client) = sim_with_crds(true).await;

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
                    .is_some_and(|p| *p.key == ObjectKey::new("default", "web"))
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
        state
            .assignments
            .as_ref()
            .unwrap()
            .waiters(&ObjectKey::new("default", "web"))
            > 0
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

/// A simulator of one node with the CRDs; without its own kubelet when `run_cluster` is false
/// (the test then sets pod IPs and phases itself).
async fn sim_with_crds(
    run_cluster: bool,
) -> (
    aad_pod_identity_sim::kube::KubeSimHandle,
    String,
    kube::Client,
) {
    let topology = Topology::sized(1, 1, 0, 1);
    let node = topology.nodes()[0].name.clone();
    let sim = KubeSim::start(KubeSimConfig {
        topology,
        run_cluster,
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let client = sim.client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for f in crd::all_crds() {
        crds.create(&PostParams::default(), &f.crd).await.unwrap();
    }
    (sim, node, client)
}

/// Creates pod `name` on `node` and sets it Running at `ip` (as a kubelet would).
async fn running_pod(
    pods: &Api<Pod>,
    name: &str,
    node: &str,
    ip: &str,
    extra_spec: serde_json::Value,
) {
    let mut spec =
        serde_json::json!({"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        s.extend(e.clone());
    }
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "finalizers": ["test.aadpodidentity/hold"]},
        "spec": spec,
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]
        }})),
    )
    .await
    .unwrap();
}

async fn assign(client: &kube::Client, pod: &str, node: &str, client_id: &str) {
    let id = identity(
        "default",
        &format!("{pod}-id"),
        client_id,
        IdentityType::UserAssignedMsi,
    );
    let mut aai = assigned("default", pod, &id, AssignedState::Assigned);
    aai.spec.node_name = node.to_string();
    aai.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(NODENAME_LABEL.into(), node.to_string());
    let aais: Api<AzureAssignedIdentity> = Api::namespaced(client.clone(), "default");
    // The CRD (as the original's) has no status subresource: the status goes in with the create.
    let created = aais.create(&PostParams::default(), &aai).await.unwrap();
    assert_eq!(
        created.status.map(|s| s.status),
        Some(AssignedState::Assigned)
    );
}

async fn token_from(nmi: std::net::SocketAddr, ip: &str) -> (u16, String) {
    let r = client_from(ip)
        .get(format!(
            "http://{nmi}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
        ))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_address_never_lets_one_pod_act_as_another() {
    let (sim, node, client) = sim_with_crds(false).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let shared_ip = "127.1.201.7";
    running_pod(&pods, "old", &node, shared_ip, serde_json::json!({})).await;
    assign(&client, "old", &node, "cid-old").await;

    let mut settings = settings(start_metadata_standin());
    settings.node = node.clone();
    settings.assignment_wait = Duration::from_millis(300);
    let source = FakeSource::new(Duration::ZERO);
    let metrics = aad_pod_identity::metrics::Metrics::new();
    let running = nmi::start(&settings, client.clone(), source.clone(), &metrics).unwrap();
    let state = std::sync::Arc::clone(&running.nmi);
    eventually("old's identity to be indexed", || {
        state
            .assignments
            .as_ref()
            .unwrap()
            .current(&ObjectKey::new("default", "old"))
            .is_some_and(|ids| !ids.is_empty())
            && state.pods.by_ip(shared_ip.parse().unwrap()).is_some()
    })
    .await;
    let (status, body) = token_from(running.nmi_addr, shared_ip).await;
    assert_eq!(status, 200, "{body}");

    // A second live pod gets the same address (the kubelet reused it): nobody is served.
    running_pod(&pods, "new", &node, shared_ip, serde_json::json!({})).await;
    eventually("both pods to be indexed", || state.pods.len() == 2).await;
    let (status, body) = token_from(running.nmi_addr, shared_ip).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("failed to match pod IP 127.1.201.7 with 2 pods"),
        "{body}"
    );

    // The old pod is terminating and keeps updating its status: the address is the new pod's,
    // which has no identity, so nobody gets old's token.
    pods.delete("old", &DeleteParams::default()).await.unwrap();
    pods.patch_status(
        "old",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"message": "shutting down"}})),
    )
    .await
    .unwrap();
    eventually("old to be seen terminating", || {
        state
            .pods
            .by_key(&ObjectKey::new("default", "old"))
            .is_some_and(|p| p.terminating)
    })
    .await;
    let (status, body) = token_from(running.nmi_addr, shared_ip).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("default/new"), "{body}");

    // A host-network pod shares the node's address: it is never identified by it, so neither
    // it nor anything else on the node gets its identity through that address.
    let node_ip = "127.1.201.1";
    running_pod(
        &pods,
        "agent",
        &node,
        node_ip,
        serde_json::json!({"hostNetwork": true}),
    )
    .await;
    assign(&client, "agent", &node, "cid-agent").await;
    eventually("the agent to be indexed", || {
        state
            .pods
            .by_key(&ObjectKey::new("default", "agent"))
            .is_some()
            && state
                .assignments
                .as_ref()
                .unwrap()
                .current(&ObjectKey::new("default", "agent"))
                .is_some_and(|ids| !ids.is_empty())
    })
    .await;
    let (status, body) = token_from(running.nmi_addr, node_ip).await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("access_token"));
    let seen: Vec<String> = source
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| format!("{:?}", r.target))
        .collect();
    assert!(
        seen.iter().all(|t| t.contains("cid-old")) && seen.len() == 1,
        "only old's first, legitimate request fetched a token: {seen:?}"
    );
    running.stop().await.unwrap();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_pod_watch_makes_nmi_not_ready_until_it_has_listed_again() {
    let (sim, node, client) = sim_with_crds(false).await;
    let mut settings = settings(start_metadata_standin());
    settings.node = node.clone();
    let metrics = aad_pod_identity::metrics::Metrics::new();
    let running = nmi::start(
        &settings,
        client.clone(),
        FakeSource::new(Duration::ZERO),
        &metrics,
    )
    .unwrap();
    let readyz = format!("http://{}/readyz", running.probe_addr);
    let healthz = format!("http://{}/healthz", running.probe_addr);
    eventually_status(&readyz, 200).await;
    assert_eq!(
        running.nmi.supervisor.task_names(),
        [
            "watch-pods",
            "watch-exceptions",
            "watch-assigned-identities",
            "http-token",
            "http-probes",
            "http-metrics"
        ]
    );

    // Every watch is cut and the next requests to the API fail: the watches cannot resume.
    sim.fail_next(20, 500);
    sim.drop_watches();
    // NMI stops being ready while its watches are broken.
    eventually_status(&readyz, 503).await;
    assert_eq!(
        reqwest::get(&healthz).await.unwrap().text().await.unwrap(),
        "Not Active"
    );
    // Meanwhile a pod appears; once the API answers again NMI lists, knows it, and is ready.
    sim.fail_next(0, 500);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    running_pod(&pods, "late", &node, "127.1.202.3", serde_json::json!({})).await;
    eventually_status(&readyz, 200).await;
    assert!(
        running
            .nmi
            .pods
            .by_key(&ObjectKey::new("default", "late"))
            .is_some()
    );
    assert!(running.nmi.supervisor.health().is_ok());
    running.stop().await.unwrap();
    sim.shutdown().await;
}
