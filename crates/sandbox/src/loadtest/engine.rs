//! The assignment scenarios (`burst`, `token-storm`, `churn`): start the sandbox (MIC and the
//! NMIs as processes of their own unless `--in-process`), create the pods (or let CronJobs
//! create them), ask NMI for tokens as those pods, and follow every pod and
//! AzureAssignedIdentity through watches until everything is Assigned and answered.
//!
//! The pieces: [`super::params`] (sizes and starting objects), [`super::timeline`] (the log
//! the watches write), [`super::tokens`] (the pods' requests), [`super::figures`] (from the
//! log to the report). This module runs them in order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::figures::{self, Measured, UsageSeries};
use super::params::{Params, UNBOUND_PODS, pod_object, scenario_yaml};
use super::prom::{self, Prometheus};
use super::report::RunResult;
use super::timeline::{self, Ctx, State};
use super::{Error, LoadtestArgs};
use crate::args::{FaultProfile, SandboxArgs};
use crate::processes::Usage;
use crate::system::Sandbox;
use aad_pod_identity_sim::topology::Host;

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
    let sargs = sandbox_args(args, &p, scenario_path);
    let started = Instant::now();
    let self0 = Usage::of(None);
    let mut sandbox = Sandbox::start_with(&sargs, super::components(args, dir, &[])?).await?;
    let startup_s = started.elapsed().as_secs_f64();
    let endpoints = sandbox.endpoints(None);
    let _ = std::fs::write(
        dir.join("endpoints.json"),
        serde_json::to_string_pretty(&endpoints).unwrap_or_default(),
    );
    let result = drive(args, &p, &mut sandbox, startup_s, self0, dir).await;
    sandbox.stop().await;
    result
}

/// Every pod's times (seconds since the run's start) as the driver saw them, one line each, for
/// whoever wants to see where a slow pod's time went.
fn write_pods_csv(dir: &Path, st: &State) {
    let f = |t: Option<f64>| t.map_or(String::new(), |t| format!("{t:.4}"));
    let mut out = String::from("pod,node,created_s,running_s,assigned_s,first_answer_s\n");
    for (name, p) in &st.pods {
        let answered = p
            .requests
            .iter()
            .filter_map(|r| r.answered)
            .reduce(f64::min);
        out.push_str(&format!(
            "{name},{},{},{},{},{}\n",
            p.node.as_deref().unwrap_or(""),
            f(p.created),
            f(p.running),
            f(p.assigned),
            f(answered)
        ));
    }
    let _ = std::fs::write(dir.join("pods.csv"), out);
}

/// Every request the simulated metadata services received (seconds since the run's start,
/// negative before it): which node, for which client id, from which client port (a new port is
/// a new connection), when it reached the handler and when its answer was ready. With
/// `pods.csv` and the NMIs' debug logs (`COMPONENT_LOG=aad_pod_identity::actors::nmi=debug`)
/// this shows where a slow wake-up's time went.
fn write_imds_csv(dir: &Path, t0: Instant, log: &[aad_pod_identity_sim::azure::RequestRecord]) {
    let rel = |t: Instant| {
        if t >= t0 {
            (t - t0).as_secs_f64()
        } else {
            -(t0 - t).as_secs_f64()
        }
    };
    let mut out = String::from("node,client_id,peer_port,received_s,answered_s,status\n");
    for r in log {
        let Some(node) = &r.node else { continue };
        let client_id = url::form_urlencoded::parse(r.query.as_bytes())
            .find(|(k, _)| k.eq_ignore_ascii_case("client_id"))
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        out.push_str(&format!(
            "{node},{client_id},{},{:.5},{:.5},{}\n",
            r.peer.map_or(0, |p| p.port()),
            rel(r.received),
            rel(r.at),
            r.status
        ));
    }
    let _ = std::fs::write(dir.join("imds.csv"), out);
}

fn sandbox_args(args: &LoadtestArgs, p: &Params, scenario: std::path::PathBuf) -> SandboxArgs {
    let (job_run_time, speedup) = p.churn.map_or((Duration::from_secs(5), 1), |c| (c.2, c.3));
    SandboxArgs {
        kubeconfig_out: None,
        endpoints_out: None,
        scale_sets: p.scale_sets,
        nodes_per_scale_set: p.nodes_per_scale_set,
        vms: 0,
        identities: p.identities,
        scenario: Some(scenario),
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
        components: super::components_as_deployed(),
    }
}

/// What the driver needs to know of the simulated world.
struct World {
    client_ids: Vec<String>,
    resource_ids: Vec<String>,
    vmss_of: HashMap<String, String>,
}

impl World {
    fn read(sandbox: &Sandbox, p: &Params) -> Self {
        let mut identities = sandbox.azure.identities();
        identities.sort_by(|a, b| a.name.cmp(&b.name));
        let topology = aad_pod_identity_sim::topology::Topology::sized(
            p.scale_sets,
            p.nodes_per_scale_set,
            0,
            p.identities,
        );
        Self {
            client_ids: identities.iter().map(|i| i.client_id.clone()).collect(),
            resource_ids: identities.iter().map(|i| i.resource_id.clone()).collect(),
            vmss_of: topology
                .nodes()
                .into_iter()
                .filter_map(|n| match n.host {
                    Host::ScaleSet { name, .. } => Some((n.name, name)),
                    Host::Vm { .. } => None,
                })
                .collect(),
        }
    }
}

