//! The AzureAssignedIdentity writer: owns the objects, their status and finalizer, and
//! decides the Events users read on their pods and bindings (the [`super::recorder`] writes
//! them).
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
use super::recorder::Record;
pub use super::recorder::{EVENT_SOURCE, REASON_APPLIED, REASON_APPLY_ERROR, UserEvent};
use crate::crd::{
    ASSIGNED_IDENTITY_FINALIZER, AssignedState, AzureAssignedIdentity, AzureAssignedIdentitySpec,
    AzureAssignedIdentityStatus, AzureIdentity, AzureIdentityBinding, IDENTITY_OWNER_ANNOTATION,
    IDENTITY_OWNER_EXTERNAL, IdentityType, NODENAME_LABEL, embeddable_meta,
};
use crate::metrics::DropTimer;
use actix::prelude::*;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

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

/// The first `limit` writes of [`plan`], leaving out objects in `skip` (writes in flight).
#[must_use]
pub fn plan_some(
    existing: &BTreeMap<ObjectKey, AzureAssignedIdentity>,
    desired: &DesiredAssignments,
    hosts: &BTreeMap<HostId, HostReport>,
    skip: &BTreeSet<ObjectKey>,
    limit: usize,
) -> Vec<WriteOp> {
    desired
        .assignments
        .keys()
        .chain(
            existing
                .keys()
                .filter(|k| !desired.assignments.contains_key(*k)),
        )
        .filter(|k| !skip.contains(*k))
        .filter_map(|k| plan_key(k, existing, desired, hosts))
        .take(limit)
        .collect()
}

