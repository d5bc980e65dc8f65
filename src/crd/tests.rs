//! Round trips with the seed's YAML examples and with objects as the Go original writes them.

use super::*;
use serde_json::{Value, json};

/// The AzureIdentity and AzureIdentityBinding examples from the seed's best-practices guide.
const SEED_IDENTITY_1: &str = r"
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata:
  name: az-id-1
spec:
  type: 0
  resourceID: <ResourceID of az-id-1>
  clientID: <ClientID of az-id-1>
";

const SEED_BINDING_1: &str = r"
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
metadata:
  name: az-id-1-binding
spec:
  azureIdentity: az-id-1
  selector: az-id-combined
";

/// Parses YAML into `T`, serializes it back, and checks the JSON equals the input's JSON.
fn round_trip<T: serde::de::DeserializeOwned + Serialize>(yaml: &str) -> T {
    let input: Value = serde_yaml::from_str(yaml).unwrap();
    let typed: T = serde_json::from_value(input.clone()).unwrap();
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(back, input, "round trip changed the object");
    typed
}

#[test]
fn seed_identity_example_round_trips() {
    let id: AzureIdentity = round_trip(SEED_IDENTITY_1);
    assert_eq!(id.spec.type_, IdentityType::UserAssignedMsi);
    assert_eq!(id.spec.client_id, "<ClientID of az-id-1>");
    assert_eq!(id.spec.resource_id, "<ResourceID of az-id-1>");
}

#[test]
fn seed_binding_example_round_trips() {
    let b: AzureIdentityBinding = round_trip(SEED_BINDING_1);
    assert_eq!(b.spec.azure_identity, "az-id-1");
    assert_eq!(b.spec.selector, "az-id-combined");
}

