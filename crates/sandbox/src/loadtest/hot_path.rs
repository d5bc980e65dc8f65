//! `hot-path`: token requests for assigned identities whose tokens are cached, at maximum rate
//! from many pod addresses, against a bare actix-web handler answering a body of the same size
//! measured in the same run (rounds alternate which goes first, since the machine is shared).
//!
//! The sandbox has one node, so one NMI serves everything. Unless `--in-process`, NMI is a
//! process of the product binary (`aad-pod-identity nmi`, its default HTTP workers: one per
//! core) and the bare handler is a process of this binary ([`serve_bare`], behind the hidden
//! `bare-token-server` subcommand) with as many workers, so both pay the same process and
//! scheduling costs; `--in-process` runs both in this process with one worker each. Every
//! round is bounded in time and in request count.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use super::prom::{self, Prometheus};
use super::report::{Chart, RunResult, quantile, summary};
use super::{Error, LoadtestArgs};
use crate::args::{ComponentArgs, FaultProfile, SandboxArgs};
use crate::processes::Usage;
use crate::system::Sandbox;
use aad_pod_identity::crd::{AzureAssignedIdentity, POD_LABEL};

/// The most requests one round may send, whatever its duration.
const MAX_REQUESTS_PER_ROUND: usize = 300_000;

struct Round {
    rps: f64,
    latencies_ms: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
}

/// Loads `url` from `clients` (each bound to a pod address) with `concurrency` connections
/// for `seconds`, on its own two-thread runtime so the sandbox's thread is not the bottleneck.
async fn round(
    url: String,
    ips: Vec<IpAddr>,
    concurrency: usize,
    seconds: f64,
    expect_len: usize,
) -> Result<Round, Error> {
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Load(e.to_string()))?;
        rt.block_on(async move {
            let mut clients = Vec::new();
            for ip in &ips {
                clients.push(
                    super::tokens::pod_client(*ip, Duration::from_secs(10))
                        .map_err(|e| Error::Load(e.to_string()))?,
                );
            }
            let start = Instant::now();
            let end = start + Duration::from_secs_f64(seconds);
            let budget = MAX_REQUESTS_PER_ROUND / concurrency.max(1);
            let mut tasks = Vec::new();
            for c in 0..concurrency {
                let client = clients[c % clients.len()].clone();
                let url = url.clone();
                tasks.push(tokio::spawn(async move {
                    let (mut lat, mut errors, mut first) = (Vec::new(), 0, None);
                    while Instant::now() < end && lat.len() + errors < budget {
                        let t = Instant::now();
                        let r = client.get(&url).header("Metadata", "true").send().await;
                        let ok = match r {
                            Ok(r) if r.status() == 200 => match r.bytes().await {
                                Ok(b) if b.len() >= expect_len => Ok(()),
                                Ok(b) => Err(format!("short body ({} bytes)", b.len())),
                                Err(e) => Err(e.to_string()),
                            },
                            Ok(r) => Err(format!("status {}", r.status())),
                            Err(e) => Err(e.to_string()),
                        };
                        match ok {
                            Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                            Err(e) => {
                                errors += 1;
                                first.get_or_insert(e);
                            }
                        }
                    }
                    (lat, errors, first)
                }));
            }
            let mut all = Vec::new();
            let (mut errors, mut first_error) = (0, None);
            for t in tasks {
                let (l, e, f) = t.await.map_err(|e| Error::Load(e.to_string()))?;
                all.extend(l);
                errors += e;
                if first_error.is_none() {
                    first_error = f;
                }
            }
            let elapsed = start.elapsed().as_secs_f64();
            Ok::<Round, Error>(Round {
                rps: all.len() as f64 / elapsed,
                latencies_ms: all,
                errors,
                first_error,
            })
        })
    })
    .await
    .map_err(|e| Error::Load(e.to_string()))?
}

fn token_url(addr: SocketAddr) -> String {
    format!(
        "http://{addr}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
    )
}

