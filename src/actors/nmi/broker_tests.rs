//! Broker behaviour under a paused clock, with a fake token source.

use super::*;
use crate::actors::nmi::assignments::fixtures::assigned;
use crate::actors::nmi::identity::fixtures::{identity, namespaced};
use crate::actors::nmi::pods::fixtures::pod;
use crate::actors::nmi::source::{UpstreamToken, unix_now};
use crate::actors::nmi::watchers::{Assigned, Sink};
use crate::crd::{AssignedState, AzurePodIdentityException, AzurePodIdentityExceptionSpec};
use async_trait::async_trait;
use base64::Engine as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Records every request; answers with a JWT whose `oid` is `oid-<client id>`. Client id
/// `refused` gets a 400, `down` an unreachable service.
#[derive(Default)]
struct FakeSource {
    calls: AtomicUsize,
    seen: Mutex<Vec<TokenRequest>>,
}

#[async_trait]
impl crate::actors::nmi::source::TokenSource for FakeSource {
    async fn fetch(&self, req: &TokenRequest) -> Result<UpstreamToken, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(req.clone());
        tokio::time::sleep(Duration::from_millis(5)).await;
        let who = match &req.target {
            TokenTarget::Node { client_id } => client_id.clone().unwrap_or_else(|| "node".into()),
            TokenTarget::UserAssigned { client_id, .. } => client_id.clone(),
            TokenTarget::ServicePrincipal { identity, .. } => identity.client_id.clone(),
            // A federated token names the subject it was exchanged for.
            TokenTarget::Federated { client_id, pod, .. } => {
                format!("{client_id}-{}", pod.service_account)
            }
        };
        match who.as_str() {
            "down" => return Err(SourceError::Unreachable("connection refused".into())),
            "refused" => {
                return Ok(UpstreamToken {
                    status: 400,
                    body: r#"{"error":"invalid_request"}"#.into(),
                });
            }
            _ => {}
        }
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"oid":"oid-{who}"}}"#));
        let body = format!(
            r#"{{"access_token":"h.{claims}.s","expires_on":"{}","resource":"{}","token_type":"Bearer"}}"#,
            unix_now() + 3600,
            req.resource
        );
        Ok(UpstreamToken {
            status: 200,
            body: body.into(),
        })
    }
}

struct World {
    broker: Arc<Broker>,
    pods: Arc<PodIndex>,
    assignments: Arc<AssignmentIndex>,
    exceptions: Arc<ExceptionIndex>,
    cache: Arc<TokenCache>,
    source: Arc<FakeSource>,
}

