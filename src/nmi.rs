//! The `nmi` process: assembles NMI's owners ([`crate::actors::nmi`]) and its HTTP surface
//! ([`crate::http`]), starts the watches, servers, node gate and iptables reconciler, and
//! stops them.
//!
//! Every task (watches, servers, iptables, gate) runs under a [`Supervisor`]: restarted when it
//! dies, and the process dead (`/healthz` 500, exit code 1) when it keeps dying. [`start`]
//! wires everything and returns the bound addresses; [`run`] is the `nmi` subcommand (start,
//! then wait for SIGTERM/SIGINT or death). It sits above both `actors::nmi` and `http`, so
//! imports between those two run one way: the HTTP surface uses the broker and indexes.

use crate::actors::nmi::{
    assignments, broker, cache, cloud_source, exceptions, federated, gate, imds_fetch, iptables,
    kubenet, managed, metrics, pods, service_accounts, source, upstream_metrics, watchers,
};
use crate::actors::supervisor::{Death, RestartPolicy, Supervisor};
use crate::http::nmi::{HttpSettings, NmiHttp};
use crate::http::probes::{self, Readiness};
use crate::http::proxy::Proxy;
use assignments::AssignmentIndex;
use broker::{Broker, BrokerSettings, IdentityFeed};
use cache::TokenCache;
use exceptions::ExceptionIndex;
use managed::ManagedCatalog;
use metrics::NmiMetrics;
use pods::PodIndex;
use service_accounts::ServiceAccountIndex;
use source::TokenSource;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Where a pod's identities come from (`--operation-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// AzureAssignedIdentity objects written by MIC.
    Standard,
    /// Identities pre-assigned by the operator; NMI reads bindings and identities (namespaced).
    Managed,
}

/// NMI's settings, mapped from the `nmi` flags by the binary.
#[derive(Clone, Debug)]
pub struct NmiSettings {
    /// This node (`--node` / `NODE_NAME`).
    pub node: String,
    /// Token endpoint address (`--nmi-listen-address`:`--nmi-port`).
    pub listen: SocketAddr,
    /// Metadata service address (`--metadata-ip`:`--metadata-port`): pass-through target and
    /// the destination the iptables rule redirects.
    pub metadata: SocketAddr,
    /// `/healthz` address (`--http-probe-port`).
    pub probe: SocketAddr,
    /// `/metrics` address (`--prometheus-port`).
    pub metrics: SocketAddr,
    /// `--operation-mode`.
    pub mode: Mode,
    /// `--forceNamespaced`.
    pub force_namespaced: bool,
    /// `--MICNamespace`.
    pub mic_namespace: String,
    /// `--mic-service-account`: MIC's pods in `mic_namespace` run as this service account
    /// (empty: MIC is recognised only through an AzurePodIdentityException).
    pub mic_service_account: String,
    /// Bound of the wait for an identity to be assigned
    /// (`--retry-attempts-for-created` × `--find-identity-retry-interval`).
    pub assignment_wait: Duration,
    /// Extra wait when the identity exists but is still `Created` at that deadline
    /// (`--retry-attempts-for-assigned` × `--find-identity-retry-interval`).
    pub assigned_grace: Duration,
    /// Bound of the wait for a pod the watch has not announced yet.
    pub pod_arrival_timeout: Duration,
    /// `--block-instance-metadata`.
    pub block_instance_metadata: bool,
    /// `--metadata-header-required`.
    pub metadata_header_required: bool,
    /// `--set-retry-after-header`.
    pub set_retry_after_header: bool,
    /// Refresh a cached token this long before it expires.
    pub token_refresh_margin: Duration,
    /// Bound of one upstream token fetch.
    pub token_fetch_timeout: Duration,
    /// Install and keep the iptables redirect (off in the sandbox).
    pub manage_iptables: bool,
    /// `--iptables-backend`.
    pub iptables_backend: iptables::Backend,
    /// `--ipt-update-interval-sec`.
    pub ipt_update_interval: Duration,
    /// `--enable-conntrack-deletion` (on by default with the node gate).
    pub enable_conntrack_deletion: bool,
    /// `--node-gate`: the key of the startup taint NMI lifts from its node (`--node-gate-taint`),
    /// or `None` when the gate is off.
    pub node_gate: Option<String>,
    /// `--http-workers`, resolved: worker threads of the token endpoint.
    pub http_workers: usize,
    /// `--max-waiters-per-pod`.
    pub max_waiters_per_pod: usize,
    /// `--max-waiters`.
    pub max_waiters: usize,
    /// `--max-metadata-fetches` (0: unbounded).
    pub max_metadata_fetches: usize,
    /// `--max-metadata-fetches-per-second` (0: unpaced).
    pub max_metadata_fetches_per_second: usize,
    /// `--max-token-cache-slots`.
    pub max_token_cache_slots: usize,
    /// `--max-pass-through`.
    pub max_pass_through: usize,
    /// `--pass-through-body-timeout`.
    pub pass_through_body_timeout: Duration,
    /// `--max-connections-per-source`.
    pub max_connections_per_source: usize,
    /// How supervised tasks are restarted.
    pub restart_policy: RestartPolicy,
    /// `--enable-federation`: pods that opted in to workload identity get the identity their
    /// service account names (a watch on service accounts). Federated AzureIdentities need the
    /// token source's federation (see `cloud_source`).
    pub federation: bool,
}

