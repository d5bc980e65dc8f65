//! MIC replicas follow MIC's pods in the sandbox: deleting the leader's pod stops its replica
//! and the Deployment's replacement pod runs a new one while another replica takes the lease;
//! a replica that ends on its own (it lost the lease) is started again for the same pod.

use std::time::{Duration, Instant};

use aad_pod_identity_sandbox::args::SandboxArgs;
use aad_pod_identity_sandbox::mic_replicas::ReplicaView;
use aad_pod_identity_sandbox::system::Sandbox;
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sandbox: SandboxArgs,
}

fn args(empty_scenario: &std::path::Path) -> SandboxArgs {
    Cli::try_parse_from([
        "sandbox",
        "--nmi-port=0",
        "--arm-latency=50ms",
        "--mic-replicas=2",
        "--mic-arg=--leader-election-duration=2s",
        &format!("--scenario={}", empty_scenario.display()),
    ])
    .unwrap()
    .sandbox
}

/// Waits (checking every 100 ms) until `f` holds.
async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn healthz(r: &ReplicaView) -> String {
    reqwest::get(format!("http://{}/healthz", r.probe))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get("aad-pod-identity-mic")
        .await
        .ok()?
        .spec?
        .holder_identity
}

fn empty_scenario(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("mic-replicas-{tag}-{}.yaml", std::process::id()));
    std::fs::write(&p, "").unwrap();
    p
}

#[test]
fn deleting_the_leaders_pod_stops_its_replica_and_a_new_pod_runs_another() {
    let scenario = empty_scenario("delete");
    actix::System::new().block_on(async {
        let sandbox = Sandbox::start(&args(&scenario)).await.unwrap();
        let client = sandbox.kube.client().await.unwrap();
        let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let replicas = sandbox.mic_replicas();
        let leader = until("a leader", async || replicas.leader()).await;
        assert_eq!(holder(&leases).await.as_deref(), Some(leader.pod.as_str()));
        assert_eq!(healthz(&leader).await, "Active");
        let follower = replicas
            .views()
            .into_iter()
            .find(|r| r.pod != leader.pod)
            .expect("two replicas");
        assert_eq!(healthz(&follower).await, "Not Active");

        pods.delete(&leader.pod, &DeleteParams::default())
            .await
            .unwrap();
        // The replica stops with its pod: its probe no longer answers.
        until("the deleted pod's replica gone", async || {
            let gone = replicas.views().iter().all(|r| r.pod != leader.pod);
            let refused = reqwest::get(format!("http://{}/healthz", leader.probe))
                .await
                .is_err();
            (gone && refused).then_some(())
        })
        .await;
        // A live replica takes the lease once it expires; the Deployment's new pod runs a
        // replica. Either live replica may win: each counts the lease duration from when it
        // first read the dead leader's last renewal, and the replacement's first read can come
        // before the survivor's next poll (up to one retry period later), as with client-go.
        // What must hold is that exactly one live replica leads and the deleted one never does.
        let next = until("a new leader and two replicas", async || {
            let views = replicas.views();
            let l = replicas.leader()?;
            (views.len() == 2 && l.pod != leader.pod).then_some(l)
        })
        .await;
        let views = replicas.views();
        assert_eq!(
            views.iter().filter(|r| r.leading()).count(),
            1,
            "one leader at a time"
        );
        // (Its pod's, not necessarily the same start: on a starved machine a 2 s lease can be
        // lost and the replica restarted, as a container would be.)
        assert!(
            views.iter().any(|r| r.pod == follower.pod),
            "the surviving pod runs a replica"
        );
        let newcomer = views
            .iter()
            .find(|r| r.pod != follower.pod)
            .expect("a replica for the replacement pod");
        assert_ne!(newcomer.pod, leader.pod);
        assert!(pods.get(&newcomer.pod).await.is_ok(), "runs for a real pod");
        until("the Lease held by the new leader", async || {
            (holder(&leases).await.as_deref() == Some(next.pod.as_str())).then_some(())
        })
        .await;
        assert_eq!(healthz(&next).await, "Active");
        let other = views.iter().find(|r| r.pod != next.pod).unwrap();
        assert_eq!(healthz(other).await, "Not Active");
        sandbox.stop().await;
    });
    let _ = std::fs::remove_file(scenario);
}

#[test]
fn a_replica_that_loses_the_lease_is_started_again_for_its_pod() {
    let scenario = empty_scenario("restart");
    actix::System::new().block_on(async {
        let sandbox = Sandbox::start(&args(&scenario)).await.unwrap();
        let replicas = sandbox.mic_replicas();
        let leader = until("a leader", async || replicas.leader()).await;
        // Every API call now takes longer than the leader may go without renewing (2/3 of 2 s):
        // it steps down and its MIC ends, as the process would exit.
        sandbox.kube.set_latency(Duration::from_secs(3));
        let restarted = until("the leader's pod running a new replica", async || {
            replicas
                .views()
                .into_iter()
                .find(|r| r.pod == leader.pod && r.probe != leader.probe)
        })
        .await;
        sandbox.kube.set_latency(Duration::ZERO);
        assert_ne!(restarted.metrics_addr, leader.metrics_addr, "a fresh start");
        until("a leader again", async || replicas.leader()).await;
        sandbox.stop().await;
    });
    let _ = std::fs::remove_file(scenario);
}