/// The write one object needs now, if any: what [`plan`] decides for `key` alone. The writer
/// calls it for the objects something changed for, so a large cluster costs nothing per pass.
#[must_use]
pub fn plan_key(
    key: &ObjectKey,
    existing: &BTreeMap<ObjectKey, AzureAssignedIdentity>,
    desired: &DesiredAssignments,
    hosts: &BTreeMap<HostId, HostReport>,
) -> Option<WriteOp> {
    let Some(a) = desired.assignments.get(key) else {
        return plan_release(key, existing.get(key)?, desired, hosts);
    };
    let confirmed = match &a.target {
        Target::ServicePrincipal => true,
        Target::Msi { host, id } => hosts.get(host).is_some_and(|r| r.assigned.contains(id)),
    };
    let external = match &a.target {
        Target::ServicePrincipal => false,
        Target::Msi { host, id } => hosts.get(host).is_some_and(|r| r.external.contains(id)),
    };
    let first = if confirmed {
        AssignedState::Assigned
    } else {
        AssignedState::Created
    };
    match existing.get(key) {
        // Being deleted (by someone else): let it go; it is recreated afterwards.
        Some(e) if e.metadata.deletion_timestamp.is_some() => e
            .finalizers()
            .iter()
            .any(|f| f == ASSIGNED_IDENTITY_FINALIZER)
            .then(|| WriteOp::Delete { key: key.clone() }),
        None => Some(WriteOp::Create {
            assignment: Box::new(a.clone()),
            status: first,
            external,
        }),
        Some(e) if spec_differs(e, a) => Some(WriteOp::UpdateSpec {
            assignment: Box::new(a.clone()),
            status: first,
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
            (now != want || mark_differs).then(|| WriteOp::SetStatus {
                key: key.clone(),
                status: want,
                external,
            })
        }
    }
}

/// An object no longer desired: `Unassigned` first, then deleted once its host no longer
/// holds the identity for it.
fn plan_release(
    key: &ObjectKey,
    e: &AzureAssignedIdentity,
    desired: &DesiredAssignments,
    hosts: &BTreeMap<HostId, HostReport>,
) -> Option<WriteOp> {
    if e.metadata.deletion_timestamp.is_none() && status_of(e) != AssignedState::Unassigned {
        return Some(WriteOp::SetStatus {
            key: key.clone(),
            status: AssignedState::Unassigned,
            external: e.identity_is_external(),
        });
    }
    let still_held = match identity_id_of(e) {
        Some((IdentityType::UserAssignedMsi, id)) => match desired.nodes.get(&e.spec.node_name) {
            // The node is gone; the host's assigner still releases the identity.
            None => false,
            Some(host) => hosts
                .get(host)
                .is_none_or(|r| r.seq < desired.seq || !r.synced || r.releasing.contains(&id)),
        },
        _ => false,
    };
    (!still_held).then(|| WriteOp::Delete { key: key.clone() })
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
            let binding = ObjectKey::of(a.binding.as_ref());
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
                "Warning",
                REASON_APPLY_ERROR,
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
                    "Warning",
                    REASON_APPLY_ERROR,
                    format!(
                        "binding {binding} matches pods in other namespaces, which namespaced matching does not apply it to (set --forceNamespaced=false for cluster-wide matching)"
                    ),
                ));
            }
            RejectReason::IdentityMissing { binding, .. } => {
                out.insert(UserEvent::on_binding(
                    binding.clone(),
                    "",
                    "Warning",
                    REASON_APPLY_ERROR,
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
///
/// Work is driven by a set of dirty keys: whatever changes for an object (its desired
/// assignment, its host's report, its copy from the watch, the answer to its last write)
/// marks it, and only marked objects are planned again, so a write costs the same in a
/// cluster of ten pods and of a hundred thousand. At most `max_in_flight` writes are out (one
/// per object); each answer starts the next at once, so writes are pipelined, never batched
/// behind their slowest member.
pub struct Writer {
    client: Client,
    events: Recipient<Record>,
    metrics: MicMetrics,
    max_in_flight: usize,
    existing: BTreeMap<ObjectKey, AzureAssignedIdentity>,
    desired: DesiredAssignments,
    /// Desired objects by the host their identity goes on.
    by_host: HashMap<HostId, BTreeSet<ObjectKey>>,
    /// Existing objects no longer desired (being released).
    orphans: BTreeSet<ObjectKey>,
    hosts: BTreeMap<HostId, HostReport>,
    in_flight: BTreeSet<ObjectKey>,
    /// Objects to plan again.
    dirty: BTreeSet<ObjectKey>,
    /// Warning Events written and still true (each is written once while it holds).
    events_sent: BTreeSet<UserEvent>,
    /// The desired state or a host report changed since the Warning Events were computed.
    events_stale: bool,
    /// When each assignment was first seen (for the latency histogram).
    first_seen: HashMap<ObjectKey, Instant>,
    /// The AzureAssignedIdentity watch has listed once.
    synced: bool,
    /// The matcher has said what should exist at least once; planning before that would
    /// take every existing object for stale.
    told: bool,
}

fn host_of(a: &Assignment) -> Option<&HostId> {
    match &a.target {
        Target::Msi { host, .. } => Some(host),
        Target::ServicePrincipal => None,
    }
}

impl Writer {
    /// A writer using `client`, at most `max_in_flight` writes at a time, recording Events
    /// through `events`.
    #[must_use]
    pub fn new(
        client: Client,
        events: Recipient<Record>,
        metrics: MicMetrics,
        max_in_flight: usize,
    ) -> Self {
        Self {
            client,
            events,
            metrics,
            max_in_flight: max_in_flight.max(1),
            existing: BTreeMap::new(),
            desired: DesiredAssignments::default(),
            by_host: HashMap::new(),
            orphans: BTreeSet::new(),
            hosts: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            dirty: BTreeSet::new(),
            events_sent: BTreeSet::new(),
            events_stale: false,
            first_seen: HashMap::new(),
            synced: false,
            told: false,
        }
    }

    /// Takes in a new desired state: marks what changed.
    fn set_desired(&mut self, next: DesiredAssignments) {
        let now = Instant::now();
        let mut old = std::mem::replace(&mut self.desired, next);
        for (key, a) in &self.desired.assignments {
            match old.assignments.remove(key) {
                Some(was) if was.same_as(a) => continue,
                Some(was) => {
                    if let Some(h) = host_of(&was)
                        && let Some(keys) = self.by_host.get_mut(h)
                    {
                        keys.remove(key);
                    }
                }
                None => {
                    self.first_seen.insert(key.clone(), now);
                    self.orphans.remove(key);
                }
            }
            if let Some(h) = host_of(a) {
                self.by_host
                    .entry(h.clone())
                    .or_default()
                    .insert(key.clone());
            }
            self.dirty.insert(key.clone());
        }
        // What is left of the old state is no longer desired.
        for (key, was) in old.assignments {
            if let Some(h) = host_of(&was)
                && let Some(keys) = self.by_host.get_mut(h)
            {
                keys.remove(&key);
            }
            self.first_seen.remove(&key);
            if self.existing.contains_key(&key) {
                self.orphans.insert(key.clone());
            }
            self.dirty.insert(key);
        }
        // Releases wait for reports at the new sequence number.
        self.dirty.extend(self.orphans.iter().cloned());
        self.events_stale = true;
    }

    fn set_existing(&mut self, key: &ObjectKey, obj: Option<AzureAssignedIdentity>) {
        match obj {
            Some(o) => {
                self.existing.insert(key.clone(), o);
                if !self.desired.assignments.contains_key(key) {
                    self.orphans.insert(key.clone());
                }
            }
            None => {
                self.existing.remove(key);
                self.orphans.remove(key);
            }
        }
        self.dirty.insert(key.clone());
    }

    /// Starts writes for marked objects while there is room.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if !self.synced || !self.told {
            return;
        }
        if self.events_stale {
            self.events_stale = false;
            let events = error_events(&self.desired, &self.hosts);
            for ev in events.difference(&self.events_sent) {
                self.events.do_send(Record(ev.clone()));
            }
            self.events_sent = events;
        }
        while self.in_flight.len() < self.max_in_flight {
            let Some(key) = self.dirty.pop_first() else {
                break;
            };
            // An object with a write out is planned again when that write answers.
            if self.in_flight.contains(&key) {
                continue;
            }
            if let Some(op) = plan_key(&key, &self.existing, &self.desired, &self.hosts) {
                self.in_flight.insert(key);
                self.spawn_op(op, ctx);
            }
        }
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
                Ok((op, obj)) => act.applied(op, obj),
                Err(e) => {
                    warn!(error = %e, "AzureAssignedIdentity write failed");
                    // Retry after a pause: the watch may also bring a newer copy meanwhile.
                    ctx.run_later(Duration::from_secs(1), move |act, ctx| {
                        act.dirty.insert(key);
                        act.pump(ctx);
                    });
                }
            }
            act.pump(ctx);
        }));
    }

    fn applied(&mut self, op: WriteOp, obj: Option<AzureAssignedIdentity>) {
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
        self.set_existing(&key, obj);
        if became_assigned && let Some(a) = self.desired.assignments.get(&key) {
            if let Some(t0) = self.first_seen.get(&key) {
                self.metrics
                    .assignment_latency
                    .observe(t0.elapsed().as_secs_f64());
            }
            info!(pod = %a.pod, identity = %a.identity.name_any(), node = %a.node, "identity assigned");
            // On the binding, as the original records it: a burst of pods on one binding
            // then costs a few Event writes (see the recorder), not one per pod.
            let ev = UserEvent::on_binding(
                ObjectKey::of(a.binding.as_ref()),
                a.binding.metadata.uid.as_deref().unwrap_or_default(),
                "Normal",
                REASON_APPLIED,
                format!(
                    "Binding {} applied on node {} for pod {}",
                    a.binding.name_any(),
                    a.node,
                    a.pod
                ),
            );
            self.events.do_send(Record(ev));
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
        self.set_desired(msg);
        self.told = true;
        self.pump(ctx);
    }
}

