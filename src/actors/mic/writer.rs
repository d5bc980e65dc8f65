//! The AzureAssignedIdentity writer: owns the objects, their status and finalizer, and the
//! Events users read on their pods.
//!
//! Decisions are the pure [`plan`]: existing objects × desired assignments × host reports →
//! operations. The actor executes them (a bounded number at a time, one per object), folds the
//! answers back into its copy of the objects, and plans again. Lifecycle of one object:
//! created with the finalizer and status `Created`; `Assigned` once its host reports the
//! identity on ARM (at once for service principals); when no longer desired, `Unassigned`,
//! and deleted (finalizer removed) once its host no longer holds the identity for it, so an
//! identity in its grace period stays owned across a restart.

use super::assigner::HostReport;
use super::host::{HostId, IdentityId};
use super::matcher::{Assignment, ObjectKey, RejectReason, Rejection, Target};
use super::metrics::MicMetrics;
use crate::crd::{
    ASSIGNED_IDENTITY_FINALIZER, AssignedState, AzureAssignedIdentity, AzureAssignedIdentitySpec,
    AzureAssignedIdentityStatus, AzureIdentity, AzureIdentityBinding, IDENTITY_OWNER_ANNOTATION,
    IDENTITY_OWNER_EXTERNAL, IdentityType, NODENAME_LABEL, embeddable_meta,
};
use crate::metrics::DropTimer;
use actix::prelude::*;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Source component of every Event MIC writes (the original's).
pub const EVENT_SOURCE: &str = "aadpodidentity.k8s.io";
/// Event reason when an identity is assigned for a pod.
pub const REASON_APPLIED: &str = "binding applied";
/// Event reason when a binding could not be applied to a pod.
pub const REASON_APPLY_ERROR: &str = "binding apply error";

/// Errors of the writer's API calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{op} of AzureAssignedIdentity {key} failed: {source}")]
    Kube {
        /// What was attempted.
        op: &'static str,
        /// The object.
        key: ObjectKey,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// One write the writer should make.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteOp {
    /// Create the object (with finalizer, label and its first status, in one write).
    Create {
        /// What it records.
        assignment: Box<Assignment>,
        /// Its first status.
        status: AssignedState,
        /// The identity is on the host without MIC's write (see `IDENTITY_OWNER_ANNOTATION`).
        external: bool,
    },
    /// Replace the spec (pod moved node, binding or identity changed) and the status, in one write.
    UpdateSpec {
        /// What it records now.
        assignment: Box<Assignment>,
        /// The status to set.
        status: AssignedState,
        /// The identity is on the host without MIC's write.
        external: bool,
    },
    /// Set the status only.
    SetStatus {
        /// The object.
        key: ObjectKey,
        /// The new status.
        status: AssignedState,
        /// The identity is on the host without MIC's write.
        external: bool,
    },
    /// Remove the finalizer and delete.
    Delete {
        /// The object.
        key: ObjectKey,
    },
}

impl WriteOp {
    /// The object the operation touches.
    #[must_use]
    pub fn key(&self) -> &ObjectKey {
        match self {
            Self::Create { assignment, .. } | Self::UpdateSpec { assignment, .. } => {
                &assignment.key
            }
            Self::SetStatus { key, .. } | Self::Delete { key } => key,
        }
    }
}

/// A Kubernetes Event to write on a pod or a binding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UserEvent {
    /// Kind of the object (`Pod` or `AzureIdentityBinding`).
    pub kind: &'static str,
    /// Its apiVersion.
    pub api_version: &'static str,
    /// The object.
    pub object: ObjectKey,
    /// Its uid (empty when unknown).
    pub uid: String,
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    /// [`REASON_APPLIED`] or [`REASON_APPLY_ERROR`].
    pub reason: &'static str,
    /// What happened, for `kubectl describe`.
    pub message: String,
}

impl UserEvent {
    fn on_pod(
        a_pod: &ObjectKey,
        uid: &str,
        type_: &'static str,
        reason: &'static str,
        message: String,
    ) -> Self {
        Self {
            kind: "Pod",
            api_version: "v1",
            object: a_pod.clone(),
            uid: uid.to_string(),
            type_,
            reason,
            message,
        }
    }

