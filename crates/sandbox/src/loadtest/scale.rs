//! The `scale` scenario: MIC alone, as its own process, converging a large cluster, then
//! restarting on it.
//!
//! The cluster exists before MIC starts (as after a failover or an upgrade of MIC on a
//! running cluster): N pods bound to K identities on M nodes in S scale sets. Each identity's
//! pods run on two scale sets (a deployment spread over two node pools), so a scale set
//! carries about 2K/S identities, well under Azure's 100 user-assigned identities per scale
//! set even at 500 identities. No NMI runs: the scenario measures MIC and the API server.
//!
//! Measured: convergence (MIC process start → every AzureAssignedIdentity Assigned, as the
//! driver's watch sees it), ARM PATCHes and GETs, Kubernetes writes per AzureAssignedIdentity
//! and Events, MIC's CPU time and peak RSS from `/proc`, the Kubernetes simulator's write
//! throughput while MIC's watches and the driver's stream every write, and a restart: a new
//! MIC lists everything, reads every scale set, and must write nothing.
//!
//! Invariants: every pod Assigned within the time limit; at most two writes per
//! AzureAssignedIdentity; at most two PATCHes per scale set; no write after the restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::figures::{self, UsageSeries, usage_charts};
use super::report::{Chart, RunResult};
use super::{Error, LoadtestArgs};
use crate::component_files::ComponentFiles;
use crate::processes::{self, Component, Usage};
use aad_pod_identity::crd::{
    self, AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzureIdentityBindingSpec,
    AzureIdentitySpec, POD_LABEL,
};
use aad_pod_identity_sim::azure::{AzureSim, AzureSimConfig, AzureSimHandle, Latency};
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig, KubeSimHandle};
use aad_pod_identity_sim::topology::{Host, Topology};

/// MIC's `--nmi-absence-grace` here: longer than any run.
const NMI_ABSENCE_GRACE: &str = "24h";

/// Pods created at once by the driver.
const CREATES_IN_FLIGHT: usize = 32;

/// The sizes of one run.
#[derive(Clone, Debug)]
struct Size {
    pods: u32,
    identities: u32,
    scale_sets: u32,
    nodes_per_scale_set: u32,
    arm_latency: Duration,
    time_limit: Duration,
}

impl Size {
    fn from(args: &LoadtestArgs) -> Self {
        let (pods, ids, nodes, ss) = if args.quick {
            (1000, 20, 100, 4)
        } else {
            (10_000, 100, 1000, 10)
        };
        let scale_sets = args.scale_sets.unwrap_or(ss).max(1);
        let nodes = args.nodes.unwrap_or(nodes).max(scale_sets);
        let pods = args.pods.unwrap_or(pods);
        Self {
            pods,
            identities: args.identities.unwrap_or(ids).max(1),
            scale_sets,
            nodes_per_scale_set: nodes.div_ceil(scale_sets),
            arm_latency: Duration::from_secs(50) / args.clock_factor.max(1),
            time_limit: args.time_limit.unwrap_or(Duration::from_secs(
                if args.quick { 60 } else { 120 } + u64::from(pods) / 500,
            )),
        }
    }

    fn json(&self) -> Value {
        json!({
            "pods": self.pods,
            "identities": self.identities,
            "scale_sets": self.scale_sets,
            "nodes": self.scale_sets * self.nodes_per_scale_set,
            "arm_latency_ms": self.arm_latency.as_millis() as u64,
            "time_limit_s": self.time_limit.as_secs(),
            "pod_creates_in_flight": CREATES_IN_FLIGHT,
            "placement": "each identity's pods on two scale sets",
        })
    }
}

/// The node of pod `p`: identity `p % K` on scale sets `i % S` and `(i + 1) % S`, spread over
/// their nodes.
fn node_of(p: u32, s: &Size, by_scale_set: &[Vec<String>]) -> String {
    let i = p % s.identities;
    let k = p / s.identities;
    let ss = ((i + k % 2) % s.scale_sets) as usize;
    let nodes = &by_scale_set[ss];
    nodes[((k / 2) as usize * 7 + i as usize) % nodes.len()].clone()
}

