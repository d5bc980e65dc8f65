//! The simulator's HTTP surface: one actix-web server, many loopback listeners. The listener a
//! request arrived on decides what it is talking to: the management listener serves ARM and
//! Azure AD, each node listener serves that node's metadata service.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::{Method, StatusCode};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{Value, json};

use super::federation::Refusal;
use super::state::{FaultKind, FaultTarget, Operation, PatchError, RequestRecord};
use super::{ARM_RESOURCE, LroMode, Shared};

const LOG_CAP: usize = 200_000;
const HANG: Duration = Duration::from_secs(3600);

pub(crate) fn serve(
    shared: Arc<Shared>,
    mgmt: TcpListener,
    mgmt_tls: Option<(TcpListener, rustls::ServerConfig)>,
    nodes: Vec<TcpListener>,
) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::from(shared);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(dispatch))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(mgmt)?;
    if let Some((l, config)) = mgmt_tls {
        server = server.listen_rustls_0_23(l, config)?;
    }
    for l in nodes {
        server = server.listen(l)?;
    }
    Ok(server.run())
}

async fn dispatch(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let local = req.app_config().local_addr();
    if let Some((node, key)) = shared.nodes_by_addr.get(&local) {
        let resp = imds(&req, &shared, node, key).await;
        record(&shared, &req, None, Some(node), &resp);
        return resp;
    }
    let path = req.path().trim_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').collect();
    let ci = |i: usize, w: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(w));
    let is_token_path = (segs.len() == 3 && ci(1, "oauth2") && ci(2, "token"))
        || (segs.len() == 4 && ci(1, "oauth2") && ci(2, "v2.0") && ci(3, "token"));
    let is_openid = segs.len() >= 3
        && segs[segs.len() - 2].eq_ignore_ascii_case(".well-known")
        && segs[segs.len() - 1].eq_ignore_ascii_case("openid-configuration");
    if is_openid {
        return openid_configuration(&req, segs[0], ci(1, "v2.0"));
    }
    if is_token_path {
        let resp = aad(&req, payload, &shared, segs[0], segs.len() == 4).await;
        record(&shared, &req, None, None, &resp);
        return resp;
    }
    if ci(0, "subscriptions") && segs.len() >= 2 {
        let sub = segs[1].to_string();
        let resp = arm(&req, payload, &shared, &segs).await;
        record(&shared, &req, Some(sub), None, &resp);
        return resp;
    }
    arm_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("No route for '{}'.", req.path()),
    )
}

/// Never answers until the simulator shuts down (or an hour passes).
async fn hang(shared: &Shared) {
    tokio::select! {
        _ = tokio::time::sleep(HANG) => {}
        _ = shared.stopping.cancelled() => {}
    }
}