    fn on_binding(binding: ObjectKey, uid: &str, message: String) -> Self {
        Self {
            kind: "AzureIdentityBinding",
            api_version: "aadpodidentity.k8s.io/v1",
            object: binding,
            uid: uid.to_string(),
            type_: "Warning",
            reason: REASON_APPLY_ERROR,
            message,
        }
    }
}

/// What the matcher says should exist (sent after every change).
#[derive(Message, Debug, Clone, Default)]
#[rtype(result = "()")]
pub struct DesiredAssignments {
    /// Assignments by AzureAssignedIdentity key.
    pub assignments: BTreeMap<ObjectKey, Assignment>,
    /// Host of every known node.
    pub nodes: BTreeMap<String, HostId>,
    /// Refused matches (each becomes one Event).
    pub rejections: Vec<Rejection>,
    /// Sequence number of the host updates sent with this state; a host's report at or past
    /// it reflects this state.
    pub seq: u64,
}

/// An AzureAssignedIdentity watch event.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum AssignedEvent {
    /// Added or modified.
    Applied(Box<AzureAssignedIdentity>),
    /// Deleted.
    Deleted(ObjectKey),
    /// A relist finished: these are all objects that exist.
    Relisted(Vec<AzureAssignedIdentity>),
}

fn identity_id_of(aai: &AzureAssignedIdentity) -> Option<(IdentityType, IdentityId)> {
    let i = aai.spec.azure_identity_ref.as_ref()?;
    Some((i.spec.type_, IdentityId::new(&i.spec.resource_id)))
}

fn status_of(aai: &AzureAssignedIdentity) -> AssignedState {
    aai.status
        .as_ref()
        .map(|s| s.status.clone())
        .unwrap_or_default()
}

/// True when the object records something other than `a` (apart from status): another pod or
/// node, or an identity or binding that changed since it was embedded. Like the original, an
/// embedded object is stale when its resourceVersion is not the current one (so an edit to a
/// service principal's tenant, Secret reference or `adEndpoint`, or to the `Behavior`
/// annotation, reaches NMI); the specs are compared as well, for objects embedded without one.
fn spec_differs(aai: &AzureAssignedIdentity, a: &Assignment) -> bool {
    let s = &aai.spec;
    s.pod != a.pod.name
        || s.pod_namespace != a.pod.namespace
        || s.node_name != a.node
        || s.azure_identity_ref.as_deref().is_none_or(|i| {
            embedded_differs(&i.metadata, &a.identity.metadata) || i.spec != a.identity.spec
        })
        || s.azure_binding_ref.as_deref().is_none_or(|b| {
            embedded_differs(&b.metadata, &a.binding.metadata) || b.spec != a.binding.spec
        })
}

