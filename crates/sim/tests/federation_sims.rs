//! Workload identity federation between the two simulators, over real HTTP: a pod-bound
//! service-account token from the Kubernetes simulator's TokenRequest is exchanged at the Azure
//! AD simulator for a token of a user-assigned identity holding a matching federated
//! credential; the Azure AD simulator fetches the issuer's discovery document and key set
//! itself, and refuses what Azure AD refuses with Azure AD's codes and statuses.

use aad_pod_identity_sim::azure::{AzureSim, AzureSimConfig, AzureSimHandle, FederatedCredential};
use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig, KubeSimHandle};
use aad_pod_identity_sim::topology::Topology;
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const EXCHANGE: &str = "api://AzureADTokenExchange";

struct World {
    kube: KubeSimHandle,
    azure: AzureSimHandle,
    topology: Topology,
    client: kube::Client,
}

impl World {
    async fn start() -> Self {
        let kube = KubeSim::start(KubeSimConfig::default()).await.unwrap();
        let topology = Topology::sized(1, 1, 0, 2);
        let azure = AzureSim::start(&topology, AzureSimConfig::default())
            .await
            .unwrap();
        let client = kube.client().await.unwrap();
        Self {
            kube,
            azure,
            topology,
            client,
        }
    }

    fn identity(&self, i: usize) -> (String, String) {
        let spec = &self.topology.identities[i];
        (
            self.topology.identity_resource_id(spec),
            self.topology.identity_client_id(spec).to_string(),
        )
    }

    fn trust(&self, identity: usize, subject: &str, audiences: &[&str]) {
        let (rid, _) = self.identity(identity);
        self.azure
            .add_federated_credential(
                &rid,
                FederatedCredential {
                    name: format!("fic-{subject}"),
                    issuer: self.kube.issuer().to_string(),
                    subject: subject.into(),
                    audiences: audiences.iter().map(|a| a.to_string()).collect(),
                },
            )
            .unwrap();
    }

    async fn pod(&self, name: &str, sa: &str) -> Pod {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), "default");
        let _ = sas
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap(),
            )
            .await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"serviceAccountName": sa, "containers": [{"name": "c", "image": "i"}]},
            }))
            .unwrap(),
        )
        .await
        .unwrap()
    }

    async fn sa_token(&self, pod: &Pod, audience: &str) -> String {
        let sa = pod
            .spec
            .as_ref()
            .unwrap()
            .service_account_name
            .clone()
            .unwrap();
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), "default");
        let r = sas
            .create_token_request(
                &sa,
                &PostParams::default(),
                &TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec![audience.into()],
                        expiration_seconds: Some(600),
                        bound_object_ref: Some(BoundObjectReference {
                            api_version: Some("v1".into()),
                            kind: Some("Pod".into()),
                            name: pod.metadata.name.clone(),
                            uid: pod.metadata.uid.clone(),
                        }),
                    },
                    ..TokenRequest::default()
                },
            )
            .await
            .unwrap();
        r.status.unwrap().token
    }

    async fn exchange(&self, client_id: &str, assertion: &str) -> (u16, Value) {
        exchange(&self.azure, client_id, assertion).await
    }

    async fn stop(self) {
        self.azure.shutdown().await;
        self.kube.shutdown().await;
    }
}

/// POSTs a federated client-credentials request (v2) and returns (status, body).
async fn exchange(azure: &AzureSimHandle, client_id: &str, assertion: &str) -> (u16, Value) {
    let url = format!(
        "{}{}/oauth2/v2.0/token",
        azure.aad_endpoint(),
        azure.tenant_id()
    );
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", client_id)
        .append_pair("scope", "https://vault.azure.net/.default")
        .append_pair(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .append_pair("client_assertion", assertion)
        .finish();
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
    )
}

fn code(body: &Value) -> String {
    body["error_description"]
        .as_str()
        .unwrap_or("")
        .split(':')
        .next()
        .unwrap_or("")
        .to_string()
}

