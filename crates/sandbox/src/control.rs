//! The sandbox's control endpoint: lets a script outside the process (the e2e suite) change
//! the simulated Azure's weather while the sandbox runs, and read what ARM was asked and
//! answered, with times, so a scenario can observe how MIC reacted.
//!
//! Loopback only, port 0; its address is `control` in the endpoints document. It is part of the
//! sandbox (a test tool), never of the product's binary.
//!
//! - `POST /azure/faults` `{"target": "arm-patch", "times": 1, "retryAfterSeconds": 4}`: the
//!   next `times` requests of `target` (`any-arm`, `arm-get`, `arm-patch`, `arm-poll`, `imds`,
//!   `aad`) are answered 429 with that `Retry-After` (or `"status": 503` for a plain error,
//!   `"answerLost": true` for a PATCH applied but unanswered, `"hang": true` for no answer).
//! - `POST /strike` `{"kind": "api_restart"}`: one of the scheduled faults of
//!   [`crate::weather::Strike`] now, by its label; answered at once (202), the fault runs on.
//! - `POST /kube/refuse-writes` `{"resource": "azureassignedidentities", "namespace": "default",
//!   "namePrefix": "demo", "status": 422, "times": 3}`: writes of those objects are refused with
//!   409, 422 or 500 (`times` absent: until `DELETE /kube/refuse-writes`).
//! - `GET /azure/requests`: every ARM request so far, `{"atMs", "method", "path", "status"}`,
//!   times in milliseconds since the sandbox started, on the simulator's own clock.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Weak};
use std::time::Instant;

use actix_web::{App, HttpResponse, HttpServer, web};
use serde::Deserialize;
use serde_json::json;

use aad_pod_identity_sim::azure::{AzureSimHandle, FaultKind, FaultTarget};
use aad_pod_identity_sim::kube::{KubeFaultHandle, Refusal, WriteRefusal};

use crate::weather::{CHAOS, Strike};

/// A fault to inject, as posted.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultRequest {
    target: String,
    #[serde(default = "one")]
    times: u32,
    retry_after_seconds: Option<u64>,
    status: Option<u16>,
    #[serde(default)]
    answer_lost: bool,
    #[serde(default)]
    hang: bool,
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
        let kind = match (
            self.retry_after_seconds,
            self.status,
            self.answer_lost,
            self.hang,
        ) {
            (Some(secs), None, false, false) if secs > 0 => FaultKind::Throttle {
                retry_after_secs: secs,
                as_http_date: false,
            },
            (None, Some(code), false, false) if (400..600).contains(&code) => {
                FaultKind::Status(code)
            }
            (None, None, true, false) if target == FaultTarget::ArmPatch => FaultKind::AnswerLost,
            (None, None, false, true) => FaultKind::Hang,
            _ => {
                return Err("give exactly one of retryAfterSeconds (> 0), status (400 to 599), answerLost (arm-patch only) or hang".into());
            }
        };
        Ok((target, kind))
    }
}

struct State {
    /// Weak, so that the sandbox's shutdown stays the simulator's last owner.
    azure: Weak<AzureSimHandle>,
    kube: KubeFaultHandle,
    epoch: Instant,
}

/// A scheduled fault to strike now, as posted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StrikeRequest {
    kind: String,
}

fn strike_named(label: &str) -> Result<Strike, String> {
    CHAOS
        .iter()
        .chain(&[Strike::Arm503])
        .copied()
        .find(|s| s.label() == label)
        .ok_or_else(|| {
            let known: Vec<_> = CHAOS.iter().map(|s| s.label()).collect();
            format!("unknown fault {label:?}: arm_503, {}", known.join(", "))
        })
}

async fn strike(state: web::Data<State>, body: web::Json<StrikeRequest>) -> HttpResponse {
    let Some(azure) = state.azure.upgrade() else {
        return gone();
    };
    match strike_named(&body.kind) {
        Ok(s) => {
            let kube = state.kube.clone();
            actix_web::rt::spawn(async move { crate::weather::strike(s, &azure, &kube).await });
            HttpResponse::Accepted().finish()
        }
        Err(e) => HttpResponse::BadRequest().json(json!({ "error": e })),
    }
}

/// Writes to refuse, as posted.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RefuseRequest {
    resource: String,
    namespace: Option<String>,
    #[serde(default)]
    name_prefix: String,
    status: u16,
    times: Option<u32>,
}

impl RefuseRequest {
    fn rule(self) -> Result<WriteRefusal, String> {
        let refusal = Refusal::from_status(self.status)
            .ok_or_else(|| format!("status {} is not one of 409, 422 or 500", self.status))?;
        if self.times == Some(0) || self.resource.is_empty() {
            return Err("give a resource (plural) and times > 0 (or none)".into());
        }
        Ok(WriteRefusal {
            plural: self.resource,
            namespace: self.namespace,
            name_prefix: self.name_prefix,
            refusal,
            remaining: self.times,
        })
    }
}

async fn refuse_writes(state: web::Data<State>, body: web::Json<RefuseRequest>) -> HttpResponse {
    match body.into_inner().rule() {
        Ok(rule) => {
            state.kube.faults().refuse_writes(rule);
            HttpResponse::NoContent().finish()
        }
        Err(e) => HttpResponse::BadRequest().json(json!({ "error": e })),
    }
}

async fn clear_refusals(state: web::Data<State>) -> HttpResponse {
    state.kube.faults().clear_refusals();
    HttpResponse::NoContent().finish()
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
    /// Starts the endpoint on 127.0.0.1, port 0, for `azure` and the Kubernetes simulator
    /// `kube`; times count from `epoch`.
    ///
    /// # Errors
    /// When the listener cannot be bound.
    pub fn start(
        azure: &Arc<AzureSimHandle>,
        kube: KubeFaultHandle,
        epoch: Instant,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let data = web::Data::new(State {
            azure: Arc::downgrade(azure),
            kube,
            epoch,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/azure/faults", web::post().to(faults))
                .route("/azure/requests", web::get().to(requests))
                .route("/strike", web::post().to(strike))
                .route("/kube/refuse-writes", web::post().to(refuse_writes))
                .route("/kube/refuse-writes", web::delete().to(clear_refusals))
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
        assert!(req(json!({"target": "arm-get", "answerLost": true})).is_err());
        assert!(req(json!({"target": "arm-patch", "answerLost": true, "hang": true})).is_err());
        assert_eq!(
            req(json!({"target": "arm-patch", "answerLost": true})),
            Ok((FaultTarget::ArmPatch, FaultKind::AnswerLost))
        );
    }

    #[test]
    fn strikes_are_named_by_their_log_labels_and_refusals_by_status() {
        assert_eq!(strike_named("api_restart"), Ok(Strike::ApiRestart));
        assert_eq!(strike_named("arm_503"), Ok(Strike::Arm503));
        assert!(strike_named("meteor").unwrap_err().contains("watch_410"));
        let rule = |v| serde_json::from_value::<RefuseRequest>(v).unwrap().rule();
        assert_eq!(
            rule(json!({"resource": "azureassignedidentities", "status": 422, "times": 2}))
                .unwrap()
                .refusal,
            Refusal::Invalid
        );
        assert!(rule(json!({"resource": "pods", "status": 404})).is_err());
        assert!(rule(json!({"resource": "pods", "status": 409, "times": 0})).is_err());
    }
}
