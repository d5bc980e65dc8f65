//! The `mic` entry point: settings from the flags, probes and metrics endpoints, leader
//! election, and the actors wired together once this replica leads.

use super::assigner::Assigner;
use super::batch::BatchSettings;
use super::budget::WriteBudget;
use super::coordinator::{AssignerHandle, Coordinator};
use super::fence::{Fence, FenceLayer, FencedArm};
use super::heartbeat::Heartbeat;
use super::leader::{self, LeaderSettings};
use super::leader_thread::ElectionThread;
use super::matcher::MatchSettings;
use super::metrics::MicMetrics;
use super::port::ArmPort;
use super::recorder::Recorder;
use super::supervised;
use super::watchers;
use super::writer::{RecordsTo, Writer};
use crate::actors::supervisor::{RestartPolicy, Supervisor};
use crate::config::mic::MicArgs;
use crate::http::probes::{self, Readiness};
use crate::kube_client;
use crate::metrics::Metrics;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::info;

/// Errors that stop MIC.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error(transparent)]
    KubeConfig(#[from] kube_client::Error),
    /// The probe or metrics listener could not bind.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which endpoint.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// MIC's metrics could not be registered.
    #[error("registering MIC metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// One of MIC's actors or tasks died; the process exits non-zero and is restarted.
    #[error("MIC cannot go on: {0}")]
    Died(#[from] crate::actors::supervisor::Death),
    /// This replica lost leadership; the process exits and restarts as a candidate.
    #[error(transparent)]
    Leadership(#[from] leader::Error),
    /// Every watch stream ended (the API server went away for good).
    #[error("the Kubernetes watches ended")]
    WatchesEnded,
    /// The actor system could not be started.
    #[error("actor system: {0}")]
    System(#[source] std::io::Error),
}

/// Everything MIC's actors need from the flags.
#[derive(Clone, Debug)]
pub struct MicSettings {
    /// Kubeconfig path (in-cluster or `$KUBECONFIG` when absent).
    pub kubeconfig: Option<PathBuf>,
    /// Matching rules.
    pub matching: MatchSettings,
    /// Assigner timings.
    pub batch: BatchSettings,
    /// ARM writes per minute per subscription.
    pub arm_writes_per_minute: u32,
    /// Leader election.
    pub leader: LeaderSettings,
    /// How long the actor thread may not run before the lease is given up and `/healthz`
    /// fails ([`super::heartbeat`]); zero turns the rule off.
    pub actor_stall_limit: Duration,
    /// Address the probe and metrics endpoints listen on.
    pub listen_address: IpAddr,
    /// `/healthz` port (0 picks one).
    pub http_probe_port: u16,
    /// `/metrics` port (0 picks one).
    pub prometheus_port: u16,
    /// Concurrent AzureAssignedIdentity writes.
    pub create_delete_batch: usize,
    /// Periodic ARM reconcile.
    pub reconcile_interval: Duration,
    /// Requests per second of the actors' Kubernetes client (`--clientQps`), `None` for no
    /// limit. Leader election has a client of its own, so a burst of writes never delays a
    /// renewal.
    pub client_qps: Option<f32>,
    /// `User-Agent` of every Kubernetes and Azure request (with `--custom-user-agent`).
    pub user_agent: String,
    /// Where NMI pods are, for reporting nodes without one ([`super::nmi_coverage`]).
    pub nmi_coverage: super::nmi_coverage::CoverageSettings,
}

impl From<&MicArgs> for MicSettings {
    fn from(args: &MicArgs) -> Self {
        // Destructured so a new flag cannot be silently ignored.
        let MicArgs {
            kubeconfig,
            cloudconfig: _, // read by the Azure layer that builds the ARM port
            force_namespaced,
            sync_retry_duration,
            leader_election_instance,
            leader_election_namespace,
            leader_election_name,
            leader_election_duration,
            leader_election_endpoints_lock,
            actor_stall_limit,
            http_probe_port,
            prometheus_port,
            create_delete_batch,
            client_qps: _, // read through `client_rate`
            immutable_user_msis,
            update_user_msi_max_retry,
            update_user_msi_retry_interval,
            identity_assignment_reconcile_interval,
            unassign_grace_period,
            arm_writes_per_minute,
            mic_namespace,
            nmi_selector,
            nmi_absence_grace,
            log: _, // applied by main before MIC starts
            compat,
            mic_compat: _, // accepted for compatibility; logged by `run_from_args`
        } = args;
        Self {
            kubeconfig: kubeconfig.clone(),
            matching: MatchSettings {
                force_namespaced: *force_namespaced,
                immutable_client_ids: immutable_user_msis.items().iter().cloned().collect(),
            },
            batch: BatchSettings {
                unassign_grace: *unassign_grace_period,
                transient_backoff: *update_user_msi_retry_interval,
                refused_retries: *update_user_msi_max_retry,
                refused_retry_interval: *update_user_msi_retry_interval,
                refused_backoff_max: (*sync_retry_duration).min(Duration::from_secs(600)),
                ..BatchSettings::default()
            },
            arm_writes_per_minute: *arm_writes_per_minute,
            leader: LeaderSettings {
                namespace: leader_election_namespace.clone(),
                name: leader_election_name.clone(),
                instance: leader_election_instance.clone(),
                duration: *leader_election_duration,
                endpoints_lock: *leader_election_endpoints_lock,
            },
            actor_stall_limit: *actor_stall_limit,
            listen_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            http_probe_port: *http_probe_port,
            prometheus_port: *prometheus_port,
            create_delete_batch: usize::try_from(*create_delete_batch).unwrap_or(20),
            reconcile_interval: *identity_assignment_reconcile_interval,
            client_qps: args.client_rate(),
            user_agent: crate::version::user_agent(
                crate::version::Component::Mic,
                compat.custom_user_agent.as_deref(),
            ),
            nmi_coverage: super::nmi_coverage::CoverageSettings {
                namespace: mic_namespace.clone(),
                selector: nmi_selector.clone(),
                grace: *nmi_absence_grace,
            },
        }
    }
}

/// What MIC is given rather than configures itself.
pub struct MicDeps {
    /// ARM, through the Azure layer's adapter (or a simulator's).
    pub arm: Arc<dyn ArmPort>,
    /// The process metrics registry.
    pub metrics: Metrics,
    /// The connection to the API server (tests); read from [`MicSettings::kubeconfig`] when
    /// absent. The actors' client (fenced: [`super::fence`]) and the election thread's own
    /// ([`super::leader_thread`]) are both built from it.
    pub kube_config: Option<kube::Config>,
    /// Client id of the cluster's own identity (cloud config), never removed.
    pub cluster_identity_client_id: Option<String>,
    /// Told the bound probe and metrics addresses once listening.
    pub bound: Option<tokio::sync::oneshot::Sender<(SocketAddr, SocketAddr)>>,
}

/// MIC's readiness for the shared probe server: `Active` on the leader, `Not Active`
/// elsewhere; `/healthz` answers 200 either way, so a follower is not restarted by its
/// liveness probe, unless the actor thread is stalled past its limit (500: restart it).
struct Leading(Arc<AtomicBool>, Heartbeat);

impl Readiness for Leading {
    fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn liveness(&self) -> Result<(), String> {
        match self.1.stalled() {
            None => Ok(()),
            Some(stalled) => Err(format!(
                "MIC's actor thread has not run for {stalled:?} (--actor-stall-limit {:?})",
                self.1.limit()
            )),
        }
    }
}

/// Serves `/healthz` and `/metrics` with the servers NMI uses too ([`crate::http::probes`]).
fn serve(
    settings: &MicSettings,
    leading: Arc<AtomicBool>,
    heartbeat: Heartbeat,
    metrics: Metrics,
) -> Result<(SocketAddr, SocketAddr, Servers), Error> {
    let listen = |what: &'static str, port: u16| {
        let addr = SocketAddr::new(settings.listen_address, port);
        let bind_error = |source| Error::Bind { what, addr, source };
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        let bound = listener.local_addr().map_err(bind_error)?;
        Ok::<_, Error>((listener, bound, addr))
    };
    let (probe_listener, probe_bound, probe_addr) =
        listen("the probe endpoint", settings.http_probe_port)?;
    let (metrics_listener, metrics_bound, metrics_addr) =
        listen("the metrics endpoint", settings.prometheus_port)?;
    let probe = probes::serve_health(
        probe_listener,
        Arc::new(Leading(Arc::clone(&leading), heartbeat)),
    )
    .map_err(|source| Error::Bind {
        what: "the probe endpoint",
        addr: probe_addr,
        source,
    })?;
    let prom =
        probes::serve_metrics(metrics_listener, metrics.registry().clone()).map_err(|source| {
            Error::Bind {
                what: "the metrics endpoint",
                addr: metrics_addr,
                source,
            }
        })?;
    let servers = Servers {
        handles: vec![probe.handle(), prom.handle()],
        leading,
    };
    actix::spawn(probe);
    actix::spawn(prom);
    Ok((probe_bound, metrics_bound, servers))
}

/// Stops the endpoints and says `Not Active` when MIC stops, however it stops.
struct Servers {
    handles: Vec<actix_web::dev::ServerHandle>,
    leading: Arc<AtomicBool>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.leading.store(false, Ordering::SeqCst);
        for h in &self.handles {
            // The stop command is sent at once; its completion need not be awaited.
            drop(h.stop(false));
        }
    }
}

/// Runs MIC until leadership is lost or the watches end. Must run inside an actix `System`
/// (see [`run_blocking`]).
pub async fn run(settings: MicSettings, deps: MicDeps) -> Result<(), Error> {
    let MicDeps {
        arm,
        metrics,
        kube_config,
        cluster_identity_client_id,
        bound,
    } = deps;
    let config = match kube_config {
        Some(c) => c,
        None => kube_client::config(settings.kubeconfig.as_deref()).await?,
    };
    let options = |qps| kube_client::ClientOptions {
        user_agent: settings.user_agent.clone(),
        qps,
    };
    // Built on the election thread, inside its runtime (see `leader_thread`); no rate limit,
    // so a burst of the actors' writes never delays a renewal.
    let leader_client = {
        let options = options(None);
        let config = config.clone();
        move || kube_client::client(config, &options).map_err(|e| e.to_string())
    };
    let mic_metrics = MicMetrics::register(&metrics)?;
    let coverage_metrics = super::nmi_coverage::CoverageMetrics::new(&metrics)?;
    let leading = Arc::new(AtomicBool::new(false));
    let heartbeat = Heartbeat::new(settings.actor_stall_limit);
    let (probe_addr, metrics_addr, _servers) = serve(
        &settings,
        leading.clone(),
        heartbeat.clone(),
        metrics.clone(),
    )?;
    info!(probe = %probe_addr, metrics = %metrics_addr, "listening");
    if let Some(tx) = bound {
        let _ = tx.send((probe_addr, metrics_addr));
    }

    // Beats on this (the actor) thread for as long as MIC runs; a stall the old same-thread
    // renewal would have lost the lease over is logged.
    let beating = actix::spawn(heartbeat.clone().run(settings.leader.renew_deadline()));
    let _stop_beating = AbortOnDrop(beating);
    let stall_rule = (!settings.actor_stall_limit.is_zero()).then(|| heartbeat.clone());
    let mut elector = ElectionThread::spawn(settings.leader.clone(), stall_rule, leader_client)
        .map_err(Error::System)?;
    // Every write of the actors (ARM, AzureAssignedIdentity, Event) goes out only while the
    // election thread says this replica leads, however far behind the actor thread is.
    let fence = Fence::new(elector.state(), mic_metrics.fenced_writes.clone());
    let client = kube_client::fenced_client(
        config,
        &options(settings.client_qps),
        Some(FenceLayer(fence.clone())),
    )?;
    info!(instance = %settings.leader.instance, lease = %settings.leader.name, "waiting to lead");
    elector.leading().await?;
    leading.store(true, Ordering::SeqCst);
    metrics.mic_new_leader_election_count.inc();
    info!(instance = %settings.leader.instance, "leading");

    let supervisor = Supervisor::new(RestartPolicy::default());
    let recorder = supervised::start_vital(
        &supervisor,
        "recorder",
        Recorder::new(client.clone(), mic_metrics.clone()),
    );
    let writer = supervised::start_vital(
        &supervisor,
        "writer",
        Writer::new(
            client.clone(),
            recorder.recipient(),
            mic_metrics.clone(),
            settings.create_delete_batch,
        ),
    );
    let arm: Arc<dyn ArmPort> = Arc::new(FencedArm::new(arm, fence));
    // One Retry-After gate per subscription for the ARM client and the write budget.
    let budget = match arm.throttle_gate() {
        Some(gate) => WriteBudget::sharing(settings.arm_writes_per_minute, gate),
        None => WriteBudget::new(settings.arm_writes_per_minute),
    };
    let report_to = writer.clone().recipient();
    let mic_metrics_c = mic_metrics.clone();
    let batch = settings.batch.clone();
    let sup = supervisor.clone();
    let factory = Box::new(move |host: &super::host::HostId, owner| {
        let a = supervised::start_retirable(
            &sup,
            "assigner",
            Assigner::new(
                host.clone(),
                batch.clone(),
                arm.clone(),
                budget.clone(),
                report_to.clone(),
                mic_metrics.clone(),
            )
            .retiring_to(owner),
        );
        AssignerHandle {
            desired: a.clone().recipient(),
            adopt: a.clone().recipient(),
            reconcile: a.clone().recipient(),
            retire: a.clone().recipient(),
            recorded: a.recipient(),
        }
    });
    let mut matching = settings.matching.clone();
    matching
        .immutable_client_ids
        .extend(cluster_identity_client_id);
    let coordinator = supervised::start_vital(
        &supervisor,
        "coordinator",
        Coordinator::new(
            matching,
            writer.clone().recipient(),
            writer.clone().recipient(),
            factory,
            settings.reconcile_interval,
            mic_metrics_c,
        ),
    );

    // The writer tells the assigners (through the coordinator) what is recorded where.
    writer.do_send(RecordsTo(coordinator.clone().recipient()));

    let coverage = super::nmi_coverage::run(
        client.clone(),
        settings.nmi_coverage.clone(),
        coverage_metrics,
        metrics.kubernetes_api_operations_errors_count.clone(),
    );
    let result = tokio::select! {
        lost = elector.stepped_down() => Err(Error::Leadership(lost)),
        () = watchers::run(client, coordinator.recipient()) => Err(Error::WatchesEnded),
        death = supervisor.died() => Err(Error::Died(death)),
        // Reporting only: if its watches end, the main ones will too.
        () = async { coverage.await; std::future::pending::<()>().await } => unreachable!(),
    };
    leading.store(false, Ordering::SeqCst);
    // What ends now (actors dropped with the System) is MIC stopping, not dying.
    supervisor.shutdown(Duration::ZERO).await;
    result
}

/// Aborts a task when dropped, so it ends with [`run`] however `run` ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs [`run`] in a new actix `System` on this thread (what `main` calls).
pub fn run_blocking(settings: MicSettings, deps: MicDeps) -> Result<(), Error> {
    let system = actix::System::new();
    let result = system.block_on(run(settings, deps));
    actix::System::current().stop();
    result
}

/// Errors of [`run_from_args`] before MIC starts.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The cloud configuration (`--cloudconfig` or environment) is unusable.
    #[error("cloud configuration")]
    Cloud(#[from] crate::cloud::Error),
    /// MIC stopped.
    #[error(transparent)]
    Mic(#[from] Error),
}

/// `aad-pod-identity mic`: loads the cloud configuration (`--cloudconfig`, else the
/// environment), builds the ARM client and runs MIC in an actix System on this thread until
/// leadership is lost or the watches end.
pub fn run_from_args(args: &MicArgs, metrics: Metrics) -> Result<(), StartError> {
    crate::config::compat::log_ignored(
        "mic",
        &[
            args.log.klog.ignored(),
            args.compat.ignored(),
            args.mic_compat.ignored(),
        ]
        .concat(),
    );
    let settings = MicSettings::from(args);
    // azure.json is watched and reloaded on change; the environment cannot change.
    let (arm, config) = match args
        .cloudconfig
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
    {
        Some(path) => super::cloud_port::CloudArm::watching(path, &settings.user_agent)?,
        None => {
            let config = crate::cloud::config::CloudConfig::load(None)?;
            (
                super::cloud_port::CloudArm::from_config_as(&config, &settings.user_agent)?,
                config,
            )
        }
    };
    let deps = MicDeps {
        arm: Arc::new(arm),
        metrics,
        kube_config: None,
        cluster_identity_client_id: Some(config.user_assigned_identity_id.clone())
            .filter(|id| !id.is_empty()),
        bound: None,
    };
    Ok(run_blocking(settings, deps)?)
}

/// A MIC replica running on a thread of its own (sandbox, tests): its endpoints, and a way to
/// stop it abruptly, as a killed pod stops.
pub struct MicHandle {
    /// `/healthz` address.
    pub probe: SocketAddr,
    /// `/metrics` address.
    pub metrics: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), Error>>>,
    exited: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl MicHandle {
    /// Resolves (with an error: its sender is dropped) when the replica's thread ends, however
    /// it ends: leadership lost, watches ended, or [`MicHandle::stop`]. Given out once, so a
    /// supervisor can restart a replica that ended on its own, as a kubelet restarts a container.
    pub fn take_exit_signal(&mut self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.exited.take()
    }

    /// Stops the replica at once (mid-flight calls are dropped) and waits for its thread.
    pub fn stop(&mut self) -> Option<Result<(), Error>> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.thread
            .take()
            .map(|t| t.join().unwrap_or(Err(Error::WatchesEnded)))
    }
}

impl Drop for MicHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts MIC on a new thread with its own actix System; `arm` is built on that thread (so
/// its HTTP connections live on MIC's runtime). Returns once the endpoints listen.
pub async fn spawn(
    settings: MicSettings,
    metrics: Metrics,
    cluster_identity_client_id: Option<String>,
    arm: impl FnOnce() -> Arc<dyn ArmPort> + Send + 'static,
) -> Result<MicHandle, Error> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("mic-{}", settings.leader.instance))
        .spawn(move || {
            // Dropped when this thread ends, which is what `take_exit_signal` reports.
            let _exit = exit_tx;
            let system = actix::System::new();
            system.block_on(async move {
                let deps = MicDeps {
                    arm: arm(),
                    metrics,
                    kube_config: None,
                    cluster_identity_client_id,
                    bound: Some(bound_tx),
                };
                tokio::select! {
                    r = run(settings, deps) => r,
                    _ = stop_rx => Ok(()),
                }
            })
        })
        .map_err(Error::System)?;
    match bound_rx.await {
        Ok((probe, metrics)) => Ok(MicHandle {
            probe,
            metrics,
            stop: Some(stop_tx),
            thread: Some(thread),
            exited: Some(exit_rx),
        }),
        // The thread ended before listening: its error says why.
        Err(_) => Err(thread
            .join()
            .unwrap_or(Err(Error::WatchesEnded))
            .err()
            .unwrap_or(Error::WatchesEnded)),
    }
}
