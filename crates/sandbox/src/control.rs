//! The sandbox's control endpoint: lets a script outside the process (the e2e suite) change
//! the simulated Azure's weather while the sandbox runs, and read what ARM was asked and
//! answered, with times, so a scenario can observe how MIC reacted.
//!
//! Loopback only, port 0; its address is `control` in the endpoints document. It is part of the
//! sandbox (a test tool), never of the product's binary.
//!
//! - `POST /azure/faults` `{"target": "arm-patch", "times": 1, "retryAfterSeconds": 4}`: the
//!   next `times` requests of `target` (`any-arm`, `arm-get`, `arm-patch`, `arm-poll`, `imds`,
//!   `aad`) are answered 429 with that `Retry-After` (or `"status": 503` for a plain error).
//! - `GET /azure/requests`: every ARM request so far, `{"atMs", "method", "path", "status"}`,
//!   times in milliseconds since the sandbox started, on the simulator's own clock.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Weak};
use std::time::Instant;

use actix_web::{App, HttpResponse, HttpServer, web};
use serde::Deserialize;
use serde_json::json;

use aad_pod_identity_sim::azure::{AzureSimHandle, FaultKind, FaultTarget};

/// A fault to inject, as posted.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultRequest {
    target: String,
    #[serde(default = "one")]
    times: u32,
    retry_after_seconds: Option<u64>,
    status: Option<u16>,
}

fn one() -> u32 {
    1
}

impl FaultRequest {
    /// What to inject, or why the request is refused.
    fn fault(&self) -> Result<(FaultTarget, FaultKind), String> {
        let target = match self.target.as_str() {
            "any-arm" => FaultTarget::AnyArm,
            "arm-get" => FaultTarget::ArmGet,
            "arm-patch" => FaultTarget::ArmPatch,
            "arm-poll" => FaultTarget::ArmPoll,
            "imds" => FaultTarget::Imds,
            "aad" => FaultTarget::Aad,
            other => {
                return Err(format!(
                    "unknown target {other:?}: any-arm, arm-get, arm-patch, arm-poll, imds or aad"
                ));
            }
        };
        let kind = match (self.retry_after_seconds, self.status) {
            (Some(secs), None) if secs > 0 => FaultKind::Throttle {
                retry_after_secs: secs,
                as_http_date: false,
            },
            (None, Some(code)) if (400..600).contains(&code) => FaultKind::Status(code),
            _ => {
                return Err(
                    "give exactly one of retryAfterSeconds (> 0) or status (400 to 599)".into(),
                );
            }
        };
        Ok((target, kind))
    }
}

struct State {
    /// Weak, so that the sandbox's shutdown stays the simulator's last owner.
    azure: Weak<AzureSimHandle>,
    epoch: Instant,
}

fn gone() -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({ "error": "the sandbox is stopping" }))
}

async fn faults(state: web::Data<State>, body: web::Json<FaultRequest>) -> HttpResponse {
    let Some(azure) = state.azure.upgrade() else {
        return gone();
    };
    match body.fault() {
        Ok((target, kind)) => {
            azure.inject(target, body.times, kind);
            HttpResponse::NoContent().finish()
        }
        Err(e) => HttpResponse::BadRequest().json(json!({ "error": e })),
    }
}

async fn requests(state: web::Data<State>) -> HttpResponse {
    let Some(azure) = state.azure.upgrade() else {
        return gone();
    };
    let log: Vec<_> = azure
        .request_log()
        .into_iter()
        .filter(|r| r.subscription.is_some())
        .map(|r| {
            json!({
                "atMs": r.at.saturating_duration_since(state.epoch).as_secs_f64() * 1000.0,
                "method": r.method,
                "path": r.path,
                "status": r.status,
            })
        })
        .collect();
    HttpResponse::Ok().json(log)
}

/// The running control endpoint.
pub struct Control {
    /// Where it listens.
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl Control {
    /// Starts the endpoint on 127.0.0.1, port 0, for `azure`; times count from `epoch`.
    ///
    /// # Errors
    /// When the listener cannot be bound.
    pub fn start(azure: &Arc<AzureSimHandle>, epoch: Instant) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let data = web::Data::new(State {
            azure: Arc::downgrade(azure),
            epoch,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/azure/faults", web::post().to(faults))
                .route("/azure/requests", web::get().to(requests))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Ok(Self { addr, handle })
    }

    /// Stops the endpoint.
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> Result<(FaultTarget, FaultKind), String> {
        serde_json::from_value::<FaultRequest>(v)
            .map_err(|e| e.to_string())?
            .fault()
    }

    #[test]
    fn a_throttle_on_arm_patches_is_a_429_with_retry_after_in_seconds() {
        assert_eq!(
            req(json!({"target": "arm-patch", "retryAfterSeconds": 4})),
            Ok((
                FaultTarget::ArmPatch,
                FaultKind::Throttle {
                    retry_after_secs: 4,
                    as_http_date: false
                }
            ))
        );
    }

    #[test]
    fn faults_that_say_too_little_or_too_much_are_refused() {
        assert!(req(json!({"target": "arm-patch"})).is_err());
        assert!(req(json!({"target": "arm-patch", "retryAfterSeconds": 0})).is_err());
        assert!(
            req(json!({"target": "arm-patch", "retryAfterSeconds": 2, "status": 503})).is_err()
        );
        assert!(req(json!({"target": "arm-patch", "status": 200})).is_err());
        assert!(req(json!({"target": "vm", "status": 503})).is_err());
        assert!(req(json!({"target": "arm-get", "status": 503, "extra": 1})).is_err());
        assert_eq!(
            req(json!({"target": "arm-get", "status": 503})),
            Ok((FaultTarget::ArmGet, FaultKind::Status(503)))
        );
    }
}
