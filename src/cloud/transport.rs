//! One HTTP exchange through azure_core's transport with a deadline, body fully read.
//!
//! The metadata-service and Azure AD clients use the transport directly (no pipeline: their
//! retry and status handling is the caller's); the ARM client goes through a full pipeline.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    Context, HttpClient, Method, Request,
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
///
/// A GET or HEAD whose connection failed before any response arrived (a pooled keep-alive
/// connection the server closed just as it was reused) is resent once, at once, within the same
/// deadline, as Go's transport does; nothing else is resent.
pub(crate) async fn exchange(
    http: &Arc<dyn HttpClient>,
    request: &Request,
    timeout: Duration,
    operation: &'static str,
) -> Result<Received, Error> {
    let fut = async {
        let response = match http.execute_request(request).await {
            Ok(response) => response,
            Err(first) => match stale_connection(&first) {
                Some(why) if is_idempotent(request.method()) => {
                    tracing::debug!(
                        operation,
                        path = request.url().path(),
                        why,
                        "connection closed before any response; resending once"
                    );
                    http.execute_request(request).await
                }
                _ => Err(first),
            }
            .map_err(|source| Error::Transport { operation, source })?,
        };
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

fn is_idempotent(method: Method) -> bool {
    matches!(method, Method::Get | Method::Head)
}

/// Why `err` means the connection failed before a response head arrived, if it does: hyper's
/// "connection closed before message completed" or "request canceled", or the socket reset,
/// aborted or broken under the request. Found by walking the source chain (azure_core wraps
/// reqwest, which wraps hyper-util, which wraps hyper or the I/O error). The answer names only
/// the kind, never the error's text, which can hold the URL with its query.
///
/// Only errors from sending are classified by callers; a response whose body was cut short is
/// never resent.
pub(crate) fn stale_connection(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return Some("incomplete message");
            }
            if h.is_canceled() {
                return Some("canceled");
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionReset => return Some("connection reset"),
                std::io::ErrorKind::ConnectionAborted => return Some("connection aborted"),
                std::io::ErrorKind::BrokenPipe => return Some("broken pipe"),
                _ => {}
            }
        }
        next = e.source();
    }
    None
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
