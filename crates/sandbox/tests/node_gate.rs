//! The node gate end to end in the sandbox: a node added at run time (a scale-out) joins with
//! the startup taint, receives no pod while its NMI is not running, and runs them once its NMI
//! has synced and lifted the taint; the pods then get tokens from that NMI. Without the gate the
//! same scale-out places pods on the node before any NMI runs there: the race the gate closes.
//!
//! The order is read from the simulator's resourceVersions (one global, increasing counter):
//! the write that lifts the taint comes before every write that puts a pod on the node.

use std::collections::BTreeMap;
use std::time::Duration;

use aad_pod_identity::actors::nmi::gate::DEFAULT_TAINT_KEY;
use aad_pod_identity_sandbox::args::SandboxArgs;
use aad_pod_identity_sandbox::system::Sandbox;
use clap::Parser;
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sandbox: SandboxArgs,
}

fn args(extra: &[&str]) -> SandboxArgs {
    let base = [
        "sandbox",
        // One instance in reserve; the test brings it in itself.
        "--add-node=1h",
        "--nmi-port=0",
        "--arm-latency=50ms",
        "--nmi-assignment-wait=30s",
    ];
    Cli::try_parse_from(base.iter().chain(extra))
        .unwrap()
        .sandbox
}

/// A Deployment whose pods use the seed's identities and can only run on `node`.
fn guarded(node: &str) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "guarded"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "guarded"}},
            "template": {"metadata": {"labels": {"app": "guarded", "aadpodidbinding": "az-id-combined"}},
                "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [{"name": "app", "image": "mcr.microsoft.com/azure-cli"}]}}}
    }))
    .unwrap()
}

fn rv(meta: &kube::api::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn unschedulable_message(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .and_then(|c| c.message.clone())
}

/// Waits on a watch (no polling) until `done` holds for the pods seen so far; calls `seen` for
/// every pod event. 60 s at most.
async fn watch_pods(
    pods: &Api<Pod>,
    mut seen: impl FnMut(&Pod),
    done: impl Fn(&BTreeMap<String, Pod>) -> bool,
) -> BTreeMap<String, Pod> {
    let mut all = BTreeMap::new();
    let mut stream = std::pin::pin!(watcher::watcher(pods.clone(), watcher::Config::default()));
    let wait = async {
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    seen(&p);
                    all.insert(p.metadata.name.clone().unwrap_or_default(), p);
                }
                Ok(watcher::Event::Delete(p)) => {
                    all.remove(p.metadata.name.as_deref().unwrap_or_default());
                }
                _ => {}
            }
            if done(&all) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("the pods did not reach the expected state within 60 s");
    all
}

/// The pod-identity pods (labelled `aadpodidbinding`) bound to `node`.
fn on_node<'a>(all: &'a BTreeMap<String, Pod>, node: &str) -> Vec<&'a Pod> {
    all.values()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("aadpodidbinding"))
        })
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .collect()
}

