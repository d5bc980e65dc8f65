//! MIC driven through faults end to end, against the Kubernetes and Azure simulators over real
//! HTTP: an actor that dies takes MIC down instead of leaving it `Active`; watches cut, resumed
//! into 410 `Expired`, or lost in an API server restart lose nothing; a leader cut off by an
//! API restart longer than its lease steps down, so there are never two active leaders; ARM
//! errors and throttling delay but never lose an assignment; a PATCH whose answer is lost leaks
//! nothing and takes nothing of someone else's; a system-assigned identity enabled behind MIC's
//! back survives its writes; objects the API always refuses never starve new pods; the assigner
//! of a deleted scale set stops calling ARM; and pods whose original object names read the same
//! each get an object of their own.

use aad_pod_identity::actors::mic::host::{HostId, IdentityId};
use aad_pod_identity::actors::mic::port::{ArmPort, HostIdentities, PatchOutcome, PortError};
use aad_pod_identity::actors::mic::{Error, MicHandle};
use aad_pod_identity::crd::{self, AssignedState, AzureAssignedIdentity};
use aad_pod_identity_sim::topology::Topology;
use kube::Api;
use kube::api::{ListParams, PostParams};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod mic_support;
use mic_support::*;

#[path = "azure_common/mod.rs"]
mod azure_common;

/// One scale set of two nodes, three identities, ARM answering in 50 ms.
async fn world(tag: &str) -> Cluster {
    cluster(
        tag,
        Topology::sized(1, 2, 0, 3),
        azure_with_latency(Duration::from_millis(50)),
    )
    .await
}

/// Identity `i` as an AzureIdentity `name`, with a binding selecting pods labelled `name`.
async fn identity(w: &Cluster, name: &str, i: usize) {
    w.identity(name, &w.identity_rid(i)).await;
}

async fn mic(w: &Cluster, instance: &str, arm: Option<Arc<dyn ArmPort>>) -> MicHandle {
    start_mic_with(w, settings(w, instance), arm).await
}

async fn wait_active(addr: SocketAddr) {
    wait_health(addr, "Active", Duration::from_secs(20)).await;
}

/// How often [`until`] asks.
const POLL: Duration = Duration::from_millis(50);

