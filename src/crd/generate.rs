//! The CustomResourceDefinitions, generated from the types' metadata plus hand-written
//! structural schemas.
//!
//! The schemas are written out rather than derived because compatibility needs what a
//! derive cannot say: `x-kubernetes-preserve-unknown-fields` exactly where the original's
//! objects carry free-form data (the `metadata` inside spec and status, and the embedded
//! AzureIdentity/AzureIdentityBinding in an AzureAssignedIdentity), `nullable` wherever the
//! original's Go types write `null`, and `type` as a plain integer.
//!
//! Everything an API server or an upgrade looks at is the original's (v1.8.17): the
//! `api-approved.kubernetes.io` annotation a `*.k8s.io` group needs to be admitted, and the
//! subresources: none on AzureAssignedIdentity and AzurePodIdentityException, `subresources: {}`
//! (no status subresource) on AzureIdentity and AzureIdentityBinding. Helm never upgrades
//! `crds/`, so a cluster upgraded from the original keeps the original's CRDs, and MIC writes
//! status on the main resource as the original does.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition,
};
use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::{
    AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException,
};

/// One generated manifest and the file name it is committed under in `chart/crds/`.
#[derive(Clone, Debug)]
pub struct CrdFile {
    /// File name, e.g. `aadpodidentity.k8s.io_azureidentities.yaml`.
    pub file_name: String,
    /// The CRD object.
    pub crd: CustomResourceDefinition,
}

