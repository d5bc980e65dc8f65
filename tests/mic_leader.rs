//! MIC's leader lease against a busy or wedged actor thread, over real HTTP against the
//! Kubernetes and Azure simulators. MIC runs every actor on one thread; its lease is renewed
//! from a thread of its own, so a long stretch of work on the actor thread does not cost the
//! lease, while an actor thread that does not run for longer than `--actor-stall-limit` does.
//!
//! The actor thread is blocked the way a long CPU-bound stretch blocks it, with no hook in the
//! product: the ARM port (built on MIC's thread and called from its assigner actor) sleeps the
//! thread synchronously after sending its PATCH. Real time, short leases (2 s: renew deadline
//! 1.33 s), and every wait is for an observable condition with a deadline.

use aad_pod_identity::actors::mic::cloud_port::CloudArm;
use aad_pod_identity::actors::mic::host::{HostId, IdentityId};
use aad_pod_identity::actors::mic::leader;
use aad_pod_identity::actors::mic::port::{ArmPort, HostIdentities, PatchOutcome, PortError};
use aad_pod_identity::actors::mic::writer::REASON_APPLIED;
use aad_pod_identity::actors::mic::{Error as MicError, MicHandle, MicSettings};
use aad_pod_identity::crd::AssignedState;
use aad_pod_identity::metrics::Metrics;
use aad_pod_identity_sim::topology::Topology;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::ListParams;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

mod mic_support;

use mic_support::*;

/// What the blocking port reports, with the wall-clock time it happened.
#[derive(Debug)]
enum Blocking {
    Started(Timestamp),
    Released,
}

/// An ARM port whose first PATCH, once sent and answered, blocks the calling thread (MIC's
/// actor thread) for `block` before returning, as a long CPU-bound handler would.
struct BlocksTheThread {
    inner: Arc<dyn ArmPort>,
    block: Duration,
    armed: AtomicBool,
    events: mpsc::UnboundedSender<Blocking>,
}

#[async_trait::async_trait]
impl ArmPort for BlocksTheThread {
    async fn get(&self, host: &HostId) -> Result<HostIdentities, PortError> {
        self.inner.get(host).await
    }

    async fn patch(
        &self,
        host: &HostId,
        base: &HostIdentities,
        add: &[IdentityId],
        remove: &[IdentityId],
    ) -> Result<PatchOutcome, PortError> {
        let outcome = self.inner.patch(host, base, add, remove).await;
        if self.armed.swap(false, Ordering::SeqCst) {
            let _ = self.events.send(Blocking::Started(Timestamp::now()));
            std::thread::sleep(self.block);
            let _ = self.events.send(Blocking::Released);
        }
        outcome
    }
}

async fn start_blocking_mic(
    c: &Cluster,
    settings: MicSettings,
    block: Duration,
) -> (MicHandle, mpsc::UnboundedReceiver<Blocking>) {
    let config = c.cloud_config();
    let (events, rx) = mpsc::unbounded_channel();
    let mic = aad_pod_identity::actors::mic::spawn(settings, Metrics::new(), None, move || {
        Arc::new(BlocksTheThread {
            inner: Arc::new(CloudArm::from_config(&config).unwrap()),
            block,
            armed: AtomicBool::new(true),
            events,
        })
    })
    .await
    .unwrap();
    (mic, rx)
}

/// The Lease's holder and renew time, as the API server has them.
async fn lease(c: &Cluster) -> (String, Timestamp) {
    let spec = Api::<Lease>::namespaced(c.client.clone(), "default")
        .get("aad-pod-identity-mic")
        .await
        .unwrap()
        .spec
        .unwrap();
    (spec.holder_identity.unwrap(), spec.renew_time.unwrap().0)
}

/// Creates an identity and a pod using it, and waits until the blocking port has blocked
/// MIC's actor thread (on the PATCH for that pod); when it did.
async fn block_the_actor_thread(
    c: &Cluster,
    events: &mut mpsc::UnboundedReceiver<Blocking>,
) -> Timestamp {
    c.identity("identity-0", &c.identity_rid(0)).await;
    c.pod("demo-0", "identity-0", &c.node(0)).await;
    match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
        Ok(Some(Blocking::Started(at))) => at,
        other => panic!("MIC never sent its PATCH: {other:?}"),
    }
}

