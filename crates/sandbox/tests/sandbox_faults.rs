//! The sandbox binary hit by every fault of `--faults chaos` at once (through its control
//! endpoint's `POST /strike`), then asked for a new assignment: the system must come through
//! with every running bound pod Assigned, the new one too, judged with kubectl.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{kubectl_raw, start_sandbox};

const KINDS: [&str; 9] = [
    "patch_answer_lost",
    "watch_drop",
    "arm_5xx_burst",
    "watch_410",
    "arm_429_storm",
    "write_refusals",
    "arm_hang",
    "slow_writes",
    "api_restart",
];

/// The `items` of `kubectl get <what> -A -o json` (empty while the API does not answer).
fn items(kubeconfig: &Path, what: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-A", "-o", "json"]);
    let (ok, out, _) = kubectl_raw(kubeconfig, &args);
    if !ok {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["items"].as_array().cloned().unwrap_or_default()
}

/// Pods (in every namespace) whose AzureAssignedIdentity is Assigned.
fn assigned_pods(kubeconfig: &Path) -> Vec<String> {
    items(kubeconfig, &["azureassignedidentities"])
        .iter()
        .filter(|a| a["status"]["status"] == "Assigned")
        .filter_map(|a| a["spec"]["pod"].as_str().map(str::to_string))
        .collect()
}

/// Running pods labelled `aadpodidbinding` (in every namespace).
fn running_bound_pods(kubeconfig: &Path) -> Vec<String> {
    items(kubeconfig, &["pods", "-l", "aadpodidbinding"])
        .iter()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Waits until `pod` and every running bound pod are Assigned.
fn wait_all_assigned(kubeconfig: &Path, pod: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let assigned = assigned_pods(kubeconfig);
        let running = running_bound_pods(kubeconfig);
        let missing: Vec<&String> = running.iter().filter(|p| !assigned.contains(p)).collect();
        if assigned.iter().any(|p| p == pod) && missing.is_empty() && !running.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not all Assigned within {timeout:?}: {pod} Assigned: {}; running bound pods without one: {missing:?}",
            assigned.iter().any(|p| p == pod)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chaos_fault_at_once_loses_no_assignment() {
    let (_sandbox, doc) = start_sandbox("sandbox-faults", &["--identities=4"]);
    let kubeconfig = std::path::PathBuf::from(doc["kubernetes"]["kubeconfig"].as_str().unwrap());
    let control = doc["control"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while assigned_pods(&kubeconfig).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the seed's pods were never Assigned"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let http = reqwest::Client::new();
    let refused = http
        .post(format!("{control}/strike"))
        .header("content-type", "application/json")
        .body(r#"{"kind": "meteor"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    for kind in KINDS {
        let r = http
            .post(format!("{control}/strike"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"kind": "{kind}"}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{kind}");
    }

    // While the faults play out, a new identity, binding and pod arrive.
    let identity = doc["azure"]["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "identity-3")
        .unwrap()
        .clone();
    let manifest = format!(
        r#"
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata: {{name: weathered, namespace: default}}
spec: {{type: 0, resourceID: "{}", clientID: "{}"}}
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
metadata: {{name: weathered-binding, namespace: default}}
spec: {{azureIdentity: weathered, selector: weathered}}
---
apiVersion: v1
kind: Pod
metadata: {{name: weathered, namespace: default, labels: {{aadpodidbinding: weathered}}}}
spec: {{containers: [{{name: app, image: demo}}]}}
"#,
        identity["resourceID"].as_str().unwrap(),
        identity["clientID"].as_str().unwrap()
    );
    let file = kubeconfig.with_file_name("weathered.yaml");
    std::fs::write(&file, manifest).unwrap();
    // The API may be down (restart) when kubectl runs: apply until it is accepted.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, err) = kubectl_raw(&kubeconfig, &["apply", "-f", file.to_str().unwrap()]);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl apply kept failing: {err}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Once the faults have played out, every running bound pod is Assigned, the new one too.
    wait_all_assigned(&kubeconfig, "weathered", Duration::from_secs(120));
}
