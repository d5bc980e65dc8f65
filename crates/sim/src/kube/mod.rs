//! An in-memory Kubernetes API server over real HTTP that kube-rs and kubectl accept unchanged.
//!
//! The simulator owns: the object [`store`] (JSON objects, one resourceVersion counter, watch
//! history), the resource [`resources`] registry (built-ins plus whatever CRDs declare), the
//! REST protocol in [`http`] and [`watch`] (bodies in JSON, YAML or, as kubectl's typed clients
//! send them, protobuf: [`protobuf`]), the Table rendering kubectl asks for in [`table`],
//! discovery and OpenAPI in [`discovery`], taints and tolerations in [`taints`], and a small
//! cluster in [`cluster`] (scheduler, kubelet, workload controllers, taint eviction) so the
//! seed's Deployments, DaemonSets, Jobs and CronJobs turn into running pods with loopback IPs;
//! CronJob schedules are read (and refused) as the API server reads them in [`schedule`];
//! service-account tokens (TokenRequest) are signed, and their issuer's OpenID discovery and
//! key set published, in [`sa_token`]. Tests
//! and the sandbox start it with [`KubeSim::start`] and get a [`KubeSimHandle`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), aad_pod_identity_sim::kube::Error> {
//! use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig};
//! let sim = KubeSim::start(KubeSimConfig::default()).await?; // 127.0.0.1:<free port>
//! let client = sim.client().await?; // kube-rs, from the same kubeconfig kubectl gets
//! sim.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?;
//! sim.fail_next(1, 429); // fault hooks: also drop_watches(), set_latency(), fault_handle()
//! # drop(client);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Not simulated: authentication and RBAC (every request is allowed), admission webhooks,
//! OpenAPI schemas (kubectl validates on the server side, which accepts any fields), pod
//! logs/exec, Services/endpoints behaviour, graceful pod termination (pods are removed at
//! once unless finalizers hold them), foreground deletion (treated as background), and
//! managedFields (server-side apply is approximated as create-or-merge).

pub mod cluster;
pub mod convert;
pub mod discovery;
pub mod eviction;
pub mod faults;
pub mod http;
pub mod meta;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod sa_token;
pub mod schedule;
pub mod schema;
pub mod selector;
pub mod store;
pub mod table;
pub mod taints;
pub mod watch;
pub mod wire;
pub mod writes;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::topology::Topology;
pub use faults::{Faults, Refusal, WriteRefusal};
pub use meta::ApiError;
use resources::Registry;
use store::Store;

/// What can go wrong starting or driving the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be bound.
    #[error("cannot bind the Kubernetes simulator to {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pod IP range is not a usable block inside 127.0.0.0/8.
    #[error("pod IP range {0} must be a block of at least 4 addresses inside 127.0.0.0/8")]
    PodRange(String),
    /// Writing a file (kubeconfig, endpoints) failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Building a kube client from the simulator's kubeconfig failed.
    #[error("cannot build a kube client for the simulator")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Seeding the initial objects failed.
    #[error("cannot seed the initial objects")]
    Seed(#[source] ApiError),
    /// Waiting for a shutdown signal failed.
    #[error("cannot listen for shutdown signals")]
    Signal(#[source] std::io::Error),
}

/// A block of loopback addresses pods get their IPs from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Block {
    /// First address of the block.
    pub base: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Ipv4Block {
    /// Parses `a.b.c.d/n`; it must lie inside 127.0.0.0/8 and hold at least 4 addresses.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::PodRange(s.to_string());
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) || base.octets()[0] != 127 {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            base: Ipv4Addr::from(u32::from(base) & mask),
            prefix,
        })
    }

    /// Number of addresses in the block.
    #[must_use]
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }
}

