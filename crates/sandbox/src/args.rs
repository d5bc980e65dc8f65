//! Flags of `aad-pod-identity-sandbox`: the size and the weather of the simulated world.

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

use aad_pod_identity::config::parse_go_duration;

use aad_pod_identity_sim::topology::Topology;

/// Options of the sandbox.
#[derive(Clone, Debug, Args)]
pub struct SandboxArgs {
    /// Write a kubeconfig for kubectl and kube-rs clients here.
    #[arg(long = "kubeconfig-out", env = "SANDBOX_KUBECONFIG_OUT")]
    pub kubeconfig_out: Option<PathBuf>,

    /// Write a JSON document naming every simulated endpoint here.
    #[arg(long = "endpoints-out", env = "SANDBOX_ENDPOINTS_OUT")]
    pub endpoints_out: Option<PathBuf>,

    /// Number of VM scale sets.
    #[arg(long = "scale-sets", default_value_t = 1)]
    pub scale_sets: u32,

    /// Nodes (instances) per scale set.
    #[arg(long = "nodes-per-scale-set", default_value_t = 2)]
    pub nodes_per_scale_set: u32,

    /// Standalone VMs (availability-set nodes), in addition to the scale sets.
    #[arg(long = "vms", default_value_t = 0)]
    pub vms: u32,

    /// User-assigned identities that exist in the simulated Azure.
    #[arg(long = "identities", default_value_t = 5)]
    pub identities: u32,

    /// Kubernetes YAML to load instead of the seed's scenario. `<ResourceID of az-id-1>`-style
    /// placeholders and `${IDENTITY_<n>_RESOURCE_ID}` / `${IDENTITY_<n>_CLIENT_ID}` /
    /// `${IDENTITY_<n>_NAME}` are filled with the sandbox's identities.
    #[arg(long = "scenario")]
    pub scenario: Option<PathBuf>,

    /// CustomResourceDefinition manifests to install instead of the generated ones, e.g. the
    /// original v1.8.17 chart's `crds/crd.yaml`, to try the system on a cluster upgraded from
    /// the original (Helm never upgrades CRDs).
    #[arg(long = "crds")]
    pub crds: Option<PathBuf>,

    /// Typical time of an ARM write, from its PATCH to the end of its operation (each takes 0.8
    /// to 1.2 times this; reads and polls are answered at once). Real scale sets take 40 to 60 s
    /// per write.
    #[arg(long = "arm-latency", default_value = "500ms", value_parser = parse_go_duration)]
    pub arm_latency: Duration,

    /// The weather: none; in Azure throttling (a small ARM write budget answering 429), flaky
    /// (a PATCH fails with 503 every 5 s), slow-arm (4 to 6 s per ARM write),
    /// patch-answer-lost, arm-error-bursts, throttle-storm, arm-hangs; in the Kubernetes API
    /// watch-drops, watch-expiry (410 on resume), api-restart, slow-writes, kube-write-errors;
    /// or chaos (all scheduled ones in turn). See docs/operations.md.
    #[arg(long = "faults", value_enum, default_value_t = FaultProfile::None)]
    pub faults: FaultProfile,

    /// How long a Job's pod runs before it succeeds.
    #[arg(long = "job-run-time", default_value = "5s", value_parser = parse_go_duration)]
    pub job_run_time: Duration,

    /// CronJob schedules run this many times faster than real time.
    #[arg(long = "cron-speedup", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub cron_speedup: u32,

    /// MIC's unassign grace period (see `mic --help`).
    #[arg(long = "unassign-grace-period", default_value = "60s", value_parser = parse_go_duration)]
    pub unassign_grace_period: Duration,

    /// How long NMI waits for a requested identity to be assigned before answering 404.
    /// Without it, NMI's own flags decide (`--retry-attempts-for-created` ×
    /// `--find-identity-retry-interval`, 16 × 5 s by default; see --nmi-arg).
    #[arg(long = "nmi-assignment-wait", value_parser = parse_go_duration)]
    pub nmi_assignment_wait: Option<Duration>,

    /// A scale-out: one more node of the first scale set joins this long after start (repeat
    /// the flag for more). It joins with the node gate's startup taint (see --node-gate), and
    /// its NMI starts --nmi-start-delay later, so the gate can be watched at work.
    #[arg(long = "add-node", value_parser = parse_go_duration)]
    pub add_node: Vec<Duration>,

    /// How long after a node joins at run time its NMI starts (image pull, start-up).
    #[arg(long = "nmi-start-delay", default_value = "5s", value_parser = parse_go_duration)]
    pub nmi_start_delay: Duration,

