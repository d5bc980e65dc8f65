//! The real [`TokenSource`]: the node's metadata service for type-0 identities and the node's
//! own identity, Azure AD client credentials for service principals (types 1 and 2) with the
//! credential read from the Secret the AzureIdentity references.
//!
//! Secrets are read when a token is fetched (rare: tokens are cached) and never logged. As the
//! original, a type-1 Secret's first value is the client secret; a type-2 Secret holds a PKCS#12
//! bundle under `certificate` and its password under `password`.
//!
//! Before any Secret is read, a service principal is checked: a namespaced identity's Secret
//! must be in the identity's own namespace, and its `adEndpoint` must pass the
//! [`AuthorityPolicy`] (known clouds, `$AZURE_AUTHORITY_HOST`, `--allowed-ad-endpoints`).
//! Otherwise whoever may write an AzureIdentity could have NMI read another namespace's Secret
//! or send a credential to a host of their choosing.
//!
//! Federated identities (with [`CloudTokenSource::with_federation`]) take the calling pod's
//! service-account token from the TokenRequest API ([`super::federated`]) and exchange it at
//! Azure AD (v2 endpoint, `jwt-bearer` client assertion); the same authority policy applies.

use super::federated::Federation;
use super::source::{SourceError, TokenRequest, TokenSource, TokenTarget, UpstreamToken};
use crate::cloud::aad::{AadClient, CertificateCredential, ClientCredential, EndpointVersion};
use crate::cloud::authority::{AllowedAuthority, AuthorityPolicy};
use crate::cloud::imds::{IdentitySelector, ImdsClient};
use crate::crd::{AzureIdentitySpec, IdentityType};
use async_trait::async_trait;
use dashmap::DashMap;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use std::sync::Arc;
use std::time::Duration;

/// Azure AD authority used when an AzureIdentity has no `adEndpoint`.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";

/// Tokens from the metadata service and Azure AD.
pub struct CloudTokenSource {
    imds: ImdsClient,
    kube: kube::Client,
    default_authority: String,
    policy: AuthorityPolicy,
    timeout: Duration,
    aad: DashMap<String, AadClient>,
    federation: Option<Federation>,
    user_agent: Option<String>,
    secret_errors: Option<prometheus::IntCounter>,
}