/// Runs `hot-path`.
///
/// # Errors
/// [`Error`] when the sandbox, the bare server or Prometheus cannot be used at all.
pub async fn run(args: &LoadtestArgs, dir: &Path) -> Result<RunResult, Error> {
    let q = args.quick;
    let pods = args.pods.unwrap_or(if q { 20 } else { 100 });
    let (rounds, seconds, concurrency) = if q { (2, 3.0, 16) } else { (4, 5.0, 32) };
    let scenario_path = dir.join("scenario.yaml");
    let yaml = "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentity\nmetadata: {name: id-0}\n\
                spec: {type: 0, resourceID: \"${IDENTITY_0_RESOURCE_ID}\", clientID: \"${IDENTITY_0_CLIENT_ID}\"}\n---\n\
                apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentityBinding\nmetadata: {name: binding-0}\n\
                spec: {azureIdentity: id-0, selector: sel-0}\n";
    std::fs::write(&scenario_path, yaml).map_err(|source| Error::File {
        path: scenario_path.display().to_string(),
        source,
    })?;
    let sargs = SandboxArgs {
        kubeconfig_out: None,
        endpoints_out: None,
        scale_sets: 1,
        nodes_per_scale_set: 1,
        vms: 0,
        identities: 1,
        scenario: Some(scenario_path),
        crds: None,
        arm_latency: Duration::from_secs(50) / args.clock_factor.max(1),
        faults: FaultProfile::None,
        job_run_time: Duration::from_secs(5),
        cron_speedup: 1,
        unassign_grace_period: Duration::from_secs(60),
        nmi_assignment_wait: Some(Duration::from_secs(5)),
        nmi_port: args.nmi_port,
        add_node: Vec::new(),
        nmi_start_delay: Duration::ZERO,
        // The gate is not what load tests measure.
        node_gate: false,
        federated: false,
        components: ComponentArgs::default(),
    };
    let mut sandbox = Sandbox::start_with(&sargs, super::components(args, dir, &[])?).await?;
    let r = drive(args, &mut sandbox, pods, rounds, seconds, concurrency).await;
    sandbox.stop().await;
    r
}

/// HTTP workers of NMI's token endpoint when it runs as a process: the product's default.
fn nmi_process_workers() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// The bare handler: `GET` anything, answered 200 with a JSON body of `body_len` bytes, on
/// `workers` actix-web workers, bound to 127.0.0.1 on a port the system picks. Prints the
/// address as its first line on standard output and serves until the process is killed.
///
/// # Errors
/// When the listener cannot be bound or the server fails.
pub fn serve_bare(body_len: usize, workers: usize) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?);
    actix_web::rt::System::new().block_on(bare_server(listener, body_len, workers)?)
}

fn bare_server(
    listener: std::net::TcpListener,
    body_len: usize,
    workers: usize,
) -> std::io::Result<actix_web::dev::Server> {
    let body = actix_web::web::Bytes::from(vec![b'x'; body_len]);
    Ok(actix_web::HttpServer::new(move || {
        let b = body.clone();
        actix_web::App::new().default_service(actix_web::web::to(move || {
            let b = b.clone();
            async move {
                actix_web::HttpResponse::Ok()
                    .insert_header(("Content-Type", "application/json"))
                    .body(b)
            }
        }))
    })
    .workers(workers.max(1))
    .disable_signals()
    .listen(listener)?
    .run())
}

/// The bare handler, where it runs.
enum Bare {
    /// In this process (`--in-process`).
    InProcess {
        handle: actix_web::dev::ServerHandle,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    },
    /// A process of this binary.
    Process(tokio::process::Child),
}

impl Bare {
    async fn start(
        in_process: bool,
        body_len: usize,
        workers: usize,
    ) -> Result<(Self, SocketAddr), Error> {
        let load = |e: std::io::Error| Error::Load(format!("the bare handler: {e}"));
        if in_process {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(load)?;
            let addr = listener.local_addr().map_err(load)?;
            let server = bare_server(listener, body_len, workers).map_err(load)?;
            let handle = server.handle();
            return Ok((
                Self::InProcess {
                    handle,
                    task: tokio::spawn(server),
                },
                addr,
            ));
        }
        let exe = std::env::current_exe().map_err(load)?;
        let mut child = tokio::process::Command::new(exe)
            .args([
                "bare-token-server",
                &format!("--body-len={body_len}"),
                &format!("--workers={workers}"),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(load)?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Load("the bare handler has no stdout".into()))?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| Error::Load("the bare handler did not start within 10 s".into()))?
            .map_err(load)?
            .ok_or_else(|| Error::Load("the bare handler exited before listening".into()))?;
        let addr = line
            .trim()
            .parse::<SocketAddr>()
            .map_err(|e| Error::Load(format!("the bare handler printed {line:?}: {e}")))?;
        Ok((Self::Process(child), addr))
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Self::InProcess { .. } => None,
            Self::Process(c) => c.id(),
        }
    }

    async fn stop(self) {
        match self {
            Self::InProcess { handle, task } => {
                handle.stop(true).await;
                let _ = task.await;
            }
            Self::Process(mut c) => {
                let _ = c.kill().await;
            }
        }
    }
}

