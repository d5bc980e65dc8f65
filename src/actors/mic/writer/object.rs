//! The AzureAssignedIdentity objects and patches the writer sends, built as the original
//! builds them (name, label, finalizer, embedded identity and binding, status in the create).

use crate::actors::mic::matcher::Assignment;
use crate::crd::{
    ASSIGNED_IDENTITY_FINALIZER, AssignedState, AzureAssignedIdentity, AzureAssignedIdentitySpec,
    AzureAssignedIdentityStatus, AzureIdentity, AzureIdentityBinding, IDENTITY_OWNER_ANNOTATION,
    IDENTITY_OWNER_EXTERNAL, NODENAME_LABEL, embeddable_meta,
};

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

/// The merge patch that sets an AzureAssignedIdentity's status and ownership mark.
pub(super) fn status_patch(status: &AssignedState, external: bool) -> serde_json::Value {
    let mark = external.then_some(IDENTITY_OWNER_EXTERNAL);
    serde_json::json!({
        "metadata": {"annotations": {IDENTITY_OWNER_ANNOTATION: mark}},
        "status": {"status": status.as_str(), "availableReplicas": 0},
    })
}
