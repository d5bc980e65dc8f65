//! Token clients against the Azure simulator over real HTTP on loopback: the metadata service
//! per node (only identities assigned to that node's scale set or VM), and Azure AD client
//! credentials with a secret or a PKCS#12 certificate, v1 and v2, auxiliary tenants.

mod azure_common;

use std::sync::Arc;
use std::time::Duration;

use aad_pod_identity::cloud::Error;
use aad_pod_identity::cloud::aad::{
    AadClient, CertificateCredential, ClientCredential, EndpointVersion, TokenRequest,
};
use aad_pod_identity::cloud::imds::{IdentitySelector, ImdsClient};
use aad_pod_identity_sim::azure::{AzureSimConfig, FaultKind, FaultTarget, LroMode};
use aad_pod_identity_sim::topology::Topology;
use azure_common::*;
use azure_core::http::Method;

const VAULT: &str = "https://vault.azure.net";

#[tokio::test]
async fn a_node_gets_tokens_only_for_identities_assigned_to_its_scale_set() {
    // Two scale sets of one node each, plus a standalone VM.
    let t = Topology::sized(2, 1, 1, 3);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let arm = arm_client(&sim, fast_options());
    let nodes = t.nodes();
    let (id0, id1) = (&t.identities[0], &t.identities[1]);
    arm.update_identities(&vmss(&t, 0), &[identity_id(&t, 0)], &[])
        .await
        .unwrap();

    let on_node0 = ImdsClient::new(&sim.imds_addr(&nodes[0].name).unwrap().to_string()).unwrap();
    let on_node1 = ImdsClient::new(&sim.imds_addr(&nodes[1].name).unwrap().to_string()).unwrap();
    let client_id = t.identity_client_id(id0).to_string();

    let r = on_node0
        .token(VAULT, &IdentitySelector::ClientId(client_id.clone()))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.content_type
            .as_deref()
            .unwrap()
            .starts_with("application/json")
    );
    let token = r.token.expect("200 carries a token");
    assert_eq!(token.client_id, client_id);
    assert_eq!(token.resource, VAULT);
    assert_eq!(token.token_type, "Bearer");
    let claims = sim.decode_token(&token.access_token).unwrap();
    assert_eq!(claims.aud, VAULT);
    assert_eq!(claims.appid, client_id);
    assert_eq!(claims.oid, t.identity_principal_id(id0).to_string());
    assert_eq!(claims.xms_mirid, identity_id(&t, 0));
    assert_eq!(token.expires_on, claims.exp.to_string());

    // By resource id too, and as the node's only identity.
    let by_rid = on_node0
        .token(VAULT, &IdentitySelector::ResourceId(identity_id(&t, 0)))
        .await
        .unwrap();
    assert_eq!(by_rid.status, 200);
    let own = on_node0
        .token(VAULT, &IdentitySelector::Node)
        .await
        .unwrap();
    assert_eq!(
        sim.decode_token(&own.token.unwrap().access_token)
            .unwrap()
            .appid,
        client_id
    );

    // The other scale set's node does not get it; the body is the service's, verbatim.
    let refused = on_node1
        .token(VAULT, &IdentitySelector::ClientId(client_id.clone()))
        .await
        .unwrap();
    assert_eq!(refused.status, 400);
    assert!(refused.token.is_none());
    assert_eq!(
        std::str::from_utf8(&refused.body).unwrap(),
        r#"{"error":"invalid_request","error_description":"Identity not found"}"#
    );
    // An identity registered but not assigned anywhere is refused the same way.
    let other = on_node0
        .token(
            VAULT,
            &IdentitySelector::ClientId(t.identity_client_id(id1).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(other.status, 400);

    // Two identities and no selector: the real service's "multiple identities" error.
    arm.update_identities(&vmss(&t, 0), &[identity_id(&t, 1)], &[])
        .await
        .unwrap();
    let multi = on_node0
        .token(VAULT, &IdentitySelector::Node)
        .await
        .unwrap();
    assert_eq!(multi.status, 400);
    assert!(
        std::str::from_utf8(&multi.body)
            .unwrap()
            .contains("Multiple user assigned identities exist")
    );
    let c = sim.counters();
    assert_eq!((c.imds_tokens, c.imds_errors), (3, 3));
    sim.shutdown().await;
}

#[tokio::test]
async fn the_metadata_service_requires_the_header_and_answers_in_its_own_format() {
    let t = Topology::sized(1, 1, 0, 1);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let addr = sim.imds_addr(&t.nodes()[0].name).unwrap();
    let base = format!("http://{addr}/metadata/identity/oauth2/token");
    let r = raw(
        Method::Get,
        &format!("{base}?api-version=2018-02-01&resource={VAULT}"),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"], "invalid_request");
    assert_eq!(
        r.body["error_description"],
        "Required metadata header not specified"
    );
    let md = [("metadata", "true".to_string())];
    let r = raw(Method::Get, &format!("{base}?resource={VAULT}"), &md, None).await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("api-version")
    );
    let r = raw(
        Method::Get,
        &format!("{base}?api-version=2019-08-01"),
        &md,
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body["error_description"],
        "Required audience parameter not specified"
    );
    // The ARM listener is not a metadata service, and a node listener is not ARM.
    let r = raw(
        Method::Get,
        &format!("http://{addr}/subscriptions/x"),
        &md,
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_new_assignment_is_usable_only_after_the_propagation_delay() {
    let t = Topology::sized(1, 1, 0, 1);
    let sim = sim(
        &t,
        AzureSimConfig {
            propagation_delay: Duration::from_millis(400),
            lro: LroMode::Sync,
            ..Default::default()
        },
    )
    .await;
    let arm = arm_client(&sim, fast_options());
    arm.update_identities(&vmss(&t, 0), &[identity_id(&t, 0)], &[])
        .await
        .unwrap();
    let imds = ImdsClient::new(&sim.imds_addr(&t.nodes()[0].name).unwrap().to_string()).unwrap();
    let who = IdentitySelector::ResourceId(identity_id(&t, 0));
    assert_eq!(imds.token(VAULT, &who).await.unwrap().status, 400);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(imds.token(VAULT, &who).await.unwrap().status, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn metadata_service_faults_are_passed_through_and_hangs_time_out() {
    let t = Topology::sized(1, 1, 0, 1);
    let sim = sim(
        &t,
        AzureSimConfig {
            preassigned: vec!["identity-0".into()],
            ..Default::default()
        },
    )
    .await;
    let imds = ImdsClient::new(&sim.imds_addr(&t.nodes()[0].name).unwrap().to_string())
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    sim.inject(FaultTarget::Imds, 1, FaultKind::Status(503));
    sim.inject(FaultTarget::Imds, 1, FaultKind::Hang);
    let r = imds.token(VAULT, &IdentitySelector::Node).await.unwrap();
    assert_eq!(r.status, 503);
    let e = imds
        .token(VAULT, &IdentitySelector::Node)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert_eq!(
        imds.token(VAULT, &IdentitySelector::Node)
            .await
            .unwrap()
            .status,
        200
    );
    sim.shutdown().await;
}

fn secret_request(
    tenant: &str,
    client: &str,
    secret: &str,
    version: EndpointVersion,
) -> TokenRequest {
    TokenRequest {
        tenant_id: tenant.into(),
        client_id: client.into(),
        credential: ClientCredential::Secret(secret.into()),
        resource: VAULT.into(),
        version,
    }
}

#[tokio::test]
async fn service_principals_get_tokens_with_a_secret_on_v1_and_v2() {
    let t = Topology::sized(1, 1, 0, 1);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let sp = sim.add_service_principal_secret(&[sim.tenant_id()], "s3cret-value");
    let aad = AadClient::new(&sim.aad_endpoint()).unwrap();
    for version in [EndpointVersion::V1, EndpointVersion::V2] {
        let tok = aad
            .token(&secret_request(
                sim.tenant_id(),
                &sp.client_id,
                "s3cret-value",
                version,
            ))
            .await
            .unwrap();
        // Shaped like the metadata service's answer: strings throughout.
        let json = serde_json::to_value(&tok).unwrap();
        for k in [
            "access_token",
            "expires_in",
            "expires_on",
            "not_before",
            "resource",
            "token_type",
        ] {
            assert!(json[k].is_string(), "{version:?} {k}: {json}");
        }
        let claims = sim.decode_token(&tok.access_token).unwrap();
        assert_eq!(
            (claims.appid.as_str(), claims.aud.as_str()),
            (sp.client_id.as_str(), VAULT)
        );
        assert_eq!(claims.oid, sp.principal_id);
    }
    let e = aad
        .token(&secret_request(
            sim.tenant_id(),
            &sp.client_id,
            "wrong",
            EndpointVersion::V1,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Aad { status: 401, error, description } if error == "invalid_client" && description.starts_with("AADSTS7000215")),
        "{e:?}"
    );
    let e = aad
        .token(&secret_request(
            sim.tenant_id(),
            "00000000-0000-0000-0000-000000000999",
            "x",
            EndpointVersion::V2,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Aad { error, .. } if error == "unauthorized_client"),
        "{e:?}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn auxiliary_tenants_each_issue_a_token_or_fail_the_request() {
    let t = Topology::sized(1, 1, 0, 1);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let aux = "00000000-0000-0000-0000-0000000000aa";
    let sp = sim.add_service_principal_secret(&[sim.tenant_id(), aux], "pw");
    let aad = AadClient::new(&sim.aad_endpoint()).unwrap();
    let req = secret_request(sim.tenant_id(), &sp.client_id, "pw", EndpointVersion::V1);
    let set = aad
        .token_with_auxiliary(&req, &[aux.to_string()])
        .await
        .unwrap();
    assert_eq!(
        sim.decode_token(&set.primary.access_token).unwrap().tid,
        sim.tenant_id()
    );
    assert_eq!(set.auxiliary.len(), 1);
    assert_eq!(
        sim.decode_token(&set.auxiliary[0].access_token)
            .unwrap()
            .tid,
        aux
    );
    let e = aad
        .token_with_auxiliary(&req, &["00000000-0000-0000-0000-0000000000bb".to_string()])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Aad { description, .. } if description.starts_with("AADSTS90002")),
        "{e:?}"
    );
    sim.shutdown().await;
}

fn pkcs12_bundle(password: &str) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["sp.pod-identity.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_der = cert.der().to_vec();
    let chain = p12_keystore::PrivateKeyChain::new(
        vec![1u8, 2, 3],
        p12_keystore::PrivateKey::from_der(&key.serialize_der()).unwrap(),
        vec![p12_keystore::Certificate::from_der(&cert_der).unwrap()],
    );
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry("sp", p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
    (store.writer(password).write().unwrap(), cert_der)
}

#[tokio::test]
async fn a_pkcs12_certificate_signs_a_client_assertion_azure_ad_accepts() {
    let t = Topology::sized(1, 1, 0, 1);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let (p12, cert_der) = pkcs12_bundle("p12-pass");
    let sp = sim
        .add_service_principal_certificate(&[sim.tenant_id()], &cert_der)
        .unwrap();
    let cred = Arc::new(CertificateCredential::from_pkcs12(&p12, "p12-pass").unwrap());
    let aad = AadClient::new(&sim.aad_endpoint()).unwrap();
    for version in [EndpointVersion::V1, EndpointVersion::V2] {
        let tok = aad
            .token(&TokenRequest {
                tenant_id: sim.tenant_id().into(),
                client_id: sp.client_id.clone(),
                credential: ClientCredential::Certificate(cred.clone()),
                resource: VAULT.into(),
                version,
            })
            .await
            .unwrap();
        assert_eq!(
            sim.decode_token(&tok.access_token).unwrap().appid,
            sp.client_id
        );
    }
    // Another key pair is refused; a wrong PKCS#12 password fails before any request.
    let (other_p12, _) = pkcs12_bundle("x");
    let other = Arc::new(CertificateCredential::from_pkcs12(&other_p12, "x").unwrap());
    let e = aad
        .token(&TokenRequest {
            tenant_id: sim.tenant_id().into(),
            client_id: sp.client_id.clone(),
            credential: ClientCredential::Certificate(other),
            resource: VAULT.into(),
            version: EndpointVersion::V1,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Aad { error, description, .. } if error == "invalid_client" && description.starts_with("AADSTS700027")),
        "{e:?}"
    );
    assert!(matches!(
        CertificateCredential::from_pkcs12(&p12, "wrong"),
        Err(Error::Certificate(_))
    ));
    sim.shutdown().await;
}

#[tokio::test]
async fn the_endpoints_document_names_everything_a_script_needs() {
    let t = Topology::sized(1, 2, 1, 2);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let doc = sim.endpoints();
    assert_eq!(doc["arm"], sim.arm_endpoint());
    assert_eq!(doc["imds"].as_object().unwrap().len(), 3);
    for node in t.nodes() {
        assert_eq!(
            doc["imds"][&node.name],
            sim.imds_addr(&node.name).unwrap().to_string()
        );
    }
    let ids = doc["identities"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(
        ids[0]["clientID"],
        t.identity_client_id(&t.identities[0]).to_string()
    );
    assert!(doc["servicePrincipals"][0]["secret"].is_string());
    sim.shutdown().await;
}
