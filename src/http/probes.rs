//! `/healthz` (and `/readyz`) on `--http-probe-port`, `/metrics` on `--prometheus-port`.
//!
//! `/healthz` keeps the original's contract while the process is alive (200; body `Active` or
//! `Not Active`), so the chart's liveness probe never kills an NMI that is still syncing; once a
//! supervised task has died for good it answers 500 naming the task, so the liveness probe
//! restarts the container. `/readyz` answers 503 until ready (and when dead), so a readiness
//! probe really gates traffic.

use actix_web::{App, HttpResponse, HttpServer, web};
use prometheus::{Encoder as _, Registry, TextEncoder};
use std::net::TcpListener;
use std::sync::Arc;

/// Something that can say whether the component is ready, and whether it is alive at all.
pub trait Readiness: Send + Sync + 'static {
    /// True when ready to serve.
    fn is_ready(&self) -> bool;

    /// `Err` with the reason once the component is dead (a task it cannot do without has
    /// failed for good); alive by default.
    ///
    /// # Errors
    /// Why the component is dead.
    fn liveness(&self) -> Result<(), String> {
        Ok(())
    }
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
                    match r.liveness() {
                        Ok(()) => HttpResponse::Ok()
                            .content_type("text/plain; charset=utf-8")
                            .body(body(r.is_ready())),
                        Err(why) => HttpResponse::InternalServerError()
                            .content_type("text/plain; charset=utf-8")
                            .body(format!("Not Active: {why}")),
                    }
                }),
            )
            .route(
                "/readyz",
                web::get().to(|r: web::Data<dyn Readiness>| async move {
                    let ready = r.is_ready() && r.liveness().is_ok();
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
