//! End to end: the sandbox binary as a subprocess, driven by kubectl (a new identity, binding
//! and pod; its AzureAssignedIdentity becomes Assigned) and by Azure's Python SDK (a token as
//! that pod, for that identity).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::{kubectl_raw, start_sandbox};

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl must be installed");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn kubectl_and_the_python_sdk_drive_the_sandbox_end_to_end() {
    end_to_end(&[]);
}

/// A cluster upgraded from the original keeps the original's CRDs (Helm never upgrades
/// `crds/`): a new pod's identity still becomes Assigned and the pod gets its token.
#[test]
fn with_the_originals_crds_a_new_pod_is_assigned_and_gets_its_token() {
    end_to_end(&[concat!(
        "--crds=",
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/original/crd.yaml"
    )]);
}

fn end_to_end(extra: &[&str]) {
    let sdk_ok = Command::new("python3")
        .args(["-c", "import azure.identity, requests"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        sdk_ok,
        "python3 with azure-identity is required (pip install -r ci/requirements.txt)"
    );
    let mut args = vec!["--identities=4", "--nmi-assignment-wait=3s"];
    args.extend_from_slice(extra);
    let tag = if extra.is_empty() {
        "sandbox-e2e"
    } else {
        "sandbox-e2e-original-crds"
    };
    let (sandbox, doc) = start_sandbox(tag, &args);
    if !extra.is_empty() {
        // The original's manifests are what the cluster serves.
        let subresources = kubectl(
            &PathBuf::from(doc["kubernetes"]["kubeconfig"].as_str().unwrap()),
            &[
                "get",
                "crd",
                "azureassignedidentities.aadpodidentity.k8s.io",
                "-o",
                "jsonpath={.metadata.annotations.controller-gen\\.kubebuilder\\.io/version} {.spec.versions[0].subresources}",
            ],
            None,
        );
        assert_eq!(subresources.trim(), "v0.5.0");
    }
    let kubeconfig = PathBuf::from(doc["kubernetes"]["kubeconfig"].as_str().unwrap());

    // A new namespace with its own identity (the sandbox's fourth), binding and pod.
    let identity = doc["azure"]["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "identity-3")
        .expect("the simulated Azure lists its identities")
        .clone();
    let client_id = identity["clientID"].as_str().unwrap();
    let resource_id = identity["resourceID"].as_str().unwrap();
    let manifest = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: team-a}}
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata: {{name: reporter, namespace: team-a}}
spec: {{type: 0, resourceID: "{resource_id}", clientID: "{client_id}"}}
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
metadata: {{name: reporter-binding, namespace: team-a}}
spec: {{azureIdentity: reporter, selector: reporter}}
---
apiVersion: v1
kind: Pod
metadata:
  name: reporter
  namespace: team-a
  labels: {{aadpodidbinding: reporter}}
spec:
  containers: [{{name: app, image: mcr.microsoft.com/azure-cli}}]
"#
    );
    kubectl(&kubeconfig, &["apply", "-f", "-"], Some(&manifest));

    // MIC assigns it: the pod's AzureAssignedIdentity becomes Assigned.
    let aai = "reporter-team-a-reporter";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "get",
                "azureassignedidentity",
                aai,
                "-n",
                "team-a",
                "-o",
                "jsonpath={.status.status}",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == "Assigned" {
            break;
        }
        assert!(Instant::now() < deadline, "{aai} not Assigned within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let node = kubectl(
        &kubeconfig,
        &[
            "get",
            "pod",
            "reporter",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.spec.nodeName}",
        ],
        None,
    );
    let pod_ip = kubectl(
        &kubeconfig,
        &[
            "get",
            "pod",
            "reporter",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.status.podIP}",
        ],
        None,
    );
    let nmi = doc["nmi"][&node]["token"].as_str().unwrap().to_string();

    // The unmodified SDK, its connections leaving from the pod's address.
    let sdk = |source: &str, client: &str| -> serde_json::Value {
        let out = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/nmi_sdk.py"
            ))
            .args([source, client, "https://management.azure.com/.default"])
            .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", &nmi)
            .env_remove("IDENTITY_ENDPOINT")
            .env_remove("MSI_ENDPOINT")
            .env("NO_PROXY", "*")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
            panic!(
                "no result: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let got = sdk(&pod_ip, client_id);
    assert_eq!(got["ok"], true, "{got}");
    let claims = jwt_claims(got["token"].as_str().unwrap());
    assert_eq!(
        claims["appid"], client_id,
        "the token is the bound identity's"
    );
    assert_eq!(
        claims["oid"], identity["principalID"],
        "issued for that identity's principal"
    );

    // Another pod's identity (the seed's az-id-1, bound in `default`) is refused to this pod.
    let other = doc["azure"]["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "identity-0")
        .unwrap()["clientID"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = sdk(&pod_ip, &other);
    assert_eq!(refused["ok"], false, "{refused}");
    drop(sandbox);
}

/// `kubectl` with its stderr, whatever its exit status.
/// The (pod, node, status) of every AzureAssignedIdentity in `ns`.
fn assignments(kubeconfig: &Path, ns: &str) -> Vec<(String, String, String)> {
    let (_, out, _) = kubectl_raw(
        kubeconfig,
        &["get", "azureassignedidentities", "-n", ns, "-o", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["spec"]["pod"].as_str().unwrap_or("").to_string(),
                a["spec"]["nodename"].as_str().unwrap_or("").to_string(),
                a["status"]["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kubectl_drain_moves_a_deployments_pod_and_its_identity_follows_it() {
    let (_sandbox, doc) = start_sandbox(
        "sandbox-drain",
        &["--identities=2", "--nodes-per-scale-set=2"],
    );
    let kubeconfig = PathBuf::from(doc["kubernetes"]["kubeconfig"].as_str().unwrap());
    let identity = doc["azure"]["identities"][1].clone();
    let manifest = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: drain}}
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata: {{name: mover, namespace: drain}}
spec: {{type: 0, resourceID: "{}", clientID: "{}"}}
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
metadata: {{name: mover-binding, namespace: drain}}
spec: {{azureIdentity: mover, selector: mover}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: mover, namespace: drain}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: mover}}}}
  template:
    metadata: {{labels: {{app: mover, aadpodidbinding: mover}}}}
    spec:
      containers: [{{name: app, image: mcr.microsoft.com/azure-cli}}]
