//! MIC reports nodes that run pod-identity pods without a ready NMI, against the Kubernetes
//! simulator (with its scheduler, kubelet and DaemonSet controller) over real HTTP: an NMI
//! DaemonSet that leaves a node out makes that node and its pod-identity pods the subject of
//! Warning Events and of the `aadpodidentity_mic_nodes_without_nmi` gauge, until NMI covers it.

use aad_pod_identity::actors::mic::cloud_port::CloudArm;
use aad_pod_identity::actors::mic::nmi_coverage::{REASON_NODE, REASON_POD};
use aad_pod_identity::actors::mic::port::ArmPort;
use aad_pod_identity::actors::mic::{MicSettings, spawn};
use aad_pod_identity::cloud::config::CloudConfig;
use aad_pod_identity::crd;
use aad_pod_identity::metrics::Metrics;
use aad_pod_identity_sim::azure::{AzureSim, AzureSimConfig};
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig};
use aad_pod_identity_sim::topology::Topology;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn events(client: &Client) -> Vec<Event> {
    Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

fn about(events: &[Event], reason: &str, name: &str) -> usize {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .count()
}

async fn gauge(metrics: std::net::SocketAddr, name: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Polls (as a user would) until `pred` holds, 30 s at most.
async fn eventually<F, Fut>(what: &str, mut pred: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !pred().await {
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_running_pod_identity_pods_without_a_ready_nmi_are_reported_until_covered() {
    let topology = Topology::sized(1, 2, 0, 1);
    let nodes: Vec<String> = topology.nodes().into_iter().map(|n| n.name).collect();
    let azure = AzureSim::start(&topology, AzureSimConfig::default())
        .await
        .unwrap();
    let sim = KubeSim::start(KubeSimConfig {
        topology: topology.clone(),
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "mic-coverage-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let client = sim.client().await.unwrap();
    for f in crd::all_crds() {
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &f.crd)
            .await
            .unwrap();
    }

    // NMI's DaemonSet, restricted to the first node (as a too narrow nodeSelector would).
    let ds: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "nmi"},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/component": "nmi"}},
            "template": {"metadata": {"labels": {"app.kubernetes.io/component": "nmi"}},
                "spec": {"hostNetwork": true, "nodeSelector": {"kubernetes.io/hostname": nodes[0]},
                    "containers": [{"name": "nmi", "image": "x"}]}}}
    }))
    .unwrap();
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    dss.create(&PostParams::default(), &ds).await.unwrap();
    for (name, node) in [("covered", &nodes[0]), ("exposed", &nodes[1])] {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"aadpodidbinding": "app"}},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x"}]},
        }))
        .unwrap();
        Api::<Pod>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &p)
            .await
            .unwrap();
    }

    let mut settings = MicSettings::from(&{
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            mic: aad_pod_identity::config::mic::MicArgs,
        }
        Cli::parse_from(["mic", "--nmi-absence-grace=1s"]).mic
    });
    settings.kubeconfig = Some(kubeconfig);
    settings.listen_address = [127, 0, 0, 1].into();
    settings.http_probe_port = 0;
    settings.prometheus_port = 0;
    settings.leader.instance = "coverage".into();
    let config = CloudConfig::from_json(&azure.azure_json().to_string()).unwrap();
    let mut mic = spawn(settings, Metrics::new(), None, move || {
        Arc::new(CloudArm::from_config(&config).unwrap()) as Arc<dyn ArmPort>
    })
    .await
    .unwrap();

    eventually("the uncovered node and its pod are reported", || async {
        let e = events(&client).await;
        about(&e, REASON_NODE, &nodes[1]) == 1 && about(&e, REASON_POD, "exposed") == 1
    })
    .await;
    assert_eq!(
        gauge(mic.metrics, "aadpodidentity_mic_nodes_without_nmi").await,
        Some(1.0)
    );
    assert_eq!(
        gauge(mic.metrics, "aadpodidentity_mic_pods_without_nmi").await,
        Some(1.0)
    );
    let e = events(&client).await;
    assert_eq!(about(&e, REASON_NODE, &nodes[0]), 0);
    assert_eq!(about(&e, REASON_POD, "covered"), 0);
    let node_event = e
        .iter()
        .find(|e| e.reason.as_deref() == Some(REASON_NODE))
        .unwrap();
    assert_eq!(node_event.type_.as_deref(), Some("Warning"));
    assert_eq!(node_event.involved_object.kind.as_deref(), Some("Node"));

    // NMI is made to cover every node: the report clears, and no Event is repeated meanwhile.
    dss.patch(
        "nmi",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"template": {"spec": {"nodeSelector": null}}}})),
    )
    .await
    .unwrap();
    eventually("the gauge clears", || async {
        gauge(mic.metrics, "aadpodidentity_mic_nodes_without_nmi").await == Some(0.0)
    })
    .await;
    let e = events(&client).await;
    assert_eq!(
        about(&e, REASON_NODE, &nodes[1]),
        1,
        "one Event per episode"
    );
    mic.stop();
    sim.shutdown().await;
    azure.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
