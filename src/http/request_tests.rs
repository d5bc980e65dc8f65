use super::*;
use proptest::prelude::*;

fn route(raw: &str) -> Route {
    classify(raw)
}

#[test]
fn token_paths_route_as_the_original_does() {
    for p in [
        "/metadata/identity/oauth2/token",
        "/metadata/identity/oauth2/token/",
        "/Metadata/identity/oauth2/token/",
        "/METADATA/identity/oauth2/token",
        // The original passed case variants of the rest to the metadata service, trusting it to
        // refuse them; NMI answers them itself, with the same authorization.
        "/metadata/Identity/oauth2/token/",
    ] {
        assert_eq!(route(p), Route::Token, "{p}");
    }
    for p in [
        r"/metadata/identity\oauth2/token/",
        r"/metadata/identity/oauth2\token/",
        r"/metadata/identity\oauth2\token/",
        r"/metadata/identity/\oauth2\token/",
        r"/metadata/identity\\\oauth2\\token/",
        r"/metadata\identity\oauth2\token",
        "/metadata/identity%5Coauth2/token",
        // The original's pattern was unanchored.
        "/foo/metadata/identity/oauth2/token",
        "/metadata/identityXoauth2Ytoken",
        "/metadata/identity/x/oauth2/y/token",
    ] {
        assert_eq!(route(p), Route::Invalid, "{p}");
    }
    assert_eq!(route("/host/token/"), Route::HostToken);
    assert_eq!(route("/host/token"), Route::HostToken);
    assert_eq!(route("/metadata/instance"), Route::Instance);
    assert_eq!(route("/Metadata/instance/compute"), Route::Instance);
    assert_eq!(route("/METADATA/INSTANCE"), Route::Instance);
    assert_eq!(route("/metadata/"), Route::Other);
    assert_eq!(route("/"), Route::Other);
    assert_eq!(route(""), Route::Invalid);
    assert_eq!(route("*"), Route::Invalid);
}

#[test]
fn the_four_tricks_of_the_bypass_and_their_relatives_reach_the_token_route() {
    for p in [
        "/metadata/identity/oauth2/x/../token",
        "/./metadata/identity/oauth2/token",
        "/x/../metadata/identity/oauth2/token",
        "/metadata/identity/oauth2/%2e%2e/oauth2/token",
        "/metadata/identity/oauth2/%2E%2e/oauth2/token",
        "/metadata/identity/oauth2/.%2e/oauth2/token",
        "//metadata/identity/oauth2/token",
        "/metadata//identity///oauth2/token",
        "/%2Fmetadata%2Fidentity%2Foauth2%2Ftoken",
        "/%6detadata/identity/oauth2/token",
        "/a/b/../../metadata/identity/oauth2/./token",
        "/../../metadata/identity/oauth2/token",
        "/metadata/identity/oauth2/token/../token",
    ] {
        assert_eq!(route(p), Route::Token, "{p}");
    }
    for p in [
        "/x/../metadata/instance",
        "/./metadata/instance/compute",
        "/metadata/x/%2e%2e/instance",
        "//metadata//instance",
        "/%6Detadata/instance",
    ] {
        assert_eq!(route(p), Route::Instance, "{p}");
    }
    assert_eq!(route(r"/x\..\metadata\instance"), Route::Invalid);
    assert_eq!(route("/metadata/%00"), Route::Invalid);
    assert_eq!(route("/metadata/%ff"), Route::Invalid);
}

#[test]
fn normal_paths_are_borrowed_and_others_resolved() {
    let n = normalize("/metadata/identity/oauth2/token").unwrap();
    assert!(matches!(n.text, Cow::Borrowed(_)));
    assert_eq!(normalize("/a/./b/../c//d/").unwrap().as_str(), "/a/c/d/");
    assert_eq!(normalize("/a/..").unwrap().as_str(), "/");
    assert_eq!(normalize("/..").unwrap().as_str(), "/");
    assert_eq!(normalize("/a/.").unwrap().as_str(), "/a/");
    assert_eq!(
        normalize("/.well-known/x").unwrap().as_str(),
        "/.well-known/x"
    );
    assert_eq!(normalize("/a%20b/%25/%3F").unwrap().as_str(), "/a b/%/?");
    assert_eq!(
        normalize("/a%20b/%25/%3F").unwrap().wire(),
        "/a%20b/%25/%3F"
    );
    assert_eq!(normalize("/caf%C3%A9").unwrap().wire(), "/caf%C3%A9");
    assert_eq!(normalize("/%7euser").unwrap().wire(), "/~user");
}

