//! Azure AD client credentials for service-principal identities (AzureIdentity type 1 and 2).
//!
//! NMI answers pods in the metadata service's token shape, so every token is returned as a
//! [`Token`] (all strings) whichever endpoint produced it: v1 (`/{tenant}/oauth2/token`,
//! `resource=`) or v2 (`/{tenant}/oauth2/v2.0/token`, `scope=<resource>/.default`).
//! Type 2 signs a client assertion (RS256, `x5t` = SHA-1 thumbprint) with the key from a
//! PKCS#12 bundle. Workload identity federation presents another issuer's token (a pod's
//! service-account token) as the assertion instead. Secrets, keys and tokens never reach a log
//! line or a `Debug` string.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::http::{HttpClient, Method, Request, headers::HeaderName};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha1::Digest;

use super::Error;
use super::token::Token;
use super::transport::{exchange, parse_url, set_user_agent};

/// Which token endpoint to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EndpointVersion {
    /// `/{tenant}/oauth2/token` with `resource=` (what the original uses).
    #[default]
    V1,
    /// `/{tenant}/oauth2/v2.0/token` with `scope=<resource>/.default`.
    V2,
}

/// A key and certificate from a PKCS#12 bundle, ready to sign client assertions.
#[derive(Clone)]
pub struct CertificateCredential {
    key: jsonwebtoken::EncodingKey,
    /// base64url SHA-1 of the certificate DER (`x5t`).
    thumbprint: String,
}

impl std::fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("x5t", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl CertificateCredential {
    /// Reads the first private key and its certificate from a PKCS#12 bundle (the Secret's
    /// `certificate` key) protected by `password`.
    pub fn from_pkcs12(data: &[u8], password: &str) -> Result<Self, Error> {
        let bundle =
            super::pfx::read(data, password).map_err(|e| Error::Certificate(e.to_string()))?;
        Self::from_der(&bundle.key_pkcs8, &bundle.certificate)
    }

    /// From a PKCS#8 RSA private key and a certificate, both DER.
    pub fn from_der(pkcs8_key: &[u8], cert_der: &[u8]) -> Result<Self, Error> {
        let pem = pem_encode("PRIVATE KEY", pkcs8_key);
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| Error::Certificate(format!("private key is not an RSA key: {e}")))?;
        Ok(Self {
            key,
            thumbprint: certificate_thumbprint(cert_der),
        })
    }

    /// A signed client assertion for `client_id` at `audience` (the token endpoint URL).
    fn assertion(&self, client_id: &str, audience: &str) -> Result<String, Error> {
        #[derive(Serialize)]
        struct Claims<'a> {
            aud: &'a str,
            iss: &'a str,
            sub: &'a str,
            jti: String,
            nbf: u64,
            iat: u64,
            exp: u64,
        }
        let now = unix_now();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.x5t = Some(self.thumbprint.clone());
        let claims = Claims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + 600,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Error::Certificate(format!("cannot sign client assertion: {e}")))
    }
}

/// base64url SHA-1 of a certificate's DER, as Azure AD expects in `x5t`.
#[must_use]
pub fn certificate_thumbprint(cert_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(cert_der))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// How a service principal proves itself.
#[derive(Clone)]
pub enum ClientCredential {
    /// Type 1: a client secret.
    Secret(String),
    /// Type 2: a certificate.
    Certificate(Arc<CertificateCredential>),
    /// Workload identity federation: a token of another issuer (a pod's service-account
    /// token) that Azure AD accepts through a federated identity credential.
    Assertion(String),
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCredential::Secret(_) => f.write_str("Secret(<redacted>)"),
            ClientCredential::Certificate(c) => c.fmt(f),
            ClientCredential::Assertion(_) => f.write_str("Assertion(<redacted>)"),
        }
    }
}

/// One client-credentials request.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// Tenant of the service principal.
    pub tenant_id: String,
    /// Service principal client id.
    pub client_id: String,
    /// Secret or certificate.
    pub credential: ClientCredential,
    /// Audience (`https://management.azure.com/`); `/.default` is appended for v2.
    pub resource: String,
    /// v1 or v2 endpoint.
    pub version: EndpointVersion,
}

