//! The `chaos` scenario: a steady workload while faults strike on a schedule, with the
//! invariants users rely on checked all along.
//!
//! The workload: Deployments scaled up and down, CronJobs whose Jobs come and go, every
//! running pod asking its node's NMI for a token again and again, and pods of an unbound
//! Deployment (a selector no binding matches) asking too. The faults: the simulators' strikes
//! ([`crate::weather::Strike`]) and three of processes: `kill -9` of the leading MIC process
//! while a standby runs (the killed one comes back as a standby, as the kubelet restarts it),
//! an NMI restarted (SIGTERM, a new process on the same port) while its pods' requests are in
//! flight, and a node deleted (its NMI killed, its pods deleted as the pod garbage collector
//! would, the Deployments' pods recreated elsewhere).
//!
//! Invariants, checked at every sample (250 ms) and over every answer: no token to an unbound
//! pod; no identity removed from a scale set while a running pod there has it Assigned; once
//! the faults stop, every running bound pod Assigned within a stated time, and no identity on
//! a scale set without a pod for longer than the grace period plus a margin; every token
//! request answered 200 or with a documented error ([`super::chaos_check::DOCUMENTED`]); never
//! two MIC processes saying `Active` (leading) at once. The report gives each fault with the
//! recovery after it, the ARM writes during it, and the timeline with the faults marked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::chaos_check;
use super::figures;
use super::prom::Prometheus;
use super::report::RunResult;
use super::{Error, LoadtestArgs};
use crate::args::{FaultProfile, SandboxArgs};
use crate::processes::{Component, MicLaunch, MicReady, Usage};
use crate::system::Sandbox;
use crate::weather::Strike;
use aad_pod_identity::crd::{AzureAssignedIdentity, POD_LABEL};
use aad_pod_identity_sim::topology::{Host, Topology};

#[path = "chaos_report.rs"]
mod reporting;

use reporting::{Measured, prom_figures, report};

/// The label of the unbound probe pods: no binding selects it.
const UNBOUND: &str = "no-binding-selects-this";
const RESOURCE: &str = "https://management.azure.com/";

/// One fault of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    /// A simulator strike.
    Strike(Strike),
    /// SIGKILL of the MIC process that leads.
    KillLeadingMic,
    /// SIGTERM of one NMI process and a new one on the same port.
    RestartNmi,
    /// A node deleted: its NMI killed, its pods deleted.
    DeleteNode,
}

impl Fault {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Strike(s) => s.label(),
            Self::KillLeadingMic => "mic_leader_kill_9",
            Self::RestartNmi => "nmi_restart",
            Self::DeleteNode => "node_delete",
        }
    }
}

/// The sizes and times of one run.
#[derive(Clone, Debug)]
struct Plan {
    scale_sets: u32,
    nodes_per_scale_set: u32,
    identities: u32,
    deployments: u32,
    max_replicas: u32,
    cronjobs: u32,
    unbound_replicas: u32,
    arm_latency: Duration,
    assignment_wait: Duration,
    grace: Duration,
    lease: Duration,
    warmup_limit: Duration,
    fault_period: Duration,
    faults: Vec<Fault>,
    /// ARM requests a throttle storm answers 429 (`Retry-After: 3` each). MIC honours each
    /// window before its next request, so a storm of ten holds ARM for 30 s: longer than the
    /// quick run's whole fault window, which would leave the ARM write faults nothing to hit.
    storm_requests: u32,
    /// Every running bound pod must be Assigned this long after the faults stop (or after it
    /// started running, if later).
    assign_within: Duration,
    /// Added to the grace period before an unneeded identity counts as left behind.
    leak_margin: Duration,
    job_run_time: Duration,
    cron_speedup: u32,
    scale_period: Duration,
    token_interval: Duration,
}

/// The schedule: every kind once in `--quick` (less the ARM hang, which holds a scale set's
/// writer for MIC's 60 s ARM timeout, longer than the quick run), every kind twice otherwise.
fn schedule(quick: bool) -> Vec<Fault> {
    // The long ones (a hung PATCH held for MIC's ARM timeout, a throttle storm's Retry-After
    // waits, ten seconds of slow writes, an API restart that may cost the leader its lease)
    // early, so that they are over well before the faults stop.
    let one = [
        Fault::KillLeadingMic,
        Fault::Strike(Strike::ArmHang),
        Fault::Strike(Strike::ThrottleStorm),
        Fault::Strike(Strike::SlowWrites),
        Fault::Strike(Strike::ApiRestart),
        Fault::Strike(Strike::PatchAnswerLost),
        Fault::Strike(Strike::WatchDrop),
        Fault::Strike(Strike::ArmErrorBurst),
        Fault::RestartNmi,
        Fault::Strike(Strike::WatchExpiry),
        Fault::Strike(Strike::WriteRefusals),
        Fault::DeleteNode,
    ];
    if quick {
        // The quick run has 2.5 s between faults and an 8 s lease: a leader kill, the API
        // restart or the slow writes each leave MIC without a leader for 8 s or more, so the
        // ARM faults go first, while the first leader writes (Deployments and CronJobs move
        // identities every few seconds), or they would strike no PATCH. The kill and the two
        // that may cost the lease come last; recovery after them is within the 20 s allowed.
        vec![
            Fault::Strike(Strike::PatchAnswerLost),
            Fault::Strike(Strike::ArmErrorBurst),
            Fault::Strike(Strike::ThrottleStorm),
            Fault::Strike(Strike::WatchDrop),
            Fault::Strike(Strike::WatchExpiry),
            Fault::Strike(Strike::WriteRefusals),
            Fault::RestartNmi,
            Fault::KillLeadingMic,
            Fault::Strike(Strike::SlowWrites),
            Fault::Strike(Strike::ApiRestart),
            Fault::DeleteNode,
        ]
    } else {
        one.iter().chain(one.iter()).copied().collect()
    }
}