/// Another object, or the same one at another resourceVersion (when both have one).
fn embedded_differs(
    embedded: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    current: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> bool {
    embedded.name != current.name
        || matches!(
            (&embedded.resource_version, &current.resource_version),
            (Some(e), Some(c)) if e != c
        )
}

/// Decides the writes that bring `existing` to `desired`.
#[must_use]
pub fn plan(
    existing: &BTreeMap<ObjectKey, AzureAssignedIdentity>,
    desired: &DesiredAssignments,
    hosts: &BTreeMap<HostId, HostReport>,
) -> Vec<WriteOp> {
    plan_some(existing, desired, hosts, &BTreeSet::new(), usize::MAX)
}

/// The first `limit` writes of [`plan`], leaving out objects in `skip` (writes in flight);
/// stops scanning once it has them, so a large backlog costs little per pass.
#[must_use]
pub fn plan_some(
    existing: &BTreeMap<ObjectKey, AzureAssignedIdentity>,
    desired: &DesiredAssignments,
    hosts: &BTreeMap<HostId, HostReport>,
    skip: &BTreeSet<ObjectKey>,
    limit: usize,
) -> Vec<WriteOp> {
    let mut ops = Vec::new();
    if limit == 0 {
        return ops;
    }
    for (key, a) in &desired.assignments {
        if skip.contains(key) {
            continue;
        }
        if ops.len() >= limit {
            return ops;
        }
        let confirmed = match &a.target {
            Target::ServicePrincipal | Target::Federated => true,
            Target::Msi { host, id } => hosts.get(host).is_some_and(|r| r.assigned.contains(id)),
        };
        let external = match &a.target {
            Target::ServicePrincipal | Target::Federated => false,
            Target::Msi { host, id } => hosts.get(host).is_some_and(|r| r.external.contains(id)),
        };
        match existing.get(key) {
            // Being deleted (by someone else): let it go; it is recreated afterwards.
            Some(e) if e.metadata.deletion_timestamp.is_some() => {
                if e.finalizers()
                    .iter()
                    .any(|f| f == ASSIGNED_IDENTITY_FINALIZER)
                {
                    ops.push(WriteOp::Delete { key: key.clone() });
                }
            }
            None => ops.push(WriteOp::Create {
                assignment: Box::new(a.clone()),
                status: if confirmed {
                    AssignedState::Assigned
                } else {
                    AssignedState::Created
                },
                external,
            }),
            Some(e) if spec_differs(e, a) => ops.push(WriteOp::UpdateSpec {
                assignment: Box::new(a.clone()),
                status: if confirmed {
                    AssignedState::Assigned
                } else {
                    AssignedState::Created
                },
                external,
            }),
            Some(e) => {
                let now = status_of(e);
                // Assigned stays Assigned: a hand-removed identity is re-added by the reconcile
                // and NMI's token fetch fails meanwhile anyway.
                let want = if confirmed || now == AssignedState::Assigned {
                    AssignedState::Assigned
                } else {
                    AssignedState::Created
                };
                // The mark follows what the host reports once it has been read (a restarted
                // MIC learns it again from ARM and the objects).
                let mark_differs = confirmed && e.identity_is_external() != external;
                if now != want || mark_differs {
                    ops.push(WriteOp::SetStatus {
                        key: key.clone(),
                        status: want,
                        external,
                    });
                }
            }
        }
    }
    for (key, e) in existing {
        if desired.assignments.contains_key(key) || skip.contains(key) {
            continue;
        }
        if ops.len() >= limit {
            return ops;
        }
        if e.metadata.deletion_timestamp.is_none() && status_of(e) != AssignedState::Unassigned {
            ops.push(WriteOp::SetStatus {
                key: key.clone(),
                status: AssignedState::Unassigned,
                external: e.identity_is_external(),
            });
            continue;
        }
        let still_held = match identity_id_of(e) {
            Some((IdentityType::UserAssignedMsi, id)) => {
                match desired.nodes.get(&e.spec.node_name) {
                    // The node is gone; the host's assigner still releases the identity.
                    None => false,
                    Some(host) => hosts.get(host).is_none_or(|r| {
                        r.seq < desired.seq || !r.synced || r.releasing.contains(&id)
                    }),
                }
            }
            _ => false,
        };
        if !still_held {
            ops.push(WriteOp::Delete { key: key.clone() });
        }
    }
    ops
}

/// Warning Events the current state calls for: each ARM refusal on the pod and once on its
/// binding, each rejected match on the pod and (for namespace and missing-identity problems)
/// once on the binding. The writer writes each once for as long as it holds.
#[must_use]
pub fn error_events(
    desired: &DesiredAssignments,
    hosts: &BTreeMap<HostId, HostReport>,
) -> BTreeSet<UserEvent> {
    let mut out = BTreeSet::new();
    for a in desired.assignments.values() {
        if let Target::Msi { host, id } = &a.target
            && let Some(why) = hosts.get(host).and_then(|r| r.refused.get(id))
        {
            let binding = ObjectKey::of(&a.binding);
            out.insert(UserEvent::on_pod(
                &a.pod,
                &a.pod_uid,
                "Warning",
                REASON_APPLY_ERROR,
                format!(
                    "Applying binding {binding} for pod {} on node {} failed: ARM refused identity {id}: {why}; retrying with backoff",
                    a.pod, a.node
                ),
            ));
            out.insert(UserEvent::on_binding(
                binding,
                a.binding.metadata.uid.as_deref().unwrap_or_default(),
                format!(
                    "ARM refused identity {id} on {}: {why}; retrying with backoff",
                    host.name
                ),
            ));
        }
    }
    for r in &desired.rejections {
        out.insert(UserEvent::on_pod(
            &r.pod,
            &r.pod_uid,
            "Warning",
            REASON_APPLY_ERROR,
            r.reason.to_string(),
        ));
        match &r.reason {
            RejectReason::CrossNamespace { binding, .. } => {
                out.insert(UserEvent::on_binding(
                    binding.clone(),
                    "",
                    format!(
                        "binding {binding} matches pods in other namespaces, which namespaced matching does not apply it to (set --forceNamespaced=false for cluster-wide matching)"
                    ),
                ));
            }
            RejectReason::IdentityMissing { binding, .. } => {
                out.insert(UserEvent::on_binding(
                    binding.clone(),
                    "",
                    r.reason.to_string(),
                ));
            }
            _ => {}
        }
    }
    out
}

/// Builds the object for an assignment.
#[must_use]
pub fn object_for(a: &Assignment, status: AssignedState, external: bool) -> AzureAssignedIdentity {
    let identity = AzureIdentity {
        metadata: embeddable_meta(&a.identity.metadata),
        spec: a.identity.spec.clone(),
        status: None,
    };
    let binding = AzureIdentityBinding {
        metadata: embeddable_meta(&a.binding.metadata),
        spec: a.binding.spec.clone(),
        status: None,
    };
    let mut obj = AzureAssignedIdentity::new(
        &a.key.name,
        AzureAssignedIdentitySpec {
            azure_identity_ref: Some(Box::new(identity)),
            azure_binding_ref: Some(Box::new(binding)),
            pod: a.pod.name.clone(),
            pod_namespace: a.pod.namespace.clone(),
            node_name: a.node.clone(),
            replicas: None,
        },
    );
    obj.metadata.namespace = Some(a.key.namespace.clone());
    obj.metadata.labels = Some([(NODENAME_LABEL.to_string(), a.node.clone())].into());
    obj.metadata.finalizers = Some(vec![ASSIGNED_IDENTITY_FINALIZER.to_string()]);
    if external {
        obj.metadata.annotations = Some(
            [(
                IDENTITY_OWNER_ANNOTATION.to_string(),
                IDENTITY_OWNER_EXTERNAL.to_string(),
            )]
            .into(),
        );
    }
    obj.status = Some(AzureAssignedIdentityStatus {
        available_replicas: 0,
        status,
    });
    obj
}

use kube::ResourceExt;

/// The writer actor.
pub struct Writer {
    client: Client,
    metrics: MicMetrics,
    max_in_flight: usize,
    existing: BTreeMap<ObjectKey, AzureAssignedIdentity>,
    desired: DesiredAssignments,
    hosts: BTreeMap<HostId, HostReport>,
    in_flight: BTreeSet<ObjectKey>,
    /// Warning Events written and still true (each is written once while it holds).
    events_sent: BTreeSet<UserEvent>,
    /// When each assignment was first seen (for the latency histogram).
    first_seen: BTreeMap<ObjectKey, Instant>,
    /// The AzureAssignedIdentity watch has listed once.
    synced: bool,
    /// The matcher has said what should exist at least once; planning before that would
    /// take every existing object for stale.
    told: bool,
    replan_scheduled: bool,
    last_pass: Duration,
}

impl Writer {
    /// A writer using `client`, at most `max_in_flight` writes at a time.
    #[must_use]
    pub fn new(client: Client, metrics: MicMetrics, max_in_flight: usize) -> Self {
        Self {
            client,
            metrics,
            max_in_flight: max_in_flight.max(1),
            existing: BTreeMap::new(),
            desired: DesiredAssignments::default(),
            hosts: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            events_sent: BTreeSet::new(),
            first_seen: BTreeMap::new(),
            synced: false,
            told: false,
            replan_scheduled: false,
            last_pass: Duration::ZERO,
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if !self.replan_scheduled {
            self.replan_scheduled = true;
            // Twice the last pass at least: a large backlog is not rescanned for every answer.
            let wait = (self.last_pass * 2).max(Duration::from_millis(5));
            ctx.run_later(wait, |act, ctx| {
                act.replan_scheduled = false;
                let t = std::time::Instant::now();
                act.replan(ctx);
                act.last_pass = t.elapsed();
            });
        }
    }

    fn replan(&mut self, ctx: &mut Context<Self>) {
        if !self.synced || !self.told {
            return;
        }
        let now = Instant::now();
        for key in self.desired.assignments.keys() {
            self.first_seen.entry(key.clone()).or_insert(now);
        }
        let desired = &self.desired.assignments;
        self.first_seen.retain(|k, _| desired.contains_key(k));
        let events = error_events(&self.desired, &self.hosts);
        for ev in events.difference(&self.events_sent) {
            self.spawn_event(ev.clone(), ctx);
        }
        self.events_sent = events;
        let room = self.max_in_flight.saturating_sub(self.in_flight.len());
        for op in plan_some(
            &self.existing,
            &self.desired,
            &self.hosts,
            &self.in_flight,
            room,
        ) {
            self.in_flight.insert(op.key().clone());
            self.spawn_op(op, ctx);
        }
    }

    fn spawn_event(&self, ev: UserEvent, ctx: &mut Context<Self>) {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ev.object.namespace);
        let errors = self
            .metrics
            .original
            .kubernetes_api_operations_errors_count
            .clone();
        let f = async move {
            let now = k8s_openapi::jiff::Timestamp::now();
            let e = Event {
                metadata: kube::api::ObjectMeta {
                    generate_name: Some(format!("{}.", ev.object.name)),
                    namespace: Some(ev.object.namespace.clone()),
                    ..Default::default()
                },
                involved_object: ObjectReference {
                    api_version: Some(ev.api_version.into()),
                    kind: Some(ev.kind.into()),
                    name: Some(ev.object.name.clone()),
                    namespace: Some(ev.object.namespace.clone()),
                    uid: Some(ev.uid.clone()).filter(|u| !u.is_empty()),
                    ..Default::default()
                },
                reason: Some(ev.reason.to_string()),
                message: Some(ev.message.clone()),
                type_: Some(ev.type_.to_string()),
                source: Some(EventSource {
                    component: Some(EVENT_SOURCE.to_string()),
                    host: None,
                }),
                reporting_component: Some(EVENT_SOURCE.to_string()),
                reporting_instance: Some(EVENT_SOURCE.to_string()),
                first_timestamp: Some(Time(now)),
                last_timestamp: Some(Time(now)),
                event_time: Some(MicroTime(now)),
                count: Some(1),
                action: Some(ev.reason.to_string()),
                ..Default::default()
            };
            if let Err(err) = api.create(&PostParams::default(), &e).await {
                errors.with_label_values(&["create event"]).inc();
                warn!(object = %ev.object, kind = ev.kind, reason = ev.reason, error = %err, "writing Event failed");
            }
        };
        ctx.spawn(f.into_actor(self));
    }

    fn spawn_op(&self, op: WriteOp, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        let key = op.key().clone();
        let existing = self.existing.get(&key).cloned();
        let m = self.metrics.original.clone();
        let f = async move {
            let (hist, count) = match &op {
                WriteOp::Create { .. } => (
                    m.assigned_identity_addition_duration_seconds.clone(),
                    m.assigned_identity_addition_count.clone(),
                ),
                WriteOp::Delete { .. } => (
                    m.assigned_identity_deletion_duration_seconds.clone(),
                    m.assigned_identity_deletion_count.clone(),
                ),
                WriteOp::UpdateSpec { .. } | WriteOp::SetStatus { .. } => (
                    m.assigned_identity_update_duration_seconds.clone(),
                    m.assigned_identity_update_count.clone(),
                ),
            };
            let timer = DropTimer::new(hist);
            let r = execute(client, op.clone(), existing).await;
            match &r {
                Ok(_) => count.inc(),
                Err(Error::Kube { op, .. }) => {
                    drop(timer);
                    m.kubernetes_api_operations_errors_count
                        .with_label_values(&[original_operation(op)])
                        .inc();
                }
            }
            r.map(|o| (op, o))
        };
        ctx.spawn(f.into_actor(self).map(move |res, act, ctx| {
            act.in_flight.remove(&key);
            match res {
                Ok((op, obj)) => act.applied(op, obj, ctx),
                Err(e) => {
                    warn!(error = %e, "AzureAssignedIdentity write failed");
                    // Retry after a pause: the watch may also bring a newer copy meanwhile.
                    ctx.run_later(Duration::from_secs(1), |act, ctx| act.schedule(ctx));
                    return;
                }
            }
            act.schedule(ctx);
        }));
    }

    fn applied(
        &mut self,
        op: WriteOp,
        obj: Option<AzureAssignedIdentity>,
        ctx: &mut Context<Self>,
    ) {
        let key = op.key().clone();
        let became_assigned = match &op {
            WriteOp::Create { status, .. }
            | WriteOp::UpdateSpec { status, .. }
            | WriteOp::SetStatus { status, .. } => {
                *status == AssignedState::Assigned
                    && self
                        .existing
                        .get(&key)
                        .is_none_or(|e| status_of(e) != AssignedState::Assigned)
            }
            WriteOp::Delete { .. } => false,
        };
        match obj {
            Some(o) => {
                self.existing.insert(key.clone(), o);
            }
            None => {
                self.existing.remove(&key);
            }
        }
        if became_assigned && let Some(a) = self.desired.assignments.get(&key) {
            if let Some(t0) = self.first_seen.get(&key) {
                self.metrics
                    .assignment_latency
                    .observe(t0.elapsed().as_secs_f64());
            }
            info!(pod = %a.pod, identity = %a.identity.name_any(), node = %a.node, "identity assigned");
            let ev = UserEvent::on_pod(
                &a.pod,
                &a.pod_uid,
                "Normal",
                REASON_APPLIED,
                format!(
                    "Binding {} applied on node {} for pod {}",
                    a.binding.name_any(),
                    a.node,
                    a.pod
                ),
            );
            self.spawn_event(ev, ctx);
        }
    }

    fn newer(old: Option<&AzureAssignedIdentity>, new: &AzureAssignedIdentity) -> bool {
        let rv = |o: &AzureAssignedIdentity| {
            o.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
        };
        match (old.and_then(rv), rv(new)) {
            (Some(a), Some(b)) => b >= a,
            _ => true,
        }
    }
}

/// The original's `operation_type` for a failed AzureAssignedIdentity call, as its dashboards
/// query `kubernetes_api_operations_errors_count`.
fn original_operation(op: &str) -> &'static str {
    match op {
        "create" => "assigned_identity_addition",
        "delete" | "finalizer removal" => "assigned_identity_deletion",
        "spec update" => "assigned_identity_update",
        _ => "update_azure_assigned_identity_status",
    }
}

