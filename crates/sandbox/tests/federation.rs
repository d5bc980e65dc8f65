//! Workload identity federation end to end in the sandbox (`--federated`), judged by Azure's
//! own Python SDK: a pod bound to a federated AzureIdentity gets its token through NMI with the
//! unmodified `ManagedIdentityCredential`; a pod that opted in with workload identity's labels
//! does too; `WorkloadIdentityCredential` with a service-account token file, pointed at the
//! simulated Azure AD, gets a token of the same identity; no ARM write ever names the identity;
//! and pods bound to nothing, or to other identities, are refused.
//!
//! Needs `python3` with `azure-identity` (ci/requirements.txt). Nothing leaves loopback: the SDKs
//! reach NMI through `AZURE_POD_IDENTITY_AUTHORITY_HOST` and Azure AD through the simulator's
//! HTTPS address.

use std::process::Command;
use std::time::Duration;

use aad_pod_identity::actors::nmi::federated::DEFAULT_AUDIENCE;
use aad_pod_identity::crd::AzureAssignedIdentity;
use aad_pod_identity_sandbox::args::SandboxArgs;
use aad_pod_identity_sandbox::federation;
use aad_pod_identity_sandbox::system::Sandbox;
use base64::Engine as _;
use clap::Parser;
use futures::StreamExt as _;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

const SCOPE: &str = "https://management.azure.com/.default";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sandbox: SandboxArgs,
}

fn args() -> SandboxArgs {
    Cli::try_parse_from([
        "sandbox",
        "--federated",
        "--nmi-port=0",
        "--arm-latency=50ms",
        "--nmi-assignment-wait=2s",
    ])
    .unwrap()
    .sandbox
}

fn python_ok() {
    let ok = Command::new("python3")
        .args(["-c", "import azure.identity, requests"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "python3 with azure-identity is required (pip install -r ci/requirements.txt)"
    );
}

fn claims(token: &str) -> Value {
    let p = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p.trim_end_matches('='))
            .unwrap(),
    )
    .unwrap()
}

/// The unmodified `ManagedIdentityCredential`, its connections leaving from `source` (the pod).
/// Run without blocking: the sandbox's tasks share this thread.
async fn managed_identity_sdk(nmi: &str, source: &str, client_id: &str) -> Value {
    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/nmi_sdk.py"
        ))
        .args([source, client_id, SCOPE])
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", nmi)
        .env_remove("IDENTITY_ENDPOINT")
        .env_remove("MSI_ENDPOINT")
        .env("NO_PROXY", "*")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
        panic!(
            "no result: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// NMI's own answer to a metadata-service token request for `client_id` from `source` (the
/// pod's address): status and body, read raw so a refusal is told from any other failure.
async fn nmi_answer(nmi: &str, source: &str, client_id: &str) -> (u16, String) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
        .get(format!(
            "{nmi}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id={client_id}"
        ))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A Running pod matching `labels` in `ns` that has an IP, waited for on a watch (60 s at most).
async fn running_pod(client: &kube::Client, ns: &str, labels: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut stream = watcher::watcher(pods, watcher::Config::default().labels(labels)).boxed();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev {
                let st = p.status.as_ref();
                if st.and_then(|s| s.phase.as_deref()) == Some("Running")
                    && st.and_then(|s| s.pod_ip.as_ref()).is_some()
                {
                    return Some(p);
                }
            }
        }
        None
    })
    .await;
    found
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no running pod {labels} in {ns}"))
}

/// Waits on a watch (60 s at most) until the pod's AzureAssignedIdentity is Assigned.
async fn assigned(client: &kube::Client, pod: &str) {
    let aais: Api<AzureAssignedIdentity> = Api::namespaced(client.clone(), federation::NAMESPACE);
    let mut stream = watcher::watcher(aais, watcher::Config::default()).boxed();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(a) | watcher::Event::InitApply(a)) = ev
                && a.spec.pod == pod
                && a.is_assigned()
            {
                return;
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "{pod}'s identity was not Assigned within 60 s"
    );
}

fn ip_node(p: &Pod) -> (String, String) {
    (
        p.status.as_ref().unwrap().pod_ip.clone().unwrap(),
        p.spec.as_ref().unwrap().node_name.clone().unwrap(),
    )
}