/// Base URL the client used (scheme and host of this request), for URLs we hand back.
fn base_url(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// The tenant discovery document MSAL-based SDKs fetch before asking for a token.
fn openid_configuration(req: &HttpRequest, tenant: &str, v2: bool) -> HttpResponse {
    let base = base_url(req);
    let (token, authorize) = if v2 {
        (
            format!("{base}/{tenant}/oauth2/v2.0/token"),
            format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        )
    } else {
        (
            format!("{base}/{tenant}/oauth2/token"),
            format!("{base}/{tenant}/oauth2/authorize"),
        )
    };
    HttpResponse::Ok().json(json!({
        "token_endpoint": token,
        "authorization_endpoint": authorize,
        "issuer": format!("https://sts.windows.net/{tenant}/"),
        "jwks_uri": format!("{base}/{tenant}/discovery/keys"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "tenant_region_scope": "WW",
    }))
}

/// Logs a request as it arrived: the raw path and query of the request line (so tests can see
/// exactly what a client, or a proxy such as NMI, sent).
fn record(
    shared: &Shared,
    req: &HttpRequest,
    subscription: Option<String>,
    node: Option<&str>,
    resp: &HttpResponse,
) {
    let mut inner = shared.lock();
    if inner.log.len() < LOG_CAP {
        inner.log.push(RequestRecord {
            at: Instant::now(),
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            query: req.uri().query().unwrap_or("").to_string(),
            subscription,
            node: node.map(str::to_string),
            status: if resp.extensions().contains::<AnswerLost>() {
                0
            } else {
                resp.status().as_u16()
            },
            user_agent: req
                .headers()
                .get(actix_web::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        });
    }
}

fn arm_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json; charset=utf-8")
        .json(json!({ "error": { "code": code, "message": message } }))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json; charset=utf-8")
        .json(json!({ "error": error, "error_description": description }))
}

enum BodyError {
    TooLarge,
    Broken,
}

async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| BodyError::Broken)?;
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

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

async fn arm(
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
    let mut delay = cfg.arm_latency.sample();
    let mut lro_failure = None;
    let mut assign_after_read = None;
    let mut answer_lost = false;
    let fault = shared.lock().take_fault(target);
    match fault {
        Some(FaultKind::Status(s)) => {
            tokio::time::sleep(delay).await;
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
            patch_compute(
                shared,
                &cfg,
                &base_url(req),
                segs,
                (&key, if_match.as_deref()),
                &body,
                lro_failure,
            )
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
    tokio::time::sleep(delay).await;
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

/// Marks a response that is never delivered (logged with status 0).
struct AnswerLost;

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
/// `PreconditionFailed` and nothing changes.
fn patch_compute(
    shared: &Shared,
    cfg: &super::AzureSimConfig,
    base_url: &str,
    segs: &[&str],
    target: (&str, Option<&str>),
    body: &[u8],
    lro_failure: Option<(String, String)>,
) -> HttpResponse {
    let (key, if_match) = target;
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                &format!("The request content was invalid and could not be deserialized: '{e}'."),
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
        return not_found(segs);
    };
    if let Some(wanted) = if_match
        && wanted != "*"
        && wanted != c.etag_value()
    {
        return arm_error(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            &format!(
                "Etag provided in if-match header {wanted} does not match etag {} of resource.",
                c.etag_value()
            ),
        );
    }
    if c.provisioning_state.eq_ignore_ascii_case("deleting") {
        return arm_error(
            StatusCode::CONFLICT,
            "OperationNotAllowed",
            &format!(
                "The resource '{}' is being deleted; the operation is not allowed.",
                c.id()
            ),
        );
    }
    let result = match inner.evaluate_patch(c, &value) {
        Ok(r) => r,
        Err(PatchError::Refused(status, code, msg)) => {
            return arm_error(StatusCode::from_u16(status).expect("4xx"), code, &msg);
        }
    };
    let Some((system, after)) = result else {
        let c = &inner.compute[key];
        return HttpResponse::Ok().json(inner.resource_json(c, &cfg.location));
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
        (LroMode::Sync, Some(_)) => LroMode::AsyncOperation { polls: 0 },
        (m, _) => m,
    };
    let polls = match mode {
        LroMode::Sync => {
            inner
                .compute
                .get_mut(key)
                .expect("exists")
                .provisioning_state = "Succeeded".into();
            let c = &inner.compute[key];
            return HttpResponse::Ok().json(inner.resource_json(c, &cfg.location));
        }
        LroMode::AsyncOperation { polls } | LroMode::Location { polls } => polls,
    };
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
            remaining_polls: polls,
            failure: lro_failure,
            rollback: Some(rollback),
            done: false,
        },
    );
    let base = format!(
        "{base_url}/subscriptions/{sub}/providers/Microsoft.Compute/locations/{}",
        cfg.location
    );
    let retry_after = cfg.lro_retry_after_secs.to_string();
    match mode {
        LroMode::Location { .. } => HttpResponse::Accepted()
            .insert_header((
                "Location",
                format!("{base}/operationResults/{op_id}?api-version=2024-07-01"),
            ))
            .insert_header(("Retry-After", retry_after))
            .finish(),
        _ => {
            let c = &inner.compute[key];
            HttpResponse::Ok()
                .insert_header((
                    "Azure-AsyncOperation",
                    format!("{base}/operations/{op_id}?api-version=2024-07-01"),
                ))
                .insert_header(("Retry-After", retry_after))
                .json(inner.resource_json(c, &cfg.location))
        }
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
    let Some(op) = inner.operations.get_mut(id) else {
        return arm_error(
            StatusCode::NOT_FOUND,
            "OperationNotFound",
            &format!("The operation '{id}' was not found."),
        );
    };
    if op.remaining_polls > 0 {
        op.remaining_polls -= 1;
        return if location_style {
            HttpResponse::Accepted()
                .insert_header(("Retry-After", cfg.lro_retry_after_secs.to_string()))
                .finish()
        } else {
            HttpResponse::Ok()
                .insert_header(("Retry-After", cfg.lro_retry_after_secs.to_string()))
                .json(json!({ "name": id, "status": "InProgress" }))
        };
    }
    let first_completion = !op.done;
    op.done = true;
    let failure = op.failure.clone();
    let key = op.resource_key.clone();
    let rollback = op.rollback.take();
    if first_completion && let Some(c) = inner.compute.get_mut(&key) {
        {
            if failure.is_some()
                && let Some((system, ua)) = rollback
            {
                c.system_assigned = system;
                c.user_assigned = ua;
                c.etag += 1;
            }
            if c.provisioning_state.eq_ignore_ascii_case("updating") {
                c.provisioning_state = "Succeeded".into();
            }
        }
    }
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

fn query_map(req: &HttpRequest) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
        .collect()
}

const IMDS_API_VERSIONS: &[&str] = &[
    "2017-09-01",
    "2018-02-01",
    "2019-03-11",
    "2019-06-01",
    "2019-08-01",
    "2019-11-01",
    "2020-06-01",
    "2021-02-01",
    "2023-07-01",
];

async fn imds(req: &HttpRequest, shared: &Shared, node: &str, key: &str) -> HttpResponse {
    let cfg = shared.config();
    let mut delay = cfg.imds_latency.sample();
    let fault = shared.lock().take_fault(FaultTarget::Imds);
    match fault {
        Some(FaultKind::Status(s)) => {
            shared.lock().counters.imds_errors += 1;
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return oauth_error(status, "unknown_error", "Injected fault.");
        }
        Some(FaultKind::Throttle {
            retry_after_secs, ..
        }) => {
            shared.lock().counters.imds_errors += 1;
            let mut r = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "Too many requests.",
            );
            r.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from(retry_after_secs),
            );
            return r;
        }
        Some(FaultKind::Hang) => {
            hang(shared).await;
            return HttpResponse::GatewayTimeout().finish();
        }
        Some(FaultKind::Slow(d)) => delay += d,
        _ => {}
    }
    let resp = imds_answer(req, shared, &cfg, node, key);
    {
        let mut inner = shared.lock();
        if resp.status() == StatusCode::OK {
            inner.counters.imds_tokens += 1;
        } else {
            inner.counters.imds_errors += 1;
        }
    }
    tokio::time::sleep(delay).await;
    resp
}