/// True when the object as the server returned it carries `status` (a CRD with a status
/// subresource drops status from main-resource writes).
fn has_status(o: &AzureAssignedIdentity, status: &AssignedState) -> bool {
    o.status.as_ref().is_some_and(|s| &s.status == status)
}

/// Sets status through `/status` after a main-resource write that the server stripped of its
/// status: a cluster whose CRD declares the status subresource (not the original's CRDs,
/// nor ours) still converges, at the cost of one more write.
async fn status_fallback(
    api: &Api<AzureAssignedIdentity>,
    key: &ObjectKey,
    written: AzureAssignedIdentity,
    status: &AssignedState,
) -> Result<AzureAssignedIdentity, kube::Error> {
    if has_status(&written, status) {
        return Ok(written);
    }
    debug!(key = %key, "status not kept on the main resource; writing /status");
    api.patch_status(
        &key.name,
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"status": {"status": status.as_str(), "availableReplicas": 0}}),
        ),
    )
    .await
}

/// The merge patch that sets an AzureAssignedIdentity's status and ownership mark.
fn status_patch(status: &AssignedState, external: bool) -> serde_json::Value {
    let mark = external.then_some(IDENTITY_OWNER_EXTERNAL);
    serde_json::json!({
        "metadata": {"annotations": {IDENTITY_OWNER_ANNOTATION: mark}},
        "status": {"status": status.as_str(), "availableReplicas": 0},
    })
}