impl NmiSettings {
    /// The settings the `nmi` flags describe.
    #[must_use]
    pub fn from_args(args: &crate::config::nmi::NmiArgs) -> Self {
        use crate::config::nmi::OperationMode;
        let all = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Self {
            node: args.node.clone(),
            listen: SocketAddr::new(args.nmi_listen_address, args.nmi_port),
            metadata: SocketAddr::new(args.metadata_ip, args.metadata_port),
            // Probes must be reachable by the kubelet; NMI runs on the host network.
            probe: SocketAddr::new(all, args.http_probe_port),
            metrics: SocketAddr::new(all, args.prometheus_port),
            mode: match args.operation_mode {
                OperationMode::Standard => Mode::Standard,
                OperationMode::Managed => Mode::Managed,
            },
            force_namespaced: args.force_namespaced,
            mic_namespace: args.mic_namespace.clone(),
            mic_service_account: args.mic_service_account.clone(),
            assignment_wait: args.assignment_deadline(),
            assigned_grace: args.assigned_grace(),
            pod_arrival_timeout: args.pod_arrival_timeout,
            block_instance_metadata: args.block_instance_metadata,
            metadata_header_required: args.metadata_header_required,
            set_retry_after_header: args.set_retry_after_header,
            token_refresh_margin: args.token_refresh_margin,
            token_fetch_timeout: Duration::from_secs(30),
            manage_iptables: args.manage_iptables,
            iptables_backend: args.iptables_backend,
            ipt_update_interval: args.ipt_update_interval,
            enable_conntrack_deletion: args.conntrack_deletion(),
            node_gate: args.node_gate.then(|| args.node_gate_taint.clone()),
            http_workers: http_workers(args.http_workers),
            max_waiters_per_pod: count(args.max_waiters_per_pod),
            max_waiters: count(args.max_waiters),
            max_metadata_fetches: count(args.max_metadata_fetches),
            max_metadata_fetches_per_second: count(args.max_metadata_fetches_per_second),
            max_token_cache_slots: count(args.max_token_cache_slots),
            max_pass_through: count(args.max_pass_through),
            pass_through_body_timeout: args.pass_through_body_timeout,
            max_connections_per_source: count(args.max_connections_per_source),
            restart_policy: RestartPolicy::default(),
            federation: args.enable_federation,
        }
        .sandbox_probes()
    }

