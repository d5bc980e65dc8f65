//! MIC at scale against both simulators: 10 000 pods on 1 000 nodes in 10 scale sets with
//! 100 identities, first convergence and convergence after a restart. Slow (minutes on a
//! loaded 2-core machine), so ignored by default:
//! `cargo test --test mic_scale -- --ignored --nocapture`.

use aad_pod_identity::actors::mic::MicSettings;
use aad_pod_identity::actors::mic::cloud_port::CloudArm;
use aad_pod_identity::actors::mic::port::ArmPort;
use aad_pod_identity::cloud::config::CloudConfig;
use aad_pod_identity::crd::{
    self, AssignedState, AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding,
    AzureIdentityBindingSpec, AzureIdentitySpec,
};
use aad_pod_identity::metrics::Metrics;
use aad_pod_identity_sim::azure::{AzureSim, AzureSimConfig};
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig};
use aad_pod_identity_sim::topology::Topology;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ListParams, PostParams};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PODS: usize = 10_000;
const IDENTITIES: usize = 100;

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale measurement, minutes"]
async fn ten_thousand_pods_on_a_thousand_nodes_converge_and_a_restart_repeats_nothing() {
    let topology = Topology::sized(10, 100, 0, IDENTITIES as u32);
    let azure = AzureSim::start(&topology, AzureSimConfig::default())
        .await
        .unwrap();
    let sim = KubeSim::start(KubeSimConfig {
        topology: topology.clone(),
        run_cluster: false,
        watch_history: 100_000,
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mic-scale-{}", std::process::id()));
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
    for i in 0..IDENTITIES {
        let name = format!("identity-{i}");
        let mut id = AzureIdentity::new(
            &name,
            AzureIdentitySpec {
                resource_id: topology.identity_resource_id(&topology.identities[i]),
                client_id: topology
                    .identity_client_id(&topology.identities[i])
                    .to_string(),
                ..AzureIdentitySpec::default()
            },
        );
        id.metadata.namespace = Some("default".into());
        Api::<AzureIdentity>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &id)
            .await
            .unwrap();
        let mut b = AzureIdentityBinding::new(
            &format!("{name}-binding"),
            AzureIdentityBindingSpec {
                azure_identity: name.clone(),
                selector: name.clone(),
                weight: 0,
            },
        );
        b.metadata.namespace = Some("default".into());
        Api::<AzureIdentityBinding>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &b)
            .await
            .unwrap();
    }
    let nodes = topology.nodes();
    let t = Instant::now();
    futures::stream::iter(0..PODS)
        .map(|p| {
            let client = client.clone();
            let node = nodes[(p * 7) % nodes.len()].name.clone();
            async move {
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("p{p}"), "namespace": "default",
                                 "labels": {"aadpodidbinding": format!("identity-{}", p % IDENTITIES)}},
                    "spec": {"nodeName": node, "containers": [{"name": "app", "image": "demo"}]},
                }))
                .unwrap();
                Api::<Pod>::namespaced(client, "default")
                    .create(&PostParams::default(), &pod)
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    println!("created {PODS} pods in {:?}", t.elapsed());

    let config = CloudConfig::from_json(&azure.azure_json().to_string()).unwrap();
    let settings = || {
        let mut s = MicSettings::from(&{
            use clap::Parser;
            #[derive(Parser)]
            struct Cli {
                #[command(flatten)]
                mic: aad_pod_identity::config::mic::MicArgs,
            }
            Cli::parse_from(["mic"]).mic
        });
        s.kubeconfig = Some(kubeconfig.clone());
        s.listen_address = [127, 0, 0, 1].into();
        s.http_probe_port = 0;
        s.prometheus_port = 0;
        s.leader.instance = "mic-0".into();
        s.create_delete_batch = 50;
        s
    };
    let assigned = Api::<AzureAssignedIdentity>::all(client.clone());
    let count_assigned = || async {
        assigned
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|a| a.status.as_ref().map(|s| &s.status) == Some(&AssignedState::Assigned))
            .count()
    };

    let c2 = config.clone();
    let t = Instant::now();
    let mut mic =
        aad_pod_identity::actors::mic::spawn(settings(), Metrics::new(), None, move || {
            Arc::new(CloudArm::from_config(&c2).unwrap()) as Arc<dyn ArmPort>
        })
        .await
        .unwrap();
    // Progress from MIC's own latency histogram (listing 10 000 objects every poll would load
    // the simulator more than MIC does); the API is checked once at the end.
    loop {
        let m = get(mic.metrics, "/metrics").await;
        let n = metric(&m, "aadpodidentity_mic_assignment_latency_seconds_count");
        if n >= PODS as f64 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(900), "{n} Assigned");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let first = t.elapsed();
    assert_eq!(count_assigned().await, PODS);
    let patches = azure.counters().total_patches();
    println!("first convergence: {PODS} Assigned after {first:?}, {patches} PATCHes");
    assert!(patches <= 2 * 10, "{patches}");
    mic.stop();

    // Restart: nothing to do, so nothing is written.
    let t = Instant::now();
    let c3 = config.clone();
    let mic = aad_pod_identity::actors::mic::spawn(settings(), Metrics::new(), None, move || {
        Arc::new(CloudArm::from_config(&c3).unwrap()) as Arc<dyn ArmPort>
    })
    .await
    .unwrap();
    loop {
        let m = get(mic.metrics, "/metrics").await;
        let reads = metric(
            &m,
            "aadpodidentity_cloud_provider_operations_duration_seconds_count{operation_type=\"get_identities\"}",
        );
        if reads >= 10.0 && metric(&m, "aadpodidentity_mic_cycle_count") >= 1.0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(300));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restart = t.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let m = get(mic.metrics, "/metrics").await;
    let writes = metric(&m, "aadpodidentity_assigned_identity_addition_count")
        + metric(&m, "aadpodidentity_assigned_identity_update_count")
        + metric(&m, "aadpodidentity_assigned_identity_deletion_count");
    println!(
        "restart: listed everything and read all 10 scale sets after {restart:?}; \
         afterwards {writes} AzureAssignedIdentity writes, {} new PATCHes",
        azure.counters().total_patches() - patches
    );
    assert_eq!(writes, 0.0);
    assert_eq!(azure.counters().total_patches(), patches);
    assert_eq!(count_assigned().await, PODS);
    drop(mic);
    sim.shutdown().await;
    azure.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
