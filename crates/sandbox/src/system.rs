//! The whole system on one machine: the Kubernetes and Azure simulators, MIC, and one NMI per
//! simulated node, all on loopback, plus the scenario, the printed guide and live progress.
//!
//! With [`Placement::Processes`] (load tests) MIC and every NMI are processes of the product
//! binary instead ([`crate::processes`]). Otherwise everything runs in this process: the
//! simulators and NMIs on this actix system (their HTTP
//! servers on worker threads of their own), each MIC replica on a thread with its own actix
//! system ([`crate::mic_replicas`]). MIC and NMI run with the arguments of their workloads in
//! the simulated cluster ([`crate::components`]). Each NMI listens on its node's address
//! (127.2.x.y), and simulated pods have addresses in 127.1.0.0/16, so a request bound to a pod's
//! address is that pod's request, as iptables would deliver it on a real node.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tracing::{info, warn};

use super::args::{FaultProfile, SandboxArgs};
use super::component_files::ComponentFiles;
use super::components;
use super::control::Control;
use super::federation;
use super::mic_replicas::{MicReplicas, ReplicaList};
use super::scenario;
use crate::processes::{Component, Usage};
use aad_pod_identity::actors::nmi::cloud_source::CloudTokenSource;
use aad_pod_identity::actors::nmi::federated::DEFAULT_AUDIENCE;
use aad_pod_identity::actors::nmi::gate;
use aad_pod_identity::cloud::config::CloudConfig;
use aad_pod_identity::crd::AzureAssignedIdentity;
use aad_pod_identity::metrics::Metrics;
use aad_pod_identity::nmi::Running;
use aad_pod_identity_sim::azure::{
    AzureSim, AzureSimConfig, AzureSimHandle, Latency, ServicePrincipal,
};
use aad_pod_identity_sim::kube::cluster;
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig, KubeSimHandle};
use aad_pod_identity_sim::topology::NodeSpec;

