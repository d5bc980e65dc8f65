//! Azure AD as the simulator serves it: tenant discovery documents and the client-credentials
//! token endpoint (v1 `resource=`, v2 `scope=`), for service principals (secret or certificate
//! assertion) and federated user-assigned identities (assertions checked in `federation`).

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::Shared;
use super::federation::Refusal;
use super::state::{FaultKind, FaultTarget};
use super::wire::{base_url, hang, oauth_error, read_body, simulate_latency};

/// The tenant discovery document MSAL-based SDKs fetch before asking for a token.
pub(super) fn openid_configuration(req: &HttpRequest, tenant: &str, v2: bool) -> HttpResponse {
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

pub(super) async fn aad(
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
    simulate_latency(delay).await;
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