/// A primary token and one token per auxiliary tenant (multi-tenant service principals).
#[derive(Clone, Debug)]
pub struct TokenSet {
    /// Token from the service principal's own tenant.
    pub primary: Token,
    /// Tokens from the auxiliary tenants, in the order asked.
    pub auxiliary: Vec<Token>,
}

/// Client for one Azure AD authority host.
#[derive(Clone, Debug)]
pub struct AadClient {
    http: Arc<dyn HttpClient>,
    authority: url::Url,
    timeout: Duration,
    user_agent: Option<Arc<str>>,
}

impl AadClient {
    /// A client for `authority_host` (`https://login.microsoftonline.com/` or the simulator's).
    pub fn new(authority_host: &str) -> Result<Self, Error> {
        let mut authority = parse_url("Azure AD authority host", authority_host)?;
        if !authority.path().ends_with('/') {
            let p = format!("{}/", authority.path());
            authority.set_path(&p);
        }
        Ok(Self {
            http: azure_core::http::new_http_client(None),
            authority,
            timeout: Duration::from_secs(30),
            user_agent: None,
        })
    }

    /// Per-request deadline (default 30 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `User-Agent` of every request ([`crate::version::user_agent`]).
    #[must_use]
    pub fn with_user_agent(mut self, user_agent: &str) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// The token endpoint for `tenant`.
    pub fn token_endpoint(
        &self,
        tenant: &str,
        version: EndpointVersion,
    ) -> Result<url::Url, Error> {
        if tenant.is_empty() || tenant.contains(['/', '?', '#']) {
            return Err(Error::Config(format!("tenant id {tenant:?} is not valid")));
        }
        let path = match version {
            EndpointVersion::V1 => format!("{tenant}/oauth2/token"),
            EndpointVersion::V2 => format!("{tenant}/oauth2/v2.0/token"),
        };
        self.authority
            .join(&path)
            .map_err(|e| Error::Config(format!("tenant id {tenant:?}: {e}")))
    }

    /// Client credentials grant; the answer in the metadata service's token shape.
    pub async fn token(&self, req: &TokenRequest) -> Result<Token, Error> {
        let endpoint = self.token_endpoint(&req.tenant_id, req.version)?;
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials")
                .append_pair("client_id", &req.client_id);
            match req.version {
                EndpointVersion::V1 => form.append_pair("resource", &req.resource),
                EndpointVersion::V2 => form.append_pair("scope", &scope_for(&req.resource)),
            };
            match &req.credential {
                ClientCredential::Secret(s) => {
                    form.append_pair("client_secret", s);
                }
                ClientCredential::Certificate(c) => {
                    form.append_pair(
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    )
                    .append_pair(
                        "client_assertion",
                        &c.assertion(&req.client_id, endpoint.as_str())?,
                    );
                }
                ClientCredential::Assertion(a) => {
                    form.append_pair(
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    )
                    .append_pair("client_assertion", a);
                }
            }
            form.finish()
        };
        let mut request = Request::new(endpoint, Method::Post);
        request.insert_header(
            HeaderName::from_static("content-type"),
            "application/x-www-form-urlencoded",
        );
        set_user_agent(&mut request, self.user_agent.as_deref());
        request.set_body(body);
        let got = exchange(&self.http, &request, self.timeout, "aad_token").await?;
        if got.status != 200 {
            #[derive(Deserialize, Default)]
            #[serde(default)]
            struct AadError {
                error: String,
                error_description: String,
            }
            let e: AadError = serde_json::from_slice(&got.body).unwrap_or_default();
            return Err(Error::Aad {
                status: got.status,
                error: if e.error.is_empty() {
                    "unknown".into()
                } else {
                    e.error
                },
                description: e.error_description,
            });
        }
        let mut token: Token =
            serde_json::from_slice(&got.body).map_err(|e| Error::MalformedResponse {
                operation: "aad_token",
                problem: format!(
                    "token response is not JSON of the documented shape: {}",
                    super::error::json_problem(&e)
                ),
            })?;
        if token.access_token.is_empty() {
            return Err(Error::MalformedResponse {
                operation: "aad_token",
                problem: "no access_token".into(),
            });
        }
        fill_times(&mut token);
        if token.resource.is_empty() {
            token.resource = req.resource.clone();
        }
        Ok(token)
    }

    /// The primary token and one for each auxiliary tenant (the original's multi-tenant
    /// service principal token); any tenant refusing fails the whole request.
    pub async fn token_with_auxiliary(
        &self,
        req: &TokenRequest,
        auxiliary_tenants: &[String],
    ) -> Result<TokenSet, Error> {
        let primary = self.token(req).await?;
        let mut auxiliary = Vec::with_capacity(auxiliary_tenants.len());
        for tenant in auxiliary_tenants {
            let aux = TokenRequest {
                tenant_id: tenant.clone(),
                ..req.clone()
            };
            auxiliary.push(self.token(&aux).await?);
        }
        Ok(TokenSet { primary, auxiliary })
    }
}