"#,
        identity["resourceID"].as_str().unwrap(),
        identity["clientID"].as_str().unwrap()
    );
    kubectl(&kubeconfig, &["apply", "-f", "-"], Some(&manifest));
    let (pod, node) = wait_until(
        "the pod's identity Assigned",
        Duration::from_secs(60),
        || {
            assignments(&kubeconfig, "drain")
                .into_iter()
                .find(|(_, _, s)| s == "Assigned")
                .map(|(p, n, _)| (p, n))
        },
    );

    // A budget that allows no disruption holds the drain back (429 from the eviction,
    // which kubectl retries until its timeout).
    kubectl(
        &kubeconfig,
        &[
            "create",
            "pdb",
            "mover",
            "-n",
            "drain",
            "--selector=app=mover",
            "--min-available=1",
        ],
        None,
    );
    let (ok, _, err) = kubectl_raw(
        &kubeconfig,
        &[
            "drain",
            &node,
            "--ignore-daemonsets",
            "--force",
            "--timeout=4s",
        ],
    );
    assert!(!ok, "the budget must hold the drain back");
    assert!(err.contains("disruption budget"), "{err}");
    kubectl(&kubeconfig, &["uncordon", &node], None);
    kubectl(
        &kubeconfig,
        &["delete", "pdb", "mover", "-n", "drain"],
        None,
    );

    // Without it, the drain evicts the pod (kubectl's own request log shows the eviction).
    let (ok, out, err) = kubectl_raw(
        &kubeconfig,
        &["drain", &node, "--ignore-daemonsets", "--force", "-v=8"],
    );
    assert!(ok, "kubectl drain failed:\n{err}");
    assert!(out.contains("drained"), "{out}");
    assert!(
        err.contains(&format!("/api/v1/namespaces/drain/pods/{pod}/eviction")),
        "kubectl evicted rather than deleted"
    );
    // The Deployment's new pod runs on the other node, and its identity follows it there.
    let (new_pod, new_node) = wait_until("the new pod Assigned", Duration::from_secs(60), || {
        let all = assignments(&kubeconfig, "drain");
        let moved = all
            .iter()
            .find(|(p, n, s)| *p != pod && *n != node && s == "Assigned")
            .map(|(p, n, _)| (p.clone(), n.clone()));
        let old_gone = all.iter().all(|(p, _, _)| *p != pod);
        moved.filter(|_| old_gone)
    });
    assert_ne!(new_node, node);
    let (_, running, _) = kubectl_raw(
        &kubeconfig,
        &[
            "get",
            "pod",
            &new_pod,
            "-n",
            "drain",
            "-o",
            "jsonpath={.spec.nodeName} {.status.phase}",
        ],
    );
    assert_eq!(running, format!("{new_node} Running"));
}
