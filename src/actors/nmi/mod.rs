//! NMI, the node agent: answers pods' token requests in the metadata service's own format.
//!
//! Owners, one per module:
//! - [`pods`] — this node's pods by IP (pod watcher is the only writer);
//! - [`assignments`] — per-pod identities from AzureAssignedIdentities, one `watch` per pod;
//! - [`managed`] — bindings and identities for `--operation-mode managed`;
//! - [`exceptions`] — AzurePodIdentityExceptions;
//! - [`cache`] — tokens per (identity, resource), single flight, refresh before expiry;
//! - [`broker`] — the per-request flow (pod → identity → authorization → cache);
//! - [`watchers`] — the Kubernetes watch loops feeding the indexes;
//! - [`iptables`] — the `aad-metadata` redirect.
//!
//! The watch loops are plain tasks that each own one index; HTTP workers read the indexes
//! directly, so a token request costs no mailbox hop. [`start`] wires everything and returns the
//! bound addresses; [`run`] is the `nmi` subcommand (start, then wait for SIGTERM/SIGINT).

pub mod assignments;
pub mod broker;
pub mod cache;
pub mod cloud_source;
pub mod exceptions;
pub mod identity;
pub mod iptables;
pub mod managed;
pub mod metrics;
pub mod pods;
pub mod source;
pub mod upstream_metrics;
pub mod watchers;

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
use source::TokenSource;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
    /// `--ipt-update-interval-sec`.
    pub ipt_update_interval: Duration,
    /// `--enable-conntrack-deletion`.
    pub enable_conntrack_deletion: bool,
    /// HTTP worker threads of the token endpoint.
    pub http_workers: usize,
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
            assignment_wait: args.assignment_deadline(),
            assigned_grace: args.assigned_grace(),
            pod_arrival_timeout: args.pod_arrival_timeout,
            block_instance_metadata: args.block_instance_metadata,
            metadata_header_required: args.metadata_header_required,
            set_retry_after_header: args.set_retry_after_header,
            token_refresh_margin: args.token_refresh_margin,
            token_fetch_timeout: Duration::from_secs(30),
            manage_iptables: args.manage_iptables,
            ipt_update_interval: args.ipt_update_interval,
            enable_conntrack_deletion: args.enable_conntrack_deletion,
            http_workers: std::thread::available_parallelism().map_or(2, usize::from),
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
            assignment_wait: Duration::from_secs(16 * 5),
            assigned_grace: Duration::from_secs(4 * 5),
            pod_arrival_timeout: Duration::from_secs(2),
            block_instance_metadata: false,
            metadata_header_required: true,
            set_retry_after_header: false,
            token_refresh_margin: Duration::from_secs(300),
            token_fetch_timeout: Duration::from_secs(30),
            manage_iptables: false,
            ipt_update_interval: Duration::from_secs(60),
            enable_conntrack_deletion: false,
            http_workers: 2,
        }
    }
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
    Proxy(#[from] reqwest::Error),
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
}

/// NMI's readiness: caches synced and (when managed) iptables rules in place.
pub struct NmiReadiness {
    broker: Arc<Broker>,
    iptables_ready: Arc<AtomicBool>,
}

