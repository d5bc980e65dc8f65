//! The token shape every Azure SDK expects from the metadata service: a JSON object whose
//! fields are all strings. Azure AD's v2 endpoint answers numbers; [`Token`] accepts both and
//! always writes strings, so NMI can answer with it unchanged.

use serde::{Deserialize, Deserializer, Serialize};
use std::time::Duration;

/// Longest life a token is credited with, whatever its `expires_in`/`expires_on` say: metadata
/// service and Azure AD tokens live up to 24 hours, and the cap keeps clock arithmetic on
/// upstream numbers from overflowing.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// An access token in the metadata service's JSON shape. `Debug` hides the token itself.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The bearer token.
    pub access_token: String,
    /// Refresh token (empty for managed identities and client credentials).
    #[serde(default, deserialize_with = "stringish")]
    pub refresh_token: String,
    /// Lifetime in seconds from issue.
    #[serde(default, deserialize_with = "stringish")]
    pub expires_in: String,
    /// Expiry as Unix seconds.
    #[serde(default, deserialize_with = "stringish")]
    pub expires_on: String,
    /// Not-before as Unix seconds.
    #[serde(default, deserialize_with = "stringish")]
    pub not_before: String,
    /// Audience the token is for.
    #[serde(default, deserialize_with = "stringish")]
    pub resource: String,
    /// Always `Bearer`.
    #[serde(default, deserialize_with = "stringish")]
    pub token_type: String,
    /// Client id of the identity (metadata service only).
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "stringish"
    )]
    pub client_id: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .field("resource", &self.resource)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Expiry as Unix seconds, if the field holds a number.
    #[must_use]
    pub fn expires_on_unix(&self) -> Option<i64> {
        self.expires_on.parse().ok()
    }
}

fn stringish<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        Text(String),
        Number(i64),
        Null(()),
    }
    Ok(match S::deserialize(d)? {
        S::Text(s) => s,
        S::Number(n) => n.to_string(),
        S::Null(()) => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_from_v2_become_strings_and_debug_hides_the_token() {
        let t: Token = serde_json::from_str(
            r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ.secret"}"#,
        )
        .unwrap();
        assert_eq!(t.expires_in, "3599");
        let out = serde_json::to_value(&t).unwrap();
        assert_eq!(out["expires_in"], "3599");
        assert!(!format!("{t:?}").contains("eyJ.secret"));
    }
}
