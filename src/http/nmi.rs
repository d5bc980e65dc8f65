//! NMI's main HTTP surface on `--nmi-listen-address:--nmi-port`: the token endpoint, the 400 for
//! malformed paths, `/host/token`, blocking of `/metadata/instance`, and pass-through of
//! everything else to the metadata service. Statuses and bodies are the original's.
//!
//! One default service normalises the path once ([`normalize`]) and dispatches on its route, so
//! dot segments, encodings, backslashes and case are decided by one tested function rather than
//! by router patterns, and the pass-through forwards that same normalised path. The token hot
//! path reads concurrent maps directly (no actor mailbox) and renders a cached token into one
//! buffer.
//!
//! What a client can hold is bounded: connections per source address (excess answered 429 and
//! closed), relayed requests in flight (503), the time to send a relayed body (408), and waiting
//! token requests (in the broker). Metric labels come from fixed sets only.

use super::error::NmiError;
use super::proxy::Proxy;
use super::request::{NormalPath, Route, TokenQuery, normalize};
use crate::actors::nmi::broker::{Answer, Broker};
use crate::actors::nmi::metrics::{NmiMetrics, Rejection, resource_label};
use crate::actors::nmi::source::unix_now;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, ResponseError as _, web};
use dashmap::DashMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use super::error::METADATA_HEADER_ERROR;

/// How the HTTP surface behaves (from the NMI flags).
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// `--block-instance-metadata`: answer 403 to `/metadata/instance`.
    pub block_instance_metadata: bool,
    /// `--metadata-header-required`: refuse requests without `Metadata: true`.
    pub metadata_header_required: bool,
    /// `--set-retry-after-header`: answer "not found" with 503 and `Retry-After: 20`.
    pub set_retry_after_header: bool,
    /// `--max-pass-through`: relayed requests in flight at once; more are answered 503.
    pub max_pass_through: usize,
    /// `--pass-through-body-timeout`: time a caller has to send a relayed request's body.
    pub pass_through_body_timeout: Duration,
    /// `--max-connections-per-source`: open connections one address may hold; requests on more
    /// are answered 429 and their connection closed.
    pub max_connections_per_source: usize,
}

/// Everything the handlers share.
pub struct NmiHttp {
    /// The token flow.
    pub broker: Arc<Broker>,
    /// The pass-through.
    pub proxy: Proxy,
    /// Behaviour flags.
    pub settings: HttpSettings,
    /// Metrics, if any.
    pub metrics: Option<NmiMetrics>,
    /// Places for relayed requests in flight.
    pass_through_slots: Semaphore,
    /// Open connections per source address.
    connections: Arc<DashMap<IpAddr, usize>>,
    /// Cancelled when NMI begins to stop: requests still in flight are answered
    /// [`NmiError::ShuttingDown`] instead of being cut when the server closes.
    stopping: CancellationToken,
}

impl NmiHttp {
    /// The handlers' state.
    #[must_use]
    pub fn new(
        broker: Arc<Broker>,
        proxy: Proxy,
        settings: HttpSettings,
        metrics: Option<NmiMetrics>,
    ) -> Self {
        Self {
            pass_through_slots: Semaphore::new(settings.max_pass_through.max(1)),
            connections: Arc::new(DashMap::new()),
            stopping: CancellationToken::new(),
            broker,
            proxy,
            settings,
            metrics,
        }
    }

    /// The same state, answering requests in flight [`NmiError::ShuttingDown`] once `stopping`
    /// is cancelled.
    #[must_use]
    pub fn with_stopping(mut self, stopping: CancellationToken) -> Self {
        self.stopping = stopping;
        self
    }

    fn reject(&self, why: Rejection) {
        if let Some(m) = &self.metrics {
            m.reject(why);
        }
    }

    /// Open connections from `ip` (for tests: nothing is left behind when they close).
    #[must_use]
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        self.connections.get(&ip).map_or(0, |n| *n)
    }
}

/// One open connection, counted against its source address while it lives (the server keeps
/// it with the connection and drops it when the connection closes).
struct Connection {
    ip: IpAddr,
    over_limit: bool,
    counts: Arc<DashMap<IpAddr, usize>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(mut n) = self.counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
        }
        self.counts.remove_if(&self.ip, |_, n| *n == 0);
    }
}