#[allow(clippy::too_many_lines)]
async fn drive(
    args: &LoadtestArgs,
    sandbox: &mut Sandbox,
    pods: u32,
    rounds: usize,
    seconds: f64,
    concurrency: usize,
) -> Result<RunResult, Error> {
    let client = sandbox
        .kube
        .client()
        .await
        .map_err(|e| Error::Load(e.to_string()))?;
    let prometheus = match &args.prometheus {
        Some(url) => {
            let pr = Prometheus::new(url)?;
            if let Some(path) = &args.prometheus_targets {
                let nmis: Vec<SocketAddr> = sandbox.nmi_endpoints.values().map(|e| e.1).collect();
                prom::write_targets(path, sandbox.mic_endpoints.1, &nmis)?;
            }
            pr.wait_for(
                "count(up{component=~\"mic|nmi\"} == 1)",
                (1 + sandbox.nmi_endpoints.len()) as f64,
                Duration::from_secs(30),
            )
            .await?;
            Some(pr)
        }
        None => None,
    };
    let nmi = *sandbox
        .nmi
        .values()
        .next()
        .ok_or_else(|| Error::Load("the sandbox has no NMI".into()))?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let names: Vec<(String, &str)> = (0..pods)
        .map(|i| (format!("hot-{i}"), "sel-0"))
        .chain(std::iter::once(("unbound-0".to_string(), "nobody")))
        .collect();
    futures::stream::iter(names.iter().map(|(n, sel)| {
        let api = api.clone();
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": n, "labels": {POD_LABEL: sel}},
                "spec": {"containers": [{"name": "app", "image": "app"}]},
            }))
            .map_err(|e| Error::Load(e.to_string()))?;
            api.create(&PostParams::default(), &pod)
                .await
                .map_err(|source| Error::Kube {
                    what: "creating a pod",
                    source,
                })
        }
    }))
    .buffer_unordered(16)
    .try_collect::<Vec<_>>()
    .await?;

    // Set-up, not measurement: wait (bounded, re-listing) until every pod is Assigned.
    let aais: Api<AzureAssignedIdentity> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = aais
            .list(&ListParams::default())
            .await
            .map_err(|source| Error::Kube {
                what: "listing assignments",
                source,
            })?;
        let assigned = list.items.iter().filter(|a| a.is_assigned()).count();
        if assigned >= pods as usize {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Load(format!(
                "only {assigned} of {pods} pods were Assigned within 60 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let list = api
        .list(&ListParams::default().labels(POD_LABEL))
        .await
        .map_err(|source| Error::Kube {
            what: "listing pods",
            source,
        })?;
    let mut ips = Vec::new();
    let mut unbound_ip = None;
    for p in &list.items {
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|s| s.parse::<IpAddr>().ok());
        match (p.metadata.name.as_deref(), ip) {
            (Some("unbound-0"), Some(ip)) => unbound_ip = Some(ip),
            (Some(_), Some(ip)) => ips.push(ip),
            _ => {}
        }
    }
    if ips.is_empty() {
        return Err(Error::Load("no bound pod has an address".into()));
    }
    let url = token_url(nmi);
    // Warm the cache from every pod address (and learn the body size).
    let mut body_len = 0;
    for ip in &ips {
        let c = super::tokens::pod_client(*ip, Duration::from_secs(30))
            .map_err(|e| Error::Load(e.to_string()))?;
        let r = c
            .get(&url)
            .header("Metadata", "true")
            .send()
            .await
            .map_err(|e| Error::Load(format!("warm-up from {ip}: {e}")))?;
        if r.status() != 200 {
            return Err(Error::Load(format!("warm-up from {ip}: {}", r.status())));
        }
        body_len = r
            .bytes()
            .await
            .map_err(|e| Error::Load(e.to_string()))?
            .len();
    }

    // The unbound probe runs alongside the load: it must not get a token.
    let probe = unbound_ip.map(|ip| {
        let url = format!(
            "{url}&client_id={}",
            sandbox
                .azure
                .identities()
                .first()
                .map(|i| i.client_id.clone())
                .unwrap_or_default()
        );
        tokio::spawn(async move {
            let c = super::tokens::pod_client(ip, Duration::from_secs(30)).ok()?;
            let r = c.get(&url).header("Metadata", "true").send().await.ok()?;
            Some(r.status().as_u16())
        })
    });

    // The bare handler: a body of the same size, as many workers as NMI, placed as NMI is.
    let workers = if args.in_process {
        1
    } else {
        nmi_process_workers()
    };
    let (bare, bare_addr) = Bare::start(args.in_process, body_len, workers).await?;
    let bare_pid = bare.pid();
    // CPU of each server process over the rounds (none in process).
    let nmi_usage = |s: &mut Sandbox| s.usage().nmis.into_values().next();
    let bare_usage = || bare_pid.map(|p| Usage::of(Some(p)));
    let (nmi0, bare0) = (nmi_usage(sandbox), bare_usage());
    let bare_url = token_url(bare_addr);

    let (mut nmi_lat, mut bare_lat) = (Vec::new(), Vec::new());
    let mut per_round = Vec::new();
    let mut violations = Vec::new();
    let mut ratios = Vec::new();
    let mut series_nmi = Vec::new();
    let mut series_bare = Vec::new();
    for i in 0..rounds {
        let (n, b) = if i % 2 == 0 {
            let b = round(
                bare_url.clone(),
                ips.clone(),
                concurrency,
                seconds,
                body_len,
            )
            .await?;
            (
                round(url.clone(), ips.clone(), concurrency, seconds, body_len).await?,
                b,
            )
        } else {
            let n = round(url.clone(), ips.clone(), concurrency, seconds, body_len).await?;
            (
                n,
                round(
                    bare_url.clone(),
                    ips.clone(),
                    concurrency,
                    seconds,
                    body_len,
                )
                .await?,
            )
        };
        if n.errors > 0 {
            violations.push(format!(
                "round {}: {} NMI requests failed ({})",
                i + 1,
                n.errors,
                n.first_error.clone().unwrap_or_default()
            ));
        }
        if b.errors > 0 {
            violations.push(format!(
                "round {}: {} bare requests failed",
                i + 1,
                b.errors
            ));
        }
        let ratio = n.rps / b.rps.max(1e-9);
        ratios.push(ratio);
        series_nmi.push(((i + 1) as f64, n.rps));
        series_bare.push(((i + 1) as f64, b.rps));
        per_round.push(json!({
            "nmi": {"rps": n.rps, "p50_ms": quantile(&n.latencies_ms, 0.5), "p99_ms": quantile(&n.latencies_ms, 0.99), "errors": n.errors},
            "bare": {"rps": b.rps, "p50_ms": quantile(&b.latencies_ms, 0.5), "p99_ms": quantile(&b.latencies_ms, 0.99), "errors": b.errors},
            "throughput_ratio_nmi_over_bare": ratio,
        }));
        nmi_lat.extend(n.latencies_ms);
        bare_lat.extend(b.latencies_ms);
    }
    let (nmi1, bare1) = (nmi_usage(sandbox), bare_usage());
    bare.stop().await;
    let cpu = |a: Option<Usage>, b: Option<Usage>| a.zip(b).map(|(a, b)| b.cpu_s - a.cpu_s);
    let processes = json!({
        "separate_processes": !args.in_process,
        "nmi": nmi1.map(|u| json!({"cpu_s_during_rounds": cpu(nmi0, nmi1), "peak_rss_kb": u.peak_rss_kb})),
        "bare_actix_web": bare1.map(|u| json!({"cpu_s_during_rounds": cpu(bare0, bare1), "peak_rss_kb": u.peak_rss_kb})),
    });
    match probe {
        Some(p) => match p.await.ok().flatten() {
            Some(200) => violations.push("a token was served to unbound pod unbound-0".into()),
            Some(_) => {}
            None => violations.push("the unbound probe got no answer".into()),
        },
        None => violations.push("the unbound probe pod never got an address".into()),
    }
    ratios.sort_by(f64::total_cmp);
    let median_ratio = ratios.get(ratios.len() / 2).copied();
    let nmi_p99 = quantile(&nmi_lat, 0.99);
    let bare_p99 = quantile(&bare_lat, 0.99);

    let mut prom_fig = Value::Null;
    if let Some(pr) = &prometheus {
        // One more scrape so the counters include the last round.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let hits = pr
            .scalar("sum(aadpodidentity_nmi_token_cache_lookups_total{result=\"hit\"})")
            .await?;
        let all = pr
            .scalar("sum(aadpodidentity_nmi_token_cache_lookups_total)")
            .await?;
        prom_fig = json!({
            "nmi_cache_hits": hits,
            "nmi_cache_lookups": all,
            "nmi_cache_hit_rate": match (hits, all) { (Some(h), Some(a)) if a > 0.0 => Some(h / a), _ => None },
            "nmi_token_request_p99_s": pr.scalar("histogram_quantile(0.99, sum by (le) (aadpodidentity_nmi_token_request_duration_seconds_bucket))").await?,
        });
    }
    let azure = sandbox.azure.counters();
    let figures = json!({
        "rounds": per_round,
        "nmi": {"rps_mean": series_nmi.iter().map(|s| s.1).sum::<f64>() / rounds as f64, "latency_ms": summary(&nmi_lat)},
        "bare_actix_web": {"rps_mean": series_bare.iter().map(|s| s.1).sum::<f64>() / rounds as f64, "latency_ms": summary(&bare_lat)},
        "throughput_ratio_nmi_over_bare_median": median_ratio,
        "p99_ratio_nmi_over_bare": match (nmi_p99, bare_p99) { (Some(a), Some(b)) if b > 0.0 => Some(a / b), _ => None },
        "upstream_tokens_issued": azure.imds_tokens,
        "process": processes,
        "prometheus": prom_fig,
    });
    let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.2}"));
    let table = vec![
        (
            "pods / concurrency / rounds".to_string(),
            format!(
                "{} / {concurrency} / {rounds} x {seconds} s per server ({}, {workers} HTTP worker(s) each)",
                ips.len(),
                if args.in_process {
                    "both in the driver's process"
                } else {
                    "each its own process"
                }
            ),
        ),
        (
            "NMI hot path".into(),
            format!(
                "{:.0} req/s, p50 {} ms, p99 {} ms",
                figures["nmi"]["rps_mean"].as_f64().unwrap_or(0.0),
                f(quantile(&nmi_lat, 0.5)),
                f(nmi_p99)
            ),
        ),
        (
            "bare actix-web handler".into(),
            format!(
                "{:.0} req/s, p50 {} ms, p99 {} ms",
                figures["bare_actix_web"]["rps_mean"]
                    .as_f64()
                    .unwrap_or(0.0),
                f(quantile(&bare_lat, 0.5)),
                f(bare_p99)
            ),
        ),
        ("throughput ratio NMI/bare (median)".into(), f(median_ratio)),
        (
            "upstream tokens fetched / cache hit rate".into(),
            format!(
                "{} / {}",
                azure.imds_tokens,
                f(prom_fig["nmi_cache_hit_rate"].as_f64())
            ),
        ),
    ];
    let charts = vec![
        Chart::Lines {
            id: "throughput".into(),
            title: "hot path throughput per round".into(),
            x_label: "round".into(),
            y_label: "requests per second".into(),
            series: vec![
                ("NMI (assigned, cached)".into(), series_nmi),
                ("bare actix-web".into(), series_bare),
            ],
        },
        Chart::Histogram {
            id: "latency".into(),
            title: "hot path latency".into(),
            x_label: "milliseconds (log scale)".into(),
            series: vec![("NMI".into(), nmi_lat), ("bare actix-web".into(), bare_lat)],
        },
    ];
    Ok(RunResult {
        scenario: args.scenario.name().to_string(),
        quick: args.quick,
        parameters: json!({
            "pods": pods, "concurrency": concurrency, "rounds": rounds, "seconds_per_round": seconds,
            "nmi_http_workers": workers, "bare_http_workers": workers,
            "nmi_in_own_process": !args.in_process, "max_requests_per_round": MAX_REQUESTS_PER_ROUND,
        }),
        figures,
        table,
        charts,
        violations,
    })
}
