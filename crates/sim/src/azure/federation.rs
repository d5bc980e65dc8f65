//! Workload identity federation at the simulated Azure AD: federated identity credentials on
//! user-assigned identities (issuer, subject, audiences), and the check of a client assertion
//! presented for one, in the order Azure AD reports failures.
//!
//! A request is federated when it is a client-credentials grant whose `client_id` is a
//! user-assigned identity's and which carries a `client_assertion` (`jwt-bearer`). The
//! assertion is then checked as Azure AD checks it:
//!
//! 1. a JWT at all, with `iss`, `sub`, `aud` and `exp` (else AADSTS50027, 400);
//! 2. the identity has federated credentials at all (else AADSTS70021, 401, naming the
//!    assertion's issuer, subject and audience);
//! 3. one of them names the assertion's issuer, compared exactly (else AADSTS700211);
//! 4. the issuer's OpenID discovery document (`<iss>/.well-known/openid-configuration`, whose
//!    `issuer` must be the same string) and its `jwks_uri` can be fetched (else AADSTS50166);
//! 5. the key named by the header's `kid` is in that set (else AADSTS7000272) and the RS256
//!    signature verifies with it (else AADSTS700027);
//! 6. now lies between `nbf` and `exp`, five minutes of clock skew allowed (else AADSTS700024);
//! 7. a credential of that issuer names the subject exactly (else AADSTS700213) and one of the
//!    assertion's audiences (else AADSTS700212).
//!
//! Every refusal but the first is `invalid_client` with HTTP 401, as Azure AD answers them
//! today (it once answered AADSTS70021 with 400 `invalid_request`). The issuer's documents are
//! fetched on every exchange (Azure AD caches them; a simulator that never caches cannot hide a
//! rotated key), and only from loopback addresses: the simulator never reaches outside
//! 127.0.0.0/8, whatever an assertion names.

use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

/// A federated identity credential of a user-assigned identity (ARM's
/// `Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatedCredential {
    /// Name of the credential.
    pub name: String,
    /// The token issuer it trusts (the cluster's OIDC issuer URL), compared exactly.
    pub issuer: String,
    /// The subject it accepts (`system:serviceaccount:<namespace>:<name>`), compared exactly.
    pub subject: String,
    /// Audiences it accepts (`api://AzureADTokenExchange`).
    pub audiences: Vec<String>,
}

/// Clock skew allowed on `nbf` and `exp`.
const SKEW_SECONDS: i64 = 300;
/// Largest discovery document or key set read.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Bound of each fetch from an issuer.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

const DOCS: &str = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation";

/// An Azure AD refusal: HTTP status, OAuth error, description starting with the AADSTS code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
}

impl Refusal {
    fn client(description: String) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description,
        }
    }

    /// The AADSTS number of the description (for tests and counters).
    #[cfg(test)]
    pub fn code(&self) -> &str {
        self.description
            .strip_prefix("AADSTS")
            .and_then(|s| s.split(':').next())
            .unwrap_or("")
    }

    pub fn response(&self) -> HttpResponse {
        let code: u64 = self
            .description
            .strip_prefix("AADSTS")
            .and_then(|s| s.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        HttpResponse::build(self.status)
            .content_type("application/json; charset=utf-8")
            .json(serde_json::json!({
                "error": self.error,
                "error_description": self.description,
                "error_codes": [code],
                "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
            }))
    }
}

/// The claims the check reads; `aud` may be a string or a list.
#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    #[serde(default, deserialize_with = "audiences")]
    aud: Vec<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

fn audiences<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum A {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<A>::deserialize(d)? {
        None => Vec::new(),
        Some(A::One(s)) => vec![s],
        Some(A::Many(v)) => v,
    })
}

fn malformed() -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        description: "AADSTS50027: JWT token is invalid or malformed.".into(),
    }
}

fn oidc_failed(detail: &str) -> Refusal {
    Refusal::client(format!(
        "AADSTS50166: Request to External OIDC endpoint failed. {detail}"
    ))
}

