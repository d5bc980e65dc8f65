//! Pass-through of every non-token request to the metadata service: method, headers, body and
//! the answer's status, headers and body, as the original does.

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
    /// The metadata service could not be reached or its answer read.
    #[error("failed executing request to the metadata service: {0}")]
    Upstream(#[from] reqwest::Error),
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
    base: String,
}

impl Proxy {
    /// A proxy to `base` (e.g. `http://127.0.0.1:8181`).
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: impl Into<String>, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            // Relay bodies byte for byte: no transparent decompression, no redirects followed.
            .no_gzip()
            .no_deflate()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()?;
        Ok(Self {
            client,
            base: base.into(),
        })
    }

    /// Sends one request and reads the whole answer.
    ///
    /// # Errors
    /// [`Error`] when the method is invalid or the metadata service does not answer.
    pub async fn forward<'h>(
        &self,
        method: &str,
        path_and_query: &str,
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
        body: Bytes,
    ) -> Result<Relayed, Error> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| Error::Method(method.to_string()))?;
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path_and_query));
        for (name, value) in headers {
            if !SKIPPED.iter().any(|s| name.eq_ignore_ascii_case(s)) {
                req = req.header(name, value);
            }
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        let resp = req.send().await?;
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
