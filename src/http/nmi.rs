//! NMI's main HTTP surface on `--nmi-listen-address:--nmi-port`: the token endpoint, the 400 for
//! malformed token paths, `/host/token`, blocking of `/metadata/instance`, and pass-through of
//! everything else to the metadata service. Statuses and bodies are the original's.
//!
//! One default service dispatches on [`classify`], so backslash paths and the case rules are
//! decided by one tested function rather than by router patterns. The token hot path reads
//! concurrent maps directly (no actor mailbox) and renders a cached token into one buffer.

use super::proxy::Proxy;
use super::request::{Route, TokenQuery, classify, decode_path};
use crate::actors::nmi::broker::{Answer, Broker, BrokerError};
use crate::actors::nmi::metrics::NmiMetrics;
use crate::actors::nmi::source::unix_now;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

/// Body of the 400 for a missing `Metadata: true` header (the original's JSON plus newline).
pub const METADATA_HEADER_ERROR: &str = "{\"error\":\"invalid_request\",\"error_description\":\"Required metadata header not specified\"}\n";

/// How the HTTP surface behaves (from the NMI flags).
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// `--block-instance-metadata`: answer 403 to `/metadata/instance`.
    pub block_instance_metadata: bool,
    /// `--metadata-header-required`: refuse requests without `Metadata: true`.
    pub metadata_header_required: bool,
    /// `--set-retry-after-header`: answer "not found" with 503 and `Retry-After: 20`.
    pub set_retry_after_header: bool,
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
    let data = web::Data::from(state);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(1 << 20))
            .default_service(web::to(dispatch))
    })
    .workers(workers.max(1))
    .disable_signals()
    .shutdown_timeout(2)
    .listen(listener)?
    .run())
}

async fn dispatch(req: HttpRequest, body: web::Bytes, state: web::Data<NmiHttp>) -> HttpResponse {
    let path = decode_path(req.path());
    match classify(&path) {
        Route::Token => token(&req, &state).await,
        Route::InvalidToken => text(StatusCode::BAD_REQUEST, "Invalid request"),
        Route::HostToken => host_token(&req, &state).await,
        Route::Instance if state.settings.block_instance_metadata => text(
            StatusCode::FORBIDDEN,
            "Request blocked by AAD Pod Identity NMI",
        ),
        Route::Instance | Route::Other => pass_through(&req, body, &state).await,
    }
}

/// A plain-text error as Go's `http.Error` writes it.
fn text(status: StatusCode, msg: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("Content-Type", "text/plain; charset=utf-8"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(format!("{msg}\n"))
}

fn metadata_header_error() -> HttpResponse {
    HttpResponse::BadRequest()
        .insert_header(("Content-Type", "application/json; charset=utf-8"))
        .body(METADATA_HEADER_ERROR)
}

fn has_metadata_header(req: &HttpRequest) -> bool {
    req.headers()
        .get("Metadata")
        .is_some_and(|v| v.as_bytes() == b"true")
}

fn broker_error(e: &BrokerError, retry_after: bool) -> HttpResponse {
    if retry_after && e.is_not_found() {
        let mut r = text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
        r.headers_mut().insert(
            HeaderName::from_static("retry-after"),
            HeaderValue::from_static("20"),
        );
        return r;
    }
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    text(status, &e.to_string())
}

fn json(body: bytes::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Content-Type", "application/json"))
        .body(body)
}

fn record(
    state: &NmiHttp,
    started: Instant,
    operation: &str,
    status: StatusCode,
    namespace: &str,
    resource: &str,
    result: &str,
) {
    if let Some(m) = &state.metrics {
        let secs = started.elapsed().as_secs_f64();
        m.token_latency.with_label_values(&[result]).observe(secs);
        let mut code = [0u8; 3];
        let code = status_digits(status, &mut code);
        m.operations
            .with_label_values(&[operation, code, namespace, resource])
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

async fn token(req: &HttpRequest, state: &NmiHttp) -> HttpResponse {
    let started = Instant::now();
    if state.settings.metadata_header_required && !has_metadata_header(req) {
        tracing::warn!(path = req.path(), "metadata header is not specified");
        let r = metadata_header_error();
        record(
            state,
            started,
            req.path(),
            r.status(),
            "",
            "",
            "bad_request",
        );
        return r;
    }
    let Some(peer) = req.peer_addr() else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "request remote address is empty",
        );
    };
    let query = TokenQuery::parse(req.query_string());
    let Some(resource) = query.resource.as_deref() else {
        let r = text(
            StatusCode::BAD_REQUEST,
            "parameter resource cannot be empty",
        );
        record(
            state,
            started,
            req.path(),
            r.status(),
            "",
            "",
            "bad_request",
        );
        return r;
    };
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
                req.path(),
                r.status(),
                &namespace,
                resource,
                "ok",
            );
            r
        }
        Err(e) => {
            tracing::warn!(ip = %peer.ip(), error = %e, "token request failed");
            let r = broker_error(&e, state.settings.set_retry_after_header);
            record(
                state,
                started,
                req.path(),
                r.status(),
                "",
                resource,
                e.metric_label(),
            );
            r
        }
    }
}

async fn host_token(req: &HttpRequest, state: &NmiHttp) -> HttpResponse {
    let started = Instant::now();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let (podns, podname) = (header("podns"), header("podname"));
    if podns.is_empty() || podname.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "missing 'podname' and 'podns' from request header",
        );
    }
    let from_host = req
        .peer_addr()
        .is_some_and(|p| p.ip().to_canonical() == IpAddr::V4(Ipv4Addr::LOCALHOST));
    if !from_host {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "request remote address is not from a host",
        );
    }
    let query = TokenQuery::parse(req.query_string());
    let Some(resource) = query.resource.as_deref() else {
        return text(
            StatusCode::BAD_REQUEST,
            "parameter resource cannot be empty",
        );
    };
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
                req.path(),
                r.status(),
                podns,
                resource,
                "ok",
            );
            r
        }
        Err(e) => {
            tracing::warn!(pod = %format_args!("{podns}/{podname}"), error = %e, "host token request failed");
            // The original answers 404 for every identity lookup failure here, without Retry-After.
            let r = broker_error(&e, false);
            record(
                state,
                started,
                req.path(),
                r.status(),
                podns,
                resource,
                e.metric_label(),
            );
            r
        }
    }
}

async fn pass_through(req: &HttpRequest, body: web::Bytes, state: &NmiHttp) -> HttpResponse {
    if state.settings.metadata_header_required && !has_metadata_header(req) {
        return metadata_header_error();
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", actix_web::http::uri::PathAndQuery::as_str);
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()));
    match state
        .proxy
        .forward(req.method().as_str(), path_and_query, headers, body)
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
            resp.body(relayed.body)
        }
        Err(e) => {
            tracing::warn!(error = %e, "metadata pass-through failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}
