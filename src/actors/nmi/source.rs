//! The port through which NMI obtains tokens, and the parsed form of the token it relays.
//!
//! The token broker never talks HTTP to Azure itself: it asks a [`TokenSource`] (the metadata
//! service client for type-0 identities and the node's own identity, the Azure AD client for
//! service principals, and for federated identities the calling pod's service-account token
//! exchanged at Azure AD). Keeping this a trait lets the broker and its cache be tested with a fake,
//! and lets the binary plug in the real clients from `cloud`.

use crate::crd::AzureIdentitySpec;
use async_trait::async_trait;
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Deserializer};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Whose token is asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenTarget {
    /// The node's own identity from the metadata service (exception pods, MIC). With a client id,
    /// that user-assigned identity on the node, as the original does for excepted pods.
    Node {
        /// Client id the caller named, if any.
        client_id: Option<String>,
    },
    /// A user-assigned managed identity (AzureIdentity type 0), from the metadata service.
    UserAssigned {
        /// Client id of the identity (may be empty when only the resource id is known).
        client_id: String,
        /// ARM resource id of the identity (may be empty).
        resource_id: String,
    },
    /// A service principal (type 1 secret, type 2 certificate) from Azure AD; the source reads
    /// the Secret referenced by `identity.client_password`.
    ServicePrincipal {
        /// The AzureIdentity's spec as assigned.
        identity: Arc<AzureIdentitySpec>,
        /// Namespace of the AzureIdentity (where an unqualified Secret reference points).
        identity_namespace: String,
        /// The identity is namespaced: its Secret must be in `identity_namespace`.
        namespaced: bool,
    },
    /// A federated identity: the calling pod's service-account token (TokenRequest, audience
    /// `api://AzureADTokenExchange`, bound to the pod) exchanged at Azure AD.
    Federated {
        /// Client id of the identity (`clientID`, or the service account's annotation).
        client_id: String,
        /// Tenant of the identity (empty: NMI's `--federation-tenant-id`).
        tenant_id: String,
        /// Azure AD authority (`adEndpoint`; empty: the default authority).
        ad_endpoint: String,
        /// The calling pod.
        pod: FederatedPod,
    },
}

/// The pod a federated token is fetched for: its service-account token, bound to it, is what
/// Azure AD exchanges (so it names the pod's service account as the subject).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatedPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (the token is bound to exactly this pod).
    pub uid: String,
    /// `spec.serviceAccountName` (`default` when unset, as the API server fills it in).
    pub service_account: String,
}

impl FederatedPod {
    /// The subject Azure AD sees: `system:serviceaccount:<namespace>:<service account>`.
    #[must_use]
    pub fn subject(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

/// One upstream token request.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRequest {
    /// Whose token.
    pub target: TokenTarget,
    /// The `resource` the token is for (as the caller sent it).
    pub resource: String,
}

/// What the upstream service answered: its status and body, untouched. `Debug` shows the body's
/// length only (a 200 body is a token).
#[derive(Clone)]
pub struct UpstreamToken {
    /// HTTP status of the token service.
    pub status: u16,
    /// Body as received (the metadata-service token JSON when `status` is 200).
    pub body: Bytes,
}

impl std::fmt::Debug for UpstreamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamToken")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Why an upstream token could not be obtained at all.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SourceError {
    /// The token service could not be reached (the original answers 503 for this).
    #[error("token service unreachable: {0}")]
    Unreachable(String),
    /// The request was refused before or by the service (missing Secret, bad certificate, ...).
    #[error("token request refused: {0}")]
    Refused(String),
}

/// Obtains tokens from Azure. Implemented by the real clients and by test fakes.
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// Fetch one token. Any HTTP answer is `Ok`; only a failure to get an answer is `Err`.
    async fn fetch(&self, request: &TokenRequest) -> Result<UpstreamToken, SourceError>;
}

/// A successful token, pre-rendered so that serving it costs one buffer and no JSON encoding.
///
/// The body is the original's `msiResponse` (field order `access_token`, `refresh_token`,
/// `expires_in`, `expires_on`, `not_before`, `resource`, `token_type`, all strings), with
/// `expires_in` recomputed at serve time so a cached token never claims more life than it has.
///
/// A service principal with auxiliary tenants gets one token per tenant; the original answers
/// those as a JSON array, and so does this type. `Debug` never shows a token.
pub struct RenderedToken {
    parts: Vec<Part>,
    array: bool,
    /// Expiry as unix seconds (the earliest, for several tokens).
    pub expires_on: u64,
    /// `oid` claim of the access token when it is a JWT (used to match `object_id` requests).
    pub object_id: Option<Box<str>>,
}

