//! ARM as the simulator serves it: routes for VMs, scale sets, user-assigned identities and
//! long-running operations; bearer-token checks; injected faults; the per-subscription write
//! budget and its 429 `Retry-After` windows; identity PATCHes with `If-Match`, and the
//! polling of `Azure-AsyncOperation` and `Location` operations.
//!
//! Time follows ARM's rule: a write runs for its latency from the moment its PATCH is
//! received and ends then whether or not anyone polls; the PATCH answer of an asynchronous
//! write, every poll and every read are quick requests. Polls that find the operation running
//! carry the configured wait hint (`Retry-After`, or `retry-after-ms` below a second).

use std::time::{Duration, Instant};

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::state::{FaultKind, FaultTarget, Operation, PatchError};
use super::wire::{AnswerLost, BodyError, arm_error, base_url, hang, read_body, simulate_latency};
use super::{ARM_RESOURCE, LroMode, Shared};

/// What the ARM path names.
enum ArmRoute {
    Compute { key: String, kind: &'static str },
    Identity { rg: String, name: String },
    AsyncOperation(String),
    LocationResult(String),
}

fn arm_route(segs: &[&str]) -> Option<ArmRoute> {
    let ci = |i: usize, w: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(w));
    if segs.len() == 8 && ci(2, "resourceGroups") && ci(4, "providers") {
        if ci(5, "Microsoft.Compute") {
            let kind = if ci(6, "virtualMachineScaleSets") {
                "vmss"
            } else if ci(6, "virtualMachines") {
                "vm"
            } else {
                return None;
            };
            return Some(ArmRoute::Compute {
                key: super::state::compute_key(kind, segs[1], segs[3], segs[7]),
                kind,
            });
        }
        if ci(5, "Microsoft.ManagedIdentity") && ci(6, "userAssignedIdentities") {
            return Some(ArmRoute::Identity {
                rg: segs[3].to_string(),
                name: segs[7].to_string(),
            });
        }
    }
    if segs.len() == 8 && ci(2, "providers") && ci(3, "Microsoft.Compute") && ci(4, "locations") {
        if ci(6, "operations") {
            return Some(ArmRoute::AsyncOperation(segs[7].to_string()));
        }
        if ci(6, "operationResults") {
            return Some(ArmRoute::LocationResult(segs[7].to_string()));
        }
    }
    None
}

fn authorized(shared: &Shared, req: &HttpRequest) -> Result<(), String> {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("Authentication failed. The 'Authorization' header is missing.")?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or("Authentication failed. The 'Authorization' header is not a bearer token.")?;
    let claims = shared
        .signer
        .verify(token)
        .map_err(|e| format!("The access token is invalid: {e}."))?;
    if claims.aud.trim_end_matches('/') != ARM_RESOURCE.trim_end_matches('/') {
        return Err(format!(
            "The access token has an invalid audience '{}'.",
            claims.aud
        ));
    }
    Ok(())
}