impl Readiness for NmiReadiness {
    fn is_ready(&self) -> bool {
        self.broker.caches_synced() && self.iptables_ready.load(Ordering::Acquire)
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
}

impl Nmi {
    /// Assembles NMI's state for `settings`, fetching tokens from `source`, registering metrics
    /// next to the shared ones in `metrics`.
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
        let metrics = NmiMetrics::new(metrics, &settings.node)?;
        let pods = Arc::new(PodIndex::new(settings.node.clone()));
        let exceptions = Arc::new(ExceptionIndex::new());
        let cache = Arc::new(TokenCache::new(
            source,
            settings.token_refresh_margin,
            settings.token_fetch_timeout,
            Some(metrics.clone()),
        ));
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
        let broker = Arc::new(Broker::new(
            Arc::clone(&pods),
            feed,
            Arc::clone(&exceptions),
            Arc::clone(&cache),
            BrokerSettings {
                node: settings.node.clone(),
                mic_namespace: settings.mic_namespace.clone(),
                assignment_wait: settings.assignment_wait,
                assigned_grace: settings.assigned_grace,
                pod_arrival_timeout: settings.pod_arrival_timeout,
            },
            Some(metrics.clone()),
        ));
        let proxy = Proxy::new(
            format!("http://{}", settings.metadata),
            settings.token_fetch_timeout,
        )?;
        let http = Arc::new(NmiHttp {
            broker: Arc::clone(&broker),
            proxy,
            settings: HttpSettings {
                block_instance_metadata: settings.block_instance_metadata,
                metadata_header_required: settings.metadata_header_required,
                set_retry_after_header: settings.set_retry_after_header,
            },
            metrics: Some(metrics),
        });
        let iptables_ready = Arc::new(AtomicBool::new(!settings.manage_iptables));
        let readiness = Arc::new(NmiReadiness {
            broker: Arc::clone(&broker),
            iptables_ready: Arc::clone(&iptables_ready),
        });
        Ok(Self {
            pods,
            assignments,
            catalog,
            exceptions,
            cache,
            broker,
            http,
            readiness,
            iptables_ready,
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
    /// The state (indexes, readiness).
    pub nmi: Arc<Nmi>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    servers: Vec<actix_web::dev::ServerHandle>,
    iptables: Option<JoinHandle<Result<(), iptables::Error>>>,
}

impl Running {
    /// Stops the servers and watches and removes the iptables rules.
    ///
    /// # Errors
    /// [`Error::Iptables`] when the rules could not be removed.
    pub async fn stop(self) -> Result<(), Error> {
        self.shutdown.cancel();
        for s in &self.servers {
            s.stop(true).await;
        }
        for t in &self.tasks {
            t.abort();
        }
        if let Some(ipt) = self.iptables {
            match ipt.await {
                Ok(r) => r?,
                Err(e) => tracing::error!(error = %e, "iptables task failed"),
            }
        }
        Ok(())
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
/// the iptables reconciler. Returns once everything is listening.
///
/// # Errors
/// [`Error`] when an address cannot be bound or the state cannot be assembled.
pub fn start(
    settings: &NmiSettings,
    client: kube::Client,
    source: Arc<dyn TokenSource>,
    metrics: &crate::metrics::Metrics,
) -> Result<Running, Error> {
    let source: Arc<dyn TokenSource> =
        Arc::new(upstream_metrics::Metered::new(source, metrics.clone()));
    let nmi = Arc::new(Nmi::new(settings, source, metrics)?);
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let node = settings.node.clone();
    tasks.push(tokio::spawn(watchers::watch_pods(
        client.clone(),
        node.clone(),
        Arc::clone(&nmi.pods),
        Some(
            metrics
                .kubernetes_api_operations_errors_count
                .with_label_values(&[crate::metrics::K8S_GET_POD_LIST]),
        ),
    )));
    tasks.push(tokio::spawn(watchers::watch_exceptions(
        client.clone(),
        Arc::clone(&nmi.exceptions),
    )));
    if let Some(a) = &nmi.assignments {
        tasks.push(tokio::spawn(watchers::watch_assigned(
            client.clone(),
            node,
            Arc::clone(a),
            Arc::clone(&nmi.cache),
        )));
    }
    if let Some(c) = &nmi.catalog {
        tasks.push(tokio::spawn(watchers::watch_catalog(
            client,
            Arc::clone(c),
            Arc::clone(&nmi.cache),
        )));
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
    let servers = vec![
        crate::http::nmi::serve(main, Arc::clone(&nmi.http), settings.http_workers)
            .map_err(bind_err(nmi_addr))?,
        probes::serve_health(probe, Arc::clone(&nmi.readiness) as Arc<dyn Readiness>)
            .map_err(bind_err(probe_addr))?,
        probes::serve_metrics(metrics_listener, metrics.registry().clone())
            .map_err(bind_err(metrics_addr))?,
    ];
    let handles = servers.iter().map(actix_web::dev::Server::handle).collect();
    for s in servers {
        tasks.push(tokio::spawn(async move {
            if let Err(e) = s.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }));
    }

    let iptables = settings.manage_iptables.then(|| {
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
        });
        tokio::spawn(iptables::reconcile(
            ipt,
            settings.ipt_update_interval,
            settings.enable_conntrack_deletion,
            Arc::clone(&nmi.iptables_ready),
            shutdown.clone(),
        ))
    });
    tracing::info!(node = %settings.node, %nmi_addr, %probe_addr, %metrics_addr, mode = ?settings.mode, "NMI started");
    Ok(Running {
        nmi_addr,
        probe_addr,
        metrics_addr,
        nmi,
        shutdown,
        tasks,
        servers: handles,
        iptables,
    })
}

/// The `nmi` subcommand from its flags: builds the Kubernetes client (`--kubeconfig`, else
/// in-cluster or `$KUBECONFIG`) and the real token source (the metadata service at
/// `--metadata-ip:--metadata-port`; Azure AD at each identity's `adEndpoint`, else
/// `$AZURE_AUTHORITY_HOST`, else `https://login.microsoftonline.com/`), then [`run`].
///
/// # Errors
/// [`Error::Kube`] or [`Error::Cloud`] when a client cannot be built; otherwise as [`run`].
pub async fn run_with_args(
    args: &crate::config::nmi::NmiArgs,
    metrics: crate::metrics::Metrics,
) -> Result<(), Error> {
    crate::config::compat::log_ignored(
        "nmi",
        &[
            args.log.klog.ignored(),
            args.compat.ignored(),
            args.nmi_compat.ignored(),
        ]
        .concat(),
    );
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
    .with_user_agent(&user_agent(args))
    .with_metrics(&metrics);
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

/// The `nmi` subcommand: starts NMI and runs until SIGTERM or SIGINT, then removes the iptables
/// rules and stops.
///
/// # Errors
/// [`Error`] when NMI cannot start or its rules cannot be removed.
pub async fn run(
    settings: NmiSettings,
    client: kube::Client,
    source: Arc<dyn TokenSource>,
    metrics: crate::metrics::Metrics,
) -> Result<(), Error> {
    let running = start(&settings, client, source, &metrics)?;
    wait_for_signal().await;
    tracing::info!("received termination signal, shutting down");
    running.stop().await
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
