//! The AzureAssignedIdentity objects and patches the writer sends, built as the original
//! builds them (name, label, finalizer, embedded identity and binding, status in the create).

use crate::actors::mic::host::HostId;
use crate::actors::mic::matcher::{Assignment, Target};
use crate::crd::{
    ASSIGNED_IDENTITY_FINALIZER, AssignedState, AzureAssignedIdentity, AzureAssignedIdentitySpec,
    AzureAssignedIdentityStatus, AzureIdentity, AzureIdentityBinding, IDENTITY_HOST_ANNOTATION,
    IDENTITY_OWNER_ANNOTATION, IDENTITY_OWNER_EXTERNAL, NODENAME_LABEL, embeddable_meta,
};
use std::collections::BTreeMap;

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
    let mut annotations = BTreeMap::new();
    if external {
        annotations.insert(
            IDENTITY_OWNER_ANNOTATION.to_string(),
            IDENTITY_OWNER_EXTERNAL.to_string(),
        );
    }
    if let Target::Msi { host, .. } = &a.target {
        annotations.insert(IDENTITY_HOST_ANNOTATION.to_string(), host.to_string());
    }
    if !annotations.is_empty() {
        obj.metadata.annotations = Some(annotations);
    }
    obj.status = Some(AzureAssignedIdentityStatus {
        available_replicas: 0,
        status,
    });
    obj
}

/// The merge patch that sets an AzureAssignedIdentity's status and ownership mark, and the host
/// it records when given (left as it is otherwise).
pub(super) fn status_patch(
    status: &AssignedState,
    external: bool,
    host: Option<&HostId>,
) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"annotations": annotations_patch(external, host)},
        "status": {"status": status.as_str(), "availableReplicas": 0},
    })
}

/// The annotations of a merge patch: the ownership mark set or removed, the host set when given.
pub(super) fn annotations_patch(external: bool, host: Option<&HostId>) -> serde_json::Value {
    let mark = external.then_some(IDENTITY_OWNER_EXTERNAL);
    let mut a = serde_json::json!({IDENTITY_OWNER_ANNOTATION: mark});
    if let Some(h) = host {
        a[IDENTITY_HOST_ANNOTATION] = serde_json::Value::String(h.to_string());
    }
    a
}
