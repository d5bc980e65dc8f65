//! Pass-through of every non-token request to the metadata service: method, headers, body and
//! the answer's status, headers and body, as the original does.
//!
//! The path forwarded is the caller's [`NormalPath`] (the one that decided the route), never the
//! raw request path; the URL is checked after it is built, so no HTTP client rewriting can make
//! the metadata service see a route other than the one NMI chose.
//!
//! An error never carries the URL: its query is text the calling pod chose (`client_id`,
//! `resource`, anything), and errors end up in NMI's log. It says what failed instead.

use super::request::NormalPath;
use crate::cloud::stale_connection;
use bytes::Bytes;
use std::time::Duration;

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the HTTP stacks compute themselves.
const SKIPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Why a request could not be relayed (answered 500, as the original).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The method is not valid HTTP.
    #[error("invalid method {0}")]
    Method(String),
    /// The URL built for the metadata service does not carry the normalised path verbatim.
    #[error("refusing to forward: the path {sent:?} would reach the metadata service as {built:?}")]
    PathChanged {
        /// The normalised path on the wire.
        sent: String,
        /// The path of the URL that would have been requested.
        built: String,
    },
    /// The metadata address is not a usable base URL.
    #[error("invalid metadata service address {0}")]
    Base(String),
    /// The metadata service could not be reached or its answer read. Built only by
    /// `From<reqwest::Error>`, which leaves the URL (and so the pod's query) out.
    #[error("failed executing request to the metadata service: {failure}: {cause}")]
    Upstream {
        /// What kind of failure.
        failure: Failure,
        /// The causes below the HTTP client's own message, outermost first (no URL).
        cause: String,
    },
    /// The pass-through client could not be built.
    #[error("cannot build the pass-through client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Why a relayed request got no answer, for logs and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made (refused, unreachable, reset while connecting).
    Connect,
    /// No complete answer within the pass-through deadline.
    Timeout,
    /// The answer's body could not be read.
    Body,
    /// Anything else that stopped the request.
    Request,
}

impl Failure {
    /// Short label (`connect`, `timeout`, `body`, `request`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Body => "body",
            Self::Request => "request",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connect => "cannot connect",
            Self::Timeout => "timed out",
            Self::Body => "answer unreadable",
            Self::Request => "request failed",
        })
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        let failure = if e.is_timeout() {
            Failure::Timeout
        } else if e.is_connect() {
            Failure::Connect
        } else if e.is_body() || e.is_decode() {
            Failure::Body
        } else {
            Failure::Request
        };
        // reqwest's own message names the URL; the causes below it (hyper's, the OS's) do not.
        let e = e.without_url();
        let mut causes: Vec<String> = Vec::new();
        let mut next = std::error::Error::source(&e);
        while let Some(c) = next {
            let text = c.to_string();
            if !causes.iter().any(|seen| seen.contains(&text)) {
                causes.push(text);
            }
            next = c.source();
        }
        let cause = if causes.is_empty() {
            e.to_string()
        } else {
            causes.join(": ")
        };
        Self::Upstream { failure, cause }
    }
}

impl Error {
    /// Short label of the failure (`connect`, `timeout`, `body`, `request`, `invalid_method`,
    /// `path_changed`, `config`), for a log field.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Method(_) => "invalid_method",
            Self::PathChanged { .. } => "path_changed",
            Self::Base(_) | Self::Client(_) => "config",
            Self::Upstream { failure, .. } => failure.as_str(),
        }
    }
}

/// An answer of the metadata service.
#[derive(Debug)]
pub struct Relayed {
    /// Status.
    pub status: u16,
    /// Headers minus hop-by-hop ones.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body, untouched.
    pub body: Bytes,
}

/// Relays requests to `http://<metadata ip>:<port>`.
#[derive(Clone, Debug)]
pub struct Proxy {
    client: reqwest::Client,
    base: url::Url,
    timeout: Duration,
}

/// How long an idle pooled connection to the metadata service is kept: shorter than common
/// server keep-alives (actix and many others close after 5 s), so NMI seldom reuses a connection
/// the server is closing. The race that remains is covered by resending idempotent requests.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

impl Proxy {
    /// A proxy to `base` (e.g. `http://127.0.0.1:8181`).
    ///
    /// # Errors
    /// When `base` is not a URL or the HTTP client cannot be built.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, Error> {
        let base = url::Url::parse(base).map_err(|e| Error::Base(format!("{base}: {e}")))?;
        // No proxy, no redirects followed, bodies byte for byte: the metadata client's settings.
        let client = crate::cloud::imds::http_client_builder()
            .timeout(timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(Error::Client)?;
        Ok(Self {
            client,
            base,
            timeout,
        })
    }

    /// The URL for `path` and the raw `query`, refused unless its path is exactly `path`'s wire
    /// form.
    ///
    /// # Errors
    /// [`Error::PathChanged`] when URL building would alter the path.
    pub fn url_for(&self, path: &NormalPath<'_>, query: &str) -> Result<url::Url, Error> {
        let wire = path.wire();
        let mut url = self.base.clone();
        url.set_path(&wire);
        url.set_query((!query.is_empty()).then_some(query));
        if url.path() != wire {
            return Err(Error::PathChanged {
                sent: wire.into_owned(),
                built: url.path().to_string(),
            });
        }
        Ok(url)
    }

    /// Sends one request for `path` (and the raw `query`) and reads the whole answer.
    ///
    /// A GET or HEAD whose connection failed before any response arrived (a pooled connection
    /// the server closed as it was reused) is resent once, at once, within the same deadline;
    /// a request that got a response, or of another method, never is.
    ///
    /// # Errors
    /// [`Error`] when the method is invalid, the path would change on the way, or the metadata
    /// service does not answer.
    pub async fn forward<'h>(
        &self,
        method: &str,
        path: &NormalPath<'_>,
        query: &str,
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
        body: Bytes,
    ) -> Result<Relayed, Error> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| Error::Method(method.to_string()))?;
        let idempotent = method == reqwest::Method::GET || method == reqwest::Method::HEAD;
        let url = self.url_for(path, query)?;
        let mut req = self.client.request(method, url);
        for (name, value) in headers {
            if !SKIPPED.iter().any(|s| name.eq_ignore_ascii_case(s)) {
                req = req.header(name, value);
            }
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        // A body of bytes always clones; kept only where a resend is allowed.
        let again = if idempotent { req.try_clone() } else { None };
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(first) => match (again, stale_connection(&first)) {
                (Some(again), Some(why)) => {
                    tracing::debug!(
                        operation = "pass_through",
                        path = %path.wire(),
                        why,
                        "connection closed before any response; resending once"
                    );
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    again.timeout(left).send().await?
                }
                _ => return Err(first.into()),
            },
        };
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter(|(n, _)| !SKIPPED.contains(&n.as_str()))
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let body = resp.bytes().await?;
        Ok(Relayed {
            status,
            headers,
            body,
        })
    }
}