/// Executes one write; the object afterwards (`None` once deleted).
///
/// Status is written the way the original writes it: set in the create, changed on the main
/// resource later (the original's CRDs have no status subresource, and Helm never upgrades
/// CRDs, so clusters upgraded from the original keep them). One write per step.
async fn execute(
    client: Client,
    op: WriteOp,
    existing: Option<AzureAssignedIdentity>,
) -> Result<Option<AzureAssignedIdentity>, Error> {
    let key = op.key().clone();
    let api: Api<AzureAssignedIdentity> = Api::namespaced(client, &key.namespace);
    let kerr = |op: &'static str, key: &ObjectKey| {
        let key = key.clone();
        move |source| Error::Kube { op, key, source }
    };
    match op {
        WriteOp::Create {
            assignment,
            status,
            external,
        } => {
            let obj = object_for(&assignment, status.clone(), external);
            debug!(key = %key, "creating AzureAssignedIdentity");
            let created = match api.create(&PostParams::default(), &obj).await {
                Ok(o) => o,
                // Created by a previous leader an instant ago: take it over.
                Err(kube::Error::Api(s)) if s.code == 409 => api
                    .patch(
                        &key.name,
                        &PatchParams::default(),
                        &Patch::Merge(status_patch(&status, external)),
                    )
                    .await
                    .map_err(kerr("status update", &key))?,
                Err(e) => return Err(kerr("create", &key)(e)),
            };
            let o = status_fallback(&api, &key, created, &status)
                .await
                .map_err(kerr("status update", &key))?;
            Ok(Some(o))
        }
        WriteOp::UpdateSpec {
            assignment,
            status,
            external,
        } => {
            let obj = object_for(&assignment, status.clone(), external);
            let mark = external.then_some(IDENTITY_OWNER_EXTERNAL);
            let patch = serde_json::json!({
                "metadata": {"labels": obj.metadata.labels, "annotations": {IDENTITY_OWNER_ANNOTATION: mark}},
                "spec": obj.spec,
                "status": obj.status,
            });
            let o = api
                .patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(kerr("spec update", &key))?;
            let o = status_fallback(&api, &key, o, &status)
                .await
                .map_err(kerr("status update", &key))?;
            Ok(Some(o))
        }
        WriteOp::SetStatus {
            status, external, ..
        } => {
            match api
                .patch(
                    &key.name,
                    &PatchParams::default(),
                    &Patch::Merge(status_patch(&status, external)),
                )
                .await
            {
                Ok(o) => status_fallback(&api, &key, o, &status)
                    .await
                    .map(Some)
                    .map_err(kerr("status update", &key)),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                Err(e) => Err(kerr("status update", &key)(e)),
            }
        }
        WriteOp::Delete { .. } => {
            if let Some(e) = existing {
                let others: Vec<String> = e
                    .finalizers()
                    .iter()
                    .filter(|f| f.as_str() != ASSIGNED_IDENTITY_FINALIZER)
                    .cloned()
                    .collect();
                if others.len() != e.finalizers().len() {
                    let patch = serde_json::json!({"metadata": {"finalizers": others}});
                    match api
                        .patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
                        Err(e) => return Err(kerr("finalizer removal", &key)(e)),
                    }
                }
            }
            match api.delete(&key.name, &DeleteParams::default()).await {
                Ok(_) => Ok(None),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                Err(e) => Err(kerr("delete", &key)(e)),
            }
        }
    }
}

impl Actor for Writer {
    type Context = Context<Self>;
}

impl Handler<DesiredAssignments> for Writer {
    type Result = ();
    fn handle(&mut self, msg: DesiredAssignments, ctx: &mut Context<Self>) {
        self.desired = msg;
        self.told = true;
        self.schedule(ctx);
    }
}

impl Handler<HostReport> for Writer {
    type Result = ();
    fn handle(&mut self, msg: HostReport, ctx: &mut Context<Self>) {
        self.hosts.insert(msg.host.clone(), msg);
        self.schedule(ctx);
    }
}

impl Handler<AssignedEvent> for Writer {
    type Result = ();
    fn handle(&mut self, msg: AssignedEvent, ctx: &mut Context<Self>) {
        match msg {
            AssignedEvent::Applied(o) => {
                let key = ObjectKey::of(o.as_ref());
                if Self::newer(self.existing.get(&key), &o) {
                    self.existing.insert(key, *o);
                }
            }
            AssignedEvent::Deleted(key) => {
                self.existing.remove(&key);
            }
            AssignedEvent::Relisted(all) => {
                self.existing = all.into_iter().map(|o| (ObjectKey::of(&o), o)).collect();
                self.synced = true;
            }
        }
        self.schedule(ctx);
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