#[test]
fn a_federated_identity_serves_both_sdk_credentials_with_no_arm_write_and_only_its_pods() {
    python_ok();
    actix::System::new().block_on(async {
        let sandbox = Sandbox::start(&args()).await.unwrap();
        let demo = sandbox.federation.clone().expect("--federated");
        let client = sandbox.kube.client().await.unwrap();
        let nmi_of = |node: &str| format!("http://{}", sandbox.nmi[node]);
        let cid = demo.identity.client_id.clone();

        // 1. A pod bound through a federated AzureIdentity, with the unmodified SDK.
        let app = running_pod(&client, federation::NAMESPACE, "app=federated-app").await;
        let (ip, node) = ip_node(&app);
        assigned(&client, app.metadata.name.as_deref().unwrap()).await;
        let got = managed_identity_sdk(&nmi_of(&node), &ip, &cid).await;
        assert_eq!(got["ok"], true, "{got}");
        let c = claims(got["token"].as_str().unwrap());
        assert_eq!(c["appid"], cid.as_str());
        assert_eq!(c["xms_mirid"], demo.identity.resource_id.as_str());
        assert_eq!(c["aud"], "https://management.azure.com");

        // 2. A pod that opted in with workload identity's own label (its service account names
        //    the identity), through NMI too.
        let wi = running_pod(&client, federation::NAMESPACE, "app=workload-identity-app").await;
        let (wi_ip, wi_node) = ip_node(&wi);
        let got = managed_identity_sdk(&nmi_of(&wi_node), &wi_ip, "").await;
        assert_eq!(got["ok"], true, "{got}");
        assert_eq!(
            claims(got["token"].as_str().unwrap())["appid"],
            cid.as_str()
        );

        // 3. The same identity through WorkloadIdentityCredential and a token file, as a pod
        //    using workload identity directly would get it.
        let dir = std::env::temp_dir().join(format!("federation-judge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("token");
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), federation::NAMESPACE);
        let sa_token = sas
            .create_token_request(
                federation::SERVICE_ACCOUNT,
                &PostParams::default(),
                &TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec![DEFAULT_AUDIENCE.into()],
                        expiration_seconds: Some(600),
                        bound_object_ref: Some(BoundObjectReference {
                            api_version: Some("v1".into()),
                            kind: Some("Pod".into()),
                            name: app.metadata.name.clone(),
                            uid: app.metadata.uid.clone(),
                        }),
                    },
                    ..TokenRequest::default()
                },
            )
            .await
            .unwrap()
            .status
            .unwrap()
            .token;
        std::fs::write(&token_file, sa_token).unwrap();
        let out = tokio::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/judges/workload_identity.py"
            ))
            .env("AZURE_CLIENT_ID", &cid)
            .env("AZURE_TENANT_ID", &demo.tenant_id)
            .env("AZURE_FEDERATED_TOKEN_FILE", &token_file)
            .env(
                "AZURE_AUTHORITY_HOST",
                sandbox.azure.arm_endpoint_tls().unwrap(),
            )
            .env("REQUESTS_CA_BUNDLE", sandbox.azure.ca_cert_path().unwrap())
            .env("SCOPE", SCOPE)
            .env("NO_PROXY", "*")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .output()
            .await
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "WorkloadIdentityCredential failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        let c = claims(got["token"].as_str().unwrap());
        assert_eq!(c["appid"], cid.as_str());
        assert_eq!(c["xms_mirid"], demo.identity.resource_id.as_str());

        // 4. A pod of the same service account bound to nothing is refused, and so is a pod
        //    bound to other identities (the seed's) asking for this one.
        let pods: Api<Pod> = Api::namespaced(client.clone(), federation::NAMESPACE);
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "unbound", "labels": {"app": "unbound"}},
                "spec": {"serviceAccountName": federation::SERVICE_ACCOUNT,
                    "containers": [{"name": "c", "image": "mcr.microsoft.com/azure-cli"}]},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
        let exchanged = sandbox.azure.counters().aad_federated_tokens;
        let unbound = running_pod(&client, federation::NAMESPACE, "app=unbound").await;
        let (u_ip, u_node) = ip_node(&unbound);
        let refused = managed_identity_sdk(&nmi_of(&u_node), &u_ip, &cid).await;
        assert_eq!(refused["ok"], false, "{refused}");
        let (status, body) = nmi_answer(&nmi_of(&u_node), &u_ip, &cid).await;
        assert_eq!(
            status, 404,
            "NMI refuses the unbound pod as the original does: {body}"
        );
        let seed = running_pod(&client, "default", "aadpodidbinding=az-id-combined").await;
        let (s_ip, s_node) = ip_node(&seed);
        let refused = managed_identity_sdk(&nmi_of(&s_node), &s_ip, &cid).await;
        assert_eq!(refused["ok"], false, "{refused}");
        let (status, body) = nmi_answer(&nmi_of(&s_node), &s_ip, &cid).await;
        assert_eq!(
            status, 404,
            "NMI refuses a pod bound to other identities: {body}"
        );
        // Refused before any exchange: Azure AD never saw a request for them.
        assert_eq!(sandbox.azure.counters().aad_federated_tokens, exchanged);

        // 5. Azure saw no write naming the identity (while the seed's identities were written),
        //    and the progress line says so.
        let counters = sandbox.azure.counters();
        assert_eq!(counters.writes_naming(&demo.identity.resource_id), 0);
        assert!(
            counters.total_patches() >= 1,
            "the seed's identities were assigned"
        );
        assert!(counters.aad_federated_tokens >= 3, "{counters:?}");
        let line = demo.progress(&client, &sandbox.azure).await.unwrap();
        assert!(line.contains("ARM writes naming it: 0"), "{line}");
        for ss in &args().topology().scale_sets {
            let on = sandbox.azure.assigned_identities(&ss.name).unwrap();
            assert!(
                !on.iter()
                    .any(|i| i.eq_ignore_ascii_case(&demo.identity.resource_id)),
                "{on:?}"
            );
        }
        sandbox.stop().await;
    });
}