    /// Run every NMI with the node gate, and let nodes that join at run time carry its startup
    /// taint (`aadpodidentity.k8s.io/nmi-not-ready=true:NoSchedule`) until their NMI lifts it.
    /// `--node-gate=false` shows the race the gate closes: pods land before NMI runs.
    #[arg(long = "node-gate", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = true, default_missing_value = "true")]
    pub node_gate: bool,

    /// Port of every NMI (each node's NMI listens on the node's own loopback address); 0 picks
    /// a free port per node (the printed guide and the endpoints document say which).
    #[arg(long = "nmi-port", default_value_t = 2579)]
    pub nmi_port: u16,

    /// Also show workload identity federation: an identity never put on any scale set (its
    /// federated credential trusts the simulated cluster's issuer), pods in namespace
    /// `federated` using it through NMI (bound by an AzureIdentity annotated
    /// `aadpodidentity.k8s.io/federated`, and by workload identity's own labels), NMIs with
    /// `--enable-federation`, and Azure AD over HTTPS too (for WorkloadIdentityCredential).
    #[arg(long = "federated", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub federated: bool,

    #[command(flatten)]
    pub components: ComponentArgs,
}

/// MIC and NMI as a chart's values would configure them: MIC's replicas, and flags of either.
/// They appear in MIC's Deployment and NMI's DaemonSet in the simulated cluster, and every
/// replica and node agent runs with what those workloads say.
#[derive(Clone, Debug, Args)]
pub struct ComponentArgs {
    /// MIC replicas: pods of MIC's Deployment, each running one replica (leader-elected, named
    /// after its pod). `kubectl delete pod` of one stops its replica at once; the Deployment's
    /// replacement pod starts a new one.
    #[arg(long = "mic-replicas", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub mic_replicas: u32,

    /// A flag of `aad-pod-identity mic` for every MIC replica, e.g.
    /// `--mic-arg=--leader-election-duration=5s` (repeat for more). Addresses, ports, the
    /// kubeconfig and the cloud configuration are the sandbox's and refused here.
    #[arg(long = "mic-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub mic_args: Vec<String>,

    /// A flag of `aad-pod-identity nmi` for every node's NMI, e.g.
    /// `--nmi-arg=--block-instance-metadata` (repeat for more). Addresses, ports and the
    /// kubeconfig are the sandbox's and refused here.
    #[arg(long = "nmi-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub nmi_args: Vec<String>,
}

impl Default for ComponentArgs {
    /// One MIC replica, every flag at its default: the sandbox as it always ran.
    fn default() -> Self {
        Self {
            mic_replicas: 1,
            mic_args: Vec::new(),
            nmi_args: Vec::new(),
        }
    }
}

/// Fault profiles of the simulated Azure and Kubernetes API (the schedules are in
/// [`crate::weather`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum FaultProfile {
    /// A well-behaved Azure and API server.
    #[default]
    None,
    /// A small per-subscription write budget: bursts get 429 with Retry-After.
    Throttling,
    /// Every 5 s one PATCH fails with 503.
    Flaky,
    /// Every ARM answer takes 4 to 6 seconds.
    SlowArm,
    /// Every 10 s one PATCH is applied but its answer is lost (the connection closes).
    PatchAnswerLost,
    /// Every 20 s six ARM answers in a row are 500, 502, 503 or 504.
    ArmErrorBursts,
    /// Every 30 s the next ten ARM requests get 429 with `Retry-After: 3`.
    ThrottleStorm,
    /// Every 30 s one PATCH never answers.
    ArmHangs,
    /// Every 15 s every Kubernetes watch is cut.
    WatchDrops,
    /// Every 30 s the watch history is compacted and every watch cut (resumes get 410).
    WatchExpiry,
    /// Every 60 s the API server restarts (connections cut, refused for 3 s).
    ApiRestart,
    /// Every 20 s, Kubernetes writes take 1 s more for 10 s.
    SlowWrites,
    /// Every 20 s the next three AzureAssignedIdentity writes are refused (409, 422, 500).
    KubeWriteErrors,
    /// Every 10 s the next of all the scheduled faults above, in turn (except `flaky`).
    Chaos,
}

impl SandboxArgs {
    /// The simulated world these flags describe.
    #[must_use]
    pub fn topology(&self) -> Topology {
        Topology::sized(
            self.scale_sets,
            self.nodes_per_scale_set,
            self.vms,
            self.identities,
        )
    }
}
