//! The Kubernetes simulator's faults, judged by kube-rs and kubectl: a compacted history
//! answers resumed watches 410 `Expired` and watchers list again; an API restart cuts every
//! connection, refuses new ones for a while and then serves what was stored; slow writes; and
//! writes of chosen objects refused with 409, 422 or 500 worded as a real API server words them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig, KubeSimHandle, Refusal, WriteRefusal};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde_json::json;

async fn sim() -> (KubeSimHandle, kube::Client) {
    let h = KubeSim::start(KubeSimConfig {
        run_cluster: false,
        ..KubeSimConfig::default()
    })
    .await
    .expect("simulator starts");
    let c = h.client().await.expect("client");
    (h, c)
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": "1"}})).unwrap()
}

/// The next watcher event that is not an error, described as a short string.
async fn next(
    s: &mut (impl futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin),
) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), s.next()).await {
            Ok(Some(Ok(e))) => {
                return match e {
                    watcher::Event::Init => "Init".into(),
                    watcher::Event::InitApply(o) => {
                        format!("InitApply {}", o.metadata.name.unwrap())
                    }
                    watcher::Event::InitDone => "InitDone".into(),
                    watcher::Event::Apply(o) => format!("Apply {}", o.metadata.name.unwrap()),
                    watcher::Event::Delete(o) => format!("Delete {}", o.metadata.name.unwrap()),
                };
            }
            Ok(Some(Err(_))) => continue,
            Ok(None) => panic!("watcher ended"),
            Err(_) => panic!("no watcher event within 20s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_history_answers_resumed_watches_410_expired_and_watchers_list_again() {
    let (h, client) = sim().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("a")).await.unwrap();
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.create(&PostParams::default(), &cm("b")).await.unwrap();
    let mut w = watcher(api.clone(), watcher::Config::default()).boxed();
    assert_eq!(next(&mut w).await, "Init");
    assert_eq!(next(&mut w).await, "InitApply a");
    assert_eq!(next(&mut w).await, "InitApply b");
    assert_eq!(next(&mut w).await, "InitDone");

    let faults = h.fault_handle();
    faults.compact_history();
    // A raw resume from before the compaction: one ERROR event, as the API server sends it.
    let mut raw = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match raw.next().await {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "{e:?}");
            assert!(e.message.starts_with("too old resource version"), "{e:?}");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    // The watcher, cut now, resumes from its version, gets 410 and lists again from scratch.
    faults.faults().drop_watches();
    assert_eq!(next(&mut w).await, "Init");
    assert_eq!(next(&mut w).await, "InitApply a");
    assert_eq!(next(&mut w).await, "InitApply b");
    assert_eq!(next(&mut w).await, "InitDone");
    // Then it streams again.
    api.create(&PostParams::default(), &cm("c")).await.unwrap();
    assert_eq!(next(&mut w).await, "Apply c");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_restart_cuts_connections_refuses_new_ones_then_serves_what_was_stored() {
    let (h, client) = sim().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("kept"))
        .await
        .unwrap();
    let mut w = watcher(api.clone(), watcher::Config::default()).boxed();
    assert_eq!(next(&mut w).await, "Init");
    assert_eq!(next(&mut w).await, "InitApply kept");
    assert_eq!(next(&mut w).await, "InitDone");

    let faults = h.fault_handle();
    let restart = tokio::spawn({
        let faults = faults.clone();
        async move { faults.restart(Duration::from_secs(2)).await }
    });
    // While it is down, connections are refused (not accepted and left hanging) ...
    let addr = h.addr();
    let refused = async {
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), refused)
        .await
        .expect("connections are refused while the API server is down");
    // ... and kube-rs sees a transport error, not an answer.
    let err = api.get("kept").await.unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");

    restart.await.unwrap().expect("the simulator serves again");
    assert_eq!(
        api.get("kept").await.unwrap().metadata.name.unwrap(),
        "kept"
    );
    // The watcher reconnects on its own and resumes: the next event is the new object.
    api.create(&PostParams::default(), &cm("after"))
        .await
        .unwrap();
    assert_eq!(next(&mut w).await, "Apply after");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_writes_delay_writes_and_leave_their_results_intact() {
    let (h, client) = sim().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    h.fault_handle()
        .faults()
        .set_write_latency(Duration::from_millis(400));
    let start = Instant::now();
    api.create(&PostParams::default(), &cm("slow"))
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert_eq!(api.get("slow").await.unwrap().data.unwrap()["v"], "1");
    h.fault_handle().faults().set_write_latency(Duration::ZERO);
    h.shutdown().await;
}

struct Kubectl {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(h: &KubeSimHandle) -> Self {
        let dir = std::env::temp_dir().join(format!("kube-sim-faults-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        h.write_kubeconfig(&kubeconfig).unwrap();
        Self { dir, kubeconfig }
    }

    /// Runs kubectl; returns (success, stdout + stderr).
    async fn run(&self, args: &[&str]) -> (bool, String) {
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("KUBECACHEDIR", self.dir.join("cache"))
            .kill_on_drop(true)
            .output()
            .await
            .expect("kubectl runs");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_chosen_objects_are_refused_as_a_real_api_server_words_it() {
    let (h, client) = sim().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let faults = h.fault_handle();
    let refuse = |prefix: &str, refusal, remaining| {
        faults.faults().refuse_writes(WriteRefusal {
            plural: "configmaps".into(),
            namespace: Some("default".into()),
            name_prefix: prefix.into(),
            refusal,
            remaining,
        });
    };
    refuse("conflict-", Refusal::Conflict, None);
    refuse("invalid-", Refusal::Invalid, None);
    refuse("broken-", Refusal::Internal, Some(1));

    let kubectl = Kubectl::new(&h);
    let (ok, out) = kubectl
        .run(&["create", "configmap", "conflict-1", "--from-literal=v=1"])
        .await;
    assert!(!ok);
    assert!(
        out.contains("Operation cannot be fulfilled on configmaps \"conflict-1\": the object has been modified"),
        "{out}"
    );
    let (ok, out) = kubectl
        .run(&["create", "configmap", "invalid-1", "--from-literal=v=1"])
        .await;
    assert!(!ok);
    assert!(
        out.contains("ConfigMap \"invalid-1\" is invalid: metadata.name: Invalid value"),
        "{out}"
    );
    let (ok, out) = kubectl
        .run(&["create", "configmap", "broken-1", "--from-literal=v=1"])
        .await;
    assert!(!ok);
    assert!(
        out.contains("Internal error occurred: injected storage failure"),
        "{out}"
    );
    // The 500 was owed once: the next write of that object goes through.
    let (ok, out) = kubectl
        .run(&["create", "configmap", "broken-1", "--from-literal=v=1"])
        .await;
    assert!(ok, "{out}");
    // Other objects are untouched, and refused ones were not stored.
    api.create(&PostParams::default(), &cm("other"))
        .await
        .unwrap();
    assert!(api.get_opt("conflict-1").await.unwrap().is_none());
    assert!(api.get_opt("invalid-1").await.unwrap().is_none());

    // kube-rs sees the same statuses, on updates and deletes too.
    faults.faults().clear_refusals();
    api.create(&PostParams::default(), &cm("conflict-2"))
        .await
        .unwrap();
    refuse("conflict-", Refusal::Conflict, None);
    let e = api
        .replace("conflict-2", &PostParams::default(), &cm("conflict-2"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{e:?}"
    );
    let e = api
        .delete("conflict-2", &Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, kube::Error::Api(ref s) if s.code == 409),
        "{e:?}"
    );
    assert_eq!(faults.faults().refused(), 5);
    h.shutdown().await;
}
