//! Bearer tokens for MIC's ARM calls.
//!
//! Real clusters use azure_identity: `ManagedIdentityCredential` (with the configured
//! user-assigned client id) or `ClientSecretCredential` against the configured authority.
//! Both insist on HTTPS, and `ManagedIdentityCredential` has the real metadata address built
//! in, so the sandbox and tests instead use [`AadSecretCredential`]: the same client-credentials
//! grant through our [`AadClient`] against the simulator's Azure AD on loopback.
//!
//! azure_core's `BearerTokenAuthorizationPolicy` refuses plain-HTTP endpoints, and the
//! simulator serves plain HTTP on loopback, so ARM requests carry tokens through
//! [`BearerPolicy`], which attaches the token whatever the scheme. Against real Azure the
//! endpoints are HTTPS anyway.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request, headers::HeaderName};
use azure_core::time::OffsetDateTime;
use tokio::sync::Mutex;

use super::Error;
use super::aad::{AadClient, ClientCredential, EndpointVersion, TokenRequest};
use super::config::CloudConfig;

/// Attaches `Authorization: Bearer <token>` from a [`TokenCredential`] to every try.
#[derive(Debug, Clone)]
pub struct BearerPolicy {
    credential: Arc<dyn TokenCredential>,
    scope: String,
}

impl BearerPolicy {
    /// A policy asking `credential` for `scope` (e.g. `https://management.azure.com/.default`).
    #[must_use]
    pub fn new(credential: Arc<dyn TokenCredential>, scope: String) -> Self {
        Self { credential, scope }
    }
}

#[async_trait]
impl Policy for BearerPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let token = self.credential.get_token(&[&self.scope], None).await?;
        request.insert_header(
            HeaderName::from_static("authorization"),
            format!("Bearer {}", token.token.secret()),
        );
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// Client-credentials (secret) token source through [`AadClient`], cached until five minutes
/// before expiry. Works with any authority, including plain HTTP on loopback. `Debug` shows
/// neither the secret nor the cached token.
pub struct AadSecretCredential {
    aad: AadClient,
    tenant_id: String,
    client_id: String,
    secret: String,
    cache: Mutex<Option<(String, AccessToken)>>,
}

impl std::fmt::Debug for AadSecretCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AadSecretCredential")
            .field("aad", &self.aad)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl AadSecretCredential {
    /// A credential for the service principal `client_id` in `tenant_id`.
    pub fn new(
        authority_host: &str,
        tenant_id: &str,
        client_id: &str,
        secret: &str,
        user_agent: &str,
    ) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self {
            aad: AadClient::new(authority_host)?.with_user_agent(user_agent),
            tenant_id: tenant_id.to_string(),
            client_id: client_id.to_string(),
            secret: secret.to_string(),
            cache: Mutex::new(None),
        }))
    }
}

#[async_trait]
impl TokenCredential for AadSecretCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let scope = scopes.join(" ");
        let mut cache = self.cache.lock().await;
        if let Some((s, token)) = cache.as_ref()
            && *s == scope
            && token.expires_on > OffsetDateTime::now_utc() + Duration::from_secs(300)
        {
            return Ok(token.clone());
        }
        let resource = scope.trim_end_matches("/.default").to_string() + "/";
        let token = self
            .aad
            .token(&TokenRequest {
                tenant_id: self.tenant_id.clone(),
                client_id: self.client_id.clone(),
                credential: ClientCredential::Secret(self.secret.clone()),
                resource,
                version: EndpointVersion::V2,
            })
            .await
            .map_err(|e| {
                azure_core::Error::with_message(
                    azure_core::error::ErrorKind::Credential,
                    e.to_string(),
                )
            })?;
        let expires_on = token
            .expires_on_unix()
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
            .unwrap_or_else(|| OffsetDateTime::now_utc() + Duration::from_secs(600));
        let access = AccessToken::new(token.access_token, expires_on);
        *cache = Some((scope, access.clone()));
        Ok(access)
    }
}

/// The credential MIC uses for ARM, chosen from the cloud configuration:
/// managed identity when `useManagedIdentityExtension` (real clusters only), else the
/// service principal's secret through azure_identity for HTTPS authorities, or through
/// [`AadSecretCredential`] for a plain-HTTP (simulated) authority. Every token request
/// carries `user_agent` (after the SDK's own, where the SDK sets one).
pub fn arm_credential(
    config: &CloudConfig,
    user_agent: &str,
) -> Result<Arc<dyn TokenCredential>, Error> {
    let authority = config.authority_host();
    let sdk_options = || azure_core::http::ClientOptions {
        per_try_policies: vec![Arc::new(super::AppendUserAgent(user_agent.to_string()))],
        ..Default::default()
    };
    if config.use_managed_identity_extension {
        let options = azure_identity::ManagedIdentityCredentialOptions {
            user_assigned_id: (!config.user_assigned_identity_id.is_empty()).then(|| {
                azure_identity::UserAssignedId::ClientId(config.user_assigned_identity_id.clone())
            }),
            client_options: sdk_options(),
        };
        let cred = azure_identity::ManagedIdentityCredential::new(Some(options))
            .map_err(Error::Credential)?;
        return Ok(cred);
    }
    if authority.starts_with("https://") {
        let mut custom = azure_core::cloud::CustomConfiguration::default();
        custom.authority_host = authority;
        let client_options = azure_core::http::ClientOptions {
            cloud: Some(Arc::new(custom.into())),
            ..sdk_options()
        };
        let cred = azure_identity::ClientSecretCredential::new(
            &config.tenant_id,
            config.aad_client_id.clone(),
            config.aad_client_secret.clone().into(),
            Some(azure_identity::ClientSecretCredentialOptions { client_options }),
        )
        .map_err(Error::Credential)?;
        return Ok(cred);
    }
    Ok(AadSecretCredential::new(
        &authority,
        &config.tenant_id,
        &config.aad_client_id,
        &config.aad_client_secret,
        user_agent,
    )?)
}