impl std::fmt::Debug for RenderedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderedToken")
            .field("tokens", &self.parts.len())
            .field("access_token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .field("object_id", &self.object_id)
            .finish_non_exhaustive()
    }
}

/// One token, rendered around its `expires_in` value.
struct Part {
    head: Bytes,
    tail: Bytes,
    expires_on: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireBody {
    One(WireToken),
    Many(Vec<WireToken>),
}

#[derive(Deserialize)]
struct WireToken {
    access_token: String,
    #[serde(default, deserialize_with = "stringish")]
    refresh_token: String,
    #[serde(default, deserialize_with = "stringish")]
    expires_in: String,
    #[serde(default, deserialize_with = "stringish")]
    expires_on: String,
    #[serde(default, deserialize_with = "stringish")]
    not_before: String,
    #[serde(default, deserialize_with = "stringish")]
    resource: String,
    #[serde(default, deserialize_with = "stringish")]
    token_type: String,
}

/// Accepts a JSON string or number (Azure AD v2 sends numbers, the metadata service strings).
fn stringish<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        Str(String),
        Num(serde_json::Number),
        Null(()),
    }
    Ok(match S::deserialize(d)? {
        S::Str(s) => s,
        S::Num(n) => n.to_string(),
        S::Null(()) => String::new(),
    })
}

/// Why a 200 body could not be used as a token.
#[derive(Debug, thiserror::Error)]
#[error("token service answered 200 with a body that is not a token: {0}")]
pub struct MalformedToken(String);

/// Seconds since the unix epoch, now.
#[must_use]
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RenderedToken {
    /// Parses a metadata-service (or Azure AD v1) token body.
    ///
    /// # Errors
    /// [`MalformedToken`] when the body is not a token JSON object; the message never contains
    /// the body (it may hold a token).
    pub fn parse(body: &[u8]) -> Result<Self, MalformedToken> {
        let wire: WireBody = serde_json::from_slice(body).map_err(|e| {
            MalformedToken(format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let (tokens, array) = match wire {
            WireBody::One(t) => (vec![t], false),
            WireBody::Many(ts) if !ts.is_empty() => (ts, true),
            WireBody::Many(_) => return Err(MalformedToken("empty token list".into())),
        };
        let object_id = jwt_oid(&tokens[0].access_token);
        let parts: Vec<Part> = tokens.iter().map(Part::new).collect();
        let expires_on = parts.iter().map(|p| p.expires_on).min().unwrap_or(0);
        Ok(Self {
            parts,
            array,
            expires_on,
            object_id,
        })
    }

    /// The token JSON as of `now` (unix seconds).
    #[must_use]
    pub fn render(&self, now: u64) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len_hint());
        self.render_into(&mut out, now);
        out.freeze()
    }

    /// Appends the token JSON as of `now` to `out`.
    pub fn render_into(&self, out: &mut BytesMut, now: u64) {
        if self.array {
            out.put_slice(b"[");
        }
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                out.put_slice(b",");
            }
            out.put_slice(&p.head);
            let mut digits = [0u8; 20];
            out.put_slice(format_u64(p.expires_on.saturating_sub(now), &mut digits));
            out.put_slice(&p.tail);
        }
        if self.array {
            out.put_slice(b"]");
        }
    }

    fn len_hint(&self) -> usize {
        self.parts
            .iter()
            .map(|p| p.head.len() + p.tail.len() + 21)
            .sum::<usize>()
            + 2
    }

    /// `/host/token`'s body: `{"token":{…},"clientid":"…"}`.
    #[must_use]
    pub fn render_host(&self, now: u64, client_id: &str) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len_hint() + client_id.len() + 32);
        out.put_slice(b"{\"token\":");
        self.render_into(&mut out, now);
        out.put_slice(b",\"clientid\":");
        put_json_str(&mut out, client_id);
        out.put_slice(b"}");
        out.freeze()
    }
}

