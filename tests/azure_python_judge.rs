//! Judge nobody here wrote: Python `azure-identity` (pip package) requests managed-identity
//! tokens from a simulated node's metadata service and must accept its answers.
//! Needs `python3` with `azure-identity` installed (`pip install azure-identity`).

mod azure_common;

use aad_pod_identity::sandbox::topology::Topology;
use aad_pod_identity::sim::azure::AzureSimConfig;
use azure_common::*;

async fn python_get_token(imds: std::net::SocketAddr, client_id: &str) -> std::process::Output {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/judges/azure_identity_imds.py"
    );
    tokio::process::Command::new("python3")
        .arg(script)
        .env(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            format!("http://{imds}"),
        )
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

#[tokio::test]
async fn python_azure_identity_accepts_the_simulated_metadata_service() {
    let t = Topology::sized(1, 1, 0, 2);
    let sim = sim(&t, AzureSimConfig::default()).await;
    let arm = arm_client(&sim, fast_options());
    arm.update_identities(&vmss(&t, 0), &[identity_id(&t, 0)], &[])
        .await
        .unwrap();
    let imds = sim.imds_addr(&t.nodes()[0].name).unwrap();
    let assigned = t.identity_client_id(&t.identities[0]).to_string();

    let out = python_get_token(imds, &assigned).await;
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
    let out = python_get_token(imds, &other).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Identity not found"), "{stderr}");
    sim.shutdown().await;
}