impl CloudTokenSource {
    /// A source using the metadata service at `metadata` (`ip:port`), reading Secrets through
    /// `kube`, with `default_authority` for identities without `adEndpoint` (always allowed as
    /// an `adEndpoint` too).
    ///
    /// # Errors
    /// When the metadata address is not usable.
    pub fn new(
        metadata: &str,
        kube: kube::Client,
        default_authority: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, crate::cloud::Error> {
        let default_authority = default_authority.into();
        let mut policy = AuthorityPolicy::default();
        if let Some(a) = url::Url::parse(&default_authority)
            .ok()
            .as_ref()
            .and_then(AllowedAuthority::from_url)
        {
            policy.allow(a);
        }
        Ok(Self {
            imds: ImdsClient::new(metadata)?.with_timeout(timeout),
            kube,
            default_authority,
            policy,
            timeout,
            aad: DashMap::new(),
            federation: None,
            user_agent: None,
            secret_errors: None,
        })
    }

    /// Serves federated identities (`--enable-federation`); without it they are refused.
    #[must_use]
    pub fn with_federation(mut self, federation: Federation) -> Self {
        self.federation = Some(federation);
        self
    }

    /// A federated identity's token: the pod's service-account token exchanged at Azure AD.
    async fn federated(
        &self,
        request: &TokenRequest,
        client_id: &str,
        tenant_id: &str,
        ad_endpoint: &str,
        pod: &super::source::FederatedPod,
    ) -> Result<UpstreamToken, SourceError> {
        let federation = self.federation.as_ref().ok_or_else(|| {
            SourceError::Refused(
                "the identity is federated and federation is not enabled on this NMI (--enable-federation)".into(),
            )
        })?;
        if client_id.is_empty() {
            return Err(SourceError::Refused(
                "the federated identity has no client id".into(),
            ));
        }
        let tenant = federation.tenant(tenant_id)?;
        if !ad_endpoint.is_empty() {
            self.policy
                .check(ad_endpoint)
                .map_err(|e| SourceError::Refused(e.to_string()))?;
        }
        let aad = self.aad_for(ad_endpoint)?;
        let assertion = federation.service_account_token(&self.kube, pod).await?;
        let token = aad
            .token(&crate::cloud::aad::TokenRequest {
                tenant_id: tenant.to_string(),
                client_id: client_id.to_string(),
                credential: ClientCredential::Assertion(assertion),
                resource: request.resource.clone(),
                version: EndpointVersion::V2,
            })
            .await
            .map_err(|e| cloud_error(&e))?;
        let body = serde_json::to_vec(&token)
            .map_err(|e| SourceError::Refused(format!("cannot encode token: {e}")))?;
        Ok(UpstreamToken {
            status: 200,
            body: body.into(),
        })
    }

    /// Counts failed Secret reads in the original's
    /// `kubernetes_api_operations_errors_count{operation_type="get_secret"}`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.secret_errors = Some(
            metrics
                .kubernetes_api_operations_errors_count
                .with_label_values(&[crate::metrics::K8S_GET_SECRET]),
        );
        self
    }

    /// `User-Agent` of every metadata-service and Azure AD request.
    #[must_use]
    pub fn with_user_agent(mut self, user_agent: &str) -> Self {
        self.imds = self.imds.with_user_agent(user_agent);
        self.user_agent = Some(user_agent.to_string());
        self
    }

    /// Also allows these authorities as `adEndpoint` (`--allowed-ad-endpoints`).
    #[must_use]
    pub fn with_allowed_authorities(
        mut self,
        extra: impl IntoIterator<Item = AllowedAuthority>,
    ) -> Self {
        for a in extra {
            self.policy.allow(a);
        }
        self
    }

    /// Refuses a service principal whose Secret or authority it may not use.
    fn check_service_principal(
        &self,
        spec: &AzureIdentitySpec,
        identity_namespace: &str,
        namespaced: bool,
    ) -> Result<(), SourceError> {
        let secret_ns = &spec.client_password.namespace;
        if namespaced && !secret_ns.is_empty() && secret_ns != identity_namespace {
            return Err(SourceError::Refused(format!(
                "the identity in namespace {identity_namespace} is namespaced and may not use Secret {secret_ns}/{}",
                spec.client_password.name
            )));
        }
        if !spec.ad_endpoint.is_empty() {
            self.policy
                .check(&spec.ad_endpoint)
                .map_err(|e| SourceError::Refused(e.to_string()))?;
        }
        Ok(())
    }

    fn aad_for(&self, endpoint: &str) -> Result<AadClient, SourceError> {
        let authority = if endpoint.is_empty() {
            self.default_authority.as_str()
        } else {
            endpoint
        };
        if let Some(c) = self.aad.get(authority) {
            return Ok(c.clone());
        }
        let mut c = AadClient::new(authority)
            .map_err(|e| SourceError::Refused(e.to_string()))?
            .with_timeout(self.timeout);
        if let Some(ua) = &self.user_agent {
            c = c.with_user_agent(ua);
        }
        self.aad.insert(authority.to_string(), c.clone());
        Ok(c)
    }

    async fn credential(
        &self,
        spec: &AzureIdentitySpec,
        identity_namespace: &str,
    ) -> Result<ClientCredential, SourceError> {
        let r = &spec.client_password;
        let ns = if r.namespace.is_empty() {
            identity_namespace
        } else {
            r.namespace.as_str()
        };
        let secret = Api::<Secret>::namespaced(self.kube.clone(), ns)
            .get(&r.name)
            .await
            .map_err(|e| {
                if let Some(c) = &self.secret_errors {
                    c.inc();
                }
                SourceError::Refused(format!("cannot read Secret {ns}/{}: {e}", r.name))
            })?;
        let data = secret.data.unwrap_or_default();
        match spec.type_ {
            IdentityType::ServicePrincipal => data
                .values()
                .next()
                .map(|v| ClientCredential::Secret(String::from_utf8_lossy(&v.0).into_owned()))
                .ok_or_else(|| SourceError::Refused(format!("Secret {ns}/{} is empty", r.name))),
            IdentityType::ServicePrincipalCertificate => {
                let cert = data.get("certificate").ok_or_else(|| {
                    SourceError::Refused(format!("Secret {ns}/{} has no `certificate` key", r.name))
                })?;
                let password = data
                    .get("password")
                    .map(|p| String::from_utf8_lossy(&p.0).into_owned())
                    .unwrap_or_default();
                CertificateCredential::from_pkcs12(&cert.0, &password)
                    .map(|c| ClientCredential::Certificate(Arc::new(c)))
                    .map_err(|e| SourceError::Refused(e.to_string()))
            }
            other => Err(SourceError::Refused(format!(
                "identity type {other} has no service principal credential"
            ))),
        }
    }
}