fn free_object(description: &str) -> Value {
    json!({
        "type": "object",
        "description": description,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

fn replicas_status(extra: Value) -> Value {
    let mut props = json!({
        "metadata": free_object("Tolerated for compatibility: the original writes an empty object metadata here."),
        "availableReplicas": {"type": "integer", "format": "int32", "description": "Unused; always 0."}
    });
    if let (Some(p), Some(e)) = (props.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    json!({"type": "object", "properties": props})
}

fn root_schema(description: &str, spec: Value, status: Value) -> Value {
    json!({
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": string("APIVersion defines the versioned schema of this representation of an object."),
            "kind": string("Kind is a string value representing the REST resource this object represents."),
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status
        }
    })
}

fn identity_spec_schema() -> Value {
    json!({
        "type": "object",
        "description": "What the identity is and where its credentials are.",
        "properties": {
            "metadata": free_object("Tolerated for compatibility: the original writes an empty object metadata here."),
            "type": {"type": "integer", "description": "0 user-assigned managed identity, 1 service principal with secret, 2 service principal with certificate."},
            "resourceID": string("ARM resource id of a user-assigned managed identity."),
            "clientID": string("Client (application) id."),
            "clientPassword": {
                "type": "object",
                "description": "Secret holding a service principal's secret (key clientSecret) or certificate (keys certificate, password).",
                "properties": {"name": string("Secret name."), "namespace": string("Secret namespace.")},
                "x-kubernetes-map-type": "atomic"
            },
            "tenantID": string("Tenant of a service principal."),
            "auxiliaryTenantIDs": {"type": "array", "items": {"type": "string"}, "nullable": true, "description": "Further tenants for a service principal's token."},
            "adResourceID": string("Azure AD resource id (service principals)."),
            "adEndpoint": string("Azure AD authority; https://login.microsoftonline.com/ when empty."),
            "replicas": {"type": "integer", "format": "int32", "nullable": true, "description": "Unused."}
        }
    })
}

fn binding_spec_schema() -> Value {
    json!({
        "type": "object",
        "description": "Which identity pods with a matching aadpodidbinding label get.",
        "properties": {
            "metadata": free_object("Tolerated for compatibility: the original writes an empty object metadata here."),
            "azureIdentity": string("Name of the AzureIdentity."),
            "selector": string("Value of the pod label aadpodidbinding that this binding matches, exactly."),
            "weight": {"type": "integer", "description": "Unused."}
        }
    })
}

fn column(name: &str, type_: &str, path: &str) -> CustomResourceColumnDefinition {
    CustomResourceColumnDefinition {
        name: name.to_string(),
        type_: type_.to_string(),
        json_path: path.to_string(),
        ..CustomResourceColumnDefinition::default()
    }
}

/// The annotation a CRD in a protected group (`*.k8s.io`, `*.kubernetes.io`) must carry to be
/// admitted; the original's value says the group was never approved upstream.
pub const API_APPROVED_ANNOTATION: &str = "api-approved.kubernetes.io";

/// Which subresources a version declares, as the original's CRDs do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subresources {
    /// No `subresources` key at all (AzureAssignedIdentity, AzurePodIdentityException).
    Absent,
    /// `subresources: {}`: declared, but neither status nor scale (AzureIdentity, AzureIdentityBinding).
    Empty,
}

fn finish(
    mut crd: CustomResourceDefinition,
    schema: Value,
    columns: Vec<CustomResourceColumnDefinition>,
    subresources: Subresources,
) -> CrdFile {
    crd.metadata.annotations = Some(
        [(
            API_APPROVED_ANNOTATION.to_string(),
            "unapproved".to_string(),
        )]
        .into_iter()
        .collect(),
    );
    let version = &mut crd.spec.versions[0];
    version.schema = Some(
        serde_json::from_value(json!({ "openAPIV3Schema": schema }))
            .expect("hand-written schema is a valid JSONSchemaProps"),
    );
    version.subresources = match subresources {
        Subresources::Absent => None,
        Subresources::Empty => Some(Default::default()),
    };
    version.additional_printer_columns = if columns.is_empty() {
        None
    } else {
        Some(columns)
    };
    let file_name = format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural);
    CrdFile { file_name, crd }
}

/// Every CRD of the system, in a stable order.
#[must_use]
pub fn all_crds() -> Vec<CrdFile> {
    let age = || column("Age", "date", ".metadata.creationTimestamp");
    vec![
        finish(
            AzureIdentity::crd(),
            root_schema(
                "AzureIdentity is an Azure identity (user-assigned managed identity or service principal) that pods may use.",
                identity_spec_schema(),
                replicas_status(json!({})),
            ),
            vec![
                // The original declares the column as a string (the value is an integer).
                column("Type", "string", ".spec.type"),
                column("ClientID", "string", ".spec.clientID"),
                age(),
            ],
            Subresources::Empty,
        ),
        finish(
            AzureIdentityBinding::crd(),
            root_schema(
                "AzureIdentityBinding binds an AzureIdentity to pods by their aadpodidbinding label.",
                binding_spec_schema(),
                replicas_status(json!({})),
            ),
            vec![
                column("AzureIdentity", "string", ".spec.azureIdentity"),
                column("Selector", "string", ".spec.selector"),
                age(),
            ],
            Subresources::Empty,
        ),
        finish(
            AzureAssignedIdentity::crd(),
            root_schema(
                "AzureAssignedIdentity records that one pod's identity is assigned to its node's VM or scale set.",
                json!({
                    "type": "object",
                    "description": "The pod, its node, and the identity and binding that matched.",
                    "properties": {
                        "metadata": free_object("Tolerated for compatibility: the original writes an empty object metadata here."),
                        "azureIdentityRef": free_object("The whole AzureIdentity, embedded."),
                        "azureBindingRef": free_object("The whole AzureIdentityBinding, embedded."),
                        "pod": string("Pod name."),
                        "podNamespace": string("Pod namespace."),
                        "nodename": string("Node of the pod."),
                        "replicas": {"type": "integer", "format": "int32", "nullable": true, "description": "Unused."}
                    }
                }),
                replicas_status(json!({
                    "status": string("Created, Assigned or Unassigned.")
                })),
            ),
            Vec::new(),
            Subresources::Absent,
        ),
        finish(
            AzurePodIdentityException::crd(),
            root_schema(
                "AzurePodIdentityException lets pods with the given labels get the node's own token.",
                json!({
                    "type": "object",
                    "description": "Labels that mark excepted pods in this namespace.",
                    "properties": {
                        "metadata": free_object("Tolerated for compatibility: the original writes an empty object metadata here."),
                        "podLabels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Every label must match."}
                    }
                }),
                json!({
                    "type": "object",
                    "properties": {
                        "metadata": free_object("Tolerated for compatibility: the original writes an empty object metadata here."),
                        "status": string("Free text.")
                    }
                }),
            ),
            Vec::new(),
            Subresources::Absent,
        ),
    ]
}

/// The YAML committed for one CRD, with a header saying where it comes from.
#[must_use]
pub fn render_crd_yaml(file: &CrdFile) -> String {
    let body = serde_yaml::to_string(&file.crd).expect("a CRD always serializes");
    format!("# Generated by `aad-pod-identity crdgen`; do not edit.\n{body}")
}