    /// Settings for one simulated node of the sandbox: NMI on the node's own loopback address
    /// `listen`, probes and metrics on the same address (ports chosen by the system, reported by
    /// [`Running`]), tokens from that node's simulated metadata service, no iptables.
    #[must_use]
    pub fn for_sandbox_node(
        node: impl Into<String>,
        listen: SocketAddr,
        metadata: SocketAddr,
        assignment_wait: Duration,
    ) -> Self {
        let mut s = Self::new(node, metadata);
        s.listen = listen;
        s.probe = SocketAddr::new(listen.ip(), 0);
        s.metrics = SocketAddr::new(listen.ip(), 0);
        s.assignment_wait = assignment_wait;
        s.assigned_grace = Duration::ZERO;
        s.force_namespaced = true;
        s.http_workers = 1;
        s
    }

    /// In the sandbox each NMI has its own loopback address (not 127.0.0.1); its probes and
    /// metrics stay on that address so several NMIs never clash.
    fn sandbox_probes(mut self) -> Self {
        let ip = self.listen.ip();
        if ip.is_loopback() && ip != IpAddr::V4(Ipv4Addr::LOCALHOST) {
            self.probe.set_ip(ip);
            self.metrics.set_ip(ip);
        }
        self
    }

    /// The `nmi` flags' defaults for `node` (the original's, except namespaced matching, which
    /// is on), with the given metadata address.
    #[must_use]
    pub fn new(node: impl Into<String>, metadata: SocketAddr) -> Self {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Self {
            node: node.into(),
            listen: SocketAddr::new(lo, 2579),
            metadata,
            probe: SocketAddr::new(lo, 8080),
            metrics: SocketAddr::new(lo, 9090),
            mode: Mode::Standard,
            // Namespaced matching is the secure default here (docs/migration.md).
            force_namespaced: true,
            mic_namespace: "default".into(),
            mic_service_account: String::new(),
            assignment_wait: Duration::from_secs(16 * 5),
            assigned_grace: Duration::from_secs(4 * 5),
            pod_arrival_timeout: Duration::from_secs(2),
            block_instance_metadata: false,
            metadata_header_required: true,
            set_retry_after_header: false,
            token_refresh_margin: Duration::from_secs(300),
            token_fetch_timeout: Duration::from_secs(30),
            manage_iptables: false,
            iptables_backend: iptables::Backend::Auto,
            ipt_update_interval: Duration::from_secs(60),
            enable_conntrack_deletion: false,
            node_gate: None,
            http_workers: 2,
            max_waiters_per_pod: 100,
            max_waiters: 10_000,
            max_metadata_fetches: imds_fetch::DEFAULT_MAX_IN_FLIGHT,
            max_metadata_fetches_per_second: imds_fetch::DEFAULT_MAX_PER_SECOND,
            max_token_cache_slots: cache::DEFAULT_MAX_SLOTS,
            max_pass_through: 64,
            pass_through_body_timeout: Duration::from_secs(10),
            max_connections_per_source: 256,
            restart_policy: RestartPolicy::default(),
            federation: false,
        }
    }
}

/// `--http-workers`: the number given, or for 0 one per CPU this process may use (the
/// affinity mask capped by a cgroup CPU limit, at least 1: what a container is allowed).
fn http_workers(flag: u32) -> usize {
    match flag {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => count(n),
    }
}