/// Waits until `check` answers `Ok`, asking every [`POLL`], and fails naming `what` (and the
/// last `Err`, what was seen instead) after `deadline`: for state the simulators and MIC
/// expose only by being asked (a request log, a counter, a gauge, a list), with no event to
/// wait on.
async fn until<T>(
    what: &str,
    deadline: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let t0 = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) => assert!(
                t0.elapsed() < deadline,
                "timed out after {deadline:?} waiting until {what}; {seen}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// MIC's queue depth for scale set 0: identity additions and removals it has yet to see
/// done on ARM, including removals waiting out their grace period.
async fn queue_depth(w: &Cluster, metrics: SocketAddr) -> Option<i64> {
    let name = format!(
        "aadpodidentity_mic_queue_depth{{host=\"{}\"}}",
        w.topology.scale_sets[0].name
    );
    gauge(metrics, &name).await
}

/// An ARM whose PATCH hits a bug: the assigner running it panics.
struct PanickingArm;

#[async_trait::async_trait]
impl ArmPort for PanickingArm {
    async fn get(&self, _host: &HostId) -> Result<HostIdentities, PortError> {
        Ok(HostIdentities::default())
    }
    async fn patch(
        &self,
        _host: &HostId,
        _base: &HostIdentities,
        _add: &[IdentityId],
        _remove: &[IdentityId],
    ) -> Result<PatchOutcome, PortError> {
        panic!("bug in the ARM port")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigner_that_panics_takes_mic_down_instead_of_leaving_it_active() {
    let w = world("panic").await;
    let mut mic = mic(&w, "mic-0", Some(Arc::new(PanickingArm))).await;
    wait_active(mic.probe).await;
    let exited = mic.take_exit_signal().unwrap();
    identity(&w, "id-0", 0).await;
    w.pod("demo", "id-0", &w.node(0)).await;
    // The assigner panics on its first PATCH; MIC must not go on leading without it.
    tokio::time::timeout(Duration::from_secs(20), exited)
        .await
        .expect("MIC exits once an assigner died")
        .ok();
    assert_ne!(health(mic.probe).await.as_deref(), Some("Active"));
    match mic.stop() {
        Some(Err(Error::Died(death))) => {
            assert_eq!(death.task, "assigner");
            assert_eq!(death.reason, "it panicked: bug in the ARM port");
        }
        other => panic!("expected MIC to die of its assigner, got {other:?}"),
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_watches_are_cut_or_expired_are_all_applied() {
    let w = world("watch").await;
    let mic = mic(&w, "mic-0", None).await;
    wait_active(mic.probe).await;
    identity(&w, "id-0", 0).await;
    identity(&w, "id-1", 1).await;
    w.pod("a", "id-0", &w.node(0)).await;
    w.wait_assigned(&["a"], Duration::from_secs(20)).await;

    let faults = w.sim.fault_handle();
    // Cut: MIC resumes its watches from where they were.
    faults.faults().drop_watches();
    w.pod("b", "id-1", &w.node(1)).await;
    w.wait_assigned(&["a", "b"], Duration::from_secs(20)).await;

    // Expired: the history MIC would resume from is gone; it must list again, and a pod
    // deleted meanwhile must not survive in its view.
    faults.compact_history();
    faults.faults().drop_watches();
    w.delete_pod("a").await;
    w.pod("c", "id-0", &w.node(1)).await;
    faults.compact_history();
    w.wait_assigned(&["b", "c"], Duration::from_secs(20)).await;
    assert!(
        w.on_scale_set(0)
            .contains(&IdentityId::new(&w.identity_rid(1)))
    );
    drop(mic);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_created_across_an_api_restart_are_assigned_and_mic_keeps_leading() {
    let w = world("restart").await;
    let mut mic = mic(&w, "mic-0", None).await;
    wait_active(mic.probe).await;
    let mut exited = mic.take_exit_signal().unwrap();
    identity(&w, "id-0", 0).await;
    w.pod("a", "id-0", &w.node(0)).await;
    w.wait_assigned(&["a"], Duration::from_secs(20)).await;

    // Down for less than the lease (2 s): the leader's renewals fail but its deadline holds.
    w.sim
        .fault_handle()
        .restart(Duration::from_millis(500))
        .await
        .unwrap();
    w.pod("b", "id-0", &w.node(1)).await;
    w.wait_assigned(&["a", "b"], Duration::from_secs(30)).await;
    assert!(
        exited.try_recv().is_err(),
        "MIC kept running through a short restart"
    );
    drop(mic);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_longer_than_the_lease_makes_the_leader_step_down_and_never_two_lead() {
    let w = world("leader").await;
    let mut first = mic(&w, "mic-0", None).await;
    wait_active(first.probe).await;
    let second = mic(&w, "mic-1", None).await;
    let mut first_exit = first.take_exit_signal().unwrap();

    // Watch both probes for the whole fault: never both Active.
    let (p0, p1) = (first.probe, second.probe);
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut samples = 0u32;
            while !stop.is_cancelled() {
                let (a, b) = tokio::join!(health(p0), health(p1));
                assert!(
                    !(a.as_deref() == Some("Active") && b.as_deref() == Some("Active")),
                    "two active leaders"
                );
                samples += 1;
                // A sampling period, not a wait for anything: the invariant is checked as
                // often as the probes answer, for the whole fault.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        }
    });

    // Down for longer than the lease: the leader cannot renew, so it must stop leading
    // before the lease could be taken.
    w.sim
        .fault_handle()
        .restart(Duration::from_secs(4))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut first_exit)
        .await
        .expect("the cut-off leader stepped down")
        .ok();
    wait_active(second.probe).await;
    identity(&w, "id-0", 0).await;
    w.pod("a", "id-0", &w.node(0)).await;
    w.wait_assigned(&["a"], Duration::from_secs(20)).await;
    stop.cancel();
    assert!(sampler.await.unwrap() > 10);
    match first.stop() {
        Some(Err(Error::Leadership(_))) => {}
        other => panic!("expected the first leader to lose its lease, got {other:?}"),
    }
    drop(second);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_error_bursts_and_a_throttle_storm_delay_an_assignment_but_never_lose_it() {
    use aad_pod_identity_sim::azure::{FaultKind, FaultTarget};
    let w = world("arm-weather").await;
    let mic = mic(&w, "mic-0", None).await;
    wait_active(mic.probe).await;
    for code in [503, 500, 502, 504, 503, 500] {
        w.azure
            .inject(FaultTarget::AnyArm, 1, FaultKind::Status(code));
    }
    w.azure.inject(
        FaultTarget::AnyArm,
        3,
        FaultKind::Throttle {
            retry_after_secs: 1,
            as_http_date: false,
        },
    );
    identity(&w, "id-0", 0).await;
    w.pod("a", "id-0", &w.node(0)).await;
    w.wait_assigned(&["a"], Duration::from_secs(60)).await;
    assert!(
        w.on_scale_set(0)
            .contains(&IdentityId::new(&w.identity_rid(0)))
    );
    let counters = w.azure.counters();
    assert_eq!(counters.faults, 9, "every injected fault was met");
    assert_eq!(
        counters.throttle_violations, 0,
        "no request inside a Retry-After window"
    );
    drop(mic);
    w.shutdown().await;
}

/// Identity 1 was never MIC's: once MIC has nothing left to do on the scale set (its queue,
/// which holds removals waiting out their grace period, is empty), it is the one left there.
/// Called once identity 0 is gone, so MIC has seen both pods go: had it taken identity 1 for
/// its own, that removal would be queued (or done) by now.
async fn only_identity_1_stays(w: &Cluster, metrics: SocketAddr) {
    until(
        "MIC has no addition or removal left for scale set 0",
        Duration::from_secs(20),
        async || match queue_depth(w, metrics).await {
            Some(0) => Ok(()),
            other => Err(format!("queue depth {other:?}")),
        },
    )
    .await;
    assert_eq!(
        w.on_scale_set(0),
        [IdentityId::new(&w.identity_rid(1))].into(),
        "only the identity someone else added stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_added_by_a_patch_whose_answer_was_lost_is_removed_once_its_pod_goes() {
    use aad_pod_identity_sim::azure::{FaultKind, FaultTarget};
    let w = world("answer-lost").await;
    // Identity 1 is someone else's: on the scale set before MIC, in none of MIC's writes.
    w.add_by_hand(0, 1).await;
    let mic = mic(&w, "mic-0", None).await;
    wait_active(mic.probe).await;
    // MIC's PATCH adding identity 0 is applied, but its answer never arrives: the client's
    // retry is refused by its precondition and finds identity 0 already there.
    w.azure
        .inject(FaultTarget::ArmPatch, 1, FaultKind::AnswerLost);
    identity(&w, "id-0", 0).await;
    identity(&w, "id-1", 1).await;
    w.pod("a", "id-0", &w.node(0)).await;
    w.pod("b", "id-1", &w.node(1)).await;
    w.wait_assigned(&["a", "b"], Duration::from_secs(30)).await;
    assert_eq!(w.azure.counters().faults, 1, "the answer was lost");
    w.delete_pod("a").await;
    w.delete_pod("b").await;
    // Identity 0 was MIC's (its own lost write put it there): it goes after the grace period.
    w.wait_gone_from_scale_set(0, 0, Duration::from_secs(20))
        .await;
    only_identity_1_stays(&w, mic.metrics).await;
    drop(mic);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_assigned_identity_enabled_behind_mics_back_survives_its_next_write() {
    let w = world("system-assigned").await;
    let mic = mic(&w, "mic-0", None).await;
    wait_active(mic.probe).await;
    identity(&w, "id-0", 0).await;
    identity(&w, "id-1", 1).await;
    w.pod("a", "id-0", &w.node(0)).await;
    w.wait_assigned(&["a"], Duration::from_secs(20)).await;
    // MIC now holds the scale set as its PATCH left it (user-assigned only). Someone enables
    // the system-assigned identity through ARM, keeping identity 0.
    let url = format!(
        "{}subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}?api-version={}",
        w.azure.arm_endpoint(),
        w.topology.subscription_id,
        w.topology.resource_group,
        w.topology.scale_sets[0].name,
        aad_pod_identity::cloud::arm::API_VERSION,
    );
    let token = azure_common::arm_token(&w.azure).await;
    let body = serde_json::json!({"identity": {
        "type": "SystemAssigned, UserAssigned",
        "userAssignedIdentities": {w.identity_rid(0): {}},
    }});
    let r = azure_common::raw(
        azure_core::http::Method::Patch,
        &url,
        &[
            ("authorization", format!("Bearer {token}")),
            ("content-type", "application/json".into()),
        ],
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert!(r.status == 200 || r.status == 202, "{}", r.text);
    // MIC's next write, computed from its older state (type UserAssigned), must not switch
    // the system-assigned identity off.
    w.pod("b", "id-1", &w.node(1)).await;
    w.wait_assigned(&["a", "b"], Duration::from_secs(20)).await;
    assert!(
        w.azure
            .request_log()
            .iter()
            .any(|r| r.method == "PATCH" && r.status == 412),
        "MIC's write on its older state was refused by its If-Match precondition"
    );
    let arm = azure_common::arm_client(&w.azure, azure_common::fast_options());
    let target = aad_pod_identity::cloud::provider_id::ComputeRef::scale_set(
        &w.topology.subscription_id,
        &w.topology.resource_group,
        &w.topology.scale_sets[0].name,
    );
    let state = arm.get_identities(&target).await.unwrap();
    assert_eq!(state.identity_type, "SystemAssigned, UserAssigned");
    assert_eq!(state.user_assigned.len(), 2, "{state:?}");
    drop(mic);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_the_api_always_refuses_never_keep_new_pods_from_being_assigned() {
    use aad_pod_identity_sim::kube::faults::{Refusal, WriteRefusal};
    use k8s_openapi::api::core::v1::Event;
    let w = world("starve").await;
    // Two write slots, writes that take 1 s each (a loaded API server), and six objects that
    // a policy refuses with 422 every time: retried at once, they would take every slot.
    let mut settings = settings(&w, "mic-0");
    settings.create_delete_batch = 2;
    settings.leader.duration = Duration::from_secs(15);
    let faults = w.sim.fault_handle();
    faults.faults().refuse_writes(WriteRefusal {
        plural: "azureassignedidentities".into(),
        namespace: None,
        name_prefix: "bad-".into(),
        refusal: Refusal::Invalid,
        remaining: None,
    });
    let mic = start_mic_with(&w, settings, None).await;
    wait_active(mic.probe).await;
    identity(&w, "id-0", 0).await;
    faults.faults().set_write_latency(Duration::from_secs(1));
    for i in 0..6 {
        w.pod(&format!("bad-{i}"), "id-0", &w.node(0)).await;
    }
    let t0 = Instant::now();
    until(
        "the API server refused each of the six objects once",
        Duration::from_secs(30),
        async || match faults.faults().refused() {
            n if n >= 6 => Ok(()),
            n => Err(format!("{n} refusals")),
        },
    )
    .await;
    // New pods arrive while the six keep failing.
    w.pod("good-0", "id-0", &w.node(0)).await;
    w.pod("good-1", "id-0", &w.node(1)).await;
    w.wait_assigned(&["good-0", "good-1"], Duration::from_secs(20))
        .await;
    // The failing objects back off instead of hammering the API server: well under one
    // attempt per second each.
    let refused = faults.faults().refused();
    let elapsed = t0.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let rate = refused as f64 / elapsed / 6.0;
    assert!(rate < 0.8, "{refused} refusals in {elapsed:.1}s");
    faults.faults().set_write_latency(Duration::ZERO);
    // The failure is on the pod, where `kubectl describe pod` shows it ...
    until(
        "a Warning Event on pod bad-0 says its object's write is being retried",
        Duration::from_secs(20),
        async || {
            let events = Api::<Event>::namespaced(w.client.clone(), "default")
                .list(&ListParams::default().fields("involvedObject.name=bad-0"))
                .await
                .unwrap();
            let found = events.items.iter().any(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.contains("bad-0-default-id-0") && m.contains("retrying"))
            });
            if found {
                Ok(())
            } else {
                Err(format!("{} Events on bad-0", events.items.len()))
            }
        },
    )
    .await;
    // ... and in the metrics, by operation and the API server's answer.
    let metrics = http_get(mic.metrics, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "aadpodidentity_mic_assigned_identity_write_failures_total{operation_type=\"assigned_identity_addition\",reason=\"invalid\"}"
        )),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "aadpodidentity_mic_assigned_identity_writes_backing_off 6"),
        "{metrics}"
    );
    drop(mic);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assigner_of_a_deleted_scale_set_stops_calling_arm_and_is_retired() {
    let w = world("host-gone").await;
    let mic = mic(&w, "mic-0", None).await;
    wait_active(mic.probe).await;
    identity(&w, "id-0", 0).await;
    identity(&w, "id-1", 1).await;
    w.pod("a", "id-0", &w.node(0)).await;
    w.wait_assigned(&["a"], Duration::from_secs(20)).await;
    let live = gauge(mic.metrics, "aadpodidentity_mic_assigners").await;
    // A new pod's write is pending when the scale set is deleted under it.
    w.pod("b", "id-1", &w.node(1)).await;
    w.azure
        .delete_compute(&w.topology.scale_sets[0].name)
        .unwrap();
    until(
        "ARM answered 404 for the deleted scale set",
        Duration::from_secs(20),
        async || match w.azure.request_log().iter().any(|r| r.status == 404) {
            true => Ok(()),
            false => Err(format!("{} ARM requests", w.azure.request_log().len())),
        },
    )
    .await;
    until(
        "the coordinator retired the scale set's assigner",
        Duration::from_secs(20),
        async || match gauge(mic.metrics, "aadpodidentity_mic_assigners").await {
            Some(0) => Ok(()),
            other => Err(format!("assigners gauge {other:?}")),
        },
    )
    .await;
    // Nothing more is sent for it: no retry, however long the pod waits. The window is the
    // scenario, not a wait for anything: an assigner that took the 404 for a passing failure
    // would retry after its transient backoff (1 s, then 2 s more), inside these 3 s.
    let calls = w.azure.request_log().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = w.azure.request_log();
    assert_eq!(
        log.len(),
        calls,
        "ARM calls after the 404: {:?}",
        log[calls..]
            .iter()
            .map(|r| (&r.method, r.status))
            .collect::<Vec<_>>()
    );
    // The coordinator dropped the host's assigner.
    assert_eq!(live, Some(1));
    assert_eq!(
        gauge(mic.metrics, "aadpodidentity_mic_assigners").await,
        Some(0)
    );
    drop(mic);
    w.shutdown().await;
}

async fn namespace(w: &Cluster, name: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(w.client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

/// (pod namespace, pod) of every Assigned object, and the object names.
async fn assigned_pods(w: &Cluster) -> (Vec<(String, String)>, Vec<String>) {
    let l = Api::<AzureAssignedIdentity>::all(w.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut pods: Vec<(String, String)> = l
        .items
        .iter()
        .filter(|a| a.status.as_ref().map(|s| &s.status) == Some(&AssignedState::Assigned))
        .map(|a| (a.spec.pod_namespace.clone(), a.spec.pod.clone()))
        .collect();
    pods.sort();
    let names = l.items.iter().map(kube::ResourceExt::name_any).collect();
    (pods, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_whose_original_names_read_the_same_each_get_an_object_of_their_own() {
    let w = world("collide").await;
    // Cluster-wide mode: every object lives in `default`.
    let mut settings = settings(&w, "mic-0");
    settings.matching.force_namespaced = false;
    // An object left by another controller under the name pod `x` in `default` would get,
    // recording another pod: it is never taken over.
    let mut foreign = AzureAssignedIdentity::new(
        &crd::assigned_identity_name("x", "default", "id-0"),
        crd::AzureAssignedIdentitySpec {
            pod: "someone-else".into(),
            pod_namespace: "elsewhere".into(),
            node_name: w.node(0),
            ..Default::default()
        },
    );
    foreign.metadata.namespace = Some("default".into());
    Api::<AzureAssignedIdentity>::namespaced(w.client.clone(), "default")
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    identity(&w, "id-0", 0).await;
    namespace(&w, "c").await;
    namespace(&w, "b-c").await;
    // `a-b` in `c` and `a` in `b-c`: the original's name is `a-b-c-id-0` for both.
    w.pod_in("c", "a-b", "id-0", &w.node(0)).await;
    w.pod_in("b-c", "a", "id-0", &w.node(1)).await;
    w.pod("x", "id-0", &w.node(0)).await;
    // MIC starts (or takes over) with all of it there.
    let mic = start_mic_with(&w, settings, None).await;
    wait_active(mic.probe).await;
    let want = vec![
        ("b-c".to_string(), "a".to_string()),
        ("c".to_string(), "a-b".to_string()),
        ("default".to_string(), "x".to_string()),
    ];
    let names = until(
        &format!("{want:?} are Assigned in three objects"),
        Duration::from_secs(30),
        async || match assigned_pods(&w).await {
            (pods, names) if pods == want && names.len() == 3 => Ok(names),
            (pods, names) => Err(format!("have {pods:?} in {names:?}")),
        },
    )
    .await;
    assert!(names.contains(&"a-b-c-id-0".to_string()), "{names:?}");
    assert!(
        !names.contains(&"x-default-id-0".to_string()),
        "the other controller's object was released, not taken over: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("x-default-id-0-")),
        "{names:?}"
    );
    drop(mic);
    w.shutdown().await;
}

/// A leader that PATCHes a scale set and is killed before anything else it does reaches the
/// API server; the replica that takes over, then the pods going. `refuse_objects`: the API
/// refuses the dying leader's AzureAssignedIdentity writes (as a slow or failing API server
/// leaves them unwritten when the PATCH goes out). Returns whether the dying leader sent a PATCH.
async fn leader_killed_at_its_patch(tag: &str, refuse_objects: bool) -> bool {
    use aad_pod_identity_sim::kube::faults::{Refusal, WriteRefusal};
    let w = world(tag).await;
    // Identity 1 is someone else's: on the scale set before MIC, in none of MIC's writes.
    w.add_by_hand(0, 1).await;
    identity(&w, "id-0", 0).await;
    identity(&w, "id-1", 1).await;
    let faults = w.sim.fault_handle();
    if refuse_objects {
        faults.faults().refuse_writes(WriteRefusal {
            plural: "azureassignedidentities".into(),
            namespace: None,
            name_prefix: String::new(),
            refusal: Refusal::Internal,
            remaining: None,
        });
    }
    let (mut dying, mut patched) = start_mic_dying_at_patch(&w, settings(&w, "mic-0")).await;
    wait_active(dying.probe).await;
    w.pod("a", "id-0", &w.node(0)).await;
    w.pod("b", "id-1", &w.node(1)).await;
    let sent = tokio::time::timeout(Duration::from_secs(5), patched.recv())
        .await
        .is_ok();
    // Killed: nothing after the PATCH reaches the API server or ARM.
    dying.stop();
    faults.faults().clear_refusals();
    let successor = mic(&w, "mic-1", None).await;
    wait_active(successor.probe).await;
    w.wait_assigned(&["a", "b"], Duration::from_secs(30)).await;
    w.delete_pod("a").await;
    w.delete_pod("b").await;
    // Identity 0 went on the scale set by a leader's write: it goes after the 1 s grace period.
    w.wait_gone_from_scale_set(0, 0, Duration::from_secs(20))
        .await;
    only_identity_1_stays(&w, successor.metrics).await;
    drop(successor);
    w.shutdown().await;
    sent
}

/// The chaos run's leak: the leader's PATCH went out while its objects were not yet stored, it
/// was killed, and its successor took the identity it found on the scale set for someone
/// else's. An identity goes on a host only once an object recording it is stored, so here the
/// dying leader sends no PATCH at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_after_its_patch_before_its_objects_are_stored_leaves_nothing_behind() {
    let sent = leader_killed_at_its_patch("killed-unrecorded", true).await;
    assert!(
        !sent,
        "no identity goes on a host before an object recording it is stored"
    );
}

/// The instant after a PATCH whose objects were stored: the successor adopts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_the_instant_its_patch_is_sent_leaves_nothing_behind() {
    let sent = leader_killed_at_its_patch("killed-at-patch", false).await;
    assert!(sent, "the dying leader sent its PATCH");
}

/// The chaos run's other leak: the object recording an identity on a scale set names a node
/// deleted meanwhile (with its pod) while no leader ran; the next leader must still take the
/// identity for its own and remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_whose_node_was_deleted_between_leaders_is_removed_by_the_next() {
    let w = world("node-deleted").await;
    identity(&w, "id-0", 0).await;
    let mut first = mic(&w, "mic-0", None).await;
    wait_active(first.probe).await;
    w.pod("a", "id-0", &w.node(0)).await;
    w.wait_assigned(&["a"], Duration::from_secs(20)).await;
    first.stop();
    // The node goes, and its pod with it, while no MIC runs.
    w.delete_node(&w.node(0)).await;
    w.delete_pod("a").await;
    let next = mic(&w, "mic-1", None).await;
    wait_active(next.probe).await;
    w.wait_gone_from_scale_set(0, 0, Duration::from_secs(20))
        .await;
    drop(next);
    w.shutdown().await;
}