fn claims(token: &str) -> Value {
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_pod_bound_token_is_exchanged_for_the_federated_identitys_token() {
    let w = World::start().await;
    let subject = "system:serviceaccount:default:workload";
    w.trust(0, subject, &[EXCHANGE]);
    let pod = w.pod("app", "workload").await;
    let assertion = w.sa_token(&pod, EXCHANGE).await;
    let (rid, client_id) = w.identity(0);

    let (status, body) = w.exchange(&client_id, &assertion).await;
    assert_eq!(status, 200, "{body}");
    let c = w
        .azure
        .decode_token(body["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(c.appid, client_id);
    assert_eq!(c.xms_mirid, rid);
    assert_eq!(c.aud, "https://vault.azure.net");
    assert_eq!(w.azure.counters().aad_federated_tokens, 1);
    // No ARM call of any kind was needed.
    assert_eq!(w.azure.counters().total_patches(), 0);

    // The same assertion names nothing the second identity trusts.
    let (_, other_client) = w.identity(1);
    let (status, body) = w.exchange(&other_client, &assertion).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (401, "AADSTS70021"),
        "{body}"
    );
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains(&format!("Assertion Subject: '{subject}'")),
        "{body}"
    );
    w.stop().await;
}

#[tokio::test]
async fn tampered_expired_and_misdirected_assertions_are_refused_with_azure_ads_errors() {
    let w = World::start().await;
    w.trust(0, "system:serviceaccount:default:workload", &[EXCHANGE]);
    let (_, client_id) = w.identity(0);
    let pod = w.pod("app", "workload").await;
    let good = w.sa_token(&pod, EXCHANGE).await;

    // Tampered: the payload now names another subject; the signature no longer matches.
    let mut c = claims(&good);
    c["sub"] = json!("system:serviceaccount:default:admin");
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap()),
        parts[2]
    );
    let (status, body) = w.exchange(&client_id, &tampered).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (401, "AADSTS700027"),
        "{body}"
    );

    // Expired: signed by the issuer, but its time is long gone.
    let mut old = claims(&good);
    old["iat"] = json!(1_000_000_000);
    old["nbf"] = json!(1_000_000_000);
    old["exp"] = json!(1_000_000_600);
    let expired = w.kube.sign_service_account_token(&old).unwrap();
    let (status, body) = w.exchange(&client_id, &expired).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (401, "AADSTS700024"),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expiry time of assertion 2001-09-09T01:56:40.0000000Z"),
        "{body}"
    );

    // Another audience: TokenRequest issues it, Azure AD does not accept it.
    let misdirected = w.sa_token(&pod, "api://SomethingElse").await;
    let (status, body) = w.exchange(&client_id, &misdirected).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (401, "AADSTS700212"),
        "{body}"
    );

    // Another service account of the same issuer: no credential names that subject.
    let intruder = w.pod("intruder", "intruder").await;
    let foreign = w.sa_token(&intruder, EXCHANGE).await;
    let (status, body) = w.exchange(&client_id, &foreign).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (401, "AADSTS700213"),
        "{body}"
    );

    // Another cluster: its issuer is not trusted at all.
    let other = KubeSim::start(KubeSimConfig::default()).await.unwrap();
    let mut from_other = claims(&good);
    from_other["iss"] = json!(other.issuer());
    let token = other.sign_service_account_token(&from_other).unwrap();
    let (status, body) = w.exchange(&client_id, &token).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (401, "AADSTS700211"),
        "{body}"
    );

    // Another cluster's key claiming the trusted issuer: its key is not in that issuer's set.
    let forged = other.sign_service_account_token(&claims(&good)).unwrap();
    let (status, body) = w.exchange(&client_id, &forged).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (401, "AADSTS7000272"),
        "{body}"
    );
    other.shutdown().await;

    // Not a JWT.
    let (status, body) = w.exchange(&client_id, "not-a-token").await;
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "AADSTS50027"),
        "{body}"
    );

    // The good one still works, and nothing of the above counted as issued.
    let (status, body) = w.exchange(&client_id, &good).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.azure.counters().aad_federated_tokens, 1);
    w.stop().await;
}

#[tokio::test]
async fn an_issuer_that_cannot_be_reached_is_reported_not_trusted_blindly() {
    let w = World::start().await;
    let pod = w.pod("app", "workload").await;
    let good = w.sa_token(&pod, EXCHANGE).await;
    let (rid, client_id) = w.identity(0);
    w.trust(0, "system:serviceaccount:default:workload", &[EXCHANGE]);
    // The issuer goes away: discovery cannot be fetched.
    let issuer = w.kube.issuer().to_string();
    let World { kube, azure, .. } = w;
    kube.shutdown().await;
    let (status, v) = exchange(&azure, &client_id, &good).await;
    assert_eq!(status, 401);
    assert_eq!(code(&v), "AADSTS50166", "{v}");
    assert!(
        v["error_description"].as_str().unwrap().contains(&issuer),
        "{v}"
    );
    assert_eq!(azure.federated_credentials(&rid).len(), 1);
    azure.shutdown().await;
}