#[test]
fn route_labels_are_a_fixed_set() {
    let labels: std::collections::HashSet<&str> = [
        Route::Token,
        Route::Invalid,
        Route::HostToken,
        Route::Instance,
        Route::Other,
    ]
    .iter()
    .map(|r| r.label())
    .collect();
    assert_eq!(labels.len(), 5);
    assert!(labels.contains(TOKEN_PATH));
}

#[test]
fn every_query_form_sdks_send_is_understood() {
    let q = TokenQuery::parse(
        "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=abc",
    );
    assert_eq!(q.resource.as_deref(), Some("https://vault.azure.net"));
    assert_eq!(q.api_version.as_deref(), Some("2018-02-01"));
    assert_eq!(q.wanted(), Wanted::ClientId("abc"));
    let q = TokenQuery::parse("api-version=2019-08-01&resource=r&mi_res_id=%2Fsubscriptions%2Fs");
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

/// Path pieces an attacker combines: separators, dot segments and their encodings, and the
/// words of the routes.
fn piece() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("/"),
        Just("\\"),
        Just("."),
        Just(".."),
        Just("%2e"),
        Just("%2E"),
        Just("%2f"),
        Just("%2F"),
        Just("%5c"),
        Just("%25"),
        Just("%"),
        Just("metadata"),
        Just("METADATA"),
        Just("%6detadata"),
        Just("identity"),
        Just("oauth2"),
        Just("token"),
        Just("instance"),
        Just("host"),
        Just("x"),
        Just("é"),
        Just(";"),
        Just("%3F"),
    ]
}

/// What an HTTP client building a URL from `raw` would send and a server decoding it would
/// see: WHATWG URL parsing (reqwest's), then percent-decoding, then the dot segments the
/// decoding revealed resolved (`/metadata%2finstance/..%2f` is `/metadata/`, not an instance
/// path).
fn as_a_client_resolves(raw: &str) -> Option<String> {
    let url = url::Url::parse(&format!("http://h{raw}")).ok()?;
    let decoded = percent_encoding::percent_decode_str(url.path())
        .decode_utf8_lossy()
        .into_owned();
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
        // A trailing dot segment leaves the directory it names: `/a/b/..` is `/a/`.
        if last && matches!(*seg, "." | "..") {
            kept.push("");
        }
    }
    Some(format!("/{}", kept.join("/")))
}

proptest! {
    #[test]
    fn no_path_panics(s in "\\PC*") {
        let _ = classify(&s);
        if let Ok(n) = normalize(&s) {
            let _ = n.wire();
        }
    }

    #[test]
    fn normalisation_is_idempotent_and_its_wire_form_survives_any_http_stack(
        parts in proptest::collection::vec(piece(), 0..14)
    ) {
        let raw = format!("/{}", parts.concat());
        let Ok(n) = normalize(&raw) else { return Ok(()); };
        let text = n.as_str();
        prop_assert!(text.starts_with('/'));
        prop_assert!(!text.contains("//"), "{text}");
        prop_assert!(!text.contains('\\'), "{text}");
        prop_assert!(text.split('/').all(|s| s != "." && s != ".."), "{text}");
        let wire = n.wire();
        let again = normalize(&wire).unwrap();
        prop_assert_eq!(again.as_str(), text);
        prop_assert_eq!(again.route() == Route::Other, n.route() == Route::Other);
        // An HTTP client (URL parsing) sends the wire form unchanged.
        let url = url::Url::parse(&format!("http://h{wire}")).unwrap();
        prop_assert_eq!(url.path(), &*wire);
    }

    #[test]
    fn a_path_any_client_would_resolve_to_a_token_or_instance_path_never_passes_through(
        parts in proptest::collection::vec(piece(), 0..14)
    ) {
        let raw = format!("/{}", parts.concat());
        let r = classify(&raw);
        if let Some(seen) = as_a_client_resolves(&raw) {
            let lower = seen.to_ascii_lowercase().replace('\\', "/");
            if lower.starts_with(TOKEN_PATH) {
                prop_assert!(matches!(r, Route::Token | Route::Invalid), "{raw} -> {r:?}");
            }
            if lower.starts_with("/metadata/instance") {
                prop_assert!(matches!(r, Route::Instance | Route::Invalid), "{raw} -> {r:?}");
            }
        }
        if raw.starts_with(TOKEN_PATH) {
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
