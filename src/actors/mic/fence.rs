//! Leadership fencing: the one place that decides whether a write of MIC's may go out.
//!
//! MIC's actors share one thread; the leader election runs on another
//! ([`super::leader_thread`]). When the election thread steps down (renewals failed, or the
//! actor thread stalled past its limit), the actor thread learns it only when it next runs, and
//! until then it may still send writes it had decided on: an ARM PATCH, an AzureAssignedIdentity
//! create, status write or delete, an Event. Another replica may already lead by then. A
//! [`Fence`] is checked right before each such write is sent and refuses it unless the election
//! thread says this replica leads *now*; every refusal is counted
//! (`aadpodidentity_mic_fenced_writes_total`, by kind).
//!
//! Two doors use it: [`FencedArm`] (ARM PATCHes; reads pass) and [`FenceLayer`], a tower layer
//! under MIC's Kubernetes client that refuses every request other than a read (GET, HEAD) once
//! the request reaches the front of the client's queue, after any `--clientQps` wait, so every
//! Kubernetes write of the actors is fenced however it is made. The election thread has a
//! client of its own, never fenced.

use super::host::{HostId, IdentityId};
use super::leader_thread::Leadership;
use super::port::{ArmPort, HostIdentities, PatchOutcome, PortError};
use prometheus::IntCounterVec;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::watch;

/// What a refused write would have written: the `kind` label of the refusals metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FencedWrite {
    /// An ARM PATCH of a VM's or scale set's identities.
    Arm,
    /// An AzureAssignedIdentity create, update or delete.
    AssignedIdentity,
    /// A Kubernetes Event create or update.
    Event,
    /// Any other Kubernetes write.
    OtherKubernetes,
}

impl FencedWrite {
    /// The metric label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Arm => "arm",
            Self::AssignedIdentity => "assigned_identity",
            Self::Event => "event",
            Self::OtherKubernetes => "other_kubernetes",
        }
    }

    /// The kind of a Kubernetes write, from its request path
    /// (`/api/v1/namespaces/<ns>/events/<name>`, `/apis/<group>/<version>/namespaces/<ns>/<plural>`).
    #[must_use]
    pub fn of_path(path: &str) -> Self {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let resource = match segments.iter().position(|s| *s == "namespaces") {
            Some(i) if segments.len() > i + 2 => segments.get(i + 2),
            _ => match segments.first() {
                Some(&"api") => segments.get(2),
                _ => segments.get(3),
            },
        };
        match resource.copied() {
            Some("azureassignedidentities") => Self::AssignedIdentity,
            Some("events") => Self::Event,
            _ => Self::OtherKubernetes,
        }
    }
}

/// A write refused because this replica does not lead (any more).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not the leader (any more): {} write not sent", .0.label())]
pub struct NotLeading(pub FencedWrite);

impl NotLeading {
    /// True when `e` (a Kubernetes client error) is a refusal of the fence.
    #[must_use]
    pub fn is(e: &kube::Error) -> bool {
        matches!(e, kube::Error::Service(s) if s.downcast_ref::<Self>().is_some())
    }
}

/// The election thread's word, checked before each write; refusals counted.
#[derive(Clone, Debug)]
pub struct Fence {
    state: watch::Receiver<Leadership>,
    refused: IntCounterVec,
}

impl Fence {
    /// A fence on `state` (the election thread's), counting refusals in `refused` (label `kind`).
    #[must_use]
    pub fn new(state: watch::Receiver<Leadership>, refused: IntCounterVec) -> Self {
        Self { state, refused }
    }

    /// `Ok` while this replica leads; otherwise the refusal, counted.
    ///
    /// # Errors
    /// [`NotLeading`] unless the election thread says [`Leadership::Leading`].
    pub fn check(&self, write: FencedWrite) -> Result<(), NotLeading> {
        if matches!(*self.state.borrow(), Leadership::Leading) {
            return Ok(());
        }
        self.refused.with_label_values(&[write.label()]).inc();
        Err(NotLeading(write))
    }
}