/// Serves NMI on `listener` with `workers` worker threads.
///
/// # Errors
/// When the server cannot take the listener.
pub fn serve(
    listener: TcpListener,
    state: Arc<NmiHttp>,
    workers: usize,
) -> std::io::Result<actix_web::dev::Server> {
    let counts = Arc::clone(&state.connections);
    let limit = state.settings.max_connections_per_source.max(1);
    let data = web::Data::from(state);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(dispatch))
    })
    .on_connect(move |conn, ext| {
        let Some(ip) = conn
            .downcast_ref::<actix_web::rt::net::TcpStream>()
            .and_then(|s| s.peer_addr().ok())
            .map(|a| a.ip().to_canonical())
        else {
            return;
        };
        let open = {
            let mut n = counts.entry(ip).or_insert(0);
            *n += 1;
            *n
        };
        ext.insert(Connection {
            ip,
            over_limit: open > limit,
            counts: Arc::clone(&counts),
        });
    })
    .workers(workers.max(1))
    // A request head must arrive within 5 s and an idle connection is closed after 30 s, so a
    // slow or silent client holds a connection only briefly.
    .client_request_timeout(Duration::from_secs(5))
    .client_disconnect_timeout(Duration::from_secs(1))
    .keep_alive(Duration::from_secs(30))
    .disable_signals()
    .shutdown_timeout(2)
    .listen(listener)?
    .run())
}

/// Largest request body relayed to the metadata service.
const MAX_BODY: usize = 1 << 20;

async fn dispatch(req: HttpRequest, body: web::Payload, state: web::Data<NmiHttp>) -> HttpResponse {
    // A request that completes at once (a cached token) is answered even while stopping;
    // one that waits (for its pod, its assignment, a fetch) is answered 503 as soon as NMI
    // begins to stop, before the server's short drain would cut it without an answer.
    let answer = tokio::select! {
        biased;
        r = route(&req, body, &state) => r,
        () = state.stopping.cancelled() => {
            state.reject(Rejection::ShuttingDown);
            Err(NmiError::ShuttingDown)
        }
    };
    answer.unwrap_or_else(|e| e.error_response())
}

async fn route(
    req: &HttpRequest,
    body: web::Payload,
    state: &NmiHttp,
) -> Result<HttpResponse, NmiError> {
    if req.conn_data::<Connection>().is_some_and(|c| c.over_limit) {
        state.reject(Rejection::ConnectionsPerSource);
        return Err(NmiError::TooManyConnections);
    }
    let path = normalize(req.path()).map_err(|_| NmiError::InvalidRequest)?;
    match path.route() {
        Route::Token => token(req, state).await,
        Route::Invalid => Err(NmiError::InvalidRequest),
        Route::HostToken => host_token(req, state).await,
        Route::Instance if state.settings.block_instance_metadata => Err(NmiError::InstanceBlocked),
        Route::Instance | Route::Other => pass_through(req, &path, body, state).await,
    }
}

fn has_metadata_header(req: &HttpRequest) -> bool {
    req.headers()
        .get("Metadata")
        .is_some_and(|v| v.as_bytes() == b"true")
}

fn json(body: bytes::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Content-Type", "application/json"))
        .body(body)
}

/// Records one token request. Every label is from a fixed set: the route's name, the status,
/// the namespace of a pod NMI knows (never one named by the caller) and the resource's
/// [`resource_label`].
fn record(
    state: &NmiHttp,
    started: Instant,
    route: Route,
    status: StatusCode,
    namespace: &str,
    resource: &str,
    result: &str,
) {
    if let Some(m) = &state.metrics {
        let secs = started.elapsed().as_secs_f64();
        if result == "ok" {
            m.token_ok.observe(secs);
        } else {
            m.token_latency.with_label_values(&[result]).observe(secs);
        }
        let mut code = [0u8; 3];
        let code = status_digits(status, &mut code);
        m.operations
            .with_label_values(&[route.label(), code, namespace, resource_label(resource)])
            .observe(secs);
    }
}

fn status_digits(status: StatusCode, buf: &mut [u8; 3]) -> &str {
    let n = status.as_u16();
    // A status code is always three digits.
    buf[0] = b'0' + u8::try_from(n / 100 % 10).unwrap_or(0);
    buf[1] = b'0' + u8::try_from(n / 10 % 10).unwrap_or(0);
    buf[2] = b'0' + u8::try_from(n % 10).unwrap_or(0);
    std::str::from_utf8(buf).unwrap_or("000")
}

