//! The Kubernetes simulator judged by the real `kubectl` (a client nobody here wrote), run
//! unchanged as a subprocess with the kubeconfig the simulator writes: CRDs from the Rust
//! types, every seed example, get (with printer columns), describe, label, delete, wait,
//! rollout status and `get -w`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use aad_pod_identity::crd::{all_crds, render_crd_yaml};
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig, KubeSimHandle};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

struct Env {
    sim: KubeSimHandle,
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Env {
    async fn start() -> Self {
        let sim = KubeSim::start(KubeSimConfig {
            job_pod_run_time: Duration::from_millis(500),
            ..KubeSimConfig::default()
        })
        .await
        .expect("simulator starts");
        let dir = std::env::temp_dir().join(format!("kube-sim-kubectl-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("crds")).unwrap();
        for f in all_crds() {
            std::fs::write(dir.join("crds").join(&f.file_name), render_crd_yaml(&f)).unwrap();
        }
        let kubeconfig = dir.join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            sim,
            dir,
            kubeconfig,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        // kubectl caches discovery under $HOME; keep each test's cache apart.
        c.env("KUBECACHEDIR", self.dir.join("cache"));
        c.kill_on_drop(true);
        c
    }

    /// Runs kubectl; panics with its stderr unless it succeeds.
    async fn ok(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(Duration::from_secs(60), self.cmd(args).output())
            .await
            .expect("kubectl finishes")
            .expect("kubectl runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{stdout}\n{stderr}"
        );
        stdout
    }

    /// Runs kubectl expecting failure; returns stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().await.expect("kubectl runs");
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded"
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    async fn apply_crds_and_seed(&self) {
        let crds = self.dir.join("crds");
        let out = self.ok(&["apply", "-f", crds.to_str().unwrap()]).await;
        assert_eq!(out.matches("created").count(), 4, "{out}");
        let seed = seed_dir();
        let out = self.ok(&["apply", "-f", seed.to_str().unwrap()]).await;
        for expected in [
            "azureidentity.aadpodidentity.k8s.io/az-id-1 created",
            "azureidentity.aadpodidentity.k8s.io/az-id-2 created",
            "azureidentitybinding.aadpodidentity.k8s.io/az-id-1-binding created",
            "azureidentitybinding.aadpodidentity.k8s.io/az-id-2-binding created",
            "pod/demo created",
            "deployment.apps/azure-cli created",
            "daemonset.apps/azure-cli created",
            "job.batch/azure-cli created",
            "cronjob.batch/azure-cli created",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
        }
    }

    async fn stop(self) {
        self.sim.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_crds_and_every_seed_example_and_they_run() {
    let env = Env::start().await;
    env.apply_crds_and_seed().await;
    // Re-applying unchanged manifests is a no-op (three-way merge against last-applied).
    let out = env.ok(&["apply", "-f", seed_dir().to_str().unwrap()]).await;
    assert!(out.contains("pod/demo unchanged"), "{out}");
    // Printer columns of the CRDs.
    let ids = env.ok(&["get", "azureidentities"]).await;
    let header: Vec<_> = ids.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "TYPE", "CLIENTID", "AGE"], "{ids}");
    assert!(
        ids.contains("az-id-1") && ids.contains("<ClientID of az-id-1>"),
        "{ids}"
    );
    let bindings = env.ok(&["get", "azureidentitybindings"]).await;
    let header: Vec<_> = bindings
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "AZUREIDENTITY", "SELECTOR", "AGE"],
        "{bindings}"
    );
    assert!(bindings.contains("az-id-combined"), "{bindings}");
    // The workloads turn into running pods.
    env.ok(&["wait", "--for=condition=Ready", "pod/demo", "--timeout=30s"])
        .await;
    env.ok(&["rollout", "status", "deployment/azure-cli", "--timeout=30s"])
        .await;
    env.ok(&["rollout", "status", "daemonset/azure-cli", "--timeout=30s"])
        .await;
    env.ok(&[
        "wait",
        "--for=condition=complete",
        "job/azure-cli",
        "--timeout=30s",
    ])
    .await;
    // (The seed's CronJob runs every minute, so its pods may come and go meanwhile.)
    let pods = env.ok(&["get", "pods", "-o", "wide"]).await;
    assert!(
        pods.lines()
            .any(|l| l.starts_with("demo ") && l.contains("Running")),
        "{pods}"
    );
    // 1 deployment replica + 2 daemonset pods (one per node) share the template's label.
    let workload = env
        .ok(&["get", "pods", "-l", "name=azure-cli", "-o", "name"])
        .await;
    assert_eq!(workload.lines().count(), 3, "{workload}");
    let job = env.ok(&["get", "pods", "-l", "job-name=azure-cli"]).await;
    assert_eq!(job.lines().count(), 2, "{job}");
    assert!(job.contains("Completed"), "{job}");
    let ips = env
        .ok(&[
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.status.podIP}{\"\\n\"}{end}",
        ])
        .await;
    let ips: Vec<_> = ips.lines().collect();
    assert!(ips.len() >= 5, "{ips:?}");
    assert!(ips.iter().all(|ip| ip.starts_with("127.1.")), "{ips:?}");
    let unique: std::collections::BTreeSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), ips.len(), "duplicate pod IPs: {ips:?}");
    let ds = env
        .ok(&[
            "get",
            "pods",
            "-l",
            "name=azure-cli",
            "-o",
            "jsonpath={.items[*].spec.nodeName}",
        ])
        .await;
    let nodes: std::collections::BTreeSet<_> = ds.split_whitespace().collect();
    assert!(nodes.len() >= 2, "daemonset pods not spread: {ds}");
    // The batch/v1beta1 CronJob is served and listed.
    let cj = env
        .ok(&[
            "get",
            "cronjobs.v1beta1.batch",
            "azure-cli",
            "-o",
            "jsonpath={.spec.schedule}",
        ])
        .await;
    assert_eq!(cj, "*/1 * * * *");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_describe_label_and_delete_work() {
    let env = Env::start().await;
    env.apply_crds_and_seed().await;
    env.ok(&["wait", "--for=condition=Ready", "pod/demo", "--timeout=30s"])
        .await;
    // An Event about the pod shows up in describe.
    let event = env.dir.join("event.yaml");
    std::fs::write(
        &event,
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: demo.binding\ninvolvedObject:\n  apiVersion: v1\n  kind: Pod\n  name: demo\n  namespace: default\nreason: BindingApplied\nmessage: binding az-id-1-binding applied\ntype: Normal\nsource:\n  component: aadpodidentity.k8s.io\n",
    )
    .unwrap();
    env.ok(&["create", "-f", event.to_str().unwrap()]).await;
    let uid = env
        .ok(&["get", "pod", "demo", "-o", "jsonpath={.metadata.uid}"])
        .await;
    env.ok(&[
        "patch",
        "event",
        "demo.binding",
        "--type=merge",
        "-p",
        &format!("{{\"involvedObject\":{{\"uid\":\"{uid}\"}}}}"),
    ])
    .await;
    let d = env.ok(&["describe", "pod", "demo"]).await;
    assert!(d.contains("Status:           Running"), "{d}");
    assert!(d.contains("IP:               127.1."), "{d}");
    assert!(d.contains("aks-pool0-12345678-vmss"), "{d}");
    assert!(d.contains("BindingApplied"), "{d}");
    let d = env.ok(&["describe", "azureidentity", "az-id-1"]).await;
    assert!(d.contains("Client ID:    <ClientID of az-id-1>"), "{d}");
    let d = env.ok(&["describe", "node"]).await;
    assert!(d.contains("ProviderID:"), "{d}");
    env.ok(&["describe", "deployment", "azure-cli"]).await;
    // label, then select by it
    env.ok(&["label", "pod", "demo", "team=identity"]).await;
    let sel = env
        .ok(&["get", "pods", "-l", "team=identity", "-o", "name"])
        .await;
    assert_eq!(sel.trim(), "pod/demo");
    env.ok(&["label", "pod", "demo", "team-"]).await;
    let sel = env.ok(&["get", "pods", "-l", "team", "-o", "name"]).await;
    assert_eq!(sel.trim(), "");
    env.ok(&["label", "azureidentity", "az-id-1", "tier=gold"])
        .await;
    let sel = env
        .ok(&["get", "azureidentities", "-l", "tier=gold", "-o", "name"])
        .await;
    assert_eq!(sel.trim(), "azureidentity.aadpodidentity.k8s.io/az-id-1");
    // delete waits for the object to be gone; the deployment takes its pods with it.
    env.ok(&["delete", "pod", "demo"]).await;
    let err = env.fails(&["get", "pod", "demo"]).await;
    assert!(err.contains("pods \"demo\" not found"), "{err}");
    env.ok(&["delete", "deployment", "azure-cli"]).await;
    let left = env
        .ok(&["get", "pods", "-l", "pod-template-hash", "-o", "name"])
        .await;
    assert_eq!(left.trim(), "", "deployment pods survived their owner");
    env.ok(&["delete", "azureidentitybinding", "az-id-1-binding"])
        .await;
    let b = env
        .ok(&["get", "azureidentitybindings", "-o", "name"])
        .await;
    assert_eq!(
        b.trim(),
        "azureidentitybinding.aadpodidentity.k8s.io/az-id-2-binding"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_sees_changes_live() {
    let env = Env::start().await;
    env.apply_crds_and_seed().await;
    let mut child = env
        .cmd(&["get", "azureidentities", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .expect("kubectl get -w printed nothing within 15s")
            .unwrap()
            .expect("kubectl get -w ended");
        // EVENT, NAME and the printer columns TYPE and CLIENTID; AGE varies.
        line.split_whitespace()
            .take(4)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(next().await, "EVENT NAME TYPE CLIENTID");
    let mut initial = vec![next().await, next().await];
    initial.sort();
    assert_eq!(
        initial,
        ["ADDED az-id-1 0 <ClientID", "ADDED az-id-2 0 <ClientID"]
    );
    let id3 = env.dir.join("id3.yaml");
    std::fs::write(
        &id3,
        "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentity\nmetadata:\n  name: az-id-3\nspec:\n  type: 0\n  clientID: c3\n",
    )
    .unwrap();
    env.ok(&["apply", "-f", id3.to_str().unwrap()]).await;
    assert_eq!(next().await, "ADDED az-id-3 0 c3");
    env.ok(&["label", "azureidentity", "az-id-3", "x=y"]).await;
    assert_eq!(next().await, "MODIFIED az-id-3 0 c3");
    env.ok(&["delete", "azureidentity", "az-id-3"]).await;
    assert_eq!(next().await, "DELETED az-id-3 0 c3");
    let _ = child.kill().await;

    // The table form (what a user sees with plain `get -w`) streams rows too.
    let mut child = env
        .cmd(&["get", "pods", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let header = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(header.starts_with("NAME"), "{header}");
    env.ok(&["run", "live", "--image=busybox"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("no row for the new pod")
            .unwrap()
            .unwrap();
        if line.starts_with("live ") && line.contains("Running") {
            break;
        }
    }
    let _ = child.kill().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reports_server_errors_precisely() {
    let env = Env::start().await;
    let err = env.fails(&["get", "pod", "nope"]).await;
    assert!(
        err.contains("Error from server (NotFound): pods \"nope\" not found"),
        "{err}"
    );
    let bad = env.dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n",
    )
    .unwrap();
    let err = env.fails(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(
        err.contains("The ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value"),
        "{err}"
    );
    let err = env.fails(&["get", "widgets"]).await;
    assert!(
        err.contains("the server doesn't have a resource type \"widgets\""),
        "{err}"
    );
    let none = env.ok(&["get", "configmaps", "-o", "name"]).await;
    assert_eq!(none.trim(), "");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_recorded_by_kube_rs_show_in_kubectl_describe() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    use kube::{Api, Resource};
    let env = Env::start().await;
    env.ok(&["apply", "-f", seed_dir().join("pod.yaml").to_str().unwrap()])
        .await;
    let client = env.sim.client().await.unwrap();
    let pod = Api::<Pod>::namespaced(client.clone(), "default")
        .get("demo")
        .await
        .unwrap();
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "aadpodidentity.k8s.io".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Warning,
        reason: "BindingApplyError".into(),
        note: Some("identity az-id-1 is not assigned yet".into()),
        action: "Assign".into(),
        secondary: None,
    };
    // Twice: the second publish patches the event's series (events.k8s.io/v1 merge patch).
    recorder.publish(&ev, &pod.object_ref(&())).await.unwrap();
    recorder.publish(&ev, &pod.object_ref(&())).await.unwrap();
    let d = env.ok(&["describe", "pod", "demo"]).await;
    let line = d
        .lines()
        .find(|l| l.contains("BindingApplyError"))
        .unwrap_or_else(|| panic!("event missing from describe:\n{d}"));
    assert!(line.contains("Warning"), "{line}");
    assert!(
        line.contains("identity az-id-1 is not assigned yet"),
        "{line}"
    );
    let core = env
        .ok(&[
            "get",
            "events",
            "-o",
            "jsonpath={.items[0].involvedObject.name} {.items[0].series.count}",
        ])
        .await;
    assert_eq!(core, "demo 2");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scales_and_restarts_a_deployment() {
    let env = Env::start().await;
    let deploy = seed_dir().join("deployment.yaml");
    env.ok(&["apply", "-f", deploy.to_str().unwrap()]).await;
    // `kubectl scale` goes through the /scale subresource.
    env.ok(&["scale", "deployment/azure-cli", "--replicas=3"])
        .await;
    env.ok(&["rollout", "status", "deployment/azure-cli", "--timeout=30s"])
        .await;
    let names = |s: String| -> std::collections::BTreeSet<String> {
        s.split_whitespace().map(String::from).collect()
    };
    let before = names(
        env.ok(&["get", "pods", "-l", "name=azure-cli", "-o", "name"])
            .await,
    );
    assert_eq!(before.len(), 3, "{before:?}");
    env.ok(&["rollout", "restart", "deployment/azure-cli"])
        .await;
    env.ok(&["rollout", "status", "deployment/azure-cli", "--timeout=30s"])
        .await;
    let after = names(
        env.ok(&["get", "pods", "-l", "name=azure-cli", "-o", "name"])
            .await,
    );
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(
        before.is_disjoint(&after),
        "restart kept old pods: {before:?} {after:?}"
    );
    env.ok(&["scale", "deployment/azure-cli", "--replicas=1"])
        .await;
    env.ok(&["rollout", "status", "deployment/azure-cli", "--timeout=30s"])
        .await;
    let replicas = env
        .ok(&[
            "get",
            "deployment/azure-cli",
            "-o",
            "jsonpath={.status.replicas}",
        ])
        .await;
    assert_eq!(replicas, "1");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_sends_protobuf_for_namespaces_configmaps_and_secrets() {
    let env = Env::start().await;
    env.ok(&["create", "namespace", "team-a"]).await;
    env.ok(&[
        "-n",
        "team-a",
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
    ])
    .await;
    env.ok(&[
        "-n",
        "team-a",
        "create",
        "secret",
        "generic",
        "sp",
        "--from-literal=clientSecret=s3cr3t",
    ])
    .await;
    env.ok(&["-n", "team-a", "create", "serviceaccount", "robot"])
        .await;
    let mode = env
        .ok(&[
            "-n",
            "team-a",
            "get",
            "configmap",
            "settings",
            "-o",
            "jsonpath={.data.mode}",
        ])
        .await;
    assert_eq!(mode, "fast");
    let secret = env
        .ok(&[
            "-n",
            "team-a",
            "get",
            "secret",
            "sp",
            "-o",
            "jsonpath={.data.clientSecret}",
        ])
        .await;
    assert_eq!(secret, "czNjcjN0", "base64 of the literal");
    // Workload kinds (also protobuf) are covered by tests/kube_sim_kubectl_create.rs.
    env.ok(&["delete", "namespace", "team-a"]).await;
    let err = env.fails(&["-n", "team-a", "get", "secret", "sp"]).await;
    assert!(err.contains("not found"), "{err}");
    env.stop().await;
}