/// Points Prometheus at MIC and every NMI and waits until it scrapes them all.
async fn start_prometheus(
    args: &LoadtestArgs,
    sandbox: &Sandbox,
) -> Result<Option<Prometheus>, Error> {
    let Some(url) = &args.prometheus else {
        return Ok(None);
    };
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
    Ok(Some(pr))
}

/// The burst: every pod at once (a bounded number of creates in flight), probes first; a
/// pod's creation time is when its create request is sent.
async fn create_pods(ctx: &Ctx, client: &kube::Client, p: &Params) -> Result<(), Error> {
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
    futures::stream::iter(names.iter().map(|(n, sel)| {
        let pods = pods.clone();
        async move {
            let pod = pod_object(n, sel)?;
            // Created when its create request goes out (a pod waiting for the driver's turn
            // does not exist yet).
            ctx.lock().pods.entry(n.clone()).or_default().created = Some(ctx.now());
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
    Ok(())
}

/// Samples every 250 ms until every pod is Assigned and every request answered (churn: until
/// its run time is over and nothing is pending), or the time limit. True when timed out.
async fn wait_until_done(
    ctx: &Ctx,
    sandbox: &mut Sandbox,
    world: &World,
    usage: &mut UsageSeries,
    patches: &mut Vec<(f64, f64)>,
    patches0: u64,
) -> bool {
    let p = &ctx.params;
    let end = ctx.t0 + p.time_limit;
    let run_for = p.churn.map(|c| c.1);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        timeline::sample(ctx, sandbox, &world.vmss_of, &world.resource_ids);
        let now = ctx.now();
        usage.push_all(now, &sandbox.usage(), &Usage::of(None));
        patches.push((
            now,
            (sandbox.azure.counters().total_patches() - patches0) as f64,
        ));
        if Instant::now() >= end {
            return true;
        }
        let finished = match run_for {
            Some(d) => {
                let pending = ctx
                    .lock()
                    .pods
                    .values()
                    .any(|p| p.requests.iter().any(|r| r.answered.is_none()));
                ctx.t0.elapsed() >= d && !pending
            }
            None => timeline::done(ctx),
        };
        if finished {
            return false;
        }
    }
}

async fn drive(
    args: &LoadtestArgs,
    p: &Params,
    sandbox: &mut Sandbox,
    startup_s: f64,
    self0: Usage,
    dir: &Path,
) -> Result<RunResult, Error> {
    let client = sandbox
        .kube
        .client()
        .await
        .map_err(|e| Error::Load(e.to_string()))?;
    let world = World::read(sandbox, p);
    let prometheus = start_prometheus(args, sandbox).await?;
    let probes = timeline::Probes::start().map_err(|e| Error::Load(e.to_string()))?;
    let wall0 = figures::unix_now();
    let t0 = Instant::now();
    let t0_unix_s = figures::unix_now();
    let ctx = Arc::new(Ctx {
        t0,
        probes: probes.handle(),
        state: Mutex::new(State::default()),
        nmi: sandbox.nmi.clone(),
        client_ids: world.client_ids.clone(),
        params: p.clone(),
        scenario: args.scenario,
    });
    let azure0 = sandbox.azure.counters();
    let writes0 = sandbox.kube.writes().total();
    let watchers = [
        tokio::spawn(timeline::watch_pods(Arc::clone(&ctx), client.clone())),
        probes.handle().spawn(timeline::watch_assignments(
            Arc::clone(&ctx),
            sandbox.kube.kubeconfig_yaml(),
        )),
    ];
    create_pods(&ctx, &client, p).await?;
    let created_s = ctx.now();
    let mut usage = UsageSeries::default();
    let mut patch_series = Vec::new();
    let timed_out = wait_until_done(
        &ctx,
        sandbox,
        &world,
        &mut usage,
        &mut patch_series,
        azure0.total_patches(),
    )
    .await;
    let finished_s = ctx.now();
    let azure = sandbox.azure.counters();
    let (components, self1) = (sandbox.usage(), Usage::of(None));
    for w in watchers {
        w.abort();
    }
    let prom = match &prometheus {
        Some(pr) => {
            let assigned = ctx
                .lock()
                .pods
                .values()
                .filter(|p| p.assigned.is_some())
                .count();
            Some(figures::prometheus(pr, assigned.min(p.pods as usize), wall0).await?)
        }
        None => None,
    };
    let patches = azure.total_patches() - azure0.total_patches();
    let gets: u64 = azure.gets.values().sum::<u64>() - azure0.gets.values().sum::<u64>();
    let throttled = azure.throttled - azure0.throttled;
    let measured = Measured {
        startup_s,
        t0_unix_s,
        created_s,
        finished_s,
        timed_out,
        prom,
        arm: json!({
            "patches": patches,
            "patches_per_scale_set": azure.patches,
            "gets": gets,
            "throttled_429": throttled,
            "imds_tokens_issued": azure.imds_tokens - azure0.imds_tokens,
        }),
        patches,
        gets,
        throttled,
        // The writes' rate while MIC assigned: until the last pod was Assigned.
        kube_writes: figures::kube_writes_json(
            &sandbox.kube,
            writes0,
            ctx.lock()
                .pods
                .values()
                .filter_map(|p| p.assigned)
                .fold(0.0, f64::max),
        ),
        components: figures::components_json(&components, &self0, &self1),
        component_rows: figures::components_rows(&components, &self0, &self1),
        usage_series: usage.into_series(),
        patch_series,
    };
    write_imds_csv(dir, ctx.t0, &sandbox.azure.request_log());
    let st = ctx.lock();
    write_pods_csv(dir, &st);
    Ok(figures::result(args, p, &st, measured))
}
