//! `/healthz` (and `/readyz`) on `--http-probe-port`, `/metrics` on `--prometheus-port`.
//!
//! `/healthz` keeps the original's contract (always 200; body `Active` or `Not Active`) so the
//! chart's liveness probe never kills an NMI that is still syncing; `/readyz` answers 503 until
//! ready, so a readiness probe really gates traffic.

use actix_web::{App, HttpResponse, HttpServer, web};
use prometheus::{Encoder as _, Registry, TextEncoder};
use std::net::TcpListener;
use std::sync::Arc;

/// Something that can say whether the component is ready.
pub trait Readiness: Send + Sync + 'static {
    /// True when ready to serve.
    fn is_ready(&self) -> bool;
}

fn body(ready: bool) -> &'static str {
    if ready { "Active" } else { "Not Active" }
}

/// Serves `/healthz` and `/readyz` on `listener`.
///
/// # Errors
/// When the server cannot take the listener.
pub fn serve_health(
    listener: TcpListener,
    readiness: Arc<dyn Readiness>,
) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::from(readiness);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route(
                "/healthz",
                web::get().to(|r: web::Data<dyn Readiness>| async move {
                    HttpResponse::Ok()
                        .content_type("text/plain; charset=utf-8")
                        .body(body(r.is_ready()))
                }),
            )
            .route(
                "/readyz",
                web::get().to(|r: web::Data<dyn Readiness>| async move {
                    let ready = r.is_ready();
                    let mut resp = if ready {
                        HttpResponse::Ok()
                    } else {
                        HttpResponse::ServiceUnavailable()
                    };
                    resp.content_type("text/plain; charset=utf-8")
                        .body(body(ready))
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .listen(listener)?
    .run())
}

/// Serves the registry's metrics in the Prometheus text format at `/metrics` on `listener`.
///
/// # Errors
/// When the server cannot take the listener.
pub fn serve_metrics(
    listener: TcpListener,
    registry: Registry,
) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::new(registry);
    Ok(HttpServer::new(move || {
        App::new().app_data(data.clone()).route(
            "/metrics",
            web::get().to(|r: web::Data<Registry>| async move {
                let mut buf = Vec::new();
                match TextEncoder::new().encode(&r.gather(), &mut buf) {
                    Ok(()) => HttpResponse::Ok()
                        .content_type("text/plain; version=0.0.4")
                        .body(buf),
                    Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .listen(listener)?
    .run())
}
