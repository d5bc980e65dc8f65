//! The assignment scenarios (`burst`, `token-storm`, `churn`): start the sandbox, create the
//! pods (or let CronJobs create them), ask NMI for tokens as those pods, and follow every pod
//! and AzureAssignedIdentity through watches to record an event log with timestamps.
//!
//! From that log come the latency figures, the invariant checks, and the baseline: the
//! original NMI's fixed 5-second polling applied to the same log (for each waiting request,
//! when a poller checking every 5 s from the request's arrival would have noticed the
//! assignment), so the report can say how much the event-driven wait saves.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::prom::{self, Prometheus};
use super::report::{Chart, RunResult, ms_line, summary};
use super::{Error, LoadtestArgs, Scenario};
use crate::args::{ComponentArgs, FaultProfile, SandboxArgs};
use crate::system::Sandbox;
use aad_pod_identity::crd::{AzureAssignedIdentity, POD_LABEL};
use aad_pod_identity_sim::topology::Host;

/// The original NMI's retry interval, the baseline's polling period.
const POLL_INTERVAL: f64 = 5.0;
const RESOURCES: [&str; 4] = [
    "https://management.azure.com/",
    "https://vault.azure.net",
    "https://storage.azure.com/",
    "https://graph.microsoft.com/",
];
/// Pods with a selector no binding matches: a token for them is a violation.
const UNBOUND_PODS: u32 = 2;

/// The sizes of one run.
#[derive(Clone, Debug)]
struct Params {
    pods: u32,
    identities: u32,
    scale_sets: u32,
    nodes_per_scale_set: u32,
    arm_latency: Duration,
    assignment_wait: Duration,
    requests_per_pod: usize,
    time_limit: Duration,
    /// CronJobs (churn only), how long to let them run, a Job pod's run time, cron speed-up.
    churn: Option<(u32, Duration, Duration, u32)>,
}

impl Params {
    fn from(args: &LoadtestArgs) -> Self {
        let q = args.quick;
        let (pods, ids, nodes, ss) = match (args.scenario, q) {
            (Scenario::Churn, true) => (0, 4, 4, 2),
            (Scenario::Churn, false) => (0, 10, 20, 4),
            (_, true) => (120, 10, 8, 2),
            (_, false) => (1000, 50, 100, 4),
        };
        let scale_sets = args.scale_sets.unwrap_or(ss).max(1);
        let nodes = args.nodes.unwrap_or(nodes).max(scale_sets);
        let identities = args.identities.unwrap_or(ids).max(1);
        // Real scale-set writes take 40 to 60 s; the simulator answers in 0.8-1.2 × this.
        let arm_latency = Duration::from_secs(50) / args.clock_factor.max(1);
        Self {
            pods: args.pods.unwrap_or(pods),
            identities,
            scale_sets,
            nodes_per_scale_set: nodes.div_ceil(scale_sets),
            arm_latency,
            // The original's default (16 × 5 s) in full runs: a burst of 1000 may take longer than 30 s.
            assignment_wait: Duration::from_secs(if q { 10 } else { 80 }),
            requests_per_pod: if args.scenario == Scenario::TokenStorm {
                RESOURCES.len()
            } else {
                1
            },
            time_limit: args
                .time_limit
                .unwrap_or(Duration::from_secs(if q { 40 } else { 300 })),
            churn: (args.scenario == Scenario::Churn).then(|| {
                if q {
                    (
                        identities,
                        Duration::from_secs(20),
                        Duration::from_secs(3),
                        30,
                    )
                } else {
                    (
                        identities,
                        Duration::from_secs(120),
                        Duration::from_secs(5),
                        20,
                    )
                }
            }),
        }
    }

    fn json(&self) -> Value {
        json!({
            "pods": self.pods,
            "unbound_probe_pods": UNBOUND_PODS,
            "identities": self.identities,
            "scale_sets": self.scale_sets,
            "nodes": self.scale_sets * self.nodes_per_scale_set,
            "arm_latency_ms": self.arm_latency.as_millis() as u64,
            "nmi_assignment_wait_s": self.assignment_wait.as_secs(),
            "token_requests_per_pod": self.requests_per_pod,
            "time_limit_s": self.time_limit.as_secs(),
            "baseline_poll_interval_s": POLL_INTERVAL,
            "churn": self.churn.map(|(cj, run, job, speed)| json!({
                "cronjobs": cj, "run_for_s": run.as_secs(), "job_pod_run_time_s": job.as_secs(),
                "cron_speedup": speed, "unassign_grace_period_s": 60,
            })),
        })
    }
}

