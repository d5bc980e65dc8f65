//! Benchmark of the Kubernetes simulator over real HTTP on loopback:
//! - list of 10k pods (raw bytes and decoded by kube-rs),
//! - write throughput with 100 open watches on pods vs none (as a ratio),
//! - resident memory with 10k pods and 1k nodes.
//!
//! Rounds alternate writes without and with watchers, so both sides of the ratio see the same
//! machine; the median of the per-round ratios is the figure, with the CPU the simulator spent.
//!
//! `cargo build --release -p aad-pod-identity-sim --example kube_sim_bench && target/release/examples/kube_sim_bench`
//! (debug builds give pessimistic figures). `BENCH_ROUNDS` (default 5) and `BENCH_WORKERS`
//! override the round count and the simulator's HTTP workers;
//! `BENCH_WATCH_FILTER` appends a query (e.g. `&labelSelector=app%3Dapp-1`) to every watch.

use std::time::{Duration, Instant};

use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig, KubeSimHandle};
use aad_pod_identity_sim::topology::Topology;
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

/// CPU time used so far, in clock ticks of 10 ms: (the simulator's HTTP workers, the whole
/// process). Threads are told apart by name: actix-web names its workers "actix-server w…".
fn cpu_ticks() -> (u64, u64) {
    let (mut server, mut total) = (0, 0);
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            // The name is in parentheses; utime and stime are the 12th and 13th fields after it.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            total += ticks;
            if head.contains("(actix-server w") {
                server += ticks;
            }
        }
    }
    (server, total)
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

/// Opens `WATCHERS` watches on every pod of the namespace. Each is a plain TCP connection
/// that drains the chunked stream without parsing it, so the figure measures the server's
/// fan-out rather than a client's JSON decoding. Each task returns the bytes it received.
/// The requests ask for `Connection: close`: the simulator keeps idle connections open for
/// 300 s, as the API server does, so a reader waiting for the end of the connection rather
/// than of the response would wait that long after the watches are dropped.
async fn open_watchers(
    sim: &KubeSimHandle,
    clients: &tokio::runtime::Handle,
) -> Vec<tokio::task::JoinHandle<usize>> {
    let addr = sim.addr();
    let filter = std::env::var("BENCH_WATCH_FILTER").unwrap_or_default();
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let rv = sim.store().current_rv();
        let filter = filter.clone();
        watchers.push(clients.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let req = format!(
                "GET /api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&allowWatchBookmarks=true{filter} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
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
    // Give every watch time to be registered before the writes start.
    tokio::time::sleep(Duration::from_millis(300)).await;
    watchers
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rss_before = rss_kib();
    // BENCH_WORKERS overrides the simulator's default.
    let defaults = KubeSimConfig::default();
    let sim = KubeSim::start(KubeSimConfig {
        topology: Topology::sized(10, 100, 0, 0),
        run_cluster: false,
        watch_history: 20_000,
        workers: std::env::var("BENCH_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(defaults.workers),
        ..defaults
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

    // Warm up, then alternate rounds without and with watchers so that both sides of the
    // ratio see the same machine load; the median of the rounds is reported.
    writes(&api, 0).await;
    // The watchers run as a separate client would: on their own thread and event loop, not
    // on the writers' runtime.
    let clients = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
        handle
    };
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut ratios = Vec::new();
    let (mut quiet_all, mut busy_all) = (Vec::new(), Vec::new());
    let mut received = 0;
    // CPU ticks summed over the rounds: (simulator, whole process).
    let (mut cpu_quiet, mut cpu_busy) = ((0, 0), (0, 0));
    for round in 0..rounds {
        let c0 = cpu_ticks();
        let quiet = writes(&api, 2 * round + 1).await;
        let c1 = cpu_ticks();
        let watchers = open_watchers(&sim, &clients).await;
        let c2 = cpu_ticks();
        let busy = writes(&api, 2 * round + 2).await;
        let c3 = cpu_ticks();
        cpu_quiet = (cpu_quiet.0 + c1.0 - c0.0, cpu_quiet.1 + c1.1 - c0.1);
        cpu_busy = (cpu_busy.0 + c3.0 - c2.0, cpu_busy.1 + c3.1 - c2.1);
        // Let the watchers drain, then close them and count what they received.
        tokio::time::sleep(Duration::from_millis(500)).await;
        sim.drop_watches();
        received = 0;
        for w in watchers {
            received += w.await?;
        }
        // Let the server finish tearing the watches down before the next quiet round.
        tokio::time::sleep(Duration::from_millis(300)).await;
        println!(
            "round {round}: {quiet:?} with 0 watchers, {busy:?} with {WATCHERS} watchers; ratio {:.2}",
            busy.as_secs_f64() / quiet.as_secs_f64()
        );
        ratios.push(busy.as_secs_f64() / quiet.as_secs_f64());
        quiet_all.push(quiet);
        busy_all.push(busy);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "{WRITES} merge-patch writes ({WRITERS} writers): median {:?} with 0 watchers, {:?} with {WATCHERS} watchers; ratio median {:.2} (min {:.2}, max {:.2}) over {rounds} rounds ({} MiB of watch events delivered per round)",
        median(quiet_all),
        median(busy_all),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
        received / (1024 * 1024)
    );
    let per_round_ms = |ticks: u64| ticks * 10 / rounds.max(1) as u64;
    println!(
        "CPU per round: simulator {} ms without watchers, {} ms with; whole process {} ms, {} ms",
        per_round_ms(cpu_quiet.0),
        per_round_ms(cpu_busy.0),
        per_round_ms(cpu_quiet.1),
        per_round_ms(cpu_busy.1)
    );
    sim.shutdown().await;
    Ok(())
}
