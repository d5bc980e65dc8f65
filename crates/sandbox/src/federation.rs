//! The `--federated` demonstration: an identity that is never put on any VM or scale set.
//!
//! A user-assigned identity of its own (`federated-identity`) whose federated identity
//! credential trusts the simulated cluster's service-account issuer for
//! `system:serviceaccount:federated:workload` (audience `api://AzureADTokenExchange`), and in
//! namespace `federated` the objects that use it both ways NMI serves federation:
//!
//! - `federated-app`: a Deployment whose pods carry `aadpodidbinding: federated`, bound to an
//!   AzureIdentity annotated `aadpodidentity.k8s.io/federated: "true"` (type 0, so the
//!   original's controllers would assign it after a rollback);
//! - `workload-identity-app`: a Deployment whose pods carry workload identity's own label
//!   `azure.workload.identity/use: "true"`, their service account naming the identity in
//!   `azure.workload.identity/client-id`.
//!
//! Both run as service account `workload`. The progress line counts the ARM writes that name
//! the identity (there are none) and the tokens Azure AD issued through federation.

use aad_pod_identity::actors::nmi::federated::DEFAULT_AUDIENCE;
use aad_pod_identity::crd::AzureAssignedIdentity;
use aad_pod_identity_sim::azure::{AzureSimHandle, FederatedCredential, IdentityRecord};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// Namespace of the demonstration.
pub const NAMESPACE: &str = "federated";
/// Service account its pods run as (the federated credential's subject).
pub const SERVICE_ACCOUNT: &str = "workload";
/// Name of the user-assigned identity in the simulated Azure.
pub const IDENTITY: &str = "federated-identity";

/// The federated identity and where it lives.
#[derive(Clone, Debug)]
pub struct Demo {
    /// The identity in the simulated Azure.
    pub identity: IdentityRecord,
    /// Its tenant.
    pub tenant_id: String,
    /// The issuer its federated credential trusts.
    pub issuer: String,
}

/// Registers the identity and its federated credential in the simulated Azure.
///
/// # Errors
/// When the simulator refuses the credential.
pub fn setup(
    azure: &AzureSimHandle,
    issuer: &str,
) -> Result<Demo, aad_pod_identity_sim::azure::Error> {
    let identity = azure.add_identity(IDENTITY);
    azure.add_federated_credential(
        &identity.resource_id,
        FederatedCredential {
            name: "sandbox-workload".into(),
            issuer: issuer.to_string(),
            subject: format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"),
            audiences: vec![DEFAULT_AUDIENCE.to_string()],
        },
    )?;
    Ok(Demo {
        identity,
        tenant_id: azure.tenant_id().to_string(),
        issuer: issuer.to_string(),
    })
}

impl Demo {
    /// NMI's flags for the demonstration, added to `nmi_args` (the `--nmi-arg`s) unless they
    /// are there already: `--enable-federation`, and this tenant as the default one.
    pub fn add_nmi_args(&self, nmi_args: &mut Vec<String>) {
        let given = |flag: &str| {
            nmi_args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        let mut add = Vec::new();
        if !given("--enable-federation") {
            add.push("--enable-federation".to_string());
        }
        if !given("--federation-tenant-id") {
            add.push(format!("--federation-tenant-id={}", self.tenant_id));
        }
        nmi_args.extend(add);
    }

    /// The Kubernetes objects of the demonstration, as YAML.
    #[must_use]
    pub fn scenario(&self) -> String {
        let (rid, cid, tenant) = (
            &self.identity.resource_id,
            &self.identity.client_id,
            &self.tenant_id,
        );
        format!(
            r#"apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {SERVICE_ACCOUNT}
  namespace: {NAMESPACE}
  annotations:
    azure.workload.identity/client-id: "{cid}"
    azure.workload.identity/tenant-id: "{tenant}"
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata:
  name: federated
  namespace: {NAMESPACE}
  annotations:
    aadpodidentity.k8s.io/federated: "true"
spec:
  type: 0
  resourceID: "{rid}"
  clientID: "{cid}"
  tenantID: "{tenant}"
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
metadata: {{name: federated-binding, namespace: {NAMESPACE}}}
spec: {{azureIdentity: federated, selector: federated}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: federated-app, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: federated-app}}}}
  template:
    metadata: {{labels: {{app: federated-app, aadpodidbinding: federated}}}}
    spec:
      serviceAccountName: {SERVICE_ACCOUNT}
      containers: [{{name: app, image: mcr.microsoft.com/azure-cli}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: workload-identity-app, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: workload-identity-app}}}}
  template:
    metadata:
      labels: {{app: workload-identity-app, azure.workload.identity/use: "true"}}
    spec:
      serviceAccountName: {SERVICE_ACCOUNT}
      containers: [{{name: app, image: mcr.microsoft.com/azure-cli}}]
"#
        )
    }

    /// The demonstration's progress line.
    pub async fn progress(&self, client: &kube::Client, azure: &AzureSimHandle) -> Option<String> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
        let running = super::system::running(&pods.list(&ListParams::default()).await.ok()?.items);
        let aai: Api<AzureAssignedIdentity> = Api::namespaced(client.clone(), NAMESPACE);
        let assigned = aai
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .filter(|a| a.is_assigned())
            .count();
        let c = azure.counters();
        Some(format!(
            "federated identity {}: {running} pods running in {NAMESPACE}, {assigned} AzureAssignedIdentities Assigned | ARM writes naming it: {} | tokens issued through federation: {}",
            self.identity.name,
            c.writes_naming(&self.identity.resource_id),
            c.aad_federated_tokens,
        ))
    }
}
