//! Shared pieces of the MIC integration tests (`mic_sim`, `mic_faults`): a Kubernetes and an
//! Azure simulator on loopback with our CRDs, MIC replicas started against them through the real
//! ARM client, builders for identities, bindings and pods, and waits that poll as a user would.

#![allow(dead_code)]

use aad_pod_identity::actors::mic::cloud_port::CloudArm;
use aad_pod_identity::actors::mic::host::{HostId, IdentityId};
use aad_pod_identity::actors::mic::port::ArmPort;
use aad_pod_identity::actors::mic::{MicHandle, MicSettings};
use aad_pod_identity::cloud::config::CloudConfig;
use aad_pod_identity::crd::{
    self, AssignedState, AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding,
    AzureIdentityBindingSpec, AzureIdentitySpec,
};
use aad_pod_identity::metrics::Metrics;
use aad_pod_identity_sim::azure::{AzureSim, AzureSimConfig, AzureSimHandle, Latency, LroMode};
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig, KubeSimHandle};
use aad_pod_identity_sim::topology::Topology;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Cluster {
    pub sim: KubeSimHandle,
    pub azure: AzureSimHandle,
    pub client: Client,
    pub kubeconfig: PathBuf,
    pub topology: Topology,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "mic-test-{tag}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Azure with a fixed latency per ARM request and PATCHes that complete synchronously.
pub fn azure_with_latency(latency: Duration) -> AzureSimConfig {
    AzureSimConfig {
        arm_latency: Latency::Fixed(latency),
        lro: LroMode::Sync,
        ..AzureSimConfig::default()
    }
}

pub async fn cluster(tag: &str, topology: Topology, azure: AzureSimConfig) -> Cluster {
    let ours = crd::all_crds().into_iter().map(|f| f.crd).collect();
    cluster_with(tag, topology, azure, ours).await
}

pub async fn cluster_with(
    tag: &str,
    topology: Topology,
    azure: AzureSimConfig,
    crds: Vec<CustomResourceDefinition>,
) -> Cluster {
    let azure = AzureSim::start(&topology, azure).await.unwrap();
    let sim = KubeSim::start(KubeSimConfig {
        topology: topology.clone(),
        run_cluster: false,
        ..KubeSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempdir::Dir::new(tag);
    let kubeconfig = dir.0.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let client = sim.client().await.unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for c in crds {
        api.create(&PostParams::default(), &c).await.unwrap();
    }
    Cluster {
        sim,
        azure,
        client,
        kubeconfig,
        topology,
        _dir: dir,
    }
}

impl Cluster {
    /// The test's own temporary directory (removed with the cluster).
    pub fn dir(&self) -> &std::path::Path {
        &self._dir.0
    }

    pub fn cloud_config(&self) -> CloudConfig {
        CloudConfig::from_json(&self.azure.azure_json().to_string()).unwrap()
    }

    /// PATCHes the Azure simulator received.
    pub fn patches(&self) -> u64 {
        self.azure.counters().total_patches()
    }

    /// VM and scale-set GETs the Azure simulator received.
    pub fn gets(&self) -> u64 {
        self.azure.counters().gets.values().sum()
    }

    /// Records when each AzureAssignedIdentity is first seen Assigned, from a watch (so the
    /// test's own polling under load does not count).
    pub fn watch_assigned(
        &self,
    ) -> (
        Arc<std::sync::Mutex<BTreeMap<String, Instant>>>,
        tokio::task::JoinHandle<()>,
    ) {
        use futures::StreamExt as _;
        let seen = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let out = seen.clone();
        let api = Api::<AzureAssignedIdentity>::all(self.client.clone());
        let task = tokio::spawn(async move {
            let mut s =
                kube::runtime::watcher(api, kube::runtime::watcher::Config::default()).boxed();
            while let Some(ev) = s.next().await {
                if let Ok(
                    kube::runtime::watcher::Event::Apply(a)
                    | kube::runtime::watcher::Event::InitApply(a),
                ) = ev
                    && a.status.as_ref().map(|s| &s.status) == Some(&AssignedState::Assigned)
                {
                    out.lock()
                        .unwrap()
                        .entry(a.metadata.name.clone().unwrap_or_default())
                        .or_insert_with(Instant::now);
                }
            }
        });
        (seen, task)
    }

    /// Identities on scale set `i`, as the Azure simulator stores them.
    pub fn on_scale_set(&self, i: usize) -> BTreeSet<IdentityId> {
        self.azure
            .assigned_identities(&self.topology.scale_sets[i].name)
            .unwrap()
            .iter()
            .map(|id| IdentityId::new(id))
            .collect()
    }

    pub async fn shutdown(self) {
        self.sim.shutdown().await;
        self.azure.shutdown().await;
    }

    pub fn node(&self, i: usize) -> String {
        self.topology.nodes()[i].name.clone()
    }

    pub fn scale_set(&self, i: usize) -> HostId {
        HostId::scale_set(
            &self.topology.subscription_id,
            &self.topology.resource_group,
            &self.topology.scale_sets[i].name,
        )
    }

    pub fn identity_rid(&self, i: usize) -> String {
        self.topology
            .identity_resource_id(&self.topology.identities[i])
    }

    pub async fn identity(&self, name: &str, resource_id: &str) {
        let mut i = AzureIdentity::new(
            name,
            AzureIdentitySpec {
                resource_id: resource_id.into(),
                client_id: format!("client-{name}"),
                ..AzureIdentitySpec::default()
            },
        );
        i.metadata.namespace = Some("default".into());
        Api::<AzureIdentity>::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &i)
            .await
            .unwrap();
        let mut b = AzureIdentityBinding::new(
            &format!("{name}-binding"),
            AzureIdentityBindingSpec {
                azure_identity: name.into(),
                selector: name.into(),
                weight: 0,
            },
        );
        b.metadata.namespace = Some("default".into());
        Api::<AzureIdentityBinding>::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &b)
            .await
            .unwrap();
    }

    pub async fn pod(&self, name: &str, selector: &str, node: &str) {
        self.pod_in("default", name, selector, node).await;
    }

    /// A pod labelled `aadpodidbinding: <selector>` on `node`, in namespace `ns`.
    pub async fn pod_in(&self, ns: &str, name: &str, selector: &str, node: &str) {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"aadpodidbinding": selector}},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "demo"}]},
        }))
        .unwrap();
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &p)
            .await
            .unwrap();
    }

    pub async fn delete_pod(&self, name: &str) {
        Api::<Pod>::namespaced(self.client.clone(), "default")
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// Deletes node `name` (its pods stay, as a real API server leaves them to the node
    /// lifecycle controller).
    pub async fn delete_node(&self, name: &str) {
        Api::<k8s_openapi::api::core::v1::Node>::all(self.client.clone())
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// Waits until identity `i` is no longer on scale set `s`.
    pub async fn wait_gone_from_scale_set(&self, s: usize, i: usize, timeout: Duration) {
        let t0 = Instant::now();
        let id = IdentityId::new(&self.identity_rid(i));
        while self.on_scale_set(s).contains(&id) {
            assert!(
                t0.elapsed() < timeout,
                "identity {i} leaked on scale set {s}: {:?}",
                self.on_scale_set(s)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Adds identity `i` to scale set `s` through ARM, as someone other than MIC would.
    pub async fn add_by_hand(&self, s: usize, i: usize) {
        CloudArm::from_config(&self.cloud_config())
            .unwrap()
            .patch(
                &self.scale_set(s),
                &aad_pod_identity::actors::mic::port::HostIdentities::default(),
                &[IdentityId::new(&self.identity_rid(i))],
                &[],
            )
            .await
            .unwrap();
    }

    /// Waits (polling) until the pods whose AzureAssignedIdentity is Assigned are exactly `want`.
    pub async fn wait_assigned(&self, want: &[&str], timeout: Duration) {
        let mut want: Vec<String> = want.iter().map(|s| (*s).to_string()).collect();
        want.sort();
        let what = format!("{want:?} Assigned");
        self.wait_for(&what, timeout, |all| {
            let mut have: Vec<String> = all
                .iter()
                .filter(|a| a.status.as_ref().map(|s| &s.status) == Some(&AssignedState::Assigned))
                .map(|a| a.spec.pod.clone())
                .collect();
            have.sort();
            have == want
        })
        .await;
    }

    pub async fn assigned(&self) -> Vec<AzureAssignedIdentity> {
        Api::<AzureAssignedIdentity>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// Waits (polling the API, as a user would) until `pred` holds of the assigned identities
    /// (an API that does not answer counts as none).
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[AzureAssignedIdentity]) -> bool,
    ) -> Duration {
        let t0 = Instant::now();
        loop {
            // An API server being restarted by a test answers nothing for a while.
            let all = Api::<AzureAssignedIdentity>::all(self.client.clone())
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            if pred(&all) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "timed out waiting for {what}; have {:?}",
                all.iter()
                    .map(|a| (a.metadata.name.clone(), a.status.clone()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn all_assigned(n: usize) -> impl Fn(&[AzureAssignedIdentity]) -> bool {
    move |all| {
        all.len() == n
            && all
                .iter()
                .all(|a| a.status.as_ref().map(|s| &s.status) == Some(&AssignedState::Assigned))
    }
}

pub fn settings(c: &Cluster, instance: &str) -> MicSettings {
    let mut s = MicSettings::from(&mic_args());
    s.kubeconfig = Some(c.kubeconfig.clone());
    s.listen_address = [127, 0, 0, 1].into();
    s.http_probe_port = 0;
    s.prometheus_port = 0;
    s.leader.instance = instance.into();
    s.leader.duration = Duration::from_secs(2);
    s.batch.unassign_grace = Duration::from_secs(1);
    s
}

pub fn mic_args() -> aad_pod_identity::config::mic::MicArgs {
    mic_args_from(&[])
}

/// MIC's flags as the binary parses them.
pub fn mic_args_from(flags: &[&str]) -> aad_pod_identity::config::mic::MicArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mic: aad_pod_identity::config::mic::MicArgs,
    }
    Cli::parse_from(std::iter::once("mic").chain(flags.iter().copied())).mic
}

/// Starts a MIC replica talking to the cluster's Azure simulator through the real ARM client.
pub async fn start_mic(c: &Cluster, settings: MicSettings) -> MicHandle {
    start_mic_with(c, settings, None).await
}

/// [`start_mic`] through `arm` instead, when given.
pub async fn start_mic_with(
    c: &Cluster,
    settings: MicSettings,
    arm: Option<Arc<dyn ArmPort>>,
) -> MicHandle {
    let config = c.cloud_config();
    aad_pod_identity::actors::mic::spawn(settings, Metrics::new(), None, move || {
        arm.unwrap_or_else(|| Arc::new(CloudArm::from_config(&config).unwrap()))
    })
    .await
    .unwrap()
}

/// An ARM port that sends each PATCH through `inner` (the simulated ARM applies it on receipt)
/// and then never answers: the replica is as good as killed with its write applied and nothing
/// after it done. Each PATCH sent is signalled on `sent`.
pub struct DiesAtPatch {
    pub inner: Arc<dyn ArmPort>,
    pub sent: tokio::sync::mpsc::UnboundedSender<()>,
}

#[async_trait::async_trait]
impl ArmPort for DiesAtPatch {
    async fn get(
        &self,
        host: &HostId,
    ) -> Result<
        aad_pod_identity::actors::mic::port::HostIdentities,
        aad_pod_identity::actors::mic::port::PortError,
    > {
        self.inner.get(host).await
    }
    async fn patch(
        &self,
        host: &HostId,
        base: &aad_pod_identity::actors::mic::port::HostIdentities,
        add: &[IdentityId],
        remove: &[IdentityId],
    ) -> Result<
        aad_pod_identity::actors::mic::port::PatchOutcome,
        aad_pod_identity::actors::mic::port::PortError,
    > {
        let _ = self.inner.patch(host, base, add, remove).await;
        let _ = self.sent.send(());
        std::future::pending().await
    }
}

/// Starts a MIC replica whose every PATCH is its last act ([`DiesAtPatch`]); the receiver hears
/// of each PATCH it sent.
pub async fn start_mic_dying_at_patch(
    c: &Cluster,
    settings: MicSettings,
) -> (MicHandle, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let config = c.cloud_config();
    let (sent, rx) = tokio::sync::mpsc::unbounded_channel();
    let mic = aad_pod_identity::actors::mic::spawn(settings, Metrics::new(), None, move || {
        Arc::new(DiesAtPatch {
            inner: Arc::new(CloudArm::from_config(&config).unwrap()),
            sent,
        })
    })
    .await
    .unwrap();
    (mic, rx)
}

/// The body of `/healthz`, or `None` when nothing answers (MIC has exited).
pub async fn health(addr: SocketAddr) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split("\r\n\r\n").nth(1).map(str::to_string)
}

/// The value of an unlabelled metric in `/metrics` at `addr`.
pub async fn gauge(addr: SocketAddr, name: &str) -> Option<i64> {
    http_get(addr, "/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Status and body of `GET path`.
pub async fn http(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    http(addr, path).await.1
}

pub async fn http_status(addr: SocketAddr, path: &str) -> u16 {
    http(addr, path).await.0
}

pub async fn wait_health(addr: SocketAddr, want: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if http_get(addr, "/healthz").await == want {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < timeout, "healthz never said {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
