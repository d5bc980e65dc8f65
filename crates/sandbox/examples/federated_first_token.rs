//! How soon a new pod of a federated identity gets its first token through NMI, in the sandbox
//! (`--federated`), against a baseline measured in the same run: new pods of a type-0 identity
//! that is already on the scale set (so neither kind waits for an ARM write).
//!
//! `cargo run --release -p aad-pod-identity-sandbox --example federated_first_token -- [pods=20]`
//!
//! For each of `pods` rounds it creates one pod of each kind, waits on a watch until the pod is
//! Running with an IP, and at once sends its first token request from the pod's address,
//! asking for a resource no pod asked for before, so the token is not in NMI's cache: for the
//! federated pod that is a TokenRequest to the Kubernetes simulator and an exchange at the Azure
//! AD simulator (which fetches the issuer's discovery document and keys); for the baseline pod a
//! call to the node's simulated metadata service. It reports, per kind, the time from "observed
//! Running" to the answer (p50, p95, max) and the ratio of medians. Then Azure's Python SDK
//! (`ManagedIdentityCredential`, unmodified) asks as a fresh federated pod, timing `get_token()`
//! inside Python (interpreter start-up excluded), and the ARM writes naming the federated
//! identity are counted (there must be none).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aad_pod_identity_sandbox::args::SandboxArgs;
use aad_pod_identity_sandbox::federation;
use aad_pod_identity_sandbox::system::Sandbox;
use clap::Parser;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sandbox: SandboxArgs,
}

/// Creates a pod and returns (ip, node, when it was observed Running with an IP).
async fn start_pod(
    client: &kube::Client,
    ns: &str,
    pod: serde_json::Value,
) -> (IpAddr, String, Instant) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(pods.clone(), cfg).boxed();
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();
    while let Some(ev) = stream.next().await {
        if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev {
            let st = p.status.as_ref();
            if st.and_then(|s| s.phase.as_deref()) == Some("Running")
                && let Some(ip) = st.and_then(|s| s.pod_ip.as_ref())
            {
                let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
                return (ip.parse().unwrap(), node, Instant::now());
            }
        }
    }
    panic!("pod {name} never ran");
}