pub(super) async fn arm(
    req: &HttpRequest,
    payload: web::Payload,
    shared: &Shared,
    segs: &[&str],
) -> HttpResponse {
    let cfg = shared.config();
    let sub = segs[1];
    shared.lock().arrive(Some(sub), cfg.throttle_grace);
    if cfg.require_auth
        && let Err(msg) = authorized(shared, req)
    {
        shared.lock().counters.unauthenticated += 1;
        return arm_error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", &msg);
    }
    let Some(route) = arm_route(segs) else {
        return arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            &format!("The resource type could not be found for '{}'.", req.path()),
        );
    };
    let method = req.method().clone();
    let target = match (&route, &method) {
        (ArmRoute::Compute { .. }, m) if *m == Method::PATCH => FaultTarget::ArmPatch,
        (ArmRoute::Compute { .. }, _) => FaultTarget::ArmGet,
        (ArmRoute::AsyncOperation(_) | ArmRoute::LocationResult(_), _) => FaultTarget::ArmPoll,
        (ArmRoute::Identity { .. }, _) => FaultTarget::ArmGet,
    };
    let write_latency = cfg.arm_latency.sample();
    let mut delay = Duration::ZERO;
    let mut lro_failure = None;
    let mut assign_after_read = None;
    let mut answer_lost = false;
    let fault = shared.lock().take_fault(target);
    match fault {
        Some(FaultKind::Status(s)) => {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let (code, message) = arm_status_error(status);
            return arm_error(status, code, message);
        }
        Some(FaultKind::Throttle {
            retry_after_secs,
            as_http_date,
        }) => {
            let (resp, window) = throttled(retry_after_secs, as_http_date);
            shared.lock().open_throttle_window(sub, window);
            return resp;
        }
        Some(FaultKind::Hang) => {
            hang(shared).await;
            return arm_error(
                StatusCode::GATEWAY_TIMEOUT,
                "GatewayTimeout",
                "Injected hang.",
            );
        }
        Some(FaultKind::Slow(d)) => delay += d,
        Some(FaultKind::LroFailure { code, message }) => lro_failure = Some((code, message)),
        Some(FaultKind::AssignAfterRead(id)) => assign_after_read = Some(id),
        Some(FaultKind::AnswerLost) => answer_lost = true,
        None => {}
    }
    shared.lock().end_due_operations(Instant::now());
    if method == Method::PATCH {
        let mut inner = shared.lock();
        if let ArmRoute::Compute { key, .. } = &route {
            *inner.counters.patches.entry(key.clone()).or_default() += 1;
        }
        let over = inner
            .throttled_for(sub)
            .map(|secs| (secs, false))
            .or_else(|| inner.charge_write(sub, cfg.write_budget).map(|s| (s, true)));
        if let Some((secs, opens)) = over {
            if opens {
                inner.open_throttle_window(sub, Duration::from_secs(secs));
            } else {
                inner.counters.throttled += 1;
            }
            return throttled(secs, false).0;
        }
    }
    let resp = match (route, method) {
        (ArmRoute::Compute { key, .. }, m) if m == Method::GET => {
            let mut inner = shared.lock();
            *inner.counters.gets.entry(key.clone()).or_default() += 1;
            let resp = match inner.compute.get(&key) {
                Some(c) => HttpResponse::Ok().json(inner.resource_json(c, &cfg.location)),
                None => not_found(segs),
            };
            if let (Some(id), Some(c)) = (assign_after_read, inner.compute.get_mut(&key))
                && !c
                    .user_assigned
                    .iter()
                    .any(|(x, _)| x.eq_ignore_ascii_case(&id))
            {
                c.user_assigned.push((id, Instant::now()));
                c.etag += 1;
            }
            resp
        }
        (ArmRoute::Compute { key, kind }, m) if m == Method::PATCH => {
            let _ = kind;
            let body = match read_body(payload, cfg.max_body_bytes).await {
                Ok(b) => b,
                Err(BodyError::TooLarge) => {
                    return arm_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RequestContentTooLarge",
                        &format!(
                            "The request content size exceeds the limit of {} bytes.",
                            cfg.max_body_bytes
                        ),
                    );
                }
                Err(BodyError::Broken) => {
                    return arm_error(
                        StatusCode::BAD_REQUEST,
                        "InvalidRequestContent",
                        "The request content could not be read.",
                    );
                }
            };
            let if_match = req
                .headers()
                .get("if-match")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let (resp, synchronous) = patch_compute(
                shared,
                &cfg,
                &base_url(req),
                segs,
                (&key, if_match.as_deref()),
                &body,
                (write_latency, lro_failure),
            );
            if synchronous {
                // A synchronous write is answered when it is done.
                delay += write_latency;
            }
            resp
        }
        (ArmRoute::Identity { rg, name }, m) if m == Method::GET => {
            let inner = shared.lock();
            let found = inner.identities.values().find(|r| {
                r.name.eq_ignore_ascii_case(&name)
                    && r.resource_id
                        .to_ascii_lowercase()
                        .contains(&format!("/resourcegroups/{}/", rg.to_ascii_lowercase()))
            });
            match found {
                Some(r) => HttpResponse::Ok().json(json!({
                    "id": r.resource_id, "name": r.name,
                    "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
                    "location": cfg.location,
                    "properties": { "tenantId": inner.tenant_id, "principalId": r.principal_id, "clientId": r.client_id },
                })),
                None => not_found(segs),
            }
        }
        (ArmRoute::AsyncOperation(id), m) if m == Method::GET => poll(shared, &cfg, &id, false),
        (ArmRoute::LocationResult(id), m) if m == Method::GET => poll(shared, &cfg, &id, true),
        _ => arm_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!(
                "The method '{}' is not allowed on '{}'.",
                req.method(),
                req.path()
            ),
        ),
    };
    simulate_latency(delay).await;
    if answer_lost {
        return connection_lost();
    }
    resp
}

/// ARM's error code and message for a server-side failure, as ARM words them.
fn arm_status_error(status: StatusCode) -> (&'static str, &'static str) {
    match status.as_u16() {
        500 => (
            "InternalServerError",
            "Encountered internal server error. Please try again later.",
        ),
        502 => (
            "BadGateway",
            "The gateway received an invalid response from 'Microsoft.Compute'.",
        ),
        503 => (
            "ServiceUnavailable",
            "The server is currently unable to handle the request. Please retry.",
        ),
        504 => (
            "GatewayTimeout",
            "The gateway did not receive a response from 'Microsoft.Compute' within the specified time period.",
        ),
        _ => ("InternalServerError", "Injected fault."),
    }
}

