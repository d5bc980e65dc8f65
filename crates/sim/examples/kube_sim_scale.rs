//! How fast the simulated cluster turns a Deployment of 10k replicas into Running pods on
//! 1k nodes (scheduler + kubelet + Deployment controller, all in-process, no HTTP):
//! `cargo run -p aad-pod-identity-sim --example kube_sim_scale`.

use std::time::{Duration, Instant};

use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig};
use aad_pod_identity_sim::topology::Topology;
use serde_json::{Value, json};

const REPLICAS: usize = 10_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = KubeSim::start(KubeSimConfig {
        topology: Topology::sized(10, 100, 0, 0),
        watch_history: std::env::var("HISTORY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000),
        ..KubeSimConfig::default()
    })
    .await?;
    let store = sim.store().clone();
    let deployments = store
        .registry()
        .preferred("apps", "deployments")
        .expect("deployments");
    let pods = store.registry().preferred("", "pods").expect("pods");
    let start = Instant::now();
    store.create(
        &deployments,
        "default",
        json!({"metadata": {"name": "load"}, "spec": {"replicas": REPLICAS,
            "selector": {"matchLabels": {"app": "load"}},
            "template": {"metadata": {"labels": {"app": "load", "aadpodidbinding": "sel"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]}}}}),
    )?;
    let mut rx = store.subscribe(&pods.gr());
    loop {
        let (items, _) = store.snapshot(&pods.gr());
        let running = items
            .iter()
            .filter(|p| p.pointer("/status/phase").and_then(Value::as_str) == Some("Running"))
            .count();
        if running == REPLICAS {
            break;
        }
        // Re-check after changes, at most every 100 ms (the snapshot itself costs O(n)).
        let _ = tokio::time::timeout(Duration::from_secs(60), rx.changed()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "Deployment of {REPLICAS} replicas on 1000 nodes: all Running after {:?} (current resourceVersion {})",
        start.elapsed(),
        store.current_rv()
    );
    sim.shutdown().await;
    Ok(())
}
