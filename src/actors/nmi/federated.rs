//! The first half of a federated token: the calling pod's service-account token, from the
//! Kubernetes TokenRequest API (`POST .../serviceaccounts/<sa>/token`), for the exchange
//! audience (`api://AzureADTokenExchange` by default), bound to the pod (its name and uid, so
//! the token dies with the pod), and as short-lived as the API server allows (10 minutes).
//! The second half, the exchange at Azure AD, is [`crate::cloud::aad`] with a
//! [`crate::cloud::aad::ClientCredential::Assertion`].
//!
//! A service-account token is a credential: it lives in a local variable between the two
//! requests, is never cached, logged or put in an error message.

use super::source::{FederatedPod, SourceError};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;

/// The audience Azure AD's public cloud accepts for federated credentials.
pub const DEFAULT_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Lifetime asked for: the shortest the API server grants.
pub const TOKEN_LIFETIME_SECONDS: i64 = 600;
/// `kubernetes_api_operations_errors_count{operation_type}` of a failed TokenRequest.
pub const OPERATION: &str = "create_service_account_token";

/// How NMI obtains federated tokens (`--enable-federation` and the `--federation-*` flags).
#[derive(Clone, Debug)]
pub struct Federation {
    /// Audience of the service-account tokens (`--federation-audience`).
    pub audience: String,
    /// Tenant of identities that name none (`--federation-tenant-id`); may be empty.
    pub default_tenant: String,
    errors: Option<prometheus::IntCounter>,
}

impl Federation {
    /// Federation with `audience` and a default tenant.
    #[must_use]
    pub fn new(audience: impl Into<String>, default_tenant: impl Into<String>) -> Self {
        Self {
            audience: audience.into(),
            default_tenant: default_tenant.into(),
            errors: None,
        }
    }

    /// Counts failed TokenRequests in the original's `kubernetes_api_operations_errors_count`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.errors = Some(
            metrics
                .kubernetes_api_operations_errors_count
                .with_label_values(&[OPERATION]),
        );
        self
    }

    /// The tenant to exchange in: the identity's own, else the default.
    ///
    /// # Errors
    /// [`SourceError::Refused`] when neither names one.
    pub fn tenant<'a>(&'a self, identity_tenant: &'a str) -> Result<&'a str, SourceError> {
        match (identity_tenant, self.default_tenant.as_str()) {
            ("", "") => Err(SourceError::Refused(
                "the federated identity names no tenant: set the AzureIdentity's tenantID (or the service account's azure.workload.identity/tenant-id), or NMI's --federation-tenant-id".into(),
            )),
            ("", d) => Ok(d),
            (t, _) => Ok(t),
        }
    }

    /// A service-account token of `pod`'s service account for the exchange audience, bound to
    /// `pod`.
    ///
    /// # Errors
    /// [`SourceError::Refused`] when the API server refuses (no such service account, the pod
    /// is gone or replaced, NMI lacks `create` on `serviceaccounts/token`);
    /// [`SourceError::Unreachable`] when it cannot be reached.
    pub async fn service_account_token(
        &self,
        kube: &kube::Client,
        pod: &FederatedPod,
    ) -> Result<String, SourceError> {
        let api: Api<ServiceAccount> = Api::namespaced(kube.clone(), &pod.namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![self.audience.clone()],
                expiration_seconds: Some(TOKEN_LIFETIME_SECONDS),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.name.clone()),
                    uid: Some(pod.uid.clone()),
                }),
            },
            ..TokenRequest::default()
        };
        let answer = api
            .create_token_request(&pod.service_account, &PostParams::default(), &request)
            .await;
        let failed = |e: SourceError| {
            if let Some(c) = &self.errors {
                c.inc();
            }
            e
        };
        let what = format!(
            "a token of service account {}/{} for pod {}",
            pod.namespace, pod.service_account, pod.name
        );
        match answer {
            Ok(r) => match r.status {
                Some(s) if !s.token.is_empty() => Ok(s.token),
                _ => Err(failed(SourceError::Refused(format!(
                    "the API server answered the request for {what} without a token"
                )))),
            },
            Err(kube::Error::Api(status)) => Err(failed(SourceError::Refused(format!(
                "the API server refused {what}: {} ({})",
                status.message, status.code
            )))),
            Err(e) => Err(failed(SourceError::Unreachable(format!(
                "cannot ask the API server for {what}: {e}"
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identitys_tenant_wins_over_the_default_and_none_at_all_is_refused() {
        let f = Federation::new(DEFAULT_AUDIENCE, "default-tenant");
        assert_eq!(f.tenant("own").unwrap(), "own");
        assert_eq!(f.tenant("").unwrap(), "default-tenant");
        let none = Federation::new(DEFAULT_AUDIENCE, "");
        let msg = none.tenant("").unwrap_err().to_string();
        assert!(msg.contains("--federation-tenant-id"), "{msg}");
    }
}