/// A response that is never written: its body fails before the first byte, so the server
/// closes the connection and the client sees it end without an answer.
fn connection_lost() -> HttpResponse {
    let body = futures::stream::once(async {
        Err::<bytes::Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "injected: answer lost",
        ))
    });
    let mut resp = HttpResponse::Ok().streaming(body);
    resp.extensions_mut().insert(AnswerLost);
    resp
}

/// A 429 and the window it announces. An HTTP date has whole-second precision, so the date
/// is rounded up and the window runs exactly until it.
fn throttled(secs: u64, as_http_date: bool) -> (HttpResponse, Duration) {
    let (value, window) = if as_http_date {
        let now = std::time::SystemTime::now();
        let since_epoch = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let target = std::time::UNIX_EPOCH
            + Duration::from_secs(
                since_epoch.as_secs() + secs + u64::from(since_epoch.subsec_nanos() > 0),
            );
        let window = target.duration_since(now).unwrap_or_default();
        (httpdate::fmt_http_date(target), window)
    } else {
        (secs.to_string(), Duration::from_secs(secs))
    };
    let resp = HttpResponse::TooManyRequests()
        .insert_header(("Retry-After", value))
        .json(json!({ "error": { "code": "TooManyRequests", "message": format!("The request is being throttled. Retry after {secs} seconds.") } }));
    (resp, window)
}

fn not_found(segs: &[&str]) -> HttpResponse {
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The Resource '{}/{}/{}' under resource group '{}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            segs.get(5).unwrap_or(&""),
            segs.get(6).unwrap_or(&""),
            segs.get(7).unwrap_or(&""),
            segs.get(3).unwrap_or(&"")
        ),
    )
}

/// A PATCH of a VM or scale set: `target` is the resource key and the request's `If-Match`,
/// which, as on ARM, must name the resource's current etag (or `*`), else 412
/// `PreconditionFailed` and nothing changes. `write` is the write's latency and the failure
/// its operation is to end with, if any. Returns the answer and whether it is the answer of a
/// synchronous write (to be sent once the write's latency has passed).
fn patch_compute(
    shared: &Shared,
    cfg: &super::AzureSimConfig,
    base_url: &str,
    segs: &[&str],
    target: (&str, Option<&str>),
    body: &[u8],
    write: (Duration, Option<(String, String)>),
) -> (HttpResponse, bool) {
    let (key, if_match) = target;
    let (latency, lro_failure) = write;
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return (
                arm_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContent",
                    &format!(
                        "The request content was invalid and could not be deserialized: '{e}'."
                    ),
                ),
                false,
            );
        }
    };
    let mut inner = shared.lock();
    let named: Vec<String> = value
        .pointer("/identity/userAssignedIdentities")
        .and_then(Value::as_object)
        .map(|m| m.keys().map(|k| k.to_ascii_lowercase()).collect())
        .unwrap_or_default();
    for id in &named {
        *inner
            .counters
            .identity_writes
            .entry(id.clone())
            .or_default() += 1;
    }
    let Some(c) = inner.compute.get(key) else {
        return (not_found(segs), false);
    };
    if let Some(wanted) = if_match
        && wanted != "*"
        && wanted != c.etag_value()
    {
        return (
            arm_error(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                &format!(
                    "Etag provided in if-match header {wanted} does not match etag {} of resource.",
                    c.etag_value()
                ),
            ),
            false,
        );
    }
    if c.provisioning_state.eq_ignore_ascii_case("deleting") {
        return (
            arm_error(
                StatusCode::CONFLICT,
                "OperationNotAllowed",
                &format!(
                    "The resource '{}' is being deleted; the operation is not allowed.",
                    c.id()
                ),
            ),
            false,
        );
    }
    let result = match inner.evaluate_patch(c, &value) {
        Ok(r) => r,
        Err(PatchError::Refused(status, code, msg)) => {
            return (
                arm_error(StatusCode::from_u16(status).expect("4xx"), code, &msg),
                false,
            );
        }
    };
    let Some((system, after)) = result else {
        // Nothing to change: answered at once, no operation.
        let c = &inner.compute[key];
        return (
            HttpResponse::Ok().json(inner.resource_json(c, &cfg.location)),
            false,
        );
    };
    let now = Instant::now();
    let c = inner.compute.get_mut(key).expect("checked above");
    let rollback = (c.system_assigned, c.user_assigned.clone());
    // A write that drops identities without naming them (`"type": "None"` or
    // `"SystemAssigned"`) is a write of each of them too.
    let dropped: Vec<String> = c
        .user_assigned
        .iter()
        .map(|(id, _)| id.to_ascii_lowercase())
        .filter(|id| !named.contains(id) && !after.iter().any(|a| a.eq_ignore_ascii_case(id)))
        .collect();
    let kept: Vec<(String, Instant)> = after
        .iter()
        .map(|id| {
            c.user_assigned
                .iter()
                .find(|(x, _)| x.eq_ignore_ascii_case(id))
                .cloned()
                .unwrap_or((id.clone(), now))
        })
        .collect();
    c.system_assigned = system;
    c.user_assigned = kept;
    c.etag += 1;
    let sub = c.subscription.clone();
    for id in dropped {
        *inner.counters.identity_writes.entry(id).or_default() += 1;
    }
    inner.counters.patches_applied += 1;
    let mode = match (cfg.lro, &lro_failure) {
        (LroMode::Sync, Some(_)) => LroMode::AsyncOperation,
        (m, _) => m,
    };
    if mode == LroMode::Sync {
        inner
            .compute
            .get_mut(key)
            .expect("exists")
            .provisioning_state = "Succeeded".into();
        let c = &inner.compute[key];
        return (
            HttpResponse::Ok().json(inner.resource_json(c, &cfg.location)),
            true,
        );
    }
    inner
        .compute
        .get_mut(key)
        .expect("exists")
        .provisioning_state = "Updating".into();
    let op_id = uuid::Uuid::new_v4().to_string();
    inner.operations.insert(
        op_id.clone(),
        Operation {
            resource_key: key.to_string(),
            due: now + latency,
            failure: lro_failure,
            rollback: Some(rollback),
            done: false,
        },
    );
    inner.running.push(op_id.clone());
    let base = format!(
        "{base_url}/subscriptions/{sub}/providers/Microsoft.Compute/locations/{}",
        cfg.location
    );
    let resp = if mode == LroMode::Location {
        let mut b = HttpResponse::Accepted();
        b.insert_header((
            "Location",
            format!("{base}/operationResults/{op_id}?api-version=2024-07-01"),
        ));
        wait_hint(&mut b, cfg.lro_retry_after);
        b.finish()
    } else {
        let c = &inner.compute[key];
        let mut b = HttpResponse::Ok();
        b.insert_header((
            "Azure-AsyncOperation",
            format!("{base}/operations/{op_id}?api-version=2024-07-01"),
        ));
        wait_hint(&mut b, cfg.lro_retry_after);
        b.json(inner.resource_json(c, &cfg.location))
    };
    (resp, false)
}

