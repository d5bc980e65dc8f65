//! One HTTP exchange through azure_core's transport with a deadline, body fully read.
//!
//! The metadata-service and Azure AD clients use the transport directly (no pipeline: their
//! retry and status handling is the caller's); the ARM client goes through a full pipeline.

use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{HttpClient, Request, headers::Headers};
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
