//! The metadata service as the simulator serves it, one listener per simulated node: the
//! token endpoint with the real service's header, api-version and identity-selection rules,
//! issuing tokens only for identities assigned (and propagated) to that node's VM or scale set,
//! and throttling the identity endpoint per VM as Azure documents ([`super::imds_limits`]).

use std::collections::HashMap;
use std::time::Instant;

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::json;

use super::Shared;
use super::imds_limits::Refusal;
use super::state::{FaultKind, FaultTarget};
use super::wire::{hang, oauth_error, simulate_latency};

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

/// A request admitted under the node's throttle; answered (or abandoned by its client) when
/// dropped.
struct Admitted<'a> {
    shared: &'a Shared,
    node: &'a str,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.shared.lock().imds_throttle.get_mut(self.node) {
            t.release();
        }
    }
}

/// True for the Managed Identity category (`/metadata/identity/...`), the one Azure throttles
/// at 20/s and 5 at once per VM.
fn is_identity_category(path: &str) -> bool {
    let p = path.as_bytes();
    let prefix = b"/metadata/identity";
    p.len() >= prefix.len()
        && p[..prefix.len()].eq_ignore_ascii_case(prefix)
        && (p.len() == prefix.len() || p[prefix.len()] == b'/')
}

/// Admits an identity-category request under `node`'s limits, or says which limit refuses it.
fn admit<'a>(
    shared: &'a Shared,
    node: &'a str,
    limits: super::ImdsLimits,
) -> Result<Admitted<'a>, Refusal> {
    let mut inner = shared.lock();
    let admitted = inner
        .imds_throttle
        .entry(node.to_string())
        .or_default()
        .admit(limits, Instant::now());
    if admitted.is_err() {
        inner.counters.imds_throttled += 1;
        inner.counters.imds_errors += 1;
    }
    admitted.map(|()| Admitted { shared, node })
}

/// The 429 the service answers when a limit refuses a request.
fn throttled(limits: super::ImdsLimits, why: Refusal) -> HttpResponse {
    let description = match why {
        Refusal::Concurrency => format!(
            "Too many requests: at most {} concurrent requests to the managed identity endpoint per VM.",
            limits.concurrent
        ),
        Refusal::Rate => format!(
            "Too many requests: at most {} requests per second to the managed identity endpoint per VM.",
            limits.per_second
        ),
    };
    // No Retry-After: Azure documents none for this answer.
    oauth_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        &description,
    )
}

pub(super) async fn imds(
    req: &HttpRequest,
    shared: &Shared,
    node: &str,
    key: &str,
) -> HttpResponse {
    let cfg = shared.config();
    // Throttled at the door, before anything else is looked at; the place is held until the
    // answer (including any simulated latency or hang) is done.
    let _admitted = if is_identity_category(req.path()) {
        match admit(shared, node, cfg.imds_limits) {
            Ok(a) => Some(a),
            Err(why) => return throttled(cfg.imds_limits, why),
        }
    } else {
        None
    };
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
    simulate_latency(delay).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::{AzureSim, AzureSimConfig, Latency};
    use crate::topology::Topology;
    use futures::FutureExt as _;
    use std::time::Duration;

    /// A token request of the one node's metadata service, for its one identity.
    async fn ask(config: AzureSimConfig) -> Option<HttpResponse> {
        let topology = Topology::sized(1, 1, 0, 1);
        let config = AzureSimConfig {
            preassigned: vec!["identity-0".into()],
            ..config
        };
        let sim = AzureSim::start(&topology, config).await.unwrap();
        let (node, key) = sim.shared.nodes_by_addr.values().next().cloned().unwrap();
        let client_id = sim
            .shared
            .lock()
            .identities
            .values()
            .next()
            .unwrap()
            .client_id
            .clone();
        let req = actix_web::test::TestRequest::get()
            .uri(&format!(
                "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net&client_id={client_id}"
            ))
            .insert_header(("Metadata", "true"))
            .to_http_request();
        let answer = imds(&req, &sim.shared, &node, &key).now_or_never();
        sim.shutdown().await;
        answer
    }

    #[test]
    fn only_the_identity_category_is_throttled() {
        for p in [
            "/metadata/identity/oauth2/token",
            "/METADATA/Identity/oauth2/token",
            "/metadata/identity",
            "/metadata/identity/info",
        ] {
            assert!(is_identity_category(p), "{p}");
        }
        for p in [
            "/metadata/instance",
            "/metadata/identityx",
            "/metadata",
            "/",
        ] {
            assert!(!is_identity_category(p), "{p}");
        }
    }

    #[tokio::test]
    async fn without_latency_a_token_is_answered_without_waiting_for_a_timer() {
        // A zero-length sleep parks the answer until the worker's next timer turn, behind
        // every other request queued on the worker: the first poll must already answer.
        let answer = ask(AzureSimConfig::default())
            .await
            .expect("answered in the first poll");
        assert_eq!(answer.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_configured_latency_is_still_waited_for() {
        let config = AzureSimConfig {
            imds_latency: Latency::Fixed(Duration::from_millis(50)),
            ..AzureSimConfig::default()
        };
        assert!(ask(config).await.is_none());
    }
}
