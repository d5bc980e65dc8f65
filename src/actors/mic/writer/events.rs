//! The Warning Events the writer's state calls for (ARM refusals, rejected matches), on pods
//! and bindings; the writer sends each to the [`crate::actors::mic::recorder`] once for as
//! long as it holds.

use super::DesiredAssignments;
use crate::actors::mic::assigner::HostReport;
use crate::actors::mic::host::HostId;
use crate::actors::mic::matcher::{Assignment, RejectReason, Target};
use crate::actors::mic::recorder::{REASON_APPLY_ERROR, UserEvent};
use crate::crd::AzureAssignedIdentity;
use crate::object_key::ObjectKey;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The Warning Events for an AzureAssignedIdentity write that started failing: on the pod it
/// is for and once on its binding, as the original reports a binding it could not apply. An
/// object no pod wants any more (being released) names its pod from its spec.
#[must_use]
pub fn write_failure_events(
    key: &ObjectKey,
    desired: Option<&Assignment>,
    existing: Option<&AzureAssignedIdentity>,
    error: &super::Error,
    retry_in: Duration,
) -> Vec<UserEvent> {
    let retry = format!(
        "retrying in {:.1}s, then with backoff",
        retry_in.as_secs_f64()
    );
    match (desired, existing) {
        (Some(a), _) => {
            let binding = ObjectKey::of(a.binding.as_ref());
            vec![
                UserEvent::on_pod(
                    &a.pod,
                    &a.pod_uid,
                    "Warning",
                    REASON_APPLY_ERROR,
                    format!(
                        "Applying binding {binding} for pod {} failed: writing AzureAssignedIdentity {key}: {error}; {retry}",
                        a.pod
                    ),
                ),
                UserEvent::on_binding(
                    binding,
                    a.binding.metadata.uid.as_deref().unwrap_or_default(),
                    "Warning",
                    REASON_APPLY_ERROR,
                    format!(
                        "Writing AzureAssignedIdentity {key} for pod {} failed: {}; {retry}",
                        a.pod,
                        error.metric_label()
                    ),
                ),
            ]
        }
        (None, Some(e)) if !e.spec.pod.is_empty() => vec![UserEvent::on_pod(
            &ObjectKey::new(&e.spec.pod_namespace, &e.spec.pod),
            "",
            "Warning",
            REASON_APPLY_ERROR,
            format!("Releasing AzureAssignedIdentity {key} failed: {error}; {retry}"),
        )],
        _ => Vec::new(),
    }
}

/// Warning Events the current state calls for: each ARM refusal on the pod and once on its
/// binding, each rejected match on the pod and (for namespace and missing-identity problems)
/// once on the binding. The writer writes each once for as long as it holds.
#[must_use]
pub fn error_events(
    desired: &DesiredAssignments,
    hosts: &BTreeMap<HostId, HostReport>,
) -> BTreeSet<UserEvent> {
    error_events_among(desired, hosts, desired.assignments.values())
}

/// [`error_events`] with the refusals looked for among `candidates` only: every desired
/// assignment whose identity a host refused must be among them (the writer passes those of
/// the refusing hosts' identities, so a host report does not walk every assignment).
#[must_use]
pub fn error_events_among<'a>(
    desired: &DesiredAssignments,
    hosts: &BTreeMap<HostId, HostReport>,
    candidates: impl IntoIterator<Item = &'a Assignment>,
) -> BTreeSet<UserEvent> {
    let mut out = BTreeSet::new();
    for a in candidates {
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