impl Handler<HostReport> for Writer {
    type Result = ();
    fn handle(&mut self, msg: HostReport, ctx: &mut Context<Self>) {
        if let Some(keys) = self.by_host.get(&msg.host) {
            self.dirty.extend(keys.iter().cloned());
        }
        self.dirty.extend(self.orphans.iter().cloned());
        self.hosts.insert(msg.host.clone(), msg);
        self.events_stale = true;
        self.pump(ctx);
    }
}

impl Handler<AssignedEvent> for Writer {
    type Result = ();
    fn handle(&mut self, msg: AssignedEvent, ctx: &mut Context<Self>) {
        match msg {
            AssignedEvent::Applied(o) => {
                let key = ObjectKey::of(o.as_ref());
                if Self::newer(self.existing.get(&key), &o) {
                    self.set_existing(&key, Some(*o));
                }
            }
            AssignedEvent::Deleted(key) => self.set_existing(&key, None),
            AssignedEvent::Relisted(all) => {
                self.existing = all.into_iter().map(|o| (ObjectKey::of(&o), o)).collect();
                self.orphans = self
                    .existing
                    .keys()
                    .filter(|k| !self.desired.assignments.contains_key(*k))
                    .cloned()
                    .collect();
                self.dirty.extend(self.existing.keys().cloned());
                self.dirty.extend(self.desired.assignments.keys().cloned());
                self.synced = true;
            }
        }
        self.pump(ctx);
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