fn imds_answer(
    req: &HttpRequest,
    shared: &Shared,
    cfg: &super::AzureSimConfig,
    node: &str,
    key: &str,
) -> HttpResponse {
    let bad = |d: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", d);
    let metadata = req
        .headers()
        .get("metadata")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let path = req.path();
    let is_token = path.eq_ignore_ascii_case("/metadata/identity/oauth2/token");
    let is_instance = path.eq_ignore_ascii_case("/metadata/instance");
    if !is_token && !is_instance {
        return HttpResponse::NotFound()
            .content_type("text/plain")
            .body("Not found");
    }
    if req.method() != Method::GET {
        return oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "Only GET is supported.",
        );
    }
    if !metadata {
        return bad("Required metadata header not specified");
    }
    let q = query_map(req);
    let Some(version) = q.get("api-version") else {
        return bad("Required query variable 'api-version' is missing");
    };
    if !IMDS_API_VERSIONS.contains(&version.as_str()) {
        return bad("Invalid version");
    }
    let inner = shared.lock();
    let Some(c) = inner.compute.get(key) else {
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unknown_error",
            "Compute resource is gone.",
        );
    };
    if is_instance {
        return HttpResponse::Ok().json(json!({ "compute": {
            "name": node, "subscriptionId": c.subscription, "resourceGroupName": c.resource_group,
            "vmScaleSetName": if c.kind == "vmss" { c.name.clone() } else { String::new() },
            "location": cfg.location,
        }}));
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()) else {
        return bad("Required audience parameter not specified");
    };
    let now = Instant::now();
    let usable: Vec<&(String, Instant)> = c
        .user_assigned
        .iter()
        .filter(|(_, at)| *at + cfg.propagation_delay <= now)
        .collect();
    let find_assigned = |id: &str| {
        usable
            .iter()
            .find(|(x, _)| x.eq_ignore_ascii_case(id))
            .map(|(x, _)| x.clone())
    };
    let chosen: Option<(String, String, String)> = if let Some(cid) = q.get("client_id") {
        inner
            .identities
            .values()
            .find(|r| r.client_id.eq_ignore_ascii_case(cid))
            .and_then(|r| {
                find_assigned(&r.resource_id)
                    .map(|id| (r.client_id.clone(), r.principal_id.clone(), id))
            })
    } else if let Some(rid) = q.get("msi_res_id").or_else(|| q.get("mi_res_id")) {
        find_assigned(rid).and_then(|id| {
            inner
                .identity(&id)
                .map(|r| (r.client_id.clone(), r.principal_id.clone(), id.clone()))
        })
    } else if let Some(oid) = q.get("object_id").or_else(|| q.get("principal_id")) {
        inner
            .identities
            .values()
            .find(|r| r.principal_id.eq_ignore_ascii_case(oid))
            .and_then(|r| {
                find_assigned(&r.resource_id)
                    .map(|id| (r.client_id.clone(), r.principal_id.clone(), id))
            })
    } else if c.system_assigned {
        let pid = c.system_principal_id();
        Some((pid.clone(), pid, c.id()))
    } else if usable.len() > 1 {
        return bad(
            "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request",
        );
    } else {
        usable.first().and_then(|(id, _)| {
            inner
                .identity(id)
                .map(|r| (r.client_id.clone(), r.principal_id.clone(), id.clone()))
        })
    };
    let Some((client_id, principal_id, mirid)) = chosen else {
        return bad("Identity not found");
    };
    let lifetime = cfg.token_lifetime;
    let (token, exp) = shared.signer.issue(
        resource,
        &inner.tenant_id,
        &client_id,
        &principal_id,
        &mirid,
        lifetime,
    );
    let now_unix = super::tokens::unix_now();
    HttpResponse::Ok()
        .content_type("application/json; charset=utf-8")
        .json(json!({
            "access_token": token,
            "client_id": client_id,
            "expires_in": lifetime.as_secs().to_string(),
            "expires_on": exp.to_string(),
            "ext_expires_in": lifetime.as_secs().to_string(),
            "not_before": now_unix.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }))
}