impl Plan {
    fn from(args: &LoadtestArgs) -> Self {
        let q = args.quick;
        let s = Duration::from_secs;
        // Deployments share the first identities; each CronJob has one of its own, so that its
        // identity leaves a scale set after each Job (once the grace period is over) and
        // comes back with the next: ARM writes all along for the ARM faults to hit.
        let (ss, nodes, ids) = if q { (2, 6, 6) } else { (4, 20, 14) };
        let scale_sets = args.scale_sets.unwrap_or(ss).max(1);
        let nodes = args.nodes.unwrap_or(nodes).max(scale_sets * 2);
        Self {
            scale_sets,
            nodes_per_scale_set: nodes.div_ceil(scale_sets),
            identities: args.identities.unwrap_or(ids).max(1),
            deployments: if q { 4 } else { 12 },
            max_replicas: if q { 3 } else { 5 },
            cronjobs: if q { 2 } else { 4 },
            unbound_replicas: 2,
            arm_latency: s(50) / args.clock_factor.max(1),
            assignment_wait: s(10),
            grace: s(if q { 3 } else { 10 }),
            // Quick: shorter than the original's 15 s so a takeover fits the run, long enough
            // (renew deadline 5.3 s) to ride out the API's 3 s restart most of the time.
            lease: s(if q { 8 } else { 15 }),
            warmup_limit: s(if q { 20 } else { 60 }),
            fault_period: Duration::from_millis(if q { 2500 } else { 8000 }),
            faults: schedule(q),
            storm_requests: if q { 3 } else { crate::weather::STORM_REQUESTS },
            assign_within: s(if q { 20 } else { 60 }),
            leak_margin: s(if q { 8 } else { 30 }),
            job_run_time: s(2),
            // A Job every 10 s (quick) or 20 s: much longer than a Job pod plus the grace period.
            cron_speedup: if q { 6 } else { 3 },
            scale_period: s(if q { 3 } else { 5 }),
            token_interval: s(1),
        }
    }

    fn json(&self) -> Value {
        json!({
            "scale_sets": self.scale_sets,
            "nodes": self.scale_sets * self.nodes_per_scale_set,
            "identities": self.identities,
            "deployments": self.deployments,
            "deployment_replicas": format!("1..={}", self.max_replicas),
            "cronjobs": self.cronjobs,
            "job_pod_run_time_s": self.job_run_time.as_secs(),
            "cron_speedup": self.cron_speedup,
            "arm_429_storm_requests": self.storm_requests,
            "unbound_probe_pods": self.unbound_replicas,
            "arm_latency_ms": self.arm_latency.as_millis() as u64,
            "nmi_assignment_wait_s": self.assignment_wait.as_secs(),
            "unassign_grace_period_s": self.grace.as_secs(),
            "mic_processes": 2,
            "leader_election_duration_s": self.lease.as_secs(),
            "fault_period_s": self.fault_period.as_secs_f64(),
            "faults_scheduled": self.faults.iter().map(|f| f.label()).collect::<Vec<_>>(),
            "assigned_within_s_after_faults_stop": self.assign_within.as_secs(),
            "leak_allowance_s": (self.grace + self.leak_margin).as_secs(),
            "token_request_interval_per_pod_s": self.token_interval.as_secs(),
            "deployment_scale_period_s": self.scale_period.as_secs(),
        })
    }

    fn scenario_yaml(&self) -> String {
        let mut y = String::new();
        for k in 0..self.identities {
            y.push_str(&format!(
                "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentity\nmetadata: {{name: id-{k}}}\n\
                 spec: {{type: 0, resourceID: \"${{IDENTITY_{k}_RESOURCE_ID}}\", clientID: \"${{IDENTITY_{k}_CLIENT_ID}}\"}}\n---\n\
                 apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentityBinding\nmetadata: {{name: binding-{k}}}\n\
                 spec: {{azureIdentity: id-{k}, selector: sel-{k}}}\n---\n"
            ));
        }
        let deployment = |name: &str, sel: &str, replicas: u32| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n\
                 \x20 selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}, aadpodidbinding: {sel}}}}}\n\
                 \x20   spec: {{containers: [{{name: app, image: app}}]}}\n---\n"
            )
        };
        let shared = self.identities.saturating_sub(self.cronjobs).max(1);
        for d in 0..self.deployments {
            let sel = format!("sel-{}", d % shared);
            y.push_str(&deployment(&format!("app-{d}"), &sel, 2));
        }
        y.push_str(&deployment("unbound", UNBOUND, self.unbound_replicas));
        for c in 0..self.cronjobs {
            let k = self.identities - 1 - (c % self.identities);
            y.push_str(&format!(
                "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: cron-{c}}}\nspec:\n  schedule: \"* * * * *\"\n\
                 \x20 jobTemplate:\n    spec:\n      template:\n        metadata: {{labels: {{aadpodidbinding: sel-{k}}}}}\n\
                 \x20       spec:\n          restartPolicy: OnFailure\n          containers: [{{name: job, image: busybox}}]\n---\n"
            ));
        }
        y
    }
}

/// What the driver knows of one pod (times in seconds since the run's start).
#[derive(Clone, Debug, Default)]
struct PodRec {
    /// `None`: an unbound probe.
    identity: Option<usize>,
    node: Option<String>,
    ip: Option<IpAddr>,
    running: Option<f64>,
    finished: Option<f64>,
    /// Assignment changes seen on the AzureAssignedIdentity watch.
    assigned: Vec<(f64, bool)>,
    in_flight: bool,
    last_sent: f64,
    /// Violations already reported for it (one of each kind per pod).
    late_reported: bool,
    removal_reported: bool,
}

impl PodRec {
    fn alive(&self) -> bool {
        self.finished.is_none()
    }
    fn assigned_now(&self) -> bool {
        self.assigned.last().is_some_and(|x| x.1)
    }
}

/// One token request.
#[derive(Clone, Debug)]
struct Req {
    pod: String,
    node: String,
    bound: bool,
    sent: f64,
    answered: Option<f64>,
    status: u16,
    body: Option<String>,
    /// The node's NMI generation when sent (a restart or deletion changes it).
    epoch: u64,
}

#[derive(Clone, Debug, Default)]
struct NodeRec {
    /// Its NMI serves (false while it restarts and once the node is gone).
    up: bool,
    gone: bool,
    epoch: u64,
    vmss: String,
}

/// A fault as it happened.
#[derive(Clone, Debug)]
struct FaultRec {
    fault: Fault,
    start: f64,
    end: Option<f64>,
    /// What it hit (node, MIC replica), when it hit one.
    target: String,
    note: String,
}

/// One sample of the timeline.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    t: f64,
    running: usize,
    assigned: usize,
    tokens_ok: usize,
    token_errors: usize,
    leaders: usize,
    identities_on_scale_sets: usize,
    patches: u64,
}

#[derive(Default)]
struct St {
    pods: BTreeMap<String, PodRec>,
    reqs: Vec<Req>,
    nodes: BTreeMap<String, NodeRec>,
    mic_probes: Vec<(String, SocketAddr)>,
    violations: Vec<String>,
    /// Violations of a kind beyond the first few are only counted.
    violation_counts: BTreeMap<&'static str, usize>,
    samples: Vec<Sample>,
    faults: Vec<FaultRec>,
    calm_from: Option<f64>,
    /// When each (scale set, identity) last had a live pod needing it.
    last_needed: HashMap<(String, usize), f64>,
    leaked: BTreeSet<(String, usize)>,
    max_leaders: usize,
    /// The identities on each scale set at the last sample, and every change seen:
    /// (time, scale set, identities added, identities removed).
    on_last: BTreeMap<String, BTreeSet<usize>>,
    on_changes: Vec<(f64, String, Vec<usize>, Vec<usize>)>,
    /// MIC processes that exited by themselves (lost their lease) and were started again.
    mic_exits: Vec<(f64, String)>,
    not_sent_nmi_down: usize,
    scale_errors: usize,
}