/// One token request as the driver saw it.
#[derive(Clone, Debug)]
struct Request {
    sent: f64,
    answered: Option<f64>,
    status: u16,
    error: Option<String>,
}

/// What the driver knows of one pod (times in seconds since the run's start).
#[derive(Clone, Debug, Default)]
struct PodLog {
    identity: Option<usize>,
    created: Option<f64>,
    running: Option<f64>,
    assigned: Option<f64>,
    finished: Option<f64>,
    node: Option<String>,
    ip: Option<IpAddr>,
    requested: bool,
    requests: Vec<Request>,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, PodLog>,
    series: Vec<(f64, usize, usize, usize, u64)>,
    violations: Vec<String>,
}

struct Ctx {
    t0: Instant,
    state: Mutex<State>,
    nmi: BTreeMap<String, SocketAddr>,
    client_ids: Vec<String>,
    params: Params,
    scenario: Scenario,
}

impl Ctx {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn selector_index(label: &str) -> Option<usize> {
    label.strip_prefix("sel-")?.parse().ok()
}

fn scenario_yaml(p: &Params) -> String {
    let mut y = String::new();
    for k in 0..p.identities {
        y.push_str(&format!(
            "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentity\nmetadata: {{name: id-{k}}}\n\
             spec: {{type: 0, resourceID: \"${{IDENTITY_{k}_RESOURCE_ID}}\", clientID: \"${{IDENTITY_{k}_CLIENT_ID}}\"}}\n---\n\
             apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentityBinding\nmetadata: {{name: binding-{k}}}\n\
             spec: {{azureIdentity: id-{k}, selector: sel-{k}}}\n---\n"
        ));
    }
    if let Some((cronjobs, ..)) = p.churn {
        for k in 0..cronjobs {
            y.push_str(&format!(
                "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: churn-{k}}}\nspec:\n  schedule: \"* * * * *\"\n\
                 \x20 jobTemplate:\n    spec:\n      template:\n        metadata: {{labels: {{aadpodidbinding: sel-{k}}}}}\n\
                 \x20       spec:\n          restartPolicy: OnFailure\n          containers: [{{name: job, image: busybox}}]\n---\n"
            ));
        }
    }
    y
}

fn pod_object(name: &str, selector: &str) -> Result<Pod, Error> {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {POD_LABEL: selector}},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }))
    .map_err(|e| Error::Load(format!("pod object: {e}")))
}

/// One token request bound to the pod's address; (status or 0, error).
async fn token(
    ip: IpAddr,
    nmi: SocketAddr,
    client_id: &str,
    resource: &str,
    timeout: Duration,
) -> (u16, Option<String>) {
    let client = match reqwest::Client::builder()
        .local_address(Some(ip))
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => return (0, Some(e.to_string())),
    };
    let mut url = match url::Url::parse(&format!("http://{nmi}/metadata/identity/oauth2/token")) {
        Ok(u) => u,
        Err(e) => return (0, Some(e.to_string())),
    };
    url.query_pairs_mut()
        .append_pair("api-version", "2018-02-01")
        .append_pair("resource", resource)
        .append_pair("client_id", client_id);
    match client.get(url).header("Metadata", "true").send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            match r.bytes().await {
                // A 200 must carry a token, or it is not an answer.
                Ok(b) if status == 200 => {
                    let ok = serde_json::from_slice::<Value>(&b)
                        .ok()
                        .is_some_and(|v| v["access_token"].as_str().is_some_and(|t| !t.is_empty()));
                    if ok {
                        (200, None)
                    } else {
                        (200, Some("200 without an access_token".into()))
                    }
                }
                Ok(b) => (
                    status,
                    Some(String::from_utf8_lossy(&b).chars().take(200).collect()),
                ),
                Err(e) => (status, Some(e.to_string())),
            }
        }
        Err(e) => (0, Some(e.to_string())),
    }
}

/// Sends the pod's token requests (at once, concurrently) and records their answers.
fn spawn_requests(ctx: &Arc<Ctx>, name: &str, ip: IpAddr, node: &str, identity: usize) {
    let Some(nmi) = ctx.nmi.get(node).copied() else {
        ctx.lock()
            .violations
            .push(format!("pod {name} runs on {node}, which has no NMI"));
        return;
    };
    // Unbound probes ask for identity 0, which they are not bound to.
    let client_id = ctx.client_ids[identity.min(ctx.client_ids.len() - 1)].clone();
    let timeout = ctx.params.assignment_wait + Duration::from_secs(15);
    for &resource in RESOURCES.iter().take(ctx.params.requests_per_pod) {
        let (ctx, name, client_id) = (Arc::clone(ctx), name.to_string(), client_id.clone());
        let index = {
            let mut st = ctx.lock();
            let Some(p) = st.pods.get_mut(&name) else {
                return;
            };
            p.requests.push(Request {
                sent: ctx.now(),
                answered: None,
                status: 0,
                error: None,
            });
            p.requests.len() - 1
        };
        tokio::spawn(async move {
            let (status, error) = token(ip, nmi, &client_id, resource, timeout).await;
            let at = ctx.now();
            let mut st = ctx.lock();
            if let Some(r) = st
                .pods
                .get_mut(&name)
                .and_then(|p| p.requests.get_mut(index))
            {
                r.answered = Some(at);
                r.status = status;
                r.error = error;
            }
        });
    }
}