impl Part {
    fn new(wire: &WireToken) -> Self {
        let expires_on = wire
            .expires_on
            .trim()
            .parse::<u64>()
            .ok()
            .unwrap_or_else(|| {
                unix_now().saturating_add(wire.expires_in.trim().parse::<u64>().unwrap_or(0))
            });
        let mut head = BytesMut::with_capacity(wire.access_token.len() + 96);
        head.put_slice(b"{\"access_token\":");
        put_json_str(&mut head, &wire.access_token);
        head.put_slice(b",\"refresh_token\":");
        put_json_str(&mut head, &wire.refresh_token);
        head.put_slice(b",\"expires_in\":\"");
        let mut tail = BytesMut::with_capacity(128 + wire.resource.len());
        tail.put_slice(b"\",\"expires_on\":\"");
        tail.put_slice(expires_on.to_string().as_bytes());
        tail.put_slice(b"\",\"not_before\":");
        put_json_str(&mut tail, &wire.not_before);
        tail.put_slice(b",\"resource\":");
        put_json_str(&mut tail, &wire.resource);
        tail.put_slice(b",\"token_type\":");
        put_json_str(&mut tail, &wire.token_type);
        tail.put_slice(b"}");
        Self {
            head: head.freeze(),
            tail: tail.freeze(),
            expires_on,
        }
    }
}

fn put_json_str(out: &mut BytesMut, s: &str) {
    // serde_json's string escaping; cannot fail for a &str.
    let quoted = serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""));
    out.put_slice(quoted.as_bytes());
}

fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        // n % 10 < 10, so the cast cannot truncate.
        buf[i] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// The `oid` claim of a JWT, without verifying it (the token came from Azure over our own channel).
fn jwt_oid(token: &str) -> Option<Box<str>> {
    #[derive(Deserialize)]
    struct Claims {
        oid: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Claims = serde_json::from_slice(&raw).ok()?;
    claims.oid.map(String::into_boxed_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMDS_BODY: &str = r#"{"access_token":"eyJ0.eyJ.sig","client_id":"c","expires_in":"3599","expires_on":"2000003600","ext_expires_in":"3599","not_before":"2000000000","resource":"https://vault.azure.net","token_type":"Bearer"}"#;

    #[test]
    fn renders_the_originals_field_order_with_expires_in_from_now() {
        let t = RenderedToken::parse(IMDS_BODY.as_bytes()).unwrap();
        let body = t.render(2_000_003_000);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"access_token":"eyJ0.eyJ.sig","refresh_token":"","expires_in":"600","expires_on":"2000003600","not_before":"2000000000","resource":"https://vault.azure.net","token_type":"Bearer"}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&t.render(2_000_004_000)).unwrap();
        assert_eq!(v["expires_in"], "0");
    }

    #[test]
    fn host_body_wraps_the_token_and_client_id() {
        let t = RenderedToken::parse(IMDS_BODY.as_bytes()).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&t.render_host(2_000_000_000, "cid\"x")).unwrap();
        assert_eq!(v["clientid"], "cid\"x");
        assert_eq!(v["token"]["access_token"], "eyJ0.eyJ.sig");
        assert_eq!(v["token"]["expires_in"], "3600");
    }

    #[test]
    fn numeric_fields_and_missing_expires_on_are_accepted() {
        let t =
            RenderedToken::parse(br#"{"access_token":"a","expires_in":100,"token_type":"Bearer"}"#)
                .unwrap();
        assert!(t.expires_on >= unix_now() + 99);
    }

    #[test]
    fn a_body_that_is_not_a_token_is_refused_without_echoing_it() {
        let err = RenderedToken::parse(br#"{"error":"secret-ish"}"#).unwrap_err();
        assert!(!err.to_string().contains("secret-ish"));
    }

    #[test]
    fn object_id_is_read_from_the_jwt_payload() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"oid":"o-1"}"#);
        let body = format!(r#"{{"access_token":"h.{payload}.s","expires_on":"1"}}"#);
        let t = RenderedToken::parse(body.as_bytes()).unwrap();
        assert_eq!(t.object_id.as_deref(), Some("o-1"));
    }

    #[test]
    fn several_tokens_render_as_an_array_expiring_with_the_first() {
        let body = br#"[{"access_token":"a","expires_on":"200","token_type":"Bearer"},{"access_token":"b","expires_on":"100","token_type":"Bearer"}]"#;
        let t = RenderedToken::parse(body).unwrap();
        assert_eq!(t.expires_on, 100);
        let v: serde_json::Value = serde_json::from_slice(&t.render(50)).unwrap();
        assert_eq!(v[0]["access_token"], "a");
        assert_eq!(v[0]["expires_in"], "150");
        assert_eq!(v[1]["expires_in"], "50");
        assert!(RenderedToken::parse(b"[]").is_err());
    }

    #[test]
    fn digits_are_formatted() {
        let mut b = [0u8; 20];
        assert_eq!(format_u64(0, &mut b), b"0");
        assert_eq!(
            format_u64(u64::MAX, &mut b),
            u64::MAX.to_string().as_bytes()
        );
    }
}