/// A count flag as a `usize` (lossless on every platform NMI runs on).
fn count(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Why NMI could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The pass-through client could not be built.
    #[error("cannot build the metadata pass-through client: {0}")]
    Proxy(#[from] crate::http::proxy::Error),
    /// A task NMI cannot do without failed for good.
    #[error(transparent)]
    Died(#[from] Death),
    /// Managed mode requires namespaced matching.
    #[error("--operation-mode managed requires --forceNamespaced")]
    ManagedNeedsNamespaced,
    /// The Azure clients could not be built.
    #[error("cannot build the Azure clients: {0}")]
    Cloud(String),
    /// No Kubernetes client could be built.
    #[error("cannot build a Kubernetes client: {0}")]
    Kube(String),
    /// The iptables rules could not be removed on shutdown.
    #[error("iptables cleanup failed: {0}")]
    Iptables(#[from] iptables::Error),
    /// The node uses kubenet and `--allow-network-plugin-kubenet` is not set.
    #[error(transparent)]
    Kubenet(#[from] kubenet::Error),
}

/// NMI's readiness: caches synced and (when managed) iptables rules in place; its liveness:
/// no supervised task has died for good.
pub struct NmiReadiness {
    broker: Arc<Broker>,
    iptables_ready: Arc<AtomicBool>,
    supervisor: Supervisor,
}

impl Readiness for NmiReadiness {
    fn is_ready(&self) -> bool {
        self.broker.caches_synced() && self.iptables_ready.load(Ordering::Acquire)
    }

    fn liveness(&self) -> Result<(), String> {
        self.supervisor.health().map_err(|d| d.to_string())
    }
}

/// NMI's shared state, assembled but not yet fed by watches (tests and benchmarks feed the
/// indexes directly, the same way the watch loops do).
pub struct Nmi {
    /// Pods of this node.
    pub pods: Arc<PodIndex>,
    /// Standard mode's assignments.
    pub assignments: Option<Arc<AssignmentIndex>>,
    /// Managed mode's catalog.
    pub catalog: Option<Arc<ManagedCatalog>>,
    /// Exceptions.
    pub exceptions: Arc<ExceptionIndex>,
    /// Service accounts annotated for workload identity (`--enable-federation`).
    pub service_accounts: Option<Arc<ServiceAccountIndex>>,
    /// Token cache.
    pub cache: Arc<TokenCache>,
    /// The request flow.
    pub broker: Arc<Broker>,
    /// The HTTP handlers' state.
    pub http: Arc<NmiHttp>,
    /// Readiness (what `/healthz` reports).
    pub readiness: Arc<NmiReadiness>,
    /// True while the iptables rules are in place (always true when not managing iptables).
    pub iptables_ready: Arc<AtomicBool>,
    /// Woken whenever one of the caches finishes a (re)list.
    pub synced_changed: Arc<Notify>,
    /// The supervisor of NMI's tasks (none run until [`start`]).
    pub supervisor: Supervisor,
}

impl Nmi {
    /// Assembles NMI's state for `settings`, fetching tokens from `source` (its metadata-service
    /// fetches bounded and retried by [`imds_fetch`], every fetch timed under the original's
    /// metric names), registering metrics next to the shared ones in `metrics`.
    ///
    /// # Errors
    /// [`Error`] for an invalid mode combination, a metrics clash or an HTTP client failure.
    pub fn new(
        settings: &NmiSettings,
        source: Arc<dyn TokenSource>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, Error> {
        if settings.mode == Mode::Managed && !settings.force_namespaced {
            return Err(Error::ManagedNeedsNamespaced);
        }
        let shared_metrics = metrics;
        let metrics = NmiMetrics::new(metrics, &settings.node)?;
        let source = imds_fetch::ImdsFetch::new(
            source,
            imds_fetch::ImdsFetchSettings {
                max_in_flight: settings.max_metadata_fetches,
                max_per_second: settings.max_metadata_fetches_per_second,
                max_waiting: settings.max_waiters,
                max_waiting_per_identity: settings.max_waiters_per_pod,
                fetch_timeout: settings.token_fetch_timeout,
            },
        )
        .with_metrics(shared_metrics, metrics.clone(), &settings.node)?;
        let source: Arc<dyn TokenSource> = Arc::new(upstream_metrics::Metered::new(
            Arc::new(source),
            shared_metrics.clone(),
        ));
        let pods = Arc::new(PodIndex::new(settings.node.clone()));
        let exceptions = Arc::new(ExceptionIndex::new());
        let cache = Arc::new(
            TokenCache::new(
                source,
                settings.token_refresh_margin,
                settings.token_fetch_timeout,
                Some(metrics.clone()),
            )
            .with_max_slots(settings.max_token_cache_slots),
        );
        let (assignments, catalog, feed) = match settings.mode {
            Mode::Standard => {
                let a = Arc::new(AssignmentIndex::new(
                    settings.node.clone(),
                    settings.force_namespaced,
                ));
                (Some(Arc::clone(&a)), None, IdentityFeed::Standard(a))
            }
            Mode::Managed => {
                let c = Arc::new(ManagedCatalog::new());
                (None, Some(Arc::clone(&c)), IdentityFeed::Managed(c))
            }
        };
        let mut broker = Broker::new(
            Arc::clone(&pods),
            feed,
            Arc::clone(&exceptions),
            Arc::clone(&cache),
            BrokerSettings {
                node: settings.node.clone(),
                mic_namespace: settings.mic_namespace.clone(),
                mic_service_account: settings.mic_service_account.clone(),
                max_waiters_per_pod: settings.max_waiters_per_pod,
                max_waiters: settings.max_waiters,
                assignment_wait: settings.assignment_wait,
                assigned_grace: settings.assigned_grace,
                pod_arrival_timeout: settings.pod_arrival_timeout,
            },
            Some(metrics.clone()),
        );
        let service_accounts = settings
            .federation
            .then(|| Arc::new(ServiceAccountIndex::new()));
        if let Some(sa) = &service_accounts {
            broker = broker.with_workload_identities(Arc::clone(sa));
        }
        let broker = Arc::new(broker);
        let proxy = Proxy::new(
            &format!("http://{}", settings.metadata),
            settings.token_fetch_timeout,
        )?;
        let supervisor = Supervisor::new(settings.restart_policy);
        let http = Arc::new(
            NmiHttp::new(
                Arc::clone(&broker),
                proxy,
                HttpSettings {
                    block_instance_metadata: settings.block_instance_metadata,
                    metadata_header_required: settings.metadata_header_required,
                    set_retry_after_header: settings.set_retry_after_header,
                    max_pass_through: settings.max_pass_through,
                    pass_through_body_timeout: settings.pass_through_body_timeout,
                    max_connections_per_source: settings.max_connections_per_source,
                },
                Some(metrics),
            )
            // Shutdown starts by cancelling this token, so requests in flight are answered first.
            .with_stopping(supervisor.shutdown_token()),
        );
        let iptables_ready = Arc::new(AtomicBool::new(!settings.manage_iptables));
        let readiness = Arc::new(NmiReadiness {
            broker: Arc::clone(&broker),
            iptables_ready: Arc::clone(&iptables_ready),
            supervisor: supervisor.clone(),
        });
        Ok(Self {
            pods,
            assignments,
            catalog,
            exceptions,
            service_accounts,
            cache,
            broker,
            http,
            readiness,
            iptables_ready,
            synced_changed: Arc::new(Notify::new()),
            supervisor,
        })
    }
}

/// A started NMI.
pub struct Running {
    /// Token endpoint address (useful when `listen` had port 0).
    pub nmi_addr: SocketAddr,
    /// `/healthz` address.
    pub probe_addr: SocketAddr,
    /// `/metrics` address.
    pub metrics_addr: SocketAddr,
    /// The state (indexes, readiness, supervisor).
    pub nmi: Arc<Nmi>,
    servers: Vec<actix_web::dev::ServerHandle>,
    /// Outcome of the iptables task's last run (its rules are removed when it ends).
    iptables_outcome: Option<IptablesOutcome>,
}

/// Where the iptables task leaves the outcome of its cleanup for [`Running::stop`].
type IptablesOutcome = Arc<Mutex<Option<Result<(), iptables::Error>>>>;

/// How long tasks get to end by themselves at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Running {
    /// Stops the servers, watches and the iptables reconciler, which removes its rules.
    ///
    /// # Errors
    /// [`Error::Iptables`] when the rules could not be removed.
    pub async fn stop(self) -> Result<(), Error> {
        let sup = &self.nmi.supervisor;
        // Cancel first: nothing that ends from here on counts as a failure, and requests still
        // waiting are answered 503 `Retry-After: 1` before the servers drain (2 s).
        sup.shutdown_token().cancel();
        for s in &self.servers {
            s.stop(true).await;
        }
        sup.shutdown(SHUTDOWN_GRACE).await;
        if let Some(outcome) = self.iptables_outcome {
            let taken = outcome
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            match taken {
                Some(r) => r?,
                None => tracing::error!("iptables task did not finish its cleanup"),
            }
        }
        Ok(())
    }

    /// Resolves when a supervised task has died for good.
    pub async fn died(&self) -> Death {
        self.nmi.supervisor.died().await
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })
}

fn local(l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, Error> {
    l.local_addr()
        .map_err(|source| Error::Bind { addr, source })
}

/// Starts NMI: the watches on `client`, the token endpoint, probes, metrics and (when enabled)
/// the iptables reconciler, each a supervised task. Returns once everything is listening.
///
/// # Errors
/// [`Error`] when an address cannot be bound or the state cannot be assembled.
pub fn start(
    settings: &NmiSettings,
    client: kube::Client,
    source: Arc<dyn TokenSource>,
    metrics: &crate::metrics::Metrics,
) -> Result<Running, Error> {
    let nmi = Arc::new(Nmi::new(settings, source, metrics)?);
    let sup = nmi.supervisor.clone();
    {
        let (client, node, pods) = (client.clone(), settings.node.clone(), Arc::clone(&nmi.pods));
        let synced = Arc::clone(&nmi.synced_changed);
        let pod_list_errors = metrics
            .kubernetes_api_operations_errors_count
            .with_label_values(&[crate::metrics::K8S_GET_POD_LIST]);
        sup.spawn_until_shutdown("watch-pods", move || {
            watchers::watch_pods(
                client.clone(),
                node.clone(),
                Arc::clone(&pods),
                Arc::clone(&synced),
                Some(pod_list_errors.clone()),
            )
        });
    }
    {
        let (client, exceptions) = (client.clone(), Arc::clone(&nmi.exceptions));
        let synced = Arc::clone(&nmi.synced_changed);
        sup.spawn_until_shutdown("watch-exceptions", move || {
            watchers::watch_exceptions(client.clone(), Arc::clone(&exceptions), Arc::clone(&synced))
        });
    }
    if let Some(a) = &nmi.assignments {
        let (client, node, a, cache) = (
            client.clone(),
            settings.node.clone(),
            Arc::clone(a),
            Arc::clone(&nmi.cache),
        );
        let synced = Arc::clone(&nmi.synced_changed);
        sup.spawn_until_shutdown("watch-assigned-identities", move || {
            watchers::watch_assigned(
                client.clone(),
                node.clone(),
                Arc::clone(&a),
                Arc::clone(&cache),
                Arc::clone(&synced),
            )
        });
    }
    if let Some(sa) = &nmi.service_accounts {
        let (client, sa, cache) = (client.clone(), Arc::clone(sa), Arc::clone(&nmi.cache));
        let synced = Arc::clone(&nmi.synced_changed);
        sup.spawn_until_shutdown("watch-service-accounts", move || {
            watchers::watch_service_accounts(
                client.clone(),
                Arc::clone(&sa),
                Arc::clone(&cache),
                Arc::clone(&synced),
            )
        });
    }
    if let Some(c) = &nmi.catalog {
        let (client, c, cache) = (client.clone(), Arc::clone(c), Arc::clone(&nmi.cache));
        let synced = Arc::clone(&nmi.synced_changed);
        sup.spawn_until_shutdown("watch-catalog", move || {
            watchers::watch_catalog(
                client.clone(),
                Arc::clone(&c),
                Arc::clone(&cache),
                Arc::clone(&synced),
            )
        });
    }

    let main = bind(settings.listen)?;
    let probe = bind(settings.probe)?;
    let metrics_listener = bind(settings.metrics)?;
    let (nmi_addr, probe_addr, metrics_addr) = (
        local(&main, settings.listen)?,
        local(&probe, settings.probe)?,
        local(&metrics_listener, settings.metrics)?,
    );
    let bind_err = |addr| move |source| Error::Bind { addr, source };
    let servers = [
        (
            "http-token",
            crate::http::nmi::serve(main, Arc::clone(&nmi.http), settings.http_workers)
                .map_err(bind_err(nmi_addr))?,
        ),
        (
            "http-probes",
            probes::serve_health(probe, Arc::clone(&nmi.readiness) as Arc<dyn Readiness>)
                .map_err(bind_err(probe_addr))?,
        ),
        (
            "http-metrics",
            probes::serve_metrics(metrics_listener, metrics.registry().clone())
                .map_err(bind_err(metrics_addr))?,
        ),
    ];
    let handles = servers.iter().map(|(_, s)| s.handle()).collect();
    for (name, server) in servers {
        // A server owns its listener and cannot be restarted: if it ends, NMI is dead.
        sup.spawn_once(name, async move {
            if let Err(e) = server.await {
                tracing::error!(server = name, error = %e, "HTTP server failed");
            }
        });
    }

    let (rules_tx, rules_rx) = watch::channel(if settings.manage_iptables {
        iptables::RulesState::Unknown
    } else {
        iptables::RulesState::NotManaged
    });
    if let Some(taint_key) = &settings.node_gate {
        let gate_metrics = gate::GateMetrics::new(metrics, &settings.node)?;
        let (client, node, taint_key, broker, synced, token) = (
            client.clone(),
            settings.node.clone(),
            taint_key.clone(),
            Arc::clone(&nmi.broker),
            Arc::clone(&nmi.synced_changed),
            sup.shutdown_token(),
        );
        sup.spawn("node-gate", move || {
            let broker = Arc::clone(&broker);
            let inputs = gate::GateInputs {
                caches_synced: Arc::new(move || broker.caches_synced()),
                synced_changed: Arc::clone(&synced),
                rules: rules_rx.clone(),
            };
            gate::run(
                client.clone(),
                node.clone(),
                taint_key.clone(),
                inputs,
                Some(gate_metrics.clone()),
                token.clone(),
            )
        });
    }
    let iptables_outcome = settings.manage_iptables.then(|| {
        // As the original: when listening on every interface, redirect to localhost.
        let target_ip = if nmi_addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            nmi_addr.ip()
        };
        let ipt = iptables::Iptables::new(iptables::Redirect {
            metadata_ip: settings.metadata.ip(),
            metadata_port: settings.metadata.port(),
            target_ip,
            target_port: nmi_addr.port(),
        })
        .with_backend(settings.iptables_backend);
        let outcome: IptablesOutcome = Arc::new(Mutex::new(None));
        let (slot, reconcile_settings, ready, token) = (
            Arc::clone(&outcome),
            iptables::ReconcileSettings {
                interval: settings.ipt_update_interval,
                delete_conntrack: settings.enable_conntrack_deletion,
            },
            Arc::clone(&nmi.iptables_ready),
            sup.shutdown_token(),
        );
        sup.spawn("iptables", move || {
            let run = iptables::reconcile(
                ipt.clone(),
                reconcile_settings.clone(),
                Arc::clone(&ready),
                rules_tx.clone(),
                token.clone(),
            );
            let slot = Arc::clone(&slot);
            async move {
                let r = run.await;
                *slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
            }
        });
        outcome
    });
    tracing::info!(node = %settings.node, %nmi_addr, %probe_addr, %metrics_addr, mode = ?settings.mode, http_workers = settings.http_workers, tasks = ?sup.task_names(), "NMI started");
    Ok(Running {
        nmi_addr,
        probe_addr,
        metrics_addr,
        nmi,
        servers: handles,
        iptables_outcome,
    })
}

/// The `nmi` subcommand from its flags: refuses a kubenet node (unless
/// `--allow-network-plugin-kubenet`), builds the Kubernetes client (`--kubeconfig`, else
/// in-cluster or `$KUBECONFIG`) and the real token source (the metadata service at
/// `--metadata-ip:--metadata-port`; Azure AD at each identity's `adEndpoint`, else
/// `$AZURE_AUTHORITY_HOST`, else `https://login.microsoftonline.com/`), then [`run`].
///
/// # Errors
/// [`Error::Kubenet`] on a kubenet node; [`Error::Kube`] or [`Error::Cloud`] when a client
/// cannot be built; otherwise as [`run`].
pub async fn run_with_args(
    args: &crate::config::nmi::NmiArgs,
    metrics: crate::metrics::Metrics,
) -> Result<(), Error> {
    crate::config::compat::log_ignored(
        "nmi",
        &[args.log.klog.ignored(), args.compat.ignored()].concat(),
    );
    kubenet::check(&args.kubelet_config, args.allow_network_plugin_kubenet)?;
    let settings = NmiSettings::from_args(args);
    let client = kube_client(args).await?;
    let authority = std::env::var("AZURE_AUTHORITY_HOST")
        .unwrap_or_else(|_| cloud_source::DEFAULT_AUTHORITY.to_string());
    let source = cloud_source::CloudTokenSource::new(
        &settings.metadata.to_string(),
        client.clone(),
        authority,
        settings.token_fetch_timeout,
    )
    .map_err(|e| Error::Cloud(e.to_string()))?
    .with_allowed_authorities(args.allowed_ad_endpoints.iter().cloned())
    .with_user_agent(&user_agent(args))
    .with_metrics(&metrics);
    let source = if args.enable_federation {
        source.with_federation(
            federated::Federation::new(&args.federation_audience, &args.federation_tenant_id)
                .with_metrics(&metrics),
        )
    } else {
        source
    };
    run(settings, client, Arc::new(source), metrics).await
}

async fn kube_client(args: &crate::config::nmi::NmiArgs) -> Result<kube::Client, Error> {
    let options = crate::kube_client::ClientOptions {
        user_agent: user_agent(args),
        qps: None,
    };
    crate::kube_client::connect(args.kubeconfig.as_deref(), &options)
        .await
        .map_err(|e| Error::Kube(e.to_string()))
}

/// NMI's `User-Agent` for Kubernetes, the metadata service and Azure AD.
fn user_agent(args: &crate::config::nmi::NmiArgs) -> String {
    crate::version::user_agent(
        crate::version::Component::Nmi,
        args.compat.custom_user_agent.as_deref(),
    )
}

/// The `nmi` subcommand: starts NMI and runs until SIGTERM or SIGINT (or until a supervised
/// task dies for good), then removes the iptables rules and stops.
///
/// # Errors
/// [`Error`] when NMI cannot start, a task died ([`Error::Died`], so the process exits
/// non-zero and Kubernetes restarts it), or its rules cannot be removed.
pub async fn run(
    settings: NmiSettings,
    client: kube::Client,
    source: Arc<dyn TokenSource>,
    metrics: crate::metrics::Metrics,
) -> Result<(), Error> {
    let running = start(&settings, client, source, &metrics)?;
    let died = tokio::select! {
        () = wait_for_signal() => {
            tracing::info!("received termination signal, shutting down");
            None
        }
        death = running.died() => Some(death),
    };
    running.stop().await?;
    died.map_or(Ok(()), |d| Err(Error::Died(d)))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        nmi: crate::config::nmi::NmiArgs,
    }

    fn settings(flags: &[&str]) -> NmiSettings {
        let args = ["nmi", "--node=node-0"]
            .into_iter()
            .chain(flags.iter().copied());
        NmiSettings::from_args(&Cli::parse_from(args).nmi)
    }

    #[test]
    fn http_workers_default_to_the_cpus_the_process_may_use_and_a_given_count_is_kept() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(settings(&[]).http_workers, cpus);
        assert_eq!(settings(&["--http-workers=0"]).http_workers, cpus);
        assert_eq!(settings(&["--http-workers=1"]).http_workers, 1);
        assert_eq!(settings(&["--http-workers=3"]).http_workers, 3);
    }
}