fn world() -> World {
    let source = Arc::new(FakeSource::default());
    let pods = Arc::new(PodIndex::new("node-1"));
    let assignments = Arc::new(AssignmentIndex::new("node-1", false));
    let exceptions = Arc::new(ExceptionIndex::new());
    let cache = Arc::new(TokenCache::new(
        source.clone(),
        Duration::from_secs(300),
        Duration::from_secs(30),
        None,
    ));
    let broker = Arc::new(Broker::new(
        Arc::clone(&pods),
        IdentityFeed::Standard(Arc::clone(&assignments)),
        Arc::clone(&exceptions),
        Arc::clone(&cache),
        BrokerSettings {
            node: "node-1".into(),
            mic_namespace: "default".into(),
            mic_service_account: "aad-pod-identity-mic".into(),
            max_waiters_per_pod: 100,
            max_waiters: 10_000,
            assignment_wait: Duration::from_secs(80),
            assigned_grace: Duration::from_secs(20),
            pod_arrival_timeout: Duration::from_secs(2),
        },
        None,
    ));
    World {
        broker,
        pods,
        assignments,
        exceptions,
        cache,
        source,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn access_token(a: &Answer) -> String {
    let v: serde_json::Value = serde_json::from_slice(&a.token.token.render(0)).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

fn oid_of(a: &Answer) -> String {
    a.token.token.object_id.as_deref().unwrap().to_string()
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_is_answered_the_moment_its_identity_flips_to_assigned() {
    let w = world();
    w.pods.apply(&pod("ns", "p").ip("127.0.0.2").build());
    let id = identity("ns", "id", "cid");
    w.assignments
        .apply(&assigned("ns", "p", &id, "node-1", AssignedState::Created));
    let broker = Arc::clone(&w.broker);
    let started = Instant::now();
    let req = tokio::spawn(async move {
        broker
            .token_for_ip(ip("127.0.0.2"), Wanted::Any, "r")
            .await
            .map(|a| (oid_of(&a), Instant::now()))
    });
    tokio::time::sleep(Duration::from_millis(3_333)).await;
    assert_eq!(w.assignments.waiters(&ObjectKey::new("ns", "p")), 1);
    let flipped = Instant::now();
    w.assignments
        .apply(&assigned("ns", "p", &id, "node-1", AssignedState::Assigned));
    let (oid, answered) = req.await.unwrap().unwrap();
    assert_eq!(oid, "oid-cid");
    // Answered after the flip plus the fake's 5 ms fetch, not at a polling boundary.
    assert_eq!(answered - flipped, Duration::from_millis(5));
    assert_eq!(flipped - started, Duration::from_millis(3_333));
}

#[tokio::test(start_paused = true)]
async fn without_assignment_a_request_gives_up_at_the_deadline_with_404() {
    let w = world();
    w.pods.apply(&pod("ns", "p").ip("127.0.0.2").build());
    w.assignments.apply(&assigned(
        "ns",
        "p",
        &identity("ns", "id", "cid"),
        "node-1",
        AssignedState::Created,
    ));
    let started = Instant::now();
    let err = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::Any, "r")
        .await
        .unwrap_err();
    // 80 s for Created, plus the 20 s grace because the identity exists and is being assigned.
    assert_eq!(started.elapsed(), Duration::from_secs(100));
    assert_eq!(err.status(), 404);
    assert!(err.to_string().contains("ns/id=Created"), "{err}");
    assert_eq!(w.source.calls.load(Ordering::SeqCst), 0);
    assert_eq!(w.assignments.waiters(&ObjectKey::new("ns", "p")), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_for_a_pod_without_assignments_leaves_no_channel_behind() {
    let w = world();
    w.pods.apply(&pod("ns", "lonely").ip("127.0.0.2").build());
    let err = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::Any, "r")
        .await
        .unwrap_err();
    assert_eq!(err.status(), 404);
    assert_eq!(w.assignments.tracked_pods(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_identity_bound_to_another_pod_is_refused_and_never_fetched() {
    let w = world();
    w.pods.apply(&pod("ns", "a").ip("127.0.0.2").build());
    w.pods.apply(&pod("ns", "b").ip("127.0.0.3").build());
    let (x, y) = (identity("ns", "x", "cx"), identity("ns", "y", "cy"));
    w.assignments
        .apply(&assigned("ns", "a", &x, "node-1", AssignedState::Assigned));
    w.assignments
        .apply(&assigned("ns", "b", &y, "node-1", AssignedState::Assigned));
    let ok = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::ClientId("CX"), "r")
        .await
        .unwrap();
    assert_eq!(oid_of(&ok), "oid-cx");
    let err = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::ClientId("cy"), "r")
        .await
        .unwrap_err();
    assert_eq!(err.status(), 404);
    let err = w
        .broker
        .token_for_ip(
            ip("127.0.0.2"),
            Wanted::ResourceId(&y.spec.resource_id),
            "r",
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), 404);
    let seen = w.source.seen.lock().unwrap();
    assert!(seen.iter().all(
        |r| matches!(&r.target, TokenTarget::UserAssigned { client_id, .. } if client_id == "cx")
    ));
}

#[tokio::test(start_paused = true)]
async fn with_several_identities_the_request_chooses_and_none_named_gets_the_first_by_name() {
    let w = world();
    w.pods.apply(&pod("ns", "p").ip("127.0.0.2").build());
    for (name, cid) in [("zz", "c-zz"), ("aa", "c-aa"), ("mm", "c-mm")] {
        w.assignments.apply(&assigned(
            "ns",
            "p",
            &identity("ns", name, cid),
            "node-1",
            AssignedState::Assigned,
        ));
    }
    let any = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::Any, "r")
        .await
        .unwrap();
    assert_eq!(oid_of(&any), "oid-c-aa");
    assert_eq!(&*any.client_id, "c-aa");
    let named = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::ClientId("c-mm"), "r")
        .await
        .unwrap();
    assert_eq!(oid_of(&named), "oid-c-mm");
    let by_oid = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::ObjectId("oid-c-zz"), "r")
        .await
        .unwrap();
    assert_eq!(&*by_oid.client_id, "c-zz");
}

#[tokio::test(start_paused = true)]
async fn exception_and_mic_pods_get_the_nodes_own_token() {
    let w = world();
    let mut exc = AzurePodIdentityException::new(
        "exc",
        AzurePodIdentityExceptionSpec {
            pod_labels: [("app".to_string(), "dns".to_string())].into(),
        },
    );
    exc.metadata.namespace = Some("kube-system".into());
    w.exceptions.apply(&exc);
    w.pods.apply(
        &pod("kube-system", "dns")
            .ip("127.0.0.2")
            .with_label("app", "dns")
            .build(),
    );
    w.pods.apply(
        &pod("default", "mic-abc")
            .ip("127.0.0.3")
            .owned_by_replicaset("mic-7d9f")
            .service_account("aad-pod-identity-mic")
            .build(),
    );
    let a = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::Any, "r")
        .await
        .unwrap();
    assert_eq!(oid_of(&a), "oid-node");
    let b = w
        .broker
        .token_for_ip(ip("127.0.0.3"), Wanted::Any, "r")
        .await
        .unwrap();
    assert_eq!(oid_of(&b), "oid-node");
    let c = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::ClientId("uami"), "r")
        .await
        .unwrap();
    assert_eq!(oid_of(&c), "oid-uami");
    assert!(
        w.source
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|r| matches!(r.target, TokenTarget::Node { .. }))
    );
}

