//! Shared helpers of the Azure client-versus-simulator tests: a simulator on loopback, an ARM
//! client authenticated through the simulator's Azure AD, and raw HTTP for bad-input checks.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use aad_pod_identity::cloud::arm::{ArmClient, ArmOptions};
use aad_pod_identity::cloud::config::CloudConfig;
use aad_pod_identity::cloud::credential::arm_credential;
use aad_pod_identity::cloud::provider_id::ComputeRef;
use aad_pod_identity_sim::azure::{ARM_RESOURCE, AzureSim, AzureSimConfig, AzureSimHandle};
use aad_pod_identity_sim::topology::Topology;
use azure_core::http::{HttpClient, Method, Request, headers::HeaderName};

pub async fn sim(topology: &Topology, config: AzureSimConfig) -> AzureSimHandle {
    AzureSim::start(topology, config)
        .await
        .expect("simulator starts")
}

/// Options that keep tests fast: short timeouts and backoff, immediate LRO polls.
pub fn fast_options() -> ArmOptions {
    ArmOptions {
        request_timeout: Duration::from_millis(800),
        max_attempts: 4,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        max_throttled: 50,
        default_retry_after: Duration::from_secs(1),
        lro_poll_interval: Duration::from_millis(10),
        lro_timeout: Duration::from_secs(20),
        ..ArmOptions::default()
    }
}

/// An ARM client configured the way MIC configures it: azure.json → credential → client.
pub fn arm_client(sim: &AzureSimHandle, options: ArmOptions) -> ArmClient {
    let config = CloudConfig::from_json(&sim.azure_json().to_string()).expect("azure.json parses");
    let credential = arm_credential(&config, "test").expect("credential");
    ArmClient::new(
        &config.arm_endpoint(),
        credential,
        &config.arm_resource(),
        options,
    )
    .expect("client")
}

/// [`arm_client`] with every HTTP call it makes recorded, in order.
pub fn observed_arm_client(
    sim: &AzureSimHandle,
    options: ArmOptions,
) -> (
    ArmClient,
    Arc<std::sync::Mutex<Vec<aad_pod_identity::cloud::arm::CallRecord>>>,
) {
    let calls: Arc<std::sync::Mutex<Vec<_>>> = Arc::default();
    let seen = calls.clone();
    let arm = arm_client(sim, options).with_observer(Arc::new(
        move |r: &aad_pod_identity::cloud::arm::CallRecord| seen.lock().unwrap().push(r.clone()),
    ));
    (arm, calls)
}

pub fn vmss(t: &Topology, i: usize) -> ComputeRef {
    ComputeRef::scale_set(&t.subscription_id, &t.resource_group, &t.scale_sets[i].name)
}

pub fn identity_id(t: &Topology, i: usize) -> String {
    t.identity_resource_id(&t.identities[i])
}

/// A bearer token for ARM from the simulator's Azure AD (client credentials, v1).
pub async fn arm_token(sim: &AzureSimHandle) -> String {
    let (tenant, client, secret) = sim.mic_credentials();
    let aad = aad_pod_identity::cloud::aad::AadClient::new(&sim.aad_endpoint()).unwrap();
    aad.token(&aad_pod_identity::cloud::aad::TokenRequest {
        tenant_id: tenant,
        client_id: client,
        credential: aad_pod_identity::cloud::aad::ClientCredential::Secret(secret),
        resource: ARM_RESOURCE.into(),
        version: aad_pod_identity::cloud::aad::EndpointVersion::V1,
    })
    .await
    .expect("token")
    .access_token
}

pub struct Raw {
    pub status: u16,
    pub body: serde_json::Value,
    pub text: String,
}

/// One raw HTTP request (for inputs our client would never send).
pub async fn raw(
    method: Method,
    url: &str,
    headers: &[(&'static str, String)],
    body: Option<Vec<u8>>,
) -> Raw {
    let http: Arc<dyn HttpClient> = azure_core::http::new_http_client(None);
    let mut req = Request::new(url::Url::parse(url).unwrap(), method);
    for (k, v) in headers {
        req.insert_header(HeaderName::from_static(k), v.clone());
    }
    if let Some(b) = body {
        req.set_body(b);
    }
    let resp = http.execute_request(&req).await.expect("request sent");
    let (status, _, body) = resp.deconstruct();
    let bytes = body.collect().await.unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Raw {
        status: u16::from(status),
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        text,
    }
}

/// Python `azure-identity`'s `ManagedIdentityCredential` asks the metadata service at `imds`
/// (`http://host:port`, through `AZURE_POD_IDENTITY_AUTHORITY_HOST`) for `client_id`'s token
/// (`tests/judges/azure_identity_imds.py`: the token JSON on stdout, or the SDK's error and exit 1).
pub async fn python_get_token(imds: &str, client_id: &str) -> std::process::Output {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/judges/azure_identity_imds.py"
    );
    tokio::process::Command::new("python3")
        .arg(script)
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds)
        .env("CLIENT_ID", client_id)
        .env("SCOPE", "https://vault.azure.net/.default")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .output()
        .await
        .expect("python3 runs")
}