impl std::fmt::Display for Ipv4Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// How to run a simulator.
#[derive(Clone, Debug)]
pub struct KubeSimConfig {
    /// Where to listen; port 0 picks a free port.
    pub bind: SocketAddr,
    /// The nodes (and their Azure providerIDs) created Ready at start.
    pub topology: Topology,
    /// Pod IPs are allocated from this block (default 127.1.0.0/16).
    pub pod_ip_range: Ipv4Block,
    /// Node InternalIPs are allocated from this block (default 127.2.0.0/16).
    pub node_ip_range: Ipv4Block,
    /// How long a Job's pod runs before it succeeds.
    pub job_pod_run_time: Duration,
    /// Simulated cron time runs this many times faster than real time (1 = real time).
    pub cron_speedup: u32,
    /// Events kept per resource for watches; older resourceVersions get 410 Gone.
    pub watch_history: usize,
    /// Interval between watch bookmarks (when the client allows them).
    pub bookmark_interval: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Whether to run the scheduler, kubelet and workload controllers.
    pub run_cluster: bool,
    /// HTTP worker threads.
    pub workers: usize,
    /// The service-account token issuer (`iss` of tokens, `issuer` of the discovery document);
    /// `None` is the simulator's own URL, so relying parties fetch discovery from it.
    pub service_account_issuer: Option<String>,
}

impl Default for KubeSimConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            topology: Topology::default(),
            pod_ip_range: Ipv4Block {
                base: Ipv4Addr::new(127, 1, 0, 0),
                prefix: 16,
            },
            node_ip_range: Ipv4Block {
                base: Ipv4Addr::new(127, 2, 0, 0),
                prefix: 16,
            },
            job_pod_run_time: Duration::from_secs(5),
            cron_speedup: 1,
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(30),
            max_body_bytes: 3 * 1024 * 1024,
            run_cluster: true,
            workers: 2,
            service_account_issuer: None,
        }
    }
}

/// When each client (by `User-Agent`) sent its requests, so tests can check who called and how
/// fast. Bounded: the last [`ClientLog::KEEP`] arrivals of at most [`ClientLog::AGENTS`] agents.
#[derive(Debug, Default)]
pub struct ClientLog {
    arrivals: std::sync::Mutex<
        std::collections::HashMap<String, std::collections::VecDeque<std::time::Instant>>,
    >,
}

impl ClientLog {
    /// Arrivals kept per agent.
    pub const KEEP: usize = 10_000;
    /// Agents tracked.
    pub const AGENTS: usize = 256;

    fn record(&self, user_agent: &str) {
        let now = std::time::Instant::now();
        let mut map = self
            .arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !map.contains_key(user_agent) && map.len() >= Self::AGENTS {
            return;
        }
        let q = map.entry(user_agent.to_string()).or_default();
        if q.len() == Self::KEEP {
            q.pop_front();
        }
        q.push_back(now);
    }

    /// Arrival times by `User-Agent` (empty string: no header).
    #[must_use]
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, Vec<std::time::Instant>> {
        self.arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().copied().collect()))
            .collect()
    }
}

/// State shared by the HTTP workers and the cluster tasks.
#[derive(Debug)]
pub struct Shared {
    /// The objects.
    pub store: Arc<Store>,
    /// Served resources.
    pub registry: Arc<Registry>,
    /// Injected faults.
    pub faults: Faults,
    /// The configuration the simulator runs with.
    pub config: KubeSimConfig,
    /// Cancelled on shutdown; ends watches and cluster tasks.
    pub shutdown: CancellationToken,
    /// Signs service-account tokens and publishes their keys.
    pub issuer: sa_token::Issuer,
    /// Requests by `User-Agent`.
    pub clients: ClientLog,
    /// Write requests by object.
    pub writes: writes::WriteLog,
}

/// Starts simulators.
#[derive(Debug)]
pub struct KubeSim;

impl KubeSim {
    /// Binds, seeds namespaces and nodes, starts the cluster tasks and serves until
    /// [`KubeSimHandle::shutdown`].
    pub async fn start(config: KubeSimConfig) -> Result<KubeSimHandle, Error> {
        // Simulated addresses must never leave loopback, whoever built the config.
        for block in [config.pod_ip_range, config.node_ip_range] {
            Ipv4Block::parse(&block.to_string())?;
        }
        let registry = Arc::new(Registry::default());
        let store = Arc::new(Store::new(registry.clone(), config.watch_history));
        seed(&store, &registry, &config).map_err(Error::Seed)?;
        let listener = std::net::TcpListener::bind(config.bind).map_err(|source| Error::Bind {
            addr: config.bind,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.bind,
            source,
        })?;
        let shared = Arc::new(Shared {
            store,
            registry,
            faults: Faults::default(),
            config: config.clone(),
            shutdown: CancellationToken::new(),
            issuer: sa_token::Issuer::new(
                config
                    .service_account_issuer
                    .clone()
                    .unwrap_or_else(|| format!("http://{addr}")),
            ),
            clients: ClientLog::default(),
            writes: writes::WriteLog::default(),
        });
        let server = http::server(shared.clone(), listener).map_err(|source| Error::Bind {
            addr: config.bind,
            source,
        })?;
        let serving = Serving {
            handle: server.handle(),
            task: tokio::spawn(server),
        };
        let cluster_task = if config.run_cluster {
            Some(cluster::spawn(shared.clone()))
        } else {
            None
        };
        tracing::info!(%addr, "Kubernetes simulator listening");
        Ok(KubeSimHandle {
            addr,
            shared,
            server: Arc::new(tokio::sync::Mutex::new(Some(serving))),
            cluster_task,
        })
    }
}