fn cloud_error(e: &crate::cloud::Error) -> SourceError {
    match e {
        crate::cloud::Error::Transport { .. } | crate::cloud::Error::Timeout { .. } => {
            SourceError::Unreachable(e.to_string())
        }
        _ => SourceError::Refused(e.to_string()),
    }
}

#[async_trait]
impl TokenSource for CloudTokenSource {
    async fn fetch(&self, request: &TokenRequest) -> Result<UpstreamToken, SourceError> {
        let selector = match &request.target {
            TokenTarget::Node { client_id: None } => IdentitySelector::Node,
            TokenTarget::Node { client_id: Some(c) } => IdentitySelector::ClientId(c.clone()),
            TokenTarget::UserAssigned {
                client_id,
                resource_id,
            } => {
                if client_id.is_empty() {
                    IdentitySelector::ResourceId(resource_id.clone())
                } else {
                    IdentitySelector::ClientId(client_id.clone())
                }
            }
            TokenTarget::ServicePrincipal {
                identity,
                identity_namespace,
                namespaced,
            } => {
                self.check_service_principal(identity, identity_namespace, *namespaced)?;
                let credential = self.credential(identity, identity_namespace).await?;
                let aad = self.aad_for(&identity.ad_endpoint)?;
                let req = crate::cloud::aad::TokenRequest {
                    tenant_id: identity.tenant_id.clone(),
                    client_id: identity.client_id.clone(),
                    credential,
                    resource: request.resource.clone(),
                    version: EndpointVersion::V1,
                };
                let body = if identity.auxiliary_tenant_ids.is_empty() {
                    let t = aad.token(&req).await.map_err(|e| cloud_error(&e))?;
                    serde_json::to_vec(&t)
                } else {
                    let set = aad
                        .token_with_auxiliary(&req, &identity.auxiliary_tenant_ids)
                        .await
                        .map_err(|e| cloud_error(&e))?;
                    let mut all = vec![set.primary];
                    all.extend(set.auxiliary);
                    serde_json::to_vec(&all)
                }
                .map_err(|e| SourceError::Refused(format!("cannot encode token: {e}")))?;
                return Ok(UpstreamToken {
                    status: 200,
                    body: body.into(),
                });
            }
            TokenTarget::Federated {
                client_id,
                tenant_id,
                ad_endpoint,
                pod,
            } => {
                return self
                    .federated(request, client_id, tenant_id, ad_endpoint, pod)
                    .await;
            }
        };
        let resp = self
            .imds
            .token(&request.resource, &selector)
            .await
            .map_err(|e| cloud_error(&e))?;
        Ok(UpstreamToken {
            status: resp.status,
            body: resp.body,
        })
    }
}