async fn aad(
    req: &HttpRequest,
    payload: web::Payload,
    shared: &Shared,
    tenant: &str,
    v2: bool,
) -> HttpResponse {
    let cfg = shared.config();
    let mut delay = cfg.aad_latency.sample();
    let fault = shared.lock().take_fault(FaultTarget::Aad);
    match fault {
        Some(FaultKind::Status(s)) => {
            shared.lock().counters.aad_errors += 1;
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return oauth_error(
                status,
                "temporarily_unavailable",
                "AADSTS90033: Injected fault.",
            );
        }
        Some(FaultKind::Hang) => {
            hang(shared).await;
            return HttpResponse::GatewayTimeout().finish();
        }
        Some(FaultKind::Slow(d)) => delay += d,
        _ => {}
    }
    let resp = match read_body(payload, cfg.max_body_bytes).await {
        Ok(body) => match parse_grant(req, v2, &body) {
            Err(refusal) => refusal.response(),
            Ok(grant) => match federated_identity(shared, &grant) {
                Some(identity) => {
                    federated_answer(shared, &cfg, tenant, v2, &grant, identity).await
                }
                None => aad_answer(req, shared, &cfg, tenant, v2, &grant),
            },
        },
        Err(_) => oauth_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "AADSTS90015: Request too large.",
        ),
    };
    {
        let mut inner = shared.lock();
        if resp.status() == StatusCode::OK {
            inner.counters.aad_tokens += 1;
        } else {
            inner.counters.aad_errors += 1;
        }
    }
    tokio::time::sleep(delay).await;
    resp
}