/// Adds the wait a client should leave before its next poll: `Retry-After` in whole seconds
/// (ARM's form), and for a wait with a fraction of a second (the sandbox's fast clock) also
/// `retry-after-ms`, which Azure SDKs prefer when both are present.
fn wait_hint(b: &mut actix_web::HttpResponseBuilder, wait: Option<Duration>) {
    let Some(wait) = wait else {
        return;
    };
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    b.insert_header(("Retry-After", whole.to_string()));
    if wait.subsec_nanos() > 0 {
        b.insert_header(("retry-after-ms", wait.as_millis().to_string()));
    }
}

fn poll(
    shared: &Shared,
    cfg: &super::AzureSimConfig,
    id: &str,
    location_style: bool,
) -> HttpResponse {
    let mut inner = shared.lock();
    inner.counters.lro_polls += 1;
    let Some(op) = inner.operations.get(id) else {
        return arm_error(
            StatusCode::NOT_FOUND,
            "OperationNotFound",
            &format!("The operation '{id}' was not found."),
        );
    };
    if !op.done {
        let mut b = if location_style {
            HttpResponse::Accepted()
        } else {
            HttpResponse::Ok()
        };
        wait_hint(&mut b, cfg.lro_retry_after);
        return if location_style {
            b.finish()
        } else {
            b.json(json!({ "name": id, "status": "InProgress" }))
        };
    }
    let failure = op.failure.clone();
    let key = op.resource_key.clone();
    match (failure, location_style) {
        (Some((code, message)), false) => HttpResponse::Ok().json(json!({
            "name": id, "status": "Failed", "error": { "code": code, "message": message },
        })),
        (Some((code, message)), true) => arm_error(StatusCode::BAD_REQUEST, &code, &message),
        (None, false) => HttpResponse::Ok().json(json!({ "name": id, "status": "Succeeded" })),
        (None, true) => match inner.compute.get(&key) {
            Some(c) => HttpResponse::Ok().json(inner.resource_json(c, &cfg.location)),
            None => HttpResponse::NoContent().finish(),
        },
    }
}
