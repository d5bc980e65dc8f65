//! Service-account tokens: the `serviceaccounts/token` subresource (an `authentication.k8s.io/v1`
//! TokenRequest, as `kubectl create token`, the kubelet and NMI use it), the issuer's RS256
//! signing key, and the issuer's OpenID discovery document and JWKS, which relying parties such
//! as Azure AD fetch to verify the tokens.
//!
//! The rules are the API server's (`pkg/registry/core/serviceaccount/storage/token.go` and the
//! TokenRequest validation): the body's name and namespace must match the URL; the service
//! account must exist (404); `expirationSeconds` defaults to 3600 and must be at least 600 and at
//! most 2^32 (422); audiences default to the API server's own (the issuer); a bound object must
//! be a Pod, Secret or Node that exists (404), a Pod must run as that service account (400), and
//! a given uid must match the object's (409). The token carries the real claim layout: `iss`,
//! `sub` (`system:serviceaccount:<ns>:<name>`), `aud`, `exp`, `iat`, `nbf`, `jti`, and the
//! `kubernetes.io` claim naming the namespace, the service account and the bound pod (with its
//! node) or secret or node, each with its uid. The header has `alg` RS256 and the key's `kid`.
//!
//! Discovery is served without authentication, as a managed cluster's public OIDC issuer
//! serves it (a bare API server asks for credentials by default; the simulator has none).
//! The signing key is generated on first use, so simulators that never sign pay nothing.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::Shared;
use super::meta::{ApiError, name_of, namespace_of, uid_of};
use super::wire::json_response;

/// Path of the issuer's OpenID discovery document.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Path of the issuer's key set (the API server's).
pub const JWKS_PATH: &str = "/openid/v1/jwks";
/// Shortest lifetime the API server grants (10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// Longest lifetime the API server accepts (2^32 seconds).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// Lifetime when the request names none.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

const GROUP: &str = "authentication.k8s.io";

/// The issuer: its URL and its signing key.
#[derive(Debug)]
pub struct Issuer {
    url: String,
    key: OnceLock<Result<SigningKey, String>>,
}

struct SigningKey {
    encoding: EncodingKey,
    jwk: Jwk,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    fn generate() -> Result<Self, String> {
        let pair =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .map_err(|e| format!("cannot generate the issuer's RSA key: {e}"))?;
        let encoding = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes())
            .map_err(|e| format!("cannot load the issuer's RSA key: {e}"))?;
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256)
            .map_err(|e| format!("cannot describe the issuer's key as a JWK: {e}"))?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Self { encoding, jwk, kid })
    }
}

impl Issuer {
    /// An issuer named `url` (the `iss` of its tokens); its key is made on first use.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key: OnceLock::new(),
        }
    }

    /// The issuer URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self) -> Result<&SigningKey, ApiError> {
        self.key
            .get_or_init(SigningKey::generate)
            .as_ref()
            .map_err(|e| internal(e.clone()))
    }

    /// Signs `claims` as they are (RS256, with the key's `kid`).
    ///
    /// # Errors
    /// A 500 when the key cannot be made or the claims not encoded.
    pub fn sign(&self, claims: &Value) -> Result<String, ApiError> {
        let key = self.key()?;
        let mut header = Header::new(Algorithm::RS256);
        // The API server's tokens carry `alg` and `kid` only.
        header.typ = None;
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .map_err(|e| internal(format!("failed to generate token: {e}")))
    }

    /// The OpenID discovery document, with the key set at `base_url` + [`JWKS_PATH`].
    #[must_use]
    pub fn discovery(&self, base_url: &str) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}{JWKS_PATH}", base_url.trim_end_matches('/')),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    }

    /// The key set.
    ///
    /// # Errors
    /// A 500 when the key cannot be made.
    pub fn jwks(&self) -> Result<Value, ApiError> {
        let key = self.key()?;
        let mut jwk = serde_json::to_value(&key.jwk).map_err(|e| internal(e.to_string()))?;
        jwk["alg"] = json!("RS256");
        Ok(json!({ "keys": [jwk] }))
    }
}

