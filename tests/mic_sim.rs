//! MIC end to end against the Kubernetes and Azure simulators over real HTTP on loopback:
//! kube-rs watches and writes against the Kubernetes simulator, the Azure layer's ARM client
//! (through MIC's adapter) against the Azure simulator, whose counters count the PATCHes.
//!
//! Each MIC replica runs in its own thread and actix System, as the binary does; "killing" a
//! replica drops its System mid-flight.

use aad_pod_identity::actors::mic::MicSettings;
use aad_pod_identity::actors::mic::cloud_port::CloudArm;
use aad_pod_identity::actors::mic::host::IdentityId;
use aad_pod_identity::actors::mic::port::{ArmPort, HostIdentities};
use aad_pod_identity::cloud::config::CloudConfig;
use aad_pod_identity::crd::{
    self, AssignedState, AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding,
    AzureIdentityBindingSpec, AzureIdentitySpec,
};
use aad_pod_identity::metrics::Metrics;
use aad_pod_identity_sim::topology::Topology;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod mic_support;
mod promtool_support;

use mic_support::*;

/// The original v1.8.17's CRD manifests, as its chart ships them (a test fixture).
fn original_crds() -> Vec<CustomResourceDefinition> {
    let text = include_str!("fixtures/original/crd.yaml");
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            serde_json::from_value(v).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_example_ends_with_both_identities_on_the_scale_set_and_two_assigned_objects() {
    let c = cluster(
        "seed",
        Topology::sized(1, 2, 0, 2),
        azure_with_latency(Duration::from_millis(200)),
    )
    .await;
    let mic = start_mic(&c, settings(&c, "mic-0")).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;

    for i in 0..2 {
        let name = format!("identity-{i}");
        c.identity(&name, &c.identity_rid(i)).await;
        c.pod(&format!("demo-{i}"), &name, &c.node(i)).await;
    }
    let took = c
        .wait_for(
            "two Assigned objects",
            Duration::from_secs(20),
            all_assigned(2),
        )
        .await;
    let on = c.on_scale_set(0);
    assert_eq!(
        on,
        (0..2)
            .map(|i| IdentityId::new(&c.identity_rid(i)))
            .collect()
    );
    let all = c.assigned().await;
    let names: Vec<_> = all
        .iter()
        .map(|a| a.metadata.name.clone().unwrap())
        .collect();
    assert!(
        names.contains(&"demo-0-default-identity-0".to_string()),
        "{names:?}"
    );
    for a in &all {
        assert!(
            a.metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| f.iter().any(|f| f == crd::ASSIGNED_IDENTITY_FINALIZER))
        );
    }
    println!(
        "seed example: {} PATCHes, both Assigned after {took:?} (ARM latency 200 ms)",
        c.patches()
    );
    assert!(c.patches() <= 2);

    // "binding applied" Events on the bindings, from the original's source component, as the
    // original records them (MIC writes them after the status, so they may trail it).
    let mut applied = Vec::new();
    for _ in 0..50 {
        let events = Api::<Event>::namespaced(c.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap();
        applied = events
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("binding applied"))
            .filter(|e| {
                e.source.as_ref().and_then(|s| s.component.as_deref())
                    == Some("aadpodidentity.k8s.io")
            })
            .collect();
        if applied.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(applied.len(), 2);
    let mut on: Vec<_> = applied
        .iter()
        .map(|e| {
            (
                e.involved_object.kind.clone().unwrap_or_default(),
                e.involved_object.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    on.sort();
    assert_eq!(
        on,
        [
            (
                "AzureIdentityBinding".to_string(),
                "identity-0-binding".to_string()
            ),
            (
                "AzureIdentityBinding".to_string(),
                "identity-1-binding".to_string()
            ),
        ]
    );

    let metrics = http_get(mic.metrics, "/metrics").await;
    assert!(
        metrics.contains("aadpodidentity_mic_arm_writes_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("aadpodidentity_mic_assignment_latency_seconds_count 2"));
    promtool_support::promtool_accepts(&metrics);

    // Pods gone: after the grace period the identities leave the scale set and the objects go.
    c.delete_pod("demo-0").await;
    c.delete_pod("demo-1").await;
    c.wait_for("no objects", Duration::from_secs(20), |all| all.is_empty())
        .await;
    assert!(c.on_scale_set(0).is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_a_new_leader_converges_after_the_old_one_dies_mid_batch() {
    let c = cluster(
        "leader",
        Topology::sized(1, 2, 0, 3),
        azure_with_latency(Duration::from_secs(1)),
    )
    .await;
    let mut a = start_mic(&c, settings(&c, "mic-a")).await;
    wait_health(a.probe, "Active", Duration::from_secs(10)).await;
    let b = start_mic(&c, settings(&c, "mic-b")).await;
    assert_eq!(http_get(b.probe, "/healthz").await, "Not Active");
    // A follower is alive (200) but not ready; the leader is both.
    assert_eq!(http_status(b.probe, "/healthz").await, 200);
    assert_eq!(http_status(b.probe, "/readyz").await, 503);
    assert_eq!(http_status(a.probe, "/readyz").await, 200);

    for i in 0..3 {
        let name = format!("identity-{i}");
        c.identity(&name, &c.identity_rid(i)).await;
        c.pod(&format!("app-{i}"), &name, &c.node(i % 2)).await;
    }
    // Kill the leader while its PATCH is in flight.
    let t0 = Instant::now();
    while c.patches() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no PATCH started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before_kill: Vec<_> = c
        .assigned()
        .await
        .into_iter()
        .map(|a| (a.metadata.name.clone(), a.metadata.uid.clone()))
        .collect();
    a.stop();
    let killed = Instant::now();
    let takeover = wait_health(b.probe, "Active", Duration::from_secs(10)).await;
    println!("takeover after {takeover:?} (lease 2 s)");
    assert!(takeover <= Duration::from_secs(3), "{takeover:?}");
    c.wait_for(
        "three Assigned objects",
        Duration::from_secs(20),
        all_assigned(3),
    )
    .await;
    println!(
        "converged {:?} after the kill, {} PATCHes in all",
        killed.elapsed(),
        c.patches()
    );
    assert_eq!(c.on_scale_set(0).len(), 3);
    // The new leader took over the old one's objects rather than recreating them.
    let after: Vec<_> = c
        .assigned()
        .await
        .into_iter()
        .map(|a| (a.metadata.name.clone(), a.metadata.uid.clone()))
        .collect();
    for o in &before_kill {
        assert!(after.contains(o), "{o:?} was replaced");
    }

    // Nothing orphaned: once the pods go, the new leader removes what the old one added.
    for i in 0..3 {
        c.delete_pod(&format!("app-{i}")).await;
    }
    c.wait_for("no objects", Duration::from_secs(20), |all| all.is_empty())
        .await;
    assert!(c.on_scale_set(0).is_empty());
    drop(b);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_identity_does_not_block_valid_ones_and_is_reported_on_the_pod() {
    let c = cluster(
        "invalid",
        Topology::sized(1, 1, 0, 2),
        azure_with_latency(Duration::from_millis(200)),
    )
    .await;
    let deleted = IdentityId::new(&c.identity_rid(1));
    // Deleted in Azure, still named by an AzureIdentity: ARM refuses to assign it.
    c.azure.delete_identity(&c.identity_rid(1)).unwrap();
    let mic = start_mic(&c, settings(&c, "mic-0")).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    c.identity("good", &c.identity_rid(0)).await;
    c.identity("deleted", &c.identity_rid(1)).await;
    c.identity("malformed", "/subscriptions/x/oops").await;
    c.pod("p-good", "good", &c.node(0)).await;
    c.pod("p-deleted", "deleted", &c.node(0)).await;
    c.pod("p-malformed", "malformed", &c.node(0)).await;
    c.wait_for(
        "good Assigned, deleted Created",
        Duration::from_secs(20),
        |all| {
            let st = |n: &str| {
                all.iter()
                    .find(|a| a.metadata.name.as_deref() == Some(n))
                    .and_then(|a| a.status.as_ref().map(|s| s.status.clone()))
            };
            st("p-good-default-good") == Some(AssignedState::Assigned)
                && st("p-deleted-default-deleted") == Some(AssignedState::Created)
                && all.len() == 2
        },
    )
    .await;
    let events = Api::<Event>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap();
    let error_for = |pod: &str| {
        events.items.iter().any(|e| {
            e.reason.as_deref() == Some("binding apply error")
                && e.involved_object.name.as_deref() == Some(pod)
        })
    };
    let t0 = Instant::now();
    let mut events_ok = error_for("p-deleted") && error_for("p-malformed");
    while !events_ok && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ev = Api::<Event>::namespaced(c.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap();
        events_ok = ["p-deleted", "p-malformed"].iter().all(|p| {
            ev.items.iter().any(|e| {
                e.reason.as_deref() == Some("binding apply error")
                    && e.involved_object.name.as_deref() == Some(*p)
            })
        });
    }
    assert!(events_ok, "binding apply error Events on both pods");
    assert!(!c.on_scale_set(0).contains(&deleted));
    c.shutdown().await;
}

/// Write requests the Kubernetes simulator received for each AzureAssignedIdentity.
fn assigned_writes(c: &Cluster) -> BTreeMap<String, u32> {
    c.sim
        .writes()
        .of("azureassignedidentities")
        .into_iter()
        .map(|((_, name), n)| (name, n))
        .collect()
}

/// The statuses each AzureAssignedIdentity was seen with, in order.
type StatusLog = Arc<std::sync::Mutex<BTreeMap<String, Vec<AssignedState>>>>;

/// Records every status each AzureAssignedIdentity is seen with, in order, from a watch.
fn watch_statuses(c: &Cluster) -> (StatusLog, tokio::task::JoinHandle<()>) {
    use futures::StreamExt as _;
    let seen = Arc::new(std::sync::Mutex::new(
        BTreeMap::<String, Vec<AssignedState>>::new(),
    ));
    let out = seen.clone();
    let api = Api::<AzureAssignedIdentity>::all(c.client.clone());
    let task = tokio::spawn(async move {
        let mut s = kube::runtime::watcher(api, kube::runtime::watcher::Config::default()).boxed();
        while let Some(ev) = s.next().await {
            if let Ok(
                kube::runtime::watcher::Event::Apply(a)
                | kube::runtime::watcher::Event::InitApply(a),
            ) = ev
                && let Some(st) = a.status.as_ref().map(|s| s.status.clone())
            {
                let mut m = out.lock().unwrap();
                let v = m
                    .entry(a.metadata.name.clone().unwrap_or_default())
                    .or_default();
                if v.last() != Some(&st) {
                    v.push(st);
                }
            }
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_pods_twenty_identities_twenty_nodes_two_scale_sets_need_at_most_six_patches() {
    let latency = Duration::from_secs(2);
    let c = cluster(
        "burst",
        Topology::sized(2, 10, 0, 20),
        azure_with_latency(latency),
    )
    .await;
    let mic = start_mic(&c, settings(&c, "mic-0")).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    for i in 0..20 {
        c.identity(&format!("identity-{i}"), &c.identity_rid(i))
            .await;
    }
    // Let MIC read both scale sets first, as a running MIC has.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gets0 = c.gets();
    let (seen, watch) = c.watch_assigned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let mut creates = Vec::new();
    for p in 0..200usize {
        let c = &c;
        creates.push(async move {
            // identity i on ten nodes spread over both scale sets
            let (i, k) = (p % 20, p / 20);
            c.pod(
                &format!("p{p}"),
                &format!("identity-{i}"),
                &c.node((i + 2 * k) % 20),
            )
            .await;
        });
    }
    futures::future::join_all(creates).await;
    c.wait_for(
        "200 Assigned objects",
        Duration::from_secs(120),
        all_assigned(200),
    )
    .await;
    // The list above can see the last object Assigned before this watch hears of it.
    let heard = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < 200 && Instant::now() < heard {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let last = {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 200);
        *seen.values().max().unwrap()
    };
    // The watch ends before the simulator does, which would otherwise wait for it.
    watch.abort();
    let patches = c.patches();
    // MIC knew both scale sets (and then its own PATCH answers): no read on the way.
    assert_eq!(c.gets() - gets0, 0, "ARM reads during the burst");
    // Counted, not timed: the time depends on the machine's load, the writes do not.
    let writes = assigned_writes(&c);
    let most = writes.values().max().copied().unwrap_or(0);
    println!(
        "200 pods / 20 identities / 20 nodes / 2 scale sets, ARM latency 2 s: {patches} PATCHes, \
         at most {most} writes per AzureAssignedIdentity, last Assigned seen {:?} after the \
         first pod (informative only)",
        last - t0
    );
    assert!(patches <= 6, "{patches} PATCHes");
    assert_eq!(writes.len(), 200);
    assert!(most <= 2, "{writes:?}");
    for s in 0..2 {
        assert_eq!(c.on_scale_set(s).len(), 20);
    }
    c.shutdown().await;
}

/// Issue 14's write budget: an AzureAssignedIdentity costs at most two writes until it is
/// Assigned (created `Created` while the PATCH is in flight, then `Assigned`), one when its
/// identity is already on the host; the "binding applied" Events of a burst are recorded on
/// the binding as client-go's recorder does, a bounded number of writes per binding rather
/// than one per pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_costs_two_writes_one_when_its_identity_is_on_the_host_and_events_stay_per_binding()
 {
    use aad_pod_identity::actors::mic::recorder::SPAM_BURST;
    let c = cluster(
        "writes",
        Topology::sized(2, 5, 0, 2),
        azure_with_latency(Duration::from_secs(1)),
    )
    .await;
    let mic = start_mic(&c, settings(&c, "mic-0")).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    let (statuses, watch) = watch_statuses(&c);
    for i in 0..2 {
        c.identity(&format!("identity-{i}"), &c.identity_rid(i))
            .await;
    }
    // A burst: 80 pods on 10 nodes of two scale sets, neither identity on either yet.
    let pods = |prefix: &'static str, n: usize| {
        let c = &c;
        futures::future::join_all((0..n).map(move |p| async move {
            c.pod(
                &format!("{prefix}{p}"),
                &format!("identity-{}", p % 2),
                &c.node(p % 10),
            )
            .await;
        }))
    };
    pods("a", 80).await;
    c.wait_for("80 Assigned", Duration::from_secs(120), all_assigned(80))
        .await;
    let first = assigned_writes(&c);
    assert_eq!(first.len(), 80, "{first:?}");
    for (name, n) in &first {
        assert!(*n <= 2, "{name}: {n} writes until Assigned");
    }
    // Created objects were written while the scale sets' PATCHes were in flight, not after.
    let created_first = statuses
        .lock()
        .unwrap()
        .values()
        .filter(|v| v.first() == Some(&AssignedState::Created))
        .count();
    assert!(
        created_first > 0,
        "no object was written before its PATCH answered"
    );

    // More pods whose identities are on their scale sets now: one write each, straight to
    // Assigned, without waiting for any PATCH.
    let patches = c.patches();
    pods("b", 20).await;
    c.wait_for("100 Assigned", Duration::from_secs(60), all_assigned(100))
        .await;
    assert_eq!(
        c.patches(),
        patches,
        "no PATCH for identities already on the host"
    );
    let all = assigned_writes(&c);
    // The watch may trail the list the wait above polled.
    let t = Instant::now();
    let seen = loop {
        let seen = statuses.lock().unwrap().clone();
        if seen.len() >= 100 || t.elapsed() > Duration::from_secs(30) {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for p in 0..20 {
        let name = format!("b{p}-default-identity-{}", p % 2);
        assert_eq!(all.get(&name), Some(&1), "{name}: {all:?}");
        assert_eq!(
            seen.get(&name).map(Vec::as_slice),
            Some(&[AssignedState::Assigned][..]),
            "{name}"
        );
    }
    watch.abort();

    // Events: the "binding applied" Events of 100 assignments on two bindings, at most a
    // spam bucket's worth of writes per binding (the original wrote one per pod).
    let events: u32 = c.sim.writes().of("events").values().sum();
    assert!(
        events <= 2 * SPAM_BURST,
        "{events} Event writes for 100 assignments on 2 bindings"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_used_by_another_pod_on_the_same_scale_set_is_not_removed() {
    let c = cluster(
        "shared",
        Topology::sized(1, 2, 0, 1),
        azure_with_latency(Duration::from_millis(100)),
    )
    .await;
    let mic = start_mic(&c, settings(&c, "mic-0")).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    c.identity("identity-0", &c.identity_rid(0)).await;
    c.pod("a", "identity-0", &c.node(0)).await;
    c.pod("b", "identity-0", &c.node(1)).await;
    c.wait_for("two Assigned", Duration::from_secs(20), all_assigned(2))
        .await;
    c.delete_pod("a").await;
    c.wait_for("a's object gone", Duration::from_secs(20), all_assigned(1))
        .await;
    // Well past the 1 s grace period: still there for b.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.on_scale_set(0).len(), 1);
    assert_eq!(c.patches(), 1, "only the add");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_identity_is_assigned_without_an_arm_write_and_migrating_one_releases_it() {
    let c = cluster(
        "federated",
        Topology::sized(1, 2, 0, 2),
        azure_with_latency(Duration::from_millis(100)),
    )
    .await;
    let mic = start_mic(&c, settings(&c, "mic-0")).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    let federate = |name: &str| {
        let api = Api::<AzureIdentity>::namespaced(c.client.clone(), "default");
        let name = name.to_string();
        async move {
            api.patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                    crd::FEDERATED_ANNOTATION: "true"
                }}})),
            )
            .await
            .unwrap();
        }
    };
    // Federated from the start: Assigned without any ARM call naming it.
    c.identity("identity-1", &c.identity_rid(1)).await;
    federate("identity-1").await;
    c.pod("fed", "identity-1", &c.node(0)).await;
    c.wait_for(
        "the federated pod Assigned",
        Duration::from_secs(20),
        all_assigned(1),
    )
    .await;
    assert_eq!(c.azure.counters().writes_naming(&c.identity_rid(1)), 0);
    assert!(c.on_scale_set(0).is_empty());

    // An assigned identity migrated to federation: its pod stays Assigned, and MIC releases the
    // identity it had put on the scale set (after the 1 s grace period).
    c.identity("identity-0", &c.identity_rid(0)).await;
    c.pod("plain", "identity-0", &c.node(1)).await;
    c.wait_for("both Assigned", Duration::from_secs(20), all_assigned(2))
        .await;
    assert_eq!(c.on_scale_set(0).len(), 1);
    federate("identity-0").await;
    wait_scale_set(&c, "identity-0 released", Duration::from_secs(20), |on| {
        on.is_empty()
    })
    .await;
    assert!(
        all_assigned(2)(&c.assigned().await),
        "the pods keep their assignment"
    );
    let counters = c.azure.counters();
    assert_eq!(
        counters.writes_naming(&c.identity_rid(0)),
        2,
        "one add, one removal"
    );
    assert_eq!(counters.writes_naming(&c.identity_rid(1)), 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_reconcile_re_adds_an_identity_removed_by_hand() {
    let c = cluster(
        "reconcile",
        Topology::sized(1, 1, 0, 1),
        azure_with_latency(Duration::from_millis(100)),
    )
    .await;
    let mut s = settings(&c, "mic-0");
    s.reconcile_interval = Duration::from_secs(1);
    let mic = start_mic(&c, s).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    c.identity("identity-0", &c.identity_rid(0)).await;
    c.pod("a", "identity-0", &c.node(0)).await;
    c.wait_for("Assigned", Duration::from_secs(20), all_assigned(1))
        .await;
    // Someone removes it by hand through ARM (as `az vmss identity remove` would).
    let by_hand = CloudArm::from_config(&c.cloud_config()).unwrap();
    by_hand
        .patch(
            &c.scale_set(0),
            &HostIdentities::default(),
            &[],
            &[IdentityId::new(&c.identity_rid(0))],
        )
        .await
        .unwrap();
    assert!(c.on_scale_set(0).is_empty());
    let before = c.patches();
    let t0 = Instant::now();
    while c.on_scale_set(0).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "never re-added");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.patches(), before + 1, "one PATCH re-adds it");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_churn_inside_the_grace_period_costs_two_patches() {
    // A CronJob every minute with a 60 s grace period, scaled down 30x: a run every 2 s,
    // each pod running 0.5 s, a 2 s grace period.
    let c = cluster(
        "cron",
        Topology::sized(1, 2, 0, 1),
        azure_with_latency(Duration::from_millis(100)),
    )
    .await;
    let mut s = settings(&c, "mic-0");
    s.batch.unassign_grace = Duration::from_secs(2);
    let mic = start_mic(&c, s).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    c.identity("identity-0", &c.identity_rid(0)).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    for run in 0..10 {
        let name = format!("cron-{run}");
        c.pod(&name, "identity-0", &c.node(run % 2)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        pods.patch_status(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.delete_pod(&name).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    c.wait_for("no objects", Duration::from_secs(20), |all| all.is_empty())
        .await;
    let patches = c.patches();
    println!("CronJob churn, 10 runs: {patches} PATCHes");
    assert_eq!(patches, 2);
    assert!(c.on_scale_set(0).is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_nodes_assignments_are_cleaned_up() {
    let c = cluster(
        "nodegone",
        Topology::sized(1, 2, 0, 1),
        azure_with_latency(Duration::from_millis(100)),
    )
    .await;
    let mic = start_mic(&c, settings(&c, "mic-0")).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    c.identity("identity-0", &c.identity_rid(0)).await;
    c.pod("a", "identity-0", &c.node(0)).await;
    c.wait_for("Assigned", Duration::from_secs(20), all_assigned(1))
        .await;
    assert_eq!(c.on_scale_set(0).len(), 1);
    Api::<k8s_openapi::api::core::v1::Node>::all(c.client.clone())
        .delete(&c.node(0), &DeleteParams::default())
        .await
        .unwrap();
    c.wait_for("no objects", Duration::from_secs(20), |all| all.is_empty())
        .await;
    let t0 = Instant::now();
    while !c.on_scale_set(0).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "identity left behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_from_another_namespace_is_refused_with_an_event_on_the_pod() {
    let c = cluster(
        "crossns",
        Topology::sized(1, 1, 0, 1),
        azure_with_latency(Duration::from_millis(100)),
    )
    .await;
    let mic = start_mic(&c, settings(&c, "mic-0")).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "team-b"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(c.client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    // Identity and binding in `default`; the pod in `team-b` uses the binding's selector.
    c.identity("identity-0", &c.identity_rid(0)).await;
    let p: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "intruder", "namespace": "team-b", "labels": {"aadpodidbinding": "identity-0"}},
        "spec": {"nodeName": c.node(0), "containers": [{"name": "app", "image": "demo"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(c.client.clone(), "team-b")
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(c.client.clone(), "team-b");
    let t0 = Instant::now();
    loop {
        let found = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("binding apply error")
                    && e.involved_object.name.as_deref() == Some("intruder")
            });
        if let Some(e) = found {
            let msg = e.message.unwrap_or_default();
            assert!(msg.contains("namespaced"), "{msg}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no Event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.assigned().await.is_empty());
    assert_eq!(c.patches(), 0);
    c.shutdown().await;
}

/// Waits until `pred` holds of the identities on scale set 0, or panics after `timeout`.
async fn wait_scale_set(
    c: &Cluster,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&BTreeSet<IdentityId>) -> bool,
) {
    let t0 = Instant::now();
    while !pred(&c.on_scale_set(0)) {
        assert!(
            t0.elapsed() < timeout,
            "timed out waiting for {what}; scale set holds {:?}",
            c.on_scale_set(0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pod `a` with identity-0 Assigned; then identity-5 put on scale set 0 through ARM by
/// someone other than MIC; then pod `b` with identity-5 Assigned. Returns identity-5.
async fn pod_a_then_identity_5_added_by_hand_then_pod_b(c: &Cluster) -> IdentityId {
    c.identity("identity-0", &c.identity_rid(0)).await;
    c.pod("a", "identity-0", &c.node(0)).await;
    c.wait_for("a Assigned", Duration::from_secs(20), all_assigned(1))
        .await;
    let five = IdentityId::new(&c.identity_rid(5));
    c.add_by_hand(0, 5).await;
    c.identity("identity-5", &c.identity_rid(5)).await;
    c.pod("b", "identity-5", &c.node(0)).await;
    c.wait_for("b Assigned", Duration::from_secs(20), all_assigned(2))
        .await;
    five
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_added_by_hand_stays_after_its_pod_leaves_even_across_a_restart() {
    // The sequence from the field: MIC knows the scale set; identity-5 is added to it directly
    // through ARM; a pod bound to identity-5 runs there (Assigned without MIC's write), MIC
    // restarts, the pod goes, the grace period passes: identity-5 must still be there.
    let c = cluster(
        "by-hand",
        Topology::sized(1, 1, 0, 6),
        azure_with_latency(Duration::from_millis(50)),
    )
    .await;
    let mut mic = start_mic(&c, settings(&c, "mic-0")).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    let five = pod_a_then_identity_5_added_by_hand_then_pod_b(&c).await;
    let b = c
        .assigned()
        .await
        .into_iter()
        .find(|a| a.spec.pod == "b")
        .unwrap();
    assert!(
        b.identity_is_external(),
        "the object records that MIC did not add identity-5: {:?}",
        b.metadata.annotations
    );
    mic.stop();
    let mic = start_mic(&c, settings(&c, "mic-1")).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    c.delete_pod("b").await;
    c.wait_for("b's object gone", Duration::from_secs(20), all_assigned(1))
        .await;
    // Well past the 1 s grace period.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        c.on_scale_set(0).contains(&five),
        "identity-5 was removed: {:?}",
        c.on_scale_set(0)
    );
    // MIC's own identity still goes when its pod goes.
    c.delete_pod("a").await;
    wait_scale_set(&c, "identity-0 removed", Duration::from_secs(20), |on| {
        on.len() == 1 && on.contains(&five)
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_added_between_mics_read_and_its_write_is_never_taken_for_mics() {
    let c = cluster(
        "between",
        Topology::sized(1, 1, 0, 6),
        azure_with_latency(Duration::from_millis(50)),
    )
    .await;
    let mic = start_mic(&c, settings(&c, "mic-0")).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    // MIC holds the scale set's state from its last PATCH answer. Someone else then adds
    // identity-5 through ARM: MIC's next PATCH is based on a state that no longer holds.
    let five = pod_a_then_identity_5_added_by_hand_then_pod_b(&c).await;
    assert!(
        c.azure
            .request_log()
            .iter()
            .any(|r| r.method == "PATCH" && r.status == 412),
        "MIC's write was refused by its If-Match precondition"
    );
    c.delete_pod("b").await;
    c.wait_for("b's object gone", Duration::from_secs(20), all_assigned(1))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        c.on_scale_set(0).contains(&five),
        "identity-5 was removed: {:?}",
        c.on_scale_set(0)
    );
    drop(mic);
    c.shutdown().await;
}

/// An AzureAssignedIdentity as the original (Go) MIC writes it for `pod` and identity `i`.
fn go_written_assignment(c: &Cluster, pod: &str, i: usize) -> serde_json::Value {
    let name = format!("identity-{i}");
    serde_json::json!({
        "apiVersion": "aadpodidentity.k8s.io/v1",
        "kind": "AzureAssignedIdentity",
        "metadata": {
            "name": crd::assigned_identity_name(pod, "default", &name),
            "namespace": "default",
            "labels": {"nodename": c.node(0)},
            "finalizers": [crd::ASSIGNED_IDENTITY_FINALIZER],
        },
        "spec": {
            "metadata": {"creationTimestamp": null},
            "azureIdentityRef": {
                "metadata": {"name": name, "namespace": "default", "creationTimestamp": null},
                "spec": {
                    "metadata": {"creationTimestamp": null},
                    "type": 0,
                    "resourceID": c.identity_rid(i),
                    "clientID": format!("client-{name}"),
                    "clientPassword": {},
                    "auxiliaryTenantIDs": null,
                    "replicas": null
                },
                "status": {"metadata": {"creationTimestamp": null}, "availableReplicas": 0}
            },
            "azureBindingRef": {
                "metadata": {"name": format!("{name}-binding"), "namespace": "default", "creationTimestamp": null},
                "spec": {"metadata": {"creationTimestamp": null}, "azureIdentity": name, "selector": name, "weight": 0},
                "status": {"metadata": {"creationTimestamp": null}, "availableReplicas": 0}
            },
            "pod": pod,
            "podNamespace": "default",
            "nodename": c.node(0),
            "replicas": null
        },
        "status": {"metadata": {"creationTimestamp": null}, "availableReplicas": 0, "status": "Assigned"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_from_the_original_takes_over_its_objects_and_assigns_new_pods_under_its_crds() {
    let c = cluster_with(
        "upgrade",
        Topology::sized(1, 1, 0, 2),
        azure_with_latency(Duration::from_millis(50)),
        original_crds(),
    )
    .await;
    // The cluster as the Go MIC left it: identity-0 on the scale set for pod "old", recorded
    // in an Assigned object of the Go MIC's shape.
    let zero = IdentityId::new(&c.identity_rid(0));
    CloudArm::from_config(&c.cloud_config())
        .unwrap()
        .patch(
            &c.scale_set(0),
            &HostIdentities::default(),
            std::slice::from_ref(&zero),
            &[],
        )
        .await
        .unwrap();
    c.identity("identity-0", &c.identity_rid(0)).await;
    c.pod("old", "identity-0", &c.node(0)).await;
    let go: AzureAssignedIdentity =
        serde_json::from_value(go_written_assignment(&c, "old", 0)).unwrap();
    let aais = Api::<AzureAssignedIdentity>::namespaced(c.client.clone(), "default");
    let created = aais.create(&PostParams::default(), &go).await.unwrap();
    let patches_before = c.patches();

    // Our MIC takes over: the object stays (same uid), Assigned, and nothing is re-PATCHed.
    let mic = start_mic(&c, settings(&c, "mic-0")).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    // A new pod under the original's CRDs (no status subresource): Created, then Assigned.
    c.identity("identity-1", &c.identity_rid(1)).await;
    c.pod("new", "identity-1", &c.node(0)).await;
    c.wait_for("both Assigned", Duration::from_secs(20), all_assigned(2))
        .await;
    let after = aais
        .get(&created.metadata.name.clone().unwrap())
        .await
        .unwrap();
    assert_eq!(
        after.metadata.uid, created.metadata.uid,
        "taken over, not recreated"
    );
    assert_eq!(
        c.patches(),
        patches_before + 1,
        "one PATCH: identity-1; identity-0 was already there"
    );

    // Rollback direction: what our MIC wrote validates against the original's CRDs (the
    // simulator prunes and validates with them) and keeps every field the Go NMI reads...
    let ours = aais
        .get(&crd::assigned_identity_name("new", "default", "identity-1"))
        .await
        .unwrap();
    let v = serde_json::to_value(&ours).unwrap();
    assert_eq!(v["spec"]["pod"], "new");
    assert_eq!(v["spec"]["podNamespace"], "default");
    assert_eq!(v["spec"]["nodename"], c.node(0));
    assert_eq!(v["metadata"]["labels"]["nodename"], c.node(0));
    assert_eq!(
        v["metadata"]["finalizers"][0],
        crd::ASSIGNED_IDENTITY_FINALIZER
    );
    assert_eq!(v["status"]["status"], "Assigned");
    let id = &v["spec"]["azureIdentityRef"];
    assert_eq!(id["metadata"]["name"], "identity-1");
    assert_eq!(id["spec"]["type"], 0);
    assert_eq!(id["spec"]["resourceID"], c.identity_rid(1));
    assert_eq!(id["spec"]["clientID"], "client-identity-1");
    assert_eq!(
        v["spec"]["azureBindingRef"]["spec"]["selector"],
        "identity-1"
    );
    // ...and takes the Go MIC's own status write (a JSON patch replacing /status/status).
    let replaced = aais
        .patch(
            &crd::assigned_identity_name("new", "default", "identity-1"),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::<()>::Json(
                serde_json::from_value(serde_json::json!([
                    {"op": "replace", "path": "/status/status", "value": "Assigned"}
                ]))
                .unwrap(),
            ),
        )
        .await;
    assert!(replaced.is_ok(), "{replaced:?}");

    // The Go MIC's assignment is ours to clean up once its pod goes, as the original would.
    c.delete_pod("old").await;
    c.wait_for(
        "old's object gone",
        Duration::from_secs(20),
        all_assigned(1),
    )
    .await;
    wait_scale_set(&c, "identity-0 removed", Duration::from_secs(20), |on| {
        !on.contains(&zero)
    })
    .await;
    drop(mic);
    c.shutdown().await;
}

/// `--clientQps` and `--custom-user-agent` as the binary reads them: every request MIC sends to
/// the API server carries the original's User-Agent with the operator's text, and the actors'
/// requests arrive no faster than the rate (a burst of 10, then 10 a second); ARM and Azure AD
/// see the same User-Agent after the SDK's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mic_sends_the_originals_user_agent_and_keeps_to_client_qps() {
    let c = cluster(
        "qps",
        Topology::sized(1, 2, 0, 1),
        azure_with_latency(Duration::from_millis(50)),
    )
    .await;
    let args = mic_args_from(&["--clientQps=10", "--custom-user-agent=team-a"]);
    let mut s = MicSettings::from(&args);
    let defaults = settings(&c, "mic-0");
    s.kubeconfig = defaults.kubeconfig;
    s.listen_address = defaults.listen_address;
    (s.http_probe_port, s.prometheus_port) = (0, 0);
    s.leader.instance = "mic-0".into();
    // Renewals (their own, unlimited client) far apart, so the count below is the actors'.
    s.leader.duration = Duration::from_secs(60);
    let ua = s.user_agent.clone();
    assert!(
        ua.starts_with("aad-pod-identity/MIC/") && ua.ends_with(" team-a"),
        "{ua}"
    );
    let config = c.cloud_config();
    let arm_ua = ua.clone();
    let mic = aad_pod_identity::actors::mic::spawn(s, Metrics::new(), None, move || {
        Arc::new(CloudArm::from_config_as(&config, &arm_ua).unwrap()) as Arc<dyn ArmPort>
    })
    .await
    .unwrap();
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    c.identity("identity-0", &c.identity_rid(0)).await;
    for i in 0..20 {
        c.pod(&format!("p{i}"), "identity-0", &c.node(i % 2)).await;
    }
    c.wait_for("20 Assigned", Duration::from_secs(60), all_assigned(20))
        .await;

    let by_agent = c.sim.requests_by_user_agent();
    let mut times = by_agent.get(&ua).cloned().unwrap_or_default();
    times.sort();
    assert!(
        times.len() >= 50,
        "creates, status writes and Events for 20 pods: {} requests by {ua:?}; agents {:?}",
        times.len(),
        by_agent.keys().collect::<Vec<_>>()
    );
    // Tower's windows: at most two bursts (20) fall into any second, plus a renewal or two.
    let busiest = times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest <= 23,
        "{busiest} requests within one second at --clientQps=10"
    );
    // At most 8 are leader election's (its own client: two locks, read and write, taken once and
    // renewed at most once here); the rest come 10 per window, so the last of them is at least
    // one second per full window after the first (less a little arrival jitter).
    let spread = *times.last().unwrap() - times[0];
    let windows = u32::try_from((times.len() - 8 - 1) / 10).unwrap();
    let least = Duration::from_secs(windows.into()).saturating_sub(Duration::from_millis(100));
    assert!(
        spread >= least,
        "{} requests in {spread:?} at --clientQps=10",
        times.len()
    );

    let azure_calls = c.azure.request_log();
    assert!(!azure_calls.is_empty());
    for r in &azure_calls {
        assert!(
            r.user_agent.contains("aad-pod-identity/MIC/") && r.user_agent.ends_with(" team-a"),
            "{} {} came with User-Agent {:?}",
            r.method,
            r.path,
            r.user_agent
        );
    }
    assert!(
        azure_calls.iter().any(|r| r.path.contains("oauth2")),
        "the ARM credential's token request is among them"
    );
    drop(mic);
    c.shutdown().await;
}

/// azure.json is reloaded when it changes, as the original re-read it: MIC starts with a client
/// secret Azure AD refuses, assigns nothing, and once the file holds the rotated secret the
/// pod's identity is assigned without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_in_azure_json_is_picked_up_without_a_restart() {
    let c = cluster(
        "reload",
        Topology::sized(1, 1, 0, 1),
        azure_with_latency(Duration::from_millis(20)),
    )
    .await;
    let path = c.dir().join("azure.json");
    let mut json = c.azure.azure_json();
    let good = json.clone();
    json["aadClientSecret"] = "an-old-secret".into();
    std::fs::write(&path, json.to_string()).unwrap();

    let mut s = settings(&c, "mic-0");
    s.batch.transient_backoff_max = Duration::from_secs(1);
    let p = path.clone();
    let mic = aad_pod_identity::actors::mic::spawn(s, Metrics::new(), None, move || {
        let (arm, _) = CloudArm::watching(&p, "test").unwrap();
        Arc::new(arm) as Arc<dyn ArmPort>
    })
    .await
    .unwrap();
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    c.identity("identity-0", &c.identity_rid(0)).await;
    c.pod("demo", "identity-0", &c.node(0)).await;
    c.wait_for("the object, Created", Duration::from_secs(10), |all| {
        all.len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.patches(), 0, "no ARM write with a refused credential");
    assert!(!all_assigned(1)(&c.assigned().await));

    std::fs::write(&path, good.to_string()).unwrap();
    c.wait_for(
        "Assigned with the rotated secret",
        Duration::from_secs(30),
        all_assigned(1),
    )
    .await;
    assert_eq!(c.on_scale_set(0).len(), 1);
    drop(mic);
    c.shutdown().await;
}

/// `AzureStackCloud` takes its endpoints from the file `$AZURE_ENVIRONMENT_FILEPATH` names
/// (the chart's `mic.customCloud`), so MIC reaches an ARM and an Azure AD that no built-in
/// cloud has: here the simulator's, with no custom endpoints in azure.json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_stack_cloud_is_reached_through_its_environment_file() {
    let c = cluster(
        "stack",
        Topology::sized(1, 1, 0, 1),
        azure_with_latency(Duration::ZERO),
    )
    .await;
    let env_file = c.dir().join("akscustom.json");
    std::fs::write(
        &env_file,
        serde_json::json!({
            "name": "AzureStackCloud",
            "resourceManagerEndpoint": c.azure.arm_endpoint(),
            "activeDirectoryEndpoint": c.azure.aad_endpoint(),
            "tokenAudience": "https://management.azure.com/",
        })
        .to_string(),
    )
    .unwrap();
    let mut json = c.azure.azure_json();
    json["cloud"] = "AzureStackCloud".into();
    let obj = json.as_object_mut().unwrap();
    obj.remove("resourceManagerEndpoint");
    obj.remove("activeDirectoryAuthorityHost");
    let var = |k: &str| (k == "AZURE_ENVIRONMENT_FILEPATH").then(|| env_file.display().to_string());
    let config = CloudConfig::from_json_with(&json.to_string(), var).unwrap();
    assert_eq!(config.arm_endpoint(), c.azure.arm_endpoint());
    let arm = CloudArm::from_config(&config).unwrap();
    let got = arm.get(&c.scale_set(0)).await.unwrap();
    assert!(got.user_assigned.is_empty());

    // Without the file the name is refused, saying what is missing.
    let e = CloudConfig::from_json_with(&json.to_string(), |_| None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("AZURE_ENVIRONMENT_FILEPATH"), "{e}");
    c.shutdown().await;
}

/// An edit to an AzureIdentity (here a service principal's tenant and Secret reference) is
/// written into its AzureAssignedIdentities, which stay Assigned, with no ARM write: NMI reads
/// the identity from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_edit_reaches_its_assigned_identities() {
    let c = cluster(
        "edit",
        Topology::sized(1, 1, 0, 1),
        azure_with_latency(Duration::from_millis(20)),
    )
    .await;
    let mic = start_mic(&c, settings(&c, "mic-0")).await;
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    let ids = Api::<AzureIdentity>::namespaced(c.client.clone(), "default");
    let mut sp = AzureIdentity::new(
        "sp",
        AzureIdentitySpec {
            type_: crd::IdentityType::ServicePrincipal,
            client_id: "sp-client".into(),
            tenant_id: "tenant-a".into(),
            ..AzureIdentitySpec::default()
        },
    );
    sp.metadata.namespace = Some("default".into());
    ids.create(&PostParams::default(), &sp).await.unwrap();
    let mut b = AzureIdentityBinding::new(
        "sp-binding",
        AzureIdentityBindingSpec {
            azure_identity: "sp".into(),
            selector: "sp".into(),
            weight: 0,
        },
    );
    b.metadata.namespace = Some("default".into());
    Api::<AzureIdentityBinding>::namespaced(c.client.clone(), "default")
        .create(&PostParams::default(), &b)
        .await
        .unwrap();
    c.pod("demo", "sp", &c.node(0)).await;
    c.wait_for("Assigned", Duration::from_secs(20), all_assigned(1))
        .await;

    let patch = serde_json::json!({"spec": {"tenantID": "tenant-b", "clientPassword": {"name": "rotated", "namespace": "default"}}});
    ids.patch(
        "sp",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap();
    c.wait_for("the edit in the object", Duration::from_secs(20), |all| {
        all.len() == 1
            && all[0].spec.azure_identity_ref.as_ref().is_some_and(|i| {
                i.spec.tenant_id == "tenant-b" && i.spec.client_password.name == "rotated"
            })
            && all_assigned(1)(all)
    })
    .await;
    assert_eq!(c.patches(), 0, "a service principal needs no ARM write");
    drop(mic);
    c.shutdown().await;
}

/// A rolling migration from the Go MIC never has two active controllers: while the Go MIC holds
/// its Endpoints lock (client-go's record in the `control-plane.alpha.kubernetes.io/leader`
/// annotation, renewed), ours stays a candidate and writes nothing; once the Go MIC stops
/// renewing, ours takes the lock within its lease duration, assigns, and keeps renewing the
/// Endpoints record, so a Go MIC starting again stays a candidate in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_mic_holding_the_endpoints_lock_keeps_ours_from_leading_until_it_stops_renewing() {
    use k8s_openapi::api::core::v1::Endpoints;
    const LOCK: &str = "control-plane.alpha.kubernetes.io/leader";
    let c = cluster(
        "endpoints-lock",
        Topology::sized(1, 1, 0, 1),
        azure_with_latency(Duration::from_millis(20)),
    )
    .await;
    let endpoints = Api::<Endpoints>::namespaced(c.client.clone(), "default");
    let go_record = |renew: &str| {
        serde_json::json!({
            "holderIdentity": "mic-go-7d9f",
            "leaseDurationSeconds": 2,
            "acquireTime": "2024-05-01T10:00:00Z",
            "renewTime": renew,
            "leaderTransitions": 3,
        })
        .to_string()
    };
    let now = || {
        k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let ep: Endpoints = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "aad-pod-identity-mic", "namespace": "default",
                     "annotations": {LOCK: go_record(&now())}},
    }))
    .unwrap();
    endpoints.create(&PostParams::default(), &ep).await.unwrap();
    // The Go MIC renews every half second until told to stop.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let renewer = {
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stop_rx => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                let mut ep = endpoints.get("aad-pod-identity-mic").await.unwrap();
                ep.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert(LOCK.into(), go_record(&now()));
                let _ = endpoints
                    .replace("aad-pod-identity-mic", &PostParams::default(), &ep)
                    .await;
            }
        })
    };

    let mic = start_mic(&c, settings(&c, "mic-0")).await;
    c.identity("identity-0", &c.identity_rid(0)).await;
    c.pod("demo", "identity-0", &c.node(0)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(http_get(mic.probe, "/healthz").await, "Not Active");
    assert!(
        c.assigned().await.is_empty(),
        "no write while the Go MIC leads"
    );
    assert_eq!(c.patches(), 0);

    stop_tx.send(()).unwrap();
    renewer.await.unwrap();
    let took = wait_health(mic.probe, "Active", Duration::from_secs(10)).await;
    println!("took over {took:?} after the Go MIC stopped renewing (lease 2 s)");
    c.wait_for("Assigned", Duration::from_secs(20), all_assigned(1))
        .await;

    let record = || async {
        let ep = endpoints.get("aad-pod-identity-mic").await.unwrap();
        let raw = ep.metadata.annotations.unwrap()[LOCK].clone();
        serde_json::from_str::<serde_json::Value>(&raw).unwrap()
    };
    let first = record().await;
    assert_eq!(first["holderIdentity"], "mic-0");
    assert_eq!(first["leaseDurationSeconds"], 2);
    assert_eq!(first["leaderTransitions"], 4);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = record().await;
    assert_eq!(later["holderIdentity"], "mic-0");
    assert_ne!(
        first["renewTime"], later["renewTime"],
        "renewed, as a Go MIC watching the record must see"
    );
    drop(mic);
    c.shutdown().await;
}