#[test]
fn a_node_added_at_run_time_receives_no_pod_before_its_nmi_is_ready_and_then_runs_them() {
    actix::System::new().block_on(async {
        let mut sandbox = Sandbox::start(&args(&[])).await.unwrap();
        let client = sandbox.kube.client().await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let nodes: Api<Node> = Api::all(client.clone());

        let node = sandbox.add_node().unwrap();
        let joined = nodes.get(&node).await.unwrap();
        let taints = joined.spec.unwrap().taints.unwrap();
        assert_eq!(taints[0].key, DEFAULT_TAINT_KEY, "the node joins tainted");
        Api::<Deployment>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &guarded(&node))
            .await
            .unwrap();

        // The scheduler has looked at the new node and refused it for the taint.
        let all = watch_pods(
            &pods,
            |_| {},
            |all| {
                let g: Vec<_> = all
                    .values()
                    .filter(|p| {
                        p.metadata
                            .name
                            .as_deref()
                            .unwrap_or("")
                            .starts_with("guarded-")
                    })
                    .collect();
                g.len() == 2
                    && g.iter().all(|p| {
                        unschedulable_message(p).is_some_and(|m| m.contains(DEFAULT_TAINT_KEY))
                    })
            },
        )
        .await;
        assert!(
            on_node(&all, &node).is_empty(),
            "no pod on the node before its NMI runs"
        );
        assert!(!sandbox.nmi.contains_key(&node));

        // NMI starts; it lifts the taint once its caches are synced; only then pods land.
        let nmi = sandbox.start_nmi(&node).await.unwrap();
        let (probe, _) = sandbox.nmi_endpoints[&node];
        let mut node_watch = std::pin::pin!(watcher::watcher(
            nodes.clone(),
            watcher::Config::default().fields(&format!("metadata.name={node}"))
        ));
        let lifted_rv = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(ev) = node_watch.next().await {
                let Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) = ev else {
                    continue;
                };
                let tainted = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.key == DEFAULT_TAINT_KEY));
                if !tainted {
                    return rv(&n.metadata);
                }
            }
            panic!("node watch ended");
        })
        .await
        .expect("NMI lifted the taint");
        let health = reqwest::get(format!("http://{probe}/healthz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(health, "Active", "the taint went once NMI was ready");

        // Every pod that lands on the node (the Deployment's two, and the seed DaemonSet's) was
        // put there after the taint went.
        let mut landed: BTreeMap<String, u64> = BTreeMap::new();
        let all = watch_pods(
            &pods,
            |p| {
                let identity_pod = p.metadata.labels.as_ref().is_some_and(|l| l.contains_key("aadpodidbinding"));
                if identity_pod && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()) {
                    landed
                        .entry(p.metadata.name.clone().unwrap_or_default())
                        .or_insert(rv(&p.metadata));
                }
            },
            |all| {
                let here = on_node(all, &node);
                here.len() >= 3
                    && here.iter().all(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
            },
        )
        .await;
        for (pod, at) in &landed {
            assert!(
                *at > lifted_rv,
                "{pod} was on the node at rv {at}, before the taint went at rv {lifted_rv}"
            );
        }
        assert!(on_node(&all, &node).iter().any(|p| {
            p.metadata
                .name
                .as_deref()
                .unwrap_or("")
                .starts_with("azure-cli-")
        }));

        // The pods get their identity's token from the new node's NMI.
        let pod = on_node(&all, &node)
            .into_iter()
            .find(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("guarded-")
            })
            .unwrap();
        let ip: std::net::IpAddr = pod
            .status
            .as_ref()
            .unwrap()
            .pod_ip
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        let mut identities = sandbox.azure.identities();
        identities.sort_by(|a, b| a.name.cmp(&b.name));
        let http = reqwest::Client::builder()
            .local_address(ip)
            .build()
            .unwrap();
        let url = format!(
            "http://{nmi}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/&client_id={}",
            identities[0].client_id
        );
        let r = http
            .get(url)
            .header("Metadata", "true")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));
        sandbox.stop().await;
    });
}

#[test]
fn without_the_gate_pods_land_on_a_new_node_before_any_nmi_runs_there() {
    actix::System::new().block_on(async {
        let mut sandbox = Sandbox::start(&args(&["--node-gate=false"])).await.unwrap();
        let client = sandbox.kube.client().await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let node = sandbox.add_node().unwrap();
        Api::<Deployment>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &guarded(&node))
            .await
            .unwrap();
        let all = watch_pods(&pods, |_| {}, |all| on_node(all, &node).len() >= 2).await;
        assert!(on_node(&all, &node).len() >= 2);
        assert!(
            !sandbox.nmi.contains_key(&node),
            "the pods run on a node no NMI guards"
        );
        sandbox.stop().await;
    });
}

/// The sandbox binary's `--add-node`: the node joins tainted, its NMI starts after
/// `--nmi-start-delay`, lifts the taint, and the seed's DaemonSet then gets a pod there.
#[test]
fn the_sandbox_binary_adds_a_node_at_run_time_and_its_nmi_lifts_the_taint() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("sandbox-add-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aad-pod-identity-sandbox"))
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .args(["--nmi-port=0", "--add-node=1s", "--nmi-start-delay=2s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    struct Stop(std::process::Child, std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _stop = Stop(child, dir);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("sandbox: {line}");
            let _ = tx.send(line);
        }
    });
    let wait_line = |what: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no line with {what:?} within 60 s"));
        if line.contains(what) {
            return line;
        }
    };
    let joined = wait_line("[scale-out] node ");
    assert!(joined.contains(DEFAULT_TAINT_KEY), "{joined}");
    let node = joined.split_whitespace().nth(2).unwrap().to_string();
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    wait_line("[scale-out] NMI ");
    // The taint goes and the seed's DaemonSet puts its pod on the node (polled with kubectl,
    // as a user would).
    let selector = format!("spec.nodeName={node}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let taints = kubectl(&["get", "node", &node, "-o", "jsonpath={.spec.taints}"]);
        let pods = kubectl(&[
            "get",
            "pods",
            "-l",
            "aadpodidbinding",
            "--field-selector",
            &selector,
            "-o",
            "name",
        ]);
        if !taints.contains(DEFAULT_TAINT_KEY) && !pods.trim().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "taints {taints:?}, pods {pods:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