fn pod_event(ctx: &Arc<Ctx>, pod: &Pod, deleted: bool) {
    let Some(name) = pod.metadata.name.clone() else {
        return;
    };
    let label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_LABEL))
        .cloned()
        .unwrap_or_default();
    let unbound = name.starts_with("unbound-");
    let identity = if unbound {
        Some(0)
    } else {
        selector_index(&label)
    };
    let Some(identity) = identity else { return };
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
    let ip = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|s| s.parse::<IpAddr>().ok());
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let now = ctx.now();
    let mut send = None;
    {
        let mut st = ctx.lock();
        let p = st.pods.entry(name.clone()).or_default();
        p.identity = Some(identity);
        if p.created.is_none() {
            // Pods created by CronJobs: first seen is as close to creation as the driver gets.
            p.created = Some(now);
        }
        if deleted || matches!(phase, "Succeeded" | "Failed") {
            p.finished.get_or_insert(now);
        } else if phase == "Running"
            && let (Some(ip), Some(node)) = (ip, node)
        {
            p.running.get_or_insert(now);
            p.ip = Some(ip);
            p.node = Some(node.clone());
            // token-storm: half the pods ask before assignment, half once it is seen.
            let late =
                ctx.scenario == Scenario::TokenStorm && name.ends_with(['1', '3', '5', '7', '9']);
            if !p.requested && (!late || p.assigned.is_some() || unbound) {
                p.requested = true;
                send = Some((ip, node));
            }
        }
    }
    if let Some((ip, node)) = send {
        spawn_requests(ctx, &name, ip, &node, identity);
    }
}

fn aai_event(ctx: &Arc<Ctx>, aai: &AzureAssignedIdentity) {
    if !aai.is_assigned() {
        return;
    }
    let now = ctx.now();
    let pod = aai.spec.pod.clone();
    let mut send = None;
    {
        let mut st = ctx.lock();
        let Some(p) = st.pods.get_mut(&pod) else {
            return;
        };
        if p.assigned.is_none() {
            p.assigned = Some(now);
        }
        // The token-storm's late askers go now.
        if !p.requested
            && p.finished.is_none()
            && let (Some(ip), Some(node), Some(id)) = (p.ip, p.node.clone(), p.identity)
        {
            p.requested = true;
            send = Some((ip, node, id));
        }
    }
    if let Some((ip, node, id)) = send {
        spawn_requests(ctx, &pod, ip, &node, id);
    }
}

async fn watch_pods(ctx: Arc<Ctx>, client: kube::Client) {
    let api: Api<Pod> = Api::all(client);
    let mut s = watcher::watcher(api, watcher::Config::default().labels(POD_LABEL)).boxed();
    while let Some(ev) = s.next().await {
        match ev {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                pod_event(&ctx, &p, false)
            }
            Ok(watcher::Event::Delete(p)) => pod_event(&ctx, &p, true),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "load test pod watch"),
        }
    }
}

async fn watch_assignments(ctx: Arc<Ctx>, client: kube::Client) {
    let api: Api<AzureAssignedIdentity> = Api::all(client);
    let mut s = watcher::watcher(api, watcher::Config::default()).boxed();
    while let Some(ev) = s.next().await {
        match ev {
            Ok(watcher::Event::Apply(a) | watcher::Event::InitApply(a)) => aai_event(&ctx, &a),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "load test assignment watch"),
        }
    }
}

