//! One HTTP exchange through azure_core's transport with a deadline, body fully read.
//!
//! The metadata-service and Azure AD clients use the transport directly (no pipeline: their
//! retry and status handling is the caller's); the ARM client goes through a full pipeline.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    Context, HttpClient, Request,
    headers::{HeaderName, Headers},
};
use bytes::Bytes;

use super::Error;

/// A response with its body read.
pub(crate) struct Received {
    pub status: u16,
    pub headers: Headers,
    pub body: Bytes,
}

/// Sends `request` and reads the whole body within `timeout`.
pub(crate) async fn exchange(
    http: &Arc<dyn HttpClient>,
    request: &Request,
    timeout: Duration,
    operation: &'static str,
) -> Result<Received, Error> {
    let fut = async {
        let response = http
            .execute_request(request)
            .await
            .map_err(|source| Error::Transport { operation, source })?;
        let (status, headers, body) = response.deconstruct();
        let body = body
            .collect()
            .await
            .map_err(|source| Error::Transport { operation, source })?;
        Ok(Received {
            status: u16::from(status),
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::Timeout {
            operation,
            after: timeout,
        })?
}

/// Parses a URL from configuration, naming the setting when it is not one.
pub(crate) fn parse_url(what: &str, value: &str) -> Result<url::Url, Error> {
    url::Url::parse(value).map_err(|e| Error::Config(format!("{what} {value:?} is not a URL: {e}")))
}

const USER_AGENT: HeaderName = HeaderName::from_static("user-agent");

/// Sets `User-Agent` on a request sent through the bare transport.
pub(crate) fn set_user_agent(request: &mut Request, user_agent: Option<&str>) {
    if let Some(ua) = user_agent {
        request.insert_header(USER_AGENT, ua.to_string());
    }
}

/// Appends this component's User-Agent to the one azure_core's pipeline sets, as the original
/// appended its own to the Azure SDK's (`adal.AddToUserAgent`), so ARM and Azure AD logs name
/// both the SDK and `aad-pod-identity/<component>/…`.
#[derive(Debug, Clone)]
pub struct AppendUserAgent(pub String);

#[async_trait]
impl Policy for AppendUserAgent {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let now = request
            .headers()
            .get_optional_str(&USER_AGENT)
            .map(str::to_string);
        match now {
            // Per try: a retried request already carries it.
            Some(ua) if ua.ends_with(&self.0) => {}
            Some(ua) if !ua.is_empty() => {
                request.insert_header(USER_AGENT, format!("{ua} {}", self.0))
            }
            _ => request.insert_header(USER_AGENT, self.0.clone()),
        }
        next[0].send(ctx, request, &next[1..]).await
    }
}
