//! The real Prometheus server's side of a run: the file-based target list it watches, and
//! queries through its HTTP API (`/api/v1/query`, `/api/v1/query_range`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Error;

/// A Prometheus server on loopback.
#[derive(Clone, Debug)]
pub struct Prometheus {
    base: url::Url,
    http: reqwest::Client,
}

/// Writes the file-based service discovery document: MIC's and every NMI's metrics address,
/// labelled `component="mic"` / `component="nmi"`.
///
/// # Errors
/// [`Error::File`] when the file cannot be written.
pub fn write_targets(path: &Path, mic: SocketAddr, nmis: &[SocketAddr]) -> Result<(), Error> {
    write_all_targets(path, &[mic], nmis)
}

/// [`write_targets`] for several MIC processes (the chaos scenario's leader and standby).
///
/// # Errors
/// [`Error::File`] when the file cannot be written.
pub fn write_all_targets(
    path: &Path,
    mics: &[SocketAddr],
    nmis: &[SocketAddr],
) -> Result<(), Error> {
    let doc = json!([
        {"targets": mics.iter().map(ToString::to_string).collect::<Vec<_>>(), "labels": {"component": "mic"}},
        {"targets": nmis.iter().map(ToString::to_string).collect::<Vec<_>>(), "labels": {"component": "nmi"}},
    ]);
    // Written next to the target and renamed, so Prometheus never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| Error::File {
            path: path.display().to_string(),
            source,
        })
}

impl Prometheus {
    /// A client for the server at `base` (which must be a loopback address).
    ///
    /// # Errors
    /// [`Error::Prometheus`] for a bad URL or a non-loopback host.
    pub fn new(base: &str) -> Result<Self, Error> {
        let base = url::Url::parse(base).map_err(|e| Error::Prometheus(format!("{base}: {e}")))?;
        let loopback = match base.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if !loopback {
            return Err(Error::Prometheus(format!(
                "{base} is not on loopback; load tests talk to 127.0.0.0/8 only"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Prometheus(e.to_string()))?;
        Ok(Self { base, http })
    }

    async fn api(&self, path: &str, params: &[(&str, String)]) -> Result<Value, Error> {
        let mut url = self
            .base
            .join(path)
            .map_err(|e| Error::Prometheus(e.to_string()))?;
        url.query_pairs_mut().extend_pairs(params);
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| Error::Prometheus(format!("{path}: {e}")))?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::Prometheus(format!("{path}: {e}")))?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::Prometheus(format!("{path}: not JSON: {e}")))?;
        if v["status"] != "success" {
            return Err(Error::Prometheus(format!(
                "{path} {params:?}: {}",
                v["error"].as_str().unwrap_or("failed")
            )));
        }
        Ok(v["data"].clone())
    }

    /// An instant query; the result vector as (labels, value).
    ///
    /// # Errors
    /// [`Error::Prometheus`] when the server refuses or cannot be reached.
    pub async fn query(&self, q: &str) -> Result<Vec<(Value, f64)>, Error> {
        let data = self
            .api("api/v1/query", &[("query", q.to_string())])
            .await?;
        Ok(data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let v = r["value"][1].as_str()?.parse::<f64>().ok()?;
                Some((r["metric"].clone(), v))
            })
            .collect())
    }

    /// An instant query expected to give one number (`None` for an empty result or NaN).
    ///
    /// # Errors
    /// [`Error::Prometheus`] when the server refuses or cannot be reached.
    pub async fn scalar(&self, q: &str) -> Result<Option<f64>, Error> {
        Ok(self
            .query(q)
            .await?
            .first()
            .map(|(_, v)| *v)
            .filter(|v| v.is_finite()))
    }

    /// A range query over `[start, end]` (Unix seconds) of a one-series expression.
    ///
    /// # Errors
    /// [`Error::Prometheus`] when the server refuses or cannot be reached.
    pub async fn range(
        &self,
        q: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<Vec<(f64, f64)>, Error> {
        let data = self
            .api(
                "api/v1/query_range",
                &[
                    ("query", q.to_string()),
                    ("start", format!("{start:.3}")),
                    ("end", format!("{end:.3}")),
                    ("step", format!("{step}")),
                ],
            )
            .await?;
        Ok(data["result"][0]["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse::<f64>().ok()?)))
            .collect())
    }

    /// Waits (bounded by `limit`, checking twice a second) until `q` is at least `want`.
    ///
    /// # Errors
    /// [`Error::Prometheus`] when the value is not reached in time.
    pub async fn wait_for(&self, q: &str, want: f64, limit: Duration) -> Result<f64, Error> {
        let end = Instant::now() + limit;
        let mut last = None;
        while Instant::now() < end {
            match self.scalar(q).await {
                Ok(Some(v)) if v >= want => return Ok(v),
                Ok(v) => last = v,
                Err(e) => tracing::debug!(error = %e, "Prometheus not answering yet"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(Error::Prometheus(format!(
            "`{q}` did not reach {want} within {limit:?} (last {last:?})"
        )))
    }
}
