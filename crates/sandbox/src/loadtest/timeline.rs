//! The run's log: what the driver saw of every pod and AzureAssignedIdentity (from watches,
//! with times since the run's start), the token requests each pod made, the time series
//! sampled every 250 ms, and the invariant checked at each sample.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;

use super::Scenario;
use super::params::{Params, selector_index};
use super::tokens::spawn_requests;
use crate::system::Sandbox;
use aad_pod_identity::crd::{AzureAssignedIdentity, POD_LABEL};

/// One token request as the driver saw it.
#[derive(Clone, Debug)]
pub(super) struct Request {
    pub(super) sent: f64,
    pub(super) answered: Option<f64>,
    pub(super) status: u16,
    pub(super) error: Option<String>,
}

/// What the driver knows of one pod (times in seconds since the run's start).
#[derive(Clone, Debug, Default)]
pub(super) struct PodLog {
    pub(super) identity: Option<usize>,
    pub(super) created: Option<f64>,
    pub(super) running: Option<f64>,
    pub(super) assigned: Option<f64>,
    pub(super) finished: Option<f64>,
    pub(super) node: Option<String>,
    pub(super) ip: Option<IpAddr>,
    pub(super) requested: bool,
    pub(super) requests: Vec<Request>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) pods: BTreeMap<String, PodLog>,
    pub(super) series: Vec<(f64, usize, usize, usize, u64)>,
    pub(super) violations: Vec<String>,
}

pub(super) struct Ctx {
    pub(super) t0: Instant,
    /// The runtime of the two ends of the wake-up measure: the pods' token requests and the
    /// watch that sees `Assigned` ([`Probes`]).
    pub(super) probes: tokio::runtime::Handle,
    pub(super) state: Mutex<State>,
    pub(super) nmi: BTreeMap<String, SocketAddr>,
    pub(super) client_ids: Vec<String>,
    pub(super) params: Params,
    pub(super) scenario: Scenario,
}

impl Ctx {
    pub(super) fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(super) fn pod_event(ctx: &Arc<Ctx>, pod: &Pod, deleted: bool) {
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

pub(super) fn aai_event(ctx: &Arc<Ctx>, aai: &AzureAssignedIdentity) {
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

pub(super) async fn watch_pods(ctx: Arc<Ctx>, client: kube::Client) {
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

/// Watches every AzureAssignedIdentity with a client made from `kubeconfig` on the current
/// runtime (a client's connections live on the runtime that made it), so the events are read
/// and stamped there.
pub(super) async fn watch_assignments(ctx: Arc<Ctx>, kubeconfig: String) {
    let client = match client_from(&kubeconfig).await {
        Ok(c) => c,
        Err(e) => {
            ctx.lock()
                .violations
                .push(format!("load test assignment watch: no client: {e}"));
            return;
        }
    };
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

/// A runtime of its own (one thread) for what stamps the two ends of the wake-up measure: the
/// pods' token requests (whose answers are the end) and the AzureAssignedIdentity watch (whose
/// `Assigned` is the start).
///
/// On the sandbox's own thread both ends queued behind everything else that thread does during
/// a burst (the pod watch parsing a thousand pods' updates, the 250 ms samples of every
/// process's `/proc` figures, the simulated cluster's controllers): an answer already in the
/// driver's socket waited there, up to 84 ms in a 100-NMI burst, before it was stamped, and the
/// `Assigned` events waited too (up to 240 ms behind the NMIs' watches). Both ends move
/// together, so the measure neither starts later nor ends earlier than before; each is stamped
/// closer to the moment it arrives. In a cluster each pod is a process of its own on its node.
pub(super) struct Probes {
    rt: Option<tokio::runtime::Runtime>,
}

impl Probes {
    /// Starts the runtime.
    pub(super) fn start() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("loadtest-probes")
            .enable_all()
            .build()?;
        Ok(Self { rt: Some(rt) })
    }

    /// Where to spawn.
    pub(super) fn handle(&self) -> tokio::runtime::Handle {
        self.rt
            .as_ref()
            .map(|rt| rt.handle().clone())
            .expect("runtime present until drop")
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        // Dropped inside the sandbox's runtime: a blocking shutdown would panic there.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn client_from(kubeconfig: &str) -> Result<kube::Client, String> {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// Samples counts for the time series and checks that every pod that is Running with its
/// identity Assigned has that identity on its scale set in Azure.
pub(super) fn sample(
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

pub(super) fn done(ctx: &Ctx) -> bool {
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

#[cfg(test)]
mod tests {
    use super::Probes;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn the_probes_run_while_the_sandboxs_thread_is_busy() {
        let probes = Probes::start().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        probes.handle().spawn(async move {
            // A task that needs its runtime to be polled, as reading an answer does.
            tokio::task::yield_now().await;
            tx.send(()).unwrap();
        });
        // This (the sandbox's) thread blocks: had the task been spawned on it, it could not run.
        assert!(rx.recv_timeout(Duration::from_secs(30)).is_ok());
    }
}
