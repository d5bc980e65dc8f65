//! MIC replicas that follow MIC's pods, so that the commands that change MIC on a cluster
//! change it here too.
//!
//! The sandbox installs MIC's Deployment (see [`crate::components`]); the simulated cluster's
//! controllers turn it into pods. For every MIC pod that is Running, this controller runs one
//! MIC replica in this process, on a thread of its own with its own actix system, its own
//! metrics registry, and the pod's name as its leader-election identity. When the pod is
//! deleted or evicted (`kubectl delete pod`, `kubectl drain`), its replica stops at once, as a
//! killed container stops (no lease release, so the others take over when the lease expires);
//! the Deployment's replacement pod then starts a new replica. A replica that ends on its own
//! (it lost the lease) is restarted after a second, as a kubelet restarts a container.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::components;
use aad_pod_identity::actors::mic::cloud_port::CloudArm;
use aad_pod_identity::actors::mic::port::ArmPort;
use aad_pod_identity::actors::mic::run::{self as mic_run, MicHandle};
use aad_pod_identity::cloud::config::CloudConfig;
use aad_pod_identity::metrics::Metrics;

/// How long a replica that ended on its own waits before it is started again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// A running replica, as the sandbox's guide, endpoints document and progress line see it.
#[derive(Clone)]
pub struct ReplicaView {
    /// The MIC pod it runs for (also its leader-election identity).
    pub pod: String,
    /// `/healthz` address.
    pub probe: SocketAddr,
    /// `/metrics` address.
    pub metrics_addr: SocketAddr,
    /// Its metrics registry.
    pub metrics: Metrics,
}

impl ReplicaView {
    /// Whether this replica leads: it took the lease, and a replica that loses it ends.
    #[must_use]
    pub fn leading(&self) -> bool {
        self.metrics.mic_new_leader_election_count.get() > 0
    }
}

struct Replica {
    /// Tells this start of the replica from a later one for the same pod.
    serial: u64,
    view: ReplicaView,
    handle: MicHandle,
}

type Replicas = Arc<Mutex<BTreeMap<String, Replica>>>;

/// The controller and the replicas it runs.
pub struct MicReplicas {
    replicas: Replicas,
    changed: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// Why the replicas could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cloud configuration does not make an ARM client.
    #[error("ARM client for MIC")]
    Arm(#[source] aad_pod_identity::cloud::Error),
    /// Fewer replicas than wanted were serving after the deadline.
    #[error("{running} of {wanted} MIC replicas were serving after {waited:?}")]
    NotServing {
        /// Replicas serving.
        running: usize,
        /// Replicas wanted.
        wanted: usize,
        /// How long was waited.
        waited: Duration,
    },
}

impl MicReplicas {
    /// Starts the controller: it runs a replica for every Running MIC pod in
    /// [`components::NAMESPACE`], reaching the API server through `kubeconfig` and ARM through
    /// `cloud`.
    ///
    /// # Errors
    /// [`Error::Arm`] when `cloud` does not make an ARM client.
    pub fn start(
        client: kube::Client,
        kubeconfig: PathBuf,
        cloud: CloudConfig,
    ) -> Result<Self, Error> {
        // Checked once here; every replica builds its own client on its own thread.
        CloudArm::from_config(&cloud).map_err(Error::Arm)?;
        let replicas: Replicas = Arc::default();
        let (tx, changed) = watch::channel(0);
        let ctl = Controller {
            replicas: replicas.clone(),
            changed: tx,
            kubeconfig,
            cloud,
            serial: 0,
        };
        let task = tokio::spawn(ctl.run(client));
        Ok(Self {
            replicas,
            changed,
            task,
        })
    }

    /// The running replicas, by pod name.
    #[must_use]
    pub fn views(&self) -> Vec<ReplicaView> {
        self.list().views()
    }

    /// A handle on the running replicas that tasks can hold.
    #[must_use]
    pub fn list(&self) -> ReplicaList {
        ReplicaList(self.replicas.clone())
    }

    /// A receiver told whenever a replica starts or stops.
    #[must_use]
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }

