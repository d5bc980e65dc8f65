//! Metadata-service (IMDS) token client for NMI.
//!
//! NMI relays the metadata service's answer to the pod byte for byte, so this client returns
//! status, content type and body untouched ([`ImdsResponse`]) and parses a [`Token`] only as an
//! extra for a 200. The base address is configuration (`--metadata-ip`/`--metadata-port`); the
//! sandbox points it at a simulated node's listener on loopback.

use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{HttpClient, Method, Request, headers::HeaderName};
use bytes::Bytes;

use super::Error;
use super::token::Token;
use super::transport::{exchange, parse_url, set_user_agent};

/// The API version every Azure SDK sends.
pub const API_VERSION: &str = "2018-02-01";

/// Which identity of the node to get a token for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentitySelector {
    /// The node's own identity (no identity parameter).
    Node,
    /// A user-assigned identity by client id (`client_id=`).
    ClientId(String),
    /// A user-assigned identity by ARM resource id (`msi_res_id=`).
    ResourceId(String),
    /// A user-assigned identity by principal (object) id (`object_id=`).
    ObjectId(String),
}

/// The metadata service's answer, as sent.
#[derive(Clone)]
pub struct ImdsResponse {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// Body bytes, unchanged.
    pub body: Bytes,
    /// The parsed token when `status` is 200 and the body has the token shape.
    pub token: Option<Token>,
}

impl std::fmt::Debug for ImdsResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body of a 200 holds a token: never print it.
        f.debug_struct("ImdsResponse")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("body_len", &self.body.len())
            .field("token", &self.token)
            .finish()
    }
}

/// The HTTP client settings for the node's metadata service, shared by the token client and
/// NMI's pass-through ([`crate::http::proxy`]): never through a proxy, whatever `HTTP_PROXY` or
/// `ALL_PROXY` say (Azure's documentation of the service: clients must bypass web proxies; it is
/// link-local, so a proxy would reach another machine's metadata service or see this node's
/// tokens), no redirects followed, no transparent decompression (answers are relayed as sent).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_deflate()
        .redirect(reqwest::redirect::Policy::none())
}

/// Client for one metadata-service address.
#[derive(Clone, Debug)]
pub struct ImdsClient {
    http: Arc<dyn HttpClient>,
    base: url::Url,
    timeout: Duration,
    user_agent: Option<Arc<str>>,
}

impl ImdsClient {
    /// A client for `host:port` (e.g. `169.254.169.254:80` on a real node, a loopback
    /// address in the sandbox).
    pub fn new(address: &str) -> Result<Self, Error> {
        let base = parse_url("metadata service address", &format!("http://{address}/"))?;
        let http = http_client_builder()
            .build()
            .map_err(|e| Error::Config(format!("metadata service client: {e}")))?;
        Ok(Self {
            http: Arc::new(http),
            base,
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

    /// Requests a token for `resource` and returns the service's answer unchanged. Only a
    /// failure to get any answer is an error.
    pub async fn token(
        &self,
        resource: &str,
        identity: &IdentitySelector,
    ) -> Result<ImdsResponse, Error> {
        let mut url = self
            .base
            .join("metadata/identity/oauth2/token")
            .expect("static path");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("api-version", API_VERSION)
                .append_pair("resource", resource);
            match identity {
                IdentitySelector::Node => {}
                IdentitySelector::ClientId(id) => {
                    q.append_pair("client_id", id);
                }
                IdentitySelector::ResourceId(id) => {
                    q.append_pair("msi_res_id", id);
                }
                IdentitySelector::ObjectId(id) => {
                    q.append_pair("object_id", id);
                }
            }
        }
        let mut request = Request::new(url, Method::Get);
        request.insert_header(HeaderName::from_static("metadata"), "true");
        set_user_agent(&mut request, self.user_agent.as_deref());
        let got = exchange(&self.http, &request, self.timeout, "imds_token").await?;
        let content_type = got
            .headers
            .get_optional_str(&HeaderName::from_static("content-type"))
            .map(str::to_string);
        let token = (got.status == 200)
            .then(|| serde_json::from_slice::<Token>(&got.body).ok())
            .flatten()
            .filter(|t| !t.access_token.is_empty());
        Ok(ImdsResponse {
            status: got.status,
            content_type,
            body: got.body,
            token,
        })
    }
}