/// An ARM port that refuses to write unless the election thread says this replica leads, so a
/// leader that stepped down while its actor thread was busy sends no PATCH afterwards. Reads
/// pass through.
pub struct FencedArm {
    inner: Arc<dyn ArmPort>,
    fence: Fence,
}

impl FencedArm {
    /// `inner`, writing only while `fence` allows.
    #[must_use]
    pub fn new(inner: Arc<dyn ArmPort>, fence: Fence) -> Self {
        Self { inner, fence }
    }
}

#[async_trait::async_trait]
impl ArmPort for FencedArm {
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
        self.fence
            .check(FencedWrite::Arm)
            .map_err(|e| PortError::Transient(e.to_string()))?;
        self.inner.patch(host, base, add, remove).await
    }

    fn throttle_gate(&self) -> Option<crate::cloud::throttle::SubscriptionGate> {
        self.inner.throttle_gate()
    }
}

/// The tower layer that fences a Kubernetes client's writes ([`FencedService`]).
#[derive(Clone, Debug)]
pub struct FenceLayer(pub Fence);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = FencedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FencedService {
            inner,
            fence: self.0.clone(),
        }
    }
}

/// A Kubernetes client's service whose requests other than reads go out only while the fence
/// allows; a refused one fails with [`NotLeading`] (seen by callers as
/// `kube::Error::Service`, recognised by [`NotLeading::is`]) and never reaches the API server.
#[derive(Clone, Debug)]
pub struct FencedService<S> {
    inner: S,
    fence: Fence,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<http::Request<B>> for FencedService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let read = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
        if !read && let Err(e) = self.fence.check(FencedWrite::of_path(req.uri().path())) {
            return Box::pin(std::future::ready(Err(Box::new(e) as BoxError)));
        }
        let f = self.inner.call(req);
        Box::pin(async move { f.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::mic::leader::Error;
    use crate::actors::mic::testing::MemoryArm;
    use crate::crd::AzureAssignedIdentity;
    use k8s_openapi::api::core::v1::Event;
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
    use prometheus::Opts;
    use std::sync::Mutex;
    use std::time::Duration;

    fn counter() -> IntCounterVec {
        IntCounterVec::new(Opts::new("fenced", "test"), &["kind"]).unwrap()
    }

    #[test]
    fn a_write_is_told_apart_by_its_path() {
        for (path, kind) in [
            (
                "/apis/aadpodidentity.k8s.io/v1/namespaces/default/azureassignedidentities",
                FencedWrite::AssignedIdentity,
            ),
            (
                "/apis/aadpodidentity.k8s.io/v1/namespaces/default/azureassignedidentities/p-default-id",
                FencedWrite::AssignedIdentity,
            ),
            (
                "/apis/aadpodidentity.k8s.io/v1/azureassignedidentities",
                FencedWrite::AssignedIdentity,
            ),
            ("/api/v1/namespaces/default/events", FencedWrite::Event),
            ("/api/v1/namespaces/default/events/p.1", FencedWrite::Event),
            ("/api/v1/events", FencedWrite::Event),
            ("/api/v1/namespaces/default", FencedWrite::OtherKubernetes),
            ("/api/v1/namespaces", FencedWrite::OtherKubernetes),
            (
                "/apis/coordination.k8s.io/v1/namespaces/default/leases/mic",
                FencedWrite::OtherKubernetes,
            ),
            ("/", FencedWrite::OtherKubernetes),
        ] {
            assert_eq!(FencedWrite::of_path(path), kind, "{path}");
        }
    }

    #[tokio::test]
    async fn a_fenced_port_writes_only_while_leading() {
        let arm = MemoryArm::new(Duration::ZERO);
        let (tx, rx) = watch::channel(Leadership::Candidate);
        let refused = counter();
        let fenced = FencedArm::new(arm.clone(), Fence::new(rx, refused.clone()));
        let host = HostId::scale_set("sub", "rg", "vmss");
        let id = [IdentityId::new(
            "/subscriptions/sub/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a",
        )];
        let base = HostIdentities::default();
        let refusal = fenced.patch(&host, &base, &id, &[]).await;
        assert!(
            matches!(refusal, Err(PortError::Transient(_))),
            "{refusal:?}"
        );
        tx.send(Leadership::Leading).unwrap();
        fenced.patch(&host, &base, &id, &[]).await.unwrap();
        tx.send(Leadership::SteppedDown(Error::Thread("test".into())))
            .unwrap();
        let refusal = fenced.patch(&host, &base, &[], &id).await;
        assert!(
            matches!(refusal, Err(PortError::Transient(_))),
            "{refusal:?}"
        );
        assert_eq!(
            arm.patches.lock().unwrap().len(),
            1,
            "only the leader's write went out"
        );
        assert!(fenced.get(&host).await.is_ok(), "reads pass");
        assert_eq!(refused.with_label_values(&["arm"]).get(), 2);
    }

    /// A client over a stand-in API server that records each request's method and path and
    /// answers an empty object.
    fn recording_client(fence: Fence) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let server = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            log.lock()
                .unwrap()
                .push(format!("{} {}", req.method(), req.uri().path()));
            let metadata = serde_json::json!({"name": "x", "namespace": "default"});
            let body = if req.uri().path().contains("/events") {
                serde_json::json!({
                    "apiVersion": "v1", "kind": "Event", "metadata": metadata,
                    "involvedObject": {},
                })
            } else {
                serde_json::json!({
                    "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
                    "metadata": metadata,
                    "spec": {"pod": "p", "podNamespace": "default", "nodename": "n"},
                })
            };
            std::future::ready(Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(body.to_string().into_bytes()))
                    .unwrap(),
            ))
        });
        let svc = tower::ServiceBuilder::new()
            .layer(FenceLayer(fence))
            .service(server);
        (kube::Client::new(svc, "default"), seen)
    }

    /// The actors' Kubernetes client: AzureAssignedIdentity and Event writes reach the API
    /// server only while the election thread says this replica leads; reads always do. On the
    /// old code the client had no fence and a deposed leader's writes went out.
    #[tokio::test]
    async fn a_fenced_client_writes_only_while_leading_and_reads_always() {
        let (tx, rx) = watch::channel(Leadership::Candidate);
        let refused = counter();
        let (client, seen) = recording_client(Fence::new(rx, refused.clone()));
        let aais: Api<AzureAssignedIdentity> = Api::namespaced(client.clone(), "default");
        let events: Api<Event> = Api::namespaced(client, "default");
        let patch = Patch::Merge(serde_json::json!({"status": {"status": "Assigned"}}));
        let pp = PatchParams::default();

        let e = aais.patch("x", &pp, &patch).await.unwrap_err();
        assert!(NotLeading::is(&e), "{e:?}");
        aais.get("x").await.unwrap();
        tx.send(Leadership::Leading).unwrap();
        aais.patch("x", &pp, &patch).await.unwrap();
        events
            .create(&PostParams::default(), &Event::default())
            .await
            .unwrap();
        tx.send(Leadership::SteppedDown(Error::Thread("test".into())))
            .unwrap();
        for e in [
            aais.patch("x", &pp, &patch).await.map(drop).unwrap_err(),
            aais.delete("x", &DeleteParams::default())
                .await
                .map(drop)
                .unwrap_err(),
            events
                .create(&PostParams::default(), &Event::default())
                .await
                .map(drop)
                .unwrap_err(),
        ] {
            assert!(NotLeading::is(&e), "{e:?}");
        }
        aais.get("x").await.unwrap();

        let seen = seen.lock().unwrap().clone();
        let writes: Vec<_> = seen.iter().filter(|r| !r.starts_with("GET ")).collect();
        assert_eq!(
            writes,
            [
                "PATCH /apis/aadpodidentity.k8s.io/v1/namespaces/default/azureassignedidentities/x",
                "POST /api/v1/namespaces/default/events",
            ],
            "only the leader's writes reached the API server: {seen:?}"
        );
        assert_eq!(seen.len(), 4, "both reads went out: {seen:?}");
        assert_eq!(
            refused.with_label_values(&["assigned_identity"]).get(),
            3,
            "one as candidate, two deposed"
        );
        assert_eq!(refused.with_label_values(&["event"]).get(), 1);
    }
}