/// A client-credentials request as every credential type carries it.
struct Grant {
    form: HashMap<String, String>,
    client_id: String,
    /// The resource asked for (v2: the scope without `/.default`).
    resource: String,
}

/// Checks what every client-credentials request must carry, before any credential.
fn parse_grant(req: &HttpRequest, v2: bool, body: &[u8]) -> Result<Grant, Refusal> {
    let bad = |error: &'static str, description: String| Refusal {
        status: StatusCode::BAD_REQUEST,
        error,
        description,
    };
    if req.method() != Method::POST {
        return Err(bad(
            "invalid_request",
            "AADSTS900561: The endpoint only accepts POST requests.".into(),
        ));
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            return Err(bad(
                "unsupported_grant_type",
                format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
            ));
        }
        None => {
            return Err(bad("invalid_request", "AADSTS900144: The request body must contain the following parameter: 'grant_type'.".into()));
        }
    }
    let Some(client_id) = form.get("client_id").cloned() else {
        return Err(bad(
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'client_id'."
                .into(),
        ));
    };
    let resource = if v2 {
        let Some(scope) = form.get("scope") else {
            return Err(bad(
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'scope'."
                    .into(),
            ));
        };
        let Some(r) = scope.strip_suffix("/.default") else {
            return Err(bad(
                "invalid_scope",
                format!(
                    "AADSTS1002012: The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                ),
            ));
        };
        r.to_string()
    } else {
        match form.get("resource") {
            Some(r) if !r.is_empty() => r.clone(),
            _ => {
                return Err(bad("invalid_request", "AADSTS900144: The request body must contain the following parameter: 'resource'.".into()));
            }
        }
    };
    Ok(Grant {
        form,
        client_id,
        resource,
    })
}

/// The token answer, in the v1 or v2 shape.
#[allow(clippy::too_many_arguments)]
fn issue_token(
    shared: &Shared,
    cfg: &super::AzureSimConfig,
    v2: bool,
    resource: &str,
    tenant: &str,
    appid: &str,
    oid: &str,
    mirid: &str,
) -> HttpResponse {
    let lifetime = cfg
        .token_lifetime
        .min(Duration::from_secs(3599))
        .max(Duration::from_secs(60));
    let (token, exp) = shared
        .signer
        .issue(resource, tenant, appid, oid, mirid, lifetime);
    let secs = lifetime.as_secs();
    let now = super::tokens::unix_now();
    let body = if v2 {
        json!({ "token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": token })
    } else {
        json!({
            "token_type": "Bearer", "expires_in": secs.to_string(), "ext_expires_in": secs.to_string(),
            "expires_on": exp.to_string(), "not_before": now.to_string(), "resource": resource, "access_token": token,
        })
    };
    HttpResponse::Ok()
        .content_type("application/json; charset=utf-8")
        .insert_header(("Cache-Control", "no-store, no-cache"))
        .json(body)
}

/// The user-assigned identity a federated request is for: a `client_assertion` presented for
/// an identity's client id.
fn federated_identity(shared: &Shared, grant: &Grant) -> Option<super::IdentityRecord> {
    grant.form.get("client_assertion")?;
    shared
        .lock()
        .identities
        .values()
        .find(|r| r.client_id.eq_ignore_ascii_case(&grant.client_id))
        .cloned()
}

