//! Parsing of what a caller sends: which route a path is, and the token query.
//!
//! Pure functions over borrowed input; fuzzed by property tests (no input may panic).

use crate::actors::nmi::identity::Wanted;
use std::borrow::Cow;

/// What a request path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/metadata/identity/oauth2/token...` ("metadata" case-insensitive, prefix match).
    Token,
    /// A token path with backslashes in place of slashes: 400 `Invalid request`.
    InvalidToken,
    /// `/host/token...`.
    HostToken,
    /// `/metadata/instance...` ("metadata" case-insensitive); blocked on request.
    Instance,
    /// Anything else: proxied to the metadata service.
    Other,
}

const TOKEN_REST: &str = "/identity/oauth2/token";

/// Percent-decodes a request path (as the original's router sees it).
#[must_use]
pub fn decode_path(raw: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(raw).decode_utf8_lossy()
}

/// The route of a (decoded) path.
#[must_use]
pub fn classify(path: &str) -> Route {
    if let Some(after) = path.strip_prefix('/') {
        let end = after.find(['/', '\\']).unwrap_or(after.len());
        if after[..end].eq_ignore_ascii_case("metadata") {
            let rest = &after[end..];
            if rest.starts_with(TOKEN_REST) {
                return Route::Token;
            }
            if rest.contains('\\') && normalized_starts_with_token(rest) {
                return Route::InvalidToken;
            }
            if rest.starts_with("/instance") {
                return Route::Instance;
            }
        }
    }
    if path.starts_with("/host/token") {
        return Route::HostToken;
    }
    Route::Other
}

/// True when `rest`, read with `\` as `/` and runs of separators as one, starts with
/// `/identity/oauth2/token`.
fn normalized_starts_with_token(rest: &str) -> bool {
    let mut want = TOKEN_REST.bytes().peekable();
    let mut prev_sep = false;
    for b in rest.bytes() {
        let b = if b == b'\\' { b'/' } else { b };
        if b == b'/' && prev_sep {
            continue;
        }
        prev_sep = b == b'/';
        match want.next() {
            Some(w) if w == b => {}
            Some(_) => return false,
            None => return true,
        }
        if want.peek().is_none() {
            return true;
        }
    }
    false
}

/// The query of a token request. Values are percent-decoded; empty values count as absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenQuery<'a> {
    /// `resource`.
    pub resource: Option<Cow<'a, str>>,
    /// `client_id`.
    pub client_id: Option<Cow<'a, str>>,
    /// `msi_res_id` or `mi_res_id`.
    pub resource_id: Option<Cow<'a, str>>,
    /// `object_id`.
    pub object_id: Option<Cow<'a, str>>,
    /// `api-version` (accepted, not enforced: SDKs send 2018-02-01 and 2019-08-01).
    pub api_version: Option<Cow<'a, str>>,
}