#[test]
fn every_seed_example_of_our_kinds_parses() {
    // The seed guide's identities and bindings, kept as a fixture the kubectl tests apply too.
    let docs = include_str!("../../tests/fixtures/seed/identities.yaml");
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(docs) {
        let value = Value::deserialize(doc).unwrap();
        let yaml = serde_yaml::to_string(&value).unwrap();
        match value["kind"].as_str() {
            Some("AzureIdentity") => {
                let _: AzureIdentity = round_trip(&yaml);
            }
            Some("AzureIdentityBinding") => {
                let _: AzureIdentityBinding = round_trip(&yaml);
            }
            other => panic!("unexpected kind {other:?}"),
        }
        kinds.push(value["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(
        kinds,
        [
            "AzureIdentity",
            "AzureIdentity",
            "AzureIdentityBinding",
            "AzureIdentityBinding"
        ]
    );
}

/// An AzureAssignedIdentity as the Go MIC (v1.8) writes it: embedded refs without
/// apiVersion/kind, empty `metadata` objects inside spec and status, `replicas: null`, and the
/// identity type 0 omitted by Go's `omitempty`.
fn original_assigned_identity() -> Value {
    json!({
        "apiVersion": "aadpodidentity.k8s.io/v1",
        "kind": "AzureAssignedIdentity",
        "metadata": {
            "name": "demo-default-az-id-1",
            "namespace": "default",
            "labels": {"nodename": "aks-nodepool1-12345678-vmss000000"},
            "finalizers": ["azureassignedidentity.finalizers.aadpodidentity.k8s.io"],
            "resourceVersion": "1234",
            "uid": "5f3b1c9e-2a43-4e7b-9a0f-0d1c2b3a4f5e"
        },
        "spec": {
            "metadata": {"creationTimestamp": null},
            "azureIdentityRef": {
                "metadata": {"name": "az-id-1", "namespace": "default", "resourceVersion": "100"},
                "spec": {
                    "metadata": {"creationTimestamp": null},
                    "resourceID": "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/az-id-1",
                    "clientID": "00000000-0000-0000-0000-000000000001",
                    "clientPassword": {},
                    "replicas": null
                },
                "status": {"metadata": {"creationTimestamp": null}, "availableReplicas": 0}
            },
            "azureBindingRef": {
                "metadata": {"name": "az-id-1-binding", "namespace": "default"},
                "spec": {"metadata": {"creationTimestamp": null}, "azureIdentity": "az-id-1", "selector": "az-id-combined"},
                "status": {"metadata": {"creationTimestamp": null}, "availableReplicas": 0}
            },
            "pod": "demo",
            "podNamespace": "default",
            "nodename": "aks-nodepool1-12345678-vmss000000",
            "replicas": null
        },
        "status": {"metadata": {"creationTimestamp": null}, "availableReplicas": 0, "status": "Assigned"}
    })
}

#[test]
fn reads_an_assigned_identity_as_the_original_writes_it() {
    let aai: AzureAssignedIdentity = serde_json::from_value(original_assigned_identity()).unwrap();
    assert_eq!(aai.spec.pod, "demo");
    assert_eq!(aai.spec.node_name, "aks-nodepool1-12345678-vmss000000");
    let id = aai.spec.azure_identity_ref.as_ref().unwrap();
    assert_eq!(id.spec.type_, IdentityType::UserAssignedMsi);
    assert_eq!(id.spec.client_id, "00000000-0000-0000-0000-000000000001");
    assert_eq!(
        aai.spec.azure_binding_ref.as_ref().unwrap().spec.selector,
        "az-id-combined"
    );
    assert_eq!(aai.status.as_ref().unwrap().status, AssignedState::Assigned);
}

#[test]
fn what_we_write_is_what_the_original_reads() {
    let aai: AzureAssignedIdentity = serde_json::from_value(original_assigned_identity()).unwrap();
    let written = serde_json::to_value(&aai).unwrap();
    // The fields the Go types read, with their exact names and JSON types.
    assert_eq!(
        written["spec"]["nodename"],
        "aks-nodepool1-12345678-vmss000000"
    );
    assert_eq!(written["spec"]["podNamespace"], "default");
    assert_eq!(written["spec"]["azureIdentityRef"]["spec"]["type"], 0);
    assert_eq!(
        written["spec"]["azureIdentityRef"]["spec"]["clientID"],
        "00000000-0000-0000-0000-000000000001"
    );
    assert!(written["spec"]["azureIdentityRef"]["spec"]["resourceID"].is_string());
    assert_eq!(
        written["spec"]["azureBindingRef"]["spec"]["selector"],
        "az-id-combined"
    );
    assert_eq!(written["status"]["status"], "Assigned");
    assert_eq!(written["status"]["availableReplicas"], 0);
    assert_eq!(
        written["metadata"]["finalizers"][0],
        ASSIGNED_IDENTITY_FINALIZER
    );
    // Reading our output again gives the same object.
    let again: AzureAssignedIdentity = serde_json::from_value(written).unwrap();
    assert_eq!(again, aai);
}

#[test]
fn identity_type_is_an_integer_on_the_wire_and_unknown_values_survive() {
    for (n, t) in [
        (0, IdentityType::UserAssignedMsi),
        (1, IdentityType::ServicePrincipal),
        (2, IdentityType::ServicePrincipalCertificate),
        (7, IdentityType::Unknown(7)),
    ] {
        let spec: AzureIdentitySpec = serde_json::from_value(json!({ "type": n })).unwrap();
        assert_eq!(spec.type_, t);
        assert_eq!(serde_json::to_value(&spec).unwrap()["type"], n);
    }
    let quoted: AzureIdentitySpec = serde_json::from_value(json!({"type": "1"})).unwrap();
    assert_eq!(quoted.type_, IdentityType::ServicePrincipal);
    let err = serde_json::from_value::<AzureIdentitySpec>(json!({"type": "secret"})).unwrap_err();
    assert!(
        err.to_string().contains("spec.type must be an integer"),
        "{err}"
    );
}

#[test]
fn service_principal_fields_keep_their_casing() {
    let input = json!({
        "type": 1,
        "clientID": "c",
        "tenantID": "t",
        "auxiliaryTenantIDs": ["a1", "a2"],
        "clientPassword": {"name": "sp-secret", "namespace": "default"},
        "adEndpoint": "https://login.example/",
        "adResourceID": "r",
        "replicas": 2
    });
    let spec: AzureIdentitySpec = serde_json::from_value(input.clone()).unwrap();
    assert_eq!(spec.auxiliary_tenant_ids, vec!["a1", "a2"]);
    assert_eq!(spec.client_password.name, "sp-secret");
    assert_eq!(serde_json::to_value(&spec).unwrap(), input);
}

#[test]
fn unknown_fields_are_tolerated() {
    let b: AzureIdentityBindingSpec = serde_json::from_value(json!({
        "azureIdentity": "x", "selector": "y", "weight": 3, "futureField": {"a": 1},
        "metadata": {"creationTimestamp": null}
    }))
    .unwrap();
    assert_eq!(b.weight, 3);
}

#[test]
fn assigned_state_keeps_values_it_does_not_know() {
    let s: AzureAssignedIdentityStatus =
        serde_json::from_value(json!({"status": "Migrating", "availableReplicas": 0})).unwrap();
    assert_eq!(s.status, AssignedState::Other("Migrating".into()));
    assert_eq!(serde_json::to_value(&s).unwrap()["status"], "Migrating");
    let empty: AzureAssignedIdentityStatus = serde_json::from_value(json!({})).unwrap();
    assert_eq!(empty.status, AssignedState::Unset);
    assert!(
        serde_json::to_value(&empty)
            .unwrap()
            .get("status")
            .is_none()
    );
}

#[test]
fn exception_matches_when_any_one_label_matches_case_insensitively() {
    let ex = AzurePodIdentityException::new(
        "mic-exception",
        AzurePodIdentityExceptionSpec {
            pod_labels: [
                ("app".to_string(), "mic".to_string()),
                ("component".to_string(), "mic".to_string()),
            ]
            .into(),
        },
    );
    let labels =
        |k: &str, v: &str| -> BTreeMap<String, String> { [(k.to_string(), v.to_string())].into() };
    assert!(ex.matches_labels(&labels("app", "mic")));
    assert!(ex.matches_labels(&labels("component", "MIC")));
    assert!(!ex.matches_labels(&labels("app", "nmi")));
    assert!(!ex.matches_labels(&labels("other", "mic")));
    let empty = AzurePodIdentityException::new("e", AzurePodIdentityExceptionSpec::default());
    assert!(!empty.matches_labels(&labels("app", "mic")));
}

#[test]
fn namespaced_annotation_is_read_case_insensitively() {
    let mut id = AzureIdentity::new("x", AzureIdentitySpec::default());
    assert!(!id.has_namespaced_annotation());
    id.metadata.annotations =
        Some([(BEHAVIOR_ANNOTATION.to_string(), "Namespaced".to_string())].into());
    assert!(id.has_namespaced_annotation());
}

#[test]
fn federation_is_an_annotation_that_survives_a_round_trip_through_the_originals_shape() {
    let yaml = r"
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata:
  name: fed
  annotations:
    aadpodidentity.k8s.io/federated: 'True'
spec:
  type: 0
  resourceID: /subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/fed
  clientID: 00000000-0000-0000-0000-000000000001
  tenantID: 00000000-0000-0000-0000-00000000000b
";
    let id: AzureIdentity = serde_yaml::from_str(yaml).unwrap();
    assert!(id.is_federated());
    // The spec is the original's type 0: a rolled-back controller assigns it as before.
    let v = serde_json::to_value(&id).unwrap();
    assert_eq!(v["spec"]["type"], 0);
    let mut plain = id.clone();
    plain.metadata.annotations = None;
    assert!(!plain.is_federated());
    let mut off = id.clone();
    off.metadata.annotations =
        Some([(FEDERATED_ANNOTATION.to_string(), "false".to_string())].into());
    assert!(!off.is_federated());
    let mut unknown = id;
    unknown.spec.type_ = IdentityType::Unknown(7);
    assert!(
        !unknown.is_federated(),
        "an unknown type is refused, not federated"
    );
}

#[test]
fn assigned_identity_names_follow_the_original() {
    assert_eq!(
        assigned_identity_name("demo", "default", "az-id-1"),
        "demo-default-az-id-1"
    );
}

/// A pod and identity name of up to 253 characters each (valid DNS subdomains), with a
/// namespace of up to 63: the original's `<pod>-<ns>-<identity>` can reach 571 characters.
fn subdomain(max: usize) -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", 1..8).prop_map(move |labels| {
        let mut s = labels.join(".");
        s.truncate(max);
        s.trim_end_matches(['-', '.']).to_string()
    })
}