/// A federated exchange: the assertion checked against the identity's federated credentials
/// (see `federation`), then a token of the identity.
async fn federated_answer(
    shared: &Shared,
    cfg: &super::AzureSimConfig,
    tenant: &str,
    v2: bool,
    grant: &Grant,
    identity: super::IdentityRecord,
) -> HttpResponse {
    if grant.form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS50027: Invalid client_assertion_type.",
        );
    }
    let credentials = {
        let inner = shared.lock();
        if !tenant.eq_ignore_ascii_case(&inner.tenant_id) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                &format!(
                    "AADSTS700016: Application with identifier '{}' was not found in the directory '{tenant}'.",
                    grant.client_id
                ),
            );
        }
        inner
            .federated
            .get(&identity.resource_id.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    };
    let assertion = grant
        .form
        .get("client_assertion")
        .map_or("", String::as_str);
    let now = i64::try_from(super::tokens::unix_now()).unwrap_or(i64::MAX);
    if let Err(refusal) = super::federation::check(assertion, &credentials, now, &shared.http).await
    {
        return refusal.response();
    }
    shared.lock().counters.aad_federated_tokens += 1;
    issue_token(
        shared,
        cfg,
        v2,
        &grant.resource,
        tenant,
        &identity.client_id,
        &identity.principal_id,
        &identity.resource_id,
    )
}

/// Service principals: a client secret or a certificate's signed assertion.
fn aad_answer(
    req: &HttpRequest,
    shared: &Shared,
    cfg: &super::AzureSimConfig,
    tenant: &str,
    v2: bool,
    grant: &Grant,
) -> HttpResponse {
    let bad = |e: &str, d: String| oauth_error(StatusCode::BAD_REQUEST, e, &d);
    let (form, client_id, resource) = (&grant.form, &grant.client_id, &grant.resource);
    let inner = shared.lock();
    let known_tenant = tenant.eq_ignore_ascii_case(&inner.tenant_id)
        || inner
            .service_principals
            .values()
            .any(|sp| sp.tenants.iter().any(|t| t.eq_ignore_ascii_case(tenant)));
    if !known_tenant {
        return bad(
            "invalid_request",
            format!(
                "AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    let sp = inner
        .service_principals
        .get(&client_id.to_ascii_lowercase())
        .filter(|sp| sp.tenants.iter().any(|t| t.eq_ignore_ascii_case(tenant)));
    let Some(sp) = sp else {
        return bad(
            "unauthorized_client",
            format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{tenant}'."
            ),
        );
    };
    let invalid_client = |d: String| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", &d);
    if let Some(secret) = form.get("client_secret") {
        if sp.secret.as_deref() != Some(secret.as_str()) {
            return invalid_client(format!(
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
            ));
        }
    } else if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return bad(
                "invalid_request",
                "AADSTS50027: Invalid client_assertion_type.".into(),
            );
        }
        let Some((thumb, key)) = &sp.certificate else {
            return invalid_client(format!(
                "AADSTS700027: Client assertion contains an invalid signature. No certificate is registered for app '{client_id}'."
            ));
        };
        if super::tokens::assertion_thumbprint(assertion).as_deref() != Some(thumb.as_str()) {
            return invalid_client(format!(
                "AADSTS700027: Client assertion contains an invalid signature. [Reason - The key was not found.] Thumbprint of key used by client does not match a certificate of app '{client_id}'."
            ));
        }
        let claims = match super::tokens::verify_assertion(assertion, key) {
            Ok(c) => c,
            Err(e) => {
                return invalid_client(format!(
                    "AADSTS700027: Client assertion failed signature validation: {e}."
                ));
            }
        };
        let expected_path = req.path().to_ascii_lowercase();
        let aud_ok = url::Url::parse(&claims.aud)
            .map(|u| {
                u.path().trim_end_matches('/').to_ascii_lowercase()
                    == expected_path.trim_end_matches('/')
            })
            .unwrap_or(false);
        if !aud_ok
            || !claims.iss.eq_ignore_ascii_case(client_id)
            || !claims.sub.eq_ignore_ascii_case(client_id)
        {
            return invalid_client(
                "AADSTS700021: Client assertion application identifier or audience doesn't match."
                    .into(),
            );
        }
    } else {
        return invalid_client("AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into());
    }
    issue_token(
        shared,
        cfg,
        v2,
        resource,
        tenant,
        &sp.client_id,
        &sp.principal_id,
        "",
    )
}
