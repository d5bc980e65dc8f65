//! The writer's API calls: one [`WriteOp`] executed against the API server (with the
//! original's metrics), status written as the original's CRDs need it.

use super::object::{annotations_patch, object_for, status_patch};
use super::plan::WriteOp;
use crate::actors::mic::fence::NotLeading;
use crate::actors::mic::metrics::MicMetrics;
use crate::crd::{ASSIGNED_IDENTITY_FINALIZER, AssignedState, AzureAssignedIdentity};
use crate::metrics::DropTimer;
use crate::object_key::ObjectKey;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tracing::debug;

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
    /// The name is another pod's: its object exists, recording that pod (created meanwhile,
    /// or left by another controller). Taking it over would steal that pod's assignment.
    #[error("AzureAssignedIdentity {key} exists for another pod, {owner}")]
    NameTaken {
        /// The object.
        key: ObjectKey,
        /// `namespace/name` of the pod it records.
        owner: String,
    },
}

impl Error {
    /// True when the write was not sent because this replica does not lead (any more): no
    /// failure of the write, and nothing to retry ([`crate::actors::mic::fence`]).
    #[must_use]
    pub fn fenced(&self) -> bool {
        matches!(self, Self::Kube { source, .. } if NotLeading::is(source))
    }

    /// The original's `operation_type` of the call that failed.
    #[must_use]
    pub fn operation_type(&self) -> &'static str {
        match self {
            Self::Kube { op, .. } => original_operation(op),
            Self::NameTaken { .. } => original_operation("create"),
        }
    }

    /// What the API server said, for counting failures by kind (a bounded set).
    #[must_use]
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube {
                source: kube::Error::Api(s),
                ..
            } => match s.code {
                409 => "conflict",
                422 => "invalid",
                401 | 403 => "forbidden",
                404 => "not_found",
                429 => "throttled",
                500.. => "server_error",
                _ => "refused",
            },
            Self::Kube { .. } => "transport",
            Self::NameTaken { .. } => "name_taken",
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

/// Executes one write; the object afterwards (`None` once deleted).
///
/// Status is written the way the original writes it: set in the create, changed on the main
/// resource later (the original's CRDs have no status subresource, and Helm never upgrades
/// CRDs, so clusters upgraded from the original keep them). One write per step.
pub(super) async fn execute(
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
            let host = super::host_of(&assignment).cloned();
            let obj = object_for(&assignment, status.clone(), external);
            debug!(key = %key, "creating AzureAssignedIdentity");
            let created = match api.create(&PostParams::default(), &obj).await {
                Ok(o) => o,
                // Created by a previous leader an instant ago: take it over, unless it is
                // another pod's (the original's names can read the same for two pods).
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let found = api.get(&key.name).await.map_err(kerr("create", &key))?;
                    if super::plan::records_other_pod(&found, &assignment) {
                        return Err(Error::NameTaken {
                            owner: format!("{}/{}", found.spec.pod_namespace, found.spec.pod),
                            key,
                        });
                    }
                    api.patch(
                        &key.name,
                        &PatchParams::default(),
                        &Patch::Merge(status_patch(&status, external, host.as_ref())),
                    )
                    .await
                    .map_err(kerr("status update", &key))?
                }
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
            let patch = serde_json::json!({
                "metadata": {"labels": obj.metadata.labels, "annotations": annotations_patch(external, super::host_of(&assignment))},
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
            status,
            external,
            host,
            ..
        } => {
            match api
                .patch(
                    &key.name,
                    &PatchParams::default(),
                    &Patch::Merge(status_patch(&status, external, host.as_ref())),
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

/// Executes one write and counts it in the original's metrics (duration and count by kind,
/// errors by the original's `operation_type`); the operation and the object afterwards.
pub(super) async fn execute_counted(
    client: Client,
    op: WriteOp,
    existing: Option<AzureAssignedIdentity>,
    metrics: MicMetrics,
) -> Result<(WriteOp, Option<AzureAssignedIdentity>), Error> {
    let m = &metrics.original;
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
        // Not a failed call: the writer moves the assignment to a name of its own.
        Err(Error::NameTaken { .. }) => {}
        // Not sent at all (counted by the fence).
        Err(e) if e.fenced() => {}
        Err(e) => {
            drop(timer);
            m.kubernetes_api_operations_errors_count
                .with_label_values(&[e.operation_type()])
                .inc();
            metrics
                .write_failures
                .with_label_values(&[e.operation_type(), e.metric_label()])
                .inc();
        }
    }
    r.map(|o| (op, o))
}