async fn first_token(nmi: &str, ip: IpAddr, client_id: &str, resource: &str) -> u16 {
    let http = reqwest::Client::builder()
        .no_proxy()
        .local_address(ip)
        .build()
        .unwrap();
    http.get(format!(
        "{nmi}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}&client_id={client_id}"
    ))
    .header("Metadata", "true")
    .send()
    .await
    .unwrap()
    .status()
    .as_u16()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Prints p50, p95 and max of `v`; NaN entries (not observed) are left out and counted.
fn summary(name: &str, mut v: Vec<f64>) -> f64 {
    let all = v.len();
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        println!("{name:<28} none of {all} observed");
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let p50 = percentile(&v, 0.5);
    let unseen = if v.len() < all {
        format!(
            "  ({} of {all} not seen by the example's watch by then)",
            all - v.len()
        )
    } else {
        String::new()
    };
    println!(
        "{name:<28} n={:<3} p50 {p50:6.2} ms  p95 {:6.2} ms  max {:6.2} ms{unseen}",
        v.len(),
        percentile(&v, 0.95),
        v.last().copied().unwrap_or(0.0)
    );
    p50
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("federated-first-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let args = Cli::try_parse_from([
        "sandbox",
        "--federated",
        "--nmi-port=0",
        "--arm-latency=500ms",
        "--nmi-assignment-wait=10s",
        &format!("--scenario={}", empty.display()),
    ])
    .unwrap()
    .sandbox;
    actix::System::new().block_on(async move {
        let sandbox = Sandbox::start(&args).await.unwrap();
        let demo = sandbox.federation.clone().unwrap();
        let client = sandbox.kube.client().await.unwrap();
        let fed_cid = demo.identity.client_id.clone();
        let mut ids = sandbox.azure.identities();
        ids.retain(|i| i.name != federation::IDENTITY);
        ids.sort_by(|a, b| a.name.cmp(&b.name));
        let base = ids[0].clone();

        // The baseline identity, put on the scale set by a first pod before measuring.
        let setup = format!(
            r#"apiVersion: v1
kind: Namespace
metadata: {{name: baseline}}
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata: {{name: assigned, namespace: baseline}}
spec: {{type: 0, resourceID: "{}", clientID: "{}"}}
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
metadata: {{name: assigned, namespace: baseline}}
spec: {{azureIdentity: assigned, selector: assigned}}
"#,
            base.resource_id, base.client_id
        );
        aad_pod_identity_sandbox::scenario::apply(
            &client,
            aad_pod_identity_sandbox::scenario::parse_documents(&setup).unwrap(),
        )
        .await
        .unwrap();
        let pod = |name: String, labels: serde_json::Value, sa: &str| {
            json!({"metadata": {"name": name, "labels": labels},
                "spec": {"serviceAccountName": sa, "containers": [{"name": "c", "image": "app"}]}})
        };
        // Warm-up: one pod of each kind answered (MIC leads, the scale set holds the baseline).
        for (ns, labels, sa, cid) in [
            ("baseline", json!({"aadpodidbinding": "assigned"}), "default", base.client_id.as_str()),
            (federation::NAMESPACE, json!({"aadpodidbinding": "federated"}), federation::SERVICE_ACCOUNT, fed_cid.as_str()),
        ] {
            let (ip, node, _) = start_pod(&client, ns, pod(format!("warm-{ns}"), labels, sa)).await;
            let nmi = format!("http://{}", sandbox.nmi[&node]);
            let status = first_token(&nmi, ip, cid, "https://warm.example").await;
            assert_eq!(status, 200, "warm-up of {ns}");
        }

        // When each pod's AzureAssignedIdentity became Assigned (MIC's share of the wait).
        let assigned_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        {
            let seen = Arc::clone(&assigned_at);
            let aais: Api<aad_pod_identity::crd::AzureAssignedIdentity> = Api::all(client.clone());
            tokio::spawn(async move {
                let mut stream = watcher::watcher(aais, watcher::Config::default()).boxed();
                while let Some(ev) = stream.next().await {
                    if let Ok(watcher::Event::Apply(a) | watcher::Event::InitApply(a)) = ev
                        && a.status.as_ref().is_some_and(|s| {
                            s.status == aad_pod_identity::crd::AssignedState::Assigned
                        })
                    {
                        seen.lock().unwrap().entry(a.spec.pod.clone()).or_insert_with(Instant::now);
                    }
                }
            });
        }
        let (mut fed, mut basel, mut fed_mic, mut base_mic) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..rounds {
            for kind in ["federated", "baseline"] {
                let (ns, labels, sa, cid) = if kind == "federated" {
                    (federation::NAMESPACE, json!({"aadpodidbinding": "federated"}), federation::SERVICE_ACCOUNT, fed_cid.as_str())
                } else {
                    ("baseline", json!({"aadpodidbinding": "assigned"}), "default", base.client_id.as_str())
                };
                let (ip, node, running) =
                    start_pod(&client, ns, pod(format!("{kind}-{i}"), labels, sa)).await;
                let nmi = format!("http://{}", sandbox.nmi[&node]);
                let status = first_token(&nmi, ip, cid, &format!("https://resource-{i}.example")).await;
                let answered = Instant::now();
                let ms = (answered - running).as_secs_f64() * 1000.0;
                assert_eq!(status, 200, "{kind}-{i}");
                // Assigned before Running counts as zero wait for MIC.
                let mic = assigned_at
                    .lock()
                    .unwrap()
                    .get(&format!("{kind}-{i}"))
                    .map_or(f64::NAN, |t| t.saturating_duration_since(running).as_secs_f64() * 1000.0);
                if kind == "federated" {
                    fed.push(ms);
                    fed_mic.push(mic);
                } else {
                    basel.push(ms);
                    base_mic.push(mic);
                }
            }
        }
        println!("first token of a new pod, from 'observed Running' to the answer (uncached resource):");
        let f = summary("federated (TokenRequest+AAD)", fed);
        let b = summary("baseline (assigned, IMDS)", basel);
        println!("ratio of medians federated/baseline: {:.2}", f / b);
        println!("of which 'Running' to the pod's AzureAssignedIdentity seen Assigned (MIC and the watch):");
        summary("federated", fed_mic);
        summary("baseline", base_mic);

        // Azure's Python SDK as a fresh federated pod, get_token() timed inside Python.
        let (ip, node, _) = start_pod(
            &client,
            federation::NAMESPACE,
            pod("sdk".into(), json!({"aadpodidbinding": "federated"}), federation::SERVICE_ACCOUNT),
        )
        .await;
        let script = r#"
import json, sys, time, requests
from requests.adapters import HTTPAdapter
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import ManagedIdentityCredential
class A(HTTPAdapter):
    def init_poolmanager(self, *a, **k):
        k["source_address"] = (sys.argv[1], 0)
        super().init_poolmanager(*a, **k)
s = requests.Session(); s.trust_env = False; s.mount("http://", A())
c = ManagedIdentityCredential(client_id=sys.argv[2], transport=RequestsTransport(session=s), retry_total=0)
t = time.perf_counter(); c.get_token("https://sdk.example/.default"); print(json.dumps({"ms": (time.perf_counter() - t) * 1000}))
"#;
        let out = tokio::process::Command::new("python3")
            .args(["-c", script, &ip.to_string(), &fed_cid])
            .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", format!("http://{}", sandbox.nmi[&node]))
            .env("NO_PROXY", "*")
            .output()
            .await
            .unwrap();
        match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            Ok(v) => println!(
                "Python ManagedIdentityCredential.get_token() as a fresh federated pod: {:.2} ms",
                v["ms"].as_f64().unwrap_or(f64::NAN)
            ),
            Err(_) => println!("Python SDK failed: {}", String::from_utf8_lossy(&out.stderr)),
        }
        let c = sandbox.azure.counters();
        println!(
            "ARM writes naming the federated identity: {} (writes naming the baseline identity: {}); tokens issued through federation: {}",
            c.writes_naming(&demo.identity.resource_id),
            c.writes_naming(&base.resource_id),
            c.aad_federated_tokens
        );
        sandbox.stop().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
