//! The writer's decisions, plain data with no I/O: existing objects × desired assignments ×
//! host reports → the one write each object needs next ([`plan_key`]), and the whole plan
//! ([`plan`]) for tests and start-up.

use super::DesiredAssignments;
use super::record::RecordIndex;
use crate::actors::mic::assigner::HostReport;
use crate::actors::mic::host::{HostId, IdentityId};
use crate::actors::mic::matcher::{Assignment, Target};
use crate::crd::{ASSIGNED_IDENTITY_FINALIZER, AssignedState, AzureAssignedIdentity, IdentityType};
use crate::object_key::ObjectKey;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};

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
    /// Set the status and annotations only.
    SetStatus {
        /// The object.
        key: ObjectKey,
        /// The new status.
        status: AssignedState,
        /// The identity is on the host without MIC's write.
        external: bool,
        /// The host to record on the object (`None`: left as it is).
        host: Option<HostId>,
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

fn identity_id_of(aai: &AzureAssignedIdentity) -> Option<(IdentityType, IdentityId)> {
    let i = aai.spec.azure_identity_ref.as_ref()?;
    Some((i.spec.type_, IdentityId::new(&i.spec.resource_id)))
}

pub(super) fn status_of(aai: &AzureAssignedIdentity) -> AssignedState {
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

/// True when the object at an assignment's name records another pod: the original's names can
/// read the same for two pods (`a-b` in `c`, `a` in `b-c`), and an object is never taken from
/// the pod it records; the assignment moves to a name of its own instead.
pub(super) fn records_other_pod(aai: &AzureAssignedIdentity, a: &Assignment) -> bool {
    !aai.spec.pod.is_empty()
        && (aai.spec.pod != a.pod.name || aai.spec.pod_namespace != a.pod.namespace)
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

/// True when the object's host annotation names `host`: compared as MIC writes it (no parse
/// for the objects MIC wrote), else parsed.
fn records_host(e: &AzureAssignedIdentity, host: &HostId) -> bool {
    match e.identity_host() {
        Some(s) if host.is_written_as(s) => {
            debug_assert_eq!(HostId::from_resource_id(s).as_ref(), Some(host));
            true
        }
        s => s.and_then(HostId::from_resource_id).as_ref() == Some(host),
    }
}

/// True once the host's assigner has read it (so its report says which identities are on it):
/// a retired assigner's last report knows nothing of the host.
pub(super) fn host_read(r: &HostReport) -> bool {
    r.synced && r.seq != u64::MAX
}

/// The identities whose wanted objects a new report of their host may plan differently from
/// the old one (what [`plan_found`] reads of a report: whether the host was read or failed,
/// and which identities are on it and whose they are); `None` when that is all of them.
#[must_use]
pub(super) fn report_changes(old: &HostReport, new: &HostReport) -> Option<BTreeSet<IdentityId>> {
    if host_read(old) != host_read(new) || old.failure.is_some() != new.failure.is_some() {
        return None;
    }
    Some(
        old.assigned
            .symmetric_difference(&new.assigned)
            .chain(old.external.symmetric_difference(&new.external))
            .cloned()
            .collect(),
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
    let mut records = RecordIndex::default();
    records.rebuild(existing);
    desired
        .assignments
        .keys()
        .chain(
            existing
                .keys()
                .filter(|k| !desired.assignments.contains_key(*k)),
        )
        .filter(|k| !skip.contains(*k))
        .filter_map(|k| plan_key(k, existing, desired, hosts, &records))
        .take(limit)
        .collect()
}

/// The write one object needs now, if any: what [`plan`] decides for `key` alone. The writer
/// calls it for the objects something changed for, so a large cluster costs nothing per pass;
/// `records` indexes the write-ahead records among `existing`.
///
/// An object of a user-assigned identity is written (created, or its spec replaced) once its
/// host has been read, so it says from the start whether the identity was already there by
/// someone else's hand (marked external, never MIC's to remove) or is MIC's to add (unmarked:
/// the write-ahead record the host's PATCH waits for). While the host cannot be read it is
/// written at once but marked (not known to be MIC's: no record, nothing adopted from it), and
/// unmarked once a read shows the identity absent.
#[must_use]
pub fn plan_key(
    key: &ObjectKey,
    existing: &BTreeMap<ObjectKey, AzureAssignedIdentity>,
    desired: &DesiredAssignments,
    hosts: &BTreeMap<HostId, HostReport>,
    records: &RecordIndex,
) -> Option<WriteOp> {
    plan_found(
        key,
        desired.assignments.get(key),
        existing.get(key),
        desired,
        hosts,
        records,
    )
}

/// [`plan_key`] with the object's assignment and stored copy already looked up (the writer has
/// them at hand: two fewer lookups among 100 000 keys per object planned).
pub(super) fn plan_found(
    key: &ObjectKey,
    wanted: Option<&Assignment>,
    stored: Option<&AzureAssignedIdentity>,
    desired: &DesiredAssignments,
    hosts: &BTreeMap<HostId, HostReport>,
    records: &RecordIndex,
) -> Option<WriteOp> {
    let Some(a) = wanted else {
        return plan_release(key, stored?, desired, hosts, records);
    };
    // The host's report, looked up once (every object of a host asks for the same one).
    let (read, host, confirmed, external, failed) = match &a.target {
        Target::ServicePrincipal | Target::Federated => (true, None, true, false, false),
        Target::Msi { host, id } => {
            let report = hosts.get(host);
            let read = report.is_some_and(host_read);
            (
                read,
                Some(host),
                report.is_some_and(|r| r.assigned.contains(id)),
                // Until its host is read, an identity is not known to be MIC's to add: the
                // object is marked, so it is no record (a successor adopts nothing of it) and
                // no PATCH relies on it; the mark goes once the read shows the identity absent.
                !read || report.is_some_and(|r| r.external.contains(id)),
                report.is_some_and(|r| r.failure.is_some()),
            )
        }
    };
    // An object waits for its host's first read (so it is written once, as what it is), unless
    // that read failed: then it is written at once, marked, for users to see while ARM fails.
    let may_write = read || failed;
    let first = if confirmed {
        AssignedState::Assigned
    } else {
        AssignedState::Created
    };
    match stored {
        // Being deleted (by someone else): let it go; it is recreated afterwards.
        Some(e) if e.metadata.deletion_timestamp.is_some() => e
            .finalizers()
            .iter()
            .any(|f| f == ASSIGNED_IDENTITY_FINALIZER)
            .then(|| WriteOp::Delete { key: key.clone() }),
        None => may_write.then(|| WriteOp::Create {
            assignment: Box::new(a.clone()),
            status: first,
            external,
        }),
        Some(e) if spec_differs(e, a) => may_write.then(|| WriteOp::UpdateSpec {
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
            // MIC learns it again from ARM and the objects): an identity MIC must add is
            // unmarked first, so the object is the record its PATCH waits for.
            let mark_differs = read && e.identity_is_external() != external;
            // Objects the original wrote (or an older MIC) get the host recorded.
            let host_differs = host.is_some_and(|h| !records_host(e, h));
            (now != want || mark_differs || host_differs).then(|| WriteOp::SetStatus {
                key: key.clone(),
                status: want,
                external,
                host: host.cloned(),
            })
        }
    }
}

/// An object no longer desired: `Unassigned` first, then deleted once its host no longer
/// holds the identity for it, and never while it records an identity MIC holds (or is about to
/// add) on its host that no wanted object records yet (the next pod's object takes over
/// first; released objects never count on each other), so a successor always finds one.
fn plan_release(
    key: &ObjectKey,
    e: &AzureAssignedIdentity,
    desired: &DesiredAssignments,
    hosts: &BTreeMap<HostId, HostReport>,
    records: &RecordIndex,
) -> Option<WriteOp> {
    if e.metadata.deletion_timestamp.is_none() && status_of(e) != AssignedState::Unassigned {
        return Some(WriteOp::SetStatus {
            key: key.clone(),
            status: AssignedState::Unassigned,
            external: e.identity_is_external(),
            host: None,
        });
    }
    let still_held = match identity_id_of(e) {
        Some((IdentityType::UserAssignedMsi, id)) => {
            let host = e
                .identity_host()
                .and_then(HostId::from_resource_id)
                .or_else(|| desired.nodes.get(&e.spec.node_name).cloned());
            match host {
                // The node is gone and no host is recorded; the host's assigner (if any)
                // still releases the identity.
                None => false,
                Some(host) => match hosts.get(&host) {
                    None => desired.nodes.contains_key(&e.spec.node_name),
                    Some(r) => {
                        r.seq < desired.seq
                            || !r.synced
                            || r.releasing.contains(&id)
                            || (super::record::is_record(e)
                                && r.held.contains(&id)
                                && !records.keys(&host, &id).is_some_and(|keys| {
                                    keys.iter()
                                        .any(|k| k != key && desired.assignments.contains_key(k))
                                }))
                    }
                },
            }
        }
        _ => false,
    };
    (!still_held).then(|| WriteOp::Delete { key: key.clone() })
}