/// `https://management.azure.com/` → `https://management.azure.com/.default`.
#[must_use]
pub fn scope_for(resource: &str) -> String {
    if resource.ends_with("/.default") {
        resource.to_string()
    } else {
        format!("{}/.default", resource.trim_end_matches('/'))
    }
}

/// v2 answers only `expires_in`; derive `expires_on`/`not_before` so NMI's answer has them.
fn fill_times(token: &mut Token) {
    let now = unix_now();
    if token.expires_on.is_empty()
        && let Ok(secs) = token.expires_in.parse::<u64>()
    {
        let life = secs.min(super::token::MAX_LIFETIME.as_secs());
        token.expires_on = now.saturating_add(life).to_string();
    }
    if token.not_before.is_empty() {
        token.not_before = now.to_string();
    }
    if token.token_type.is_empty() {
        token.token_type = "Bearer".into();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_scope_is_derived_from_the_resource() {
        assert_eq!(
            scope_for("https://management.azure.com/"),
            "https://management.azure.com/.default"
        );
        assert_eq!(scope_for("api://x/.default"), "api://x/.default");
    }

    #[test]
    fn endpoints_follow_the_authority_and_reject_odd_tenants() {
        let c = AadClient::new("http://127.0.0.1:9/base").unwrap();
        assert_eq!(
            c.token_endpoint("t1", EndpointVersion::V1)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9/base/t1/oauth2/token"
        );
        assert_eq!(
            c.token_endpoint("t1", EndpointVersion::V2)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9/base/t1/oauth2/v2.0/token"
        );
        assert!(c.token_endpoint("../x", EndpointVersion::V1).is_err());
        assert!(c.token_endpoint("", EndpointVersion::V1).is_err());
    }

    #[test]
    fn an_absurd_expires_in_is_capped_instead_of_overflowing() {
        let mut t = Token {
            access_token: "a".into(),
            expires_in: u64::MAX.to_string(),
            ..Token::default()
        };
        fill_times(&mut t);
        let on: u64 = t.expires_on.parse().unwrap();
        assert!(on <= unix_now() + super::super::token::MAX_LIFETIME.as_secs());
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let c = ClientCredential::Secret("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
        // A federated request, as a span or error might print it: the service-account token
        // (the assertion) is a credential too.
        let r = TokenRequest {
            tenant_id: "t".into(),
            client_id: "c".into(),
            credential: ClientCredential::Assertion("eyJhbGciOi.sa-token.sig".into()),
            resource: "https://vault.azure.net".into(),
            version: EndpointVersion::V2,
        };
        let shown = format!("{r:?}");
        assert!(!shown.contains("sa-token"), "{shown}");
        assert!(shown.contains("Assertion(<redacted>)"), "{shown}");
    }
}
