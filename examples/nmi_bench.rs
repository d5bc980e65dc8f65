//! NMI benchmark: hot-path throughput and latency against a bare actix-web handler measured in
//! the same run, and the wake-up latency from an assignment's flip to Assigned to the answer.
//!
//! `cargo run --example nmi_bench -- [seconds-per-round=3] [concurrency=16] [wake-iterations=200] [rounds=4]`
//!
//! Rounds alternate which server is loaded first, and the ratio is reported per round and as a
//! median, because the machine is shared and load varies between rounds.
//!
//! Both servers run in this process with one worker thread each, on loopback; the load comes
//! from the same client pool (connections from the "pod" address 127.0.0.2). The hot path is an
//! assigned identity with its token cached. Wake-up is measured twice: from the in-process index
//! update (what the assignment watcher does on a watch event) to the HTTP answer, and end to end
//! from the status PATCH on the Kubernetes simulator through NMI's own watch to the answer.

use aad_pod_identity::actors::nmi::source::{
    SourceError, TokenRequest, TokenSource, UpstreamToken, unix_now,
};
use aad_pod_identity::crd::{
    self, AssignedState, AzureAssignedIdentity, AzureAssignedIdentitySpec,
    AzureAssignedIdentityStatus, AzureIdentity, AzureIdentitySpec, IdentityType, NODENAME_LABEL,
};
use aad_pod_identity::nmi::{self, Nmi, NmiSettings};
use actix_web::{App, HttpResponse, HttpServer, web};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODE: &str = "node-1";
const POD_IP: &str = "127.0.0.2";

struct Source;

#[async_trait]
impl TokenSource for Source {
    async fn fetch(&self, req: &TokenRequest) -> Result<UpstreamToken, SourceError> {
        let now = unix_now();
        let body = format!(
            r#"{{"access_token":"{}","expires_on":"{}","not_before":"{now}","resource":"{}","token_type":"Bearer"}}"#,
            "x".repeat(1200),
            now + 86_399,
            req.resource
        );
        Ok(UpstreamToken {
            status: 200,
            body: body.into(),
        })
    }
}

fn pod(name: &str, ip: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(NODE.into()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            ..PodStatus::default()
        }),
    }
}

fn identity(name: &str) -> AzureIdentity {
    let mut id = AzureIdentity::new(
        name,
        AzureIdentitySpec {
            type_: IdentityType::UserAssignedMsi,
            client_id: format!("client-{name}"),
            ..AzureIdentitySpec::default()
        },
    );
    id.metadata.namespace = Some("default".into());
    id
}

fn assigned(
    pod: &str,
    id: &AzureIdentity,
    node: &str,
    state: AssignedState,
) -> AzureAssignedIdentity {
    let id_name = id.metadata.name.clone().unwrap_or_default();
    let mut aai = AzureAssignedIdentity::new(
        &format!("{pod}-default-{id_name}"),
        AzureAssignedIdentitySpec {
            azure_identity_ref: Some(Box::new(id.clone())),
            azure_binding_ref: None,
            pod: pod.into(),
            pod_namespace: "default".into(),
            node_name: node.into(),
            replicas: None,
        },
    );
    aai.metadata.namespace = Some("default".into());
    aai.metadata.labels = Some([(NODENAME_LABEL.to_string(), node.to_string())].into());
    aai.status = Some(AzureAssignedIdentityStatus {
        available_replicas: 0,
        status: state,
    });
    aai
}

