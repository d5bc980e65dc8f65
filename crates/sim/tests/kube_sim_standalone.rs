//! The Kubernetes simulator run alone as a process (the `kube_sim` example): it writes a
//! kubeconfig kubectl uses as is and an endpoints document, and SIGTERM shuts it down cleanly.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<test binary> → target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_writes_kubeconfig_and_endpoints_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("kube-sim-sandbox-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let endpoints = dir.join("endpoints.json");
    let bin = example("kube_sim");
    assert!(
        bin.exists(),
        "{} not built (cargo builds examples with the tests)",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .arg(&kubeconfig)
        .arg(&endpoints)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the sandbox announces itself")
        .unwrap()
        .unwrap();
    let server = first
        .strip_prefix("Kubernetes API simulator: ")
        .expect(&first)
        .to_string();
    assert!(server.starts_with("http://127.0.0.1:"), "{server}");
    // The endpoints document is written before the announcement.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
    assert_eq!(doc["kubernetes"]["server"], server.as_str());
    assert_eq!(
        doc["kubernetes"]["kubeconfig"],
        kubeconfig.to_str().unwrap()
    );
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "nodes", "-o", "jsonpath={.items[*].spec.providerID}"])
        .env("KUBECACHEDIR", dir.join("cache"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(ids.split_whitespace().count(), 2, "{ids}");
    assert!(ids.contains("/virtualMachineScaleSets/"), "{ids}");
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the sandbox stops within 10s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let mut rest = Vec::new();
    while let Ok(Some(l)) = lines.next_line().await {
        rest.push(l);
    }
    assert!(rest.iter().any(|l| l == "shutting down"), "{rest:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