/// The simulators, with the cluster's objects.
struct World {
    kube: KubeSimHandle,
    azure: AzureSimHandle,
    client: kube::Client,
}

async fn start_world(s: &Size) -> Result<World, Error> {
    let topology = Topology::sized(s.scale_sets, s.nodes_per_scale_set, 0, s.identities);
    let load = |e: String| Error::Load(e);
    let azure = AzureSim::start(
        &topology,
        AzureSimConfig {
            arm_latency: Latency::Uniform {
                min: s.arm_latency.mul_f64(0.8),
                max: s.arm_latency.mul_f64(1.2),
            },
            ..AzureSimConfig::default()
        },
    )
    .await
    .map_err(|e| load(format!("Azure simulator: {e}")))?;
    let kube = KubeSim::start(KubeSimConfig {
        topology: topology.clone(),
        run_cluster: false,
        // MIC's watches resume from any point of the run.
        watch_history: (3 * s.pods as usize).max(100_000),
        ..KubeSimConfig::default()
    })
    .await
    .map_err(|e| load(format!("Kubernetes simulator: {e}")))?;
    let client = kube.client().await.map_err(|e| load(e.to_string()))?;
    let kerr = |what: &'static str| move |source| Error::Kube { what, source };
    for f in crd::all_crds() {
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &f.crd)
            .await
            .map_err(kerr("creating the CRDs"))?;
    }
    for (i, spec) in topology.identities.iter().enumerate() {
        let mut id = AzureIdentity::new(
            &format!("id-{i}"),
            AzureIdentitySpec {
                resource_id: topology.identity_resource_id(spec),
                client_id: topology.identity_client_id(spec).to_string(),
                ..AzureIdentitySpec::default()
            },
        );
        id.metadata.namespace = Some("default".into());
        Api::<AzureIdentity>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &id)
            .await
            .map_err(kerr("creating an AzureIdentity"))?;
        let mut b = AzureIdentityBinding::new(
            &format!("binding-{i}"),
            AzureIdentityBindingSpec {
                azure_identity: format!("id-{i}"),
                selector: format!("sel-{i}"),
                weight: 0,
            },
        );
        b.metadata.namespace = Some("default".into());
        Api::<AzureIdentityBinding>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &b)
            .await
            .map_err(kerr("creating an AzureIdentityBinding"))?;
    }
    Ok(World {
        kube,
        azure,
        client,
    })
}

/// Creates every pod (on its node, as the scheduler would have placed it); the creation rate.
async fn create_pods(w: &World, s: &Size) -> Result<f64, Error> {
    let topology = Topology::sized(s.scale_sets, s.nodes_per_scale_set, 0, s.identities);
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in topology.nodes() {
        if let Host::ScaleSet { name, .. } = n.host {
            by_name.entry(name).or_default().push(n.name);
        }
    }
    let by_scale_set: Vec<Vec<String>> = by_name.into_values().collect();
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), "default");
    let t = Instant::now();
    let results: Vec<Result<(), Error>> = futures::stream::iter(0..s.pods)
        .map(|p| {
            let pods = pods.clone();
            let node = node_of(p, s, &by_scale_set);
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("pod-{p}"), "namespace": "default",
                                 "labels": {POD_LABEL: format!("sel-{}", p % s.identities)}},
                    "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]},
                }))
                .map_err(|e| Error::Load(format!("pod object: {e}")))?;
                pods.create(&PostParams::default(), &pod)
                    .await
                    .map(|_| ())
                    .map_err(|source| Error::Kube {
                        what: "creating a pod",
                        source,
                    })
            }
        })
        .buffer_unordered(CREATES_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(f64::from(s.pods) / t.elapsed().as_secs_f64().max(1e-3))
}

