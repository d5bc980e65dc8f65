//! Benchmark of the Kubernetes simulator over real HTTP on loopback:
//! - list of 10k pods (raw bytes and decoded by kube-rs),
//! - write throughput with 100 open watches on pods vs none (as a ratio),
//! - resident memory with 10k pods and 1k nodes.
//!
//! `cargo run --example kube_sim_bench` (debug builds give pessimistic absolute figures).

use std::time::{Duration, Instant};

use aad_pod_identity::sandbox::topology::Topology;
use aad_pod_identity::sim::kube::{KubeSim, KubeSimConfig};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

const PODS: usize = 10_000;
const WRITES: usize = 2_000;
const WRITERS: usize = 4;
const WATCHERS: usize = 100;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn writes(api: &Api<Pod>, round: usize) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..WRITES).step_by(WRITERS) {
                let name = format!("pod-{:05}", i * 5 % PODS);
                let p = json!({"metadata": {"labels": {"round": format!("r{round}-{i}")}}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&p))
                    .await
                    .expect("patch");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    start.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rss_before = rss_kib();
    let sim = KubeSim::start(KubeSimConfig {
        topology: Topology::sized(10, 100, 0, 0),
        run_cluster: false,
        watch_history: 20_000,
        watch_coalesce: Duration::from_millis(
            std::env::var("BENCH_COALESCE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
        ),
        ..KubeSimConfig::default()
    })
    .await?;
    let pods_info = sim.store().registry().preferred("", "pods").expect("pods");
    let t = Instant::now();
    for i in 0..PODS {
        let node = format!("aks-pool{}-12345678-vmss{:06}", i % 10, (i / 10) % 100);
        let pod = json!({
            "metadata": {"name": format!("pod-{i:05}"), "labels": {"app": format!("app-{}", i % 50), "aadpodidbinding": "sel"}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "mcr.microsoft.com/azure-cli",
                "command": ["sh", "-c", "az login --identity"]}]},
        });
        sim.store().create(&pods_info, "default", pod)?;
    }
    let seeded = t.elapsed();
    let rss_after = rss_kib();
    println!("seeded {PODS} pods + 1000 nodes in-process in {seeded:?}");
    println!(
        "memory: RSS {} MiB before, {} MiB with {PODS} pods / 1000 nodes (+{} MiB)",
        rss_before / 1024,
        rss_after / 1024,
        (rss_after.saturating_sub(rss_before)) / 1024
    );

    let client = sim.client().await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut raw = Vec::new();
    let mut typed = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let req = http::Request::get("/api/v1/namespaces/default/pods").body(Vec::new())?;
        let t = Instant::now();
        let text = client.request_text(req).await?;
        raw.push(t.elapsed());
        bytes = text.len();
        let t = Instant::now();
        let l = api.list(&ListParams::default()).await?;
        typed.push(t.elapsed());
        assert_eq!(l.items.len(), PODS);
    }
    println!(
        "list {PODS} pods ({} MiB JSON): median {:?} raw HTTP, {:?} decoded by kube-rs (5 runs)",
        bytes / (1024 * 1024),
        median(raw),
        median(typed)
    );

    // Warm up, then writes with no watchers.
    writes(&api, 0).await;
    let quiet = writes(&api, 1).await;
    // 100 watchers on every pod of the namespace, each draining its stream as raw bytes.
    let mut watchers = Vec::new();
    // Each watcher is a plain TCP connection that drains the chunked stream without parsing
    // it, so the figure measures the server's fan-out rather than a client's JSON decoding.
    let addr = sim.addr();
    for _ in 0..WATCHERS {
        let rv = sim.store().current_rv();
        let filter = std::env::var("BENCH_WATCH_FILTER").unwrap_or_default();
        watchers.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let req = format!(
                "GET /api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&allowWatchBookmarks=true{filter} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.expect("request");
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0usize;
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = writes(&api, 2).await;
    // Let the watchers drain, then close them and count what they received.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.drop_watches();
    let mut received = 0;
    for w in watchers {
        received += w.await?;
    }
    println!(
        "{WRITES} merge-patch writes ({WRITERS} writers): {:?} with 0 watchers, {:?} with {WATCHERS} watchers; ratio {:.2} ({} MiB of watch events delivered)",
        quiet,
        busy,
        busy.as_secs_f64() / quiet.as_secs_f64(),
        received / (1024 * 1024)
    );
    sim.shutdown().await;
    Ok(())
}