struct Stats {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn load(url: &str, seconds: u64, concurrency: usize, expect_len: usize) -> Stats {
    let client = reqwest::Client::builder()
        .local_address(Some(POD_IP.parse().unwrap()))
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(50_000);
            while Instant::now() < end {
                let t = Instant::now();
                let r = client
                    .get(&url)
                    .header("Metadata", "true")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let body = r.bytes().await.unwrap();
                assert!(body.len() >= expect_len, "short body");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    Stats {
        rps: all.len() as f64 / elapsed,
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
    }
}

fn report_wake(label: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    println!(
        "{label}: n={} p50={:?} p99={:?} max={:?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or_default()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let wake_iterations: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    println!(
        "build: {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );

    // NMI with one pod whose identity is assigned and whose token is cached.
    let mut settings = NmiSettings::new(NODE, "127.0.0.1:9".parse().unwrap());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.http_workers = 1;
    settings.assignment_wait = Duration::from_secs(30);
    let metrics = aad_pod_identity::metrics::Metrics::new();
    let state = Arc::new(Nmi::new(&settings, Arc::new(Source), &metrics).unwrap());
    state.pods.apply(&pod("web", POD_IP));
    let index = state.assignments.clone().unwrap();
    let id = identity("web-id");
    index.apply(&assigned("web", &id, NODE, AssignedState::Assigned));
    let l = TcpListener::bind(settings.listen).unwrap();
    let nmi_addr = l.local_addr().unwrap();
    tokio::spawn(aad_pod_identity::http::nmi::serve(l, Arc::clone(&state.http), 1).unwrap());
    let nmi_url = format!(
        "http://{nmi_addr}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
    );
    let warm = reqwest::Client::builder()
        .local_address(Some(POD_IP.parse().unwrap()))
        .build()
        .unwrap();
    let body = warm
        .get(&nmi_url)
        .header("Metadata", "true")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();

    // The broker and rendering alone, in process, without HTTP.
    {
        use aad_pod_identity::actors::nmi::identity::Wanted;
        let ip = POD_IP.parse().unwrap();
        let n = 20_000u32;
        let t = Instant::now();
        for _ in 0..n {
            let a = state
                .broker
                .token_for_ip(ip, Wanted::Any, "https://vault.azure.net")
                .await
                .unwrap();
            std::hint::black_box(a.token.token.render(unix_now()));
        }
        println!(
            "broker + render in process (no HTTP): {:?} per request",
            t.elapsed() / n
        );
        let q = "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net";
        let t = Instant::now();
        for _ in 0..n {
            let parsed = aad_pod_identity::http::request::TokenQuery::parse(q);
            std::hint::black_box(parsed.wanted());
            std::hint::black_box(aad_pod_identity::http::request::classify(
                std::hint::black_box("/metadata/identity/oauth2/token"),
            ));
        }
        println!("path + query parsing: {:?} per request", t.elapsed() / n);
        // A separate registry, so the NMI's own histogram only counts HTTP requests.
        let m = aad_pod_identity::metrics::Metrics::new()
            .nmi_operations_duration_seconds
            .clone();
        let t = Instant::now();
        for _ in 0..n {
            m.with_label_values(&[
                "/metadata/identity/oauth2/token",
                "200",
                "default",
                "https://vault.azure.net",
            ])
            .observe(0.001);
        }
        println!(
            "operations histogram (4 labels): {:?} per request",
            t.elapsed() / n
        );
    }

    // The bare handler answers a body of the same size.
    let bare_body = web::Bytes::from(body.to_vec());
    let bl = TcpListener::bind("127.0.0.1:0").unwrap();
    let bare_addr = bl.local_addr().unwrap();
    tokio::spawn(
        HttpServer::new(move || {
            let b = bare_body.clone();
            App::new().default_service(web::to(move || {
                let b = b.clone();
                async move {
                    HttpResponse::Ok()
                        .insert_header(("Content-Type", "application/json"))
                        .body(b)
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .listen(bl)
        .unwrap()
        .run(),
    );
    let bare_url = format!(
        "http://{bare_addr}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
    );

    println!(
        "hot path: {seconds}s per round, {concurrency} concurrent connections, body {} bytes",
        body.len()
    );
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let (bare, hot) = if round % 2 == 1 {
            let b = load(&bare_url, seconds, concurrency, body.len()).await;
            (b, load(&nmi_url, seconds, concurrency, body.len()).await)
        } else {
            let h = load(&nmi_url, seconds, concurrency, body.len()).await;
            (load(&bare_url, seconds, concurrency, body.len()).await, h)
        };
        let ratio = hot.rps / bare.rps;
        ratios.push(ratio);
        println!(
            "round {round}: bare actix-web {:.0} req/s p50={:?} p99={:?} | NMI {:.0} req/s p50={:?} p99={:?} | throughput ratio {:.2}, p99 ratio (bare/NMI) {:.2}",
            bare.rps,
            bare.p50,
            bare.p99,
            hot.rps,
            hot.p50,
            hot.p99,
            ratio,
            bare.p99.as_secs_f64() / hot.p99.as_secs_f64()
        );
    }
    let op = metrics.nmi_operations_duration_seconds.with_label_values(&[
        "/metadata/identity/oauth2/token",
        "200",
        "default",
        "https://vault.azure.net",
    ]);
    println!(
        "NMI handler time (inside the token handler, from its own histogram): mean {:?} over {} requests",
        Duration::from_secs_f64(op.get_sample_sum() / op.get_sample_count().max(1) as f64),
        op.get_sample_count()
    );
    ratios.sort_by(f64::total_cmp);
    println!(
        "hot-path throughput ratio NMI/bare: median {:.2} (min {:.2}, max {:.2})",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );

    // Wake-up, in process: the index update the watcher makes on the event, to the answer.
    let mut samples = Vec::with_capacity(wake_iterations);
    for i in 0..wake_iterations {
        let name = format!("w{i}");
        let ip = format!("127.0.7.{}", i % 250 + 1);
        state.pods.apply(&pod(&name, &ip));
        index.apply(&assigned(&name, &id, NODE, AssignedState::Created));
        let client = reqwest::Client::builder()
            .local_address(Some(ip.parse().unwrap()))
            .build()
            .unwrap();
        let url = nmi_url.clone();
        let req = tokio::spawn(async move {
            let r = client
                .get(&url)
                .header("Metadata", "true")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            Instant::now()
        });
        let key = aad_pod_identity::object_key::ObjectKey::new("default", &name);
        while index.waiters(&key) == 0 {
            tokio::task::yield_now().await;
        }
        let flipped = Instant::now();
        index.apply(&assigned(&name, &id, NODE, AssignedState::Assigned));
        samples.push(req.await.unwrap() - flipped);
        index.delete(&assigned(&name, &id, NODE, AssignedState::Assigned));
        state.pods.delete(&pod(&name, &ip));
    }
    report_wake("wake-up (index update -> answer)", samples);

    // Wake-up end to end: status PATCH on the Kubernetes simulator -> NMI's watch -> answer.
    wake_through_kube(wake_iterations.min(100)).await;
}

async fn wake_through_kube(iterations: usize) {
    use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig};
    use aad_pod_identity_sim::topology::Topology;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams, PostParams};

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
    let mut settings = NmiSettings::new(node.clone(), "127.0.0.1:9".parse().unwrap());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.probe = "127.0.0.1:0".parse().unwrap();
    settings.metrics = "127.0.0.1:0".parse().unwrap();
    settings.http_workers = 1;
    settings.assignment_wait = Duration::from_secs(30);
    let metrics = aad_pod_identity::metrics::Metrics::new();
    let running = nmi::start(&settings, client.clone(), Arc::new(Source), &metrics).unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let aais: Api<AzureAssignedIdentity> = Api::namespaced(client.clone(), "default");
    let id = identity("kube-id");
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let name = format!("k{i}");
        let ip = format!("127.0.8.{}", i % 250 + 1);
        let mut p = pod(&name, &ip);
        p.spec.as_mut().unwrap().node_name = Some(node.clone());
        let status = p.status.take();
        pods.create(&PostParams::default(), &p).await.unwrap();
        pods.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .unwrap();
        let a = assigned(&name, &id, &node, AssignedState::Created);
        let aai_name = a.metadata.name.clone().unwrap();
        aais.create(&PostParams::default(), &a).await.unwrap();
        aais.patch_status(
            &aai_name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"status": "Created"}})),
        )
        .await
        .unwrap();
        let key = aad_pod_identity::object_key::ObjectKey::new("default", &name);
        while running.nmi.pods.by_ip(ip.parse().unwrap()).is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let client = reqwest::Client::builder()
            .local_address(Some(ip.parse().unwrap()))
            .build()
            .unwrap();
        let url = format!(
            "http://{}/metadata/identity/oauth2/token?resource=https%3A%2F%2Fvault.azure.net",
            running.nmi_addr
        );
        let req = tokio::spawn(async move {
            let r = client
                .get(&url)
                .header("Metadata", "true")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            Instant::now()
        });
        let index = running.nmi.assignments.clone().unwrap();
        while index.waiters(&key) == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let flipped = Instant::now();
        aais.patch_status(
            &aai_name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"status": "Assigned"}})),
        )
        .await
        .unwrap();
        samples.push(req.await.unwrap() - flipped);
    }
    report_wake(
        "wake-up (status PATCH on the simulator -> NMI watch -> answer)",
        samples,
    );
    running.stop().await.unwrap();
    sim.shutdown().await;
}