/// Counts Assigned AzureAssignedIdentities from a watch, and when the count last changed.
fn watch_assigned(
    client: kube::Client,
    t0: Instant,
) -> (Arc<Mutex<(usize, f64)>>, tokio::task::JoinHandle<()>) {
    let out = Arc::new(Mutex::new((0usize, 0.0f64)));
    let seen = Arc::clone(&out);
    let task = tokio::spawn(async move {
        let api: Api<AzureAssignedIdentity> = Api::all(client);
        let mut assigned = std::collections::HashSet::new();
        let mut s = watcher::watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = s.next().await {
            if let Ok(watcher::Event::Apply(a) | watcher::Event::InitApply(a)) = ev
                && a.is_assigned()
                && assigned.insert(a.metadata.name.clone().unwrap_or_default())
            {
                let mut o = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *o = (assigned.len(), t0.elapsed().as_secs_f64());
            }
        }
    });
    (out, task)
}

/// Sum of a metric's samples in a Prometheus text exposition (lines starting with `name`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(http: &reqwest::Client, addr: SocketAddr) -> String {
    match http.get(format!("http://{addr}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Starts MIC as a process against the world.
async fn start_mic(
    args: &LoadtestArgs,
    dir: &Path,
    w: &World,
) -> Result<(Component, ComponentFiles), Error> {
    let crate::system::Placement::Processes { bin, dir: cdir, .. } =
        super::components(args, dir, &[])?
    else {
        return Err(Error::Load(
            "scale measures MIC as a process of its own: run it without --in-process".into(),
        ));
    };
    // Outside the report's `components/` (only logs go there): azure.json holds the simulated
    // service principal's secret. Removed when MIC stops.
    let files = ComponentFiles::create("scale", &w.kube)
        .and_then(|f| f.write_cloudconfig(&w.azure).map(|_| f))
        .map_err(|(path, source)| Error::File {
            path: path.display().to_string(),
            source,
        })?;
    // No NMI runs in this scenario (it measures MIC and the API server), so MIC's check for
    // nodes without a ready NMI would report every node and every pod after its grace (30 s)
    // and add their Warning Events to what is measured; a real cluster runs NMI everywhere.
    let flags = [format!("--nmi-absence-grace={NMI_ABSENCE_GRACE}")];
    let mic = processes::start_mic(
        &bin,
        &cdir,
        &files.kubeconfig(),
        &files.cloudconfig(),
        &flags,
    )
    .await
    .map_err(|e| Error::Load(e.to_string()))?;
    Ok((mic, files))
}

/// Runs the scenario.
///
/// # Errors
/// [`Error`] when the simulators or MIC cannot be started at all.
pub async fn run(args: &LoadtestArgs, dir: &Path) -> Result<RunResult, Error> {
    let s = Size::from(args);
    let self0 = Usage::of(None);
    let w = start_world(&s).await?;
    let result = drive(args, dir, &s, &w, self0).await;
    w.kube.shutdown().await;
    w.azure.shutdown().await;
    result
}

async fn drive(
    args: &LoadtestArgs,
    dir: &Path,
    s: &Size,
    w: &World,
    self0: Usage,
) -> Result<RunResult, Error> {
    let mut violations = Vec::new();
    let create_rate = create_pods(w, s).await?;
    let writes0 = w.kube.writes().total();
    let t0 = Instant::now();
    let (assigned, watch) = watch_assigned(w.client.clone(), t0);
    // `_files` holds MIC's azure.json and kubeconfig until the run ends.
    let (mut mic, _files) = start_mic(args, dir, w).await?;
    let active_s = t0.elapsed().as_secs_f64();
    let mut usage = UsageSeries::default();
    let mut series = Vec::new();
    let mut timed_out = false;
    loop {
        let (n, _) = *assigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = t0.elapsed().as_secs_f64();
        usage.push(now, "MIC", &mic.usage());
        usage.push(now, "simulators + driver", &Usage::of(None));
        series.push((now, n as f64));
        if n >= s.pods as usize {
            break;
        }
        if t0.elapsed() >= s.time_limit {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (n_assigned, converged_s) = *assigned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Let MIC finish what it was doing (Events queued behind the last status write).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mic_first = mic.usage();
    let self1 = Usage::of(None);
    let azure = w.azure.counters();
    let kube_writes = figures::kube_writes_json(&w.kube, writes0, converged_s.max(1e-3));
    let per_object = w.kube.writes().of("azureassignedidentities");
    let most = per_object.values().max().copied().unwrap_or(0);
    if timed_out {
        violations.push(format!(
            "{n_assigned} of {} pods Assigned when the time limit of {:?} ran out",
            s.pods, s.time_limit
        ));
    }
    if most > 2 {
        let worst: Vec<_> = per_object.iter().filter(|(_, n)| **n > 2).take(5).collect();
        violations.push(format!(
            "an AzureAssignedIdentity took {most} writes until Assigned (e.g. {worst:?})"
        ));
    }
    let patches = azure.total_patches();
    if patches > 2 * u64::from(s.scale_sets) {
        violations.push(format!(
            "{patches} PATCHes for {} scale sets (group commit allows 2 each)",
            s.scale_sets
        ));
    }

    // Restart: a new MIC lists everything and reads every scale set, and has nothing to do.
    mic.stop().await;
    let writes_before = w.kube.writes().total();
    let patches_before = azure.total_patches();
    let t1 = Instant::now();
    let (mut mic, _files) = start_mic(args, dir, w).await?;
    let http = reqwest::Client::new();
    let reads_q = "aadpodidentity_cloud_provider_operations_duration_seconds_count{operation_type=\"vmss_get\"}";
    let restart_s = loop {
        let m = scrape(&http, mic.metrics).await;
        if metric(&m, reads_q) >= f64::from(s.scale_sets)
            && metric(&m, "aadpodidentity_mic_cycle_count") >= 1.0
        {
            break Some(t1.elapsed().as_secs_f64());
        }
        if t1.elapsed() > Duration::from_secs(120) {
            violations.push("the restarted MIC did not read every scale set in 120 s".into());
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Anything it would write comes within moments of its first pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restart_writes = w
        .kube
        .writes()
        .of("azureassignedidentities")
        .values()
        .sum::<u32>()
        - per_object.values().sum::<u32>();
    let restart_patches = w.azure.counters().total_patches() - patches_before;
    if restart_writes > 0 || restart_patches > 0 {
        violations.push(format!(
            "after a restart with nothing to do, MIC wrote {restart_writes} AzureAssignedIdentities and sent {restart_patches} PATCHes"
        ));
    }
    let mic_restart = mic.usage();
    let other_writes_after_restart = w.kube.writes().total() - writes_before;
    mic.stop().await;
    watch.abort();

    let gets: u64 = azure.gets.values().sum();
    let mib = |kb: u64| kb as f64 / 1024.0;
    let figures = json!({
        "pods_assigned": n_assigned,
        "converged_s": (!timed_out).then_some(converged_s),
        "mic_active_after_s": active_s,
        "arm": {"patches": patches, "patches_per_scale_set": azure.patches, "gets": gets, "throttled_429": azure.throttled},
        "kubernetes_writes": kube_writes,
        "simulator": {
            "pod_creates_per_s": create_rate,
            "pod_creates_in_flight": CREATES_IN_FLIGHT,
            "write_requests_per_s_while_converging": kube_writes["write_requests_per_s"],
            "watchers": "MIC's (pods, AzureIdentities, bindings, AzureAssignedIdentities, nodes, exceptions) and the driver's AzureAssignedIdentity watch",
        },
        "process": {
            "separate_processes": true,
            "mic": figures::usage_json(&mic_first),
            "driver_and_simulators": {
                "cpu_s": self1.cpu_s - self0.cpu_s,
                "peak_rss_kb": self1.peak_rss_kb,
            },
        },
        "restart": {
            "read_everything_after_s": restart_s,
            "assigned_identity_writes": restart_writes,
            "patches": restart_patches,
            "other_write_requests": other_writes_after_restart,
            "mic": figures::usage_json(&mic_restart),
        },
    });
    let table = vec![
        (
            "pods / identities / nodes / scale sets".to_string(),
            format!(
                "{} / {} / {} / {} (ARM {:?} per write)",
                s.pods,
                s.identities,
                s.scale_sets * s.nodes_per_scale_set,
                s.scale_sets,
                s.arm_latency
            ),
        ),
        (
            "MIC start -> every pod Assigned".into(),
            if timed_out {
                format!("not converged ({n_assigned} Assigned)")
            } else {
                format!("{converged_s:.2} s (leading after {active_s:.2} s)")
            },
        ),
        (
            "MIC process: CPU / peak RSS".into(),
            format!(
                "{:.2} s / {:.1} MiB",
                mic_first.cpu_s,
                mib(mic_first.peak_rss_kb)
            ),
        ),
        (
            "ARM PATCH / GET / 429".into(),
            format!("{patches} / {gets} / {}", azure.throttled),
        ),
        (
            "Kubernetes writes per AzureAssignedIdentity (mean / max); Events".into(),
            format!(
                "{:.2} / {most}; {}",
                kube_writes["writes_per_assigned_identity"]["mean"]
                    .as_f64()
                    .unwrap_or(0.0),
                kube_writes["event_writes"]
            ),
        ),
        (
            "simulator: pod creates/s (32 in flight); writes/s while converging".into(),
            format!(
                "{create_rate:.0}; {:.0}",
                kube_writes["write_requests_per_s"].as_f64().unwrap_or(0.0)
            ),
        ),
        (
            "simulators + driver: CPU / peak RSS".into(),
            format!(
                "{:.1} s / {:.0} MiB",
                self1.cpu_s - self0.cpu_s,
                mib(self1.peak_rss_kb)
            ),
        ),
        (
            "restart: everything read after; writes".into(),
            format!(
                "{}; {restart_writes} AzureAssignedIdentity, {restart_patches} PATCH",
                restart_s.map_or("-".into(), |t| format!("{t:.2} s"))
            ),
        ),
    ];
    let mut charts = vec![Chart::Lines {
        id: "timeline".into(),
        title: "scale: Assigned AzureAssignedIdentities after MIC starts".into(),
        x_label: "seconds since MIC started".into(),
        y_label: "Assigned".into(),
        series: vec![("Assigned".into(), series)],
    }];
    charts.extend(usage_charts(usage.into_series()));
    Ok(RunResult {
        scenario: args.scenario.name().to_string(),
        quick: args.quick,
        parameters: s.json(),
        figures,
        table,
        charts,
        violations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_identity_lands_on_two_scale_sets_and_every_node_gets_pods() {
        let s = Size {
            pods: 1000,
            identities: 20,
            scale_sets: 4,
            nodes_per_scale_set: 25,
            arm_latency: Duration::from_millis(500),
            time_limit: Duration::from_secs(60),
        };
        let by_scale_set: Vec<Vec<String>> = (0..4)
            .map(|ss| (0..25).map(|n| format!("ss{ss}-n{n}")).collect())
            .collect();
        let mut ids_on: BTreeMap<String, std::collections::BTreeSet<u32>> = BTreeMap::new();
        let mut nodes = std::collections::BTreeSet::new();
        for p in 0..s.pods {
            let node = node_of(p, &s, &by_scale_set);
            let ss = node.split('-').next().unwrap().to_string();
            ids_on.entry(ss).or_default().insert(p % s.identities);
            nodes.insert(node);
        }
        assert_eq!(nodes.len(), 100);
        // 20 identities × 2 scale sets over 4 scale sets: 10 each.
        assert!(ids_on.values().all(|ids| ids.len() == 10), "{ids_on:?}");
    }
}
