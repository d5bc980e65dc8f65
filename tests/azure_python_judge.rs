//! Judges nobody here wrote: Python `azure-identity` requests managed-identity tokens from a
//! simulated node's metadata service, and `azure-identity` + `azure-mgmt-compute` drive the
//! simulated Azure AD and ARM over HTTPS. Both must accept the simulator's answers.
//! Needs `python3` with `pip install azure-identity azure-mgmt-compute`.

mod azure_common;

use aad_pod_identity_sim::azure::AzureSimConfig;
use aad_pod_identity_sim::topology::Topology;
use azure_common::*;

#[tokio::test]
async fn python_azure_identity_accepts_the_simulated_metadata_service() {
    let t = Topology::sized(1, 1, 0, 2);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let arm = arm_client(&sim, fast_options());
    arm.update_identities(&vmss(&t, 0), &[identity_id(&t, 0)], &[])
        .await
        .unwrap();
    let imds = sim.imds_endpoint(&t.nodes()[0].name).unwrap();
    let assigned = t.identity_client_id(&t.identities[0]).to_string();

    let out = python_get_token(&imds, &assigned).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "azure-identity refused the simulator's answer (is `pip install azure-identity` done?): {stderr}"
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let claims = sim.decode_token(got["token"].as_str().unwrap()).unwrap();
    assert_eq!(claims.appid, assigned);
    assert_eq!(claims.aud, "https://vault.azure.net");
    assert_eq!(got["expires_on"].as_u64(), Some(claims.exp));

    // An identity not assigned to this node: the SDK surfaces the service's refusal.
    let other = t.identity_client_id(&t.identities[1]).to_string();
    let out = python_get_token(&imds, &other).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Identity not found"), "{stderr}");
    sim.shutdown().await;
}

#[tokio::test]
async fn python_management_sdk_updates_a_scale_set_through_the_simulated_arm() {
    let t = Topology::sized(1, 1, 0, 2);
    let sim = sim(
        &t,
        AzureSimConfig {
            tls: true,
            lro: aad_pod_identity_sim::azure::LroMode::AsyncOperation,
            // The write takes 300 ms; the SDK is told to poll every 100 ms (`retry-after-ms`).
            arm_latency: aad_pod_identity_sim::azure::Latency::Fixed(
                std::time::Duration::from_millis(300),
            ),
            lro_retry_after: Some(std::time::Duration::from_millis(100)),
            ..Default::default()
        },
    )
    .await;
    let (tenant, client, secret) = sim.mic_credentials();
    let id = identity_id(&t, 1);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/judges/azure_mgmt_arm.py"
    );
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("SIM_ARM", sim.arm_endpoint_tls().unwrap())
        .env("REQUESTS_CA_BUNDLE", sim.ca_cert_path().unwrap())
        .env("TENANT_ID", &tenant)
        .env("CLIENT_ID", &client)
        .env("CLIENT_SECRET", &secret)
        .env("SUBSCRIPTION_ID", &t.subscription_id)
        .env("RESOURCE_GROUP", &t.resource_group)
        .env("VMSS", &t.scale_sets[0].name)
        .env("IDENTITY", &id)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .output()
        .await
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Azure SDK refused the simulator: {stderr}"
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["before"], serde_json::Value::Null);
    assert_eq!(got["type"], "UserAssigned");
    assert_eq!(got["ids"], serde_json::json!([id]));
    assert_eq!(
        got["clientIds"][0],
        t.identity_client_id(&t.identities[1]).to_string()
    );
    assert_eq!(
        sim.assigned_identities(&t.scale_sets[0].name).unwrap(),
        vec![id]
    );
    let c = sim.counters();
    assert_eq!(c.total_patches(), 1);
    assert!(c.lro_polls >= 2, "the SDK followed the operation: {c:?}");
    assert!(c.aad_tokens >= 1);
    sim.shutdown().await;
}