fn seed(store: &Store, registry: &Registry, config: &KubeSimConfig) -> Result<(), ApiError> {
    let ns = registry
        .get("", "v1", "namespaces")
        .expect("namespaces are built in");
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        store.create(&ns, "", json!({"metadata": {"name": name}}))?;
    }
    let sa = registry
        .get("", "v1", "serviceaccounts")
        .expect("serviceaccounts are built in");
    for name in ["default", "kube-system"] {
        store.create(&sa, name, json!({"metadata": {"name": "default"}}))?;
    }
    let nodes = registry.get("", "v1", "nodes").expect("nodes are built in");
    for (i, n) in config.topology.nodes().into_iter().enumerate() {
        let ip = cluster::nth_address(&config.node_ip_range, i as u32 + 1);
        store.create(&nodes, "", cluster::node_object(&n, ip))?;
    }
    Ok(())
}

/// A running simulator.
#[derive(Debug)]
pub struct KubeSimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Arc<tokio::sync::Mutex<Option<Serving>>>,
    cluster_task: Option<tokio::task::JoinHandle<()>>,
}

impl KubeSimHandle {
    /// The socket address served.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The configuration this simulator runs with.
    #[must_use]
    pub fn config(&self) -> &KubeSimConfig {
        &self.shared.config
    }

    /// The store, for in-process inspection (benchmarks, tests).
    #[must_use]
    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }

    /// The service-account token issuer URL (the `iss` of every token from TokenRequest).
    #[must_use]
    pub fn issuer(&self) -> &str {
        self.shared.issuer.url()
    }

    /// Signs `claims` as they are with the issuer's key. Tests use it to make tokens a real
    /// issuer could have made but TokenRequest refuses to (expired, another audience).
    ///
    /// # Errors
    /// When the issuer's key cannot be made.
    pub fn sign_service_account_token(
        &self,
        claims: &serde_json::Value,
    ) -> Result<String, ApiError> {
        self.shared.issuer.sign(claims)
    }

    /// A kubeconfig pointing kubectl and kube-rs at this simulator (no credentials, plain HTTP).
    #[must_use]
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: aad-pod-identity-sandbox\n  cluster:\n    server: {}\ncontexts:\n- name: sandbox\n  context:\n    cluster: aad-pod-identity-sandbox\n    user: sandbox\n    namespace: default\ncurrent-context: sandbox\nusers:\n- name: sandbox\n  user: {{}}\npreferences: {{}}\n",
            self.base_url()
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), Error> {
        std::fs::write(path, self.kubeconfig_yaml()).map_err(|source| Error::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// A kube-rs client built from the kubeconfig.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml())
            .map_err(|e| Error::Client(Box::new(e)))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| Error::Client(Box::new(e)))?;
        kube::Client::try_from(config).map_err(|e| Error::Client(Box::new(e)))
    }

    /// When each client sent its API requests, by `User-Agent`.
    #[must_use]
    pub fn requests_by_user_agent(
        &self,
    ) -> std::collections::BTreeMap<String, Vec<std::time::Instant>> {
        self.shared.clients.snapshot()
    }

    /// A handle on the faults of this simulator that tasks can hold (and clone) while the
    /// simulator runs, e.g. a schedule of faults in the sandbox.
    #[must_use]
    pub fn fault_handle(&self) -> KubeFaultHandle {
        KubeFaultHandle {
            addr: self.addr,
            shared: self.shared.clone(),
            server: self.server.clone(),
        }
    }

    /// Write requests received, by object and in total.
    #[must_use]
    pub fn writes(&self) -> &writes::WriteLog {
        &self.shared.writes
    }

    /// Ends every open watch now (clients see the stream close and must resume).
    pub fn drop_watches(&self) {
        self.shared.faults.drop_watches();
    }

    /// Answers the next `n` API requests with `status` (e.g. 410, 429, 500) as a Status object.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.shared.faults.fail_next(n, status);
    }

    /// Adds `latency` to every API request (zero removes it).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.faults.set_latency(latency);
    }

    /// Stops serving: ends watches and cluster tasks, then the HTTP server.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        if let Some(t) = self.cluster_task {
            let _ = t.await;
        }
        if let Some(serving) = self.server.lock().await.take() {
            serving.stop().await;
        }
    }
}