/// Reads the Lease every 50 ms until the port releases the thread; the distinct renew times
/// seen (each a renewal).
async fn renewals_until_released(
    c: &Cluster,
    events: &mut mpsc::UnboundedReceiver<Blocking>,
    block: Duration,
) -> BTreeSet<Timestamp> {
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + block + Duration::from_secs(30);
    loop {
        let (holder, renewed) = lease(c).await;
        assert_eq!(holder, "mic-0");
        seen.insert(renewed);
        match events.try_recv() {
            Ok(Blocking::Released) => return seen,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the port never released the thread"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The actor thread is busy for 5 s, well past the 1.33 s renew deadline: the lease is renewed
/// all along from the election thread, and MIC is still leader afterwards and finishes the
/// work. On the old code (renewal on the actor thread) the Lease stood still for the whole
/// block and MIC exited with "lost the leader lease" once the thread was free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_actor_thread_does_not_cost_the_leader_lease() {
    let c = cluster(
        "busy-thread",
        Topology::sized(1, 1, 0, 1),
        azure_with_latency(Duration::from_millis(20)),
    )
    .await;
    let block = Duration::from_secs(5);
    let (mut mic, mut events) = start_blocking_mic(&c, settings(&c, "mic-0"), block).await;
    let mut exited = mic.take_exit_signal().unwrap();
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;

    let started = block_the_actor_thread(&c, &mut events).await;
    let seen = renewals_until_released(&c, &mut events, block).await;
    let during: Vec<_> = seen.iter().filter(|t| **t > started).collect();
    // Every 285 ms for 5 s: about 17; a loaded machine may drop some, not most.
    assert!(
        during.len() >= 5,
        "{} renewals while the actor thread was blocked for {block:?}: {during:?}",
        during.len()
    );
    let last = **during.last().unwrap();
    assert!(
        last.duration_since(started)
            >= SignedDuration::try_from(block - Duration::from_secs(1)).unwrap(),
        "renewals stopped {} after the block began",
        last.duration_since(started)
    );

    // Still the leader, and it does the work it was blocked in.
    c.wait_assigned(&["demo-0"], Duration::from_secs(30)).await;
    assert_eq!(http_get(mic.probe, "/healthz").await, "Active");
    assert!(exited.try_recv().is_err(), "MIC exited");
    assert_eq!(lease(&c).await.0, "mic-0");
    mic.stop();
    c.shutdown().await;
}

/// The wedge rule: an actor thread that does not run for longer than `--actor-stall-limit`
/// (1 s here) makes the election thread stop renewing: `/healthz` answers 500 (the liveness
/// probe would restart the pod), the Lease is left to expire, and once the thread runs again
/// MIC exits saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_actor_thread_gives_up_the_lease_after_the_stall_limit() {
    let c = cluster(
        "wedged-thread",
        Topology::sized(1, 1, 0, 1),
        azure_with_latency(Duration::from_millis(20)),
    )
    .await;
    let block = Duration::from_secs(6);
    let mut s = settings(&c, "mic-0");
    s.actor_stall_limit = Duration::from_secs(1);
    let renew_deadline = s.leader.renew_deadline();
    let retry = s.leader.retry_period();
    let (mut mic, mut events) = start_blocking_mic(&c, s, block).await;
    let mut exited = mic.take_exit_signal().unwrap();
    wait_health(mic.probe, "Active", Duration::from_secs(10)).await;

    let started = block_the_actor_thread(&c, &mut events).await;
    // The probe server has threads of its own: it says the thread is stalled.
    let t0 = Instant::now();
    let body = loop {
        let body = health(mic.probe).await.unwrap_or_default();
        if body.starts_with("Not Active: MIC's actor thread has not run") {
            break body;
        }
        assert!(
            t0.elapsed() < block,
            "healthz never reported the stall: {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.contains("--actor-stall-limit"), "{body}");
    let seen = renewals_until_released(&c, &mut events, block).await;
    // No renewal began after the stall limit plus one check; the last one in flight by then
    // was stamped within its renew deadline.
    let last = *seen.last().unwrap();
    let bound = Duration::from_secs(1) + retry + renew_deadline;
    assert!(
        last.duration_since(started) < SignedDuration::try_from(bound).unwrap(),
        "renewed {} after the actor thread wedged (limit 1 s)",
        last.duration_since(started)
    );

    // Free again, MIC sees it stepped down and exits.
    tokio::time::timeout(Duration::from_secs(30), &mut exited)
        .await
        .expect("MIC kept running after giving up the lease")
        .ok();
    match mic.stop() {
        Some(Err(MicError::Leadership(leader::Error::Stalled { limit, .. }))) => {
            assert_eq!(limit, Duration::from_secs(1));
        }
        other => panic!("MIC ended with {other:?}"),
    }
    // The PATCH the thread was blocked in went through, but MIC had stepped down by the time
    // its actor thread ran again: the object's status write `Assigned` (and the "binding
    // applied" Event) are a deposed leader's writes, refused by the fence; the next leader
    // writes them.
    let objects = c.assigned().await;
    assert_eq!(objects.len(), 1);
    assert_eq!(
        objects[0].status.as_ref().map(|s| &s.status),
        Some(&AssignedState::Created),
        "a deposed leader wrote the status"
    );
    let events = Api::<Event>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(
        events
            .iter()
            .all(|e| e.reason.as_deref() != Some(REASON_APPLIED)),
        "a deposed leader wrote an Event: {events:?}"
    );
    c.shutdown().await;
}
