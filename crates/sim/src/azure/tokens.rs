//! Tokens the simulator issues (HS256 JWTs with a per-run key) and the client assertions it
//! checks (RS256, signed with a registered certificate's key).
//!
//! Claims name exactly who got what (`aud`, `appid`, `oid`, `tid`, `xms_mirid`), so a test can
//! decode any token a client received and check it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Claims of every token the simulator issues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Audience (the `resource` asked for).
    pub aud: String,
    /// Issuer (`https://sts.windows.net/<tenant>/`).
    pub iss: String,
    /// Client id of the identity or service principal.
    pub appid: String,
    /// Principal (object) id.
    pub oid: String,
    /// Subject (the principal id).
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// Resource id of a managed identity (empty for service principals).
    #[serde(default)]
    pub xms_mirid: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Not before (Unix seconds).
    pub nbf: u64,
    /// Expiry (Unix seconds).
    pub exp: u64,
}

/// The simulator's signing key.
#[derive(Clone)]
pub(crate) struct TokenSigner {
    secret: Vec<u8>,
}

impl TokenSigner {
    pub fn random() -> Self {
        let secret: [u8; 32] = rand::random();
        Self {
            secret: secret.to_vec(),
        }
    }

    /// Issues a token; returns it with its expiry.
    pub fn issue(
        &self,
        aud: &str,
        tenant: &str,
        appid: &str,
        oid: &str,
        mirid: &str,
        lifetime: Duration,
    ) -> (String, u64) {
        let now = unix_now();
        let exp = now + lifetime.as_secs();
        let claims = TokenClaims {
            aud: aud.to_string(),
            iss: format!("https://sts.windows.net/{tenant}/"),
            appid: appid.to_string(),
            oid: oid.to_string(),
            sub: oid.to_string(),
            tid: tenant.to_string(),
            xms_mirid: mirid.to_string(),
            iat: now,
            nbf: now,
            exp,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.secret),
        )
        .expect("HS256 signing cannot fail");
        (token, exp)
    }

    /// Verifies signature and expiry of a token this simulator issued.
    pub fn verify(&self, token: &str) -> Result<TokenClaims, String> {
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<TokenClaims>(token, &DecodingKey::from_secret(&self.secret), &v)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }
}

/// Claims of a client assertion.
#[derive(Debug, Deserialize)]
pub(crate) struct AssertionClaims {
    pub aud: String,
    pub iss: String,
    pub sub: String,
}

/// The `x5t` header of an assertion, without verifying anything.
pub(crate) fn assertion_thumbprint(assertion: &str) -> Option<String> {
    jsonwebtoken::decode_header(assertion).ok()?.x5t
}

/// Verifies an RS256 assertion with a PKCS#1 RSA public key.
pub(crate) fn verify_assertion(
    assertion: &str,
    rsa_public_pkcs1: &[u8],
) -> Result<AssertionClaims, String> {
    let mut v = Validation::new(Algorithm::RS256);
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp"]);
    jsonwebtoken::decode::<AssertionClaims>(
        assertion,
        &DecodingKey::from_rsa_der(rsa_public_pkcs1),
        &v,
    )
    .map(|d| d.claims)
    .map_err(|e| e.to_string())
}

/// The RSA public key (PKCS#1) inside a certificate.
pub(crate) fn certificate_rsa_public_key(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// Azure AD's `x5t` for a registered certificate: base64url of the SHA-1 of its DER. Computed
/// here, on Azure's side, rather than borrowed from the product's client.
pub(crate) fn certificate_thumbprint(cert_der: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(cert_der))
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_carry_their_claims() {
        let s = TokenSigner::random();
        let (t, exp) = s.issue(
            "https://vault.azure.net",
            "t",
            "c",
            "o",
            "/id",
            Duration::from_secs(60),
        );
        let c = s.verify(&t).unwrap();
        assert_eq!(
            (c.aud.as_str(), c.appid.as_str(), c.oid.as_str()),
            ("https://vault.azure.net", "c", "o")
        );
        assert_eq!(c.exp, exp);
        assert!(
            TokenSigner::random().verify(&t).is_err(),
            "another run's key must not verify"
        );
    }
}