/// The HTTP server while it serves.
#[derive(Debug)]
struct Serving {
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Serving {
    async fn stop(self) {
        // Not graceful: idle keep-alive connections would otherwise hold the workers for the
        // whole shutdown timeout, and nothing is in flight worth waiting for once watches end.
        self.handle.stop(false).await;
        let _ = self.task.await;
    }
}

/// Faults of a running simulator, for tasks that inject them on a schedule. Cloning is cheap;
/// a clone outliving [`KubeSimHandle::shutdown`] injects into a stopped server, harmlessly.
#[derive(Clone, Debug)]
pub struct KubeFaultHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Arc<tokio::sync::Mutex<Option<Serving>>>,
}

impl KubeFaultHandle {
    /// The request-level faults (failures, latency, refusals, watch drops).
    #[must_use]
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Forgets the watch history, as an etcd compaction does: every watch resumed from an
    /// earlier resourceVersion gets a 410 `Expired` ERROR event ("too old resource version")
    /// and its client must list again. Combine with [`Faults::drop_watches`] to make every
    /// watcher resume now.
    pub fn compact_history(&self) {
        self.shared.store.compact();
    }

    /// An API server restart: every connection (watches, keep-alive) is cut at once, new
    /// connections are refused for `down`, then the server serves again on the same address
    /// with everything it stored. Returns once it serves again.
    ///
    /// # Errors
    /// [`Error::Bind`] when the address cannot be bound again (the simulator then stays down).
    pub async fn restart(&self, down: Duration) -> Result<(), Error> {
        let mut slot = self.server.lock().await;
        if self.shared.shutdown.is_cancelled() {
            return Ok(());
        }
        self.shared.faults.drop_watches();
        if let Some(serving) = slot.take() {
            serving.stop().await;
        }
        tracing::info!(addr = %self.addr, ?down, "Kubernetes simulator restarting");
        tokio::time::sleep(down).await;
        let bind_err = |source| Error::Bind {
            addr: self.addr,
            source,
        };
        // SO_REUSEADDR: the connections just cut linger in TIME_WAIT on this port.
        let socket = tokio::net::TcpSocket::new_v4().map_err(bind_err)?;
        socket.set_reuseaddr(true).map_err(bind_err)?;
        socket.bind(self.addr).map_err(bind_err)?;
        let listener = socket
            .listen(1024)
            .map_err(bind_err)?
            .into_std()
            .map_err(bind_err)?;
        let server = http::server(self.shared.clone(), listener).map_err(bind_err)?;
        *slot = Some(Serving {
            handle: server.handle(),
            task: tokio::spawn(server),
        });
        tracing::info!(addr = %self.addr, "Kubernetes simulator serving again");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_simulator_refuses_addresses_outside_loopback() {
        let config = KubeSimConfig {
            pod_ip_range: Ipv4Block {
                base: Ipv4Addr::new(10, 0, 0, 0),
                prefix: 16,
            },
            ..KubeSimConfig::default()
        };
        assert!(matches!(
            KubeSim::start(config).await,
            Err(Error::PodRange(_))
        ));
    }

    #[test]
    fn pod_ranges_must_be_loopback_blocks() {
        let b = Ipv4Block::parse("127.1.0.0/16").unwrap();
        assert_eq!(b.size(), 65536);
        assert_eq!(
            Ipv4Block::parse("127.1.2.3/24").unwrap().base,
            Ipv4Addr::new(127, 1, 2, 0)
        );
        assert!(Ipv4Block::parse("10.0.0.0/8").is_err());
        assert!(Ipv4Block::parse("127.0.0.0/31").is_err());
        assert!(Ipv4Block::parse("nonsense").is_err());
    }
}