proptest::proptest! {
    /// Every name is one the API server accepts (the Kubernetes simulator's DNS-subdomain rule),
    /// the original's when that fits, and distinct triples get distinct names.
    #[test]
    fn assigned_identity_names_are_always_valid_object_names(
        pod in subdomain(253),
        ns in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
        identity in subdomain(253),
        other_pod in subdomain(253),
    ) {
        let name = assigned_identity_name(&pod, &ns, &identity);
        proptest::prop_assert!(
            aad_pod_identity_sim::kube::meta::is_dns_subdomain(&name),
            "{} characters: {name}", name.len()
        );
        let original = format!("{pod}-{ns}-{identity}");
        if original.len() <= MAX_NAME_LEN {
            proptest::prop_assert_eq!(&name, &original);
        }
        if other_pod != pod {
            proptest::prop_assert_ne!(name, assigned_identity_name(&other_pod, &ns, &identity));
        }
    }
}

#[test]
fn a_name_too_long_for_the_api_server_is_cut_and_hashed_stably() {
    let pod = "p".repeat(253);
    let name = assigned_identity_name(&pod, "default", "az-id-1");
    assert_eq!(name.len(), MAX_NAME_LEN);
    assert_eq!(name, assigned_identity_name(&pod, "default", "az-id-1"));
    assert!(name.starts_with("ppp"));
    // A dot at the cut would end a label with '.', which the API server refuses.
    let pod = format!("{}.{}", "a".repeat(235), "b".repeat(17));
    let name = assigned_identity_name(&pod, "default", "az-id-1");
    assert!(
        aad_pod_identity_sim::kube::meta::is_dns_subdomain(&name),
        "{name}"
    );
}