/// Samples counts for the time series and checks that every pod that is Running with its
/// identity Assigned has that identity on its scale set in Azure.
fn sample(
    ctx: &Ctx,
    sandbox: &Sandbox,
    vmss_of: &HashMap<String, String>,
    resource_ids: &[String],
) {
    let now = ctx.now();
    let patches = sandbox.azure.counters().total_patches();
    let mut st = ctx.lock();
    let mut on_vmss: HashMap<String, Vec<String>> = HashMap::new();
    let mut broken = Vec::new();
    let (mut running, mut assigned, mut answered) = (0, 0, 0);
    for (name, p) in &st.pods {
        answered += p.requests.iter().filter(|r| r.status == 200).count();
        if p.running.is_some() && p.finished.is_none() {
            running += 1;
        }
        if p.assigned.is_some() {
            assigned += 1;
        }
        let (Some(_), None, Some(node), Some(id)) = (p.assigned, p.finished, &p.node, p.identity)
        else {
            continue;
        };
        let Some(vmss) = vmss_of.get(node) else {
            continue;
        };
        let ids = on_vmss.entry(vmss.clone()).or_insert_with(|| {
            sandbox
                .azure
                .assigned_identities(vmss)
                .unwrap_or_default()
                .into_iter()
                .map(|s| s.to_ascii_lowercase())
                .collect()
        });
        if !ids.contains(&resource_ids[id].to_ascii_lowercase()) {
            broken.push(format!(
                "at {now:.2}s pod {name} is Running with identity-{id} Assigned, but {vmss} does not carry it"
            ));
        }
    }
    st.series.push((now, running, assigned, answered, patches));
    st.violations.extend(broken);
}

fn done(ctx: &Ctx) -> bool {
    let st = ctx.lock();
    let bound = st.pods.iter().filter(|(n, _)| !n.starts_with("unbound-"));
    let all_assigned = bound.clone().count() as u32 >= ctx.params.pods
        && bound.clone().all(|(_, p)| p.assigned.is_some());
    let all_answered = st.pods.values().all(|p| {
        p.requests.iter().all(|r| r.answered.is_some())
            && (p.requested || p.finished.is_some() || p.running.is_none())
    });
    all_assigned && all_answered
}

fn proc_usage() -> (f64, u64, u64) {
    // utime + stime (clock ticks, 100 per second on Linux) and VmRSS / VmHWM in kB.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kb("VmRSS:"), kb("VmHWM:"))
}

/// Runs `burst`, `token-storm` or `churn`.
///
/// # Errors
/// [`Error`] when the sandbox or Prometheus cannot be used at all.
pub async fn run(args: &LoadtestArgs, dir: &Path) -> Result<RunResult, Error> {
    let p = Params::from(args);
    let scenario_path = dir.join("scenario.yaml");
    std::fs::write(&scenario_path, scenario_yaml(&p)).map_err(|source| Error::File {
        path: scenario_path.display().to_string(),
        source,
    })?;
    let (job_run_time, speedup) = p.churn.map_or((Duration::from_secs(5), 1), |c| (c.2, c.3));
    let sargs = SandboxArgs {
        kubeconfig_out: None,
        endpoints_out: None,
        scale_sets: p.scale_sets,
        nodes_per_scale_set: p.nodes_per_scale_set,
        vms: 0,
        identities: p.identities,
        scenario: Some(scenario_path),
        crds: None,
        arm_latency: p.arm_latency,
        faults: FaultProfile::None,
        job_run_time,
        cron_speedup: speedup,
        unassign_grace_period: Duration::from_secs(60),
        nmi_assignment_wait: Some(p.assignment_wait),
        nmi_port: args.nmi_port,
        add_node: Vec::new(),
        nmi_start_delay: Duration::ZERO,
        // The gate is not what load tests measure.
        node_gate: false,
        federated: false,
        components: ComponentArgs::default(),
    };
    let started = Instant::now();
    let cpu0 = proc_usage().0;
    let sandbox = Sandbox::start(&sargs).await?;
    let startup_s = started.elapsed().as_secs_f64();
    let endpoints = sandbox.endpoints(None);
    let _ = std::fs::write(
        dir.join("endpoints.json"),
        serde_json::to_string_pretty(&endpoints).unwrap_or_default(),
    );
    let result = drive(args, &p, &sandbox, dir, startup_s, cpu0).await;
    sandbox.stop().await;
    result
}