/// Azure AD's timestamps in messages: `2024-10-02T22:05:03.0000000Z`.
fn when(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        // Whole seconds: the seven fractional digits Azure AD writes are zeros here.
        .map(|t| format!("{}.0000000Z", t.format("%Y-%m-%dT%H:%M:%S")))
        .unwrap_or_else(|| unix.to_string())
}

/// Only loopback issuers are ever contacted.
fn loopback_url(url: &str) -> Result<url::Url, Refusal> {
    let u = url::Url::parse(url).map_err(|_| oidc_failed(&format!("'{url}' is not a URL.")))?;
    let loopback = match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if !matches!(u.scheme(), "http" | "https") || !loopback {
        return Err(oidc_failed(&format!(
            "The simulator only contacts issuers on loopback addresses, not '{url}'."
        )));
    }
    Ok(u)
}

async fn fetch_json(http: &reqwest::Client, url: &str) -> Result<Value, Refusal> {
    let u = loopback_url(url)?;
    let mut resp = http
        .get(u)
        .send()
        .await
        .map_err(|e| oidc_failed(&format!("GET {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(oidc_failed(&format!("GET {url}: {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| oidc_failed(&format!("GET {url}: {e}")))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(oidc_failed(&format!("GET {url}: document too large")));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| oidc_failed(&format!("GET {url}: {e}")))
}

/// Checks `assertion` against `credentials` (those of the identity it is presented for) at
/// unix time `now`, fetching the issuer's keys with `http`.
pub(crate) async fn check(
    assertion: &str,
    credentials: &[FederatedCredential],
    now: i64,
    http: &reqwest::Client,
) -> Result<(), Refusal> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed())?;
    let payload = assertion.split('.').nth(1).ok_or_else(malformed)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| malformed())?;
    let claims: Claims = serde_json::from_slice(&raw).map_err(|_| malformed())?;
    let (Some(iss), Some(sub), Some(exp)) = (claims.iss, claims.sub, claims.exp) else {
        return Err(malformed());
    };
    if claims.aud.is_empty() {
        return Err(malformed());
    }
    let aud = claims.aud.join(", ");
    if credentials.is_empty() {
        return Err(Refusal::client(format!(
            "AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{aud}'. {DOCS}"
        )));
    }
    let of_issuer: Vec<&FederatedCredential> =
        credentials.iter().filter(|c| c.issuer == iss).collect();
    if of_issuer.is_empty() {
        return Err(Refusal::client(format!(
            "AADSTS700211: No matching federated identity record found for presented assertion issuer '{iss}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {DOCS}"
        )));
    }

    let discovery_url = format!(
        "{}/.well-known/openid-configuration",
        iss.trim_end_matches('/')
    );
    let discovery = fetch_json(http, &discovery_url).await?;
    if discovery.get("issuer").and_then(Value::as_str) != Some(iss.as_str()) {
        return Err(oidc_failed(&format!(
            "The issuer of the discovery document at {discovery_url} is not '{iss}'."
        )));
    }
    let jwks_uri = discovery
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| oidc_failed(&format!("{discovery_url} has no jwks_uri.")))?;
    let keys: jsonwebtoken::jwk::JwkSet = serde_json::from_value(fetch_json(http, jwks_uri).await?)
        .map_err(|e| oidc_failed(&format!("{jwks_uri} is not a key set: {e}")))?;
    let kid = header.kid.clone().unwrap_or_default();
    let Some(jwk) = keys.find(&kid) else {
        return Err(Refusal::client(format!(
            "AADSTS7000272: The certificate with identifier {kid} used to sign the federated credential could not be found in the metadata of identity provider {iss}. Please validate that your Identity Provider's metadata exposes the key used to sign the incoming token."
        )));
    };
    let bad_signature = |why: &str| {
        Refusal::client(format!(
            "AADSTS700027: Client assertion failed signature validation. [Reason - {why}]"
        ))
    };
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err(bad_signature(&format!(
            "The signing algorithm {:?} is not supported.",
            header.alg
        )));
    }
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk)
        .map_err(|_| bad_signature("The key of the identity provider is not usable."))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // Time, audience and subject are checked below, with Azure AD's own messages.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(assertion, &key, &validation).map_err(|_| {
        bad_signature("The provided signature value did not match the expected signature value.")
    })?;

    let nbf = claims.nbf.unwrap_or(i64::MIN);
    if now > exp + SKEW_SECONDS || now + SKEW_SECONDS < nbf {
        let from = if nbf == i64::MIN { when(0) } else { when(nbf) };
        return Err(Refusal::client(format!(
            "AADSTS700024: Client assertion is not within its valid time range. Current time: {}, assertion valid from {from}, expiry time of assertion {}. Review the documentation at {DOCS}",
            when(now),
            when(exp)
        )));
    }
    let of_subject: Vec<&&FederatedCredential> =
        of_issuer.iter().filter(|c| c.subject == sub).collect();
    if of_subject.is_empty() {
        return Err(Refusal::client(format!(
            "AADSTS700213: No matching federated identity record found for presented assertion subject '{sub}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {DOCS}"
        )));
    }
    if !of_subject
        .iter()
        .any(|c| c.audiences.iter().any(|a| claims.aud.contains(a)))
    {
        return Err(Refusal::client(format!(
            "AADSTS700212: No matching federated identity record found for presented assertion audience '{aud}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {DOCS}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    fn unsigned(claims: &Value) -> String {
        let e = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
        };
        format!(
            "{}.{}.c2ln",
            e(&serde_json::json!({"alg": "RS256", "kid": "k"})),
            e(claims)
        )
    }

    fn cred(issuer: &str) -> FederatedCredential {
        FederatedCredential {
            name: "c".into(),
            issuer: issuer.into(),
            subject: "system:serviceaccount:ns:sa".into(),
            audiences: vec!["api://AzureADTokenExchange".into()],
        }
    }

    #[tokio::test]
    async fn refusals_before_any_fetch_name_what_did_not_match() {
        let claims = serde_json::json!({"iss": "http://127.0.0.1:1", "sub": "system:serviceaccount:ns:sa", "aud": "api://AzureADTokenExchange", "exp": 10});
        let a = unsigned(&claims);
        assert_eq!(
            check("not-a-jwt", &[], 0, &http())
                .await
                .unwrap_err()
                .code(),
            "50027"
        );
        let r = check(&a, &[], 0, &http()).await.unwrap_err();
        assert_eq!((r.code(), r.status), ("70021", StatusCode::UNAUTHORIZED));
        assert!(
            r.description
                .contains("Assertion Subject: 'system:serviceaccount:ns:sa'")
        );
        let r = check(&a, &[cred("http://127.0.0.1:2")], 0, &http())
            .await
            .unwrap_err();
        assert_eq!(r.code(), "700211");
        let no_aud = unsigned(&serde_json::json!({"iss": "x", "sub": "y", "exp": 1}));
        assert_eq!(
            check(&no_aud, &[cred("x")], 0, &http())
                .await
                .unwrap_err()
                .code(),
            "50027"
        );
    }

    #[tokio::test]
    async fn issuers_outside_loopback_are_never_contacted() {
        let a = unsigned(
            &serde_json::json!({"iss": "https://oidc.example.com/x", "sub": "s", "aud": ["a"], "exp": 10}),
        );
        let r = check(&a, &[cred("https://oidc.example.com/x")], 0, &http())
            .await
            .unwrap_err();
        assert_eq!(r.code(), "50166");
        assert!(r.description.contains("loopback"), "{}", r.description);
    }

    #[test]
    fn timestamps_are_written_as_azure_ad_writes_them() {
        assert_eq!(when(0), "1970-01-01T00:00:00.0000000Z");
    }
}