/// Why the sandbox stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes simulator failed.
    #[error("Kubernetes simulator")]
    Kube(#[source] Box<aad_pod_identity_sim::kube::Error>),
    /// The Azure simulator failed.
    #[error("Azure simulator")]
    Azure(#[from] aad_pod_identity_sim::azure::Error),
    /// A Kubernetes call of the sandbox itself failed.
    #[error("{what}")]
    Api {
        /// What was being done.
        what: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The scenario could not be loaded.
    #[error("scenario")]
    Scenario(#[from] scenario::Error),
    /// A file could not be read or written.
    #[error("{path}")]
    File {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Azure layer refused the simulator's configuration.
    #[error("cloud configuration")]
    Cloud(#[from] aad_pod_identity::cloud::Error),
    /// NMI could not start.
    #[error("NMI on {node}: {message}")]
    Nmi {
        /// The node.
        node: String,
        /// What failed.
        message: String,
    },
    /// MIC could not start.
    #[error("MIC: {0}")]
    Mic(String),
    /// MIC's replicas could not start.
    #[error("MIC replicas")]
    MicReplicas(#[from] super::mic_replicas::Error),
    /// A flag for MIC or NMI was refused.
    #[error("component flags")]
    Components(#[from] components::Error),
    /// A component process could not start.
    #[error("component process")]
    Process(#[from] crate::processes::Error),
    /// A signal handler could not be installed.
    #[error("signal handling")]
    Signal(#[source] std::io::Error),
    /// `add_node` was called more often than `--add-node` reserved instances.
    #[error("no spare scale-set instance left to join (one per --add-node)")]
    NoSpareNode,
    /// The simulated API server refused the joining node.
    #[error("node {node} cannot join: {message}")]
    Join {
        /// The node.
        node: String,
        /// What the API server said.
        message: String,
    },
}

impl From<aad_pod_identity_sim::kube::Error> for Error {
    fn from(e: aad_pod_identity_sim::kube::Error) -> Self {
        Self::Kube(Box::new(e))
    }
}

/// Where MIC and the NMIs run.
#[derive(Clone, Debug, Default)]
pub enum Placement {
    /// In this process (the sandbox command, tests).
    #[default]
    InProcess,
    /// As processes of the product binary `bin`, with their files and logs in `dir`; MIC's
    /// Deployment then has no replica in this process.
    Processes {
        /// The `aad-pod-identity` binary.
        bin: PathBuf,
        /// One log per component (azure.json and the kubeconfig are kept elsewhere, in a
        /// private directory: this one is a report's and holds no secret).
        dir: PathBuf,
        /// Extra flags for `mic`.
        mic_flags: Vec<String>,
    },
}

/// CPU time and memory of each component process.
#[derive(Clone, Debug, Default)]
pub struct ComponentUsage {
    /// MIC's, when it runs as a process.
    pub mic: Option<Usage>,
    /// Each NMI's that runs as a process, by node.
    pub nmis: BTreeMap<String, Usage>,
}

/// The running world, for tests and for the command.
pub struct Sandbox {
    /// The Kubernetes simulator.
    pub kube: KubeSimHandle,
    /// The Azure simulator (shared with the weather and progress tasks).
    pub azure: Arc<AzureSimHandle>,
    /// NMI token endpoint per node.
    pub nmi: BTreeMap<String, SocketAddr>,
    /// Probe and metrics addresses of a MIC replica that ran when the sandbox started (the
    /// first by pod name; the one the load tests scrape, which with one replica is MIC's).
    /// [`Sandbox::mic_replicas`] has every running replica.
    pub mic_endpoints: (SocketAddr, SocketAddr),
    /// NMI probe and metrics addresses per node.
    pub nmi_endpoints: BTreeMap<String, (SocketAddr, SocketAddr)>,
    /// Metrics registry of that replica.
    pub mic_metrics: Metrics,
    /// A service principal with a secret for workloads (type-1 AzureIdentities); MIC's own
    /// is another.
    pub workload_service_principal: ServicePrincipal,
    /// The control endpoint (faults injected at run time, ARM's request log).
    pub control: Control,
    /// The `--federated` demonstration, when on.
    pub federation: Option<federation::Demo>,
    nmis: Vec<Running>,
    nmi_processes: Vec<Component>,
    mic: MicReplicas,
    mic_process: Option<Box<Component>>,
    placement: Placement,
    /// The kubeconfig MIC's replicas read and, for MIC processes, azure.json; removed on
    /// stop (and on drop).
    files: ComponentFiles,
    /// NMI's container arguments (from its DaemonSet).
    nmi_args: Vec<String>,
    /// The flags of those arguments after the sandbox's own (`--nmi-arg`s and federation's), for
    /// NMI processes, which the sandbox starts with its own flags for the node.
    nmi_extra: Vec<String>,
    weather: Option<tokio::task::JoinHandle<()>>,
    /// Scale-set instances that exist in Azure but have not joined the cluster yet.
    spare: std::collections::VecDeque<NodeSpec>,
    /// Node IPs handed out so far (the next joining node gets the next one).
    node_ips: u32,
    client: kube::Client,
    nmi_port: u16,
    nmi_assignment_wait: Option<Duration>,
    node_gate: bool,
}

fn azure_config(args: &SandboxArgs) -> AzureSimConfig {
    let mut c = AzureSimConfig {
        arm_latency: match args.arm_latency {
            d if d.is_zero() => Latency::None,
            d => Latency::Uniform {
                min: d.mul_f64(0.8),
                max: d.mul_f64(1.2),
            },
        },
        // WorkloadIdentityCredential (like every Azure SDK) insists on HTTPS for Azure AD.
        tls: args.federated,
        ..AzureSimConfig::default()
    };
    match args.faults {
        // A small write budget: bursts of PATCHes are answered 429 with Retry-After.
        FaultProfile::Throttling => c.write_budget = Some((4, Duration::from_secs(10))),
        FaultProfile::SlowArm => {
            c.arm_latency = Latency::Uniform {
                min: Duration::from_secs(4),
                max: Duration::from_secs(6),
            };
        }
        // The others are injected on a schedule (crate::weather).
        _ => {}
    }
    c
}

impl Sandbox {
    /// Starts everything in this process and loads the scenario; returns once every component
    /// is serving.
    pub async fn start(args: &SandboxArgs) -> Result<Self, Error> {
        Self::start_with(args, Placement::InProcess).await
    }

    /// Starts everything, MIC and NMIs where `placement` says, and loads the scenario; returns
    /// once every component is serving.
    pub async fn start_with(args: &SandboxArgs, placement: Placement) -> Result<Self, Error> {
        let epoch = std::time::Instant::now();
        let topology = args.topology();
        // Azure has the instances `--add-node` will bring in already (a scale-out creates the
        // VM before its kubelet registers the node); Kubernetes has only the joined ones.
        let mut azure_topology = topology.clone();
        let spare_count = u32::try_from(args.add_node.len()).unwrap_or(u32::MAX);
        if let Some(ss) = azure_topology.scale_sets.first_mut() {
            ss.instances += spare_count;
        }
        let joined: std::collections::BTreeSet<String> =
            topology.nodes().into_iter().map(|n| n.name).collect();
        let spare = azure_topology
            .nodes()
            .into_iter()
            .filter(|n| !joined.contains(&n.name))
            .collect();
        let kube = KubeSim::start(KubeSimConfig {
            topology: topology.clone(),
            job_pod_run_time: args.job_run_time,
            cron_speedup: args.cron_speedup,
            // One thread for the API server: a real one runs on the control plane's cores, this
            // one on the cores of every simulated node's NMI. On one thread a write and the watch
            // streams it wakes take turns where they are; on two, each write woke watchers on
            // the other thread too, and the burst load test's wake-up p99 was twice as long.
            workers: 1,
            ..KubeSimConfig::default()
        })
        .await?;
        let azure = Arc::new(AzureSim::start(&azure_topology, azure_config(args)).await?);
        let control =
            Control::start(&azure, kube.fault_handle(), epoch).map_err(|source| Error::File {
                path: "the control endpoint's listener".into(),
                source,
            })?;
        let client = kube.client().await?;
        let federation = if args.federated {
            Some(federation::setup(&azure, kube.issuer())?)
        } else {
            None
        };

        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let manifests: Vec<CustomResourceDefinition> = match &args.crds {
            None => aad_pod_identity::crd::all_crds()
                .into_iter()
                .map(|f| f.crd)
                .collect(),
            Some(path) => read_crds(path)?,
        };
        for crd in &manifests {
            crds.create(&PostParams::default(), crd)
                .await
                .map_err(|source| Error::Api {
                    what: "creating the CRDs",
                    source,
                })?;
        }

        // MIC's and NMI's workloads as the chart installs them; their arguments are what the
        // replicas and node agents below run with.
        let mut nmi_extra = args.components.nmi_args.clone();
        if let Some(demo) = &federation {
            demo.add_nmi_args(&mut nmi_extra);
        }
        let nmi_args = components::nmi_container_args(&nmi_extra)?;
        let mic_args =
            components::mic_container_args(args.unassign_grace_period, &args.components.mic_args)?;
        let nmi_ds: k8s_openapi::api::apps::v1::DaemonSet =
            serde_json::from_value(components::nmi_daemonset(&nmi_args))
                .expect("a valid DaemonSet");
        Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(
            client.clone(),
            components::NAMESPACE,
        )
        .create(&PostParams::default(), &nmi_ds)
        .await
        .map_err(|source| Error::Api {
            what: "creating NMI's DaemonSet",
            source,
        })?;
        let in_process_replicas = match placement {
            Placement::InProcess => args.components.mic_replicas,
            Placement::Processes { .. } => 0,
        };
        let mic_deployment: k8s_openapi::api::apps::v1::Deployment =
            serde_json::from_value(components::mic_deployment(in_process_replicas, &mic_args))
                .expect("a valid Deployment");
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(
            client.clone(),
            components::NAMESPACE,
        )
        .create(&PostParams::default(), &mic_deployment)
        .await
        .map_err(|source| Error::Api {
            what: "creating MIC's Deployment",
            source,
        })?;

        // MIC's replicas, one per Running MIC pod, with the simulator's azure.json; they read
        // the API server through a kubeconfig of their own, as separate pods would.
        let files = ComponentFiles::create("sandbox", &kube).map_err(file_error)?;
        let mic_kubeconfig = files.kubeconfig();
        let cloud = CloudConfig::from_json(&azure.azure_json().to_string())?;
        let mic = MicReplicas::start(client.clone(), mic_kubeconfig.clone(), cloud)?;
        let (mic_process, mic_endpoints, mic_metrics) = match &placement {
            Placement::InProcess => {
                let first = mic
                    .wait_for(
                        args.components.mic_replicas as usize,
                        Duration::from_secs(60),
                    )
                    .await?
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Mic("no MIC replica started".into()))?;
                (None, (first.probe, first.metrics_addr), first.metrics)
            }
            Placement::Processes {
                bin,
                dir,
                mic_flags,
            } => {
                // Beside the kubeconfig, never in `dir`: that is the report's, and azure.json
                // holds the simulated service principal's secret.
                let cloudconfig = files.write_cloudconfig(&azure).map_err(file_error)?;
                let mut flags = vec![
                    format!("--leader-election-namespace={}", components::NAMESPACE),
                    format!(
                        "--unassign-grace-period={}ms",
                        args.unassign_grace_period.as_millis()
                    ),
                ];
                flags.extend(args.components.mic_args.iter().cloned());
                flags.extend(mic_flags.iter().cloned());
                let c =
                    crate::processes::start_mic(bin, dir, &mic_kubeconfig, &cloudconfig, &flags)
                        .await?;
                let endpoints = (c.probe, c.metrics);
                (Some(Box::new(c)), endpoints, Metrics::new())
            }
        };
        let workload_service_principal = azure
            .add_service_principal_secret(&[azure.tenant_id()], &uuid::Uuid::new_v4().to_string());

        // One NMI per node, on the node's own address.
        let mut sandbox = Self {
            kube,
            azure,
            nmi: BTreeMap::new(),
            mic_endpoints,
            nmi_endpoints: BTreeMap::new(),
            mic_metrics,
            workload_service_principal,
            control,
            federation,
            nmis: Vec::new(),
            nmi_processes: Vec::new(),
            mic,
            mic_process,
            placement,
            files,
            nmi_args,
            nmi_extra,
            weather: None,
            spare,
            node_ips: u32::try_from(joined.len()).unwrap_or(u32::MAX),
            client: client.clone(),
            nmi_port: args.nmi_port,
            nmi_assignment_wait: args.nmi_assignment_wait,
            node_gate: args.node_gate,
        };
        for node in &joined {
            sandbox.start_nmi(node).await?;
        }
        let azure = sandbox.azure.clone();

        // The scenario last, so every component sees it arrive.
        let mut identities = azure.identities();
        // The federated demonstration's identity is its own, never the scenario's.
        identities.retain(|i| i.name != federation::IDENTITY);
        identities.sort_by(|a, b| a.name.cmp(&b.name));
        let text = match &args.scenario {
            Some(path) => {
                let raw = std::fs::read_to_string(path).map_err(|source| Error::File {
                    path: path.display().to_string(),
                    source,
                })?;
                scenario::fill_placeholders(&raw, &identities)?
            }
            None => scenario::default_scenario(&identities)?,
        };
        let created = scenario::apply(&client, scenario::parse_documents(&text)?).await?;
        info!(objects = created.len(), "scenario loaded");
        if let Some(demo) = &sandbox.federation {
            let created =
                scenario::apply(&client, scenario::parse_documents(&demo.scenario())?).await?;
            info!(objects = created.len(), "federation scenario loaded");
        }

        sandbox.weather = crate::weather::spawn(args.faults, azure, sandbox.kube.fault_handle());
        Ok(sandbox)
    }

    /// Starts the NMI of `node` (already in the cluster): on the node's own address, tokens
    /// from the node's metadata service, the node gate on when the sandbox runs with it.
    ///
    /// # Errors
    /// [`Error::Nmi`] or [`Error::Api`] when the node cannot be read or NMI cannot start.
    pub async fn start_nmi(&mut self, node: &str) -> Result<SocketAddr, Error> {
        self.start_nmi_on(node, self.nmi_port).await
    }

    async fn start_nmi_on(&mut self, node: &str, port: u16) -> Result<SocketAddr, Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let n = nodes.get(node).await.map_err(|source| Error::Api {
            what: "reading a node",
            source,
        })?;
        let failed = |message: String| Error::Nmi {
            node: node.to_string(),
            message,
        };
        let ip = node_ip(&n).ok_or_else(|| failed("the node has no InternalIP".into()))?;
        let imds = self.azure.imds_addr(node)?;
        if let Placement::Processes { bin, dir, .. } = &self.placement {
            let (c, addr) = crate::processes::start_nmi(
                bin,
                dir,
                &self.files.kubeconfig(),
                &crate::processes::NmiNode {
                    node,
                    ip,
                    imds,
                    assignment_wait: self.nmi_assignment_wait.unwrap_or(Duration::from_secs(80)),
                    port,
                    flags: &self.nmi_extra,
                },
            )
            .await?;
            self.nmi.insert(node.to_string(), addr);
            self.nmi_endpoints
                .insert(node.to_string(), (c.probe, c.metrics));
            self.nmi_processes.push(c);
            return Ok(addr);
        }
        let mut s = components::nmi_settings(&self.nmi_args, node, ip, port, imds)?;
        if let Some(wait) = self.nmi_assignment_wait {
            s.assignment_wait = wait;
        }
        s.node_gate = self.node_gate.then(|| gate::DEFAULT_TAINT_KEY.to_string());
        let mut source = CloudTokenSource::new(
            &imds.to_string(),
            self.client.clone(),
            self.azure.aad_endpoint(),
            Duration::from_secs(30),
        )
        .map_err(|e| failed(e.to_string()))?;
        let metrics = Metrics::new();
        // `--enable-federation` in NMI's arguments (the `--federated` demonstration puts it
        // there) also gives the token source its federation, as the `nmi` binary does.
        if let Some(f) = components::nmi_federation(&self.nmi_args, node)? {
            source = source.with_federation(f.with_metrics(&metrics));
        }
        let running =
            aad_pod_identity::nmi::start(&s, self.client.clone(), Arc::new(source), &metrics)
                .map_err(|e| failed(e.to_string()))?;
        let addr = running.nmi_addr;
        self.nmi.insert(node.to_string(), addr);
        self.nmi_endpoints
            .insert(node.to_string(), (running.probe_addr, running.metrics_addr));
        self.nmis.push(running);
        Ok(addr)
    }

    /// A scale-out: the next spare instance of the first scale set joins the cluster as a
    /// Ready node, with the node gate's startup taint when the sandbox runs with the gate (as
    /// a node pool configured for it registers its nodes). Its NMI is not started: call
    /// [`Sandbox::start_nmi`] when it should come up. Returns the node's name.
    ///
    /// # Errors
    /// [`Error::NoSpareNode`] when every instance `--add-node` reserved has joined;
    /// [`Error::Kube`] when the node cannot be created.
    pub fn add_node(&mut self) -> Result<String, Error> {
        let spec = self.spare.pop_front().ok_or(Error::NoSpareNode)?;
        self.node_ips += 1;
        let ip = cluster::nth_address(&self.kube.config().node_ip_range, self.node_ips);
        let mut obj = cluster::node_object(&spec, ip);
        if self.node_gate {
            obj["spec"]["taints"] = json!([{
                "key": gate::DEFAULT_TAINT_KEY, "value": "true", "effect": gate::TAINT_EFFECT,
            }]);
        }
        let nodes = self
            .kube
            .store()
            .registry()
            .preferred("", "nodes")
            .expect("nodes are built in");
        self.kube
            .store()
            .create(&nodes, "", obj)
            .map_err(|e| Error::Join {
                node: spec.name.clone(),
                message: e.to_string(),
            })?;
        info!(node = %spec.name, %ip, gated = self.node_gate, "node joined");
        Ok(spec.name)
    }

    /// Hands over the MIC process of [`Placement::Processes`] (the chaos scenario kills and
    /// restarts it itself); `None` in process, or once taken. [`Sandbox::usage`] no longer
    /// reports it.
    pub fn take_mic_process(&mut self) -> Option<Component> {
        self.mic_process.take().map(|c| *c)
    }

    /// Stops the NMI process of `node` (SIGTERM and up to `grace` to finish, as the kubelet
    /// stops a pod; SIGKILL at once with `grace` zero, as when its node vanishes) and forgets
    /// its endpoints. Returns its token endpoint, or `None` when no NMI process serves `node`.
    pub async fn stop_nmi_process(&mut self, node: &str, grace: Duration) -> Option<SocketAddr> {
        let name = format!("nmi-{node}");
        let i = self.nmi_processes.iter().position(|c| c.name == name)?;
        let c = self.nmi_processes.swap_remove(i);
        if grace.is_zero() {
            c.stop().await;
        } else {
            c.terminate(grace).await;
        }
        self.nmi_endpoints.remove(node);
        self.nmi.remove(node)
    }

    /// Restarts the NMI process of `node` on the same token endpoint (pods reach it through
    /// iptables at a fixed port): SIGTERM with `grace`, then a new process, ready when this
    /// returns.
    ///
    /// # Errors
    /// [`Error::Nmi`] when no NMI process served `node`; the errors of [`Sandbox::start_nmi`].
    pub async fn restart_nmi_process(
        &mut self,
        node: &str,
        grace: Duration,
    ) -> Result<SocketAddr, Error> {
        let old = self
            .stop_nmi_process(node, grace)
            .await
            .ok_or_else(|| Error::Nmi {
                node: node.to_string(),
                message: "no NMI process runs there".into(),
            })?;
        self.start_nmi_on(node, old.port()).await
    }

    /// The kubeconfig MIC and the NMIs read (the simulated API server's).
    #[must_use]
    pub fn component_kubeconfig(&self) -> PathBuf {
        self.files.kubeconfig()
    }

    /// The azure.json MIC's processes read, in the same private directory (written only when
    /// MIC runs as processes).
    #[must_use]
    pub fn component_cloudconfig(&self) -> PathBuf {
        self.files.cloudconfig()
    }

    /// The running MIC replicas (one per Running MIC pod).
    #[must_use]
    pub fn mic_replicas(&self) -> ReplicaList {
        self.mic.list()
    }

    /// The `--endpoints-out` document: every simulated endpoint and every component's address.
    /// `mic` is the replica of [`Sandbox::mic_endpoints`] while it runs, else the first running
    /// one; `micReplicas` names every running replica by its pod.
    #[must_use]
    pub fn endpoints(&self, kubeconfig: Option<&str>) -> serde_json::Value {
        let replicas = self.mic.views();
        let endpoints = |probe: SocketAddr, metrics: SocketAddr| {
            json!({
                "healthz": format!("http://{probe}/healthz"),
                "metrics": format!("http://{metrics}/metrics"),
            })
        };
        let mic = replicas
            .iter()
            .find(|r| r.probe == self.mic_endpoints.0)
            .or(replicas.first())
            .map_or_else(
                || endpoints(self.mic_endpoints.0, self.mic_endpoints.1),
                |r| endpoints(r.probe, r.metrics_addr),
            );
        let mut azure = self.azure.endpoints();
        azure["workloadServicePrincipal"] = json!({
            "clientID": self.workload_service_principal.client_id,
            "tenantID": self.azure.tenant_id(),
            "secret": self.workload_service_principal.secret,
        });
        json!({
            "kubernetes": {"server": self.kube.base_url(), "kubeconfig": kubeconfig},
            "control": format!("http://{}", self.control.addr),
            "azure": azure,
            "mic": mic,
            "micReplicas": replicas.iter().map(|r| (r.pod.clone(), endpoints(r.probe, r.metrics_addr)))
                .collect::<serde_json::Map<_, _>>(),
            "nmi": self.nmi.iter().map(|(node, addr)| {
                let (probe, metrics) = self.nmi_endpoints[node];
                (node.clone(), json!({
                    "token": format!("http://{addr}"),
                    "healthz": format!("http://{probe}/healthz"),
                    "metrics": format!("http://{metrics}/metrics"),
                }))
            }).collect::<serde_json::Map<_, _>>(),
        })
    }

    /// CPU time and memory of each component that runs as a process.
    pub fn usage(&mut self) -> ComponentUsage {
        ComponentUsage {
            mic: self.mic_process.as_mut().map(|c| c.usage()),
            nmis: self
                .nmi_processes
                .iter_mut()
                .map(|c| (c.name.trim_start_matches("nmi-").to_string(), c.usage()))
                .collect(),
        }
    }

    /// Stops every component, NMIs first.
    pub async fn stop(self) {
        for n in self.nmis {
            if let Err(e) = n.stop().await {
                warn!(error = %e, "NMI stop");
            }
        }
        for c in self.nmi_processes {
            c.stop().await;
        }
        if let Some(c) = self.mic_process {
            c.stop().await;
        }
        self.mic.stop().await;
        self.control.stop().await;
        drop(self.files);
        if let Some(w) = self.weather {
            w.abort();
            let _ = w.await;
        }
        // Every task holding the simulator has ended, so this is the last reference.
        if let Ok(azure) = Arc::try_unwrap(self.azure) {
            azure.shutdown().await;
        }
        self.kube.shutdown().await;
    }
}

fn file_error((path, source): (PathBuf, std::io::Error)) -> Error {
    Error::File {
        path: path.display().to_string(),
        source,
    }
}

fn node_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()
}

/// Waits (on the pod watch, no polling) for a Running pod matching `labels` (in `namespace`,
/// else anywhere) that is not a Job's (those finish within seconds), and returns (namespace,
/// name, node, ip).
async fn first_running_pod(
    client: &kube::Client,
    namespace: Option<&str>,
    labels: &str,
) -> Option<(String, String, String, String)> {
    let pods: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let cfg = watcher::Config::default().labels(labels);
    let mut stream = watcher::watcher(pods, cfg).boxed();
    while let Some(event) = stream.next().await {
        let pods = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => vec![p],
            Ok(_) => continue,
            Err(_) => return None,
        };
        for p in pods {
            let status = p.status.as_ref();
            let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
            let ip = status.and_then(|s| s.pod_ip.clone());
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let of_job = p
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "Job");
            if let (true, false, Some(ip), Some(node)) = (running, of_job, ip, node) {
                return Some((
                    p.metadata.namespace.unwrap_or_default(),
                    p.metadata.name.unwrap_or_default(),
                    node,
                    ip,
                ));
            }
        }
    }
    None
}

/// Count, mean and the bucket bound under which 95% fall, of MIC's assignment latency.
fn assignment_latency(metrics: &Metrics) -> Option<(u64, f64, f64)> {
    let family = metrics
        .registry()
        .gather()
        .into_iter()
        .find(|f| f.name() == "aadpodidentity_mic_assignment_latency_seconds")?;
    let h = family.get_metric().first()?.get_histogram();
    let count = h.get_sample_count();
    if count == 0 {
        return None;
    }
    let target = (count as f64 * 0.95).ceil() as u64;
    let p95 = h
        .get_bucket()
        .iter()
        .find(|b| b.cumulative_count() >= target)
        .map_or(f64::INFINITY, |b| b.upper_bound());
    Some((count, h.get_sample_sum() / count as f64, p95))
}

/// How many of `pods` are Running.
pub(crate) fn running(pods: &[Pod]) -> usize {
    pods.iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count()
}

/// One line of progress, from the simulators' own state and the leading MIC replica's metrics.
async fn progress_line(
    client: &kube::Client,
    azure: &AzureSimHandle,
    mic: &ReplicaList,
) -> Option<String> {
    let pods: Api<Pod> = Api::all(client.clone());
    let aai: Api<AzureAssignedIdentity> = Api::all(client.clone());
    let lp = ListParams::default().labels(aad_pod_identity::crd::POD_LABEL);
    let pods = pods.list(&lp).await.ok()?;
    let running = running(&pods.items);
    let list = aai.list(&ListParams::default()).await.ok()?;
    let assigned = list.items.iter().filter(|a| a.is_assigned()).count();
    let c = azure.counters();
    let patches: u64 = c.patches.values().sum();
    let gets: u64 = c.gets.values().sum();
    let latency = mic
        .leader()
        .and_then(|l| assignment_latency(&l.metrics))
        .map_or_else(String::new, |(n, mean, p95)| {
            format!(" | assignment latency: mean {mean:.2}s, p95 <= {p95}s over {n}")
        });
    Some(format!(
        "pods with identities: {} ({} running) | AzureAssignedIdentities: {} ({} Assigned){} | ARM: {} PATCH, {} GET, {} throttled | tokens issued by Azure: {}",
        pods.items.len(),
        running,
        list.items.len(),
        assigned,
        latency,
        patches,
        gets,
        c.throttled,
        c.imds_tokens + c.aad_tokens,
    ))
}

/// `aad-pod-identity-sandbox`: start, print the guide, show progress until Ctrl-C or SIGTERM.
pub async fn run(args: SandboxArgs) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before anything is announced, so a SIGTERM right after start is handled.
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut sandbox = Sandbox::start(&args).await?;
    let kubeconfig = match &args.kubeconfig_out {
        Some(p) => {
            sandbox.kube.write_kubeconfig(p)?;
            Some(p.display().to_string())
        }
        None => None,
    };
    // Written again whenever an NMI or a MIC replica starts or stops.
    let write_endpoints = |sandbox: &Sandbox| -> Result<(), Error> {
        let Some(p) = &args.endpoints_out else {
            return Ok(());
        };
        let doc = sandbox.endpoints(kubeconfig.as_deref());
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        std::fs::write(p, format!("{text}\n")).map_err(|source| Error::File {
            path: p.display().to_string(),
            source,
        })
    };
    write_endpoints(&sandbox)?;
    println!("AAD Pod Identity sandbox is running (Ctrl-C stops it).");
    println!("  Kubernetes API: {}", sandbox.kube.base_url());
    match &kubeconfig {
        Some(p) => println!("  kubeconfig:     {p}   (export KUBECONFIG={p})"),
        None => println!("  kubeconfig:     pass --kubeconfig-out PATH to write one"),
    }
    println!("  Azure (ARM):    {}", sandbox.azure.arm_endpoint());
    for r in sandbox.mic.views() {
        println!("  MIC {}: http://{}/healthz", r.pod, r.probe);
    }
    for (node, addr) in &sandbox.nmi {
        println!("  NMI {node}: http://{addr}");
    }
    if let Some(p) = &args.endpoints_out {
        println!("  endpoints:      {}", p.display());
    }

    let client = sandbox.kube.client().await?;
    let progress = {
        let client = client.clone();
        let azure = sandbox.azure.clone();
        let mic = sandbox.mic.list();
        let demo = sandbox.federation.clone();
        tokio::spawn(async move {
            let (mut last, mut last_federated) = (String::new(), String::new());
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                if let Some(line) = progress_line(&client, &azure, &mic).await
                    && line != last
                {
                    println!("[progress] {line}");
                    last = line;
                }
                if let Some(demo) = &demo
                    && let Some(line) = demo.progress(&client, &azure).await
                    && line != last_federated
                {
                    println!("[federation] {line}");
                    last_federated = line;
                }
            }
        })
    };
    let federated_guide = sandbox.federation.clone().map(|demo| {
        let client = client.clone();
        let nmi = sandbox.nmi.clone();
        let aad_tls = sandbox.azure.arm_endpoint_tls().unwrap_or_default();
        let ca = sandbox
            .azure
            .ca_cert_path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        tokio::spawn(async move {
            let Some((ns, name, node, ip)) = first_running_pod(
                &client,
                Some(federation::NAMESPACE),
                "app=federated-app",
            )
            .await
            else {
                return;
            };
            let Some(addr) = nmi.get(&node) else { return };
            let cid = &demo.identity.client_id;
            println!();
            println!(
                "A token of a federated identity (on no scale set) as pod {ns}/{name} (address {ip}, node {node}), with the unmodified SDK:"
            );
            println!(
                "  AZURE_POD_IDENTITY_AUTHORITY_HOST=http://{addr} python3 tests/nmi_sdk.py {ip} {cid} https://management.azure.com/.default"
            );
            println!(
                "The same identity through WorkloadIdentityCredential (service-account token file, Azure AD at the simulator):"
            );
            println!(
                "  kubectl create token {sa} -n {ns} --audience {DEFAULT_AUDIENCE} --duration 10m > /tmp/federated-token",
                sa = federation::SERVICE_ACCOUNT
            );
            println!(
                "  AZURE_CLIENT_ID={cid} AZURE_TENANT_ID={tenant} AZURE_FEDERATED_TOKEN_FILE=/tmp/federated-token AZURE_AUTHORITY_HOST={aad_tls} REQUESTS_CA_BUNDLE={ca} SCOPE=https://management.azure.com/.default python3 tests/judges/workload_identity.py",
                tenant = demo.tenant_id
            );
            println!();
        })
    });
    let guide = {
        let client = client.clone();
        let nmi = sandbox.nmi.clone();
        let mut identities = sandbox.azure.identities();
        // The federated demonstration's identity is its own, never the scenario's.
        identities.retain(|i| i.name != federation::IDENTITY);
        identities.sort_by(|a, b| a.name.cmp(&b.name));
        let client_id = identities
            .first()
            .map(|i| i.client_id.clone())
            .unwrap_or_default();
        tokio::spawn(async move {
            // The federated demonstration's pods have a guide of their own.
            let labels = format!("{0},{0}!=federated", aad_pod_identity::crd::POD_LABEL);
            let Some((ns, name, node, ip)) = first_running_pod(&client, None, &labels).await else {
                return;
            };
            let Some(addr) = nmi.get(&node) else { return };
            println!();
            println!("Fetch a token as pod {ns}/{name} (address {ip}, node {node}):");
            println!(
                "  curl -s --interface {ip} -H Metadata:true 'http://{addr}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/&client_id={client_id}'"
            );
            println!(
                "With Azure's Python SDK (pip install azure-identity), from the repository root:"
            );
            println!(
                "  AZURE_POD_IDENTITY_AUTHORITY_HOST=http://{addr} python3 tests/nmi_sdk.py {ip} {client_id} https://management.azure.com/.default"
            );
            println!();
        })
    };

    // Scale-outs (`--add-node`): the node joins after its delay, its NMI comes up
    // `--nmi-start-delay` later.
    enum Step {
        Join,
        StartNmi(String),
    }
    let (steps, mut next_step) = tokio::sync::mpsc::unbounded_channel();
    for delay in &args.add_node {
        let steps = steps.clone();
        let delay = *delay;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = steps.send(Step::Join);
        });
    }
    let mut mic_changes = sandbox.mic.changes();
    mic_changes.mark_unchanged();
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r.map_err(Error::Signal)?; break; }
            _ = term.recv() => break,
            Ok(()) = mic_changes.changed() => {
                let pods: Vec<String> = sandbox.mic.views().into_iter()
                    .map(|r| if r.leading() { format!("{} (leading)", r.pod) } else { r.pod }).collect();
                println!("[mic] replicas: {}", pods.join(", "));
                if let Err(e) = write_endpoints(&sandbox) {
                    warn!(error = %e, "cannot update the endpoints document");
                }
            }
            Some(step) = next_step.recv() => match step {
                Step::Join => match sandbox.add_node() {
                    Ok(node) => {
                        let gate = if args.node_gate {
                            format!("tainted {}; ", gate::DEFAULT_TAINT_KEY)
                        } else {
                            "no startup taint; ".into()
                        };
                        println!("[scale-out] node {node} joined ({gate}its NMI starts in {:?})", args.nmi_start_delay);
                        let steps = steps.clone();
                        let delay = args.nmi_start_delay;
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = steps.send(Step::StartNmi(node));
                        });
                    }
                    Err(e) => warn!(error = %e, "scale-out failed"),
                },
                Step::StartNmi(node) => match sandbox.start_nmi(&node).await {
                    Ok(addr) => {
                        // The endpoints document names the new NMI too.
                        if let Err(e) = write_endpoints(&sandbox) {
                            warn!(error = %e, "cannot update the endpoints document");
                        }
                        println!("[scale-out] NMI {node}: http://{addr}{}", if args.node_gate { " (it lifts the taint once its caches are synced)" } else { "" })
                    }
                    Err(e) => warn!(error = %e, "NMI of the new node failed to start"),
                },
            },
        }
    }
    println!("shutting down");
    progress.abort();
    guide.abort();
    let _ = progress.await;
    let _ = guide.await;
    if let Some(g) = federated_guide {
        g.abort();
        let _ = g.await;
    }
    sandbox.stop().await;
    Ok(())
}

/// The CustomResourceDefinitions of a multi-document YAML file.
fn read_crds(path: &std::path::Path) -> Result<Vec<CustomResourceDefinition>, Error> {
    let bad = |e: String| Error::File {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::File {
        path: path.display().to_string(),
        source,
    })?;
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let v = <serde_json::Value as serde::Deserialize>::deserialize(doc)
                .map_err(|e| bad(e.to_string()))?;
            serde_json::from_value(v).map_err(|e| bad(e.to_string()))
        })
        .filter(|r: &Result<CustomResourceDefinition, Error>| {
            r.as_ref().map_or(true, |c| {
                !c.metadata.name.as_deref().unwrap_or("").is_empty()
            })
        })
        .collect()
}
