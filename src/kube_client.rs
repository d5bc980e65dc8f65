//! The one place Kubernetes clients are built, for MIC and NMI alike: the kubeconfig given (else
//! in-cluster configuration or `$KUBECONFIG`), the original's User-Agent on every request, and,
//! when asked, a client-side request rate (MIC's `--clientQps`).
//!
//! The rate works as client-go's does for the original: every request (a list, a write, the
//! start of a watch) waits for its turn; at most `burst` go out in one window and the windows
//! add up to `qps` per second. It is a tower layer under kube's request buffer, so requests
//! queue in the order they were made.

use std::path::Path;
use std::time::Duration;

/// The longest a request waits for the API server's next bytes.
pub const READ_TIMEOUT: Duration = Duration::from_secs(295);

/// What went wrong building a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used, or no in-cluster configuration was found.
    #[error("Kubernetes client configuration failed: {0}")]
    Config(String),
}

/// How a client behaves beyond its kubeconfig.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientOptions {
    /// `User-Agent` of every request ([`crate::version::user_agent`]).
    pub user_agent: String,
    /// Requests per second allowed, or `None` for no client-side limit.
    pub qps: Option<f32>,
}

/// The connection settings: `kubeconfig` when given, else in-cluster or `$KUBECONFIG`.
///
/// # Errors
/// [`Error::Config`] naming the file or what inference found missing.
pub async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, Error> {
    match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Config(e.to_string())),
    }
}

/// A client for `config` with `options` applied.
///
/// # Errors
/// [`Error::Config`] when the user agent is not a valid header value or the client cannot be
/// built (TLS material, proxy).
pub fn client(config: kube::Config, options: &ClientOptions) -> Result<kube::Client, Error> {
    fenced_client(config, options, None)
}

/// [`client`], with MIC's leadership fence under the request rate when given, so each write is
/// checked as it is sent, after any `--clientQps` wait ([`crate::actors::mic::fence`]).
///
/// # Errors
/// As [`client`].
pub fn fenced_client(
    mut config: kube::Config,
    options: &ClientOptions,
    fence: Option<crate::actors::mic::fence::FenceLayer>,
) -> Result<kube::Client, Error> {
    let ua = http::HeaderValue::from_str(&options.user_agent)
        .map_err(|e| Error::Config(format!("user agent {:?}: {e}", options.user_agent)))?;
    config
        .headers
        .retain(|(k, _)| k != http::header::USER_AGENT);
    config.headers.push((http::header::USER_AGENT, ua));
    // kube leaves reads unbounded; a half-open connection (an API server failover, a dropped
    // NAT entry) would then hang a call for good, and a leader stuck in a renewal would never
    // notice it lost the lease. Counted from when the request is written, and above the 290 s a
    // watch asks the server to stay open, so only a dead connection trips it.
    if config.read_timeout.is_none() {
        config.read_timeout = Some(READ_TIMEOUT);
        config.reset_reader_on_write = true;
    }
    let builder =
        kube::client::ClientBuilder::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
    let limit = options.qps.map(|q| {
        let (n, per) = rate(q);
        tower::limit::RateLimitLayer::new(n, per)
    });
    Ok(builder
        .with_layer(&tower::util::option_layer(fence))
        .with_layer(&tower::util::option_layer(limit))
        .build())
}

/// [`config`] then [`client`].
///
/// # Errors
/// As those.
pub async fn connect(
    kubeconfig: Option<&Path>,
    options: &ClientOptions,
) -> Result<kube::Client, Error> {
    client(config(kubeconfig).await?, options)
}

/// A rate of `qps` requests per second as tower's windows: `burst` requests per `window`,
/// with `burst` the whole part of `qps` (at least 1), as client-go's burst for the original
/// was `int(clientQps)`.
#[must_use]
pub fn rate(qps: f32) -> (u64, Duration) {
    let qps = f64::from(qps).max(0.001);
    // Truncation is the point: client-go's burst was int(qps).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let burst = (qps.floor() as u64).max(1);
    #[allow(clippy::cast_precision_loss)]
    let window = Duration::from_secs_f64(burst as f64 / qps);
    (burst, window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer as _, Service, ServiceExt as _};

    /// A server that takes the connection and never answers: the call fails after
    /// [`READ_TIMEOUT`] instead of hanging (paused clock; the socket is real).
    #[tokio::test(start_paused = true)]
    async fn a_call_to_a_server_that_never_answers_fails_after_the_read_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(sock);
        });
        let mut config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        config.connect_timeout = None;
        let client = client(
            config,
            &ClientOptions {
                user_agent: "test".into(),
                qps: None,
            },
        )
        .unwrap();
        let start = tokio::time::Instant::now();
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::default_namespaced(client);
        let r = tokio::time::timeout(READ_TIMEOUT * 2, pods.get_opt("p")).await;
        let err = r.expect("the call hung past the read timeout").unwrap_err();
        assert!(start.elapsed() >= READ_TIMEOUT, "{err}");
        held.abort();
    }

    #[test]
    fn rates_become_windows_that_add_up_to_the_qps() {
        assert_eq!(rate(5.0), (5, Duration::from_secs(1)));
        assert_eq!(rate(0.5), (1, Duration::from_secs(2)));
        assert_eq!(rate(2.5), (2, Duration::from_millis(800)));
    }

    /// The layer as [`client`] stacks it, driven the way kube's buffer drives it (ready, then
    /// call), under a paused clock: 20 requests at 5 per second take 3 seconds of waiting.
    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_rate_wait_for_the_next_window() {
        let (n, per) = rate(5.0);
        let mut svc = tower::util::option_layer(Some(tower::limit::RateLimitLayer::new(n, per)))
            .layer(tower::service_fn(|_: ()| async { Ok::<_, Infallible>(()) }));
        let start = tokio::time::Instant::now();
        let mut times = Vec::new();
        for _ in 0..20 {
            svc.ready().await.unwrap();
            svc.call(()).await.unwrap();
            times.push(start.elapsed());
        }
        assert_eq!(times[4], Duration::ZERO, "the first burst goes at once");
        assert_eq!(times[5], Duration::from_secs(1));
        assert_eq!(times[19], Duration::from_secs(3));
        let mut unlimited = tower::util::option_layer(None::<tower::limit::RateLimitLayer>)
            .layer(tower::service_fn(|_: ()| async { Ok::<_, Infallible>(()) }));
        for _ in 0..100 {
            unlimited.ready().await.unwrap();
            unlimited.call(()).await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