impl St {
    fn violate(&mut self, kind: &'static str, text: String) {
        let n = self.violation_counts.entry(kind).or_default();
        *n += 1;
        if *n <= 5 {
            self.violations.push(text);
        }
    }
}

struct Ctx {
    t0: Instant,
    st: Mutex<St>,
    plan: Plan,
    client_ids: Vec<String>,
    /// Lower-cased resource id → identity index.
    index_of: HashMap<String, usize>,
    nmi: Mutex<BTreeMap<String, SocketAddr>>,
}

impl Ctx {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, St> {
        self.st
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn selector_identity(label: &str) -> Option<Option<usize>> {
    if label == UNBOUND {
        return Some(None);
    }
    label
        .strip_prefix("sel-")
        .and_then(|s| s.parse().ok())
        .map(Some)
}

fn pod_seen(ctx: &Ctx, st: &mut St, p: &Pod, deleted: bool) {
    let Some(name) = p.metadata.name.clone() else {
        return;
    };
    let label = p
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_LABEL))
        .cloned()
        .unwrap_or_default();
    let Some(identity) = selector_identity(&label) else {
        return;
    };
    let now = ctx.now();
    let rec = st.pods.entry(name).or_default();
    rec.identity = identity;
    let status = p.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
    if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
        rec.node = Some(node);
    }
    if deleted || p.metadata.deletion_timestamp.is_some() || matches!(phase, "Succeeded" | "Failed")
    {
        rec.finished.get_or_insert(now);
    } else if phase == "Running"
        && let Some(ip) = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|s| s.parse().ok())
    {
        rec.ip = Some(ip);
        rec.running.get_or_insert(now);
    }
}