#[test]
fn generated_crds_carry_the_approval_annotation_and_the_originals_subresources() {
    let crds = all_crds();
    assert_eq!(crds.len(), 4);
    for f in &crds {
        let v = &f.crd.spec.versions[0];
        assert_eq!(v.name, "v1");
        assert!(v.served && v.storage);
        assert_eq!(
            f.crd.metadata.annotations.as_ref().unwrap()[API_APPROVED_ANNOTATION],
            "unapproved",
            "{}",
            f.file_name
        );
        // No status subresource anywhere: the original's MIC writes status on the main resource.
        assert!(
            v.subresources
                .as_ref()
                .is_none_or(|s| s.status.is_none() && s.scale.is_none()),
            "{}",
            f.file_name
        );
        assert_eq!(f.crd.spec.scope, "Namespaced");
        let schema = serde_json::to_value(v.schema.as_ref().unwrap()).unwrap();
        assert_eq!(
            schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["metadata"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
    }
    // `subresources: {}` on identities and bindings, none on the other two, as the original.
    let declared: Vec<bool> = crds
        .iter()
        .map(|f| f.crd.spec.versions[0].subresources.is_some())
        .collect();
    assert_eq!(declared, [true, true, false, false]);
    let id_cols: Vec<_> = crds[0].crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        id_cols,
        [
            ("Type", ".spec.type"),
            ("ClientID", ".spec.clientID"),
            ("Age", ".metadata.creationTimestamp")
        ]
    );
    let b_cols: Vec<_> = crds[1].crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(b_cols, ["AzureIdentity", "Selector", "Age"]);
    assert_eq!(
        crds[2].file_name,
        "aadpodidentity.k8s.io_azureassignedidentities.yaml"
    );
}

#[test]
fn nulls_the_go_types_write_for_empty_slices_and_maps_are_read() {
    let spec: AzureIdentitySpec =
        serde_json::from_value(json!({"type": 1, "auxiliaryTenantIDs": null})).unwrap();
    assert!(spec.auxiliary_tenant_ids.is_empty());
    let e: AzurePodIdentityExceptionSpec =
        serde_json::from_value(json!({"podLabels": null})).unwrap();
    assert!(e.pod_labels.is_empty());
}

#[test]
fn names_that_read_the_same_across_namespaces_get_distinct_unique_names() {
    // The original's form cannot tell these apart.
    assert_eq!(
        assigned_identity_name("a-b", "c", "id"),
        assigned_identity_name("a", "b-c", "id")
    );
    let one = unique_assigned_identity_name("a-b", "c", "default", "id");
    let two = unique_assigned_identity_name("a", "b-c", "default", "id");
    assert_ne!(one, two);
    // Nor two identities of one name in two namespaces.
    assert_ne!(
        unique_assigned_identity_name("p", "n", "x", "id"),
        unique_assigned_identity_name("p", "n", "y", "id")
    );
    assert!(one.starts_with("a-b-c-id-"), "{one}");
    assert_eq!(
        one,
        unique_assigned_identity_name("a-b", "c", "default", "id")
    );
    let long = unique_assigned_identity_name(&"p".repeat(253), "default", "default", "id");
    assert_eq!(long.len(), MAX_NAME_LEN);
    assert!(aad_pod_identity_sim::kube::meta::is_dns_subdomain(&long));
}
