//! No secret in `Debug`: every type that holds a token, a credential or a certificate is
//! formatted with `{:?}` and `{:#?}` and must not show it (a `tracing` field or a panic message
//! prints exactly this).

use aad_pod_identity::actors::nmi::cache::{CacheKey, TokenCache};
use aad_pod_identity::actors::nmi::source::{
    RenderedToken, SourceError, TokenRequest, TokenSource, TokenTarget, UpstreamToken, unix_now,
};
use aad_pod_identity::cloud::aad::{
    CertificateCredential, ClientCredential, EndpointVersion, TokenRequest as AadRequest, TokenSet,
};
use aad_pod_identity::cloud::config::CloudConfig;
use aad_pod_identity::cloud::credential::{AadSecretCredential, BearerPolicy};
use aad_pod_identity::cloud::imds::ImdsResponse;
use aad_pod_identity::cloud::token::Token;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

const ACCESS: &str = "eyJ0eXAiOiJKV1QifQ.eyJvaWQiOiJzZWNyZXQtb2lkIn0.SIGNATURE-do-not-print";
const SECRET: &str = "client-secret-do-not-print";
const P12_PASSWORD: &str = "p12-password-do-not-print";

fn token_body() -> String {
    format!(
        r#"{{"access_token":"{ACCESS}","refresh_token":"refresh-do-not-print","expires_on":"{}","resource":"r","token_type":"Bearer"}}"#,
        unix_now() + 3600
    )
}

fn assert_hidden(what: &str, shown: &str) {
    for secret in [
        ACCESS,
        "SIGNATURE-do-not-print",
        SECRET,
        P12_PASSWORD,
        "refresh-do-not-print",
    ] {
        assert!(!shown.contains(secret), "{what} shows {secret}: {shown}");
    }
}

fn check(what: &str, v: &dyn std::fmt::Debug) {
    assert_hidden(what, &format!("{v:?}"));
    assert_hidden(what, &format!("{v:#?}"));
}

struct Source;

#[async_trait]
impl TokenSource for Source {
    async fn fetch(&self, _: &TokenRequest) -> Result<UpstreamToken, SourceError> {
        Ok(UpstreamToken {
            status: 200,
            body: token_body().into(),
        })
    }
}

fn pkcs12() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["sp.pod-identity.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let chain = p12_keystore::PrivateKeyChain::new(
        vec![1u8, 2, 3],
        p12_keystore::PrivateKey::from_der(&key.serialize_der()).unwrap(),
        vec![p12_keystore::Certificate::from_der(cert.der()).unwrap()],
    );
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry("sp", p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
    store.writer(P12_PASSWORD).write().unwrap()
}

#[tokio::test]
async fn tokens_credentials_and_certificates_redact_themselves_in_debug() {
    let token: Token = serde_json::from_str(&token_body()).unwrap();
    check("cloud::token::Token", &token);
    check(
        "TokenSet",
        &TokenSet {
            primary: token.clone(),
            auxiliary: vec![token.clone()],
        },
    );
    check(
        "ImdsResponse",
        &ImdsResponse {
            status: 200,
            content_type: Some("application/json".into()),
            body: token_body().into(),
            token: Some(token.clone()),
        },
    );
    let secret = ClientCredential::Secret(SECRET.into());
    check("ClientCredential::Secret", &secret);
    let cert = Arc::new(CertificateCredential::from_pkcs12(&pkcs12(), P12_PASSWORD).unwrap());
    check("CertificateCredential", &cert);
    let by_cert = ClientCredential::Certificate(Arc::clone(&cert));
    check("ClientCredential::Certificate", &by_cert);
    for credential in [secret, by_cert] {
        check(
            "aad::TokenRequest",
            &AadRequest {
                tenant_id: "t".into(),
                client_id: "c".into(),
                credential,
                resource: "r".into(),
                version: EndpointVersion::V1,
            },
        );
    }
    let aad = AadSecretCredential::new("http://127.0.0.1:9/", "t", "c", SECRET, "test").unwrap();
    check("AadSecretCredential", &aad);
    check(
        "BearerPolicy",
        &BearerPolicy::new(aad, "https://management.azure.com/.default".into()),
    );
    let config = CloudConfig::from_json(&format!(
        r#"{{"tenantId":"t","aadClientId":"c","aadClientSecret":"{SECRET}","subscriptionId":"s"}}"#
    ))
    .unwrap();
    check("CloudConfig", &config);
    check(
        "UpstreamToken",
        &UpstreamToken {
            status: 200,
            body: token_body().into(),
        },
    );
    let rendered = RenderedToken::parse(token_body().as_bytes()).unwrap();
    check("RenderedToken", &rendered);
    let cache = TokenCache::new(
        Arc::new(Source),
        Duration::from_secs(300),
        Duration::from_secs(5),
        None,
    );
    let (cached, _) = cache
        .get(&CacheKey::node(None), "r", || TokenRequest {
            target: TokenTarget::Node { client_id: None },
            resource: "r".into(),
        })
        .await
        .unwrap();
    check("CachedToken", &cached);
    // The redacted forms still say what they are.
    assert!(format!("{rendered:?}").contains("<redacted>"));
    assert!(
        format!(
            "{aad:?}",
            aad =
                AadSecretCredential::new("http://127.0.0.1:9/", "t", "c", SECRET, "test").unwrap()
        )
        .contains("<redacted>")
    );
}