fn internal(message: String) -> ApiError {
    let mut e = ApiError::bad_request(message);
    e.code = 500;
    e.reason = "InternalError";
    e
}

/// Answers the issuer's discovery document and key set; `None` for other paths.
pub fn handle(shared: &Shared, req: &actix_web::HttpRequest, path: &str) -> Option<HttpResponse> {
    match path {
        DISCOVERY_PATH => {
            let info = req.connection_info();
            let base = format!("{}://{}", info.scheme(), info.host());
            Some(json_response(
                StatusCode::OK,
                &shared.issuer.discovery(&base),
            ))
        }
        JWKS_PATH => Some(match shared.issuer.jwks() {
            Ok(set) => HttpResponse::Ok()
                .content_type("application/jwk-set+json")
                .body(serde_json::to_vec(&set).unwrap_or_default()),
            Err(e) => super::wire::error_response(&e),
        }),
        _ => None,
    }
}

fn invalid(name: &str, message: String) -> ApiError {
    ApiError::invalid(GROUP, "TokenRequest.authentication.k8s.io", name, message)
}

/// What a token is bound to.
enum Bound {
    Pod { pod: Value, node: Option<Value> },
    Secret(Value),
    Node(Value),
}

/// Handles `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`: the TokenRequest to
/// answer with (201), token in `status.token`, or the API server's refusal.
pub fn create(shared: &Shared, ns: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
    let body_name = name_of(body);
    if !body_name.is_empty() && body_name != name {
        return Err(invalid(
            name,
            format!(
                "metadata.name: Invalid value: \"{body_name}\": must match the service account name if specified"
            ),
        ));
    }
    let body_ns = namespace_of(body);
    if !body_ns.is_empty() && body_ns != ns {
        return Err(invalid(
            name,
            format!(
                "metadata.namespace: Invalid value: \"{body_ns}\": must match the service account namespace if specified"
            ),
        ));
    }
    let registry = shared.store.registry();
    let get = |plural: &str, ns: &str, name: &str| {
        let info = registry
            .get("", "v1", plural)
            .expect("core resources are built in");
        shared.store.get(&info, ns, name)
    };
    let sa = get("serviceaccounts", ns, name)?;
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let mut audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        // The API server's own audiences default to its issuer.
        audiences.push(shared.issuer.url().to_string());
    }
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!(
                "spec.expirationSeconds: must be an integer, got {v}"
            ))
        })?,
    };
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(invalid(
            "",
            format!(
                "spec.expirationSeconds: Invalid value: {expiration}: may not specify a duration less than 10 minutes"
            ),
        ));
    }
    if expiration > MAX_EXPIRATION_SECONDS {
        return Err(invalid(
            "",
            format!(
                "spec.expirationSeconds: Invalid value: {expiration}: may not specify a duration larger than 2^32 seconds"
            ),
        ));
    }
    let bound_ref = spec.get("boundObjectRef").filter(|v| v.is_object());
    let bound = match bound_ref {
        None => None,
        Some(r) => {
            let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
            let (api_version, kind, obj_name, want_uid) =
                (s("apiVersion"), s("kind"), s("name"), s("uid"));
            let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
            let version = api_version.rsplit_once('/').map_or(api_version, |(_, v)| v);
            let bound = match (group, kind) {
                ("", "Pod") => {
                    let pod = get("pods", ns, obj_name)?;
                    let runs_as = pod
                        .pointer("/spec/serviceAccountName")
                        .and_then(Value::as_str)
                        .unwrap_or("default");
                    if runs_as != name {
                        return Err(ApiError::bad_request(format!(
                            "cannot bind token for serviceaccount \"{name}\" to pod running with different serviceaccount name."
                        )));
                    }
                    let node = pod
                        .pointer("/spec/nodeName")
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .map(|n| match get("nodes", "", n) {
                            Ok(node) => (*node).clone(),
                            // As the API server: a missing node still leaves its name.
                            Err(_) => json!({"metadata": {"name": n}}),
                        });
                    Bound::Pod {
                        pod: (*pod).clone(),
                        node,
                    }
                }
                ("", "Secret") => Bound::Secret((*get("secrets", ns, obj_name)?).clone()),
                ("", "Node") => Bound::Node((*get("nodes", "", obj_name)?).clone()),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token to object of type {group}/{version}, Kind={kind}"
                    )));
                }
            };
            let obj = match &bound {
                Bound::Pod { pod, .. } => pod,
                Bound::Secret(o) | Bound::Node(o) => o,
            };
            if !want_uid.is_empty() && uid_of(obj) != want_uid {
                return Err(ApiError::conflict(
                    "",
                    kind,
                    obj_name,
                    &format!(
                        "the UID in the bound object reference ({want_uid}) does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                ));
            }
            Some(bound)
        }
    };

    let now = chrono::Utc::now();
    let iat = now.timestamp();
    let exp = iat + expiration;
    let reference = |o: &Value| json!({"name": name_of(o), "uid": uid_of(o)});
    let mut kubernetes = json!({
        "namespace": ns,
        "serviceaccount": reference(&sa),
    });
    match &bound {
        None => {}
        Some(Bound::Pod { pod, node }) => {
            kubernetes["pod"] = reference(pod);
            if let Some(n) = node {
                let mut r = json!({"name": name_of(n)});
                if !uid_of(n).is_empty() {
                    r["uid"] = json!(uid_of(n));
                }
                kubernetes["node"] = r;
            }
        }
        Some(Bound::Secret(s)) => kubernetes["secret"] = reference(s),
        Some(Bound::Node(n)) => kubernetes["node"] = reference(n),
    }
    let claims = json!({
        "aud": audiences,
        "exp": exp,
        "iat": iat,
        "iss": shared.issuer.url(),
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": kubernetes,
        "nbf": iat,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
    });
    let token = shared.issuer.sign(&claims)?;
    let expires = now + chrono::Duration::seconds(expiration);
    let mut out_spec = json!({"audiences": audiences, "expirationSeconds": expiration});
    if let Some(r) = bound_ref {
        out_spec["boundObjectRef"] = r.clone();
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": ns,
            "creationTimestamp": super::meta::timestamp(now),
        },
        "spec": out_spec,
        "status": {
            "token": token,
            "expirationTimestamp": super::meta::timestamp(expires),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn signed_claims_verify_against_the_published_key_set() {
        let issuer = Issuer::new("http://127.0.0.1:1");
        let token = issuer
            .sign(&json!({"sub": "system:serviceaccount:a:b", "aud": ["x"], "exp": 4_000_000_000u64, "iss": issuer.url()}))
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(
            header.typ, None,
            "the API server's tokens carry alg and kid only"
        );
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(issuer.jwks().unwrap()).unwrap();
        let jwk = set
            .find(header.kid.as_deref().unwrap())
            .expect("kid is published");
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&["x"]);
        v.set_issuer(&[issuer.url()]);
        let data = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
            .unwrap();
        assert_eq!(data.claims["sub"], "system:serviceaccount:a:b");
        let other = Issuer::new("http://127.0.0.1:1");
        let other_set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(other.jwks().unwrap()).unwrap();
        assert!(
            other_set.find(header.kid.as_deref().unwrap()).is_none(),
            "each issuer has its own key"
        );
    }

    #[test]
    fn discovery_names_the_issuer_and_its_key_set() {
        let issuer = Issuer::new("https://issuer.example");
        let d = issuer.discovery("http://127.0.0.1:9/");
        assert_eq!(d["issuer"], "https://issuer.example");
        assert_eq!(d["jwks_uri"], "http://127.0.0.1:9/openid/v1/jwks");
        assert_eq!(d["id_token_signing_alg_values_supported"], json!(["RS256"]));
    }
}