async fn drive(
    args: &LoadtestArgs,
    p: &Params,
    sandbox: &Sandbox,
    dir: &Path,
    startup_s: f64,
    cpu0: f64,
) -> Result<RunResult, Error> {
    let client = sandbox
        .kube
        .client()
        .await
        .map_err(|e| Error::Load(e.to_string()))?;
    let mut identities = sandbox.azure.identities();
    identities.sort_by(|a, b| a.name.cmp(&b.name));
    let client_ids: Vec<String> = identities.iter().map(|i| i.client_id.clone()).collect();
    let resource_ids: Vec<String> = identities.iter().map(|i| i.resource_id.clone()).collect();
    let topology = sargs_topology(p);
    let vmss_of: HashMap<String, String> = topology
        .nodes()
        .into_iter()
        .filter_map(|n| match n.host {
            Host::ScaleSet { name, .. } => Some((n.name, name)),
            Host::Vm { .. } => None,
        })
        .collect();

    // Prometheus scrapes MIC and every NMI before anything happens.
    let prometheus = match &args.prometheus {
        Some(url) => {
            let pr = Prometheus::new(url)?;
            if let Some(path) = &args.prometheus_targets {
                let nmis: Vec<SocketAddr> = sandbox.nmi_endpoints.values().map(|e| e.1).collect();
                prom::write_targets(path, sandbox.mic_endpoints.1, &nmis)?;
            }
            let want = 1 + sandbox.nmi_endpoints.len();
            pr.wait_for(
                "count(up{component=~\"mic|nmi\"} == 1)",
                want as f64,
                Duration::from_secs(30),
            )
            .await?;
            Some(pr)
        }
        None => None,
    };
    let wall0 = unix_now();

    let ctx = Arc::new(Ctx {
        t0: Instant::now(),
        state: Mutex::new(State::default()),
        nmi: sandbox.nmi.clone(),
        client_ids,
        params: p.clone(),
        scenario: args.scenario,
    });
    let azure0 = sandbox.azure.counters();
    let watchers = [
        tokio::spawn(watch_pods(Arc::clone(&ctx), client.clone())),
        tokio::spawn(watch_assignments(Arc::clone(&ctx), client.clone())),
    ];

    // The burst: every pod at once (a bounded number of creates in flight), probes first.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut names: Vec<(String, String)> = (0..UNBOUND_PODS)
        .map(|i| {
            (
                format!("unbound-{i}"),
                "no-binding-selects-this".to_string(),
            )
        })
        .collect();
    names.extend((0..p.pods).map(|i| (format!("pod-{i}"), format!("sel-{}", i % p.identities))));
    {
        let mut st = ctx.lock();
        for (n, _) in &names {
            st.pods.entry(n.clone()).or_default().created = Some(ctx.now());
        }
    }
    futures::stream::iter(names.iter().map(|(n, sel)| {
        let pods = pods.clone();
        async move {
            let pod = pod_object(n, sel)?;
            pods.create(&PostParams::default(), &pod)
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
    let created_s = ctx.now();

    // Until every pod is Assigned and every request answered (or the run's time is up).
    let end = ctx.t0 + p.time_limit;
    let run_for = p.churn.map(|c| c.1);
    let mut timed_out = false;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        sample(&ctx, sandbox, &vmss_of, &resource_ids);
        if Instant::now() >= end {
            timed_out = true;
            break;
        }
        match run_for {
            Some(d) => {
                let st = ctx.lock();
                let pending = st
                    .pods
                    .values()
                    .any(|p| p.requests.iter().any(|r| r.answered.is_none()));
                if ctx.t0.elapsed() >= d && !pending {
                    break;
                }
            }
            None => {
                if done(&ctx) {
                    break;
                }
            }
        }
    }
    let finished_s = ctx.now();
    let azure = sandbox.azure.counters();
    let (cpu1, rss_kb, hwm_kb) = proc_usage();
    for w in watchers {
        w.abort();
    }

    // From Prometheus, after its next scrape has seen the end state.
    let mut prom_fig = Value::Null;
    let mut prom_series = Vec::new();
    if let Some(pr) = &prometheus {
        let assigned_now = ctx
            .lock()
            .pods
            .values()
            .filter(|p| p.assigned.is_some())
            .count();
        let count_q = "sum(aadpodidentity_mic_assignment_latency_seconds_count)";
        let seen = pr
            .wait_for(
                count_q,
                assigned_now.min(p.pods as usize) as f64,
                Duration::from_secs(15),
            )
            .await;
        let q = |x: f64| {
            format!(
                "histogram_quantile({x}, sum by (le) (aadpodidentity_mic_assignment_latency_seconds_bucket))"
            )
        };
        let by = |v: Vec<(Value, f64)>, label: &str| {
            v.into_iter()
                .map(|(m, x)| (m[label].as_str().unwrap_or("").to_string(), json!(x)))
                .collect::<serde_json::Map<_, _>>()
        };
        prom_fig = json!({
            "assignments_observed": seen.as_ref().ok(),
            "mic_assignment_latency_s": {
                "p50": pr.scalar(&q(0.5)).await?,
                "p95": pr.scalar(&q(0.95)).await?,
                "p99": pr.scalar(&q(0.99)).await?,
            },
            "mic_arm_writes": by(pr.query("sum by (outcome) (aadpodidentity_mic_arm_writes_total)").await?, "outcome"),
            "nmi_waits": by(pr.query("sum by (kind) (aadpodidentity_nmi_wait_duration_seconds_count)").await?, "kind"),
            "nmi_cache_lookups": by(pr.query("sum by (result) (aadpodidentity_nmi_token_cache_lookups_total)").await?, "result"),
            "nmi_token_requests": by(pr.query("sum by (result) (aadpodidentity_nmi_token_request_duration_seconds_count)").await?, "result"),
            "nmi_token_request_p99_s": pr.scalar("histogram_quantile(0.99, sum by (le) (aadpodidentity_nmi_token_request_duration_seconds_bucket))").await?,
            "targets_up": pr.scalar("count(up{component=~\"mic|nmi\"} == 1)").await?,
        });
        if let Err(e) = &seen {
            prom_fig["scrape_warning"] = json!(e.to_string());
        }
        let wall1 = unix_now() + 1.0;
        let series = pr.range(count_q, wall0, wall1, 1.0).await?;
        prom_series.push((
            "assignments (MIC histogram count, Prometheus)".to_string(),
            series
                .iter()
                .map(|(t, v)| (t - wall0, *v))
                .collect::<Vec<_>>(),
        ));
        let writes = pr
            .range(
                "sum(aadpodidentity_mic_arm_writes_total)",
                wall0,
                wall1,
                1.0,
            )
            .await?;
        prom_series.push((
            "ARM writes (Prometheus)".to_string(),
            writes.iter().map(|(t, v)| (t - wall0, *v)).collect(),
        ));
    }

    let st = ctx.lock();
    let mut violations = st.violations.clone();
    violations.truncate(50);
    let bound: Vec<(&String, &PodLog)> = st
        .pods
        .iter()
        .filter(|(n, _)| !n.starts_with("unbound-"))
        .collect();

    // Invariant: every pod ends Assigned (burst, token-storm); every churn pod still running
    // at the end is Assigned.
    let unassigned: Vec<&String> = bound
        .iter()
        .filter(|(_, p)| p.assigned.is_none() && (run_for.is_none() || p.finished.is_none()))
        .map(|(n, _)| *n)
        .collect();
    if !unassigned.is_empty() && run_for.is_none() {
        violations.push(format!(
            "{} pod(s) never became Assigned (e.g. {})",
            unassigned.len(),
            unassigned
                .iter()
                .take(5)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if timed_out && run_for.is_none() {
        violations.push(format!("the run hit its time limit of {:?}", p.time_limit));
    }
    // Invariant: no token for a pod not bound to the identity.
    for (name, pl) in st.pods.iter().filter(|(n, _)| n.starts_with("unbound-")) {
        for r in &pl.requests {
            if r.status == 200 {
                violations.push(format!("a token was served to unbound pod {name}"));
            }
        }
        if pl.requests.is_empty() {
            violations.push(format!("unbound probe {name} never sent its request"));
        }
    }
    // Lost requests: a bound pod's request must get a token, unless its pod ended first.
    let mut lost = 0;
    let mut ended_first = 0;
    for (name, pl) in &bound {
        for r in &pl.requests {
            if r.status == 200 {
                continue;
            }
            if pl
                .finished
                .is_some_and(|f| r.answered.is_none_or(|a| f <= a + 0.5))
            {
                ended_first += 1;
                continue;
            }
            lost += 1;
            if lost <= 5 {
                violations.push(format!(
                    "pod {name}: token request answered {} ({})",
                    r.status,
                    r.error.as_deref().unwrap_or("no answer")
                ));
            }
        }
    }
    if lost > 5 {
        violations.push(format!("{lost} token requests lost in total"));
    }

    // Latencies and the 5-second polling baseline on the same log.
    let ms = |v: f64| v * 1000.0;
    let to_assigned: Vec<f64> = bound
        .iter()
        .filter_map(|(_, p)| Some(ms(p.assigned? - p.created?)))
        .collect();
    let running_to_assigned: Vec<f64> = bound
        .iter()
        .filter_map(|(_, p)| Some(ms((p.assigned? - p.running?).max(0.0))))
        .collect();
    let (mut ev_wait, mut poll_wait, mut ev_late, mut poll_late, mut token_lat) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut waited_by_event = 0;
    let mut after_assignment = 0;
    for (_, pl) in &bound {
        for r in pl.requests.iter().filter(|r| r.status == 200) {
            let Some(ans) = r.answered else { continue };
            token_lat.push(ms(ans - r.sent));
            let Some(asg) = pl.assigned else { continue };
            if asg <= r.sent {
                after_assignment += 1;
                continue;
            }
            waited_by_event += 1;
            // The same work after noticing, but noticed at the poller's next check.
            let work_after = (ans - asg).max(0.0);
            let checks = ((asg - r.sent) / POLL_INTERVAL).ceil();
            let poll_answer = r.sent + checks * POLL_INTERVAL + work_after;
            ev_wait.push(ms(ans - r.sent));
            poll_wait.push(ms(poll_answer - r.sent));
            ev_late.push(ms(work_after));
            poll_late.push(ms(poll_answer - asg));
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            None
        } else {
            Some(v.iter().sum::<f64>() / v.len() as f64)
        }
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let wait_ratio = ratio(mean(&poll_wait), mean(&ev_wait));
    let late_ratio = ratio(mean(&poll_late), mean(&ev_late));
    let total_requests: usize = st.pods.values().map(|p| p.requests.len()).sum();
    let ok_requests = bound
        .iter()
        .map(|(_, p)| p.requests.iter().filter(|r| r.status == 200).count())
        .sum::<usize>();
    let window = (finished_s - created_s).max(1e-3);
    let patches = azure.total_patches() - azure0.total_patches();
    let gets: u64 = azure.gets.values().sum::<u64>() - azure0.gets.values().sum::<u64>();
    let job_pods = bound.len();
    let cpu_s = cpu1 - cpu0;

    let figures = json!({
        "startup_s": startup_s,
        "pods_seen": bound.len(),
        "pods_assigned": bound.iter().filter(|(_, p)| p.assigned.is_some()).count(),
        "run_s": finished_s,
        "creation_to_assigned_ms": summary(&to_assigned),
        "running_to_assigned_ms": summary(&running_to_assigned),
        "prometheus": prom_fig,
        "arm": {
            "patches": patches,
            "patches_per_scale_set": azure.patches,
            "gets": gets,
            "throttled_429": azure.throttled - azure0.throttled,
            "imds_tokens_issued": azure.imds_tokens - azure0.imds_tokens,
        },
        "tokens": {
            "requests": total_requests,
            "ok": ok_requests,
            "lost": lost,
            "pod_ended_before_answer": ended_first,
            "latency_ms": summary(&token_lat),
            "throughput_per_s": ok_requests as f64 / window,
        },
        "wait": {
            "answered_by_assignment_event": waited_by_event,
            "asked_after_assignment": after_assignment,
            "event_driven_wait_ms": summary(&ev_wait),
            "poll_5s_wait_ms": summary(&poll_wait),
            "event_driven_after_assignment_ms": summary(&ev_late),
            "poll_5s_after_assignment_ms": summary(&poll_late),
            "wait_ratio_poll_over_event": wait_ratio,
            "lateness_ratio_poll_over_event": late_ratio,
        },
        "process": {
            "note": "one process holds MIC, every NMI, both simulators and the driver",
            "cpu_s": cpu_s,
            "rss_kb_end": rss_kb,
            "peak_rss_kb": hwm_kb,
        },
        "churn": run_for.map(|_| json!({
            "job_pods": job_pods,
            "patches_per_job_pod": if job_pods > 0 { patches as f64 / job_pods as f64 } else { 0.0 },
        })),
    });
    if let Some((cronjobs, ..)) = p.churn {
        // With the grace period, each identity is written to each scale set about once.
        let bound_patches = u64::from(cronjobs * p.scale_sets) * 2 + 2;
        if patches > bound_patches {
            violations.push(format!(
                "churn cost {patches} PATCHes for {job_pods} job pods (more than {bound_patches})"
            ));
        }
        if job_pods == 0 {
            violations.push("churn: no job pod ran".into());
        }
    }

    let f1 = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.1}"));
    let mut table = vec![
        (
            "pods / identities / nodes / scale sets".to_string(),
            format!(
                "{} / {} / {} / {} (ARM {:?} per write, 1/{} of real)",
                bound.len(),
                p.identities,
                p.scale_sets * p.nodes_per_scale_set,
                p.scale_sets,
                p.arm_latency,
                args.clock_factor
            ),
        ),
        (
            "pod created -> Assigned (driver)".into(),
            ms_line(&to_assigned),
        ),
    ];
    if prometheus.is_some() {
        let l = &prom_fig["mic_assignment_latency_s"];
        let s = |k: &str| {
            l[k].as_f64()
                .map_or("-".into(), |v| format!("{:.1}", v * 1000.0))
        };
        table.push((
            "MIC assignment latency (Prometheus)".into(),
            format!("p50 {} / p95 {} / p99 {} ms", s("p50"), s("p95"), s("p99")),
        ));
        table.push((
            "NMI waits / cache lookups (Prometheus)".into(),
            format!(
                "{} / {}",
                prom_fig["nmi_waits"], prom_fig["nmi_cache_lookups"]
            ),
        ));
    }
    table.extend([
        (
            "ARM PATCH / GET / 429".into(),
            format!(
                "{patches} / {gets} / {}",
                azure.throttled - azure0.throttled
            ),
        ),
        (
            "token requests ok / sent / lost".into(),
            format!("{ok_requests} / {total_requests} / {lost}"),
        ),
        (
            "token latency (request -> token)".into(),
            ms_line(&token_lat),
        ),
        (
            "waits answered by assignment event".into(),
            format!("{waited_by_event} ({after_assignment} asked after assignment)"),
        ),
        (
            "after assignment: event vs 5 s poll".into(),
            format!(
                "mean {} vs {} ms ({}x)",
                f1(mean(&ev_late)),
                f1(mean(&poll_late)),
                f1(late_ratio)
            ),
        ),
        (
            "whole wait: event vs 5 s poll".into(),
            format!(
                "mean {} vs {} ms ({}x)",
                f1(mean(&ev_wait)),
                f1(mean(&poll_wait)),
                f1(wait_ratio)
            ),
        ),
        (
            "process CPU / peak RSS".into(),
            format!(
                "{cpu_s:.1} s / {} MiB (MIC+NMIs+simulators+driver)",
                hwm_kb / 1024
            ),
        ),
    ]);
    if run_for.is_some() {
        table.push((
            "churn: job pods / PATCHes".into(),
            format!("{job_pods} / {patches}"),
        ));
    }

    let series = &st.series;
    let mut lines = vec![
        (
            "Running pods".to_string(),
            series.iter().map(|s| (s.0, s.1 as f64)).collect::<Vec<_>>(),
        ),
        (
            "Assigned pods".to_string(),
            series.iter().map(|s| (s.0, s.2 as f64)).collect(),
        ),
        (
            "tokens served".to_string(),
            series.iter().map(|s| (s.0, s.3 as f64)).collect(),
        ),
    ];
    lines.extend(prom_series);
    let charts = vec![
        Chart::Lines {
            id: "timeline".into(),
            title: format!(
                "{}: pods, assignments and tokens over time",
                args.scenario.name()
            ),
            x_label: "seconds since start".into(),
            y_label: "count".into(),
            series: lines,
        },
        Chart::Lines {
            id: "arm-writes".into(),
            title: "ARM PATCHes (Azure simulator)".into(),
            x_label: "seconds since start".into(),
            y_label: "PATCHes".into(),
            series: vec![(
                "PATCHes".into(),
                series
                    .iter()
                    .map(|s| (s.0, (s.4 - azure0.total_patches()) as f64))
                    .collect(),
            )],
        },
        Chart::Histogram {
            id: "assignment-latency".into(),
            title: "pod created -> Assigned".into(),
            x_label: "milliseconds (log scale)".into(),
            series: vec![("created -> Assigned".into(), to_assigned.clone())],
        },
        Chart::Histogram {
            id: "token-wait".into(),
            title: "token wait: event-driven NMI vs the original's 5 s polling (same log)".into(),
            x_label: "milliseconds from request to token (log scale)".into(),
            series: vec![
                ("event-driven (measured)".into(), ev_wait.clone()),
                ("5 s polling (same log)".into(), poll_wait.clone()),
            ],
        },
    ];
    let _ = dir;
    Ok(RunResult {
        scenario: args.scenario.name().to_string(),
        quick: args.quick,
        parameters: p.json(),
        figures,
        table,
        charts,
        violations,
    })
}

fn sargs_topology(p: &Params) -> aad_pod_identity_sim::topology::Topology {
    aad_pod_identity_sim::topology::Topology::sized(
        p.scale_sets,
        p.nodes_per_scale_set,
        0,
        p.identities,
    )
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scenario_binds_each_identity_through_its_own_selector() {
        let args = LoadtestArgs {
            scenario: Scenario::Churn,
            quick: true,
            out: "x".into(),
            prometheus: None,
            prometheus_targets: None,
            pods: None,
            identities: Some(3),
            nodes: None,
            scale_sets: None,
            clock_factor: 100,
            nmi_port: 2579,
            time_limit: None,
        };
        let p = Params::from(&args);
        let docs = crate::scenario::parse_documents(&scenario_yaml(&p)).unwrap();
        let kinds: Vec<_> = docs
            .iter()
            .map(|d| d.types.as_ref().unwrap().kind.clone())
            .collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|k| *k == "AzureIdentityBinding")
                .count(),
            3
        );
        assert_eq!(kinds.iter().filter(|k| *k == "CronJob").count(), 3);
        assert_eq!(docs[1].data["spec"]["selector"], "sel-0");
        assert_eq!(selector_index("sel-12"), Some(12));
        assert_eq!(p.arm_latency, Duration::from_millis(500));
    }
}