/// The driver's pod watch. After a relist (a dropped watch, an expired history, an API
/// restart) pods the list no longer has are finished: they were deleted while the watch was
/// away.
async fn watch_pods(ctx: Arc<Ctx>, client: kube::Client) {
    let api: Api<Pod> = Api::all(client);
    let mut s = watcher::watcher(api, watcher::Config::default().labels(POD_LABEL)).boxed();
    let mut listed: Option<BTreeSet<String>> = None;
    while let Some(ev) = s.next().await {
        let mut st = ctx.lock();
        match ev {
            Ok(watcher::Event::Apply(p)) => pod_seen(&ctx, &mut st, &p, false),
            Ok(watcher::Event::Delete(p)) => pod_seen(&ctx, &mut st, &p, true),
            Ok(watcher::Event::Init) => listed = Some(BTreeSet::new()),
            Ok(watcher::Event::InitApply(p)) => {
                if let (Some(l), Some(n)) = (listed.as_mut(), p.metadata.name.clone()) {
                    l.insert(n);
                }
                pod_seen(&ctx, &mut st, &p, false);
            }
            Ok(watcher::Event::InitDone) => {
                let now = ctx.now();
                if let Some(l) = listed.take() {
                    for (n, rec) in st.pods.iter_mut() {
                        if !l.contains(n) {
                            rec.finished.get_or_insert(now);
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "chaos pod watch"),
        }
    }
}

fn assignment_seen(ctx: &Ctx, st: &mut St, a: &AzureAssignedIdentity, deleted: bool) {
    let now = ctx.now();
    let assigned = !deleted && a.is_assigned();
    let rec = st.pods.entry(a.spec.pod.clone()).or_default();
    if rec.assigned.last().map(|x| x.1) != Some(assigned) {
        rec.assigned.push((now, assigned));
    }
}

async fn watch_assignments(ctx: Arc<Ctx>, client: kube::Client) {
    let api: Api<AzureAssignedIdentity> = Api::all(client);
    let mut s = watcher::watcher(api, watcher::Config::default()).boxed();
    let mut listed: Option<BTreeSet<String>> = None;
    while let Some(ev) = s.next().await {
        let mut st = ctx.lock();
        match ev {
            Ok(watcher::Event::Apply(a)) => assignment_seen(&ctx, &mut st, &a, false),
            Ok(watcher::Event::Delete(a)) => assignment_seen(&ctx, &mut st, &a, true),
            Ok(watcher::Event::Init) => listed = Some(BTreeSet::new()),
            Ok(watcher::Event::InitApply(a)) => {
                if let Some(l) = listed.as_mut() {
                    l.insert(a.spec.pod.clone());
                }
                assignment_seen(&ctx, &mut st, &a, false);
            }
            Ok(watcher::Event::InitDone) => {
                let now = ctx.now();
                if let Some(l) = listed.take() {
                    for (n, rec) in st.pods.iter_mut() {
                        if !l.contains(n) && rec.assigned_now() {
                            rec.assigned.push((now, false));
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "chaos assignment watch"),
        }
    }
}

/// Every running pod asks again once its last answer is `token_interval` old; at most one
/// request per pod in flight. Pods whose NMI is down (restarting) or whose node is gone wait.
async fn ask_for_tokens(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let timeout = ctx.plan.assignment_wait + Duration::from_secs(15);
    let interval = ctx.plan.token_interval.as_secs_f64();
    loop {
        tick.tick().await;
        let now = ctx.now();
        let nmi = ctx.nmi.lock().map(|m| m.clone()).unwrap_or_default();
        let mut send = Vec::new();
        {
            let mut st = ctx.lock();
            let St {
                pods, nodes, reqs, ..
            } = &mut *st;
            let mut down = 0;
            for (name, p) in pods.iter_mut() {
                let (Some(ip), Some(node), Some(_), None) = (p.ip, &p.node, p.running, p.finished)
                else {
                    continue;
                };
                if p.in_flight || now - p.last_sent < interval {
                    continue;
                }
                let n = nodes.get(node).cloned().unwrap_or_default();
                let Some(addr) = nmi.get(node).copied().filter(|_| n.up && !n.gone) else {
                    down += 1;
                    p.last_sent = now;
                    continue;
                };
                p.in_flight = true;
                p.last_sent = now;
                reqs.push(Req {
                    pod: name.clone(),
                    node: node.clone(),
                    bound: p.identity.is_some(),
                    sent: now,
                    answered: None,
                    status: 0,
                    body: None,
                    epoch: n.epoch,
                });
                // Unbound probes ask for the first identity, which they are not bound to.
                let cid =
                    ctx.client_ids[p.identity.unwrap_or(0).min(ctx.client_ids.len() - 1)].clone();
                send.push((reqs.len() - 1, name.clone(), ip, addr, cid));
            }
            st.not_sent_nmi_down += down;
        }
        for (i, name, ip, addr, cid) in send {
            let ctx = Arc::clone(&ctx);
            tokio::spawn(async move {
                let (status, body) = super::tokens::token(ip, addr, &cid, RESOURCE, timeout).await;
                let at = ctx.now();
                let mut st = ctx.lock();
                if let Some(r) = st.reqs.get_mut(i) {
                    r.answered = Some(at);
                    r.status = status;
                    r.body = body;
                }
                if let Some(p) = st.pods.get_mut(&name) {
                    p.in_flight = false;
                }
            });
        }
    }
}

/// Scales the Deployments up and down in turn, one every `scale_period`.
async fn scale_deployments(ctx: Arc<Ctx>, client: kube::Client) {
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let mut tick = tokio::time::interval(ctx.plan.scale_period);
    tick.tick().await;
    for step in 0_u32.. {
        tick.tick().await;
        let d = step % ctx.plan.deployments;
        let replicas = 1 + (step / ctx.plan.deployments + d) % ctx.plan.max_replicas;
        let patch = json!({"spec": {"replicas": replicas}});
        if api
            .patch(
                &format!("app-{d}"),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .is_err()
        {
            ctx.lock().scale_errors += 1;
        }
    }
}

/// `/healthz` of every MIC process, at once: the names of those that say `Active`.
async fn leaders(http: &reqwest::Client, probes: &[(String, SocketAddr)]) -> Vec<String> {
    let asks = probes.iter().map(|(name, probe)| async move {
        let r = http
            .get(format!("http://{probe}/healthz"))
            .send()
            .await
            .ok()?;
        let t = r.text().await.ok()?;
        (t.trim() == "Active").then(|| name.clone())
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The 250 ms sampler: leaders, the scale sets' identities against the pods, the deadlines
/// once the faults have stopped, and one point of the timeline.
async fn sample_loop(
    ctx: Arc<Ctx>,
    sandbox_azure: Arc<aad_pod_identity_sim::azure::AzureSimHandle>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .expect("an HTTP client");
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let allowance = (ctx.plan.grace + ctx.plan.leak_margin).as_secs_f64();
    let within = ctx.plan.assign_within.as_secs_f64();
    loop {
        tick.tick().await;
        let probes = ctx.lock().mic_probes.clone();
        let active = leaders(&http, &probes).await;
        let now = ctx.now();
        let vmss: BTreeSet<String> = ctx.lock().nodes.values().map(|n| n.vmss.clone()).collect();
        // Identities on each scale set, as the Azure simulator holds them.
        let on: BTreeMap<String, BTreeSet<usize>> = vmss
            .into_iter()
            .map(|v| {
                let ids = sandbox_azure
                    .assigned_identities(&v)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| ctx.index_of.get(&r.to_ascii_lowercase()).copied())
                    .collect();
                (v, ids)
            })
            .collect();
        let patches = sandbox_azure.counters().total_patches();
        let mut st = ctx.lock();
        if active.len() > 1 {
            st.violate(
                "two_leaders",
                format!(
                    "at {now:.2}s {} MIC processes said Active at once: {}",
                    active.len(),
                    active.join(", ")
                ),
            );
        }
        st.max_leaders = st.max_leaders.max(active.len());
        for (vmss, ids) in &on {
            let before = st.on_last.get(vmss).cloned().unwrap_or_default();
            if *ids != before {
                let added = ids.difference(&before).copied().collect();
                let removed = before.difference(ids).copied().collect();
                st.on_changes.push((now, vmss.clone(), added, removed));
            }
        }
        st.on_last.clone_from(&on);
        let mut s = check_sample(&mut st, &on, now, within, allowance);
        s.leaders = active.len();
        s.patches = patches;
        st.samples.push(s);
    }
}

/// One sample's judgements, from the driver's log `st` and the identities `on` each scale set
/// (by the Azure simulator): an identity missing under a running pod that has it Assigned;
/// once the faults have stopped, a running pod not Assigned `within` seconds, and an identity
/// no live pod has needed for `allowance` seconds. Violations go into `st`; the counts into the
/// returned sample.
fn check_sample(
    st: &mut St,
    on: &BTreeMap<String, BTreeSet<usize>>,
    now: f64,
    within: f64,
    allowance: f64,
) -> Sample {
    let calm = st.calm_from;
    let mut s = Sample {
        t: now,
        identities_on_scale_sets: on.values().map(BTreeSet::len).sum(),
        ..Sample::default()
    };
    let mut found = Vec::new();
    let mut needed = Vec::new();
    for (name, p) in &st.pods {
        let (Some(id), true) = (p.identity, p.alive()) else {
            continue;
        };
        let Some(vmss) = p
            .node
            .as_ref()
            .and_then(|n| st.nodes.get(n))
            .map(|n| &n.vmss)
        else {
            continue;
        };
        needed.push((vmss.clone(), id));
        if p.running.is_none() {
            continue;
        }
        s.running += 1;
        if p.assigned_now() {
            s.assigned += 1;
            // Never removed while a running pod has it Assigned.
            if !p.removal_reported && !on.get(vmss).is_some_and(|ids| ids.contains(&id)) {
                found.push((
                    "identity_removed_while_needed",
                    name.clone(),
                    format!(
                        "at {now:.2}s pod {name} runs with id-{id} Assigned, but scale set {vmss} does not carry it"
                    ),
                ));
            }
        } else if let (Some(c), Some(r), false) = (calm, p.running, p.late_reported) {
            // Every running bound pod Assigned within the stated time after the faults.
            if now > r.max(c) + within {
                found.push((
                    "not_assigned_in_time",
                    name.clone(),
                    format!(
                        "pod {name} (id-{id}, node {}) Running since {r:.1}s is not Assigned {within:.0}s after the faults stopped (at {now:.1}s)",
                        p.node.as_deref().unwrap_or("?")
                    ),
                ));
            }
        }
    }
    for (kind, pod, text) in found {
        if let Some(p) = st.pods.get_mut(&pod) {
            match kind {
                "identity_removed_while_needed" => p.removal_reported = true,
                _ => p.late_reported = true,
            }
        }
        st.violate(kind, text);
    }
    for key in needed {
        st.last_needed.insert(key, now);
    }
    // No identity left on a scale set without a pod, once the faults have stopped.
    if let Some(c) = calm {
        for (vmss, ids) in on {
            for id in ids {
                let key = (vmss.clone(), *id);
                let deadline =
                    chaos_check::leak_deadline(st.last_needed.get(&key).copied(), c, allowance);
                if now > deadline && !st.leaked.contains(&key) {
                    st.leaked.insert(key);
                    st.violate(
                        "identity_left_without_pod",
                        format!(
                            "at {now:.1}s id-{id} is still on {vmss}, with no pod needing it for more than {allowance:.0}s (grace period + margin) after the faults stopped"
                        ),
                    );
                }
            }
        }
    }
    s.tokens_ok = st.reqs.iter().filter(|r| r.status == 200).count();
    s.token_errors = st
        .reqs
        .iter()
        .filter(|r| r.answered.is_some() && r.status != 200)
        .count();
    s
}

/// MIC's processes: the sandbox's and a standby, each restarted as a standby after its kill.
struct Mics {
    bin: PathBuf,
    dir: PathBuf,
    kubeconfig: PathBuf,
    cloudconfig: PathBuf,
    flags: Vec<String>,
    procs: Vec<(String, Component)>,
    /// Usage of processes that have been killed.
    gone: Vec<(String, Usage)>,
    starts: usize,
}

impl Mics {
    fn launch(&self) -> MicLaunch<'_> {
        MicLaunch {
            bin: &self.bin,
            dir: &self.dir,
            kubeconfig: &self.kubeconfig,
            cloudconfig: &self.cloudconfig,
            extra: &self.flags,
        }
    }

    async fn start_standby(&mut self, instance: &str) -> Result<(), Error> {
        self.starts += 1;
        let c = crate::processes::start_mic_as(
            &self.launch(),
            instance,
            &format!("mic-{instance}"),
            MicReady::Serving,
        )
        .await
        .map_err(|e| Error::Load(format!("MIC standby {instance}: {e}")))?;
        self.procs.push((instance.to_string(), c));
        Ok(())
    }

    /// Starts again, as a standby, every MIC process that has exited (a replica that lost
    /// its lease exits so that the kubelet restarts it); returns the names restarted.
    async fn restart_exited(&mut self) -> Result<Vec<String>, Error> {
        let mut exited = Vec::new();
        let mut i = 0;
        while i < self.procs.len() {
            if self.procs[i].1.exited() {
                let (name, mut c) = self.procs.swap_remove(i);
                self.gone.push((format!("{name} (exited)"), c.usage()));
                exited.push(name);
            } else {
                i += 1;
            }
        }
        for name in &exited {
            self.start_standby(name).await?;
        }
        Ok(exited)
    }

    fn probes(&self) -> Vec<(String, SocketAddr)> {
        self.procs
            .iter()
            .map(|(n, c)| (n.clone(), c.probe))
            .collect()
    }

    fn usage(&mut self) -> Vec<(String, Usage)> {
        let mut all = self.gone.clone();
        all.extend(self.procs.iter_mut().map(|(n, c)| (n.clone(), c.usage())));
        all
    }
}

fn retarget(args: &LoadtestArgs, sandbox: &Sandbox, mics: &Mics) {
    if let Some(path) = &args.prometheus_targets {
        let m: Vec<SocketAddr> = mics.procs.iter().map(|(_, c)| c.metrics).collect();
        let n: Vec<SocketAddr> = sandbox.nmi_endpoints.values().map(|e| e.1).collect();
        if let Err(e) = super::prom::write_all_targets(path, &m, &n) {
            tracing::warn!(error = %e, "Prometheus targets");
        }
    }
}

/// Runs the chaos scenario.
///
/// # Errors
/// [`Error`] when the sandbox, a component or Prometheus cannot be used at all.
pub async fn run(args: &LoadtestArgs, dir: &Path) -> Result<RunResult, Error> {
    let plan = Plan::from(args);
    let scenario_path = dir.join("scenario.yaml");
    std::fs::write(&scenario_path, plan.scenario_yaml()).map_err(|source| Error::File {
        path: scenario_path.display().to_string(),
        source,
    })?;
    let sargs = SandboxArgs {
        kubeconfig_out: None,
        endpoints_out: None,
        scale_sets: plan.scale_sets,
        nodes_per_scale_set: plan.nodes_per_scale_set,
        vms: 0,
        identities: plan.identities,
        scenario: Some(scenario_path),
        crds: None,
        arm_latency: plan.arm_latency,
        faults: FaultProfile::None,
        job_run_time: plan.job_run_time,
        cron_speedup: plan.cron_speedup,
        unassign_grace_period: plan.grace,
        nmi_assignment_wait: Some(plan.assignment_wait),
        nmi_port: args.nmi_port,
        add_node: Vec::new(),
        nmi_start_delay: Duration::ZERO,
        node_gate: false,
        federated: false,
        components: super::components_as_deployed(),
    };
    if args.in_process {
        return Err(Error::Load(
            "chaos kills and restarts MIC and NMI processes: it cannot run --in-process".into(),
        ));
    }
    let lease_flag = format!("--leader-election-duration={}s", plan.lease.as_secs());
    let placement = super::components(args, dir, std::slice::from_ref(&lease_flag))?;
    let crate::system::Placement::Processes { bin, dir: cdir, .. } = placement.clone() else {
        return Err(Error::Load("chaos needs component processes".into()));
    };
    let started = Instant::now();
    let self0 = Usage::of(None);
    let mut sandbox = Sandbox::start_with(&sargs, placement).await?;
    let startup_s = started.elapsed().as_secs_f64();
    let first = sandbox
        .take_mic_process()
        .ok_or_else(|| Error::Load("the sandbox started no MIC process".into()))?;
    let mut mics = Mics {
        bin,
        cloudconfig: sandbox.component_cloudconfig(),
        dir: cdir,
        kubeconfig: sandbox.component_kubeconfig(),
        flags: vec![
            format!(
                "--leader-election-namespace={}",
                crate::components::NAMESPACE
            ),
            format!("--unassign-grace-period={}ms", plan.grace.as_millis()),
            lease_flag,
        ],
        procs: vec![("sandbox-mic".into(), first)],
        gone: Vec::new(),
        starts: 1,
    };
    let result = match mics.start_standby("sandbox-mic-standby").await {
        Ok(()) => drive(args, dir, &plan, &mut sandbox, &mut mics, startup_s, self0).await,
        Err(e) => Err(e),
    };
    for (_, c) in mics.procs.drain(..) {
        c.stop().await;
    }
    sandbox.stop().await;
    result
}

async fn drive(
    args: &LoadtestArgs,
    dir: &Path,
    plan: &Plan,
    sandbox: &mut Sandbox,
    mics: &mut Mics,
    startup_s: f64,
    self0: Usage,
) -> Result<RunResult, Error> {
    let client = sandbox
        .kube
        .client()
        .await
        .map_err(|e| Error::Load(e.to_string()))?;
    let mut identities = sandbox.azure.identities();
    identities.sort_by(|a, b| a.name.cmp(&b.name));
    let topology = Topology::sized(
        plan.scale_sets,
        plan.nodes_per_scale_set,
        0,
        plan.identities,
    );
    let nodes: BTreeMap<String, NodeRec> = topology
        .nodes()
        .into_iter()
        .filter_map(|n| match n.host {
            Host::ScaleSet { name, .. } => Some((
                n.name,
                NodeRec {
                    up: true,
                    vmss: name,
                    ..NodeRec::default()
                },
            )),
            Host::Vm { .. } => None,
        })
        .collect();
    let ctx = Arc::new(Ctx {
        t0: Instant::now(),
        st: Mutex::new(St {
            nodes,
            mic_probes: mics.probes(),
            ..St::default()
        }),
        plan: plan.clone(),
        client_ids: identities.iter().map(|i| i.client_id.clone()).collect(),
        index_of: identities
            .iter()
            .enumerate()
            .map(|(k, i)| (i.resource_id.to_ascii_lowercase(), k))
            .collect(),
        nmi: Mutex::new(sandbox.nmi.clone()),
    });
    let wall0 = figures::unix_now();
    retarget(args, sandbox, mics);
    let prometheus = match &args.prometheus {
        Some(url) => {
            let pr = Prometheus::new(url)?;
            let want = mics.procs.len() + sandbox.nmi_endpoints.len();
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
    let asking = tokio::spawn(ask_for_tokens(Arc::clone(&ctx)));
    let tasks = vec![
        tokio::spawn(watch_pods(Arc::clone(&ctx), client.clone())),
        tokio::spawn(watch_assignments(Arc::clone(&ctx), client.clone())),
        tokio::spawn(scale_deployments(Arc::clone(&ctx), client.clone())),
        tokio::spawn(sample_loop(Arc::clone(&ctx), Arc::clone(&sandbox.azure))),
    ];
    let azure0 = sandbox.azure.counters();
    let mut usage = figures::UsageSeries::default();

    // Warm-up: until every running bound pod is Assigned (bounded).
    let warm_deadline = Instant::now() + plan.warmup_limit;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let st = ctx.lock();
        let bound: Vec<&PodRec> = st
            .pods
            .values()
            .filter(|p| p.identity.is_some() && p.alive() && p.running.is_some())
            .collect();
        if (bound.len() >= plan.deployments as usize && bound.iter().all(|p| p.assigned_now()))
            || Instant::now() >= warm_deadline
        {
            break;
        }
    }
    let warm_s = ctx.now();
    println!("[chaos] warm at {warm_s:.1}s; faults start");

    // The faults, one every period; strikes run on while the schedule goes on.
    let kube_faults = sandbox.kube.fault_handle();
    let mut strikes = Vec::new();
    let mut next = Instant::now();
    for (i, fault) in plan.faults.iter().copied().enumerate() {
        tend(&ctx, args, sandbox, mics, &mut usage, next).await?;
        next = Instant::now() + plan.fault_period;
        let start = ctx.now();
        let idx = {
            let mut st = ctx.lock();
            st.faults.push(FaultRec {
                fault,
                start,
                end: None,
                target: String::new(),
                note: String::new(),
            });
            st.faults.len() - 1
        };
        println!(
            "[chaos] {start:.1}s fault {}/{}: {}",
            i + 1,
            plan.faults.len(),
            fault.label()
        );
        let (end, target, note) = match fault {
            Fault::Strike(s) => {
                let (azure, kube, ctx) = (
                    Arc::clone(&sandbox.azure),
                    kube_faults.clone(),
                    Arc::clone(&ctx),
                );
                let storm_requests = plan.storm_requests;
                strikes.push(tokio::spawn(async move {
                    crate::weather::strike_sized(s, storm_requests, &azure, &kube).await;
                    let end = ctx.now();
                    ctx.lock().faults[idx].end = Some(end);
                }));
                continue;
            }
            Fault::KillLeadingMic => kill_leader(&ctx, mics).await?,
            Fault::RestartNmi => restart_nmi(&ctx, sandbox).await?,
            Fault::DeleteNode => delete_node(&ctx, sandbox, &client).await?,
        };
        {
            let mut st = ctx.lock();
            let f = &mut st.faults[idx];
            f.end = Some(end);
            f.target = target;
            f.note = note;
            st.mic_probes = mics.probes();
        }
        retarget(args, sandbox, mics);
        *ctx.nmi
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = sandbox.nmi.clone();
    }
    for s in strikes {
        while !s.is_finished() {
            let soon = Instant::now() + Duration::from_millis(250);
            tend(&ctx, args, sandbox, mics, &mut usage, soon).await?;
        }
    }
    let calm_from = ctx.now();
    ctx.lock().calm_from = Some(calm_from);
    println!("[chaos] {calm_from:.1}s faults stopped; checking recovery");
    let calm_for = plan.assign_within.max(plan.grace + plan.leak_margin) + Duration::from_secs(3);
    // Pods stop asking one assignment wait before the end, so that every answer (an unbound
    // probe's 404 comes after the whole wait) is in before the report.
    let calm_end = Instant::now() + calm_for;
    let quiet = plan.assignment_wait + Duration::from_secs(1);
    tend(
        &ctx,
        args,
        sandbox,
        mics,
        &mut usage,
        calm_end - quiet.min(calm_for),
    )
    .await?;
    asking.abort();
    tend(&ctx, args, sandbox, mics, &mut usage, calm_end).await?;
    let end_s = ctx.now();
    for t in tasks {
        t.abort();
    }
    // Answers still outstanding get the time to arrive that their timeout gives them.
    let drain_until = Instant::now() + plan.assignment_wait + Duration::from_secs(16);
    while Instant::now() < drain_until && ctx.lock().reqs.iter().any(|r| r.answered.is_none()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let azure = sandbox.azure.counters();
    let arm_log = sandbox.azure.request_log();
    // Every ARM request with its answer, for reading a violation against what MIC asked.
    let signed = |at: Instant| match at.checked_duration_since(ctx.t0) {
        Some(d) => d.as_secs_f64(),
        None => -ctx.t0.duration_since(at).as_secs_f64(),
    };
    let arm_json: Vec<Value> = arm_log
        .iter()
        .filter(|r| r.subscription.is_some())
        .map(|r| json!({"t_s": signed(r.at), "method": r.method, "path": r.path, "status": r.status}))
        .collect();
    let arm_path = dir.join("arm-requests.json");
    std::fs::write(
        &arm_path,
        serde_json::to_string_pretty(&arm_json).unwrap_or_default(),
    )
    .map_err(|source| Error::File {
        path: arm_path.display().to_string(),
        source,
    })?;
    let components = sandbox.usage();
    let mic_usage = mics.usage();
    let self1 = Usage::of(None);
    let prom = match &prometheus {
        Some(pr) => Some(prom_figures(pr, wall0).await),
        None => None,
    };
    let st = ctx.lock();
    let m = Measured {
        startup_s,
        warm_s,
        calm_from,
        end_s,
        patches: azure.total_patches() - azure0.total_patches(),
        gets: azure.gets.values().sum::<u64>() - azure0.gets.values().sum::<u64>(),
        throttled: azure.throttled - azure0.throttled,
        arm_patches: arm_log
            .iter()
            .filter(|r| r.method == "PATCH" && r.subscription.is_some() && r.at >= ctx.t0)
            .map(|r| {
                (
                    r.at.saturating_duration_since(ctx.t0).as_secs_f64(),
                    r.status,
                )
            })
            .collect(),
        mic_usage,
        components,
        self0,
        self1,
        mic_starts: mics.starts,
        prom,
    };
    Ok(report(args, plan, &st, &m, usage.into_series()))
}

/// Waits until `until`, doing the kubelet's part meanwhile: MIC processes that exited are
/// started again (as standbys); and samples every component's CPU and memory.
async fn tend(
    ctx: &Ctx,
    args: &LoadtestArgs,
    sandbox: &mut Sandbox,
    mics: &mut Mics,
    usage: &mut figures::UsageSeries,
    until: Instant,
) -> Result<(), Error> {
    loop {
        let restarted = mics.restart_exited().await?;
        if !restarted.is_empty() {
            let now = ctx.now();
            let mut st = ctx.lock();
            st.mic_probes = mics.probes();
            st.mic_exits.extend(restarted.into_iter().map(|n| (now, n)));
            drop(st);
            retarget(args, sandbox, mics);
        }
        let now = ctx.now();
        let mut cu = sandbox.usage();
        cu.mic = None;
        usage.push_all(now, &cu, &Usage::of(None));
        for (name, u) in mics.usage() {
            if !name.contains('(') {
                usage.push(now, &format!("MIC {name}"), &u);
            }
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        tokio::time::sleep(left.min(Duration::from_millis(250))).await;
    }
}

/// SIGKILL of the MIC process that leads; returns once another one leads (then the killed
/// replica comes back as a standby under its own name, as the kubelet restarts a container).
async fn kill_leader(ctx: &Ctx, mics: &mut Mics) -> Result<(f64, String, String), Error> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .map_err(|e| Error::Load(e.to_string()))?;
    let limit = Instant::now() + ctx.plan.lease * 3 + Duration::from_secs(10);
    let leader = loop {
        if let Some(l) = leaders(&http, &mics.probes()).await.into_iter().next() {
            break l;
        }
        if Instant::now() > limit {
            return Ok((
                ctx.now(),
                String::new(),
                "no MIC process led: nothing killed".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let i = mics
        .procs
        .iter()
        .position(|(n, _)| *n == leader)
        .expect("a leader is one of the processes");
    let (name, mut c) = mics.procs.swap_remove(i);
    let used = c.usage();
    let killed_at = ctx.now();
    c.stop().await;
    mics.gone
        .push((format!("{name} (killed at {killed_at:.1}s)"), used));
    ctx.lock().mic_probes = mics.probes();
    let limit = Instant::now() + ctx.plan.lease * 3 + Duration::from_secs(10);
    let (end, note) = loop {
        if let Some(l) = leaders(&http, &mics.probes()).await.into_iter().next() {
            let t = ctx.now();
            break (
                t,
                format!("{l} took over {:.2}s after the kill", t - killed_at),
            );
        }
        if Instant::now() > limit {
            let t = ctx.now();
            ctx.lock().violate(
                "no_takeover",
                format!(
                    "no standby took over within {:.0}s after {name} was killed",
                    t - killed_at
                ),
            );
            break (t, "no takeover".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    mics.start_standby(&name).await?;
    Ok((end, name, note))
}

/// Restarts the NMI of a node that has an unbound probe (whose requests wait the whole
/// assignment wait, so some are in flight), else of the first node with running pods.
/// How long after it is sent a token request is taken as accepted by its NMI (connected, read,
/// waiting), with room for a machine loaded by other work.
const ACCEPTED: f64 = 1.0;

async fn restart_nmi(ctx: &Ctx, sandbox: &mut Sandbox) -> Result<(f64, String, String), Error> {
    let node = {
        let st = ctx.lock();
        let up = |n: &String| st.nodes.get(n).is_some_and(|r| r.up && !r.gone);
        let with = |unbound: bool| {
            st.pods
                .values()
                .filter(|p| p.alive() && p.running.is_some() && p.identity.is_none() == unbound)
                .filter_map(|p| p.node.clone())
                .find(|n| up(n))
        };
        with(true).or_else(|| with(false))
    };
    let Some(node) = node else {
        return Ok((
            ctx.now(),
            String::new(),
            "no node with pods: nothing restarted".into(),
        ));
    };
    // SIGTERM while a probe's request is waiting with at least 4 s of its wait left (an
    // unbound probe waits the whole assignment wait for its 404), so that every restart has a
    // request in flight that cannot be answered before the process must stop. "Waiting" means
    // sent at least `ACCEPTED` ago: NMI has accepted it whatever the machine's load (a request
    // that SIGTERM catches still in the listen backlog is refused, as in any restart: that is
    // not the waiting request this strike is about).
    let left = ctx.plan.assignment_wait.as_secs_f64() - 4.0;
    let limit = Instant::now() + ctx.plan.assignment_wait + Duration::from_secs(5);
    while Instant::now() < limit {
        let now = ctx.now();
        let waiting = ctx.lock().reqs.iter().any(|r| {
            r.node == node
                && !r.bound
                && r.answered.is_none()
                && (ACCEPTED..=left).contains(&(now - r.sent))
        });
        if waiting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (in_flight, newest) = {
        let mut st = ctx.lock();
        let n = st.nodes.entry(node.clone()).or_default();
        n.up = false;
        n.epoch += 1;
        let out: Vec<f64> = st
            .reqs
            .iter()
            .filter(|r| r.node == node && r.answered.is_none())
            .map(|r| r.sent)
            .collect();
        (out.len(), out.into_iter().fold(f64::MIN, f64::max))
    };
    // No request goes to the node from now on; those sent just before are accepted by NMI
    // once they are `ACCEPTED` old (at least 200 ms from now, however loaded the machine).
    let settle = (newest + ACCEPTED - ctx.now()).clamp(0.2, ACCEPTED + 0.2);
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    sandbox
        .restart_nmi_process(&node, Duration::from_secs(10))
        .await?;
    let end = ctx.now();
    ctx.lock().nodes.entry(node.clone()).or_default().up = true;
    Ok((
        end,
        node,
        format!("{in_flight} token request(s) in flight at SIGTERM"),
    ))
}

/// Deletes a node that has bound pods and no unbound probe: its NMI dies with it, and its pods
/// are deleted as the pod garbage collector deletes the pods of a node that no longer exists.
async fn delete_node(
    ctx: &Ctx,
    sandbox: &mut Sandbox,
    client: &kube::Client,
) -> Result<(f64, String, String), Error> {
    let node = {
        let st = ctx.lock();
        let live = |n: &String| st.nodes.get(n).is_some_and(|r| !r.gone);
        let has = |n: &String, unbound: bool| {
            st.pods
                .values()
                .any(|p| p.alive() && p.node.as_ref() == Some(n) && p.identity.is_none() == unbound)
        };
        st.nodes
            .keys()
            .filter(|n| live(n))
            .find(|n| has(n, false) && !has(n, true))
            .or_else(|| st.nodes.keys().find(|n| live(n)))
            .cloned()
    };
    let Some(node) = node else {
        return Ok((ctx.now(), String::new(), "no node left to delete".into()));
    };
    {
        let mut st = ctx.lock();
        let n = st.nodes.entry(node.clone()).or_default();
        n.gone = true;
        n.up = false;
        n.epoch += 1;
    }
    sandbox.stop_nmi_process(&node, Duration::ZERO).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    // The API may be restarting: a few tries.
    let mut deleted = 0;
    for _ in 0..20 {
        let done = async {
            match nodes.delete(&node, &DeleteParams::default()).await {
                Err(e) if !is_not_found(&e) => return Err(e),
                _ => {}
            }
            let on = pods
                .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
                .await?;
            for p in on.items {
                let (Some(ns), Some(name)) = (p.metadata.namespace, p.metadata.name) else {
                    continue;
                };
                match Api::<Pod>::namespaced(client.clone(), &ns)
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await
                {
                    Err(e) if !is_not_found(&e) => return Err(e),
                    _ => deleted += 1,
                }
            }
            Ok::<_, kube::Error>(())
        }
        .await;
        if done.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok((ctx.now(), node, format!("{deleted} pod(s) deleted with it")))
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_schedule_strikes_every_kind_once_but_the_arm_hang_and_the_full_one_twice() {
        let quick = schedule(true);
        let kinds: BTreeSet<_> = quick.iter().map(|f| f.label()).collect();
        assert_eq!(kinds.len(), quick.len());
        assert!(kinds.len() >= 6 && !kinds.contains("arm_hang"));
        for k in ["mic_leader_kill_9", "nmi_restart", "node_delete"] {
            assert!(kinds.contains(k), "{k}");
        }
        let at = |k: &str| quick.iter().position(|f| f.label() == k).unwrap();
        for arm in ["patch_answer_lost", "arm_5xx_burst", "arm_429_storm"] {
            assert!(at(arm) < at("mic_leader_kill_9"), "{arm} before the kill");
        }
        let full = schedule(false);
        let kinds: BTreeSet<_> = full.iter().map(|f| f.label()).collect();
        assert_eq!(full.len(), 2 * kinds.len());
        assert!(kinds.contains("arm_hang"));
    }

    /// A log with one node on scale set `ss` and one pod of identity 1 on it.
    fn world(running: Option<f64>, assigned: &[(f64, bool)]) -> St {
        let mut st = St::default();
        st.nodes.insert(
            "n".into(),
            NodeRec {
                up: true,
                vmss: "ss".into(),
                ..NodeRec::default()
            },
        );
        st.pods.insert(
            "p".into(),
            PodRec {
                identity: Some(1),
                node: Some("n".into()),
                running,
                assigned: assigned.to_vec(),
                ..PodRec::default()
            },
        );
        st
    }

    fn on(ids: &[usize]) -> BTreeMap<String, BTreeSet<usize>> {
        BTreeMap::from([("ss".to_string(), ids.iter().copied().collect())])
    }

    #[test]
    fn an_identity_missing_under_a_running_assigned_pod_is_a_violation_once() {
        let mut st = world(Some(1.0), &[(2.0, true)]);
        let s = check_sample(&mut st, &on(&[1]), 3.0, 20.0, 11.0);
        assert_eq!((s.running, s.assigned), (1, 1));
        assert!(st.violations.is_empty());
        check_sample(&mut st, &on(&[0]), 3.5, 20.0, 11.0);
        check_sample(&mut st, &on(&[0]), 4.0, 20.0, 11.0);
        assert_eq!(st.violations.len(), 1, "{:?}", st.violations);
        assert!(
            st.violations[0]
                .contains("runs with id-1 Assigned, but scale set ss does not carry it"),
            "{:?}",
            st.violations
        );
        // Not yet Assigned: not the removal rule's business.
        let mut st = world(Some(1.0), &[]);
        check_sample(&mut st, &on(&[]), 3.0, 20.0, 11.0);
        assert!(st.violations.is_empty());
    }

    #[test]
    fn after_the_faults_a_running_pod_must_be_assigned_within_the_stated_time() {
        let mut st = world(Some(1.0), &[]);
        // During the faults: no deadline.
        check_sample(&mut st, &on(&[]), 100.0, 20.0, 11.0);
        assert!(st.violations.is_empty());
        st.calm_from = Some(100.0);
        check_sample(&mut st, &on(&[]), 119.0, 20.0, 11.0);
        assert!(st.violations.is_empty());
        check_sample(&mut st, &on(&[]), 121.0, 20.0, 11.0);
        assert_eq!(st.violation_counts.get("not_assigned_in_time"), Some(&1));
        // A pod that started after the faults has its own 20 s.
        let mut st = world(Some(110.0), &[]);
        st.calm_from = Some(100.0);
        check_sample(&mut st, &on(&[]), 125.0, 20.0, 11.0);
        assert!(st.violations.is_empty());
    }

    #[test]
    fn an_identity_nobody_needs_is_a_leak_only_after_the_allowance_past_the_faults() {
        let mut st = world(Some(1.0), &[(2.0, true)]);
        check_sample(&mut st, &on(&[1]), 50.0, 20.0, 11.0);
        // The pod ends; its identity stays on the scale set.
        st.pods.get_mut("p").unwrap().finished = Some(51.0);
        st.calm_from = Some(40.0);
        check_sample(&mut st, &on(&[1]), 60.0, 20.0, 11.0);
        assert!(st.violations.is_empty(), "{:?}", st.violations);
        check_sample(&mut st, &on(&[1]), 61.5, 20.0, 11.0);
        check_sample(&mut st, &on(&[1]), 62.0, 20.0, 11.0);
        assert_eq!(
            st.violation_counts.get("identity_left_without_pod"),
            Some(&1)
        );
        // Removed in time: nothing.
        let mut st = world(Some(1.0), &[(2.0, true)]);
        check_sample(&mut st, &on(&[1]), 50.0, 20.0, 11.0);
        st.pods.get_mut("p").unwrap().finished = Some(51.0);
        st.calm_from = Some(40.0);
        check_sample(&mut st, &on(&[]), 70.0, 20.0, 11.0);
        assert!(st.violations.is_empty());
    }

    #[test]
    fn pods_are_bound_by_their_selector_and_probes_by_the_unbound_one() {
        assert_eq!(selector_identity("sel-3"), Some(Some(3)));
        assert_eq!(selector_identity(UNBOUND), Some(None));
        assert_eq!(selector_identity("other"), None);
    }
}