impl<'a> TokenQuery<'a> {
    /// Parses a raw query string; the first occurrence of a key wins, as in Go's `Values.Get`.
    #[must_use]
    pub fn parse(query: &'a str) -> Self {
        let mut q = Self::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if v.is_empty() {
                continue;
            }
            let slot = match &*k {
                "resource" => &mut q.resource,
                "client_id" => &mut q.client_id,
                "msi_res_id" | "mi_res_id" => &mut q.resource_id,
                "object_id" => &mut q.object_id,
                "api-version" => &mut q.api_version,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(v);
            }
        }
        q
    }

    /// The identity the request names: `client_id`, else the resource id, else `object_id`.
    #[must_use]
    pub fn wanted(&self) -> Wanted<'_> {
        if let Some(c) = &self.client_id {
            Wanted::ClientId(c)
        } else if let Some(r) = &self.resource_id {
            Wanted::ResourceId(r)
        } else if let Some(o) = &self.object_id {
            Wanted::ObjectId(o)
        } else {
            Wanted::Any
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn token_paths_route_as_the_original_does() {
        for p in [
            "/metadata/identity/oauth2/token",
            "/metadata/identity/oauth2/token/",
            "/Metadata/identity/oauth2/token/",
            "/METADATA/identity/oauth2/token",
        ] {
            assert_eq!(classify(p), Route::Token, "{p}");
        }
        assert_eq!(classify("/metadata/Identity/oauth2/token/"), Route::Other);
        for p in [
            r"/metadata/identity\oauth2/token/",
            r"/metadata/identity/oauth2\token/",
            r"/metadata/identity\oauth2\token/",
            r"/metadata/identity/\oauth2\token/",
            r"/metadata/identity\\\oauth2\\token/",
            r"/metadata\identity\oauth2\token",
        ] {
            assert_eq!(classify(p), Route::InvalidToken, "{p}");
        }
        assert_eq!(
            classify(&decode_path("/metadata/identity%5Coauth2/token")),
            Route::InvalidToken
        );
        assert_eq!(classify("/host/token/"), Route::HostToken);
        assert_eq!(classify("/host/token"), Route::HostToken);
        assert_eq!(classify("/metadata/instance"), Route::Instance);
        assert_eq!(classify("/Metadata/instance/compute"), Route::Instance);
        assert_eq!(classify("/metadata/"), Route::Other);
        assert_eq!(classify("/"), Route::Other);
        assert_eq!(classify(""), Route::Other);
    }

    #[test]
    fn every_query_form_sdks_send_is_understood() {
        let q = TokenQuery::parse(
            "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=abc",
        );
        assert_eq!(q.resource.as_deref(), Some("https://vault.azure.net"));
        assert_eq!(q.api_version.as_deref(), Some("2018-02-01"));
        assert_eq!(q.wanted(), Wanted::ClientId("abc"));
        let q =
            TokenQuery::parse("api-version=2019-08-01&resource=r&mi_res_id=%2Fsubscriptions%2Fs");
        assert_eq!(q.wanted(), Wanted::ResourceId("/subscriptions/s"));
        let q = TokenQuery::parse("resource=r&msi_res_id=/x&client_id=");
        assert_eq!(q.wanted(), Wanted::ResourceId("/x"));
        let q = TokenQuery::parse("resource=r&object_id=o");
        assert_eq!(q.wanted(), Wanted::ObjectId("o"));
        let q = TokenQuery::parse("resource=a&resource=b");
        assert_eq!(q.resource.as_deref(), Some("a"));
        assert_eq!(TokenQuery::parse("").wanted(), Wanted::Any);
        assert!(TokenQuery::parse("resource=").resource.is_none());
    }

    proptest! {
        #[test]
        fn no_path_panics_and_token_routing_is_case_insensitive_only_in_metadata(s in "\\PC*") {
            let _ = classify(&s);
            let _ = classify(&decode_path(&s));
        }

        #[test]
        fn paths_built_from_separators_and_segments_never_panic(
            parts in proptest::collection::vec(prop_oneof![
                Just("/"), Just("\\"), Just("metadata"), Just("METADATA"), Just("identity"),
                Just("oauth2"), Just("token"), Just("%5C"), Just("%"), Just("é"), Just("host"),
                Just("instance"),
            ], 0..12)
        ) {
            let p: String = parts.concat();
            let r = classify(&decode_path(&p));
            if p.starts_with("/metadata/identity/oauth2/token") {
                prop_assert_eq!(r, Route::Token);
            }
        }

        #[test]
        fn no_query_panics(s in "\\PC*", bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let q = TokenQuery::parse(&s);
            let _ = q.wanted();
            let lossy = String::from_utf8_lossy(&bytes);
            let _ = TokenQuery::parse(&lossy).wanted();
        }

        #[test]
        fn encoded_values_round_trip(v in "[ -~]{1,40}") {
            let enc: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
            let raw = format!("resource={enc}");
            let q = TokenQuery::parse(&raw);
            prop_assert_eq!(q.resource.as_deref(), Some(v.as_str()));
        }
    }
}