#[tokio::test(start_paused = true)]
async fn a_namespaced_identity_never_serves_a_pod_of_another_namespace() {
    let w = world();
    w.pods.apply(&pod("team-b", "p").ip("127.0.0.2").build());
    let id = namespaced(identity("team-a", "x", "cx"));
    w.assignments.apply(&assigned(
        "team-b",
        "p",
        &id,
        "node-1",
        AssignedState::Assigned,
    ));
    let err = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::Any, "r")
        .await
        .unwrap_err();
    assert_eq!(err.status(), 404);
    assert!(err.to_string().contains("namespaced"), "{err}");
    assert_eq!(w.source.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_pod_the_watch_has_not_announced_yet_is_served_once_it_arrives() {
    let w = world();
    w.assignments.apply(&assigned(
        "ns",
        "late",
        &identity("ns", "id", "cid"),
        "node-1",
        AssignedState::Assigned,
    ));
    let broker = Arc::clone(&w.broker);
    let req =
        tokio::spawn(async move { broker.token_for_ip(ip("127.0.0.9"), Wanted::Any, "r").await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    w.pods.apply(&pod("ns", "late").ip("127.0.0.9").build());
    assert_eq!(oid_of(&req.await.unwrap().unwrap()), "oid-cid");
    let started = Instant::now();
    let err = w
        .broker
        .token_for_ip(ip("127.0.0.99"), Wanted::Any, "r")
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::PodNotFound { .. }));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_requests_from_a_hundred_pods_cause_one_upstream_fetch() {
    let w = world();
    let id = identity("ns", "shared", "cid");
    for i in 0..100u8 {
        let name = format!("p{i}");
        w.pods
            .apply(&pod("ns", &name).ip(&format!("127.0.1.{i}")).build());
        w.assignments.apply(&assigned(
            "ns",
            &name,
            &id,
            "node-1",
            AssignedState::Assigned,
        ));
    }
    let mut tasks = Vec::new();
    for n in 0..1000u32 {
        let broker = Arc::clone(&w.broker);
        let caller = ip(&format!("127.0.1.{}", n % 100));
        tasks.push(tokio::spawn(async move {
            broker
                .token_for_ip(caller, Wanted::Any, "https://vault.azure.net")
                .await
                .map(|a| access_token(&a))
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap().unwrap());
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(w.source.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn unassigning_an_identity_from_its_last_pod_drops_its_tokens_and_refuses_the_pod() {
    let w = world();
    w.pods.apply(&pod("ns", "p").ip("127.0.0.2").build());
    let id = identity("ns", "id", "cid");
    let sink = Assigned(Arc::clone(&w.assignments), Arc::clone(&w.cache));
    sink.apply(&assigned("ns", "p", &id, "node-1", AssignedState::Assigned));
    w.broker
        .token_for_ip(ip("127.0.0.2"), Wanted::Any, "r")
        .await
        .unwrap();
    assert_eq!(w.cache.identity_count(), 1);
    sink.apply(&assigned(
        "ns",
        "p",
        &id,
        "node-1",
        AssignedState::Unassigned,
    ));
    assert_eq!(w.cache.identity_count(), 0);
    let err = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::Any, "r")
        .await
        .unwrap_err();
    assert_eq!(err.status(), 404);
    assert_eq!(w.source.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn token_failures_map_to_403_when_refused_and_503_when_unreachable() {
    let w = world();
    w.pods.apply(&pod("ns", "p").ip("127.0.0.2").build());
    for (name, cid) in [("a", "refused"), ("b", "down")] {
        w.assignments.apply(&assigned(
            "ns",
            "p",
            &identity("ns", name, cid),
            "node-1",
            AssignedState::Assigned,
        ));
    }
    let e = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::ClientId("refused"), "r")
        .await
        .unwrap_err();
    assert_eq!(e.status(), 403);
    assert!(e.to_string().contains("invalid_request"), "{e}");
    let e = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::ClientId("down"), "r")
        .await
        .unwrap_err();
    assert_eq!(e.status(), 503);
}

#[tokio::test(start_paused = true)]
async fn managed_mode_serves_bound_identities_and_wakes_when_a_binding_appears() {
    use crate::crd::{AzureIdentityBinding, AzureIdentityBindingSpec};
    let w = world();
    let catalog = Arc::new(ManagedCatalog::new());
    let broker = Arc::new(Broker::new(
        Arc::clone(&w.pods),
        IdentityFeed::Managed(Arc::clone(&catalog)),
        Arc::clone(&w.exceptions),
        Arc::clone(&w.cache),
        BrokerSettings {
            node: "node-1".into(),
            mic_namespace: "default".into(),
            mic_service_account: "aad-pod-identity-mic".into(),
            max_waiters_per_pod: 100,
            max_waiters: 10_000,
            assignment_wait: Duration::from_secs(10),
            assigned_grace: Duration::from_secs(0),
            pod_arrival_timeout: Duration::from_secs(2),
        },
        None,
    ));
    w.pods
        .apply(&pod("ns", "p").ip("127.0.0.2").label("web").build());
    catalog.apply_identity(&identity("ns", "id", "cid"));
    let b2 = Arc::clone(&broker);
    let req = tokio::spawn(async move { b2.token_for_ip(ip("127.0.0.2"), Wanted::Any, "r").await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut binding = AzureIdentityBinding::new(
        "b",
        AzureIdentityBindingSpec {
            azure_identity: "id".into(),
            selector: "web".into(),
            weight: 0,
        },
    );
    binding.metadata.namespace = Some("ns".into());
    catalog.apply_binding(&binding);
    assert_eq!(oid_of(&req.await.unwrap().unwrap()), "oid-cid");
    let host = broker
        .token_for_named_pod("ns", "p", Wanted::Any, "r")
        .await
        .unwrap();
    assert_eq!(&*host.client_id, "cid");
}

#[tokio::test(start_paused = true)]
async fn a_workload_named_like_mic_in_mics_namespace_gets_no_node_token() {
    let w = world();
    // The original's rule: a ReplicaSet named `mic…` in MIC's namespace was MIC.
    w.pods.apply(
        &pod("default", "mickey-5f7d9-abcde")
            .ip("127.0.0.3")
            .owned_by_replicaset("mickey-5f7d9")
            .build(),
    );
    w.pods.apply(
        &pod("other", "mic-1")
            .ip("127.0.0.4")
            .service_account("aad-pod-identity-mic")
            .build(),
    );
    for caller in ["127.0.0.3", "127.0.0.4"] {
        let e = w
            .broker
            .token_for_ip(ip(caller), Wanted::Any, "r")
            .await
            .unwrap_err();
        assert_eq!(e.status(), 404, "{caller}: {e}");
    }
    assert_eq!(w.source.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn an_address_two_live_pods_hold_is_refused_with_500_and_nothing_fetched() {
    let w = world();
    w.pods.apply(&pod("ns", "p").ip("127.0.0.2").build());
    w.assignments.apply(&assigned(
        "ns",
        "p",
        &identity("ns", "id-p", "cp"),
        "node-1",
        AssignedState::Assigned,
    ));
    w.pods.apply(&pod("ns", "intruder").ip("127.0.0.2").build());
    let e = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::Any, "r")
        .await
        .unwrap_err();
    assert_eq!(e.status(), 500);
    assert!(
        e.to_string()
            .starts_with("failed to match pod IP 127.0.0.2 with 2 pods"),
        "{e}"
    );
    assert_eq!(w.source.calls.load(Ordering::SeqCst), 0);
    // The intruder shuts down: the address is p's again.
    w.pods
        .apply(&pod("ns", "intruder").ip("127.0.0.2").terminating().build());
    let a = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::Any, "r")
        .await
        .unwrap();
    assert_eq!(oid_of(&a), "oid-cp");
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_beyond_the_bounds_are_answered_at_once() {
    let source = Arc::new(FakeSource::default());
    let pods = Arc::new(PodIndex::new("node-1"));
    let assignments = Arc::new(AssignmentIndex::new("node-1", false));
    let broker = Arc::new(Broker::new(
        Arc::clone(&pods),
        IdentityFeed::Standard(Arc::clone(&assignments)),
        Arc::new(ExceptionIndex::new()),
        Arc::new(TokenCache::new(
            source,
            Duration::from_secs(300),
            Duration::from_secs(30),
            None,
        )),
        BrokerSettings {
            node: "node-1".into(),
            mic_namespace: "default".into(),
            mic_service_account: String::new(),
            max_waiters_per_pod: 3,
            max_waiters: 5,
            assignment_wait: Duration::from_secs(80),
            assigned_grace: Duration::ZERO,
            pod_arrival_timeout: Duration::from_secs(2),
        },
        None,
    ));
    pods.apply(&pod("ns", "greedy").ip("127.0.0.2").build());
    pods.apply(&pod("ns", "bound").ip("127.0.0.3").build());
    let spawn = |caller: &'static str| {
        let b = Arc::clone(&broker);
        tokio::spawn(async move { b.token_for_ip(ip(caller), Wanted::Any, "r").await })
    };
    let parked: Vec<_> = (0..3).map(|_| spawn("127.0.0.2")).collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(broker.waiters.parked(), 3);
    // A fourth from the same pod: 429 at once, without waiting.
    let started = Instant::now();
    let e = broker
        .token_for_ip(ip("127.0.0.2"), Wanted::Any, "r")
        .await
        .unwrap_err();
    assert_eq!((e.status(), started.elapsed()), (429, Duration::ZERO));
    // Unknown addresses wait for their pod, and count towards the node's total.
    let unknown: Vec<_> = (0..2).map(|_| spawn("127.0.0.9")).collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(broker.waiters.parked(), 5);
    let e = broker
        .token_for_ip(ip("127.0.0.3"), Wanted::Any, "r")
        .await
        .unwrap_err();
    assert_eq!(e.status(), 503);
    // Once the greedy pod's requests give up, the bound pod may wait again.
    for t in parked.into_iter().chain(unknown) {
        assert!(t.await.unwrap().is_err());
    }
    assert_eq!((broker.waiters.parked(), broker.waiters.keys()), (0, 0));
    assignments.apply(&assigned(
        "ns",
        "bound",
        &identity("ns", "id-b", "cb"),
        "node-1",
        AssignedState::Assigned,
    ));
    assert!(
        broker
            .token_for_ip(ip("127.0.0.3"), Wanted::Any, "r")
            .await
            .is_ok()
    );
}

fn federated(mut id: crate::crd::AzureIdentity) -> crate::crd::AzureIdentity {
    id.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(crate::crd::FEDERATED_ANNOTATION.into(), "true".into());
    id
}

#[tokio::test(start_paused = true)]
async fn a_federated_identity_is_fetched_per_service_account_and_bound_to_the_calling_pod() {
    let w = world();
    let id = federated(identity("ns", "fed", "cid"));
    for (name, addr, sa) in [
        ("a", "127.0.0.2", "app"),
        ("b", "127.0.0.3", "app"),
        ("c", "127.0.0.4", "other"),
    ] {
        w.pods
            .apply(&pod("ns", name).ip(addr).service_account(sa).build());
        w.assignments.apply(&assigned(
            "ns",
            name,
            &id,
            "node-1",
            AssignedState::Assigned,
        ));
    }
    let a = w
        .broker
        .token_for_ip(ip("127.0.0.2"), Wanted::Any, "r")
        .await
        .unwrap();
    assert_eq!(oid_of(&a), "oid-cid-app");
    let seen = w.source.seen.lock().unwrap().clone();
    match &seen[0].target {
        TokenTarget::Federated { client_id, pod, .. } => {
            assert_eq!(client_id, "cid");
            assert_eq!(
                (pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_str()),
                ("ns", "a", "uid-ns-a")
            );
            assert_eq!(pod.subject(), "system:serviceaccount:ns:app");
        }
        other => panic!("expected a federated fetch, got {other:?}"),
    }
    // Same service account: the token Azure AD issued for that subject is shared.
    let b = w
        .broker
        .token_for_ip(ip("127.0.0.3"), Wanted::Any, "r")
        .await
        .unwrap();
    assert_eq!(b.lookup, Lookup::Hit);
    assert_eq!(w.source.calls.load(Ordering::SeqCst), 1);
    // Another service account bound to the same identity gets its own exchange, never the
    // token issued for `app`.
    let c = w
        .broker
        .token_for_ip(ip("127.0.0.4"), Wanted::Any, "r")
        .await
        .unwrap();
    assert_eq!(oid_of(&c), "oid-cid-other");
    assert_eq!(w.source.calls.load(Ordering::SeqCst), 2);
    // A resource spelling another subject's slot is just another resource.
    let tricky = "r as system:serviceaccount:ns:app";
    let d = w
        .broker
        .token_for_ip(ip("127.0.0.4"), Wanted::Any, tricky)
        .await
        .unwrap();
    assert_eq!(oid_of(&d), "oid-cid-other");
    assert_eq!(w.source.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn many_pods_of_one_service_account_asking_at_once_cost_one_exchange() {
    let w = world();
    let id = federated(identity("ns", "fed", "cid"));
    let n = 40;
    for i in 0..n {
        let name = format!("p{i}");
        w.pods.apply(
            &pod("ns", &name)
                .ip(&format!("127.0.1.{}", i + 1))
                .service_account("app")
                .build(),
        );
        w.assignments.apply(&assigned(
            "ns",
            &name,
            &id,
            "node-1",
            AssignedState::Assigned,
        ));
    }
    let asks = (0..n).map(|i| {
        let broker = Arc::clone(&w.broker);
        tokio::spawn(async move {
            broker
                .token_for_ip(ip(&format!("127.0.1.{}", i + 1)), Wanted::Any, "r")
                .await
        })
    });
    for a in futures::future::join_all(asks).await {
        assert_eq!(oid_of(&a.unwrap().unwrap()), "oid-cid-app");
    }
    // Single flight per (identity, resource, subject): one TokenRequest and exchange for all.
    assert_eq!(w.source.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_federated_identity_named_for_a_pod_of_another_node_is_refused() {
    let w = world();
    let id = federated(identity("ns", "fed", "cid"));
    w.assignments.apply(&assigned(
        "ns",
        "elsewhere",
        &id,
        "node-1",
        AssignedState::Assigned,
    ));
    let e = w
        .broker
        .token_for_named_pod("ns", "elsewhere", Wanted::Any, "r")
        .await
        .unwrap_err();
    assert_eq!(e.status(), 403, "{e}");
    assert!(e.to_string().contains("is federated"), "{e}");
    assert_eq!(w.source.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn an_opted_in_pod_gets_the_identity_its_service_account_names_and_no_other_pod_does() {
    use crate::actors::nmi::service_accounts::{CLIENT_ID_ANNOTATION, USE_LABEL};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let w = world();
    let index = Arc::new(ServiceAccountIndex::new());
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("app".into());
    sa.metadata.namespace = Some("ns".into());
    sa.metadata.annotations =
        Some([(CLIENT_ID_ANNOTATION.to_string(), "wi-client".to_string())].into());
    index.replace_all(&[sa]);
    let broker = Arc::new(
        Broker::new(
            Arc::clone(&w.pods),
            IdentityFeed::Standard(Arc::clone(&w.assignments)),
            Arc::clone(&w.exceptions),
            Arc::clone(&w.cache),
            BrokerSettings {
                node: "node-1".into(),
                mic_namespace: "default".into(),
                mic_service_account: String::new(),
                max_waiters_per_pod: 100,
                max_waiters: 10_000,
                assignment_wait: Duration::from_secs(3),
                assigned_grace: Duration::ZERO,
                pod_arrival_timeout: Duration::from_secs(1),
            },
            None,
        )
        .with_workload_identities(Arc::clone(&index)),
    );
    w.pods.apply(
        &pod("ns", "opted")
            .ip("127.0.0.2")
            .service_account("app")
            .with_label(USE_LABEL, "true")
            .build(),
    );
    w.pods.apply(
        &pod("ns", "plain")
            .ip("127.0.0.3")
            .service_account("app")
            .build(),
    );
    w.pods.apply(
        &pod("ns", "stranger")
            .ip("127.0.0.4")
            .service_account("other")
            .with_label(USE_LABEL, "true")
            .build(),
    );
    let got = broker
        .token_for_ip(ip("127.0.0.2"), Wanted::ClientId("wi-client"), "r")
        .await
        .unwrap();
    assert_eq!(oid_of(&got), "oid-wi-client-app");
    assert_eq!(&*got.client_id, "wi-client");
    for caller in ["127.0.0.3", "127.0.0.4"] {
        let e = broker
            .token_for_ip(ip(caller), Wanted::Any, "r")
            .await
            .unwrap_err();
        assert_eq!(e.status(), 404, "{caller}: {e}");
    }
    assert_eq!(w.source.calls.load(Ordering::SeqCst), 1);
    // Readiness waits for the service-account list too.
    index.mark_unsynced();
    assert!(!broker.caches_synced());
}