    /// Waits until `wanted` replicas serve (on change notifications), at most `timeout`.
    ///
    /// # Errors
    /// [`Error::NotServing`] at the deadline.
    pub async fn wait_for(
        &self,
        wanted: usize,
        timeout: Duration,
    ) -> Result<Vec<ReplicaView>, Error> {
        let mut changes = self.changes();
        let enough = async {
            loop {
                let views = self.views();
                if views.len() >= wanted {
                    return views;
                }
                if changes.changed().await.is_err() {
                    // The controller ended: nothing more will start.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, enough)
            .await
            .map_err(|_| Error::NotServing {
                running: self.views().len(),
                wanted,
                waited: timeout,
            })
    }

    /// Stops the controller, then every replica.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        let all: Vec<Replica> = std::mem::take(&mut *lock(&self.replicas))
            .into_values()
            .collect();
        stop_all(all).await;
    }
}

/// The running replicas, as a cloneable handle.
#[derive(Clone)]
pub struct ReplicaList(Replicas);

impl ReplicaList {
    /// The running replicas, by pod name.
    #[must_use]
    pub fn views(&self) -> Vec<ReplicaView> {
        lock(&self.0).values().map(|r| r.view.clone()).collect()
    }

    /// The leading replica, if one leads.
    #[must_use]
    pub fn leader(&self) -> Option<ReplicaView> {
        self.views().into_iter().find(ReplicaView::leading)
    }
}

fn lock(r: &Replicas) -> std::sync::MutexGuard<'_, BTreeMap<String, Replica>> {
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stops replicas off the async threads (stopping joins each replica's thread).
async fn stop_all(replicas: Vec<Replica>) {
    if replicas.is_empty() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        for mut r in replicas {
            info!(pod = %r.view.pod, "MIC replica stopped");
            r.handle.stop();
        }
    })
    .await;
}

/// A pod whose replica should run: Running and not being deleted.
fn runnable(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

struct Controller {
    replicas: Replicas,
    changed: watch::Sender<u64>,
    kubeconfig: PathBuf,
    cloud: CloudConfig,
    serial: u64,
}

impl Controller {
    async fn run(mut self, client: kube::Client) {
        let pods: Api<Pod> = Api::namespaced(client, components::NAMESPACE);
        let cfg = watcher::Config::default().labels(&components::selector("mic"));
        let mut stream = watcher::watcher(pods, cfg).default_backoff().boxed();
        let (exit_tx, mut exits) = mpsc::unbounded_channel::<(String, u64)>();
        // Pods whose replica should run, with their container arguments.
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut relisting: Option<BTreeMap<String, Vec<String>>> = None;
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    None => return,
                    Some(Err(e)) => { warn!(error = %e, "MIC pod watch"); continue; }
                    Some(Ok(Event::Init)) => { relisting = Some(BTreeMap::new()); continue; }
                    Some(Ok(Event::InitApply(p))) => {
                        if let Some(m) = relisting.as_mut() && runnable(&p) {
                            m.insert(p.metadata.name.clone().unwrap_or_default(), components::pod_args(&p));
                        }
                        continue;
                    }
                    Some(Ok(Event::InitDone)) => wanted = relisting.take().unwrap_or_default(),
                    Some(Ok(Event::Apply(p))) => {
                        let name = p.metadata.name.clone().unwrap_or_default();
                        if runnable(&p) {
                            wanted.insert(name, components::pod_args(&p));
                        } else {
                            wanted.remove(&name);
                        }
                    }
                    Some(Ok(Event::Delete(p))) => {
                        wanted.remove(p.metadata.name.as_deref().unwrap_or_default());
                    }
                },
                Some((pod, serial)) = exits.recv() => {
                    let ended = {
                        let mut map = lock(&self.replicas);
                        match map.get(&pod) {
                            Some(r) if r.serial == serial => map.remove(&pod),
                            _ => None,
                        }
                    };
                    let Some(ended) = ended else { continue };
                    warn!(pod = %pod, "MIC replica ended on its own; restarting it");
                    self.changed.send_modify(|n| *n += 1);
                    stop_all(vec![ended]).await;
                    tokio::time::sleep(RESTART_PAUSE).await;
                }
            }
            self.reconcile(&wanted, &exit_tx).await;
        }
    }

    /// Stops the replicas of pods no longer wanted, then starts those of wanted pods.
    async fn reconcile(
        &mut self,
        wanted: &BTreeMap<String, Vec<String>>,
        exits: &mpsc::UnboundedSender<(String, u64)>,
    ) {
        let gone: Vec<Replica> = {
            let mut map = lock(&self.replicas);
            let names: Vec<String> = map
                .keys()
                .filter(|k| !wanted.contains_key(*k))
                .cloned()
                .collect();
            names.iter().filter_map(|n| map.remove(n)).collect()
        };
        let mut changed = !gone.is_empty();
        stop_all(gone).await;
        let missing: Vec<(String, Vec<String>)> = {
            let map = lock(&self.replicas);
            wanted
                .iter()
                .filter(|(k, _)| !map.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        for (pod, args) in missing {
            match self.start_replica(&pod, &args).await {
                Ok(mut r) => {
                    if let Some(exited) = r.handle.take_exit_signal() {
                        let exits = exits.clone();
                        let (pod, serial) = (pod.clone(), r.serial);
                        tokio::spawn(async move {
                            let _ = exited.await;
                            let _ = exits.send((pod, serial));
                        });
                    }
                    info!(pod = %pod, probe = %r.view.probe, "MIC replica started");
                    lock(&self.replicas).insert(pod, r);
                    changed = true;
                }
                Err(e) => warn!(pod = %pod, error = %e, "MIC replica cannot start"),
            }
        }
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    async fn start_replica(&mut self, pod: &str, args: &[String]) -> Result<Replica, String> {
        let settings =
            components::mic_settings(args, pod, &self.kubeconfig).map_err(|e| e.to_string())?;
        let metrics = Metrics::new();
        let cloud = self.cloud.clone();
        let handle = mic_run::spawn(settings, metrics.clone(), None, move || {
            let arm = CloudArm::from_config(&cloud)
                .expect("the ARM configuration was checked when the replicas started");
            Arc::new(arm) as Arc<dyn ArmPort>
        })
        .await
        .map_err(|e| e.to_string())?;
        self.serial += 1;
        Ok(Replica {
            serial: self.serial,
            view: ReplicaView {
                pod: pod.to_string(),
                probe: handle.probe,
                metrics_addr: handle.metrics,
                metrics,
            },
            handle,
        })
    }
}