async fn token(req: &HttpRequest, state: &NmiHttp) -> Result<HttpResponse, NmiError> {
    let started = Instant::now();
    let bad_request = |e: NmiError| {
        record(
            state,
            started,
            Route::Token,
            e.status_code(),
            "",
            "",
            "bad_request",
        );
        e
    };
    if state.settings.metadata_header_required && !has_metadata_header(req) {
        tracing::warn!(path = req.path(), "metadata header is not specified");
        return Err(bad_request(NmiError::MetadataHeaderMissing));
    }
    let peer = req.peer_addr().ok_or(NmiError::NoRemoteAddress)?;
    let query = TokenQuery::parse(req.query_string());
    let resource = query
        .resource
        .as_deref()
        .ok_or_else(|| bad_request(NmiError::ResourceMissing))?;
    match state
        .broker
        .token_for_ip(peer.ip(), query.wanted(), resource)
        .await
    {
        Ok(Answer {
            token, namespace, ..
        }) => {
            let r = json(token.token.render(unix_now()));
            record(
                state,
                started,
                Route::Token,
                r.status(),
                &namespace,
                resource,
                "ok",
            );
            Ok(r)
        }
        Err(error) => {
            tracing::warn!(ip = %peer.ip(), error = %error, "token request failed");
            let label = error.metric_label();
            let e = NmiError::Broker {
                error,
                retry_after: state.settings.set_retry_after_header,
            };
            let ns = state.broker.namespace_of(peer.ip());
            record(
                state,
                started,
                Route::Token,
                e.status_code(),
                ns.as_deref().unwrap_or(""),
                resource,
                label,
            );
            Err(e)
        }
    }
}

async fn host_token(req: &HttpRequest, state: &NmiHttp) -> Result<HttpResponse, NmiError> {
    let started = Instant::now();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let (podns, podname) = (header("podns"), header("podname"));
    if podns.is_empty() || podname.is_empty() {
        return Err(NmiError::PodHeadersMissing);
    }
    let from_host = req
        .peer_addr()
        .is_some_and(|p| p.ip().to_canonical() == IpAddr::V4(Ipv4Addr::LOCALHOST));
    if !from_host {
        return Err(NmiError::NotFromHost);
    }
    let query = TokenQuery::parse(req.query_string());
    let resource = query.resource.as_deref().ok_or(NmiError::ResourceMissing)?;
    match state
        .broker
        .token_for_named_pod(podns, podname, query.wanted(), resource)
        .await
    {
        Ok(a) => {
            let r = json(a.token.token.render_host(unix_now(), &a.client_id));
            record(
                state,
                started,
                Route::HostToken,
                r.status(),
                &a.namespace,
                resource,
                "ok",
            );
            Ok(r)
        }
        Err(error) => {
            tracing::warn!(pod = %format_args!("{podns}/{podname}"), error = %error, "host token request failed");
            let label = error.metric_label();
            // The original answers 404 for every identity lookup failure here, without Retry-After.
            let e = NmiError::Broker {
                error,
                retry_after: false,
            };
            // The namespace label only ever names a pod NMI knows, never a header's value.
            let ns = state
                .broker
                .pods
                .by_key(&crate::object_key::ObjectKey::new(podns, podname))
                .map(|p| Arc::clone(&p.namespace));
            record(
                state,
                started,
                Route::HostToken,
                e.status_code(),
                ns.as_deref().unwrap_or(""),
                resource,
                label,
            );
            Err(e)
        }
    }
}

async fn pass_through(
    req: &HttpRequest,
    path: &NormalPath<'_>,
    body: web::Payload,
    state: &NmiHttp,
) -> Result<HttpResponse, NmiError> {
    if state.settings.metadata_header_required && !has_metadata_header(req) {
        return Err(NmiError::MetadataHeaderMissing);
    }
    // Only the pass-through reads the body, so the token hot path never touches it.
    let read = body.to_bytes_limited(MAX_BODY);
    let body = match tokio::time::timeout(state.settings.pass_through_body_timeout, read).await {
        Ok(Ok(Ok(b))) => b,
        Ok(Ok(Err(e))) => return Err(NmiError::BodyUnreadable(e.to_string())),
        Ok(Err(_)) => return Err(NmiError::BodyTooLarge),
        Err(_) => {
            state.reject(Rejection::BodyTimeout);
            return Err(NmiError::BodyTimeout);
        }
    };
    // The body is read before a relay place is taken, so a slow sender holds only its own
    // connection, never one of the places every pod's relayed requests share.
    let Ok(_place) = state.pass_through_slots.try_acquire() else {
        state.reject(Rejection::PassThroughBusy);
        return Err(NmiError::PassThroughBusy);
    };
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()));
    match state
        .proxy
        .forward(
            req.method().as_str(),
            path,
            req.query_string(),
            headers,
            body,
        )
        .await
    {
        Ok(relayed) => {
            let status = StatusCode::from_u16(relayed.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut resp = HttpResponse::build(status);
            for (name, value) in &relayed.headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_bytes(value),
                ) {
                    resp.append_header((n, v));
                }
            }
            Ok(resp.body(relayed.body))
        }
        Err(e) => {
            // The path and the kind of failure, never the query: it is the pod's own text.
            let answer = NmiError::PassThroughFailed(e.to_string());
            tracing::warn!(
                method = %req.method(),
                path = %path.wire(),
                failure = e.kind(),
                status = answer.status_code().as_u16(),
                error = %e,
                "metadata pass-through failed"
            );
            Err(answer)
        }
    }
}
