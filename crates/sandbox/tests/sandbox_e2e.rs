//! End to end: the sandbox binary as a subprocess, driven by kubectl (a new identity, binding
//! and pod; its AzureAssignedIdentity becomes Assigned) and by Azure's Python SDK (a token as
//! that pod, for that identity).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

struct SandboxProcess {
    child: Child,
    dir: PathBuf,
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_sandbox(name: &str, extra: &[&str]) -> (SandboxProcess, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let endpoints = dir.join("endpoints.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aad-pod-identity-sandbox"))
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .arg("--endpoints-out")
        .arg(&endpoints)
        .args(["--arm-latency=200ms", "--nmi-port=0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The sandbox announces itself once every component is serving.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("sandbox: {line}");
            if line.contains("sandbox is running") {
                let _ = tx.send(());
            }
        }
    });
    let proc = SandboxProcess { child, dir };
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the sandbox did not announce itself within 60 s");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
    (proc, doc)
}

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
    let sdk_ok = Command::new("python3")
        .args(["-c", "import azure.identity, requests"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        sdk_ok,
        "python3 with azure-identity is required (pip install -r ci/requirements.txt)"
    );
    let (sandbox, doc) = start_sandbox(
        "sandbox-e2e",
        &["--identities=4", "--nmi-assignment-wait=3s"],
    );
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
